package smtpserver_test

import (
	"bytes"
	"crypto/tls"
	"fmt"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/postamt/postamt/internal/smtpserver"
)

func TestGreetingAndEHLO(t *testing.T) {
	e := newEnv(t, envOpts{})
	c := e.dial()
	g := c.expect(220, "")
	if g.lines[0] != "mx.example.test ESMTP Postamt" {
		t.Fatalf("greeting %q", g.lines)
	}
	r := c.cmd("EHLO client.example", 250, "")
	want := []string{"mx.example.test", "PIPELINING", "SIZE 1048576", "8BITMIME", "SMTPUTF8", "ENHANCEDSTATUSCODES", "CHUNKING", "DSN", "STARTTLS"}
	if strings.Join(r.lines, ",") != strings.Join(want, ",") {
		t.Fatalf("EHLO: got %q want %q", r.lines, want)
	}
	c.cmd("HELO client.example", 250, "")
	c.cmd("QUIT", 221, "2.0.0")
	c.expectClosed()
}

func TestSendAndDeliver(t *testing.T) {
	e := newEnv(t, envOpts{})
	c := e.dialReady()
	c.cmd("MAIL FROM:<sender@remote.test> SIZE=100 BODY=8BITMIME", 250, "2.1.0")
	c.cmd("RCPT TO:<alice@example.test>", 250, "2.1.5")
	c.cmd("RCPT TO:<both@example.test>", 250, "2.1.5")
	c.cmd("DATA", 354, "")
	c.raw(testMsg + "..leading dot\r\n.\r\n")
	r := c.expect(250, "2.0.0")
	id := strings.TrimPrefix(r.lines[0], "OK: queued as ")
	if len(id) != 16 {
		t.Fatalf("no queue ID in %q", r.lines)
	}
	// alice appears directly and through the alias: delivered once; bob through the alias.
	ds := e.waitDeliveries(2)
	time.Sleep(50 * time.Millisecond)
	if n := len(e.rec.Deliveries()); n != 2 {
		t.Fatalf("%d deliveries, want 2", n)
	}
	for _, d := range ds {
		if d.ID != id || d.From != "sender@remote.test" {
			t.Errorf("delivery %+v", d)
		}
		if !bytes.HasPrefix(d.Body, []byte("Received: from client.example ([127.0.0.1])\r\n\tby mx.example.test (Postamt) with ESMTP id "+id)) {
			t.Errorf("no Received header: %q", d.Body)
		}
		if !bytes.HasSuffix(d.Body, []byte("\r\nHello\r\n.leading dot\r\n")) {
			t.Errorf("body not intact / dot-stuffing not removed: %q", d.Body)
		}
		if bytes.Contains(d.Body, []byte("\tfor <")) {
			t.Errorf("Received names a recipient of a multi-recipient message")
		}
	}
	if !strings.Contains(e.logs.String(), "msg=queued") || !strings.Contains(e.logs.String(), "id="+id) {
		t.Errorf("no queued log line with the ID")
	}
}

func TestCommandSequence(t *testing.T) {
	e := newEnv(t, envOpts{limits: smtpserver.Limits{MaxErrors: 100}})
	c := e.dial()
	c.expect(220, "")
	c.cmd("MAIL FROM:<a@remote.test>", 503, "5.5.1")
	c.cmd("RCPT TO:<alice@example.test>", 503, "5.5.1")
	c.cmd("DATA", 503, "5.5.1")
	c.cmd("EHLO", 501, "5.5.4")
	c.cmd("EHLO x.example", 250, "")
	c.cmd("RCPT TO:<alice@example.test>", 503, "5.5.1")
	c.cmd("MAIL FROM:<a@remote.test>", 250, "2.1.0")
	c.cmd("MAIL FROM:<a@remote.test>", 503, "5.5.1")
	c.cmd("DATA", 554, "5.5.1")
	c.cmd("MAIL TO:<a@remote.test>", 503, "5.5.1")
	c.cmd("RSET", 250, "2.0.0")
	c.cmd("MAIL <a@remote.test>", 501, "5.5.4")
	c.cmd("NOOP", 250, "2.0.0")
	c.cmd("HELP", 214, "2.0.0")
	c.cmd("FOO bar", 500, "5.5.2")
	c.cmd("STARTTLS now", 501, "5.5.4")
	c.cmd("AUTH PLAIN", 502, "5.5.1")
}

