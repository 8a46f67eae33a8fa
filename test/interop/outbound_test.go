//go:build interop

package interop

import (
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/postamt/postamt/internal/certs"
	"github.com/postamt/postamt/internal/dns/dnstest"
)

// TestDeliverToPostfixMX: Postamt relays an alias to two recipients at remote.test, whose MX (as
// the test's own DNS server says) is a real Postfix. Postfix accepts bob and refuses nobody with
// 550; bob's copy lands in Postfix's mailbox, and the sender finds a DSN in her Maildir that
// quotes Postfix's reply.
func TestDeliverToPostfixMX(t *testing.T) {
	requireTool(t, "swaks")
	uid, gid := lookupUser(t, "nobody")
	// The MX offers STARTTLS with a self-signed certificate, as most do.
	tlsDir := t.TempDir()
	if _, err := certs.ServerConfig("", "", tlsDir, "mx.remote.test"); err != nil {
		t.Fatal(err)
	}
	pf := startPostfixWith(t, "mx.remote.test", "", fmt.Sprintf(`
smtpd_tls_security_level = may
smtpd_tls_cert_file = %[3]s/cert.pem
smtpd_tls_key_file = %[3]s/key.pem
virtual_mailbox_domains = remote.test
virtual_mailbox_maps = inline:{ bob@remote.test=remote.test/bob/ }
virtual_mailbox_base = %%[1]s/vmail
virtual_uid_maps = static:%[1]d
virtual_gid_maps = static:%[2]d
virtual_minimum_uid = 1
`, uid, gid, tlsDir), "virtual   unix  -       n       n       -       -       virtual\n")
	vmail := filepath.Join(pf.Dir, "vmail")
	if err := os.MkdirAll(vmail, 0o755); err != nil {
		t.Fatal(err)
	}
	os.Chown(vmail, uid, gid)

	zone := &dnstest.Zone{
		MX: map[string][]*net.MX{"remote.test": {{Host: "mx.remote.test.", Pref: 10}}},
		A:  map[string][]netip.Addr{"mx.remote.test": {netip.MustParseAddr("127.0.0.1")}},
	}
	dnsAddr := dnstest.Server(t, zone)
	p := startPostamt(t, postamtConfig{Extra: fmt.Sprintf(`[local.aliases]
"fwd@example.test" = ["bob@remote.test", "nobody@remote.test"]

[outbound]
port = %d
dns_servers = [%q]
`, pf.Port, dnsAddr)})

	res := swaks(t, p.Host, p.Port, "--from", senderAddr, "--to", "fwd@example.test",
		"--header", "Subject: across the wire", "--body", "relayed by postamt")
	if res.ExitCode != 0 {
		t.Fatalf("swaks exit %d", res.ExitCode)
	}
	qid := queueIDFrom(swaksDataReply(res.Output))

	got := findMessage(t, filepath.Join(vmail, "remote.test", "bob", "new"), "relayed by postamt")
	if !strings.Contains(got.Raw, "by "+p.Hostname+" (Postamt)") || !strings.Contains(got.Raw, "from "+p.Hostname) {
		t.Errorf("Postfix's copy lacks Postamt's Received or Postfix's own: %s", got.Raw)
	}
	dsn := findMessage(t, p.MaildirNew(senderAddr), "Final-Recipient: rfc822; nobody@remote.test")
	for _, want := range []string{"Action: failed", "Status: 5.1.1", "Remote-MTA: dns; mx.remote.test",
		"User unknown in virtual mailbox table", "X-Postamt-Queue-ID: " + qid, "Subject: across the wire"} {
		if !strings.Contains(dsn.Raw, want) {
			t.Errorf("DSN lacks %q:\n%s", want, dsn.Raw)
		}
	}
	if strings.Contains(dsn.Raw, "Final-Recipient: rfc822; bob@remote.test") {
		t.Errorf("DSN reports bob, who was delivered")
	}
	line := p.waitForLog(t, mustRe(`msg=delivery `), mustRe(`\bto=bob@remote\.test\b`), mustRe(`\bstatus=sent\b`))
	if !strings.Contains(line, "relay=mx.remote.test") || !strings.Contains(line, "tls=\"TLS 1.") {
		t.Errorf("delivery log lacks the MX or the TLS outcome: %s", line)
	}
}

func mustRe(s string) *regexp.Regexp { return regexp.MustCompile(s) }
