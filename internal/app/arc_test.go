package app

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/base64"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-msgauth/dkim"

	"github.com/postamt/postamt/internal/config"
	"github.com/postamt/postamt/internal/dns/dnstest"
	"github.com/postamt/postamt/internal/mailauth"
)

// TestARCEndToEnd runs a live server with [checks.arc] trusted_sealers: a message from a
// p=reject domain whose DKIM signature a mailing list broke (it added a footer) and which the
// list sealed is delivered when the list is trusted, with arc=pass and the DMARC failure in
// Authentication-Results and the override in the log; the same message sealed by a list that
// is not trusted is refused with the DMARC reason.
func TestARCEndToEnd(t *testing.T) {
	_, authorKey, _ := ed25519.GenerateKey(rand.Reader)
	_, listKey, _ := ed25519.GenerateKey(rand.Reader)
	pub := func(k ed25519.PrivateKey) string {
		return "v=DKIM1; k=ed25519; p=" + base64.StdEncoding.EncodeToString(k.Public().(ed25519.PublicKey))
	}
	z := &dnstest.Zone{TXT: map[string][]string{
		"_dmarc.sender.test":          {"v=DMARC1; p=reject"},
		"sender.test":                 {"v=spf1 ip4:192.0.2.0/24 -all"},
		"sel._domainkey.sender.test":  {pub(authorKey)},
		"arc._domainkey.lists.test":   {pub(listKey)},
		"arc._domainkey.strange.test": {pub(listKey)},
		"lists.test":                  {"v=spf1 ip4:127.0.0.0/8 -all"},
	}}
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
[checks.arc]
trusted_sealers = ["lists.test"]
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

	plain := "From: Sender <s@sender.test>\r\nTo: <list@lists.test>\r\nSubject: news\r\nDate: Sun, 29 Nov 2026 10:00:00 +0000\r\nMessage-ID: <arc@sender.test>\r\n\r\nHello list.\r\n"
	var signed bytes.Buffer
	if err := dkim.Sign(&signed, strings.NewReader(plain), &dkim.SignOptions{Domain: "sender.test", Selector: "sel", Signer: authorKey}); err != nil {
		t.Fatal(err)
	}
	footered := strings.Replace(signed.String(), "Hello list.\r\n", "Hello list.\r\n-- \r\nTo unsubscribe, write to list-leave@lists.test\r\n", 1)
	sealed := func(domain string) string {
		s := &mailauth.ARCSealer{Domain: domain, Selector: "arc", Signer: listKey}
		h, err := s.Seal([]byte(footered), "mx."+domain, "dkim=pass header.d=sender.test; dmarc=pass header.from=sender.test", "none")
		if err != nil {
			t.Fatal(err)
		}
		return h + footered
	}

	c := dialFrom(t, "127.0.0.1", addr)
	c.expect("220 ")
	c.cmd("EHLO mail.lists.test", "250")
	c.cmd("MAIL FROM:<list-bounces@lists.test>", "250")
	c.cmd("RCPT TO:<alice@example.test>", "250")
	c.cmd("DATA", "354")
	c.c.Write([]byte(sealed("lists.test") + ".\r\n"))
	c.expect("250 2.0.0")

	c.cmd("MAIL FROM:<list-bounces@lists.test>", "250")
	c.cmd("RCPT TO:<alice@example.test>", "250")
	c.cmd("DATA", "354")
	c.c.Write([]byte(sealed("strange.test") + ".\r\n"))
	c.expect("550 5.7.26 DMARC policy of sender.test is reject: SPF pass for lists.test is not aligned with sender.test and no valid DKIM signature")
	c.cmd("QUIT", "221")

	var files []string
	for end := time.Now().Add(10 * time.Second); len(files) == 0 && time.Now().Before(end); time.Sleep(10 * time.Millisecond) {
		files, _ = filepath.Glob(filepath.Join(dir, "mail", "example.test", "alice", "new", "*"))
	}
	if len(files) != 1 {
		t.Fatalf("maildir: %v", files)
	}
	b, _ := os.ReadFile(files[0])
	body := strings.ReplaceAll(string(b), ";\r\n\t", "; ")
	for _, want := range []string{"dkim=fail header.d=sender.test", "arc=pass smtp.remote-ip=127.0.0.1",
		`dmarc=fail reason="arc override by d=lists.test" header.from=sender.test`, "ARC-Seal: i=1;"} {
		if !strings.Contains(body, want) {
			t.Errorf("delivered message lacks %q:\n%s", want, b)
		}
	}
	log := logs.String()
	for _, want := range []string{`checks="fcrdns=pass helo=ok spf=pass dkim=fail arc=pass dmarc=fail (arc override by d=lists.test)"`, `checks="fcrdns=pass helo=ok spf=pass dkim=fail arc=pass dmarc=fail"`,
		`msg="arc chain"`, `result=pass sets=1 sealers=lists.test oldest_pass=0 trusted=true`, `sealers=strange.test oldest_pass=0 trusted=false`} {
		if !strings.Contains(log, want) {
			t.Errorf("log lacks %q", want)
		}
	}
}
