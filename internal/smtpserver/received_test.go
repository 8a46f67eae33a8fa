package smtpserver

import (
	"crypto/tls"
	"flag"
	"net/netip"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/postamt/postamt/internal/mail"
	"github.com/postamt/postamt/internal/policy"
	"github.com/postamt/postamt/internal/smtp"
)

var update = flag.Bool("update", false, "rewrite golden files")

// TestReceivedGolden pins the trace header we add (RFC 5321 §4.4) for the protocol variants.
func TestReceivedGolden(t *testing.T) {
	now := time.Date(2026, 11, 29, 8, 35, 47, 0, time.FixedZone("", 3600))
	srv := New(Options{Hostname: "mx.example.test", Now: func() time.Time { return now }})
	one := []mail.Recipient{{Addr: "alice@example.test", Orig: "alice@example.test"}}
	two := append(one, mail.Recipient{Addr: "bob@example.test", Orig: "bob@example.test"})
	tlsState := &tls.ConnectionState{Version: tls.VersionTLS13, CipherSuite: tls.TLS_AES_128_GCM_SHA256}
	cases := map[string]*session{
		"helo":          {helo: "client.example", tx: &txn{rcpts: one, rcptCmds: 1}},
		"esmtp-one":     {helo: "client.example", esmtp: true, tx: &txn{rcpts: one, rcptCmds: 1}},
		"esmtps-two":    {helo: "client.example", esmtp: true, tls: tlsState, tx: &txn{rcpts: two, rcptCmds: 2}},
		"utf8smtps-one": {helo: "[192.0.2.7]", esmtp: true, tls: tlsState, tx: &txn{rcpts: one, rcptCmds: 1, params: smtp.MailParams{SMTPUTF8: true}}},
		// Submission: authenticated (RFC 3848 ESMTPSA), client address and HELO left out.
		"esmtpsa-hidden": {helo: "laptop.home", esmtp: true, tls: tlsState, tx: &txn{rcpts: one, rcptCmds: 1},
			pc: &policy.Conn{AuthUser: "alice@example.test"}},
		"esmtpsa-shown": {helo: "laptop.home", esmtp: true, tls: tlsState, tx: &txn{rcpts: two, rcptCmds: 2},
			pc: &policy.Conn{AuthUser: "alice@example.test"}},
	}
	hidden := New(Options{Hostname: "mx.example.test", Now: func() time.Time { return now }, HideClientIP: true})
	for name, s := range cases {
		t.Run(name, func(t *testing.T) {
			s.srv = srv
			if name == "esmtpsa-hidden" {
				s.srv = hidden
			}
			if s.pc == nil {
				s.pc = &policy.Conn{}
			}
			s.ip = netip.MustParseAddr("192.0.2.7")
			got := s.received("00362PJ6M70L4000")
			file := filepath.Join("testdata", "received-"+name+".golden")
			if *update {
				os.WriteFile(file, []byte(got), 0o644)
				return
			}
			want, err := os.ReadFile(file)
			if err != nil {
				t.Fatalf("%v (run with -update)", err)
			}
			if got != string(want) {
				t.Errorf("got:\n%s\nwant:\n%s", got, want)
			}
		})
	}
}
