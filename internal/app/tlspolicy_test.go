package app

import (
	"context"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	gosmtp "github.com/emersion/go-smtp"

	"github.com/postamt/postamt/internal/config"
	"github.com/postamt/postamt/internal/dns/dnstest"
)

// plainMX is a receiving MX without STARTTLS that records the recipients it accepted.
type plainMX struct {
	mu  sync.Mutex
	got []string
}

func (m *plainMX) NewSession(*gosmtp.Conn) (gosmtp.Session, error) { return &plainSession{m: m}, nil }

type plainSession struct {
	m     *plainMX
	rcpts []string
}

func (s *plainSession) Mail(string, *gosmtp.MailOptions) error { return nil }
func (s *plainSession) Rcpt(to string, _ *gosmtp.RcptOptions) error {
	s.rcpts = append(s.rcpts, to)
	return nil
}
func (s *plainSession) Data(r io.Reader) error {
	io.Copy(io.Discard, r)
	s.m.mu.Lock()
	defer s.m.mu.Unlock()
	s.m.got = append(s.m.got, s.rcpts...)
	return nil
}
func (s *plainSession) Reset()        { s.rcpts = nil }
func (s *plainSession) Logout() error { return nil }

func (m *plainMX) recipients() string {
	m.mu.Lock()
	defer m.mu.Unlock()
	return strings.Join(m.got, ",")
}

// TestOutboundTLSPolicyWired: [outbound.tls.policy] reaches the remote transport. The MX offers
// no STARTTLS; mail for the domain with "encrypt" waits in the queue with 4.7.4 while mail for
// another domain on the same MX is delivered in plain text.
func TestOutboundTLSPolicyWired(t *testing.T) {
	mx := &plainMX{}
	srv := gosmtp.NewServer(mx)
	srv.Domain = "mx.remote.test"
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	port := ln.Addr().(*net.TCPAddr).Port
	zone := &dnstest.Zone{
		MX: map[string][]*net.MX{"secure.test": {{Host: "mx.remote.test.", Pref: 10}}, "open.test": {{Host: "mx.remote.test.", Pref: 10}}},
		A:  map[string][]netip.Addr{"mx.remote.test": {netip.MustParseAddr("127.0.0.1")}},
	}
	dir := t.TempDir()
	cfg, err := config.Parse("test.toml", []byte(`
hostname = "mx.example.test"
data_dir = "`+dir+`"
[smtp]
listen = ["127.0.0.1:0"]
[local]
domains = ["example.test"]
mailboxes = ["alice@example.test"]
[local.aliases]
"fwd@example.test" = ["carol@secure.test", "dave@open.test"]
[outbound]
port = `+strconv.Itoa(port)+`
dns_servers = ["`+dnstest.Server(t, zone)+`"]
[outbound.tls.policy]
"secure.test" = "encrypt"
`))
	if err != nil {
		t.Fatal(err)
	}
	var logs strings.Builder
	var logMu sync.Mutex
	a, err := Start(cfg, slog.New(slog.NewTextHandler(lockedWriter{&logMu, &logs}, nil)))
	if err != nil {
		t.Fatal(err)
	}
	defer a.Shutdown(context.Background())
	logged := func() string {
		logMu.Lock()
		defer logMu.Unlock()
		return logs.String()
	}
	msg := "From: <alice@example.test>\r\nTo: <fwd@example.test>\r\nSubject: tls\r\n\r\nbody\r\n"
	if err := send(a.Addrs()[0].String(), "alice@example.test", "fwd@example.test", msg); err != nil {
		t.Fatal(err)
	}
	for end := time.Now().Add(10 * time.Second); time.Now().Before(end); time.Sleep(20 * time.Millisecond) {
		if mx.recipients() != "" && strings.Contains(logged(), "4.7.4") {
			break
		}
	}
	if got := mx.recipients(); got != "dave@open.test" {
		t.Errorf("MX received %q, want only dave@open.test", got)
	}
	l := logged()
	if !strings.Contains(l, "4.7.4") || !strings.Contains(l, "tls policy override for secure.test") {
		t.Errorf("no 4.7.4 deferral naming the override in the log:\n%s", l)
	}
	if !strings.Contains(l, "tls=none") {
		t.Errorf("plain delivery to open.test not logged with tls=none:\n%s", l)
	}
}