func TestStrictSyntax(t *testing.T) {
	e := newEnv(t, envOpts{limits: smtpserver.Limits{MaxErrors: 100}})
	c := e.dialReady()
	// RFC 5321 §4.5.3.1.4: 512 octets including CRLF.
	c.cmd("NOOP "+strings.Repeat("x", 505), 250, "2.0.0")
	c.cmd("NOOP "+strings.Repeat("x", 506), 500, "5.5.2")
	c.cmd("NOOP "+strings.Repeat("x", 10000), 500, "5.5.2")
	c.cmd("NOOP", 250, "2.0.0") // the session goes on
	c.raw("NOOP\n")
	c.expect(500, "5.5.2")
	c.raw("RCPT TO:<a\rb@example.test>\r\n")
	c.expect(500, "5.5.2")
	c.raw("NOOP\x00\r\n")
	c.expect(500, "5.5.2")
	c.cmd("MAIL FROM:<a@remote.test> FOO=BAR", 555, "5.5.4")
	c.cmd("MAIL FROM:<a@remote.test> SIZE=99999999", 552, "5.3.4")
	c.cmd("MAIL FROM:<not an address>", 501, "5.1.7")
	c.cmd("MAIL FROM:<jörg@remote.test>", 553, "5.6.7")
	c.cmd("MAIL FROM:<jörg@remote.test> SMTPUTF8", 250, "2.1.0")
	c.cmd("RCPT TO:<alice@example.test> NOTIFY=SOMETIMES", 501, "5.5.4")
	c.cmd("RCPT TO:<alice@example.test> XYZ=1", 555, "5.5.4")
	c.cmd("RCPT TO:<bad address>", 501, "5.1.3")
	c.cmd("RCPT TO:<jörg@example.test> NOTIFY=FAILURE ORCPT=rfc822;j+C3+B6rg@example.test", 501, "5.5.4")
	c.cmd("RCPT TO:<jörg@example.test> NOTIFY=FAILURE,DELAY", 250, "2.1.5")
	c.cmd("RSET", 250, "2.0.0")
	c.cmd("MAIL FROM:<a@remote.test>", 250, "2.1.0")
	c.cmd("RCPT TO:<jörg@example.test>", 553, "5.6.7")
	c.cmd("HELO x", 250, "")
	c.cmd("MAIL FROM:<a@remote.test> SIZE=10", 555, "5.5.4")
}

func TestVRFYAndEXPNRevealNothing(t *testing.T) {
	e := newEnv(t, envOpts{})
	c := e.dialReady()
	a := c.cmd("VRFY alice@example.test", 252, "2.5.0")
	b := c.cmd("VRFY nobody@example.test", 252, "2.5.0")
	if fmt.Sprint(a) != fmt.Sprint(b) {
		t.Fatalf("VRFY answers differ: %v / %v", a, b)
	}
	a = c.cmd("EXPN alice@example.test", 502, "5.5.1")
	b = c.cmd("EXPN nobody@example.test", 502, "5.5.1")
	if fmt.Sprint(a) != fmt.Sprint(b) {
		t.Fatalf("EXPN answers differ")
	}
}

func TestRecipientPolicy(t *testing.T) {
	e := newEnv(t, envOpts{limits: smtpserver.Limits{MaxErrors: 100}})
	c := e.dialReady()
	c.cmd("MAIL FROM:<>", 250, "2.1.0")
	for _, tt := range []struct {
		rcpt string
		code int
		enh  string
	}{
		{"<alice@example.test>", 250, "2.1.5"},
		{"<Alice+tag@EXAMPLE.test>", 250, "2.1.5"},
		{"<postmaster@example.test>", 250, "2.1.5"},
		{"<Postmaster>", 250, "2.1.5"},
		{"<nobody@example.test>", 550, "5.1.1"},
		{"<victim@remote.test>", 554, "5.7.1"},
		{"<victim%remote.test@example.test>", 554, "5.7.1"},
		{"<@example.test:victim@remote.test>", 554, "5.7.1"},
		{"<remote.test!victim@example.test>", 554, "5.7.1"},
		{`<"victim@remote.test"@example.test>`, 554, "5.7.1"},
		{"<victim@[127.0.0.1]>", 554, "5.7.1"},
	} {
		c.cmd("RCPT TO:"+tt.rcpt, tt.code, tt.enh)
	}
}

