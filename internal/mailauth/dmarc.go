package mailauth

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/mail"
	"strings"

	"blitiri.com.ar/go/spf"
	"github.com/emersion/go-msgauth/dmarc"

	"github.com/postamt/postamt/internal/dns"
	"github.com/postamt/postamt/internal/policy"
	"github.com/postamt/postamt/internal/smtp"
)

// DMARCResult is the evaluation of RFC 7489 §6.6 for one message.
type DMARCResult struct {
	Result      string // pass, fail, none, temperror, permerror
	FromDomain  string // RFC5322.From domain
	Policy      string // the policy that applies: none, quarantine, reject ("" without record)
	Applied     string // after pct= sampling: the policy actually applied
	SPFAligned  bool
	DKIMAligned bool
	Why         string // plain-words reason for a fail ("SPF fail and no aligned DKIM signature")
	// Override is the trusted ARC sealer's domain when a failing message's policy was not
	// applied because of its passing ARC chain.
	Override string
	Err      error
}

// EvaluateDMARC looks up the policy of the author domain (or of its organizational domain) and
// checks whether the SPF or a DKIM result is aligned with it. sample returns a number in
// [0, 100) for pct= (nil: random).
func EvaluateDMARC(ctx context.Context, r dns.Resolver, fromDomain string, mailFrom *SPFResult, dkims []DKIMResult, sample func() int) DMARCResult {
	res := DMARCResult{FromDomain: strings.ToLower(fromDomain)}
	org := OrgDomain(res.FromDomain)
	opts := &dmarc.LookupOptions{LookupTXT: lookupTXT(ctx, r)}
	rec, err := dmarc.LookupWithOptions(res.FromDomain, opts)
	atOrg := false
	if errors.Is(err, dmarc.ErrNoPolicy) && org != res.FromDomain {
		// §6.6.3: no record at the author domain, so the organizational domain's applies.
		rec, err = dmarc.LookupWithOptions(org, opts)
		atOrg = true
	}
	switch {
	case errors.Is(err, dmarc.ErrNoPolicy):
		res.Result = "none"
		return res
	case err != nil && dmarc.IsTempFail(err):
		res.Result, res.Err = "temperror", err
		return res
	case err != nil:
		// §6.6.3: a record that does not parse is as if there were none; we say permerror.
		res.Result, res.Err = "permerror", err
		return res
	}
	res.Policy = string(rec.Policy)
	if atOrg && rec.SubdomainPolicy != "" {
		res.Policy = string(rec.SubdomainPolicy)
	}
	// mailFrom is the MAIL FROM identity; for the null path RFC 7208 §2.4 makes that
	// postmaster@HELO, and RFC 7489 §4.1 uses it as such.
	if mailFrom != nil && mailFrom.Result == spf.Pass {
		res.SPFAligned = aligned(mailFrom.Domain, res.FromDomain, rec.SPFAlignment == dmarc.AlignmentStrict)
	}
	passing := 0
	for _, d := range dkims {
		if d.Result == "pass" {
			passing++
			if aligned(d.Domain, res.FromDomain, rec.DKIMAlignment == dmarc.AlignmentStrict) {
				res.DKIMAligned = true
			}
		}
	}
	if res.SPFAligned || res.DKIMAligned {
		res.Result, res.Applied = "pass", "none"
		return res
	}
	res.Result = "fail"
	res.Why = failWhy(mailFrom, res.FromDomain, len(dkims), passing)
	res.Applied = res.Policy
	if rec.Percent != nil && *rec.Percent < 100 {
		n := 0
		if sample != nil {
			n = sample()
		} else {
			n = rand.IntN(100)
		}
		// §6.6.4: a message outside the sample gets the next weaker policy.
		if n >= *rec.Percent {
			switch res.Applied {
			case "reject":
				res.Applied = "quarantine"
			case "quarantine":
				res.Applied = "none"
			}
		}
	}
	return res
}

// failWhy says in plain words why neither identifier passed aligned.
func failWhy(mailFrom *SPFResult, from string, sigs, passing int) string {
	var spfPart string
	switch {
	case mailFrom == nil:
		spfPart = "no SPF result"
	case mailFrom.Result == spf.Pass:
		spfPart = fmt.Sprintf("SPF pass for %s is not aligned with %s", mailFrom.Domain, from)
	default:
		spfPart = "SPF " + string(mailFrom.Result)
	}
	var dkimPart string
	switch {
	case sigs == 0:
		dkimPart = "no DKIM signature"
	case passing == 0:
		dkimPart = "no valid DKIM signature"
	default:
		dkimPart = "no aligned DKIM signature"
	}
	return spfPart + " and " + dkimPart
}

