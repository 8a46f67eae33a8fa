package dnstest

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"testing"
	"time"

	mdns "github.com/miekg/dns"

	"github.com/postamt/postamt/internal/dns"
)

// TestBlackholeNeverAnswers: over UDP and TCP the query arrives and no answer comes; the
// resolver gives up when its context ends, with a temporary (timeout) error.
func TestBlackholeNeverAnswers(t *testing.T) {
	addr, queries := Blackhole(t)
	q := new(mdns.Msg)
	q.SetQuestion("remote.test.", mdns.TypeMX)
	for _, network := range []string{"udp", "tcp"} {
		c := &mdns.Client{Net: network, Timeout: 300 * time.Millisecond}
		before := queries()
		start := time.Now()
		r, _, err := c.Exchange(q, addr)
		if err == nil || r != nil {
			t.Fatalf("%s: got answer %v, err %v; want a timeout", network, r, err)
		}
		var ne net.Error
		if !errors.As(err, &ne) || !ne.Timeout() {
			t.Errorf("%s: err %v, want a timeout", network, err)
		}
		if took := time.Since(start); took > 2*time.Second {
			t.Errorf("%s: gave up after %v", network, took)
		}
		if queries() <= before {
			t.Errorf("%s: the blackhole saw no query", network)
		}
	}

	ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
	defer cancel()
	start := time.Now()
	_, err := dns.System([]string{addr}).LookupMX(ctx, "remote.test")
	var de *net.DNSError
	if !errors.As(err, &de) || !de.IsTemporary && !de.IsTimeout || dns.IsNotFound(err) {
		t.Errorf("LookupMX: %v, want a temporary error", err)
	}
	if took := time.Since(start); took > 2*time.Second {
		t.Errorf("LookupMX returned after %v, past its 500ms context", took)
	}
}

// TestSilentZone: a silenced Server answers nothing; un-silenced, it answers again.
func TestSilentZone(t *testing.T) {
	z := &Zone{A: map[string][]netip.Addr{"mx.remote.test": {netip.MustParseAddr("192.0.2.7")}}}
	addr := Server(t, z)
	q := new(mdns.Msg)
	q.SetQuestion("mx.remote.test.", mdns.TypeA)
	z.SetSilent(true)
	for _, network := range []string{"udp", "tcp"} {
		c := &mdns.Client{Net: network, Timeout: 300 * time.Millisecond}
		if r, _, err := c.Exchange(q, addr); err == nil {
			t.Errorf("%s: silent zone answered %v", network, r)
		}
	}
	z.SetSilent(false)
	for _, network := range []string{"udp", "tcp"} {
		c := &mdns.Client{Net: network, Timeout: 2 * time.Second}
		r, _, err := c.Exchange(q, addr)
		if err != nil || len(r.Answer) != 1 {
			t.Errorf("%s: after SetSilent(false): %v %v", network, r, err)
		}
	}
}
