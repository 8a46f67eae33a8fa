package app

import (
	"bufio"
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/base64"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/emersion/go-msgauth/dkim"

	"github.com/postamt/postamt/internal/config"
	"github.com/postamt/postamt/internal/dns/dnstest"
)

type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// smtpClient is a bare client that can choose its source address (127.0.0.x) and see every
// reply code.
type smtpClient struct {
	t testing.TB
	c net.Conn
	r *bufio.Reader
}

func dialFrom(t testing.TB, from, addr string) *smtpClient {
	t.Helper()
	d := net.Dialer{Timeout: 5 * time.Second, LocalAddr: &net.TCPAddr{IP: net.ParseIP(from)}}
	c, err := d.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return &smtpClient{t: t, c: c, r: bufio.NewReader(c)}
}

// expect reads one reply and checks that it starts with prefix ("250", "554 5.7.1 Client").
func (s *smtpClient) expect(prefix string) string {
	s.t.Helper()
	s.c.SetReadDeadline(time.Now().Add(10 * time.Second))
	var last string
	for {
		line, err := s.r.ReadString('\n')
		if err != nil {
			s.t.Fatalf("want %q, read error %v", prefix, err)
		}
		last = strings.TrimRight(line, "\r\n")
		if len(last) < 4 || last[3] == ' ' {
			break
		}
	}
	if !strings.HasPrefix(last, prefix) {
		s.t.Fatalf("want %q, got %q", prefix, last)
	}
	return last
}

func (s *smtpClient) cmd(line, prefix string) string {
	s.t.Helper()
	s.c.Write([]byte(line + "\r\n"))
	return s.expect(prefix)
}

// TestChecksEndToEnd runs the chain exactly as Start wires it, against a DNS server on
// 127.0.0.1 that publishes SPF, DKIM, DMARC and a block list: a listed client is refused at
// connect with the list named, a new triplet is greylisted and passes on retry, a signed
// message gets one Authentication-Results field with forged ones renamed, and a spoofed one is
// refused with the DMARC reason.
func TestChecksEndToEnd(t *testing.T) {
	_, key, _ := ed25519.GenerateKey(rand.Reader)
	z := &dnstest.Zone{
		TXT: map[string][]string{
			"sender.test":                {"v=spf1 ip4:127.0.0.1 -all"},
			"_dmarc.sender.test":         {"v=DMARC1; p=reject"},
			"sel._domainkey.sender.test": {"v=DKIM1; k=ed25519; p=" + base64.StdEncoding.EncodeToString(key.Public().(ed25519.PublicKey))},
			"bank.test":                  {"v=spf1 ip4:192.0.2.0/24 -all"},
			"_dmarc.bank.test":           {"v=DMARC1; p=reject"},
		},
		A: map[string][]netip.Addr{"3.0.0.127.bl.test": {netip.MustParseAddr("127.0.0.2")}},
	}
	dnsAddr := dnstest.Server(t, z)
	dir := t.TempDir()
	cfg, err := config.Parse("test.toml", []byte(`
hostname = "mx.example.test"
data_dir = "`+dir+`"
[smtp]
listen = ["127.0.0.1:0"]
[local]
domains = ["example.test"]
mailboxes = ["alice@example.test"]
[outbound]
dns_servers = ["`+dnsAddr+`"]
[checks.allowlist]
trusted_networks = []
[checks.dnsbl]
enabled = true
lists = [{ zone = "bl.test" }]
[checks.greylist]
enabled = true
delay = "1s"
`))
	if err != nil {
		t.Fatal(err)
	}
	logs := &lockedBuffer{}
	a, err := Start(cfg, slog.New(slog.NewTextHandler(logs, nil)))
	if err != nil {
		t.Fatal(err)
	}
	defer a.Shutdown(context.Background())
	addr := a.Addrs()[0].String()
	defer func() {
		if t.Failed() {
			t.Logf("log:\n%s", logs.String())
		}
	}()

	// 1. A listed client: refused before the greeting, the list named.
	c := dialFrom(t, "127.0.0.3", addr)
	c.expect("554 5.7.1 mx.example.test Client host [127.0.0.3] is listed by bl.test")

	// 2. Greylisting: the first attempt is deferred, the retry after the delay passes.
	plain := "From: Sender <s@sender.test>\r\nTo: <alice@example.test>\r\nSubject: checked\r\nDate: Sun, 29 Nov 2026 10:00:00 +0000\r\nMessage-ID: <1@sender.test>\r\n\r\nHello through the checks.\r\n"
	var signed bytes.Buffer
	if err := dkim.Sign(&signed, strings.NewReader(plain), &dkim.SignOptions{Domain: "sender.test", Selector: "sel", Signer: key}); err != nil {
		t.Fatal(err)
	}
	msg := "Authentication-Results: mx.example.test; dmarc=pass header.from=bank.test\r\n" + signed.String()
	c = dialFrom(t, "127.0.0.1", addr)
	c.expect("220 ")
	c.cmd("EHLO client.sender.test", "250")
	c.cmd("MAIL FROM:<s@sender.test>", "250")
	c.cmd("RCPT TO:<alice@example.test>", "451 4.7.1 Greylisted")
	c.cmd("RSET", "250")
	time.Sleep(1100 * time.Millisecond)
	c.cmd("MAIL FROM:<s@sender.test>", "250")
	c.cmd("RCPT TO:<alice@example.test>", "250")
	c.cmd("DATA", "354")
	c.c.Write([]byte(msg + ".\r\n"))
	c.expect("250 2.0.0")

	// 3. A spoofed bank.test message from the same (now allowed) network: DMARC refuses it.
	c.cmd("MAIL FROM:<alerts@bank.test>", "250")
	c.cmd("RCPT TO:<alice@example.test>", "250")
	c.cmd("DATA", "354")
	c.c.Write([]byte(strings.ReplaceAll(plain, "s@sender.test", "alerts@bank.test") + ".\r\n"))
	c.expect("550 5.7.26 DMARC policy of bank.test is reject: SPF fail and no DKIM signature")
	c.cmd("QUIT", "221")

	var files []string
	for end := time.Now().Add(10 * time.Second); len(files) == 0 && time.Now().Before(end); time.Sleep(10 * time.Millisecond) {
		files, _ = filepath.Glob(filepath.Join(dir, "mail", "example.test", "alice", "new", "*"))
	}
	if len(files) != 1 {
		t.Fatalf("maildir: %v", files)
	}
	b, _ := os.ReadFile(files[0])
	body := string(b)
	if strings.Count(body, "Authentication-Results: mx.example.test;") != 1 {
		t.Errorf("want exactly one Authentication-Results of ours:\n%s", body)
	}
	for _, want := range []string{"iprev=pass policy.iprev=127.0.0.1", "spf=pass smtp.mailfrom=sender.test", "dkim=pass header.d=sender.test", "dmarc=pass header.from=sender.test",
		"X-Spoofed-Auth-Results: mx.example.test; dmarc=pass header.from=bank.test"} {
		if !strings.Contains(body, want) {
			t.Errorf("delivered message lacks %q:\n%s", want, body)
		}
	}
	log := logs.String()
	for _, want := range []string{`checks="dnsbl=listed:bl.test=127.0.0.2"`, "greylist=deferred",
		`checks="dnsbl=clean fcrdns=pass helo=ok spf=pass greylist=pass dkim=pass arc=none dmarc=pass authres=forged-removed"`,
		`checks="dnsbl=clean fcrdns=pass helo=ok spf=fail greylist=pass dkim=none arc=none dmarc=fail"`} {
		if !strings.Contains(log, want) {
			t.Errorf("log lacks %q", want)
		}
	}
}

