package tlspolicy

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"strconv"
	"strings"
	"time"

	mdns "github.com/miekg/dns"
)

// SecureResolver asks one configured, trusted, validating resolver (typically a local unbound)
// with the DO bit set and believes its AD bit. The AD bit means nothing when it comes from a
// resolver we do not control over a path we do not trust, which is why DANE never uses the
// general dns.Resolver (RFC 7672 §1.3, RFC 6698 §4.1).
type SecureResolver struct {
	Addr    string // "ip:port"
	Timeout time.Duration
}

// ErrLookup marks a failed (not negative) lookup: SERVFAIL, timeout, bogus data. With DNSSEC
// this is what an attack looks like, so callers defer rather than fall back (RFC 7672 §2.2).
var ErrLookup = errors.New("secure DNS lookup failed")

// query returns the answer, whether it is authenticated, and whether the name/type exists.
func (r *SecureResolver) query(ctx context.Context, name string, qtype uint16) (*mdns.Msg, bool, error) {
	m := new(mdns.Msg)
	m.SetQuestion(mdns.Fqdn(name), qtype)
	m.RecursionDesired = true
	m.AuthenticatedData = true // RFC 6840 §5.7: ask for AD even without DO; we set DO too
	m.SetEdns0(4096, true)
	timeout := r.Timeout
	if timeout == 0 {
		timeout = 5 * time.Second
	}
	c := &mdns.Client{Timeout: timeout}
	resp, _, err := c.ExchangeContext(ctx, m, r.Addr)
	if err == nil && resp.Truncated {
		c.Net = "tcp"
		resp, _, err = c.ExchangeContext(ctx, m, r.Addr)
	}
	if err != nil {
		return nil, false, fmt.Errorf("%w: %s %s: %v", ErrLookup, mdns.TypeToString[qtype], name, err)
	}
	switch resp.Rcode {
	case mdns.RcodeSuccess, mdns.RcodeNameError:
	default:
		return nil, false, fmt.Errorf("%w: %s %s: %s", ErrLookup, mdns.TypeToString[qtype], name, mdns.RcodeToString[resp.Rcode])
	}
	return resp, resp.AuthenticatedData, nil
}

// MX looks up domain's MX RRset; secure says whether it (or its denial, for the implicit MX) is
// DNSSEC-authenticated. DANE applies only below a secure MX lookup (RFC 7672 §2.2.1), and then
// the hosts to try must be these, not an answer from an unvalidated resolver.
func (r *SecureResolver) MX(ctx context.Context, domain string) (mxs []*net.MX, secure bool, err error) {
	resp, ad, err := r.query(ctx, domain, mdns.TypeMX)
	if err != nil {
		return nil, false, err
	}
	for _, rr := range resp.Answer {
		if mx, ok := rr.(*mdns.MX); ok {
			mxs = append(mxs, &net.MX{Host: mx.Mx, Pref: mx.Preference})
		}
	}
	return mxs, ad, nil
}

// TLSA looks up _port._tcp.host. secure is false when the answer was not authenticated; records
// are then returned but must not be used. An authenticated denial gives secure and no records.
func (r *SecureResolver) TLSA(ctx context.Context, host string, port int) (recs []TLSA, secure bool, err error) {
	name := "_" + strconv.Itoa(port) + "._tcp." + strings.TrimSuffix(host, ".")
	resp, ad, err := r.query(ctx, name, mdns.TypeTLSA)
	if err != nil {
		return nil, false, err
	}
	for _, rr := range resp.Answer {
		// CNAME chains are followed by the resolver; we take TLSA records wherever they sit.
		t, ok := rr.(*mdns.TLSA)
		if !ok {
			continue
		}
		data, herr := hex.DecodeString(t.Certificate)
		if herr != nil {
			continue
		}
		recs = append(recs, TLSA{Usage: t.Usage, Selector: t.Selector, MatchingType: t.MatchingType, Data: data})
	}
	return recs, ad, nil
}
