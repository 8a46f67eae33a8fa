//go:build interop

package interop

import (
	"encoding/json"
	"strings"
	"testing"
)

// pyResult is the JSON printed by testdata/smtplib_client.py.
type pyResult struct {
	Error           string            `json:"error"`
	EHLOCode        int               `json:"ehlo_code"`
	EHLOFeatures    map[string]string `json:"ehlo_features"`
	StartTLSCode    int               `json:"starttls_code"`
	TLSVersion      string            `json:"tls_version"`
	EHLOTLSCode     int               `json:"ehlo_tls_code"`
	EHLOTLSFeatures map[string]string `json:"ehlo_tls_features"`
	Refused         map[string][2]any `json:"refused"`
	Mail            [2]any            `json:"mail"`
	Rcpt            [2]any            `json:"rcpt"`
	Data            [2]any            `json:"data"`
}

// runSmtplib runs testdata/smtplib_client.py with args and decodes its JSON.
func runSmtplib(t *testing.T, args ...string) (pyResult, cmdResult) {
	t.Helper()
	py := requireTool(t, "python3")
	res := runCmd(t, "", py, append([]string{"testdata/smtplib_client.py"}, args...)...)
	var r pyResult
	// The JSON object is the last line on stdout; stderr has the transcript.
	lines := strings.Split(strings.TrimSpace(res.Output), "\n")
	for i := len(lines) - 1; i >= 0; i-- {
		if strings.HasPrefix(lines[i], "{") {
			if err := json.Unmarshal([]byte(lines[i]), &r); err != nil {
				t.Fatalf("decode smtplib_client output: %v", err)
			}
			return r, res
		}
	}
	t.Fatalf("smtplib_client printed no JSON result (exit %d)", res.ExitCode)
	return r, res
}

// TestSmtplibStartTLSTwoRecipients: Python's smtplib sees the advertised
// extensions, upgrades with STARTTLS and send_message()s one message to two
// mailboxes; both Maildirs get it.
func TestSmtplibStartTLSTwoRecipients(t *testing.T) {
	p := startPostamt(t, postamtConfig{Mailboxes: []string{"alice@example.test", "bob@example.test"}})
	requireTool(t, "python3")

	r, res := runSmtplib(t, "send", p.Host, itoa(p.Port), senderAddr, "smtplib interop",
		"alice@example.test", "bob@example.test")
	if res.ExitCode != 0 || r.Error != "" {
		t.Fatalf("smtplib client failed (exit %d): %s", res.ExitCode, r.Error)
	}
	if r.EHLOCode != 250 || r.StartTLSCode != 220 || r.EHLOTLSCode != 250 {
		t.Errorf("EHLO/STARTTLS/EHLO codes = %d/%d/%d, want 250/220/250", r.EHLOCode, r.StartTLSCode, r.EHLOTLSCode)
	}
	for _, ext := range []string{"PIPELINING", "SIZE", "8BITMIME", "SMTPUTF8", "ENHANCEDSTATUSCODES", "CHUNKING", "DSN", "STARTTLS"} {
		if _, ok := r.EHLOFeatures[ext]; !ok {
			t.Errorf("EHLO does not advertise %s (got %v)", ext, r.EHLOFeatures)
		}
	}
	if r.EHLOFeatures["SIZE"] != "26214400" {
		t.Errorf("SIZE = %q, want the default 25MiB = 26214400", r.EHLOFeatures["SIZE"])
	}
	if _, ok := r.EHLOTLSFeatures["STARTTLS"]; ok {
		t.Errorf("STARTTLS still advertised after TLS is up")
	}
	if !strings.HasPrefix(r.TLSVersion, "TLSv1.") {
		t.Errorf("TLS version %q", r.TLSVersion)
	}
	if len(r.Refused) != 0 {
		t.Errorf("refused recipients: %v", r.Refused)
	}
	if !strings.Contains(res.Output, "queued as") {
		t.Errorf("no 'queued as' in the DATA reply")
	}

	for _, rcpt := range []string{"alice@example.test", "bob@example.test"} {
		m := findMessage(t, p.MaildirNew(rcpt), "Sent by Python smtplib over STARTTLS.")
		assertDeliveryHeaders(t, m, senderAddr, rcpt, "by "+p.Hostname)
		if m.Header.Get("Subject") != "smtplib interop" || m.Header.Get("Message-Id") != "<smtplib-send@client.test>" {
			t.Errorf("%s: headers changed:\n%s", rcpt, m.Raw)
		}
		if want := "Sent by Python smtplib over STARTTLS.\nSecond line.\n"; m.Body != want {
			t.Errorf("%s: body = %q, want %q", rcpt, m.Body, want)
		}
	}
}

// TestSmtplibSMTPUTF8: a message with MAIL FROM ... SMTPUTF8 to a mailbox
// with a UTF-8 local part is accepted and stored, raw UTF-8 headers intact.
func TestSmtplibSMTPUTF8(t *testing.T) {
	const rcpt = "jürgen@example.test"
	p := startPostamt(t, postamtConfig{Mailboxes: []string{rcpt}})
	requireTool(t, "python3")

	r, res := runSmtplib(t, "utf8", p.Host, itoa(p.Port), senderAddr, "Grüße", rcpt)
	if res.ExitCode != 0 || r.Error != "" {
		t.Fatalf("smtplib client failed (exit %d): %s", res.ExitCode, r.Error)
	}
	if _, ok := r.EHLOFeatures["SMTPUTF8"]; !ok {
		t.Fatalf("SMTPUTF8 not advertised: %v", r.EHLOFeatures)
	}
	if code, _ := r.Mail[0].(float64); code != 250 {
		t.Errorf("MAIL FROM ... SMTPUTF8 reply %v, want 250", r.Mail)
	}
	if code, _ := r.Rcpt[0].(float64); code != 250 {
		t.Errorf("RCPT TO:<%s> reply %v, want 250", rcpt, r.Rcpt)
	}
	if code, _ := r.Data[0].(float64); code != 250 || queueIDFrom("250 "+r.Data[1].(string)) == "" {
		t.Errorf("DATA reply %v, want 250 with a queue ID", r.Data)
	}

	m := findMessage(t, p.MaildirNew(rcpt), "Grüße aus Python")
	assertDeliveryHeaders(t, m, senderAddr, rcpt, "by "+p.Hostname)
	if got := m.Header.Get("Subject"); got != "Grüße" {
		t.Errorf("Subject = %q, want raw UTF-8 %q", got, "Grüße")
	}
	if got := m.Header.Get("To"); got != rcpt {
		t.Errorf("To = %q, want %q", got, rcpt)
	}
	if want := "Grüße aus Python, Ünïcödé ✓\n"; m.Body != want {
		t.Errorf("body = %q, want %q", m.Body, want)
	}
	if rcv := m.Header.Get("Received"); !strings.Contains(rcv, "UTF8SMTP") {
		t.Errorf("Received = %q, want the protocol UTF8SMTP (RFC 6531)", rcv)
	}
}
