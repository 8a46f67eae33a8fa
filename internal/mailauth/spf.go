package mailauth

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"strings"

	"blitiri.com.ar/go/spf"

	"github.com/postamt/postamt/internal/dns"
	"github.com/postamt/postamt/internal/policy"
	"github.com/postamt/postamt/internal/smtp"
)

// SPFResult is one SPF evaluation.
type SPFResult struct {
	Result   spf.Result // pass, fail, softfail, neutral, none, temperror, permerror
	Identity string     // "mailfrom" or "helo"
	Domain   string     // the domain checked
	Sender   string     // the address checked (postmaster@helo for HELO and <>)
	Err      error      // what went wrong for temperror and permerror, for the log
}

// spfResolver gives blitiri's library our resolver (it wants *net.Resolver's LookupIPAddr).
type spfResolver struct{ r dns.Resolver }

func (s spfResolver) LookupTXT(ctx context.Context, name string) ([]string, error) {
	return s.r.LookupTXT(ctx, name)
}
func (s spfResolver) LookupMX(ctx context.Context, name string) ([]*net.MX, error) {
	return s.r.LookupMX(ctx, name)
}
func (s spfResolver) LookupAddr(ctx context.Context, addr string) ([]string, error) {
	return s.r.LookupAddr(ctx, addr)
}
func (s spfResolver) LookupIPAddr(ctx context.Context, host string) ([]net.IPAddr, error) {
	addrs, err := s.r.LookupNetIP(ctx, "ip", host)
	out := make([]net.IPAddr, len(addrs))
	for i, a := range addrs {
		out[i] = net.IPAddr{IP: a.AsSlice()}
	}
	return out, err
}

// CheckSPF evaluates the SPF record of sender's domain (RFC 7208 §4) for a client at ip that
// said helo. An empty sender checks the HELO identity (postmaster@helo, §2.3 and §2.4).
func CheckSPF(ctx context.Context, r dns.Resolver, ip netip.Addr, helo, sender string) SPFResult {
	res := SPFResult{Identity: "mailfrom", Sender: sender}
	if sender == "" {
		res.Identity, res.Sender = "helo", "postmaster@"+helo
	}
	if i := strings.LastIndexByte(res.Sender, '@'); i >= 0 {
		res.Domain = res.Sender[i+1:]
	}
	if res.Domain == "" || strings.HasPrefix(res.Domain, "[") {
		// An address literal has no SPF record (§2.3: "none" for HELO literals).
		res.Result = spf.None
		return res
	}
	res.Result, res.Err = spf.CheckHostWithSender(ip.AsSlice(), helo, res.Sender,
		spf.WithContext(ctx), spf.WithResolver(spfResolver{r}))
	return res
}

// SPFCheck is the SPF stage of the chain: the HELO identity at HELO, the MAIL FROM identity at
// MAIL. The results are kept for DMARC and the Authentication-Results header; on their own they
// refuse a sender only when configured to (OnFail, OnSoftfail), since DMARC is the better judge.
type SPFCheck struct {
	Resolver   dns.Resolver
	OnFail     policy.Action // default Continue
	OnSoftfail policy.Action
}

func (*SPFCheck) Name() string { return "spf" }

func (c *SPFCheck) CheckHelo(ctx context.Context, conn *policy.Conn) policy.Verdict {
	if skip(conn) {
		return policy.Verdict{}
	}
	st := stateFor(conn, nil)
	helo := conn.Helo
	if strings.HasPrefix(helo, "[") || !strings.Contains(helo, ".") {
		st.helo = &SPFResult{Result: spf.None, Identity: "helo", Domain: helo, Sender: "postmaster@" + helo}
		return policy.Verdict{}
	}
	r := CheckSPF(ctx, c.Resolver, conn.RemoteIP, helo, "")
	st.helo = &r
	return policy.Verdict{}
}

func (c *SPFCheck) CheckMail(ctx context.Context, t *policy.Txn) policy.Verdict {
	if skip(t.Conn) {
		return policy.Verdict{}
	}
	st := stateFor(t.Conn, t)
	var r SPFResult
	if t.From == "" && st.helo != nil {
		r = *st.helo
	} else {
		r = CheckSPF(ctx, c.Resolver, t.Conn.RemoteIP, t.Conn.Helo, t.From)
	}
	st.mail = &r
	v := policy.Verdict{Result: string(r.Result), Reason: spfReason(r, t.Conn.RemoteIP)}
	switch r.Result {
	case spf.Fail:
		v.Action = c.OnFail
	case spf.SoftFail:
		v.Action = c.OnSoftfail
	case spf.TempError:
		v.Err = fmt.Errorf("spf temperror for %s: %v", r.Domain, r.Err)
	}
	switch v.Action {
	case policy.Reject:
		// RFC 7372 §3.2: 5.7.23 is "SPF validation failed".
		v.Reply = smtp.Replyf(550, smtp.EnhancedCode{5, 7, 23}, "SPF %s: %s is not allowed to send mail for %s", r.Result, t.Conn.RemoteIP, r.Domain)
	case policy.Tempfail:
		v.Reply = smtp.Replyf(451, smtp.EnhancedCode{4, 7, 23}, "SPF %s: %s is not allowed to send mail for %s, try again later", r.Result, t.Conn.RemoteIP, r.Domain)
	}
	return v
}

func spfReason(r SPFResult, ip netip.Addr) string {
	s := fmt.Sprintf("SPF %s for %s (%s) from %s", r.Result, r.Domain, r.Identity, ip)
	if r.Err != nil && (r.Result == spf.TempError || r.Result == spf.PermError) {
		s += ": " + r.Err.Error()
	}
	return s
}
