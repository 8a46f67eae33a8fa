package mailauth

import (
	"context"
	"fmt"
	"io"
	"strings"

	"github.com/emersion/go-msgauth/dkim"

	"github.com/postamt/postamt/internal/dns"
	"github.com/postamt/postamt/internal/policy"
	"github.com/postamt/postamt/internal/smtp"
)

// DKIMResult is the verification of one DKIM-Signature field.
type DKIMResult struct {
	Result     string // pass, fail, temperror, permerror, policy
	Domain     string // d=
	Identifier string // i=
	Err        error
}

// maxSignatures bounds the work a message can ask for (RFC 6376 §8.4: signatures are cheap to
// add and costly to verify).
const maxSignatures = 5

// VerifyDKIM checks every DKIM signature of the message (rsa-sha256, and ed25519-sha256 of
// RFC 8463), looking keys up through r. No signature gives an empty slice.
func VerifyDKIM(ctx context.Context, r dns.Resolver, msg io.Reader) ([]DKIMResult, error) {
	vs, err := dkim.VerifyWithOptions(msg, &dkim.VerifyOptions{LookupTXT: lookupTXT(ctx, r), MaxVerifications: maxSignatures})
	if err != nil && err != dkim.ErrTooManySignatures {
		return nil, err
	}
	out := make([]DKIMResult, 0, len(vs))
	for _, v := range vs {
		d := DKIMResult{Result: "pass", Domain: strings.ToLower(v.Domain), Identifier: v.Identifier, Err: v.Err}
		switch {
		case v.Err == nil:
		case dkim.IsTempFail(v.Err):
			d.Result = "temperror"
		case dkim.IsPermFail(v.Err):
			d.Result = "permerror"
		default:
			d.Result = "fail"
		}
		out = append(out, d)
	}
	return out, nil
}

// DKIMCheck verifies signatures at the end of data. A failed signature alone refuses nothing
// unless OnFail says so (RFC 6376 §6.3: a failed signature is to be treated as no signature);
// DMARC decides what the results mean for the author's domain.
type DKIMCheck struct {
	Resolver dns.Resolver
	OnFail   policy.Action
}

func (*DKIMCheck) Name() string { return "dkim" }

func (c *DKIMCheck) CheckData(ctx context.Context, t *policy.Txn, m policy.Message) policy.Verdict {
	if skip(t.Conn) {
		return policy.Verdict{}
	}
	st := stateFor(t.Conn, t)
	rc, err := m.Open()
	if err != nil {
		return policy.Verdict{Err: err}
	}
	defer rc.Close()
	res, err := VerifyDKIM(ctx, c.Resolver, rc)
	if err != nil {
		// The message could not be read or its header is malformed: no usable signature.
		res = []DKIMResult{{Result: "permerror", Err: err}}
	}
	st.dkim, st.dkimRan = res, true
	v := policy.Verdict{Result: dkimSummary(res)}
	var fails, temps []string
	for _, r := range res {
		switch r.Result {
		case "fail", "permerror":
			fails = append(fails, r.Domain)
		case "temperror":
			temps = append(temps, r.Domain)
		}
		if r.Result != "pass" && r.Err != nil {
			v.Reason += fmt.Sprintf("d=%s %s: %v; ", r.Domain, r.Result, r.Err)
		}
	}
	switch {
	case anyPass(res):
	case len(fails) > 0:
		v.Action = c.OnFail
		switch c.OnFail {
		case policy.Reject: // RFC 7372 §3.1: 5.7.20 is "no passing DKIM signature found"
			v.Reply = smtp.Replyf(550, smtp.EnhancedCode{5, 7, 20}, "DKIM signature of %s did not verify", strings.Join(fails, ", "))
		case policy.Tempfail:
			v.Reply = smtp.Replyf(451, smtp.EnhancedCode{4, 7, 20}, "DKIM signature of %s did not verify, try again later", strings.Join(fails, ", "))
		}
	case len(temps) > 0:
		v.Err = fmt.Errorf("dkim temperror for %s", strings.Join(temps, ", "))
	}
	return v
}

func anyPass(res []DKIMResult) bool {
	for _, r := range res {
		if r.Result == "pass" {
			return true
		}
	}
	return false
}

// dkimSummary is the log token: "none", "pass", "fail", or "pass,fail" for several signatures.
func dkimSummary(res []DKIMResult) string {
	if len(res) == 0 {
		return "none"
	}
	seen := map[string]bool{}
	var parts []string
	for _, r := range res {
		if !seen[r.Result] {
			seen[r.Result] = true
			parts = append(parts, r.Result)
		}
	}
	return strings.Join(parts, ",")
}
