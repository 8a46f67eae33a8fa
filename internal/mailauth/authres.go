package mailauth

import (
	"context"
	"fmt"
	"strings"

	"github.com/emersion/go-msgauth/authres"

	"github.com/postamt/postamt/internal/policy"
)

// ObscuredName replaces the name of a forged Authentication-Results field. It has the same
// length (22 octets) so that a message already in its spool file is patched, not rewritten;
// RFC 8601 §5 lets a border MTA delete or otherwise obscure such fields, and renaming keeps the
// evidence for whoever investigates the message. The submission and local paths never see it.
const ObscuredName = "X-Spoofed-Auth-Results"

const arName = "Authentication-Results"

// AuthResultsCheck comes after SPFCheck, DKIMCheck, ARCCheck and DMARCCheck: it writes their results
// into one Authentication-Results field under AuthServID (our hostname) and renames every
// received Authentication-Results field that claims that same authserv-id, since nobody
// outside may speak for us (RFC 8601 §5).
type AuthResultsCheck struct {
	AuthServID string
}

func (*AuthResultsCheck) Name() string { return "authres" }

func (c *AuthResultsCheck) CheckData(ctx context.Context, t *policy.Txn, m policy.Message) policy.Verdict {
	if skip(t.Conn) {
		return policy.Verdict{}
	}
	st := stateFor(t.Conn, t)
	v := policy.Verdict{}
	rc, err := m.Open()
	if err != nil {
		return policy.Verdict{Err: err}
	}
	fields, err := ReadHeader(rc)
	rc.Close()
	if err != nil {
		return policy.Verdict{Err: err}
	}
	forged := 0
	for _, f := range fields {
		if strings.EqualFold(f.Name, arName) && len(f.Name) == len(ObscuredName) && strings.EqualFold(AuthServID(f.Value), c.AuthServID) {
			v.Overwrites = append(v.Overwrites, policy.Overwrite{Offset: f.Offset, Data: []byte(ObscuredName)})
			forged++
		}
	}
	if forged > 0 {
		v.Result = "forged-removed"
		v.Reason = "renamed forged Authentication-Results fields claiming " + c.AuthServID
	}
	v.Headers = []string{arName + ": " + fold(authres.Format(c.AuthServID, st.results(t)))}
	return v
}

// AuthServID returns the authserv-id of an Authentication-Results value: the first token,
// before any CFWS, version or ';' (RFC 8601 §2.2).
func AuthServID(value string) string {
	v := strings.TrimLeft(value, " \t")
	// Skip a leading comment, which RFC 8601's CFWS allows.
	for strings.HasPrefix(v, "(") {
		end := strings.IndexByte(v, ')')
		if end < 0 {
			return ""
		}
		v = strings.TrimLeft(v[end+1:], " \t")
	}
	end := strings.IndexAny(v, "; \t(")
	if end < 0 {
		end = len(v)
	}
	return strings.Trim(v[:end], `"`)
}

// results turns the transaction's findings into RFC 8601 result clauses, in check order.
func (st *state) results(t *policy.Txn) []authres.Result {
	var rs []authres.Result
	if r, ok := t.Conn.Values[policy.IPRevKey].(string); ok {
		rs = append(rs, &authres.IPRevResult{Value: authres.ResultValue(r), IP: t.Conn.RemoteIP.String()})
	}
	if st.mail != nil {
		r := &authres.SPFResult{Value: authres.ResultValue(st.mail.Result)}
		if st.mail.Identity == "helo" {
			r.Helo = st.mail.Domain
		} else {
			r.From = st.mail.Domain
		}
		rs = append(rs, r)
	} else if st.helo != nil && st.helo.Result != "" {
		rs = append(rs, &authres.SPFResult{Value: authres.ResultValue(st.helo.Result), Helo: st.helo.Domain})
	}
	if st.dkimRan {
		if len(st.dkim) == 0 {
			rs = append(rs, &authres.DKIMResult{Value: authres.ResultNone})
		}
		for _, d := range st.dkim {
			rs = append(rs, &authres.DKIMResult{Value: authres.ResultValue(d.Result), Domain: d.Domain, Identifier: d.Identifier})
		}
	}
	if st.arc != nil {
		// go-msgauth's Format knows no method name for its ARCResult, hence the generic form.
		p := map[string]string{"smtp.remote-ip": t.Conn.RemoteIP.String()}
		if st.arc.Result == "pass" && st.arc.OldestPass > 0 {
			p["header.oldest-pass"] = fmt.Sprint(st.arc.OldestPass)
		}
		rs = append(rs, &authres.GenericResult{Method: "arc", Value: authres.ResultValue(st.arc.Result), Params: p})
	}
	if st.dmarc != nil {
		r := &authres.DMARCResult{Value: authres.ResultValue(st.dmarc.Result), From: st.dmarc.FromDomain}
		if st.dmarc.Override != "" {
			r.Reason = "arc override by d=" + st.dmarc.Override
		}
		rs = append(rs, r)
	}
	return rs
}

// fold breaks the value after each ';' so the field stays well under 78 columns per line for
// the usual three results.
func fold(v string) string {
	return strings.ReplaceAll(v, "; ", ";\r\n\t")
}
