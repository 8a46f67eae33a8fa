//go:build interop

package interop

import (
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"
)

// startPostamtWithDovecot starts Dovecot with the users dovecotUsers and a
// Postamt whose local transport is LMTP to that Dovecot, serving
// postamtMailboxes.
func startPostamtWithDovecot(t *testing.T, dovecotUsers, postamtMailboxes []string) (*postamtServer, *dovecotInstance) {
	t.Helper()
	requireRoot(t)
	requireTool(t, "swaks")
	dc := startDovecot(t, dovecotUsers)
	p := startPostamt(t, postamtConfig{
		Mailboxes:   postamtMailboxes,
		Transport:   "lmtp",
		LMTPAddress: dc.Addr,
	})
	return p, dc
}

// TestDovecotLMTPDelivery: with transport = "lmtp", Postamt hands a message
// to a real Dovecot LMTP server, which stores it in the user's Maildir.
// Dovecot (the delivery agent) adds Return-Path and Delivered-To; Postamt's
// Received header is there, and the trace headers are not doubled.
func TestDovecotLMTPDelivery(t *testing.T) {
	p, dc := startPostamtWithDovecot(t,
		[]string{senderAddr, "alice@example.test"},
		[]string{"alice@example.test"})

	res := swaks(t, p.Host, p.Port, "--from", senderAddr, "--to", "alice@example.test",
		"--header", "Subject: to dovecot", "--body", swaksBody)
	if res.ExitCode != 0 {
		t.Fatalf("swaks exit status %d, want 0", res.ExitCode)
	}
	reply := swaksDataReply(res.Output)
	qid := queueIDFrom(reply)
	if !strings.HasPrefix(reply, "250 2.0.0") || qid == "" {
		t.Fatalf("reply to end of DATA = %q, want 250 2.0.0 with a queue ID", reply)
	}

	files := waitForFiles(t, dc.MaildirNew("alice@example.test"), 1)
	m := readMessage(t, files[0])
	assertDeliveryHeaders(t, m, senderAddr, "alice@example.test", "")
	for _, h := range []string{"Return-Path", "Delivered-To"} {
		if n := len(m.Header[h]); n != 1 {
			t.Errorf("%d %s headers, want exactly 1:\n%s", n, h, m.Raw)
		}
	}
	found := false
	for _, r := range m.Header["Received"] {
		if strings.Contains(r, "by "+p.Hostname) && strings.Contains(r, qid) {
			found = true
		}
	}
	if !found {
		t.Errorf("no Received header by %s with id %s: %q", p.Hostname, qid, m.Header["Received"])
	}
	if got := strings.TrimRight(m.Body, "\n"); got != swaksBody {
		t.Errorf("body = %q, want %q", got, swaksBody)
	}
	p.waitForLog(t, regexp.MustCompile(`msg=delivery `), regexp.MustCompile(`\bid=`+regexp.QuoteMeta(qid)+`\b`),
		regexp.MustCompile(`\bto=alice@example\.test\b`), regexp.MustCompile(`\btransport=lmtp\b`),
		regexp.MustCompile(`\bstatus=sent\b`))
	if !strings.Contains(dc.Logs(), "saved mail to INBOX") {
		t.Errorf("dovecot log does not show the save")
	}
}

// TestDovecotRejectsRecipient: ghost@example.test is a Postamt mailbox but
// not a Dovecot user. Postamt accepts the message for alice and ghost; Dovecot
// refuses ghost at LMTP RCPT with 550 5.1.1. alice gets the message, ghost
// does not, and Postamt logs a permanent failure for ghost with Dovecot's
// reply (and does not retry it). The sender, a mailbox on both sides, gets a DSN for ghost in its
// Dovecot mailbox.
func TestDovecotRejectsRecipient(t *testing.T) {
	p, dc := startPostamtWithDovecot(t,
		[]string{senderAddr, "alice@example.test"},
		[]string{"alice@example.test", "ghost@example.test", senderAddr})

	res := swaks(t, p.Host, p.Port, "--from", senderAddr, "--to", "alice@example.test,ghost@example.test",
		"--header", "Subject: half rejected", "--body", "only alice can have this")
	if res.ExitCode != 0 {
		t.Fatalf("swaks exit status %d, want 0 (both recipients are Postamt mailboxes)", res.ExitCode)
	}
	reply := swaksDataReply(res.Output)
	qid := queueIDFrom(reply)
	if !strings.HasPrefix(reply, "250 2.0.0") || qid == "" {
		t.Fatalf("reply to end of DATA = %q, want 250 2.0.0 with a queue ID", reply)
	}

	findMessage(t, dc.MaildirNew("alice@example.test"), "only alice can have this")

	idRe := regexp.MustCompile(`\bid=` + regexp.QuoteMeta(qid) + `\b`)
	ghostRe := regexp.MustCompile(`\bto=ghost@example\.test\b`)
	line := p.waitForLog(t, regexp.MustCompile(`msg=delivery `), idRe, ghostRe)
	if !regexp.MustCompile(`\bstatus=(bounced|failed)\b`).MatchString(line) {
		t.Errorf("delivery to ghost not logged as a permanent failure: %s", line)
	}
	if !strings.Contains(line, "550") || !strings.Contains(line, "5.1.1") || !strings.Contains(line, "doesn't exist") {
		t.Errorf("log line for ghost lacks Dovecot's reply (550 5.1.1 ... User doesn't exist): %s", line)
	}
	if _, err := os.Stat(filepath.Join(dc.VMail, "ghost@example.test")); err == nil {
		t.Errorf("dovecot created a mailbox for ghost")
	}
	// A permanent failure is final: no retry, no "deferred" line for ghost.
	time.Sleep(500 * time.Millisecond)
	for _, l := range strings.Split(p.Logs(), "\n") {
		if idRe.MatchString(l) && ghostRe.MatchString(l) && strings.Contains(l, "status=deferred") {
			t.Errorf("ghost was deferred (to be retried) instead of failed: %s", l)
		}
	}
	if !strings.Contains(dc.Logs(), "saved mail to INBOX") {
		t.Errorf("dovecot log does not show the save for alice")
	}
	dsn := findMessage(t, dc.MaildirNew(senderAddr), "Final-Recipient: rfc822; ghost@example.test")
	for _, want := range []string{"Action: failed", "Status: 5.1.1", "X-Postamt-Queue-ID: " + qid, "Subject: half rejected"} {
		if !strings.Contains(dsn.Body, want) {
			t.Errorf("DSN lacks %q:\n%s", want, dsn.Body)
		}
	}
	if got := dsn.Header.Get("Content-Type"); !strings.HasPrefix(got, "multipart/report; report-type=delivery-status") {
		t.Errorf("DSN Content-Type %q", got)
	}
	if rp := dsn.Header.Get("Return-Path"); rp != "<>" {
		t.Errorf("DSN Return-Path %q, want <> (null sender)", rp)
	}
}
