package app

import (
	"context"
	"fmt"
	"github.com/emersion/go-msgauth/dkim"
	gosmtp "github.com/emersion/go-smtp"
	"github.com/postamt/postamt/internal/mailauth"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/smtp"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/postamt/postamt/internal/config"
	"github.com/postamt/postamt/internal/transport/lmtp/lmtptest"
)

// TestServeDeliverAndMetrics runs the whole wiring in-process: a client sends with net/smtp, the
// message lands in the Maildir, and the metrics endpoint counts it.
func TestServeDeliverAndMetrics(t *testing.T) {
	dir := t.TempDir()
	a := startTOML(t, `
hostname = "mx.example.test"
data_dir = "`+dir+`"
[smtp]
listen = ["127.0.0.1:0"]
[local]
domains = ["example.test"]
mailboxes = ["alice@example.test"]
[metrics]
listen = "127.0.0.1:0"
`)
	addr := a.Addrs()[0].String()
	msg := "From: <s@remote.test>\r\nTo: <alice@example.test>\r\nSubject: hi\r\n\r\nHello, Maildir.\r\n"
	if err := send(addr, "s@remote.test", "alice@example.test", msg); err != nil {
		t.Fatal(err)
	}
	var files []string
	for end := time.Now().Add(10 * time.Second); len(files) == 0 && time.Now().Before(end); time.Sleep(10 * time.Millisecond) {
		files, _ = filepath.Glob(filepath.Join(dir, "mail", "example.test", "alice", "new", "*"))
	}
	if len(files) != 1 {
		t.Fatalf("maildir: %v", files)
	}
	b, _ := os.ReadFile(files[0])
	for _, want := range []string{"Return-Path: <s@remote.test>\n", "Delivered-To: alice@example.test\n", "Received: from ", "\n\nHello, Maildir.\n"} {
		if !strings.Contains(string(b), want) {
			t.Errorf("delivered message lacks %q:\n%s", want, b)
		}
	}
	base := "http://" + a.metrics.Addr().String()
	// The Maildir file exists a moment before the queue records the outcome and drops the row.
	body := get(t, base+"/metrics")
	for end := time.Now().Add(5 * time.Second); !strings.Contains(body, "postamt_queue_messages 0") && time.Now().Before(end); time.Sleep(20 * time.Millisecond) {
		body = get(t, base+"/metrics")
	}
	for _, want := range []string{"postamt_smtp_messages_accepted_total 1", `postamt_delivery_attempts_total{result="sent"} 1`, "postamt_queue_messages 0", "postamt_smtp_commit_seconds_count 1", `postamt_delivery_attempt_seconds_count{transport="maildir"} 1`} {
		if !strings.Contains(body, want) {
			t.Errorf("/metrics lacks %q", want)
		}
	}
	if got := get(t, base+"/readyz"); got != "ready\n" {
		t.Errorf("/readyz: %q", got)
	}
}

func get(t *testing.T, url string) string {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return string(b)
}

// send is net/smtp without its automatic, verifying STARTTLS (our certificate is self-signed).
func send(addr, from, to, msg string) error {
	c, err := smtp.Dial(addr)
	if err != nil {
		return err
	}
	defer c.Close()
	if err := c.Mail(from); err != nil {
		return err
	}
	if err := c.Rcpt(to); err != nil {
		return err
	}
	w, err := c.Data()
	if err != nil {
		return err
	}
	if _, err := io.WriteString(w, msg); err != nil {
		return err
	}
	if err := w.Close(); err != nil {
		return err
	}
	return c.Quit()
}

