package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
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