func TestRecipientLimit(t *testing.T) {
	e := newEnv(t, envOpts{limits: smtpserver.Limits{MaxRecipients: 2, MaxErrors: 100}})
	c := e.dialReady()
	c.cmd("MAIL FROM:<a@remote.test>", 250, "2.1.0")
	c.cmd("RCPT TO:<alice@example.test>", 250, "2.1.5")
	c.cmd("RCPT TO:<bob@example.test>", 250, "2.1.5")
	c.cmd("RCPT TO:<postmaster@example.test>", 452, "4.5.3")
	c.cmd("RCPT TO:<postmaster@example.test>", 452, "4.5.3")
	c.cmd("DATA", 354, "")
	c.raw(testMsg + ".\r\n")
	c.expect(250, "2.0.0")
	e.waitDeliveries(2)
}

func TestMessageSizeLimit(t *testing.T) {
	e := newEnv(t, envOpts{limits: smtpserver.Limits{MaxMessageSize: 2000}})
	c := e.dialReady()
	c.cmd("MAIL FROM:<a@remote.test>", 250, "2.1.0")
	c.cmd("RCPT TO:<alice@example.test>", 250, "2.1.5")
	c.cmd("DATA", 354, "")
	c.raw(testMsg + strings.Repeat(strings.Repeat("y", 70)+"\r\n", 100) + ".\r\n")
	c.expect(552, "5.3.4")
	// The session is still in sync and usable.
	c.cmd("MAIL FROM:<a@remote.test>", 250, "2.1.0")
	c.cmd("RCPT TO:<alice@example.test>", 250, "2.1.5")
	c.cmd("DATA", 354, "")
	c.raw(testMsg + ".\r\n")
	c.expect(250, "2.0.0")
	ds := e.waitDeliveries(1)
	if len(ds) != 1 || len(ds[0].Body) > 2000 {
		t.Fatalf("%d deliveries", len(ds))
	}
}

// TestSmuggling sends each bare-CR/LF "end of data" variant followed by a smuggled transaction.
// None may end the message: the whole thing must be one refused message, and nothing delivered.
func TestSmuggling(t *testing.T) {
	variants := map[string]string{
		"LF.LF": "\n.\n", "CR.CR": "\r.\r", "LF.CRLF": "\n.\r\n", "CRLF.CR": "\r\n.\r", "CR.CRLF": "\r.\r\n",
		"CRLF.LF": "\r\n.\n", "bare LF in line": "x\ny\r\n", "bare CR in line": "x\ry\r\n",
	}
	for name, v := range variants {
		t.Run(name, func(t *testing.T) {
			e := newEnv(t, envOpts{})
			c := e.dialReady()
			c.cmd("MAIL FROM:<a@remote.test>", 250, "2.1.0")
			c.cmd("RCPT TO:<alice@example.test>", 250, "2.1.5")
			c.cmd("DATA", 354, "")
			smuggled := "MAIL FROM:<evil@remote.test>\r\nRCPT TO:<bob@example.test>\r\nDATA\r\nSubject: smuggled\r\n\r\nevil\r\n"
			c.raw(testMsg + "line" + v + smuggled + ".\r\n")
			c.expect(550, "5.5.2")
			c.cmd("NOOP", 250, "2.0.0")
			time.Sleep(100 * time.Millisecond)
			if n := len(e.rec.Deliveries()); n != 0 {
				t.Fatalf("%d messages delivered", n)
			}
			if n := e.q.Metrics().Accepted.Load(); n != 0 {
				t.Fatalf("%d messages queued", n)
			}
		})
	}
}

