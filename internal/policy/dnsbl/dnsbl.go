// Package dnsbl looks the client address up in DNS-based lists (RFC 5782): block lists that
// refuse a client, and allow lists (plus trusted networks) that exempt it from reputation
// checks. Both run at connect, before the greeting.
package dnsbl

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"sync"

	"github.com/postamt/postamt/internal/dns"
	"github.com/postamt/postamt/internal/policy"
	"github.com/postamt/postamt/internal/smtp"
)

// List is one DNS list zone.
type List struct {
	Zone string
	// Codes are the answers that count as listed (addresses or prefixes such as
	// "127.0.0.2" or "127.0.0.0/24"). Empty: any 127.0.0.0/8 answer except 127.255.255.0/24,
	// which Spamhaus and others use to say "query refused", not "listed".
	Codes  []netip.Prefix
	Action policy.Action // for block lists; Reject by default in the configuration
	Score  float64
}

var (
	loopback8 = netip.MustParsePrefix("127.0.0.0/8")
	errorNet  = netip.MustParsePrefix("127.255.255.0/24")
)

func (l *List) matches(a netip.Addr) bool {
	if len(l.Codes) == 0 {
		return loopback8.Contains(a) && !errorNet.Contains(a)
	}
	for _, p := range l.Codes {
		if p.Contains(a) {
			return true
		}
	}
	return false
}

// Query is the name to look up for ip in zone (RFC 5782 §2.1 and §2.4): reversed octets for
// IPv4, reversed nibbles for IPv6.
func Query(ip netip.Addr, zone string) string {
	var b strings.Builder
	if ip.Is4() || ip.Is4In6() {
		a := ip.Unmap().As4()
		fmt.Fprintf(&b, "%d.%d.%d.%d", a[3], a[2], a[1], a[0])
	} else {
		a := ip.As16()
		const hex = "0123456789abcdef"
		for i := 15; i >= 0; i-- {
			if i < 15 {
				b.WriteByte('.')
			}
			b.WriteByte(hex[a[i]&0xf])
			b.WriteByte('.')
			b.WriteByte(hex[a[i]>>4])
		}
	}
	return b.String() + "." + strings.TrimSuffix(zone, ".")
}

// lookup asks one list; it returns the matching answer, or the zero Addr when not listed.
func lookup(ctx context.Context, r dns.Resolver, l *List, ip netip.Addr) (netip.Addr, error) {
	addrs, err := r.LookupNetIP(ctx, "ip4", Query(ip, l.Zone))
	if err != nil {
		var de *net.DNSError
		if errors.As(err, &de) && de.IsNotFound {
			return netip.Addr{}, nil
		}
		return netip.Addr{}, err
	}
	for _, a := range addrs {
		if l.matches(a) {
			return a, nil
		}
	}
	return netip.Addr{}, nil
}

type hit struct {
	list *List
	code netip.Addr
	err  error
}

// lookupAll asks every list at once and returns the answers in list order.
func lookupAll(ctx context.Context, r dns.Resolver, lists []List, ip netip.Addr) []hit {
	hits := make([]hit, len(lists))
	var wg sync.WaitGroup
	for i := range lists {
		wg.Add(1)
		go func() {
			defer wg.Done()
			code, err := lookup(ctx, r, &lists[i], ip)
			hits[i] = hit{list: &lists[i], code: code, err: err}
		}()
	}
	wg.Wait()
	return hits
}

// Blocklist refuses (or scores) clients listed in its zones.
type Blocklist struct {
	Resolver dns.Resolver
	Lists    []List
}

func (*Blocklist) Name() string { return "dnsbl" }

func (b *Blocklist) CheckConn(ctx context.Context, c *policy.Conn) policy.Verdict {
	if c.Exempt() || !c.RemoteIP.IsValid() {
		return policy.Verdict{}
	}
	var v policy.Verdict
	var errs []string
	var listed []string
	for _, h := range lookupAll(ctx, b.Resolver, b.Lists, c.RemoteIP) {
		switch {
		case h.err != nil:
			errs = append(errs, h.list.Zone+": "+h.err.Error())
		case h.code.IsValid():
			listed = append(listed, h.list.Zone+"="+h.code.String())
			v.Score += h.list.Score
			if h.list.Action > v.Action {
				v.Action = h.list.Action
				text := fmt.Sprintf("Client host [%s] is listed by %s", c.RemoteIP, h.list.Zone)
				if h.list.Action == policy.Tempfail {
					v.Reply = smtp.NewReply(421, smtp.EnhancedCode{4, 7, 1}, text+", try again later")
				} else {
					v.Reply = smtp.NewReply(554, smtp.EnhancedCode{5, 7, 1}, text)
				}
			}
		}
	}
	switch {
	case len(listed) > 0:
		v.Result = "listed:" + strings.Join(listed, ",")
		v.Reason = fmt.Sprintf("%s listed by %s", c.RemoteIP, strings.Join(listed, ", "))
	case len(errs) == len(b.Lists) && len(errs) > 0:
		// Every list failed: the entry's fail-open/closed rule decides.
		v.Err = errors.New(strings.Join(errs, "; "))
	default:
		v.Result = "clean"
		if len(errs) > 0 {
			v.Reason = "lookups failed: " + strings.Join(errs, "; ")
		}
	}
	return v
}

// Allowlist marks trusted clients (by network) and allowlisted ones (by DNS allow list). It
// comes first in the chain; it never refuses.
type Allowlist struct {
	Resolver dns.Resolver
	Trusted  []netip.Prefix
	Lists    []List
}

func (*Allowlist) Name() string { return "allowlist" }

func (a *Allowlist) CheckConn(ctx context.Context, c *policy.Conn) policy.Verdict {
	ip := c.RemoteIP.Unmap()
	for _, p := range a.Trusted {
		if p.Contains(ip) {
			c.Trusted = true
			return policy.Verdict{Result: "trusted"}
		}
	}
	if len(a.Lists) == 0 || !ip.IsValid() {
		return policy.Verdict{}
	}
	for _, h := range lookupAll(ctx, a.Resolver, a.Lists, ip) {
		if h.err == nil && h.code.IsValid() {
			c.Allowlisted = h.list.Zone
			return policy.Verdict{Result: "listed:" + h.list.Zone, Reason: fmt.Sprintf("%s allowlisted by %s (%s)", ip, h.list.Zone, h.code)}
		}
	}
	return policy.Verdict{}
}
