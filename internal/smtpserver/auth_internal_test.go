package smtpserver

import (
	"strings"
	"testing"
)

func TestParsePlain(t *testing.T) {
	for in, want := range map[string][3]string{
		"\x00alice\x00pw":      {"alice", "pw", "ok"},
		"admin\x00alice\x00pw": {"alice", "pw", "ok"},
		"\x00alice\x00":        {"alice", "", "ok"},
		"\x00\x00pw":           {"", "", ""},
		"alice\x00pw":          {"", "", ""},
		"a\x00b\x00c\x00d":     {"", "", ""},
		"":                     {"", "", ""},
	} {
		u, p, ok := parsePlain(in)
		if u != want[0] || p != want[1] || ok != (want[2] == "ok") {
			t.Errorf("parsePlain(%q) = %q, %q, %v; want %v", in, u, p, ok, want)
		}
	}
}

// FuzzParsePlain: a PLAIN response either splits into a non-empty user and a password that
// contain no NUL, or is refused.
func FuzzParsePlain(f *testing.F) {
	for _, s := range []string{"\x00u\x00p", "z\x00u\x00p", "", "\x00\x00", "u\x00p"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, in string) {
		u, p, ok := parsePlain(in)
		if !ok {
			return
		}
		if u == "" || strings.ContainsRune(u, 0) || strings.ContainsRune(p, 0) || !strings.HasSuffix(in, "\x00"+u+"\x00"+p) {
			t.Fatalf("parsePlain(%q) = %q, %q", in, u, p)
		}
	})
}
