package main

import (
	"bytes"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/postamt/postamt/internal/dns/dnstest"
	"github.com/postamt/postamt/internal/users"
)

func runIn(t *testing.T, stdin string, args ...string) (string, error) {
	t.Helper()
	cmd := rootCmd()
	var out bytes.Buffer
	cmd.SetOut(&out)
	cmd.SetErr(&out)
	cmd.SetIn(strings.NewReader(stdin))
	cmd.SetArgs(args)
	err := cmd.Execute()
	return out.String(), err
}

func TestUserCommands(t *testing.T) {
	dir := t.TempDir()
	cfg := filepath.Join(dir, "c.toml")
	os.WriteFile(cfg, []byte("data_dir = \""+dir+"\"\n"), 0o644)
	out, err := runIn(t, "first password\n", "user", "add", "-c", cfg, "Alice@Example.test", "--password-stdin", "--sender", "@shop.example.test")
	if err != nil || out != "user alice@example.test added\n" {
		t.Fatalf("add: %v %q", err, out)
	}
	out, err = runIn(t, "", "user", "add", "-c", cfg, "app1")
	m := regexp.MustCompile(`(?m)^password: (\S{20})$`).FindStringSubmatch(out)
	if err != nil || m == nil {
		t.Fatalf("add with a generated password: %v %q", err, out)
	}
	if _, err := runIn(t, "x\n", "user", "add", "-c", cfg, "alice@example.test", "--password-stdin"); err == nil {
		t.Error("short password or duplicate accepted")
	}
	out, err = runIn(t, "", "user", "list", "-c", cfg)
	if err != nil || !strings.Contains(out, "@shop.example.test alice@example.test") || !strings.Contains(out, "2 user(s)") {
		t.Fatalf("list: %v\n%s", err, out)
	}
	if _, err := runIn(t, "second password\n", "user", "passwd", "-c", cfg, "alice@example.test", "--password-stdin"); err != nil {
		t.Fatal(err)
	}
	if _, err := runIn(t, "", "user", "sender", "-c", cfg, "app1", "--add", "noreply@example.test"); err != nil {
		t.Fatal(err)
	}
	s, err := users.Open(filepath.Join(dir, "users.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	ctx := t.Context()
	if _, err := s.Authenticate(ctx, "alice@example.test", "second password"); err != nil {
		t.Errorf("new password: %v", err)
	}
	if _, err := s.Authenticate(ctx, "app1", m[1]); err != nil {
		t.Errorf("generated password: %v", err)
	}
	out, err = runIn(t, "", "user", "token", "add", "-c", cfg, "app1", "server1")
	tm := regexp.MustCompile(`^token server1 for app1: (pat_\S+)\n$`).FindStringSubmatch(out)
	if err != nil || tm == nil {
		t.Fatalf("token add: %v %q", err, out)
	}
	if _, err := s.Authenticate(ctx, "app1", tm[1]); err != nil {
		t.Errorf("token: %v", err)
	}
	if out, err := runIn(t, "", "user", "token", "list", "-c", cfg, "app1"); err != nil || !strings.HasPrefix(out, "server1\t") || strings.Contains(out, "pat_") {
		t.Errorf("token list: %v %q", err, out)
	}
	if _, err := runIn(t, "", "user", "token", "del", "-c", cfg, "app1", "server1"); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Authenticate(ctx, "app1", tm[1]); err == nil {
		t.Error("revoked token works")
	}
	if out, err := runIn(t, "", "user", "del", "-c", cfg, "alice@example.test"); err != nil || !strings.Contains(out, "deleted") {
		t.Fatalf("del: %v %s", err, out)
	}
	if _, err := runIn(t, "", "user", "del", "-c", cfg, "alice@example.test"); err == nil {
		t.Error("deleting a missing user succeeded")
	}
	if _, err := s.Authenticate(ctx, "alice@example.test", "second password"); err == nil {
		t.Error("deleted user still authenticates")
	}
}

func TestDKIMKeygenAndCheck(t *testing.T) {
	dir := t.TempDir()
	cfg := filepath.Join(dir, "c.toml")
	// Each phase gets its own DNS server: a Zone must not change while a server reads it.
	serve := func(txt map[string][]string) {
		dnsAddr := dnstest.Server(t, &dnstest.Zone{TXT: txt})
		os.WriteFile(cfg, []byte("data_dir = \""+dir+"\"\n[outbound]\ndns_servers = [\""+dnsAddr+"\"]\n"+
			"[dkim.domains.\"example.test\"]\nselectors = [\"ed1\", \"rsa1\"]\n"), 0o644)
	}
	serve(map[string][]string{})
	records := map[string]string{}
	for _, k := range [][2]string{{"ed1", "ed25519"}, {"rsa1", "rsa"}} {
		out, err := runIn(t, "", "dkim", "keygen", "-c", cfg, "example.test", "--selector", k[0], "--algo", k[1])
		if err != nil {
			t.Fatalf("keygen: %v %s", err, out)
		}
		path := filepath.Join(dir, "dkim", "example.test", k[0]+".key")
		if fi, err := os.Stat(path); err != nil || fi.Mode().Perm() != 0o600 {
			t.Fatalf("key file: %v %v", err, fi)
		}
		line := regexp.MustCompile(`(?m)^` + k[0] + `\._domainkey\.example\.test\. IN TXT \( (.*) \)$`).FindStringSubmatch(out)
		if line == nil {
			t.Fatalf("no zone line in:\n%s", out)
		}
		records[k[0]] = strings.Join(strings.Split(strings.Trim(line[1], `"`), `" "`), "")
		if !strings.Contains(records[k[0]], "k="+k[1]+"; p=") {
			t.Errorf("record %q", records[k[0]])
		}
		// A second keygen for the same selector must not replace the key.
		if _, err := runIn(t, "", "dkim", "keygen", "-c", cfg, "example.test", "--selector", k[0], "--algo", k[1]); err == nil {
			t.Error("keygen overwrote an existing key")
		}
	}
	// Nothing published yet.
	out, err := runIn(t, "", "dkim", "check", "-c", cfg, "example.test")
	if err == nil || !strings.Contains(out, "ed1._domainkey.example.test: FAIL: no TXT record published") {
		t.Fatalf("check before publishing: %v\n%s", err, out)
	}
	serve(map[string][]string{
		"ed1._domainkey.example.test":  {records["ed1"]},
		"rsa1._domainkey.example.test": {records["rsa1"]},
	})
	out, err = runIn(t, "", "dkim", "check", "-c", cfg, "example.test")
	if err != nil || strings.Count(out, ": OK") != 2 {
		t.Fatalf("check after publishing: %v\n%s", err, out)
	}
	// The record of another key is found out.
	serve(map[string][]string{
		"ed1._domainkey.example.test":  {records["ed1"]},
		"rsa1._domainkey.example.test": {records["ed1"]},
	})
	out, err = runIn(t, "", "dkim", "check", "-c", cfg, "example.test")
	if err == nil || !strings.Contains(out, "rsa1._domainkey.example.test: FAIL: k=ed25519 but the key is rsa") {
		t.Fatalf("check with a wrong record: %v\n%s", err, out)
	}
}

func TestDKIMKeygenDefaultSelector(t *testing.T) {
	dir := t.TempDir()
	cfg := filepath.Join(dir, "c.toml")
	os.WriteFile(cfg, []byte("data_dir = \""+dir+"\"\n"), 0o644)
	out, err := runIn(t, "", "dkim", "keygen", "-c", cfg, "Example.TEST.", "--algo", "ed25519")
	if err != nil || !regexp.MustCompile(`(?m)^ed20\d\d\._domainkey\.example\.test\. IN TXT \( "v=DKIM1; k=ed25519; p=`).MatchString(out) {
		t.Fatalf("%v\n%s", err, out)
	}
	if _, err := runIn(t, "", "dkim", "keygen", "-c", cfg, "example.test", "--algo", "dsa"); err == nil {
		t.Error("unknown algorithm accepted")
	}
	for _, bad := range [][2]string{{"../../etc", "s1"}, {"example.test", "../x"}, {"example.test", "a/b"}, {"localhost", "s1"}} {
		if _, err := runIn(t, "", "dkim", "keygen", "-c", cfg, bad[0], "--selector", bad[1]); err == nil {
			t.Errorf("keygen %s --selector %s accepted", bad[0], bad[1])
		}
	}
	if files, _ := filepath.Glob(filepath.Join(dir, "..", "*.key")); len(files) > 0 {
		t.Errorf("key written outside key_dir: %v", files)
	}
}
