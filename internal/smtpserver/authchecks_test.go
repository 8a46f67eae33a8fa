package smtpserver_test

import (
	"bytes"
	"strings"
	"testing"
	"time"

	"github.com/postamt/postamt/internal/mailauth"
	"github.com/postamt/postamt/internal/policy"
	"github.com/postamt/postamt/internal/policy/hostcheck"
)

// A client that talks before the greeting is refused; one that waits gets the banner after
// the delay and is served.
func TestPreGreetTalker(t *testing.T) {
	delay := 300 * time.Millisecond
	e := newEnv(t, envOpts{greet: delay, policy: &policy.Chain{Entries: []policy.Entry{{Check: &hostcheck.PreGreet{Action: policy.Reject}}}}})
	c := e.dial()
	c.raw("EHLO hasty.example\r\n")
	r := c.expect(554, "5.5.1")
	if !strings.Contains(r.lines[0], "before the greeting") {
		t.Errorf("refusal %q", r.lines)
	}
	c.expectClosed()

	start := time.Now()
	c = e.dial()
	c.expect(220, "")
	if waited := time.Since(start); waited < delay {
		t.Errorf("greeting after %v, want at least %v", waited, delay)
	}
	c.cmd("EHLO patient.example", 250, "")
	c.cmd("QUIT", 221, "2.0.0")
	if !strings.Contains(e.logs.String(), "pregreet=talker") {
		t.Errorf("the refusal is not logged with the check's result:\n%s", e.logs.String())
	}
}

// Without a check that refuses, what the early client sent is simply answered: the wait
// itself loses nothing.
func TestGreetDelayKeepsEarlyInput(t *testing.T) {
	e := newEnv(t, envOpts{greet: 100 * time.Millisecond})
	c := e.dial()
	c.raw("EHLO early.example\r\n")
	c.expect(220, "")
	c.expect(250, "")
}

// Forged Authentication-Results fields in our name are renamed in the stored message, for a
// body kept in memory and for one already spilled to its spool file; a field of another
// authserv-id stays, and ours is added on top.
func TestForgedAuthResultsRemoved(t *testing.T) {
	for _, size := range []int{0, 300} {
		t.Run(map[int]string{0: "inline", 300: "spooled"}[size], func(t *testing.T) {
			e := newEnv(t, envOpts{policy: &policy.Chain{Entries: []policy.Entry{{Check: &mailauth.AuthResultsCheck{AuthServID: "mx.example.test"}}}}})
			c := e.dialReady()
			c.cmd("MAIL FROM:<friend@remote.test>", 250, "2.1.0")
			c.cmd("RCPT TO:<alice@example.test>", 250, "2.1.5")
			c.cmd("DATA", 354, "")
			line := strings.Repeat("x", 998) + "\r\n"
			forged := "Authentication-Results: mx.example.test; dkim=pass header.d=bank.example\r\n" +
				"Authentication-Results: relay.remote.test; spf=pass smtp.mailfrom=remote.test\r\n" +
				"AUTHENTICATION-RESULTS: MX.Example.Test;\r\n dmarc=pass\r\n"
			c.raw(forged + testMsg + strings.Repeat(line, size) + ".\r\n")
			c.expect(250, "2.0.0")
			body := e.waitDeliveries(1)[0].Body
			if size > 0 && len(body) < 128<<10 {
				t.Fatalf("body of %d bytes did not exercise the spool file", len(body))
			}
			want := "X-Spoofed-Auth-Results: mx.example.test; dkim=pass header.d=bank.example\r\n" +
				"Authentication-Results: relay.remote.test; spf=pass smtp.mailfrom=remote.test\r\n" +
				"X-Spoofed-Auth-Results: MX.Example.Test;\r\n dmarc=pass\r\n"
			if !bytes.Contains(body, []byte(want)) {
				t.Errorf("forged fields not renamed:\n%s", body[:min(len(body), 600)])
			}
			if !bytes.HasPrefix(body, []byte("Authentication-Results: mx.example.test;")) || bytes.Count(body, []byte("Authentication-Results: mx.example.test")) != 1 {
				t.Errorf("our own field missing or doubled:\n%s", body[:min(len(body), 600)])
			}
			if size > 0 && !bytes.HasSuffix(body, []byte(line)) {
				t.Errorf("spooled body damaged at the end")
			}
		})
	}
}
