// Package dns is the resolver seam: every component that looks something up takes a Resolver,
// so tests can pass dnstest.Zone and production a system resolver pointed at configured servers.
// Errors are *net.DNSError with IsNotFound and IsTemporary set, which callers and go-msgauth
// use to tell "does not exist" from "try again later".
package dns

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"strings"
	"sync/atomic"
	"time"
)

// Resolver is the subset of *net.Resolver Postamt uses.
type Resolver interface {
	LookupMX(ctx context.Context, name string) ([]*net.MX, error)
	LookupTXT(ctx context.Context, name string) ([]string, error)
	LookupNetIP(ctx context.Context, network, host string) ([]netip.Addr, error)
	LookupAddr(ctx context.Context, addr string) ([]string, error)
}

// LookupTimeout bounds one lookup, whatever /etc/resolv.conf says about timeouts and attempts
// (Go's defaults, 5 s × 2 attempts × every server × every search name, can reach a minute).
const LookupTimeout = 15 * time.Second

// Sys is the Go resolver as Postamt uses it. MX and TXT lookups use the absolute name, so the
// host's search domains never apply to them (a mail domain that does not exist must not find
// the MX or SPF record of "domain.corp.example" — Postfix turns the search list off for the same
// reason). Address lookups keep the name as given, because Go consults /etc/hosts only for
// names without the trailing dot, and operators and tests rely on that file. Every lookup is
// bounded by LookupTimeout.
type Sys struct{ r *net.Resolver }

// System returns the system resolver; with servers ("ip:port") it asks those instead of
// /etc/resolv.conf (chasquid's dnsoverride made an ordinary setting: useful with a local unbound).
func System(servers []string) *Sys {
	if len(servers) == 0 {
		return &Sys{&net.Resolver{PreferGo: true}}
	}
	// Dial runs on concurrent lookups (A and AAAA in parallel, many deliveries at once).
	var next atomic.Uint64
	return &Sys{&net.Resolver{
		PreferGo: true,
		Dial: func(ctx context.Context, network, _ string) (net.Conn, error) {
			s := servers[(next.Add(1)-1)%uint64(len(servers))]
			d := net.Dialer{Timeout: 5 * time.Second}
			return d.DialContext(ctx, network, s)
		},
	}}
}

// Net is the underlying resolver, for an HTTP client that should resolve the same way.
func (s *Sys) Net() *net.Resolver { return s.r }

// Absolute makes a host name absolute (a trailing dot); IP literals are left alone.
func Absolute(name string) string {
	if name == "" || strings.HasSuffix(name, ".") {
		return name
	}
	if _, err := netip.ParseAddr(name); err == nil {
		return name
	}
	return name + "."
}

func (s *Sys) LookupMX(ctx context.Context, name string) ([]*net.MX, error) {
	ctx, cancel := context.WithTimeout(ctx, LookupTimeout)
	defer cancel()
	return s.r.LookupMX(ctx, Absolute(name))
}

func (s *Sys) LookupTXT(ctx context.Context, name string) ([]string, error) {
	ctx, cancel := context.WithTimeout(ctx, LookupTimeout)
	defer cancel()
	return s.r.LookupTXT(ctx, Absolute(name))
}

func (s *Sys) LookupNetIP(ctx context.Context, network, host string) ([]netip.Addr, error) {
	ctx, cancel := context.WithTimeout(ctx, LookupTimeout)
	defer cancel()
	return s.r.LookupNetIP(ctx, network, host)
}

func (s *Sys) LookupAddr(ctx context.Context, addr string) ([]string, error) {
	ctx, cancel := context.WithTimeout(ctx, LookupTimeout)
	defer cancel()
	return s.r.LookupAddr(ctx, addr)
}

// IsNotFound reports an authoritative "no such name / no such record".
func IsNotFound(err error) bool {
	var de *net.DNSError
	return errors.As(err, &de) && de.IsNotFound
}
