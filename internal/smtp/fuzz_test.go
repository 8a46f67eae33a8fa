package smtp

import (
	"strings"
	"testing"
	"unicode/utf8"
)

func FuzzParsePath(f *testing.F) {
	for _, s := range []string{"<a@b.c>", "<>", `<"x y"@b.c> SIZE=1`, "<@a:b@c>", "<jörg@bücher.de>", "<a@[IPv6:::1]>", "<Postmaster>"} {
		f.Add(s, false)
		f.Add(s, true)
	}
	f.Fuzz(func(t *testing.T, in string, allowUTF8 bool) {
		p, _, err := ParsePath(in, allowUTF8)
		if err != nil || p.Null {
			return
		}
		// Whatever parses must be free of the bytes that would let it change the meaning of a
		// header or command line it is copied into.
		s := p.Addr.String()
		if strings.ContainsAny(s, "\r\n\x00") {
			t.Fatalf("control character accepted: %q", s)
		}
		if !allowUTF8 && !p.Addr.IsASCII() {
			t.Fatalf("non-ASCII accepted without SMTPUTF8: %q", s)
		}
		if !utf8.ValidString(s) {
			t.Fatalf("invalid UTF-8 accepted: %q", s)
		}
		// The rendered form must parse back to the same address.
		if p.Addr.Domain != "" {
			q, _, err := ParsePath("<"+s+">", allowUTF8)
			if err != nil || q.Addr.Local != p.Addr.Local || q.Addr.Domain != p.Addr.Domain {
				t.Fatalf("round trip %q -> %q: %+v %v", in, s, q, err)
			}
		}
	})
}

func FuzzParseParams(f *testing.F) {
	for _, s := range []string{"SIZE=10 BODY=8BITMIME SMTPUTF8", "RET=FULL ENVID=abc+2B", "NOTIFY=SUCCESS,DELAY ORCPT=rfc822;a@b"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, in string) {
		m, r := ParseMailParams(in, 1<<20)
		if r == nil && strings.ContainsAny(m.EnvID, "\r\n\x00") {
			t.Fatalf("control character in ENVID: %q", m.EnvID)
		}
		if r != nil && (r.Code < 500 || r.Enhanced[0] != 5) {
			t.Fatalf("bad reply %v", r)
		}
		p, r := ParseRcptParams(in)
		if r == nil && strings.ContainsAny(p.ORCPT, "\r\n\x00") {
			t.Fatalf("control character in ORCPT: %q", p.ORCPT)
		}
	})
}

// FuzzParseAddress: ParseAddress (used for configured and looked-up addresses, without the
// angle brackets of a path) never accepts bytes that could break a header or command line, and
// what it accepts renders back to the same mailbox.
func FuzzParseAddress(f *testing.F) {
	for _, s := range []string{"a@b.c", `"x y"@b.c`, `"a\"b"@c.d`, "jörg@bücher.de", "a@[IPv6:::1]", "a@[192.0.2.1]",
		"Postmaster", "a@b@c", "a.@b.c", "@b.c", `"a@b"@c.d`} {
		f.Add(s, false)
		f.Add(s, true)
	}
	f.Fuzz(func(t *testing.T, in string, allowUTF8 bool) {
		a, err := ParseAddress(in, allowUTF8)
		if err != nil {
			return
		}
		s := a.String()
		if strings.ContainsAny(s, "\r\n\x00") || !utf8.ValidString(s) {
			t.Fatalf("%q accepted as %q", in, s)
		}
		if !allowUTF8 && !a.IsASCII() {
			t.Fatalf("non-ASCII accepted without SMTPUTF8: %q", s)
		}
		if a.Domain == "" {
			t.Fatalf("%q accepted without a domain", in)
		}
		b, err := ParseAddress(s, allowUTF8)
		if err != nil || b.Local != a.Local || b.Domain != a.Domain {
			t.Fatalf("round trip %q -> %q -> %+v %v", in, s, b, err)
		}
	})
}

// FuzzDecodeXtext: decoded xtext (ENVID, ORCPT: copied into DSN headers) never holds a control
// character, and EncodeXtext is its inverse.
func FuzzDecodeXtext(f *testing.F) {
	for _, s := range []string{"abc+2B", "+0D+0A", "a=b", "+2b", "QQ314159", "rfc822;a+40b", "+", "+7F", "+20x"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, in string) {
		d, ok := DecodeXtext(in)
		if !ok {
			return
		}
		for i := 0; i < len(d); i++ {
			if d[i] < 32 || d[i] > 126 {
				t.Fatalf("%q decodes to %q with byte %#x", in, d, d[i])
			}
		}
		e := EncodeXtext(d)
		if d2, ok := DecodeXtext(e); !ok || d2 != d {
			t.Fatalf("%q -> %q -> %q -> %q %v", in, d, e, d2, ok)
		}
	})
}
