package dns

import (
	"context"
	"errors"
	"net"
	"testing"
	"time"

	"github.com/postamt/postamt/internal/dns/dnstest"
)

func TestAbsolute(t *testing.T) {
	for in, want := range map[string]string{
		"example.com": "example.com.", "example.com.": "example.com.", "localhost": "localhost.",
		"192.0.2.1": "192.0.2.1", "2001:db8::1": "2001:db8::1", "": "",
	} {
		if got := Absolute(in); got != want {
			t.Errorf("Absolute(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestSystemAsksConfiguredServer(t *testing.T) {
	z := &dnstest.Zone{MX: map[string][]*net.MX{"example.test": {{Host: "mx.example.test.", Pref: 10}}},
		TXT: map[string][]string{"example.test": {"v=spf1 -all"}}}
	r := System([]string{dnstest.Server(t, z)})
	mx, err := r.LookupMX(context.Background(), "example.test")
	if err != nil || len(mx) != 1 || mx[0].Host != "mx.example.test." {
		t.Fatalf("%v %v", mx, err)
	}
	if txt, err := r.LookupTXT(context.Background(), "example.test"); err != nil || len(txt) != 1 {
		t.Fatalf("%v %v", txt, err)
	}
	if _, err := r.LookupMX(context.Background(), "missing.test"); !IsNotFound(err) {
		t.Errorf("missing domain: %v, want not found", err)
	}
	// /etc/hosts still answers address lookups (localhost is in every hosts file).
	if a, err := r.LookupNetIP(context.Background(), "ip", "localhost"); err != nil || len(a) == 0 {
		t.Errorf("localhost: %v %v", a, err)
	}
}

func TestSystemLookupBounded(t *testing.T) {
	addr, _ := dnstest.Blackhole(t)
	r := System([]string{addr})
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	start := time.Now()
	_, err := r.LookupMX(ctx, "example.test")
	var de *net.DNSError
	if !errors.As(err, &de) || IsNotFound(err) {
		t.Errorf("blackholed lookup: %v", err)
	}
	if d := time.Since(start); d > 3*time.Second {
		t.Errorf("took %v", d)
	}
}
