//go:build interop

package interop

import (
	"regexp"
	"strconv"
	"strings"
	"testing"
)

// TestPostfixRelaysIntoPostamt: a real Postfix (own temp config, queue and
// data directories) with relayhost = [127.0.0.1]:POSTAMT_PORT and
// smtp_tls_security_level = may relays a message for two local mailboxes
// into Postamt over STARTTLS. Both Maildirs get it, with Postfix's Received
// header below Postamt's, and both logs agree on the hand-over.
func TestPostfixRelaysIntoPostamt(t *testing.T) {
	requireRoot(t)
	requireTool(t, "postfix")
	requireTool(t, "swaks")
	p := startPostamt(t, postamtConfig{Mailboxes: []string{"alice@example.test", "bob@example.test"}})
	pf := startPostfix(t, "relay.postfix.test", "[127.0.0.1]:"+strconv.Itoa(p.Port))

	const body = "Relayed by a real Postfix.\nGrüße, 8-bit body line.\n"
	postfixSubmit(t, pf, senderAddr, "alice@example.test,bob@example.test",
		"--header", "Subject: via postfix",
		"--add-header", "MIME-Version: 1.0",
		"--add-header", "Content-Type: text/plain; charset=utf-8",
		"--add-header", "Content-Transfer-Encoding: 8bit",
		"--body", body)

	for _, rcpt := range []string{"alice@example.test", "bob@example.test"} {
		m := findMessage(t, p.MaildirNew(rcpt), "Relayed by a real Postfix.")
		assertDeliveryHeaders(t, m, senderAddr, rcpt, "by "+p.Hostname)
		rcv := m.Header["Received"]
		if len(rcv) < 2 {
			t.Fatalf("%s: want Postamt's and Postfix's Received headers, got %q", rcpt, rcv)
		}
		if !strings.Contains(rcv[0], "from relay.postfix.test") {
			t.Errorf("%s: Postamt's Received = %q, want it to name the HELO relay.postfix.test", rcpt, rcv[0])
		}
		if !strings.Contains(rcv[0], "with ESMTPS") {
			t.Errorf("%s: Postamt's Received = %q, want \"with ESMTPS\": Postfix used STARTTLS", rcpt, rcv[0])
		}
		if !strings.Contains(rcv[1], "by relay.postfix.test (Postfix)") {
			t.Errorf("%s: second Received = %q, want Postfix's", rcpt, rcv[1])
		}
		if m.Header.Get("Subject") != "via postfix" {
			t.Errorf("%s: Subject = %q", rcpt, m.Header.Get("Subject"))
		}
		if !strings.HasSuffix(m.Body, body) && strings.TrimRight(m.Body, "\n") != strings.TrimRight(body, "\n") {
			t.Errorf("%s: body = %q, want %q", rcpt, m.Body, body)
		}
	}

	// Postfix's side: TLS to Postamt, status=sent with Postamt's queue ID.
	pfLog := pf.Logs()
	if !strings.Contains(pfLog, "TLS connection established to 127.0.0.1[127.0.0.1]:"+strconv.Itoa(p.Port)) {
		t.Errorf("postfix log has no TLS connection to Postamt")
	}
	sent := regexp.MustCompile(`status=sent \((250 2\.0\.0 [^)]*)\)`).FindStringSubmatch(pfLog)
	if sent == nil {
		t.Fatalf("postfix log has no status=sent")
	}
	qid := queueIDFrom(sent[1])
	if qid == "" {
		t.Fatalf("Postamt's reply to Postfix %q has no queue ID", sent[1])
	}
	// Postamt's side: both recipients delivered under that queue ID.
	for _, rcpt := range []string{"alice@example.test", "bob@example.test"} {
		p.waitForLog(t, regexp.MustCompile(`msg=delivery `), regexp.MustCompile(`\bid=`+regexp.QuoteMeta(qid)+`\b`),
			regexp.MustCompile(`\bto=`+regexp.QuoteMeta(rcpt)+`\b`), regexp.MustCompile(`\bstatus=sent\b`))
	}
}
