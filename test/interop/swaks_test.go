//go:build interop

package interop

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// swaksBody has a line that starts with a dot (dot-stuffed by swaks, so
// Postamt must un-stuff it), an empty line and UTF-8-free plain text.
const swaksBody = "Hello Alice,\n.this line starts with a dot\n\nlast line"

// TestSwaksDeliversToMaildir: a plain SMTP transaction by swaks is accepted
// with a 250 carrying a queue ID and lands in the mailbox's Maildir new/
// with Return-Path, Delivered-To and Received headers and the body intact.
func TestSwaksDeliversToMaildir(t *testing.T) {
	requireTool(t, "swaks")
	p := startPostamt(t, postamtConfig{Mailboxes: []string{"alice@example.test"}})

	res := swaks(t, p.Host, p.Port, "--from", senderAddr, "--to", "alice@example.test",
		"--header", "Subject: swaks interop", "--body", swaksBody)
	if res.ExitCode != 0 {
		t.Fatalf("swaks exit status %d, want 0", res.ExitCode)
	}
	if !strings.Contains(res.Output, "<-  220 ") || !strings.Contains(res.Output, p.Hostname) {
		t.Errorf("greeting does not name the hostname %q", p.Hostname)
	}
	reply := swaksDataReply(res.Output)
	qid := queueIDFrom(reply)
	if !strings.HasPrefix(reply, "250 2.0.0") || qid == "" {
		t.Fatalf("reply to end of DATA = %q, want 250 2.0.0 with a queue ID", reply)
	}

	files := waitForFiles(t, p.MaildirNew("alice@example.test"), 1)
	if len(files) != 1 {
		t.Errorf("got %d files in new/, want 1: %v", len(files), files)
	}
	m := readMessage(t, files[0])
	assertDeliveryHeaders(t, m, senderAddr, "alice@example.test", "by "+p.Hostname)
	if rcv := m.Header.Get("Received"); !strings.Contains(rcv, qid) || !strings.Contains(rcv, "client.test") {
		t.Errorf("Received = %q, want it to name the queue ID %s and the HELO client.test", rcv, qid)
	}
	if got := m.Header.Get("Subject"); got != "swaks interop" {
		t.Errorf("Subject = %q", got)
	}
	if got := strings.TrimRight(m.Body, "\n"); got != swaksBody {
		t.Errorf("body = %q, want %q", got, swaksBody)
	}
	// The file must be complete in new/, nothing left behind in tmp/.
	if left := listFiles(filepath.Join(filepath.Dir(files[0]), "..", "tmp")); len(left) != 0 {
		t.Errorf("files left in tmp/: %v", left)
	}
}

// TestSwaksUnknownUser: a recipient in a local domain that is no mailbox is
// refused at RCPT with 550 5.1.1, and nothing is stored.
func TestSwaksUnknownUser(t *testing.T) {
	requireTool(t, "swaks")
	p := startPostamt(t, postamtConfig{Mailboxes: []string{"alice@example.test"}})

	res := swaks(t, p.Host, p.Port, "--from", senderAddr, "--to", "nobody@example.test")
	if res.ExitCode != 24 { // swaks: 24 = no RCPT accepted
		t.Errorf("swaks exit status %d, want 24 (RCPT refused)", res.ExitCode)
	}
	if !containsLine(res.Output, "<** 550 5.1.1") {
		t.Errorf("RCPT TO:<nobody@example.test> not refused with 550 5.1.1")
	}
	if _, err := os.Stat(filepath.Join(p.DataDir, "mail", testDomain, "nobody")); err == nil {
		t.Errorf("a Maildir was created for the unknown user")
	}
}

// TestSwaksRelayDenied: a recipient in a domain that is not local is refused
// with 554 5.7.1 (no open relay, also not for 127.0.0.1).
func TestSwaksRelayDenied(t *testing.T) {
	requireTool(t, "swaks")
	p := startPostamt(t, postamtConfig{Mailboxes: []string{"alice@example.test"}})

	res := swaks(t, p.Host, p.Port, "--from", senderAddr, "--to", "someone@remote.test")
	if res.ExitCode != 24 {
		t.Errorf("swaks exit status %d, want 24 (RCPT refused)", res.ExitCode)
	}
	if !containsLine(res.Output, "<** 554 5.7.1") {
		t.Errorf("RCPT TO:<someone@remote.test> not refused with 554 5.7.1")
	}
}

// TestSwaksStartTLS: swaks --tls negotiates STARTTLS against the generated
// self-signed certificate, the transaction after it succeeds and the
// message is delivered; its Received header records ESMTPS (RFC 3848).
func TestSwaksStartTLS(t *testing.T) {
	requireTool(t, "swaks")
	p := startPostamt(t, postamtConfig{Mailboxes: []string{"alice@example.test"}})

	res := swaks(t, p.Host, p.Port, "--tls", "--from", senderAddr, "--to", "alice@example.test",
		"--header", "Subject: swaks over tls", "--body", "sent inside TLS")
	if res.ExitCode != 0 {
		t.Fatalf("swaks --tls exit status %d, want 0", res.ExitCode)
	}
	if !containsLine(res.Output, "<-  220 ") || !strings.Contains(res.Output, "=== TLS started") {
		t.Errorf("no STARTTLS 220 / TLS start in the transcript")
	}
	reply := swaksDataReply(res.Output)
	if !strings.HasPrefix(reply, "250 2.0.0") || queueIDFrom(reply) == "" {
		t.Fatalf("reply to end of DATA = %q, want 250 2.0.0 with a queue ID", reply)
	}
	if !strings.Contains(res.Output, "~> .") {
		t.Errorf("DATA was not sent inside TLS")
	}
	m := findMessage(t, p.MaildirNew("alice@example.test"), "sent inside TLS")
	assertDeliveryHeaders(t, m, senderAddr, "alice@example.test", "by "+p.Hostname)
	if rcv := m.Header.Get("Received"); !strings.Contains(rcv, "with ESMTPS") {
		t.Errorf("Received = %q, want \"with ESMTPS\" for a message received over STARTTLS", rcv)
	}
}

// containsLine reports whether a line of out starts with prefix (after
// leading blanks).
func containsLine(out, prefix string) bool {
	for _, l := range strings.Split(out, "\n") {
		if strings.HasPrefix(strings.TrimLeft(l, " \t"), prefix) {
			return true
		}
	}
	return false
}
