package app

import (
	"context"
	"crypto/tls"
	"errors"
	"log/slog"
	"net/smtp"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-msgauth/dkim"

	"github.com/postamt/postamt/internal/config"
	"github.com/postamt/postamt/internal/mailauth"
	"github.com/postamt/postamt/internal/users"
)

// TestSubmissionSignsAndDelivers runs the submission wiring in-process: bob authenticates on
// the STARTTLS and the implicit-TLS listener, sends to a local mailbox, and the delivered
// message carries Date, Message-ID, a Received header without his address and a DKIM signature
// that verifies; a foreign From: is refused.
func TestSubmissionSignsAndDelivers(t *testing.T) {
	dir := t.TempDir()
	key, err := mailauth.GenerateDKIMKey("ed25519")
	if err != nil {
		t.Fatal(err)
	}
	if err := mailauth.WriteDKIMKey(mailauth.DKIMKeyPath(filepath.Join(dir, "dkim"), "example.test", "ed1"), key); err != nil {
		t.Fatal(err)
	}
	store, err := users.Open(filepath.Join(dir, "users.db"))
	if err != nil {
		t.Fatal(err)
	}
	if err := store.Add(context.Background(), "bob@example.test", "bob's password", nil); err != nil {
		t.Fatal(err)
	}
	store.Close()
	cfg, err := config.Parse("test.toml", []byte(`
hostname = "mx.example.test"
data_dir = "`+dir+`"
[smtp]
listen = ["127.0.0.1:0"]
[local]
domains = ["example.test"]
mailboxes = ["alice@example.test", "bob@example.test"]
[submission]
listen = ["127.0.0.1:0"]
listen_tls = ["127.0.0.1:0"]
[dkim.domains."example.test"]
selectors = ["ed1"]
`))
	if err != nil {
		t.Fatal(err)
	}
	a, err := Start(cfg, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	defer a.Shutdown(context.Background())
	sub := a.SubmissionAddrs()
	if len(sub) != 2 {
		t.Fatalf("submission addrs %v", sub)
	}
	msg := "From: Bob <bob@example.test>\r\nTo: alice@example.test\r\nSubject: signed\r\n\r\nHello, Alice.\r\n"
	dialers := map[string]func() (*smtp.Client, error){
		"starttls": func() (*smtp.Client, error) {
			c, err := smtp.Dial(sub[0].String())
			if err != nil {
				return nil, err
			}
			return c, c.StartTLS(&tls.Config{InsecureSkipVerify: true})
		},
		"implicit": func() (*smtp.Client, error) {
			conn, err := tls.Dial("tcp", sub[1].String(), &tls.Config{InsecureSkipVerify: true})
			if err != nil {
				return nil, err
			}
			return smtp.NewClient(conn, "127.0.0.1")
		},
	}
	for name, dial := range dialers {
		c, err := dial()
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if err := c.Auth(smtp.PlainAuth("", "bob@example.test", "bob's password", "127.0.0.1")); err != nil {
			t.Fatalf("%s: auth: %v", name, err)
		}
		if err := sendOn(c, "bob@example.test", "alice@example.test", msg); err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		// A foreign From: is refused at the end of data.
		err = sendOn(c, "bob@example.test", "alice@example.test", strings.Replace(msg, "bob@", "ceo@", 1))
		if err == nil || !strings.Contains(err.Error(), "553") || !strings.Contains(err.Error(), "5.7.1 Address <ceo@example.test> in From: is not owned") {
			t.Errorf("%s: foreign From: %v", name, err)
		}
		c.Quit()
	}
	var files []string
	for end := time.Now().Add(10 * time.Second); len(files) < 2 && time.Now().Before(end); time.Sleep(10 * time.Millisecond) {
		files, _ = filepath.Glob(filepath.Join(dir, "mail", "example.test", "alice", "new", "*"))
	}
	if len(files) != 2 {
		t.Fatalf("maildir: %v", files)
	}
	rec, _ := mailauth.DKIMRecord(key)
	for _, f := range files {
		b, _ := os.ReadFile(f)
		m := strings.ReplaceAll(string(b), "\n", "\r\n")
		for _, want := range []string{"\r\nDate: ", "\r\nMessage-ID: <", "Received: by mx.example.test (Postamt) with UTF8SMTPSA id ", "DKIM-Signature: "} {
			if !strings.Contains(m, want) {
				t.Errorf("delivered message lacks %q:\n%s", want, m)
			}
		}
		if strings.Contains(m, "127.0.0.1") {
			t.Errorf("client address leaked:\n%s", m)
		}
		vs, err := dkim.VerifyWithOptions(strings.NewReader(m), &dkim.VerifyOptions{LookupTXT: func(name string) ([]string, error) {
			if name == "ed1._domainkey.example.test" {
				return []string{rec}, nil
			}
			return nil, errors.New("no record for " + name)
		}})
		if err != nil || len(vs) != 1 || vs[0].Err != nil || vs[0].Domain != "example.test" {
			t.Errorf("DKIM verification: %v %+v", err, vs)
		}
	}
}

// TestSubmissionMissingKey: a configured selector without its key stops the start with a hint.
func TestSubmissionMissingKey(t *testing.T) {
	dir := t.TempDir()
	cfg, err := config.Parse("test.toml", []byte(`
data_dir = "`+dir+`"
[smtp]
listen = ["127.0.0.1:0"]
[submission]
listen = ["127.0.0.1:0"]
[dkim.domains."example.test"]
selectors = ["s1"]
`))
	if err != nil {
		t.Fatal(err)
	}
	_, err = Start(cfg, slog.New(slog.DiscardHandler))
	if err == nil || !strings.Contains(err.Error(), "postamt dkim keygen example.test --selector s1") {
		t.Fatalf("Start: %v", err)
	}
}

func sendOn(c *smtp.Client, from, to, msg string) error {
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
	if _, err := w.Write([]byte(msg)); err != nil {
		return err
	}
	return w.Close()
}

// TestSubmissionLimits: the second message in an hour over max_messages_per_hour = 1 gets
// 451 4.7.1 at MAIL, and a recipient over max_recipients_per_message = 2 at RCPT.
func TestSubmissionLimits(t *testing.T) {
	dir := t.TempDir()
	store, err := users.Open(filepath.Join(dir, "users.db"))
	if err != nil {
		t.Fatal(err)
	}
	store.Add(context.Background(), "bob@example.test", "bob's password", nil)
	store.Close()
	cfg, err := config.Parse("test.toml", []byte(`
hostname = "mx.example.test"
data_dir = "`+dir+`"
[smtp]
listen = ["127.0.0.1:0"]
[local]
domains = ["example.test"]
mailboxes = ["alice@example.test", "bob@example.test", "carol@example.test", "dave@example.test"]
[submission]
listen = ["127.0.0.1:0"]
max_messages_per_hour = 1
max_recipients_per_message = 2
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
	c, err := smtp.Dial(a.SubmissionAddrs()[0].String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := c.StartTLS(&tls.Config{InsecureSkipVerify: true}); err != nil {
		t.Fatal(err)
	}
	if err := c.Auth(smtp.PlainAuth("", "bob@example.test", "bob's password", "127.0.0.1")); err != nil {
		t.Fatal(err)
	}
	if err := c.Mail("bob@example.test"); err != nil {
		t.Fatal(err)
	}
	for _, r := range []string{"alice@example.test", "carol@example.test"} {
		if err := c.Rcpt(r); err != nil {
			t.Fatal(err)
		}
	}
	if err := c.Rcpt("dave@example.test"); err == nil || !strings.Contains(err.Error(), "451") || !strings.Contains(err.Error(), "4.7.1 Recipient limit reached: 2 recipients per message") {
		t.Errorf("third recipient: %v", err)
	}
	w, _ := c.Data()
	w.Write([]byte("From: bob@example.test\r\nSubject: one\r\n\r\nx\r\n"))
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	if err := c.Mail("bob@example.test"); err == nil || !strings.Contains(err.Error(), "451") || !strings.Contains(err.Error(), "4.7.1 Sending limit reached: 1 messages per hour for user bob@example.test") {
		t.Errorf("second message: %v", err)
	}
	body := get(t, "http://"+a.metrics.Addr().String()+"/metrics")
	for _, want := range []string{`postamt_submission_auth_total{result="ok"} 1`, `postamt_submission_auth_total{result="failed"} 0`,
		"postamt_submission_messages_accepted_total 1", "postamt_submission_connections_total 1", "postamt_smtp_connections_total 0"} {
		if !strings.Contains(body, want) {
			t.Errorf("/metrics lacks %q", want)
		}
	}
}
