package app

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/emersion/go-msgauth/dkim"
	gosmtp "github.com/emersion/go-smtp"

	"github.com/postamt/postamt/internal/config"
	"github.com/postamt/postamt/internal/dns/dnstest"
)

// startWith starts the app from a TOML config (data_dir, listener and local domain are filled
// in) and returns it with its log.
func startWith(t *testing.T, toml string) (*App, *lockedBuffer, string) {
	t.Helper()
	dir := t.TempDir()
	cfg, err := config.Parse("test.toml", []byte(`
hostname = "mx.example.test"
data_dir = "`+dir+`"
[smtp]
listen = ["127.0.0.1:0"]
[local]
domains = ["example.test"]
mailboxes = ["alice@example.test"]
`+toml))
	if err != nil {
		t.Fatal(err)
	}
	logs := &lockedBuffer{}
	a, err := Start(cfg, slog.New(slog.NewTextHandler(logs, nil)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		a.Shutdown(context.Background())
		if t.Failed() {
			t.Logf("log:\n%s", logs.String())
		}
	})
	return a, logs, dir
}

// recordingMX is an SMTP server that keeps the messages it gets.
type recordingMX struct {
	mu   sync.Mutex
	msgs []string
}

func (m *recordingMX) count() int { m.mu.Lock(); defer m.mu.Unlock(); return len(m.msgs) }

type recordingSession struct{ m *recordingMX }

func (recordingSession) Mail(string, *gosmtp.MailOptions) error { return nil }
func (recordingSession) Rcpt(string, *gosmtp.RcptOptions) error { return nil }
func (s recordingSession) Data(r io.Reader) error {
	b, err := io.ReadAll(r)
	s.m.mu.Lock()
	s.m.msgs = append(s.m.msgs, string(b))
	s.m.mu.Unlock()
	return err
}
func (recordingSession) Reset()        {}
func (recordingSession) Logout() error { return nil }

// TestDNSOutageDefersThenDelivers: the configured resolver stops answering (UDP and TCP
// alike). A relayed message is deferred with 451 4.4.3 — the resolver gives up by itself, well
// inside the attempt deadline — and stays queued; when DNS answers again, the next retry
// delivers it, once, and the queue is empty.
func TestDNSOutageDefersThenDelivers(t *testing.T) {
	mx := &recordingMX{}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := gosmtp.NewServer(gosmtp.BackendFunc(func(*gosmtp.Conn) (gosmtp.Session, error) { return recordingSession{mx}, nil }))
	srv.Domain = "mx.remote.test"
	go srv.Serve(ln)
	defer srv.Close()
	z := &dnstest.Zone{
		MX: map[string][]*net.MX{"remote.test": {{Host: "mx.remote.test.", Pref: 10}}},
		A:  map[string][]netip.Addr{"mx.remote.test": {netip.MustParseAddr("127.0.0.1")}},
	}
	dnsAddr := dnstest.Server(t, z)
	z.SetSilent(true)
	a, logs, _ := startWith(t, `
[local.aliases]
"fwd@example.test" = ["bob@remote.test"]
[outbound]
port = `+strconv.Itoa(ln.Addr().(*net.TCPAddr).Port)+`
dns_servers = ["`+dnsAddr+`"]
[queue]
retry_intervals = ["1s"]
`)
	start := time.Now()
	if err := send(a.Addrs()[0].String(), "alice@example.test", "fwd@example.test",
		"From: <alice@example.test>\r\nSubject: through an outage\r\n\r\nbody\r\n"); err != nil {
		t.Fatal(err)
	}
	deferred := waitLog(t, logs, 60*time.Second, "msg=delivery", "status=deferred")
	t.Logf("first attempt deferred after %v: %s", time.Since(start).Round(time.Millisecond), deferred)
	if !strings.Contains(deferred, `reply="451 4.4.3 `) || !strings.Contains(deferred, "to=bob@remote.test") {
		t.Errorf("deferral is not a 4.4.3 for bob: %s", deferred)
	}
	if mx.count() != 0 {
		t.Fatalf("the MX got mail while DNS was down")
	}
	z.SetSilent(false)
	waitLog(t, logs, 30*time.Second, "msg=delivery", "to=bob@remote.test", "status=sent")
	for end := time.Now().Add(10 * time.Second); time.Now().Before(end); time.Sleep(20 * time.Millisecond) {
		if _, _, m, err := a.Queue.Counts(context.Background()); err == nil && m == 0 {
			break
		}
	}
	if _, _, m, _ := a.Queue.Counts(context.Background()); m != 0 {
		t.Errorf("%d message(s) left in the queue", m)
	}
	if n := mx.count(); n != 1 || !strings.Contains(mx.msgs[0], "Subject: through an outage") {
		t.Errorf("the MX got %d message(s), want the one", n)
	}
}

// waitLog waits for a log line containing every part and returns it.
func waitLog(t *testing.T, logs *lockedBuffer, within time.Duration, parts ...string) string {
	t.Helper()
	for end := time.Now().Add(within); time.Now().Before(end); time.Sleep(20 * time.Millisecond) {
	lines:
		for _, line := range strings.Split(logs.String(), "\n") {
			for _, p := range parts {
				if !strings.Contains(line, p) {
					continue lines
				}
			}
			return line
		}
	}
	t.Fatalf("no log line with %q within %v", parts, within)
	return ""
}

