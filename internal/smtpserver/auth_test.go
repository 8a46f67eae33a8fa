package smtpserver_test

import (
	"bufio"
	"context"
	"crypto/tls"
	"encoding/base64"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/postamt/postamt/internal/smtp"
)

// fakeAuth accepts alice/secret; a user named "locked" gets the lockout reply.
type fakeAuth struct{}

func (fakeAuth) Authenticate(_ context.Context, _ netip.Addr, user, pass string) (string, error) {
	switch {
	case user == "locked":
		return "", smtp.NewReply(421, smtp.EnhancedCode{4, 7, 0}, "Too many failed attempts, try again later")
	case user == "alice" && pass == "secret":
		return "alice", nil
	}
	return "", smtp.NewReply(535, smtp.EnhancedCode{5, 7, 8}, "Authentication credentials invalid")
}

func plain(user, pass string) string {
	return base64.StdEncoding.EncodeToString([]byte("\x00" + user + "\x00" + pass))
}

func b64(s string) string { return base64.StdEncoding.EncodeToString([]byte(s)) }

// startTLS upgrades the client's connection.
func (c *client) startTLS() {
	c.t.Helper()
	c.cmd("STARTTLS", 220, "2.0.0")
	tc := tls.Client(c.c, &tls.Config{InsecureSkipVerify: true})
	tc.SetDeadline(time.Now().Add(5 * time.Second))
	if err := tc.Handshake(); err != nil {
		c.t.Fatal(err)
	}
	tc.SetDeadline(time.Time{})
	c.c, c.r = tc, bufio.NewReader(tc)
}

func hasExt(r reply, ext string) bool {
	for _, l := range r.lines {
		if strings.EqualFold(l, ext) {
			return true
		}
	}
	return false
}

func TestAuthOnlyAfterTLS(t *testing.T) {
	e := newEnv(t, envOpts{auth: fakeAuth{}, requireAuth: true})
	c := e.dial()
	c.expect(220, "")
	if r := c.cmd("EHLO client.example", 250, ""); hasExt(r, "AUTH PLAIN LOGIN") {
		t.Errorf("AUTH advertised before TLS: %q", r.lines)
	}
	c.cmd("AUTH PLAIN "+plain("alice", "secret"), 530, "5.7.0")
	c.cmd("MAIL FROM:<alice@example.test>", 530, "5.7.0")
	c.startTLS()
	r := c.cmd("EHLO client.example", 250, "")
	if !hasExt(r, "AUTH PLAIN LOGIN") {
		t.Fatalf("AUTH not advertised after TLS: %q", r.lines)
	}
	r = c.cmd("MAIL FROM:<alice@example.test>", 530, "5.7.0")
	if !strings.Contains(r.lines[0], "Authentication required") {
		t.Errorf("reply %q", r.lines)
	}
	c.cmd("AUTH PLAIN "+plain("alice", "wrong"), 535, "5.7.8")
	c.cmd("AUTH PLAIN "+plain("alice", "secret"), 235, "2.7.0")
	c.cmd("AUTH PLAIN "+plain("alice", "secret"), 503, "5.5.1")
	if r := c.cmd("EHLO client.example", 250, ""); hasExt(r, "AUTH PLAIN LOGIN") {
		t.Errorf("AUTH advertised again after success")
	}
	c.cmd("MAIL FROM:<alice@example.test>", 250, "2.1.0")
	// Authenticated clients may relay (RFC 6409): a remote recipient is accepted.
	c.cmd("RCPT TO:<someone@remote.test>", 250, "2.1.5")
	c.cmd("DATA", 354, "")
	c.raw("From: <alice@example.test>\r\nSubject: hi\r\n\r\nbody\r\n.\r\n")
	c.expect(250, "2.0.0")
	if !strings.Contains(e.logs.String(), "user=alice") {
		t.Errorf("no authenticated log line")
	}
	if strings.Contains(e.logs.String(), "secret") || strings.Contains(e.logs.String(), plain("alice", "secret")) {
		t.Errorf("password in the log")
	}
}

func TestAuthMechanisms(t *testing.T) {
	e := newEnv(t, envOpts{auth: fakeAuth{}, requireAuth: true})
	tests := []struct {
		name  string
		steps [][2]string // line to send, want "code enh"
	}{
		{"plain-initial", [][2]string{{"AUTH PLAIN " + plain("alice", "secret"), "235 2.7.0"}}},
		{"plain-challenge", [][2]string{{"AUTH PLAIN", "334 "}, {plain("alice", "secret"), "235 2.7.0"}}},
		{"plain-lowercase", [][2]string{{"auth plain " + plain("alice", "secret"), "235 2.7.0"}}},
		{"plain-authzid-self", [][2]string{{"AUTH PLAIN " + b64("alice\x00alice\x00secret"), "235 2.7.0"}}},
		{"plain-authzid-other", [][2]string{{"AUTH PLAIN " + b64("bob\x00alice\x00secret"), "501 5.5.2"}}},
		{"plain-bad-base64", [][2]string{{"AUTH PLAIN !!!", "501 5.5.2"}}},
		{"plain-two-fields", [][2]string{{"AUTH PLAIN " + b64("alice\x00secret"), "501 5.5.2"}}},
		{"login", [][2]string{{"AUTH LOGIN", "334 "}, {b64("alice"), "334 "}, {b64("secret"), "235 2.7.0"}}},
		{"login-initial", [][2]string{{"AUTH LOGIN " + b64("alice"), "334 "}, {b64("secret"), "235 2.7.0"}}},
		{"login-wrong", [][2]string{{"AUTH LOGIN", "334 "}, {b64("alice"), "334 "}, {b64("nope"), "535 5.7.8"}}},
		{"login-cancel", [][2]string{{"AUTH LOGIN", "334 "}, {"*", "501 5.0.0"}}},
		{"cram-md5", [][2]string{{"AUTH CRAM-MD5", "504 5.5.4"}}},
		{"no-mech", [][2]string{{"AUTH", "501 5.5.4"}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := e.dial()
			c.t = t
			c.expect(220, "")
			c.cmd("EHLO client.example", 250, "")
			c.startTLS()
			c.cmd("EHLO client.example", 250, "")
			for _, st := range tt.steps {
				code, enh, _ := strings.Cut(st[1], " ")
				n := 0
				for _, ch := range code {
					n = n*10 + int(ch-'0')
				}
				c.cmd(st[0], n, enh)
			}
			c.cmd("QUIT", 221, "2.0.0")
		})
	}
}