// fromDomain finds the RFC5322.From domain. RFC 7489 §6.6.1: a message without exactly one
// From field with one address cannot be evaluated.
func fromDomain(fields []Field) (string, error) {
	var from []string
	for _, f := range fields {
		if strings.EqualFold(f.Name, "From") {
			from = append(from, f.Value)
		}
	}
	if len(from) != 1 {
		return "", fmt.Errorf("%d From fields", len(from))
	}
	addrs, err := mail.ParseAddressList(from[0])
	if err != nil || len(addrs) != 1 {
		// net/mail is strict; a bare "user@domain" or a display name it dislikes still
		// names one domain, which is all DMARC needs.
		v := from[0]
		if i, j := strings.LastIndexByte(v, '<'), strings.LastIndexByte(v, '>'); i >= 0 && j > i {
			v = v[i+1 : j]
		}
		v = strings.TrimSpace(v)
		if at := strings.LastIndexByte(v, '@'); at > 0 && !strings.ContainsAny(v, " ,;<>") {
			return strings.ToLower(v[at+1:]), nil
		}
		return "", fmt.Errorf("the From field %q does not name one address", from[0])
	}
	at := strings.LastIndexByte(addrs[0].Address, '@')
	if at < 0 {
		return "", fmt.Errorf("the From address %q has no domain", addrs[0].Address)
	}
	return strings.ToLower(addrs[0].Address[at+1:]), nil
}

// DMARCCheck enforces the author domain's policy at the end of data, after SPFCheck and
// DKIMCheck. OnReject and OnQuarantine map the published policies to our actions.
type DMARCCheck struct {
	Resolver     dns.Resolver
	OnReject     policy.Action // default Reject
	OnQuarantine policy.Action // default Quarantine
	Sample       func() int    // pct= sampling; nil: random
}

func (*DMARCCheck) Name() string { return "dmarc" }

func (c *DMARCCheck) CheckData(ctx context.Context, t *policy.Txn, m policy.Message) policy.Verdict {
	if skip(t.Conn) {
		return policy.Verdict{}
	}
	st := stateFor(t.Conn, t)
	rc, err := m.Open()
	if err != nil {
		return policy.Verdict{Err: err}
	}
	fields, err := ReadHeader(rc)
	rc.Close()
	if err != nil {
		return policy.Verdict{Err: err}
	}
	dom, err := fromDomain(fields)
	if err != nil {
		r := DMARCResult{Result: "permerror", Err: err}
		st.dmarc = &r
		return policy.Verdict{Result: "permerror", Reason: "DMARC: " + err.Error()}
	}
	r := EvaluateDMARC(ctx, c.Resolver, dom, st.mail, st.dkim, c.Sample)
	st.dmarc = &r
	v := policy.Verdict{Result: r.Result}
	switch r.Result {
	case "temperror":
		v.Err = r.Err
		return v
	case "fail":
	default:
		return v
	}
	v.Reason = fmt.Sprintf("DMARC policy of %s is %s: %s", r.FromDomain, r.Policy, r.Why)
	if r.Applied != r.Policy {
		v.Reason += fmt.Sprintf(" (outside pct=, applied %s)", r.Applied)
	}
	if st.arcTrusted != "" && (r.Applied == "reject" || r.Applied == "quarantine") {
		// RFC 7489 §6.7 and RFC 8617 §7.2: local policy may accept what a trusted
		// intermediary vouches for; the failure is still reported.
		r.Override = st.arcTrusted
		v.Result = fmt.Sprintf("fail (arc override by d=%s)", r.Override)
		v.Reason += fmt.Sprintf("; not applied: the ARC chain passes and its newest sealer %s is trusted", r.Override)
		return v
	}
	switch r.Applied {
	case "reject":
		v.Action = c.OnReject
	case "quarantine":
		v.Action = c.OnQuarantine
	}
	// RFC 7372 §3.3: 5.7.26 is "multiple authentication checks failed".
	text := fmt.Sprintf("DMARC policy of %s is %s: %s", r.FromDomain, r.Policy, r.Why)
	switch v.Action {
	case policy.Reject:
		v.Reply = smtp.NewReply(550, smtp.EnhancedCode{5, 7, 26}, text)
	case policy.Tempfail:
		v.Reply = smtp.NewReply(451, smtp.EnhancedCode{4, 7, 26}, text+", try again later")
	}
	return v
}
