package check_test

import (
	"bytes"
	"context"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/postamt/postamt/internal/app"
	"github.com/postamt/postamt/internal/check"
	"github.com/postamt/postamt/internal/config"
)

func startServer(t *testing.T) string {
	t.Helper()
	cfg, err := config.Parse("t.toml", []byte(`
hostname = "mx.example.test"
data_dir = "`+t.TempDir()+`"
[smtp]
listen = ["127.0.0.1:0"]
[local]
domains = ["example.test"]
mailboxes = ["alice@example.test"]
`))
	if err != nil {
		t.Fatal(err)
	}
	a, err := app.Start(cfg, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { a.Shutdown(context.Background()) })
	return a.Addrs()[0].String()
}

func TestCheckReportsGreetingTLSAndSends(t *testing.T) {
	addr := startServer(t)
	var out bytes.Buffer
	err := check.Run(context.Background(), &out, check.Options{Addr: addr, Helo: "checker.test", To: "alice@example.test", Timeout: 10 * time.Second})
	if err != nil {
		t.Fatalf("%v\n%s", err, out.String())
	}
	for _, want := range []string{
		"Greeting: 220 mx.example.test ESMTP Postamt",
		"  PIPELINING", "  STARTTLS", "  CHUNKING",
		"TLS: TLS 1.3, cipher ",
		`Certificate: subject "mx.example.test"`,
		"verification: FAILED", // self-signed
		"RCPT TO:<alice@example.test> -> 250 2.1.5",
		"end of data -> 250 2.0.0 OK: queued as ",
		"OK: " + addr + " answers SMTP",
	} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("output lacks %q:\n%s", want, out.String())
		}
	}
}

func TestCheckFailsOnRefusal(t *testing.T) {
	addr := startServer(t)
	var out bytes.Buffer
	err := check.Run(context.Background(), &out, check.Options{Addr: addr, To: "nobody@example.test", NoTLS: true, Timeout: 10 * time.Second})
	if err == nil || !strings.Contains(err.Error(), "550 5.1.1") {
		t.Fatalf("want a refusal error, got %v\n%s", err, out.String())
	}
}

func TestCheckUnreachable(t *testing.T) {
	var out bytes.Buffer
	if err := check.Run(context.Background(), &out, check.Options{Addr: "127.0.0.1:1", Timeout: 2 * time.Second}); err == nil {
		t.Fatal("no error for a closed port")
	}
}
