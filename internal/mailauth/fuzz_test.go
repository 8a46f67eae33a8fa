package mailauth

import (
	"bufio"
	"bytes"
	"context"
	"strings"
	"testing"

	"github.com/postamt/postamt/internal/dns/dnstest"
)

// FuzzReadHeader: never panics, offsets point at the field names in the input, in order.
func FuzzReadHeader(f *testing.F) {
	f.Add([]byte("From: a@b\r\nAuthentication-Results: mx; spf=pass\r\n\tfolded\r\n\r\nbody"))
	f.Add([]byte(" leading continuation\r\nX: y\r\n"))
	f.Add([]byte("NoColon\r\nX: y\r\n"))
	f.Add([]byte("A:\nB: bare LF\n\nbody"))
	f.Fuzz(func(t *testing.T, in []byte) {
		fields, err := ReadHeader(bytes.NewReader(in))
		if err != nil {
			t.Fatal(err)
		}
		last := int64(-1)
		for _, fd := range fields {
			if fd.Offset <= last || fd.Offset+int64(len(fd.Name)) > int64(len(in)) {
				t.Fatalf("bad offset %d for %q", fd.Offset, fd.Name)
			}
			if string(in[fd.Offset:fd.Offset+int64(len(fd.Name))]) != fd.Name || fd.Name == "" {
				t.Fatalf("offset %d does not point at %q", fd.Offset, fd.Name)
			}
			if strings.Contains(fd.Value, "\n") {
				t.Fatalf("value %q not unfolded", fd.Value)
			}
			last = fd.Offset
		}
	})
}

// FuzzAuthServID: never panics, and the id is a token without separators.
func FuzzAuthServID(f *testing.F) {
	for _, s := range []string{"mx.test; spf=pass", "(c) mx 1; none", "(", "\"q\"", ""} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, v string) {
		id := AuthServID(v)
		if strings.ContainsAny(id, "; \t(") {
			t.Fatalf("AuthServID(%q) = %q", v, id)
		}
	})
}

// FuzzFromDomain: the From parsing used by DMARC never panics and returns a lower-case domain.
func FuzzFromDomain(f *testing.F) {
	for _, s := range []string{"Joe <joe@Example.COM>", "a@b, c@d", "\"x\" <@>", "bare@host", "<>"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, v string) {
		d, err := fromDomain([]Field{{Name: "From", Value: v}})
		if err == nil && (d != strings.ToLower(d)) {
			t.Fatalf("fromDomain(%q) = %q", v, d)
		}
	})
}

// FuzzARC: the ARC parser and validator never panic on any message; a valid parse obeys
// RFC 8617's structure (1 to 50 complete sets, cv=none only at i=1), and without any key
// published nothing can pass.
func FuzzARC(f *testing.F) {
	f.Add([]byte("ARC-Seal: i=1; a=rsa-sha256; cv=none; d=x.example; s=s; b=AAAA\r\n" +
		"ARC-Message-Signature: i=1; a=rsa-sha256; d=x.example; s=s; h=from; bh=AAAA; b=AAAA\r\n" +
		"ARC-Authentication-Results: i=1; mx.example; spf=pass\r\nFrom: a@b\r\n\r\nbody\r\n"))
	f.Add([]byte("ARC-Seal: i=2; cv=pass\r\nARC-Seal: i=51\r\nARC-Authentication-Results: i = 3 ; x\r\n\r\n"))
	f.Add([]byte("arc-seal: i=1; b=; b=\r\n\tfolded; l=9\r\n"))
	z := &dnstest.Zone{}
	f.Fuzz(func(t *testing.T, in []byte) {
		fields, _, err := readRawHeader(bufio.NewReader(bytes.NewReader(in)))
		if err != nil {
			t.Fatal(err)
		}
		sets, err := parseARCSets(fields)
		if err == nil {
			if len(sets) > maxARCSets {
				t.Fatalf("%d sets accepted", len(sets))
			}
			for n, s := range sets {
				if s.aar == nil || s.ams == nil || s.seal == nil {
					t.Fatalf("set %d incomplete", n+1)
				}
				if cv := strings.ToLower(s.sealTags["cv"]); (n == 0) != (cv == "none") {
					t.Fatalf("set %d has cv=%s", n+1, cv)
				}
			}
		}
		if n, _ := ParseARCSets([]Field{{Name: "X", Value: string(in)}}); n != 0 {
			t.Fatalf("a non-ARC field made %d sets", n)
		}
		r := VerifyARC(context.Background(), z, bytes.NewReader(in))
		switch {
		case r.Result == "pass":
			t.Fatalf("passed without keys: %+v", r)
		case r.Result == "none" && len(sets) > 0:
			t.Fatalf("none with %d sets", len(sets))
		}
	})
}

// FuzzParseTags: a parsed tag list has valid names, and blanking b= removes its value.
func FuzzParseTags(f *testing.F) {
	for _, s := range []string{"a=1; b=2", "b=abc;bh=x", " b = x ; b=y", "=;=", "a=1;;"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, v string) {
		tags, err := parseTags(v)
		if err != nil {
			return
		}
		for k := range tags {
			if !isTagName(k) {
				t.Fatalf("tag name %q", k)
			}
		}
		if b2, err := parseTags(blankB(v)); err == nil && strings.Trim(b2["b"], " \t\r\n") != "" {
			t.Fatalf("blankB(%q) left b=%q", v, b2["b"])
		}
	})
}