func TestAuthLockoutCloses(t *testing.T) {
	e := newEnv(t, envOpts{auth: fakeAuth{}, requireAuth: true})
	c := e.dial()
	c.expect(220, "")
	c.cmd("EHLO client.example", 250, "")
	c.startTLS()
	c.cmd("EHLO client.example", 250, "")
	c.cmd("AUTH PLAIN "+plain("locked", "x"), 421, "4.7.0")
	c.expectClosed()
}

func TestImplicitTLS(t *testing.T) {
	e := newEnv(t, envOpts{auth: fakeAuth{}, requireAuth: true, implicitTLS: true})
	tc, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", e.addr, &tls.Config{InsecureSkipVerify: true})
	if err != nil {
		t.Fatal(err)
	}
	defer tc.Close()
	if v := tc.ConnectionState().Version; v < tls.VersionTLS12 {
		t.Errorf("TLS version %x", v)
	}
	c := &client{t: t, c: tc, r: bufio.NewReader(tc)}
	c.expect(220, "")
	r := c.cmd("EHLO client.example", 250, "")
	if !hasExt(r, "AUTH PLAIN LOGIN") || hasExt(r, "STARTTLS") {
		t.Errorf("EHLO on implicit TLS: %q", r.lines)
	}
	c.cmd("STARTTLS", 503, "5.5.1")
	c.cmd("AUTH PLAIN "+plain("alice", "secret"), 235, "2.7.0")
	c.cmd("MAIL FROM:<alice@example.test>", 250, "2.1.0")
}

// The MX listener (no Authenticator) neither offers nor accepts AUTH, and does not relay.
func TestNoAuthOnMX(t *testing.T) {
	e := newEnv(t, envOpts{})
	c := e.dialReady()
	c.startTLS()
	if r := c.cmd("EHLO client.example", 250, ""); hasExt(r, "AUTH PLAIN LOGIN") {
		t.Errorf("MX offers AUTH")
	}
	c.cmd("AUTH PLAIN "+plain("alice", "secret"), 502, "5.5.1")
	c.cmd("MAIL FROM:<x@remote.test>", 250, "2.1.0")
	c.cmd("RCPT TO:<someone@remote.test>", 554, "5.7.1")
}

// longAuth accepts any password of 2000 characters.
type longAuth struct{}

func (longAuth) Authenticate(_ context.Context, _ netip.Addr, user, pass string) (string, error) {
	if len(pass) == 2000 {
		return user, nil
	}
	return "", smtp.NewReply(535, smtp.EnhancedCode{5, 7, 8}, "Authentication credentials invalid")
}

// RFC 4954 §4: AUTH lines up to 12288 octets, while ordinary commands keep their limit.
func TestAuthLongLines(t *testing.T) {
	e := newEnv(t, envOpts{auth: longAuth{}, requireAuth: true})
	pass := strings.Repeat("p", 2000)
	c := e.dial()
	c.expect(220, "")
	c.cmd("EHLO client.example", 250, "")
	c.startTLS()
	c.cmd("EHLO client.example", 250, "")
	c.cmd("NOOP "+strings.Repeat("x", 1000), 500, "5.5.2")
	c.cmd("AUTH LOGIN", 334, "")
	c.cmd(b64("alice"), 334, "")
	c.cmd(b64(pass), 235, "2.7.0")
	c2 := e.dial()
	c2.expect(220, "")
	c2.cmd("EHLO client.example", 250, "")
	c2.startTLS()
	c2.cmd("EHLO client.example", 250, "")
	c2.cmd("AUTH PLAIN "+plain("alice", pass), 235, "2.7.0")
	c2.cmd("AUTH PLAIN "+strings.Repeat("A", 13000), 500, "5.5.2")
}

// With plaintext AUTH allowed (loopback set-ups), STARTTLS still forgets the authentication
// (RFC 3207 §4.2: nothing learnt before TLS survives it).
func TestStartTLSForgetsAuth(t *testing.T) {
	e := newEnv(t, envOpts{auth: fakeAuth{}, requireAuth: true, allowPlainAuth: true})
	c := e.dialReady()
	c.cmd("AUTH PLAIN "+plain("alice", "secret"), 235, "2.7.0")
	c.startTLS()
	c.cmd("EHLO client.example", 250, "")
	c.cmd("MAIL FROM:<alice@example.test>", 530, "5.7.0")
}
