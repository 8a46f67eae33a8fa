package smtpserver

import (
	"encoding/base64"
	"strings"
	"testing"
)

// FuzzDecodePlain: any client response either fails or yields a non-empty user and password
// with no NUL, and an authorisation identity that is empty or the user.
func FuzzDecodePlain(f *testing.F) {
	for _, s := range []string{"\x00alice\x00secret", "alice\x00alice\x00pw", "bob\x00alice\x00pw", "\x00\x00", "x"} {
		f.Add(base64.StdEncoding.EncodeToString([]byte(s)))
	}
	f.Add("=")
	f.Add("!!")
	f.Fuzz(func(t *testing.T, resp string) {
		authz, user, pass, err := decodePlain(resp)
		if err != nil {
			return
		}
		if user == "" || pass == "" || strings.ContainsRune(user+pass+authz, 0) || (authz != "" && authz != user) {
			t.Fatalf("decodePlain(%q) = %q, %q, %q", resp, authz, user, pass)
		}
	})
}
