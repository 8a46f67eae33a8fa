package mailauth

import (
	"bytes"
	"strings"
	"testing"
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