func TestBDAT(t *testing.T) {
	e := newEnv(t, envOpts{})
	c := e.dialReady()
	c.cmd("MAIL FROM:<a@remote.test>", 250, "2.1.0")
	c.cmd("RCPT TO:<alice@example.test>", 250, "2.1.5")
	part1, part2 := testMsg[:30]+"\r", "\n"+testMsg[31:]
	c.raw(fmt.Sprintf("BDAT %d\r\n%s", len(part1), part1))
	c.expect(250, "2.0.0")
	c.raw(fmt.Sprintf("BDAT %d LAST\r\n%s", len(part2), part2))
	c.expect(250, "2.0.0")
	ds := e.waitDeliveries(1)
	if !bytes.HasSuffix(ds[0].Body, []byte(testMsg[:30]+"\r\n"+testMsg[31:])) {
		t.Fatalf("body %q", ds[0].Body)
	}
	// BDAT content with a bare LF is refused like DATA's; a dot line means nothing in BDAT.
	c.cmd("MAIL FROM:<a@remote.test>", 250, "2.1.0")
	c.cmd("RCPT TO:<bob@example.test>", 250, "2.1.5")
	bad := "Subject: x\r\n\r\nline\n.\nMAIL FROM:<evil@x.test>\r\n"
	c.raw(fmt.Sprintf("BDAT %d LAST\r\n%s", len(bad), bad))
	c.expect(550, "5.5.2")
	// BDAT without a transaction: the chunk is consumed, the session stays in sync.
	c.raw("BDAT 5 LAST\r\nRSET\n")
	c.expect(503, "5.5.1")
	c.cmd("NOOP", 250, "2.0.0")
	c.cmd("MAIL FROM:<a@remote.test>", 250, "2.1.0")
	c.cmd("RCPT TO:<bob@example.test>", 250, "2.1.5")
	c.raw("BDAT 3\r\nabc")
	c.expect(250, "2.0.0")
	c.cmd("DATA", 503, "5.5.1")
	c.cmd("RSET", 250, "2.0.0")
	c.raw("BDAT x\r\n")
	c.expect(501, "5.5.4")
	c.expectClosed()
	time.Sleep(50 * time.Millisecond)
	if n := len(e.rec.Deliveries()); n != 1 {
		t.Fatalf("%d deliveries, want 1", n)
	}
}

// TestSTARTTLSDiscardsPipelinedCommands covers the CVE-2011-0411 class: commands sent in the
// same packet as STARTTLS are plain text and must not run inside the TLS session.
func TestSTARTTLSDiscardsPipelinedCommands(t *testing.T) {
	e := newEnv(t, envOpts{})
	c := e.dialReady()
	c.raw("STARTTLS\r\nMAIL FROM:<evil@remote.test>\r\n")
	c.expect(220, "2.0.0")
	tc := tls.Client(c.c, &tls.Config{InsecureSkipVerify: true})
	if err := tc.Handshake(); err != nil {
		t.Fatal(err)
	}
	c2 := &client{t: t, c: tc, r: newReader(tc)}
	// Had the injected MAIL run, this MAIL would be "nested" (503) — or we would read its 250.
	c2.cmd("MAIL FROM:<a@remote.test>", 503, "5.5.1") // EHLO is required again after TLS
	r := c2.cmd("EHLO client.example", 250, "")
	for _, l := range r.lines {
		if l == "STARTTLS" {
			t.Error("STARTTLS offered inside TLS")
		}
	}
	c2.cmd("MAIL FROM:<a@remote.test>", 250, "2.1.0")
	c2.cmd("RCPT TO:<alice@example.test>", 250, "2.1.5")
	c2.cmd("DATA", 354, "")
	c2.raw(testMsg + ".\r\n")
	c2.expect(250, "2.0.0")
	ds := e.waitDeliveries(1)
	if !bytes.Contains(ds[0].Body, []byte("with ESMTPS id")) || !bytes.Contains(ds[0].Body, []byte("version=TLS 1.3")) {
		t.Errorf("Received does not record TLS: %q", ds[0].Body[:200])
	}
	c2.cmd("STARTTLS", 503, "5.5.1")
}

func TestTimeouts(t *testing.T) {
	e := newEnv(t, envOpts{limits: smtpserver.Limits{CommandTimeout: 300 * time.Millisecond, DataTimeout: 300 * time.Millisecond}})
	c := e.dial()
	c.expect(220, "")
	c.expect(421, "4.4.2")
	c.expectClosed()
	// A slow client that dribbles a command one byte at a time past the deadline is cut off.
	c = e.dialReady()
	for _, b := range []byte("NOOP") {
		c.raw(string(b))
		time.Sleep(100 * time.Millisecond)
	}
	c.expect(421, "4.4.2")
	// DATA that stalls is cut off with 421, and nothing is queued.
	c = e.dialReady()
	c.cmd("MAIL FROM:<a@remote.test>", 250, "2.1.0")
	c.cmd("RCPT TO:<alice@example.test>", 250, "2.1.5")
	c.cmd("DATA", 354, "")
	c.raw("Subject: slow\r\n")
	c.expect(421, "4.4.2")
	if n := e.q.Metrics().Accepted.Load(); n != 0 {
		t.Fatalf("%d queued", n)
	}
}

