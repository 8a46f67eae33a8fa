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

// System returns the Go resolver; with servers ("ip:port") it asks those instead of
// /etc/resolv.conf (chasquid's dnsoverride made an ordinary setting: useful with a local unbound).
func System(servers []string) *net.Resolver {
	if len(servers) == 0 {
		return &net.Resolver{PreferGo: true}
	}
	// Dial runs on concurrent lookups (A and AAAA in parallel, many deliveries at once).
	var next atomic.Uint64
	return &net.Resolver{
		PreferGo: true,
		Dial: func(ctx context.Context, network, _ string) (net.Conn, error) {
			s := servers[(next.Add(1)-1)%uint64(len(servers))]
			d := net.Dialer{Timeout: 5 * time.Second}
			return d.DialContext(ctx, network, s)
		},
	}
}

// IsNotFound reports an authoritative "no such name / no such record".
func IsNotFound(err error) bool {
	var de *net.DNSError
	return errors.As(err, &de) && de.IsNotFound
}
