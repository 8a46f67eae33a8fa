package smtpserver_test

import (
	"encoding/base64"
	"strconv"
	"strings"
	"testing"
)

type passwords map[string]string

func (p passwords) Authenticate(user, pass string) bool { return p[user] != "" && p[user] == pass }

func b64(s string) string { return base64.StdEncoding.EncodeToString([]byte(s)) }

func TestAuthNotOffered(t *testing.T) {
	e := newEnv(t, envOpts{})
	c := e.dial()
	c.expect(220, "")
	r := c.cmd("EHLO client.example", 250, "")
	if strings.Contains(strings.Join(r.lines, "\n"), "AUTH") {
		t.Errorf("AUTH advertised without an Authenticator: %q", r.lines)
	}
	c.cmd("AUTH PLAIN "+b64("\x00u\x00p"), 502, "5.5.1")
}

func TestAuth(t *testing.T) {
	users := passwords{"alice": "s3cret"}
	e := newEnv(t, envOpts{auth: users, authPlaintext: true})
	c := e.dial()
	c.expect(220, "")
	c.cmd("AUTH PLAIN "+b64("\x00alice\x00s3cret"), 503, "5.5.1") // before EHLO
	r := c.cmd("EHLO client.example", 250, "")
	if !strings.Contains(strings.Join(r.lines, "\n"), "AUTH PLAIN LOGIN") {
		t.Fatalf("AUTH not advertised: %q", r.lines)
	}
	for _, tc := range []struct {
		name  string
		steps []string // client line, then expected "code enh" pairs
	}{
		{"bad mechanism", []string{"AUTH CRAM-MD5", "504 5.5.4"}},
		{"wrong password", []string{"AUTH PLAIN " + b64("\x00alice\x00nope"), "535 5.7.8"}},
		{"not base64", []string{"AUTH PLAIN !!!", "501 5.5.2"}},
		{"bad PLAIN shape", []string{"AUTH PLAIN " + b64("alice:s3cret"), "501 5.5.2"}},
		{"cancelled", []string{"AUTH LOGIN", "334 ", "*", "501 5.7.0"}},
		{"LOGIN wrong", []string{"AUTH LOGIN", "334 ", b64("alice"), "334 ", b64("x"), "535 5.7.8"}},
	} {
		for i := 0; i < len(tc.steps); i += 2 {
			want := strings.Fields(tc.steps[i+1])
			enh := ""
			if len(want) > 1 {
				enh = want[1]
			}
			code, _ := strconv.Atoi(want[0])
			c.cmd(tc.steps[i], code, enh)
		}
	}
	// PLAIN with the response after an empty challenge, then success.
	c.cmd("AUTH PLAIN", 334, "")
	c.cmd(b64("\x00alice\x00s3cret"), 235, "2.7.0")
	c.cmd("AUTH PLAIN "+b64("\x00alice\x00s3cret"), 503, "5.5.1") // only once
	// Authenticated: relaying to another domain is allowed now.
	c.cmd("MAIL FROM:<alice@example.test> AUTH=alice@example.test", 250, "2.1.0")
	c.cmd("RCPT TO:<someone@remote.test>", 250, "2.1.5")
	c.cmd("AUTH LOGIN", 503, "5.5.1") // not during a transaction
	c.cmd("QUIT", 221, "2.0.0")

	// LOGIN with the user name as initial response.
	c2 := e.dialReady()
	c2.cmd("AUTH LOGIN "+b64("alice"), 334, "")
	c2.cmd(b64("s3cret"), 235, "2.7.0")
	c2.cmd("QUIT", 221, "2.0.0")

	// Not authenticated: relaying is refused as before.
	c3 := e.dialReady()
	c3.cmd("MAIL FROM:<x@remote.test>", 250, "2.1.0")
	c3.cmd("RCPT TO:<someone@remote.test>", 554, "5.7.1")
	if !strings.Contains(e.logs.String(), "msg=authenticated") || strings.Contains(e.logs.String(), "s3cret") {
		t.Errorf("log must record the login and never the password:\n%s", e.logs.String())
	}
}

func TestAuthNeedsTLSUnlessAllowed(t *testing.T) {
	e := newEnv(t, envOpts{auth: passwords{"a": "b"}})
	c := e.dialReady()
	c.cmd("AUTH PLAIN "+b64("\x00a\x00b"), 538, "5.7.11")
}

func TestRequireAuth(t *testing.T) {
	e := newEnv(t, envOpts{auth: passwords{"a": "b"}, authPlaintext: true, requireAuth: true})
	c := e.dialReady()
	c.cmd("MAIL FROM:<a@example.test>", 530, "5.7.0")
	c.cmd("AUTH PLAIN "+b64("\x00a\x00b"), 235, "2.7.0")
	c.cmd("MAIL FROM:<a@example.test>", 250, "2.1.0")
}
