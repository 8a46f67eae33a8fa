// Package dnstest provides Zone, an in-memory dns.Resolver for tests (in the spirit of mox's
// MockResolver): names map to records, and names can be made to fail temporarily.
package dnstest

import (
	"context"
	"net"
	"net/netip"
	"strings"
	"sync/atomic"
)

// Zone is a fake resolver. Names are matched case-insensitively, without the trailing dot.
type Zone struct {
	MX   map[string][]*net.MX
	A    map[string][]netip.Addr // A and AAAA together
	TXT  map[string][]string
	PTR  map[string][]string
	Fail map[string]bool // names whose every lookup fails temporarily (SERVFAIL)
	// TLSA records by owner name ("_25._tcp.mx.example.test"); served by Server only.
	TLSA map[string][]TLSA
	// Secure marks names whose answers (records or denial) Server flags as DNSSEC-authenticated
	// (AD bit), as a validating resolver would, when the query asks for DNSSEC (DO or AD bit).
	Secure map[string]bool

	silent atomic.Bool // see SetSilent
}

// SetSilent makes Server drop every query (UDP and TCP alike get no answer) until it is called
// with false: a resolver that went away mid-test, for showing that work deferred during the
// outage completes once DNS is back. The in-memory Zone methods are not affected.
func (z *Zone) SetSilent(silent bool) { z.silent.Store(silent) }

// TLSA is one TLSA record (RFC 6698).
type TLSA struct {
	Usage, Selector, MatchingType uint8
	Data                          []byte
}

func norm(name string) string { return strings.TrimSuffix(strings.ToLower(name), ".") }

func (z *Zone) err(name string, notFound bool) error {
	if z.Fail[norm(name)] {
		return &net.DNSError{Err: "server misbehaving", Name: name, IsTemporary: true}
	}
	if notFound {
		return &net.DNSError{Err: "no such host", Name: name, IsNotFound: true}
	}
	return nil
}

func (z *Zone) LookupMX(_ context.Context, name string) ([]*net.MX, error) {
	mx, ok := z.MX[norm(name)]
	if err := z.err(name, !ok); err != nil {
		return nil, err
	}
	return mx, nil
}

func (z *Zone) LookupTXT(_ context.Context, name string) ([]string, error) {
	t, ok := z.TXT[norm(name)]
	if err := z.err(name, !ok); err != nil {
		return nil, err
	}
	return t, nil
}

func (z *Zone) LookupNetIP(_ context.Context, network, host string) ([]netip.Addr, error) {
	var out []netip.Addr
	for _, a := range z.A[norm(host)] {
		if network == "ip4" && !a.Is4() || network == "ip6" && !a.Is6() {
			continue
		}
		out = append(out, a)
	}
	if err := z.err(host, len(out) == 0); err != nil {
		return nil, err
	}
	return out, nil
}

func (z *Zone) LookupAddr(_ context.Context, addr string) ([]string, error) {
	p, ok := z.PTR[addr]
	if err := z.err(addr, !ok); err != nil {
		return nil, err
	}
	return p, nil
}
