//go:build interop

package interop

import (
	"crypto/sha256"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/postamt/postamt/internal/certs"
	"github.com/postamt/postamt/internal/dns/dnstest"
)

// TestDANEToPostfixMX: the real binary delivers to a real Postfix MX whose self-signed
// certificate is pinned by a DANE-EE TLSA record in a zone the test's DNS server marks as
// DNSSEC-secure. With the right record the message arrives and the log says verified=dane; with
// a record for another key, nothing reaches Postfix and the delivery is deferred with 4.7.5.
func TestDANEToPostfixMX(t *testing.T) {
	requireTool(t, "swaks")
	uid, gid := lookupUser(t, "nobody")
	tlsDir := t.TempDir()
	if _, err := certs.ServerConfig("", "", tlsDir, "mx.remote.test"); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(filepath.Join(tlsDir, "cert.pem"))
	if err != nil {
		t.Fatal(err)
	}
	blk, _ := pem.Decode(b)
	if blk == nil {
		t.Fatal("cert.pem: no PEM block")
	}
	cert, err := x509.ParseCertificate(blk.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	spki := sha256.Sum256(cert.RawSubjectPublicKeyInfo)
	pf := startPostfixWith(t, "mx.remote.test", "", fmt.Sprintf(`
smtpd_tls_security_level = may
smtpd_tls_cert_file = %[3]s/cert.pem
smtpd_tls_key_file = %[3]s/key.pem
virtual_mailbox_domains = remote.test, other.test
virtual_mailbox_maps = inline:{ bob@remote.test=remote.test/bob/, eve@other.test=other.test/eve/ }
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

	// remote.test's MX has the right TLSA record; other.test's MX (the same Postfix under
	// another name) has a record for a key it does not hold.
	port := strconv.Itoa(pf.Port)
	zone := &dnstest.Zone{
		MX: map[string][]*net.MX{"remote.test": {{Host: "mx.remote.test.", Pref: 10}}, "other.test": {{Host: "mx.other.test.", Pref: 10}}},
		A:  map[string][]netip.Addr{"mx.remote.test": {netip.MustParseAddr("127.0.0.1")}, "mx.other.test": {netip.MustParseAddr("127.0.0.1")}},
		TLSA: map[string][]dnstest.TLSA{
			"_" + port + "._tcp.mx.remote.test": {{Usage: 3, Selector: 1, MatchingType: 1, Data: spki[:]}},
			"_" + port + "._tcp.mx.other.test":  {{Usage: 3, Selector: 1, MatchingType: 1, Data: make([]byte, 32)}},
		},
		Secure: map[string]bool{"remote.test": true, "other.test": true,
			"_" + port + "._tcp.mx.remote.test": true, "_" + port + "._tcp.mx.other.test": true},
	}
	dnsAddr := dnstest.Server(t, zone)
	p := startPostamt(t, postamtConfig{Extra: fmt.Sprintf(`[local.aliases]
"fwd@example.test" = ["bob@remote.test", "eve@other.test"]

[outbound]
port = %d
dns_servers = [%q]

[outbound.tls]
mta_sts = false
dane = true
dane_resolver = %q
`, pf.Port, dnsAddr, dnsAddr)})

	res := swaks(t, p.Host, p.Port, "--from", senderAddr, "--to", "fwd@example.test",
		"--header", "Subject: dane", "--body", "pinned by TLSA")
	if res.ExitCode != 0 {
		t.Fatalf("swaks exit %d", res.ExitCode)
	}
	findMessage(t, filepath.Join(vmail, "remote.test", "bob", "new"), "pinned by TLSA")
	line := p.waitForLog(t, mustRe(`msg=delivery `), mustRe(`\bto=bob@remote\.test\b`), mustRe(`\bstatus=sent\b`))
	if !strings.Contains(line, "verified=dane") {
		t.Errorf("delivery log does not say verified=dane: %s", line)
	}
	line = p.waitForLog(t, mustRe(`msg=delivery `), mustRe(`\bto=eve@other\.test\b`))
	if !strings.Contains(line, "4.7.5") || !strings.Contains(line, "TLSA mismatch for mx.other.test") || strings.Contains(line, "status=sent") {
		t.Errorf("eve's delivery not deferred for the TLSA mismatch: %s", line)
	}
	if files := listFiles(filepath.Join(vmail, "other.test", "eve", "new")); len(files) != 0 {
		t.Errorf("Postfix got eve's copy despite the TLSA mismatch: %v", files)
	}
}
