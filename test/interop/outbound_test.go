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
// quotes Postfix's reply. The MX listens on a loopback port ([outbound] port points there);
// TestDeliverToPostfixPort25 is the same over the real port 25.
func TestDeliverToPostfixMX(t *testing.T) {
	deliverToPostfixMX(t, postfixOptions{}, "127.0.0.1")
}

// deliverToPostfixMX runs the TestDeliverToPostfixMX scenario against a Postfix started with
// where (Listen, NetNS; the rest is filled in here) whose address, as published in the test's
// DNS, is mxAddr. Without where.Listen Postamt is told the Postfix's port; with it, Postamt
// uses its default port 25.
func deliverToPostfixMX(t *testing.T, where postfixOptions, mxAddr string) (*postamtServer, *postfixInstance) {
	t.Helper()
	requireTool(t, "swaks")
	uid, gid := lookupUser(t, "nobody")
	// The MX offers STARTTLS with a self-signed certificate, as most do.
	tlsDir := t.TempDir()
	if _, err := certs.ServerConfig("", "", tlsDir, "mx.remote.test"); err != nil {
		t.Fatal(err)
	}
	where.Hostname = "mx.remote.test"
	where.ExtraMain = fmt.Sprintf(`
smtpd_tls_security_level = may
smtpd_tls_cert_file = %[3]s/cert.pem
smtpd_tls_key_file = %[3]s/key.pem
smtpd_tls_loglevel = 1
virtual_mailbox_domains = remote.test
virtual_mailbox_maps = inline:{ bob@remote.test=remote.test/bob/ }
virtual_mailbox_base = %%[1]s/vmail
virtual_uid_maps = static:%[1]d
virtual_gid_maps = static:%[2]d
virtual_minimum_uid = 1
`, uid, gid, tlsDir)
	where.ExtraMaster = "virtual   unix  -       n       n       -       -       virtual\n"
	pf := startPostfixOpts(t, where)
	vmail := filepath.Join(pf.Dir, "vmail")
	if err := os.MkdirAll(vmail, 0o755); err != nil {
		t.Fatal(err)
	}
	os.Chown(vmail, uid, gid)

	zone := &dnstest.Zone{
		MX: map[string][]*net.MX{"remote.test": {{Host: "mx.remote.test.", Pref: 10}}},
		A:  map[string][]netip.Addr{"mx.remote.test": {netip.MustParseAddr(mxAddr)}},
	}
	dnsAddr := dnstest.Server(t, zone)
	port := ""
	if where.Listen == "" {
		port = fmt.Sprintf("port = %d\n", pf.Port)
	}
	p := startPostamt(t, postamtConfig{Extra: fmt.Sprintf(`[local.aliases]
"fwd@example.test" = ["bob@remote.test", "nobody@remote.test"]

[outbound]
%sdns_servers = [%q]
`, port, dnsAddr)})

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
	// Postfix's side of the same: the TLS session it accepted, and its own 550.
	pfLog := pf.Logs()
	if !strings.Contains(pfLog, "TLS connection established from") {
		t.Errorf("postfix log shows no inbound TLS session")
	}
	if !regexp.MustCompile(`: reject: RCPT from [^:]*: 550 5\.1\.1 <nobody@remote\.test>`).MatchString(pfLog) {
		t.Errorf("postfix log lacks its 550 for nobody@remote.test")
	}
	return p, pf
}

func mustRe(s string) *regexp.Regexp { return regexp.MustCompile(s) }
