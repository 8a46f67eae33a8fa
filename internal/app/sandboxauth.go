package app

import (
	"bytes"
	"context"
	"net/mail"
	"strings"

	"github.com/postamt/postamt/internal/dns"
	"github.com/postamt/postamt/internal/mailauth"
	"github.com/postamt/postamt/internal/sandbox"
)

// sandboxVerifier gives the sandbox's pre-send checks the verdicts a receiver would reach, with
// the same code the MX listener uses (internal/mailauth). What can be known before the real
// send: the DKIM signatures as they are, the sender domain's SPF record (not a verdict: that
// needs the address the real server will send from), and DMARC as decided by DKIM alone — the
// verdict a bulk sender has to get right, since forwarding breaks SPF alignment.
type sandboxVerifier struct {
	resolver dns.Resolver
	// rspamd says the rspamd check is on, so the first X-Spam-Score field of a captured
	// message is its verdict (our checks put their fields on top); otherwise such a field came
	// from the sender and is not reported.
	rspamd bool
}

func (v sandboxVerifier) Verify(ctx context.Context, raw []byte, env sandbox.Envelope) []sandbox.AuthVerdict {
	var out []sandbox.AuthVerdict
	dkims, err := mailauth.VerifyDKIM(ctx, v.resolver, bytes.NewReader(raw))
	switch {
	case err != nil:
		out = append(out, sandbox.AuthVerdict{Method: "dkim", Result: "permerror", Detail: err.Error()})
	case len(dkims) == 0:
		out = append(out, sandbox.AuthVerdict{Method: "dkim", Result: "none", Detail: "the message is not signed"})
	}
	for _, d := range dkims {
		detail := "d=" + d.Domain
		if d.Err != nil {
			detail += ": " + d.Err.Error()
		}
		out = append(out, sandbox.AuthVerdict{Method: "dkim", Result: d.Result, Detail: detail})
	}
	if _, domain, ok := strings.Cut(env.From, "@"); ok {
		out = append(out, v.spfRecord(ctx, domain))
	} else {
		out = append(out, sandbox.AuthVerdict{Method: "spf", Result: "none", Detail: "null sender: SPF is checked for the HELO name"})
	}
	from := ""
	if m, err := mail.ReadMessage(bytes.NewReader(raw)); err == nil {
		if score := m.Header.Get("X-Spam-Score"); v.rspamd && score != "" {
			out = append(out, sandbox.AuthVerdict{Method: "rspamd", Result: strings.ToLower(m.Header.Get("X-Spam")), Detail: "score " + score})
		}
		if as, err := mail.ParseAddressList(m.Header.Get("From")); err == nil && len(as) == 1 {
			if _, d, ok := strings.Cut(as[0].Address, "@"); ok {
				from = d
			}
		}
	}
	if from == "" {
		return append(out, sandbox.AuthVerdict{Method: "dmarc", Result: "permerror", Detail: "no single From: address"})
	}
	d := mailauth.EvaluateDMARC(ctx, v.resolver, from, nil, dkims, func() int { return 0 })
	detail := "header.from=" + d.FromDomain
	if d.Policy != "" {
		detail += ", p=" + d.Policy
	}
	switch {
	case d.Result == "pass":
		detail += ", aligned DKIM signature"
	case d.Why != "":
		detail += ": " + d.Why + " (judged on DKIM alone: SPF depends on the sending server)"
	}
	return append(out, sandbox.AuthVerdict{Method: "dmarc", Result: d.Result, Detail: detail})
}

func (v sandboxVerifier) spfRecord(ctx context.Context, domain string) sandbox.AuthVerdict {
	txts, err := v.resolver.LookupTXT(ctx, domain)
	if err != nil && !dns.IsNotFound(err) {
		return sandbox.AuthVerdict{Method: "spf", Result: "temperror", Detail: err.Error()}
	}
	for _, t := range txts {
		if strings.HasPrefix(strings.ToLower(t), "v=spf1") {
			return sandbox.AuthVerdict{Method: "spf", Result: "policy", Detail: domain + " publishes: " + t +
				" (the verdict depends on the address the real server sends from)"}
		}
	}
	return sandbox.AuthVerdict{Method: "spf", Result: "none", Detail: domain + " publishes no SPF record"}
}
