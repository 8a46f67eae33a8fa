package dnsbl

import (
	"context"
	"net/netip"
	"strings"
	"testing"

	"github.com/postamt/postamt/internal/dns"
	"github.com/postamt/postamt/internal/dns/dnstest"
	"github.com/postamt/postamt/internal/policy"
)

func TestQuery(t *testing.T) {
	for ip, want := range map[string]string{
		"192.0.2.99":                "99.2.0.192.zen.example",
		"::ffff:1.2.3.4":            "4.3.2.1.zen.example",
		"2001:db8:1:2:3:4:567:89ab": "b.a.9.8.7.6.5.0.4.0.0.0.3.0.0.0.2.0.0.0.1.0.0.0.8.b.d.0.1.0.0.2.zen.example",
	} {
		if got := Query(netip.MustParseAddr(ip), "zen.example."); got != want {
			t.Errorf("Query(%s) = %s, want %s", ip, got, want)
		}
	}
}

func zone() *dnstest.Zone {
	a := netip.MustParseAddr
	return &dnstest.Zone{
		A: map[string][]netip.Addr{
			"99.2.0.192.zen.example":  {a("127.0.0.4")},
			"99.2.0.192.pbl.example":  {a("127.0.0.10")},
			"98.2.0.192.zen.example":  {a("127.255.255.254")}, // "query refused": not a listing
			"50.2.0.192.wl.example":   {a("127.0.10.3")},
			"99.2.0.192.soft.example": {a("127.0.0.2")},
		},
		Fail: map[string]bool{"97.2.0.192.zen.example": true},
	}
}

func conn(ip string) *policy.Conn {
	return &policy.Conn{RemoteIP: netip.MustParseAddr(ip), Values: map[string]any{}}
}

func TestBlocklist(t *testing.T) {
	for _, r := range []dns.Resolver{zone(), dns.System([]string{dnstest.Server(t, zone())})} {
		b := &Blocklist{Resolver: r, Lists: []List{
			{Zone: "zen.example", Action: policy.Reject},
			// Only 127.0.0.11 counts on this list: 127.0.0.10 is ignored.
			{Zone: "pbl.example", Codes: []netip.Prefix{netip.MustParsePrefix("127.0.0.11/32")}, Action: policy.Reject},
			{Zone: "soft.example", Action: policy.Continue, Score: 2.5},
		}}
		ctx := context.Background()
		v := b.CheckConn(ctx, conn("192.0.2.99"))
		if v.Action != policy.Reject || v.Reply == nil || v.Reply.Line() != "554 5.7.1 Client host [192.0.2.99] is listed by zen.example" {
			t.Errorf("listed: %+v %v", v, v.Reply)
		}
		if v.Score != 2.5 || !strings.Contains(v.Result, "zen.example=127.0.0.4") || strings.Contains(v.Result, "pbl") {
			t.Errorf("listed result %q score %v", v.Result, v.Score)
		}
		if v := b.CheckConn(ctx, conn("192.0.2.98")); v.Action != policy.Continue || v.Result != "clean" {
			t.Errorf("error code counted as listing: %+v", v)
		}
		if v := b.CheckConn(ctx, conn("192.0.2.1")); v.Action != policy.Continue || v.Result != "clean" {
			t.Errorf("clean: %+v", v)
		}
		// One list failing while the others answer is not a failure of the check.
		if v := b.CheckConn(ctx, conn("192.0.2.97")); v.Err != nil || v.Result != "clean" || !strings.Contains(v.Reason, "zen.example") {
			t.Errorf("partial failure: %+v", v)
		}
		only := &Blocklist{Resolver: r, Lists: b.Lists[:1]}
		if v := only.CheckConn(ctx, conn("192.0.2.97")); v.Err == nil {
			t.Errorf("all lists failed but no error: %+v", v)
		}
		c := conn("192.0.2.99")
		c.Allowlisted = "wl.example"
		if v := b.CheckConn(ctx, c); v.Action != policy.Continue {
			t.Errorf("allowlisted client refused: %+v", v)
		}
	}
}

func TestAllowlist(t *testing.T) {
	a := &Allowlist{Resolver: zone(), Trusted: []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8")},
		Lists: []List{{Zone: "wl.example"}}}
	ctx := context.Background()
	c := conn("10.1.2.3")
	a.CheckConn(ctx, c)
	if !c.Trusted || !c.Exempt() {
		t.Errorf("trusted network not trusted")
	}
	c = conn("192.0.2.50")
	a.CheckConn(ctx, c)
	if c.Trusted || c.Allowlisted != "wl.example" {
		t.Errorf("allowlisted: %+v", c)
	}
	c = conn("192.0.2.99")
	a.CheckConn(ctx, c)
	if c.Exempt() {
		t.Errorf("unlisted client exempt: %+v", c)
	}
}