// TestBounceToLocalSender: a recipient that the mail store refuses for good is returned to the
// (local) sender as a DSN offered to the sender's store, and the failed message leaves the queue.
func TestBounceToLocalSender(t *testing.T) {
	dir := t.TempDir()
	// An LMTP store that refuses every message after DATA.
	store := &lmtptest.Store{DataReply: func(string) *gosmtp.SMTPError {
		return &gosmtp.SMTPError{Code: 550, EnhancedCode: gosmtp.EnhancedCode{5, 1, 1}, Message: "User unknown"}
	}}
	storeAddr := store.Start(t)
	cfg, err := config.Parse("test.toml", []byte(`
hostname = "mx.example.test"
data_dir = "`+dir+`"
[smtp]
listen = ["127.0.0.1:0"]
[local]
domains = ["example.test"]
mailboxes = ["alice@example.test"]
transport = "lmtp"
lmtp_address = "`+storeAddr+`"
[local.aliases]
"ghost@example.test" = ["alice@example.test"]
`))
	if err != nil {
		t.Fatal(err)
	}
	var logs strings.Builder
	var logMu sync.Mutex
	a, err := Start(cfg, slog.New(slog.NewTextHandler(lockedWriter{&logMu, &logs}, nil)))
	t.Cleanup(func() {
		if t.Failed() {
			logMu.Lock()
			t.Log(logs.String())
			logMu.Unlock()
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	defer a.Shutdown(context.Background())
	// alice sends to ghost (an alias of alice, stored over LMTP, which refuses): the DSN goes to
	// alice, and is refused by the store too — but a DSN from <> is never bounced again.
	msg := "From: <alice@example.test>\r\nTo: <ghost@example.test>\r\nSubject: lost\r\n\r\nbody\r\n"
	if err := send(a.Addrs()[0].String(), "alice@example.test", "ghost@example.test", msg); err != nil {
		t.Fatal(err)
	}
	var dsnMsg string
	for end := time.Now().Add(10 * time.Second); time.Now().Before(end); time.Sleep(20 * time.Millisecond) {
		for _, m := range store.Offered() {
			if m.From == "" && strings.Contains(m.Body, "delivery-status") {
				dsnMsg = m.Body
			}
		}
		if dsnMsg != "" {
			break
		}
	}
	if dsnMsg == "" {
		t.Fatal("no DSN reached the sender's store")
	}
	for _, want := range []string{"From: Mail Delivery System <MAILER-DAEMON@mx.example.test>", "To: <alice@example.test>",
		"Action: failed", "Status: 5.1.1", "Original-Recipient: rfc822; ghost@example.test", "Subject: lost"} {
		if !strings.Contains(dsnMsg, want) {
			t.Errorf("DSN lacks %q:\n%s", want, dsnMsg)
		}
	}
	// Both the original and the (refused) DSN are gone from the queue: nothing bounces forever.
	for end := time.Now().Add(10 * time.Second); time.Now().Before(end); time.Sleep(20 * time.Millisecond) {
		if _, _, m, err := a.Queue.Counts(context.Background()); err == nil && m == 0 {
			return
		}
	}
	t.Fatal("messages left in the queue")
}

type lockedWriter struct {
	mu *sync.Mutex
	w  io.Writer
}

func (l lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}

func TestOutboundTransportFromConfig(t *testing.T) {
	dir := t.TempDir()
	pw := filepath.Join(dir, "relay.pw")
	os.WriteFile(pw, []byte("s3cret\r\nignored second line\n"), 0o600)
	cfg := config.Default()
	cfg.Outbound.RelayHost = "[smtp.provider.test]:587"
	cfg.Outbound.RelayUsername, cfg.Outbound.RelayPasswordFile = "me", pw
	cfg.Outbound.ConnectionReuse = 0
	tr, err := outboundTransport(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if c := tr.Auth["[smtp.provider.test]:587"]; c.Username != "me" || c.Password != "s3cret" {
		t.Errorf("credentials %+v", c)
	}
	if tr.ReuseIdle >= 0 {
		t.Errorf("connection_reuse 0s must disable reuse, got %v", tr.ReuseIdle)
	}
	cfg.Outbound.RelayPasswordFile = filepath.Join(dir, "missing")
	if _, err := outboundTransport(cfg); err == nil || !strings.Contains(err.Error(), "relay_password_file") {
		t.Errorf("missing password file: %v", err)
	}
}

// TestSuccessNotices: NOTIFY=SUCCESS for a local mailbox gets a "delivered" DSN; for a next hop
// without DSN support a "relayed" one (RFC 3461 §6.2.2); both land in the sender's Maildir.
func TestSuccessNotices(t *testing.T) {
	dir := t.TempDir()
	// A next hop without the DSN extension.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := gosmtp.NewServer(gosmtp.BackendFunc(func(c *gosmtp.Conn) (gosmtp.Session, error) { return discardSession{}, nil }))
	srv.Domain = "mx.far.test"
	go srv.Serve(ln)
	defer srv.Close()
	a := startTOML(t, `
hostname = "mx.example.test"
data_dir = "`+dir+`"
[smtp]
listen = ["127.0.0.1:0"]
[local]
domains = ["example.test"]
mailboxes = ["alice@example.test", "bob@example.test"]
[local.aliases]
"fwd@example.test" = ["carol@far.test"]
[outbound.transports]
"far.test" = "[127.0.0.1]:`+strconv.Itoa(ln.Addr().(*net.TCPAddr).Port)+`"
`)
	sendWithParams(t, a.Addrs()[0].String(), []string{"MAIL FROM:<alice@example.test> ENVID=track-1", "RCPT TO:<bob@example.test> NOTIFY=SUCCESS,FAILURE",
		"RCPT TO:<fwd@example.test> NOTIFY=SUCCESS", "DATA"},
		"From: <alice@example.test>\r\nSubject: tell me\r\n\r\nbody\r\n")
	// Maildir stores LF line ends.
	wants := []string{"Final-Recipient: rfc822; bob@example.test\nAction: delivered\nStatus: 2.0.0",
		"Final-Recipient: rfc822; carol@far.test\nAction: relayed\nStatus: 2.0.0\nRemote-MTA: dns; 127.0.0.1",
		"Original-Envelope-Id: track-1", "Subject: Successful Mail Delivery Report", "Content-Type: text/rfc822-headers"}
	box := filepath.Join(dir, "mail", "example.test", "alice", "new")
	var all string
	for end := time.Now().Add(10 * time.Second); time.Now().Before(end); time.Sleep(20 * time.Millisecond) {
		var reports []string
		ents, _ := os.ReadDir(box)
		for _, e := range ents {
			b, _ := os.ReadFile(filepath.Join(box, e.Name()))
			reports = append(reports, string(b))
		}
		all = strings.Join(reports, "\n=====\n")
		if strings.Contains(all, wants[0]) && strings.Contains(all, wants[1]) {
			break
		}
	}
	// The message finishes when its last recipient does; the bounce stage then sends one report.
	for _, want := range wants {
		if strings.Count(all, want) != 1 {
			t.Errorf("want %q once in the reports:\n%s", want, all)
		}
	}
	// bob got the message itself, once.
	if ents, _ := os.ReadDir(filepath.Join(dir, "mail", "example.test", "bob", "new")); len(ents) != 1 {
		t.Errorf("bob has %d messages", len(ents))
	}
}

type discardSession struct{}

func (discardSession) Mail(string, *gosmtp.MailOptions) error { return nil }
func (discardSession) Rcpt(string, *gosmtp.RcptOptions) error { return nil }
func (discardSession) Data(r io.Reader) error                 { _, err := io.Copy(io.Discard, r); return err }
func (discardSession) Reset()                                 {}
func (discardSession) Logout() error                          { return nil }

// TestTransportMapLMTP: one local domain goes to the Maildir, another (by the transport map) to
// an LMTP server of its own, as in `example.org → lmtp:...`.
func TestTransportMapLMTP(t *testing.T) {
	dir := t.TempDir()
	store := &lmtptest.Store{}
	addr := store.Start(t)
	a := startTOML(t, `
hostname = "mx.example.test"
data_dir = "`+dir+`"
[smtp]
listen = ["127.0.0.1:0"]
[local]
domains = ["example.test", "example.org"]
mailboxes = ["alice@example.test", "bob@example.org"]
[outbound.transports]
"example.org" = "lmtp:`+addr+`"
`)
	if err := send(a.Addrs()[0].String(), "x@remote.test", "bob@example.org", "Subject: to lmtp\r\n\r\nx\r\n"); err != nil {
		t.Fatal(err)
	}
	if err := send(a.Addrs()[0].String(), "x@remote.test", "alice@example.test", "Subject: to maildir\r\n\r\nx\r\n"); err != nil {
		t.Fatal(err)
	}
	for end := time.Now().Add(10 * time.Second); time.Now().Before(end) && len(store.Messages()) == 0; time.Sleep(20 * time.Millisecond) {
	}
	msgs := store.Messages()
	if len(msgs) != 1 || msgs[0].To != "bob@example.org" || !strings.Contains(msgs[0].Body, "Subject: to lmtp") {
		t.Fatalf("LMTP store got %+v", msgs)
	}
	box := filepath.Join(dir, "mail", "example.test", "alice", "new")
	for end := time.Now().Add(10 * time.Second); time.Now().Before(end); time.Sleep(20 * time.Millisecond) {
		if ents, _ := os.ReadDir(box); len(ents) == 1 {
			return
		}
	}
	t.Fatal("alice's message did not reach the Maildir")
}

// TestAdminAPIWired: the server starts the admin API with the token in data_dir, on the socket
// and on the configured loopback port, and removes the socket on shutdown.
func TestAdminAPIWired(t *testing.T) {
	dir, err := os.MkdirTemp("", "pa") // short: the socket path must fit a unix address
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(dir)
	cfg, err := config.Parse("test.toml", []byte(`
data_dir = "`+dir+`"
[smtp]
listen = ["127.0.0.1:0"]
[admin]
listen = "127.0.0.1:0"
`))
	if err != nil {
		t.Fatal(err)
	}
	a, err := Start(cfg, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	tok, err := os.ReadFile(filepath.Join(dir, "admin.token"))
	if err != nil || a.AdminAddr() == nil {
		t.Fatalf("token %v, admin addr %v", err, a.AdminAddr())
	}
	req, _ := http.NewRequest("GET", "http://"+a.AdminAddr().String()+"/v1/ping", nil)
	req.Header.Set("Authorization", "Bearer "+strings.TrimSpace(string(tok)))
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("ping: %d", resp.StatusCode)
	}
	if _, err := os.Stat(filepath.Join(dir, "admin.sock")); err != nil {
		t.Fatal(err)
	}
	a.Shutdown(context.Background())
	if _, err := os.Stat(filepath.Join(dir, "admin.sock")); !os.IsNotExist(err) {
		t.Fatalf("socket after shutdown: %v", err)
	}
}

// TestDSNSigned: with DKIM keys for our domain, the DSNs we send are signed in alignment with
// their From (MAILER-DAEMON@hostname), so a bounce to a remote sender passes DMARC.
func TestDSNSigned(t *testing.T) {
	dir := t.TempDir()
	key, err := mailauth.GenerateDKIMKey("ed25519")
	if err != nil {
		t.Fatal(err)
	}
	if err := mailauth.WriteDKIMKey(mailauth.DKIMKeyPath(filepath.Join(dir, "dkim"), "example.test", "s1"), key); err != nil {
		t.Fatal(err)
	}
	record, _ := mailauth.DKIMRecord(key)
	a := startTOML(t, `
hostname = "mx.example.test"
data_dir = "`+dir+`"
[smtp]
listen = ["127.0.0.1:0"]
[local]
domains = ["example.test"]
mailboxes = ["alice@example.test", "bob@example.test"]
[dkim.domains."example.test"]
selectors = ["s1"]
`)
	sendWithParams(t, a.Addrs()[0].String(), []string{"MAIL FROM:<alice@example.test>", "RCPT TO:<bob@example.test> NOTIFY=SUCCESS", "DATA"},
		"From: <alice@example.test>\r\nSubject: tell me\r\n\r\nbody\r\n")
	box := filepath.Join(dir, "mail", "example.test", "alice", "new")
	var dsn []byte
	for end := time.Now().Add(10 * time.Second); time.Now().Before(end) && dsn == nil; time.Sleep(20 * time.Millisecond) {
		if ents, _ := os.ReadDir(box); len(ents) == 1 {
			dsn, _ = os.ReadFile(filepath.Join(box, ents[0].Name()))
		}
	}
	if dsn == nil {
		t.Fatal("no DSN reached the sender")
	}
	// Maildir stores LF; verify the CRLF form a receiver would see.
	msg := strings.ReplaceAll(string(dsn), "\n", "\r\n")
	vs, err := dkim.VerifyWithOptions(strings.NewReader(msg), &dkim.VerifyOptions{LookupTXT: func(name string) ([]string, error) {
		if name == "s1._domainkey.example.test" {
			return []string{record}, nil
		}
		return nil, fmt.Errorf("no record for %s", name)
	}})
	if err != nil || len(vs) != 1 || vs[0].Err != nil || vs[0].Domain != "example.test" {
		t.Fatalf("DSN signature: %v %+v\n%s", err, vs, dsn)
	}
}

// startTOML starts a server from a configuration text and stops it when the test ends.
func startTOML(t *testing.T, toml string) *App {
	t.Helper()
	cfg, err := config.Parse("test.toml", []byte(toml))
	if err != nil {
		t.Fatal(err)
	}
	a, err := Start(cfg, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { a.Shutdown(context.Background()) })
	return a
}

// sendWithParams sends one message with MAIL, RCPT and DATA command lines as given (net/smtp
// cannot send DSN parameters); each must get a 2xx or 3xx, the end of data a 250.
func sendWithParams(t *testing.T, addr string, cmds []string, msg string) {
	t.Helper()
	c, err := smtp.Dial(addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.Hello("client.test")
	for _, cmd := range cmds {
		id, err := c.Text.Cmd("%s", cmd)
		if err != nil {
			t.Fatal(err)
		}
		c.Text.StartResponse(id)
		_, _, err = c.Text.ReadResponse(0)
		c.Text.EndResponse(id)
		if err != nil {
			t.Fatalf("%s: %v", cmd, err)
		}
	}
	w := c.Text.DotWriter()
	io.WriteString(w, msg)
	w.Close()
	if _, _, err := c.Text.ReadResponse(250); err != nil {
		t.Fatal(err)
	}
}
