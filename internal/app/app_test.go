package app

import (
	"context"
	gosmtp "github.com/emersion/go-smtp"
	"io"
	"log/slog"
	"net/http"
	"net/smtp"
	"os"
	"path/filepath"
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
	cfg, err := config.Parse("test.toml", []byte(`
hostname = "mx.example.test"
data_dir = "`+dir+`"
[smtp]
listen = ["127.0.0.1:0"]
[local]
domains = ["example.test"]
mailboxes = ["alice@example.test"]
[metrics]
listen = "127.0.0.1:0"
`))
	if err != nil {
		t.Fatal(err)
	}
	a, err := Start(cfg, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	defer a.Shutdown(context.Background())
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
	body := get(t, base+"/metrics")
	for _, want := range []string{"postamt_smtp_messages_accepted_total 1", `postamt_delivery_attempts_total{result="sent"} 1`, "postamt_queue_messages 0", "postamt_smtp_commit_seconds_count 1", `postamt_delivery_attempt_seconds_count{transport="maildir"} 1`,
		`postamt_delivery_attempts_by_destination_total{destination="maildir",result="sent"} 1`, "postamt_queue_messages_held 0"} {
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
