//go:build interop

package interop

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestMsmtp: msmtp (GnuTLS) sends one message to Postamt without auth, once
// in plain text and once with STARTTLS (certificate check off: Postamt's
// certificate is self-signed). Each message lands in the Maildir.
func TestMsmtp(t *testing.T) {
	bin := requireTool(t, "msmtp")
	p := startPostamt(t, postamtConfig{Mailboxes: []string{"bob@example.test"}})

	// An empty config file, so that no ~/.msmtprc or /etc/msmtprc is read.
	rc := filepath.Join(t.TempDir(), "msmtprc")
	if err := os.WriteFile(rc, nil, 0o600); err != nil {
		t.Fatal(err)
	}

	for _, tc := range []struct {
		name string
		tls  []string
	}{
		{"plain", []string{"--tls=off"}},
		{"starttls", []string{"--tls=on", "--tls-starttls=on", "--tls-certcheck=off"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			marker := "msmtp " + tc.name + " body line"
			msg := "From: sender@example.test\nTo: bob@example.test\nSubject: msmtp " + tc.name + "\n\n" + marker + "\n"
			args := append([]string{"--file=" + rc, "--host=127.0.0.1", "--port=" + itoa(p.Port),
				"--from=" + senderAddr, "--auth=off", "--domain=client.test", "--timeout=15", "--debug"},
				tc.tls...)
			args = append(args, "--", "bob@example.test")
			res := runCmd(t, msg, bin, args...)
			if res.ExitCode != 0 {
				t.Fatalf("msmtp exit status %d, want 0", res.ExitCode)
			}
			if !strings.Contains(res.Output, "<-- 250 2.0.0") || !strings.Contains(res.Output, "queued as") {
				t.Errorf("no 250 2.0.0 ... queued as reply to the end of DATA")
			}
			usedTLS := strings.Contains(res.Output, "--> STARTTLS")
			if wantTLS := tc.name == "starttls"; usedTLS != wantTLS {
				t.Errorf("STARTTLS used = %v, want %v", usedTLS, wantTLS)
			}
			m := findMessage(t, p.MaildirNew("bob@example.test"), marker)
			assertDeliveryHeaders(t, m, senderAddr, "bob@example.test", "by "+p.Hostname)
			if got := m.Header.Get("Subject"); got != "msmtp "+tc.name {
				t.Errorf("Subject = %q", got)
			}
			if m.Body != marker+"\n" {
				t.Errorf("body = %q, want %q", m.Body, marker+"\n")
			}
			if wantProto := map[bool]string{false: "with ESMTP ", true: "with ESMTPS "}[usedTLS]; !strings.Contains(m.Header.Get("Received"), wantProto) {
				t.Errorf("Received = %q, want %q", m.Header.Get("Received"), wantProto)
			}
		})
	}
}
