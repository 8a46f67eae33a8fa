package tlspolicy

import (
	"strings"
	"testing"
)

func TestParsePolicy(t *testing.T) {
	for _, tt := range []struct {
		name, body string
		want       *Policy
		err        string
	}{
		{"enforce CRLF", "version: STSv1\r\nmode: enforce\r\nmx: mx1.example.com\r\nmx: *.example.net\r\nmax_age: 604800\r\n",
			&Policy{Mode: STSEnforce, MX: []string{"mx1.example.com", "*.example.net"}, MaxAge: 604800}, ""},
		{"LF, case, trailing dot, blanks", "version: STSv1\nmode: testing\nmx:   MX.Example.COM.  \n\nmax_age:86400\n",
			&Policy{Mode: STSTesting, MX: []string{"mx.example.com"}, MaxAge: 86400}, ""},
		{"none needs no mx", "version: STSv1\nmode: none\nmax_age: 1\n", &Policy{Mode: STSNone, MaxAge: 1}, ""},
		{"unknown keys ignored", "version: STSv1\nmode: enforce\nmx: a.b\nmax_age: 5\nfuture: thing\n",
			&Policy{Mode: STSEnforce, MX: []string{"a.b"}, MaxAge: 5}, ""},
		{"max_age capped", "version: STSv1\nmode: enforce\nmx: a.b\nmax_age: 9999999999\n",
			&Policy{Mode: STSEnforce, MX: []string{"a.b"}, MaxAge: maxSTSAge}, ""},
		{"no version", "mode: enforce\nmx: a.b\nmax_age: 5\n", nil, "no version"},
		{"wrong version", "version: STSv2\nmode: enforce\nmx: a.b\nmax_age: 5\n", nil, "unsupported version"},
		{"bad mode", "version: STSv1\nmode: strict\nmx: a.b\nmax_age: 5\n", nil, "mode \"strict\""},
		{"no mode", "version: STSv1\nmx: a.b\nmax_age: 5\n", nil, "no mode"},
		{"no max_age", "version: STSv1\nmode: enforce\nmx: a.b\n", nil, "no max_age"},
		{"max_age not number", "version: STSv1\nmode: enforce\nmx: a.b\nmax_age: -5\n", nil, "max_age"},
		{"max_age too long", "version: STSv1\nmode: enforce\nmx: a.b\nmax_age: 12345678901\n", nil, "max_age"},
		{"enforce without mx", "version: STSv1\nmode: enforce\nmax_age: 5\n", nil, "without mx"},
		{"bad mx", "version: STSv1\nmode: enforce\nmx: mx..example\nmax_age: 5\n", nil, "mx \"mx..example\""},
		{"inner wildcard", "version: STSv1\nmode: enforce\nmx: mx.*.example\nmax_age: 5\n", nil, "mx"},
		{"no colon", "version: STSv1\nmode enforce\n", nil, "no \":\""},
		{"twice mode", "version: STSv1\nmode: enforce\nmode: none\nmx: a.b\nmax_age: 5\n", nil, "twice"},
		{"empty", "", nil, "no version"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			p, err := ParsePolicy(tt.body)
			if tt.err != "" {
				if err == nil || !strings.Contains(err.Error(), tt.err) {
					t.Fatalf("got %+v, %v; want error containing %q", p, err, tt.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if p.Mode != tt.want.Mode || p.MaxAge != tt.want.MaxAge || strings.Join(p.MX, ",") != strings.Join(tt.want.MX, ",") {
				t.Fatalf("got %+v, want %+v", p, tt.want)
			}
		})
	}
}

func TestMatch(t *testing.T) {
	p := &Policy{Mode: STSEnforce, MX: []string{"mx1.example.com", "*.example.net"}}
	for host, want := range map[string]bool{
		"mx1.example.com":      true,
		"MX1.Example.Com.":     true,
		"mx2.example.com":      false,
		"example.com":          false,
		"a.example.net":        true,
		"A.EXAMPLE.NET.":       true,
		"example.net":          false, // the wildcard needs one label
		"a.b.example.net":      false, // and only one
		".example.net":         false,
		"x.mx1.example.com":    false,
		"mx1.example.com.evil": false,
	} {
		if got := p.Match(host); got != want {
			t.Errorf("Match(%q) = %v, want %v", host, got, want)
		}
	}
}

func TestParseTXT(t *testing.T) {
	for _, tt := range []struct {
		txts []string
		id   string
		ok   bool
	}{
		{[]string{"v=STSv1; id=20160831085700Z;"}, "20160831085700Z", true},
		{[]string{"v=spf1 -all", "v=STSv1;id=abc"}, "abc", true},
		{[]string{"v=STSv1; id=a", "v=STSv1; id=b"}, "", false}, // two records: no policy (§3.1)
		{[]string{"v=STSv1;"}, "", false},
		{[]string{"v=STSv1; id=has-dash"}, "", false},
		{[]string{"v=STSv10; id=x"}, "", false},
		{nil, "", false},
	} {
		id, ok := parseTXT(tt.txts)
		if id != tt.id || ok != tt.ok {
			t.Errorf("parseTXT(%q) = %q %v, want %q %v", tt.txts, id, ok, tt.id, tt.ok)
		}
	}
}

// FuzzParsePolicy: no panics, and whatever parses keeps the invariants the transport relies on.
func FuzzParsePolicy(f *testing.F) {
	f.Add("version: STSv1\r\nmode: enforce\r\nmx: mx1.example.com\r\nmx: *.example.net\r\nmax_age: 604800\r\n")
	f.Add("version: STSv1\nmode: none\nmax_age: 1\n")
	f.Add("mode: testing\nmx: *.\n")
	f.Fuzz(func(t *testing.T, body string) {
		p, err := ParsePolicy(body)
		if err != nil {
			return
		}
		if p.MaxAge < 0 || p.MaxAge > maxSTSAge {
			t.Fatalf("max_age %d out of range", p.MaxAge)
		}
		if p.Mode != STSNone && len(p.MX) == 0 {
			t.Fatalf("mode %s without mx", p.Mode)
		}
		for _, m := range p.MX {
			if !validPattern(m) || m != strings.ToLower(m) {
				t.Fatalf("invalid pattern kept: %q", m)
			}
			if !strings.HasPrefix(m, "*.") && !p.Match(m) {
				t.Fatalf("pattern %q does not match itself", m)
			}
		}
	})
}

// FuzzParseSTSRecord: the TXT parser never panics and only returns ids the RFC allows.
func FuzzParseSTSRecord(f *testing.F) {
	f.Add("v=STSv1; id=20160831085700Z;", "v=spf1 -all")
	f.Add("v=STSv1;id=a", "v=STSv1;id=b")
	f.Add("v=STSv1; id=", "")
	f.Fuzz(func(t *testing.T, a, b string) {
		id, ok := parseTXT([]string{a, b})
		if ok != (id != "") || len(id) > 32 {
			t.Fatalf("parseTXT = %q %v", id, ok)
		}
		for _, c := range id {
			if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9') {
				t.Fatalf("id %q has %q", id, c)
			}
		}
	})
}
