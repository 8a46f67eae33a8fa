package smtpserver_test

import (
	"net"
	"strings"
	"testing"
	"time"

	"github.com/postamt/postamt/internal/smtpserver"
)

// TestAbruptDisconnects drops the connection at every stage of a transaction. The server must
// stay up and store nothing that was not acknowledged.
func TestAbruptDisconnects(t *testing.T) {
	e := newEnv(t, envOpts{})
	stages := []string{
		"",
		"EHLO x.example\r\n",
		"EHLO x.example\r\nMAIL FROM:<a@remote.test>\r\n",
		"EHLO x.example\r\nMAIL FROM:<a@remote.test>\r\nRCPT TO:<alice@example.test>\r\n",
		"EHLO x.example\r\nMAIL FROM:<a@remote.test>\r\nRCPT TO:<alice@example.test>\r\nDATA\r\n",
		"EHLO x.example\r\nMAIL FROM:<a@remote.test>\r\nRCPT TO:<alice@example.test>\r\nDATA\r\n" + testMsg,
		"EHLO x.example\r\nMAIL FROM:<a@remote.test>\r\nRCPT TO:<alice@example.test>\r\nDATA\r\n" + testMsg + ".\r",
		"EHLO x.example\r\nMAIL FROM:<a@remote.test>\r\nRCPT TO:<alice@example.test>\r\nBDAT 100\r\nSubject: x\r\n",
		"EHLO x.example\r\nSTARTTLS\r\n",
		"EHLO x.example\r\nNOOP " + strings.Repeat("x", 3000),
	}
	for _, s := range stages {
		c := e.dial()
		c.expect(220, "")
		c.raw(s)
		time.Sleep(20 * time.Millisecond)
		c.c.(*net.TCPConn).SetLinger(0) // RST, not FIN
		c.c.Close()
	}
	time.Sleep(100 * time.Millisecond)
	if n := e.q.Metrics().Accepted.Load(); n != 0 {
		t.Fatalf("%d messages queued from dropped connections", n)
	}
	// Still serving.
	c := e.dialReady()
	c.cmd("MAIL FROM:<a@remote.test>", 250, "2.1.0")
	c.cmd("RCPT TO:<alice@example.test>", 250, "2.1.5")
	c.cmd("DATA", 354, "")
	c.raw(testMsg + ".\r\n")
	c.expect(250, "2.0.0")
	e.waitDeliveries(1)
}

func TestInjectionAndEncoding(t *testing.T) {
	e := newEnv(t, envOpts{limits: smtpserver.Limits{MaxErrors: 100}})
	c := e.dialReady()
	c.cmd("MAIL FROM:<a@remote.test> ENVID=x+0D+0ABcc:+20victim@remote.test", 501, "5.5.4")
	c.cmd("MAIL FROM:<a\xff@remote.test> SMTPUTF8", 501, "5.1.7")
	c.cmd("MAIL FROM:<a@remote.test>", 250, "2.1.0")
	c.cmd("RCPT TO:<alice@example.test> ORCPT=rfc822;x+0D+0Ay", 501, "5.5.4")
	c.cmd("RCPT TO:<alice@example.test>\tNOTIFY=NEVER", 501, "5.1.3")
	c.cmd("RCPT TO:<alice@example.test> NOTIFY=NEVER", 250, "2.1.5")
	// A HELO name with characters that would break the Received header is neutralised.
	c.cmd("EHLO evil(;)\\name", 250, "")
	c.cmd("MAIL FROM:<a@remote.test>", 250, "2.1.0")
	c.cmd("RCPT TO:<alice@example.test>", 250, "2.1.5")
	c.cmd("DATA", 354, "")
	c.raw(testMsg + ".\r\n")
	c.expect(250, "2.0.0")
	d := e.waitDeliveries(1)[0]
	if !strings.HasPrefix(string(d.Body), "Received: from evil____name ([127.0.0.1])") {
		t.Fatalf("Received: %q", string(d.Body[:80]))
	}
}

// TestAuthFlood: AUTH is not offered on the MX service; a client that keeps trying is cut off
// by the error limit instead of being answered forever.
func TestAuthFlood(t *testing.T) {
	e := newEnv(t, envOpts{limits: smtpserver.Limits{MaxErrors: 5}})
	c := e.dialReady()
	c.raw(strings.Repeat("AUTH PLAIN AHVzZXIAcGFzcw==\r\n", 50))
	for i := 0; i < 5; i++ {
		c.expect(502, "5.5.1")
	}
	c.expect(421, "4.7.0")
	c.expectClosed()
}

// TestLargeMessage sends 10 MB under a 12 MB limit and 13 MB over it.
func TestLargeMessage(t *testing.T) {
	e := newEnv(t, envOpts{limits: smtpserver.Limits{MaxMessageSize: 12 << 20}})
	line := strings.Repeat("0123456789", 7) + "\r\n"
	body := strings.Repeat(line, (10<<20)/len(line))
	c := e.dialReady()
	c.cmd("MAIL FROM:<a@remote.test> SIZE=10485760", 250, "2.1.0")
	c.cmd("RCPT TO:<alice@example.test>", 250, "2.1.5")
	c.cmd("DATA", 354, "")
	c.timeout = time.Minute // -race makes reading 10 MB slow
	go c.c.Write([]byte(testMsg + body + ".\r\n"))
	c.expect(250, "2.0.0")
	d := e.waitDeliveries(1)
	if len(d[0].Body) < 10<<20-100 {
		t.Fatalf("delivered %d bytes", len(d[0].Body))
	}
	c.cmd("MAIL FROM:<a@remote.test>", 250, "2.1.0")
	c.cmd("RCPT TO:<alice@example.test>", 250, "2.1.5")
	c.cmd("DATA", 354, "")
	go c.c.Write([]byte(testMsg + body + strings.Repeat(line, (3<<20)/len(line)) + ".\r\n"))
	c.expect(552, "5.3.4")
	c.cmd("NOOP", 250, "2.0.0")
}