func TestSlowButLegalClient(t *testing.T) {
	e := newEnv(t, envOpts{limits: smtpserver.Limits{CommandTimeout: 2 * time.Second, DataTimeout: 2 * time.Second}})
	c := e.dialReady()
	for _, cmd := range []string{"MAIL FROM:<a@remote.test>\r\n", "RCPT TO:<alice@example.test>\r\n"} {
		for i := 0; i < len(cmd); i += 4 {
			c.raw(cmd[i:min(i+4, len(cmd))])
			time.Sleep(20 * time.Millisecond)
		}
		c.expect(250, "*")
	}
	c.cmd("DATA", 354, "")
	for _, l := range strings.SplitAfter(testMsg+".\r\n", "\r\n") {
		c.raw(l)
		time.Sleep(50 * time.Millisecond)
	}
	c.expect(250, "2.0.0")
}

func TestTooManyErrors(t *testing.T) {
	e := newEnv(t, envOpts{limits: smtpserver.Limits{MaxErrors: 3}})
	c := e.dialReady()
	c.cmd("BOGUS", 500, "5.5.2")
	c.cmd("BOGUS", 500, "5.5.2")
	c.raw("BOGUS\r\n")
	c.expect(500, "5.5.2")
	c.expect(421, "4.7.0")
	c.expectClosed()
}

func TestForbiddenCommand(t *testing.T) {
	e := newEnv(t, envOpts{})
	c := e.dial()
	c.expect(220, "")
	c.cmd("GET / HTTP/1.1", 521, "5.7.0")
	c.expectClosed()
}

func TestConnectionLimits(t *testing.T) {
	e := newEnv(t, envOpts{limits: smtpserver.Limits{MaxConnections: 3, MaxConnectionsPerIP: 2}})
	a, b := e.dial(), e.dial()
	a.expect(220, "")
	b.expect(220, "")
	c := e.dial()
	c.expect(421, "4.7.0")
	c.expectClosed()
	// Another loopback address is another client: the per-IP limit does not starve it, the total
	// limit still holds.
	d := dialFrom(t, "127.0.0.2", e.addr)
	d.expect(220, "")
	x := dialFrom(t, "127.0.0.3", e.addr)
	x.expect(421, "4.7.0")
	a.cmd("QUIT", 221, "2.0.0")
	a.expectClosed()
	time.Sleep(50 * time.Millisecond)
	y := e.dial()
	y.expect(220, "")
}

func dialFrom(t *testing.T, local, addr string) *client {
	t.Helper()
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(local)}, Timeout: 5 * time.Second}
	c, err := d.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return &client{t: t, c: c, r: newReader(c)}
}

// TestManyConnections opens hundreds of connections at once against a low limit: every one is
// greeted or refused with 421, none is left hanging.
func TestManyConnections(t *testing.T) {
	e := newEnv(t, envOpts{limits: smtpserver.Limits{MaxConnections: 100, MaxConnectionsPerIP: 100}})
	const n = 400
	var wg sync.WaitGroup
	var mu sync.Mutex
	counts := map[string]int{}
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c, err := net.DialTimeout("tcp", e.addr, 10*time.Second)
			if err != nil {
				mu.Lock()
				counts["dial error"]++
				mu.Unlock()
				return
			}
			defer c.Close()
			c.SetReadDeadline(time.Now().Add(10 * time.Second))
			line, err := newReader(c).ReadString('\n')
			key := "hang/err"
			if err == nil {
				key = line[:3]
			}
			mu.Lock()
			counts[key]++
			mu.Unlock()
			time.Sleep(200 * time.Millisecond) // hold the slot so that others are refused
		}()
	}
	wg.Wait()
	if counts["220"]+counts["421"] != n || counts["220"] < 100 || counts["421"] == 0 {
		t.Fatalf("replies: %v", counts)
	}
}
