package hostcheck

import (
	"context"
	"net/netip"
	"testing"

	"github.com/postamt/postamt/internal/dns/dnstest"
	"github.com/postamt/postamt/internal/policy"
)

func TestFCrDNS(t *testing.T) {
	a := netip.MustParseAddr
	z := &dnstest.Zone{
		PTR: map[string][]string{
			"192.0.2.1": {"mail.example.com."}, "192.0.2.2": {"liar.example.com."},
			"192.0.2.3": {"broken.example."},
		},
		A:    map[string][]netip.Addr{"mail.example.com": {a("192.0.2.1")}, "liar.example.com": {a("198.51.100.1")}},
		Fail: map[string]bool{"broken.example": true, "192.0.2.4": true},
	}
	f := &FCrDNS{Resolver: z, OnFail: policy.Reject}
	for ip, want := range map[string]string{
		"192.0.2.1": "pass", "192.0.2.2": "fail", "192.0.2.9": "fail", "192.0.2.3": "temperror", "192.0.2.4": "temperror",
	} {
		c := &policy.Conn{RemoteIP: a(ip), Values: map[string]any{}}
		v := f.CheckConn(context.Background(), c)
		if c.Values[policy.IPRevKey] != want {
			t.Errorf("%s: iprev %v, want %s", ip, c.Values[policy.IPRevKey], want)
		}
		if v.Result != want {
			t.Errorf("%s: %s (%v), want %s", ip, v.Result, v.Err, want)
		}
		if want == "fail" && (v.Action != policy.Reject || v.Reply.Code != 550) {
			t.Errorf("%s: %+v", ip, v)
		}
		if want == "temperror" && v.Err == nil {
			t.Errorf("%s: temperror without Err", ip)
		}
	}
}

func TestHeloProblems(t *testing.T) {
	h := &Helo{OurNames: []string{"mx.example.org", "example.org"}}
	strict := &Helo{OurNames: h.OurNames, Strict: true}
	ip, local := netip.MustParseAddr("192.0.2.1"), netip.MustParseAddr("203.0.113.5")
	for _, tc := range []struct {
		helo          string
		normal, strct bool // problem expected
	}{
		{"mail.example.com", false, false},
		{"MX.Example.Org", true, true},
		{"example.org.", true, true},
		{"[203.0.113.5]", true, true},
		{"[192.0.2.1]", false, false},
		{"[192.0.2.77]", false, true},
		{"[garbage]", true, true},
		{"localhost", false, true},
		{"bad_name!.example", false, true},
	} {
		if p := h.Problem(tc.helo, ip, local); (p != "") != tc.normal {
			t.Errorf("%q: problem %q, want %v", tc.helo, p, tc.normal)
		}
		if p := strict.Problem(tc.helo, ip, local); (p != "") != tc.strct {
			t.Errorf("strict %q: problem %q, want %v", tc.helo, p, tc.strct)
		}
	}
}

func TestPreGreet(t *testing.T) {
	p := &PreGreet{Action: policy.Reject}
	if v := p.CheckConn(context.Background(), &policy.Conn{PreGreet: true}); v.Action != policy.Reject || v.Reply.Code != 554 {
		t.Errorf("talker: %+v", v)
	}
	if v := p.CheckConn(context.Background(), &policy.Conn{}); v.Action != policy.Continue {
		t.Errorf("patient client: %+v", v)
	}
}

// FuzzHeloProblem: any HELO argument is judged without panicking, and our own name is always
// a problem.
func FuzzHeloProblem(f *testing.F) {
	for _, s := range []string{"mx.example.org", "[192.0.2.1]", "[IPv6:2001:db8::1]", "[", "a..b", ""} {
		f.Add(s)
	}
	h := &Helo{OurNames: []string{"mx.example.org"}, Strict: true}
	ip, local := netip.MustParseAddr("192.0.2.1"), netip.MustParseAddr("203.0.113.5")
	f.Fuzz(func(t *testing.T, helo string) {
		h.Problem(helo, ip, local)
		if h.Problem("MX.example.org", ip, local) == "" {
			t.Fatal("our name accepted")
		}
	})
}
