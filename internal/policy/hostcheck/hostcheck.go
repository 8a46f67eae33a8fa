// Package hostcheck holds the checks about who the client says it is: forward-confirmed
// reverse DNS, HELO sanity, and pre-greet talkers.
package hostcheck

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strings"

	"github.com/postamt/postamt/internal/dns"
	"github.com/postamt/postamt/internal/policy"
	"github.com/postamt/postamt/internal/smtp"
)

// maxPTR bounds the names tried, as Postfix and RFC 8601's iprev (§3) suggest.
const maxPTR = 10

// FCrDNS checks that the client's address has a PTR name that resolves back to it.
type FCrDNS struct {
	Resolver dns.Resolver
	OnFail   policy.Action // Continue by default: many small senders lack it
}

func (*FCrDNS) Name() string { return "fcrdns" }

// Confirm returns the first reverse name of ip whose forward lookup contains ip; "" and nil
// when there is none.
func Confirm(ctx context.Context, r dns.Resolver, ip netip.Addr) (string, error) {
	names, err := r.LookupAddr(ctx, ip.String())
	if err != nil {
		var de *net.DNSError
		if errors.As(err, &de) && de.IsNotFound {
			return "", nil
		}
		return "", err
	}
	var lastErr error
	for i, n := range names {
		if i == maxPTR {
			break
		}
		addrs, err := r.LookupNetIP(ctx, "ip", n)
		if err != nil {
			var de *net.DNSError
			if !errors.As(err, &de) || !de.IsNotFound {
				lastErr = err
			}
			continue
		}
		for _, a := range addrs {
			if a.Unmap() == ip.Unmap() {
				return strings.TrimSuffix(n, "."), nil
			}
		}
	}
	return "", lastErr
}

func (f *FCrDNS) CheckConn(ctx context.Context, c *policy.Conn) policy.Verdict {
	if c.Exempt() || !c.RemoteIP.IsValid() {
		return policy.Verdict{}
	}
	name, err := Confirm(ctx, f.Resolver, c.RemoteIP)
	if c.Values != nil {
		switch {
		case name != "":
			c.Values[policy.IPRevKey] = "pass"
		case err != nil:
			c.Values[policy.IPRevKey] = "temperror"
		default:
			c.Values[policy.IPRevKey] = "fail"
		}
	}
	switch {
	case name != "":
		return policy.Verdict{Result: "pass", Reason: c.RemoteIP.String() + " is " + name}
	case err != nil:
		return policy.Verdict{Result: "temperror", Err: err}
	}
	v := policy.Verdict{Result: "fail", Action: f.OnFail, Reason: fmt.Sprintf("%s has no forward-confirmed reverse DNS name", c.RemoteIP)}
	switch f.OnFail {
	case policy.Reject:
		v.Reply = smtp.Replyf(550, smtp.EnhancedCode{5, 7, 25}, "Client host [%s] has no reverse DNS name that resolves back to it", c.RemoteIP)
	case policy.Tempfail:
		v.Reply = smtp.Replyf(450, smtp.EnhancedCode{4, 7, 25}, "Client host [%s] has no reverse DNS name that resolves back to it, try again later", c.RemoteIP)
	}
	return v
}

// Helo checks the HELO/EHLO argument. A client claiming one of our own names or addresses is
// forging (Action, Reject by default); with Strict, a name that is not a fully qualified domain
// or an address literal that is not the client's also gets Action.
type Helo struct {
	OurNames []string // our hostname and local domains, lower case
	Strict   bool
	Action   policy.Action
}

func (*Helo) Name() string { return "helo" }

// Problem returns why helo is unacceptable from ip, or "".
func (h *Helo) Problem(helo string, ip, local netip.Addr) string {
	lower := strings.ToLower(strings.TrimSuffix(helo, "."))
	if lit, ok := strings.CutPrefix(lower, "["); ok {
		lit = strings.TrimSuffix(lit, "]")
		lit = strings.TrimPrefix(lit, "ipv6:")
		a, err := netip.ParseAddr(lit)
		switch {
		case err != nil:
			return "HELO " + helo + " is not a valid address literal"
		case local.IsValid() && a.Unmap() == local.Unmap():
			return "HELO " + helo + " is our own address"
		case h.Strict && a.Unmap() != ip.Unmap():
			return "HELO " + helo + " is not your address"
		}
		return ""
	}
	for _, n := range h.OurNames {
		if lower == n {
			return "HELO " + helo + " is our own name"
		}
	}
	if h.Strict {
		if !strings.Contains(lower, ".") {
			return "HELO " + helo + " is not a fully qualified domain name"
		}
		if _, err := smtp.ParseAddress("x@"+lower, true); err != nil {
			return "HELO " + helo + " is not a valid domain name"
		}
	}
	return ""
}

func (h *Helo) CheckHelo(ctx context.Context, c *policy.Conn) policy.Verdict {
	if c.Trusted || c.AuthUser != "" {
		return policy.Verdict{}
	}
	var local netip.Addr
	if ta, ok := c.LocalAddr.(*net.TCPAddr); ok {
		local, _ = netip.AddrFromSlice(ta.IP)
	}
	p := h.Problem(c.Helo, c.RemoteIP, local)
	if p == "" {
		return policy.Verdict{Result: "ok"}
	}
	v := policy.Verdict{Result: "bad", Action: h.Action, Reason: p}
	switch h.Action {
	case policy.Reject:
		v.Reply = smtp.NewReply(550, smtp.EnhancedCode{5, 7, 1}, p)
	case policy.Tempfail:
		v.Reply = smtp.NewReply(450, smtp.EnhancedCode{4, 7, 1}, p+", try again later")
	}
	return v
}

// PreGreet refuses a client that talked before the greeting (the server waits
// smtpserver.Options.GreetDelay to find out). A real SMTP client waits for the banner
// (RFC 5321 §3.1); bots that blast their commands do not.
type PreGreet struct {
	Action policy.Action // Reject by default
}

func (*PreGreet) Name() string { return "pregreet" }

func (p *PreGreet) CheckConn(ctx context.Context, c *policy.Conn) policy.Verdict {
	if !c.PreGreet || c.Exempt() {
		return policy.Verdict{}
	}
	v := policy.Verdict{Result: "talker", Action: p.Action, Reason: "client sent data before the greeting"}
	switch p.Action {
	case policy.Reject:
		v.Reply = smtp.NewReply(554, smtp.EnhancedCode{5, 5, 1}, "Protocol error: you sent data before the greeting")
	case policy.Tempfail:
		v.Reply = smtp.NewReply(421, smtp.EnhancedCode{4, 5, 1}, "Protocol error: you sent data before the greeting, try again later")
	}
	return v
}