// TestDNSOutageChecks: with a resolver that never answers, the sender-authentication checks
// (SPF, DKIM, DMARC, each with a 1 s timeout) cannot decide. By default they fail open: the
// message is accepted and delivered with temperror in Authentication-Results. A check with
// fail_closed = true defers the transaction with 451 4.7.1 instead — SPF at MAIL, DKIM and
// DMARC at the end of DATA. Every reply comes within the check timeouts of its stage, never
// later (the resolver alone would wait 10 s per query).
func TestDNSOutageChecks(t *testing.T) {
	_, key, _ := ed25519.GenerateKey(rand.Reader)
	plain := "From: Sender <s@sender.test>\r\nTo: <alice@example.test>\r\nSubject: checked\r\nDate: Sun, 29 Nov 2026 10:00:00 +0000\r\nMessage-ID: <1@sender.test>\r\n\r\nHello through an outage.\r\n"
	var signed bytes.Buffer
	if err := dkim.Sign(&signed, strings.NewReader(plain), &dkim.SignOptions{Domain: "sender.test", Selector: "sel", Signer: key}); err != nil {
		t.Fatal(err)
	}
	const slack = 2500 * time.Millisecond // scheduling on a shared machine; the resolver alone takes 10 s
	for _, tc := range []struct {
		name       string
		closed     string // the check with fail_closed = true, "" for none
		mail, data string // expected reply prefixes
	}{
		{"fail open", "", "250", "250 2.0.0"},
		{"spf fail closed", "spf", "451 4.7.1 Cannot check the message right now (spf unavailable)", ""},
		{"dkim fail closed", "dkim", "250", "451 4.7.1 Cannot check the message right now (dkim unavailable)"},
		{"dmarc fail closed", "dmarc", "250", "451 4.7.1 Cannot check the message right now (dmarc unavailable)"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dnsAddr, queries := dnstest.Blackhole(t)
			toml := `
[outbound]
dns_servers = ["` + dnsAddr + `"]
[checks.allowlist]
trusted_networks = []
[checks.fcrdns]
timeout = "1s"
[checks.helo]
timeout = "1s"
[checks.spf]
timeout = "1s"
[checks.dkim]
timeout = "1s"
[checks.dmarc]
timeout = "1s"
`
			if tc.closed != "" {
				toml = strings.Replace(toml, "[checks."+tc.closed+"]\n", "[checks."+tc.closed+"]\nfail_closed = true\n", 1)
			}
			a, logs, dir := startWith(t, toml)
			addr := a.Addrs()[0].String()

			// step sends line (or nothing) and checks the reply's prefix and that it came within max.
			var c *smtpClient
			step := func(line, prefix string, max time.Duration) {
				t.Helper()
				start := time.Now()
				if line == "" {
					c.expect(prefix)
				} else {
					c.cmd(line, prefix)
				}
				if took := time.Since(start); took > max {
					t.Errorf("%q: reply after %v, want within %v", line, took, max)
				}
			}
			start := time.Now()
			c = dialFrom(t, "127.0.0.1", addr)
			step("", "220 ", 1*time.Second+slack) // FCrDNS (no DNS for a loopback client)
			t.Logf("greeting after %v", time.Since(start))
			step("EHLO client.sender.test", "250", 2*time.Second+slack) // HELO check, SPF of the HELO name
			step("MAIL FROM:<s@sender.test>", tc.mail, time.Second+slack)
			if tc.mail != "250" {
				c.cmd("QUIT", "221")
				return
			}
			step("RCPT TO:<alice@example.test>", "250", slack)
			step("DATA", "354", slack)
			c.c.Write([]byte(signed.String() + ".\r\n"))
			step("", tc.data, 2*time.Second+slack) // DKIM, DMARC
			c.cmd("QUIT", "221")
			if queries() == 0 {
				t.Error("the blackhole saw no query")
			}
			line := waitLog(t, logs, 5*time.Second, "checks=")
			for _, want := range []string{"spf=temperror", "dkim=temperror"} {
				if !strings.Contains(line, want) {
					t.Errorf("log line lacks %q: %s", want, line)
				}
			}
			if tc.closed != "" {
				return
			}
			var files []string
			for end := time.Now().Add(10 * time.Second); len(files) == 0 && time.Now().Before(end); time.Sleep(10 * time.Millisecond) {
				files, _ = filepath.Glob(filepath.Join(dir, "mail", "example.test", "alice", "new", "*"))
			}
			if len(files) != 1 {
				t.Fatalf("maildir: %v", files)
			}
			b, _ := os.ReadFile(files[0])
			for _, want := range []string{"spf=temperror smtp.mailfrom=sender.test", "dkim=temperror header.d=sender.test",
				"dmarc=temperror header.from=sender.test", "Hello through an outage."} {
				if !strings.Contains(string(b), want) {
					t.Errorf("delivered message lacks %q:\n%s", want, b)
				}
			}
		})
	}
}