// The chain follows [checks]: enabled checks in the fixed order, each with its sub-table's
// timeout and fail rule; disabled ones absent.
func TestBuildChecksFromConfig(t *testing.T) {
	dir := t.TempDir()
	cfg, err := config.Parse("test.toml", []byte(`
hostname = "mx.example.test"
data_dir = "`+dir+`"
[checks]
reject_score = 7
[checks.pregreet]
enabled = true
delay = "2s"
[checks.dnsbl]
enabled = true
fail_closed = true
timeout = "3s"
lists = [{ zone = "bl.test" }]
[checks.greylist]
enabled = true
[checks.fcrdns]
enabled = false
`))
	if err != nil {
		t.Fatal(err)
	}
	b, err := buildChecks(cfg, checkDeps{Resolver: &dnstest.Zone{}, Now: time.Now})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	var names []string
	for _, e := range b.Chain.Entries {
		names = append(names, e.Check.Name())
		if e.Check.Name() == "dnsbl" && (!e.FailClosed || e.Timeout != 3*time.Second) {
			t.Errorf("dnsbl entry %+v", e)
		}
		if e.Check.Name() == "spf" && (e.FailClosed || e.Timeout != 20*time.Second) {
			t.Errorf("spf entry %+v", e)
		}
	}
	want := "allowlist ratelimit pregreet dnsbl helo spf greylist dkim arc dmarc attachments authres"
	if got := strings.Join(names, " "); got != want {
		t.Errorf("chain %q, want %q", got, want)
	}
	if b.GreetDelay != 2*time.Second || b.Chain.RejectScore != 7 {
		t.Errorf("greet delay %v, reject score %v", b.GreetDelay, b.Chain.RejectScore)
	}
	if _, err := os.Stat(filepath.Join(dir, "greylist.db")); err != nil {
		t.Errorf("greylist database not in data_dir: %v", err)
	}
}
