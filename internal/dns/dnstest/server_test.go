package dnstest

import (
	"context"
	"net"
	"net/netip"
	"strings"
	"testing"

	"github.com/postamt/postamt/internal/dns"
)

// TestServerThroughSystemResolver checks the wire path: the Go resolver pointed at Server sees
// the Zone, and the error classes survive (not found, temporary).
func TestServerThroughSystemResolver(t *testing.T) {
	z := &Zone{
		MX:   map[string][]*net.MX{"remote.test": {{Host: "mx.remote.test.", Pref: 10}}, "null.test": {{Host: ".", Pref: 0}}},
		A:    map[string][]netip.Addr{"mx.remote.test": {netip.MustParseAddr("127.0.0.1")}},
		Fail: map[string]bool{"broken.test": true},
		TXT:  map[string][]string{"remote.test": {"v=spf1 -all"}, "long.test": {strings.Repeat("k", 600)}},
		PTR:  map[string][]string{"127.0.0.9": {"mx.remote.test."}, "2001:db8::1": {"v6.remote.test."}},
	}
	r := dns.System([]string{Server(t, z)})
	ctx := context.Background()
	mx, err := r.LookupMX(ctx, "remote.test")
	if err != nil || len(mx) != 1 || mx[0].Host != "mx.remote.test." || mx[0].Pref != 10 {
		t.Fatalf("MX: %v %v", mx, err)
	}
	addrs, err := r.LookupNetIP(ctx, "ip4", "mx.remote.test")
	if err != nil || len(addrs) != 1 || addrs[0].String() != "127.0.0.1" {
		t.Fatalf("A: %v %v", addrs, err)
	}
	if mx, err := r.LookupMX(ctx, "null.test"); err != nil || len(mx) != 1 || mx[0].Host != "." {
		t.Fatalf("null MX: %v %v", mx, err)
	}
	if _, err := r.LookupMX(ctx, "nxdomain.test"); !dns.IsNotFound(err) {
		t.Fatalf("NXDOMAIN: %v", err)
	}
	if txt, err := r.LookupTXT(ctx, "remote.test"); err != nil || len(txt) != 1 || txt[0] != "v=spf1 -all" {
		t.Fatalf("TXT: %v %v", txt, err)
	}
	if txt, err := r.LookupTXT(ctx, "long.test"); err != nil || len(txt) != 1 || txt[0] != strings.Repeat("k", 600) {
		t.Fatalf("long TXT: %v %v", txt, err)
	}
	for addr, want := range map[string]string{"127.0.0.9": "mx.remote.test.", "2001:db8::1": "v6.remote.test."} {
		if names, err := r.LookupAddr(ctx, addr); err != nil || len(names) != 1 || names[0] != want {
			t.Fatalf("PTR %s: %v %v", addr, names, err)
		}
	}
	if _, err := r.LookupAddr(ctx, "192.0.2.1"); !dns.IsNotFound(err) {
		t.Fatalf("missing PTR: %v", err)
	}
	var de *net.DNSError
	if _, err := r.LookupMX(ctx, "broken.test"); err == nil || !asDNS(err, &de) || !de.IsTemporary {
		t.Fatalf("SERVFAIL: %v", err)
	}
}

func asDNS(err error, de **net.DNSError) bool {
	d, ok := err.(*net.DNSError)
	*de = d
	return ok
}
