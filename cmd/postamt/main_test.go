package main

import (
	"bytes"
	"context"
	"encoding/json"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/postamt/postamt/internal/app"
	"github.com/postamt/postamt/internal/config"
	"github.com/postamt/postamt/internal/mail"
	"github.com/postamt/postamt/internal/queue"
)

func run(t *testing.T, args ...string) (string, error) {
	t.Helper()
	cmd := rootCmd()
	var out bytes.Buffer
	cmd.SetOut(&out)
	cmd.SetErr(&out)
	cmd.SetArgs(args)
	err := cmd.Execute()
	return out.String(), err
}

func TestConfigCheck(t *testing.T) {
	out, err := run(t, "config", "check", "../../postamt.example.toml")
	if err != nil || !strings.Contains(out, "postamt.example.toml: OK") {
		t.Fatalf("%v %s", err, out)
	}
	bad := filepath.Join(t.TempDir(), "bad.toml")
	os.WriteFile(bad, []byte("[smtp]\nmax_recipients = 0\n"), 0o644)
	out, err = run(t, "config", "check", bad)
	if err == nil || !strings.Contains(out, "bad.toml:2: smtp.max_recipients: must be at least 1") {
		t.Fatalf("%v %s", err, out)
	}
}

func TestQueueListEmptyQueue(t *testing.T) {
	dir := t.TempDir()
	cfg := filepath.Join(dir, "c.toml")
	os.WriteFile(cfg, []byte("data_dir = \""+dir+"\"\n"), 0o644)
	// No queue yet: a clear error, not an empty list that hides a wrong data_dir.
	if _, err := run(t, "queue", "list", "-c", cfg); err == nil {
		t.Fatal("no error for a data_dir without a queue")
	}
}

// startServer runs the whole server in-process on a fresh data directory and queues messages
// that cannot be delivered (their route names no transport), so they wait in the queue deferred.
func startServer(t *testing.T, rcpts ...string) (dir, cfgFile string, a *app.App, ids []string) {
	t.Helper()
	// Short: the admin socket path must fit in a unix socket address.
	dir, err := os.MkdirTemp("", "pa")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	cfgFile = filepath.Join(dir, "c.toml")
	os.WriteFile(cfgFile, []byte("data_dir = \""+dir+"\"\n[smtp]\nlisten = [\"127.0.0.1:0\"]\n"), 0o600)
	cfg, err := config.Load(cfgFile)
	if err != nil {
		t.Fatal(err)
	}
	a, err = app.Start(cfg, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { a.Shutdown(context.Background()) })
	for _, r := range rcpts {
		w, err := a.Queue.Create()
		if err != nil {
			t.Fatal(err)
		}
		w.WriteString("Subject: x\r\n\r\ny\r\n")
		env := &mail.Envelope{From: "sender@example.test", Rcpts: []mail.Recipient{{Addr: r, Orig: r, Route: mail.Route{Transport: "pigeon", NextHop: "x"}}}}
		if err := a.Queue.Accept(context.Background(), env, w); err != nil {
			t.Fatal(err)
		}
		ids = append(ids, env.ID)
	}
	for end := time.Now().Add(10 * time.Second); time.Now().Before(end); time.Sleep(5 * time.Millisecond) {
		es, _, _ := a.Queue.Entries(context.Background(), queue.Filter{}, 0)
		n := 0
		for _, e := range es {
			if e.Attempts > 0 {
				n++
			}
		}
		if n == len(rcpts) {
			return
		}
	}
	t.Fatal("first attempts did not happen")
	return
}

