package app

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/base64"
	"log/slog"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-msgauth/dkim"

	"github.com/postamt/postamt/internal/config"
	"github.com/postamt/postamt/internal/dns/dnstest"
)

// BenchmarkChecks measures what the built-in checks add to the end-of-DATA → 250 time of a
// 10 KB message (issue 6: at most 2 ms at the median), with the checks off and on in the same
// run: SPF, DKIM (RSA-2048), DMARC against dnstest.Server on 127.0.0.1, a DNS block list, and
// greylisting (the client network already allowed, so each RCPT is a database lookup). Each
// message uses a new connection, so the connect-stage checks run every time; their cost is in
// session-ms, not in the end-of-DATA figure. It reports medians.
func BenchmarkChecks(b *testing.B) {
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		b.Fatal(err)
	}
	der, _ := x509.MarshalPKIXPublicKey(&key.PublicKey)
	z := &dnstest.Zone{
		TXT: map[string][]string{
			"sender.test":                {"v=spf1 ip4:127.0.0.1 -all"},
			"_dmarc.sender.test":         {"v=DMARC1; p=reject"},
			"sel._domainkey.sender.test": {"v=DKIM1; k=rsa; p=" + base64.StdEncoding.EncodeToString(der)},
		},
		A: map[string][]netip.Addr{"2.0.0.127.bl.test": {netip.MustParseAddr("127.0.0.2")}},
	}
	dnsAddr := dnstest.Server(b, z)
	var sb strings.Builder
	sb.WriteString("From: Sender <s@sender.test>\r\nTo: <alice@example.test>\r\nSubject: bench\r\nDate: Sun, 29 Nov 2026 10:00:00 +0000\r\nMessage-ID: <b@sender.test>\r\n\r\n")
	for sb.Len() < 10<<10 {
		sb.WriteString("The quick brown fox jumps over the lazy dog, again and again and again.\r\n")
	}
	var signed bytes.Buffer
	if err := dkim.Sign(&signed, strings.NewReader(sb.String()), &dkim.SignOptions{Domain: "sender.test", Selector: "sel", Signer: key}); err != nil {
		b.Fatal(err)
	}
	msg := signed.String()
	for _, mode := range []string{"off", "on"} {
		b.Run(mode, func(b *testing.B) {
			checks := `
[checks.allowlist]
enabled = false
[checks.ratelimit]
enabled = false
[checks.fcrdns]
enabled = false
[checks.helo]
enabled = false
[checks.spf]
enabled = false
[checks.dkim]
enabled = false
[checks.dmarc]
enabled = false
`
			if mode == "on" {
				checks = `
[checks.allowlist]
trusted_networks = []
[checks.ratelimit]
enabled = false
[checks.dnsbl]
enabled = true
lists = [{ zone = "bl.test" }]
[checks.greylist]
enabled = true
delay = "1ms"
`
			}
			dir := b.TempDir()
			cfg, err := config.Parse("bench.toml", []byte(`
hostname = "mx.example.test"
data_dir = "`+dir+`"
[smtp]
listen = ["127.0.0.1:0"]
[local]
domains = ["example.test"]
mailboxes = ["alice@example.test"]
[outbound]
dns_servers = ["`+dnsAddr+`"]
`+checks))
			if err != nil {
				b.Fatal(err)
			}
			a, err := Start(cfg, slog.New(slog.DiscardHandler))
			if err != nil {
				b.Fatal(err)
			}
			defer a.Shutdown(context.Background())
			addr := a.Addrs()[0].String()
			send := func(measure bool) (time.Duration, time.Duration) {
				start := time.Now()
				c := dialFrom(b, "127.0.0.1", addr)
				defer c.c.Close()
				c.expect("220 ")
				c.cmd("EHLO client.sender.test", "250")
				c.cmd("MAIL FROM:<s@sender.test>", "250")
				if r := c.cmd("RCPT TO:<alice@example.test>", ""); !strings.HasPrefix(r, "250") {
					if measure {
						b.Fatalf("RCPT: %s", r)
					}
					return 0, 0
				}
				c.cmd("DATA", "354")
				c.c.Write([]byte(msg))
				eod := time.Now()
				c.c.Write([]byte(".\r\n"))
				if r := c.expect(""); !strings.HasPrefix(r, "250") {
					b.Fatalf("end of data: %s", r)
				}
				took := time.Since(eod)
				c.cmd("QUIT", "221")
				return took, time.Since(start)
			}
			// Warm up; with greylisting on, the first attempt is deferred and the retry
			// allows the network.
			send(false)
			time.Sleep(5 * time.Millisecond)
			send(false)
			var eods, sessions []time.Duration
			b.ResetTimer()
			for b.Loop() {
				e, s := send(true)
				eods, sessions = append(eods, e), append(sessions, s)
			}
			b.StopTimer()
			slices.Sort(eods)
			slices.Sort(sessions)
			b.ReportMetric(float64(eods[len(eods)/2].Microseconds())/1000, "eod-ms")
			b.ReportMetric(float64(sessions[len(sessions)/2].Microseconds())/1000, "session-ms")
		})
	}
}