func TestQueueAdminCommands(t *testing.T) {
	dir, cfgFile, _, ids := startServer(t, "a@far.test", "b@far.test")
	out, err := run(t, "queue", "list", "-c", cfgFile)
	if err != nil || !strings.Contains(out, ids[0]) || !strings.Contains(out, ids[1]) || strings.Contains(out, "not running") ||
		!strings.Contains(out, "2 recipient(s)") {
		t.Fatalf("list: %v\n%s", err, out)
	}
	out, err = run(t, "queue", "list", "--data-dir", dir, "--to", "b@far.test", "--json")
	var es []queue.Entry
	if err != nil || json.Unmarshal([]byte(out), &es) != nil || len(es) != 1 || es[0].ID != ids[1] {
		t.Fatalf("list --json: %v\n%s", err, out)
	}
	out, err = run(t, "queue", "show", ids[0], "--data-dir", dir)
	if err != nil || !strings.Contains(out, "a@far.test: pending, 1 attempt(s), route pigeon x") ||
		!strings.Contains(out, `last reply: 451 4.3.5 No "pigeon" transport is configured`) || !strings.Contains(out, "next attempt: ") ||
		!strings.Contains(out, "Held:      no") {
		t.Fatalf("show: %v\n%s", err, out)
	}
	if out, err = run(t, "queue", "hold", ids[0], "--data-dir", dir); err != nil || !strings.Contains(out, ids[0]+": held") {
		t.Fatalf("hold: %v\n%s", err, out)
	}
	out, err = run(t, "queue", "show", ids[0], "--data-dir", dir, "--json")
	var m queue.Message
	if err != nil || json.Unmarshal([]byte(out), &m) != nil || !m.Held || !m.Recipients[0].NextAttempt.IsZero() {
		t.Fatalf("show --json of a held message: %v\n%s", err, out)
	}
	if out, err = run(t, "queue", "retry", ids[0], "--data-dir", dir); err == nil || !strings.Contains(out, "held; release it first") {
		t.Fatalf("retry of a held message: %v\n%s", err, out)
	}
	if out, err = run(t, "queue", "retry", "--data-dir", dir); err == nil || !strings.Contains(out, "one queue ID or --all") {
		t.Fatalf("retry without an ID: %v\n%s", err, out)
	}
	if out, err = run(t, "queue", "retry", "--all", "--json", "--data-dir", dir); err != nil || !strings.Contains(out, `"recipients": 1`) {
		t.Fatalf("retry --all: %v\n%s", err, out)
	}
	if out, err = run(t, "queue", "release", ids[0], "--data-dir", dir); err != nil || !strings.Contains(out, "released") {
		t.Fatalf("release: %v\n%s", err, out)
	}
	if out, err = run(t, "queue", "bounce", ids[0], "--data-dir", dir); err == nil || !strings.Contains(out, "reason") {
		t.Fatalf("bounce without a reason: %v\n%s", err, out)
	}
	if out, err = run(t, "queue", "bounce", ids[0], "--reason", "test over", "--data-dir", dir); err != nil || !strings.Contains(out, "1 recipient(s) failed") {
		t.Fatalf("bounce: %v\n%s", err, out)
	}
	if out, err = run(t, "queue", "delete", ids[1], "-c", cfgFile); err != nil || !strings.Contains(out, ids[1]+": deleted") {
		t.Fatalf("delete: %v\n%s", err, out)
	}
	if out, err = run(t, "queue", "delete", ids[1], "-c", cfgFile); err == nil || !strings.Contains(out, "no such message") {
		t.Fatalf("delete twice: %v\n%s", err, out)
	}
}

func TestQueueCommandsWithoutServer(t *testing.T) {
	dir, _, a, ids := startServer(t, "a@far.test")
	a.Shutdown(context.Background())
	out, err := run(t, "queue", "list", "--data-dir", dir)
	if err != nil || !strings.Contains(out, "the server is not running; read ") || !strings.Contains(out, ids[0]) {
		t.Fatalf("list: %v\n%s", err, out)
	}
	out, err = run(t, "queue", "show", ids[0], "--data-dir", dir)
	if err != nil || !strings.Contains(out, "not running") || !strings.Contains(out, "a@far.test: pending") {
		t.Fatalf("show: %v\n%s", err, out)
	}
	for _, args := range [][]string{{"hold", ids[0]}, {"release", ids[0]}, {"delete", ids[0]}, {"retry", "--all"}, {"bounce", ids[0], "--reason", "x"}} {
		out, err := run(t, append(append([]string{"queue"}, args...), "--data-dir", dir)...)
		if err == nil || !strings.Contains(out, "the server is not running") {
			t.Fatalf("%v: %v\n%s", args, err, out)
		}
	}
}
