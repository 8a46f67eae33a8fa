//go:build interop

package interop

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/postamt/postamt/internal/dns/dnstest"
)

// pebbleBinary builds Pebble, Let's Encrypt's ACME test server (a tool dependency in go.mod).
func pebbleBinary(t *testing.T) string {
	t.Helper()
	root, err := moduleRoot()
	if err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(t.TempDir(), "pebble")
	cmd := exec.Command("go", "build", "-o", bin, "github.com/letsencrypt/pebble/v2/cmd/pebble")
	cmd.Dir = root
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build pebble: %v\n%s", err, out)
	}
	return bin
}

// writeServerCert writes a self-signed certificate for localhost/127.0.0.1 (Pebble's own HTTPS).
func writeServerCert(t *testing.T, dir string) (certFile, keyFile string) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "localhost"},
		DNSNames: []string{"localhost"}, IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		IsCA: true, BasicConstraintsValid: true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	kder, _ := x509.MarshalECPrivateKey(key)
	certFile, keyFile = filepath.Join(dir, "pebble-cert.pem"), filepath.Join(dir, "pebble-key.pem")
	writeFile(t, certFile, string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})))
	writeFile(t, keyFile, string(pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kder})))
	return certFile, keyFile
}

// TestACMEWithPebble: Postamt obtains its certificate from a real ACME server (Pebble) with a
// real HTTP-01 validation — Pebble resolves the name through our DNS server and fetches the
// token from Postamt's challenge listener — and then serves it on the submission (465) and MX
// (STARTTLS) listeners; the chain verifies against Pebble's root.
func TestACMEWithPebble(t *testing.T) {
	bin := pebbleBinary(t)
	dir := t.TempDir()
	pcert, pkey := writeServerCert(t, dir)
	dnsAddr := dnstest.Server(t, &dnstest.Zone{A: map[string][]netip.Addr{"mail.example.test": {netip.MustParseAddr("127.0.0.1")}}})
	acmePort, mgmtPort, httpPort := freePort(t), freePort(t), freePort(t)
	conf := filepath.Join(dir, "pebble.json")
	writeFile(t, conf, fmt.Sprintf(`{"pebble": {"listenAddress": "127.0.0.1:%d", "managementListenAddress": "127.0.0.1:%d",
  "certificate": %q, "privateKey": %q, "httpPort": %d, "tlsPort": %d, "ocspResponderURL": "",
  "externalAccountBindingRequired": false, "keyAlgorithm": "ecdsa",
  "profiles": {"default": {"description": "default", "validityPeriod": 7776000}}}}`,
		acmePort, mgmtPort, pcert, pkey, httpPort, freePort(t)))
	pebble := exec.Command(bin, "-config", conf, "-dnsserver", dnsAddr)
	pebble.Env = append(os.Environ(), "PEBBLE_VA_NOSLEEP=1", "PEBBLE_WFE_NONCEREJECT=0")
	var plog syncBuffer
	pebble.Stdout, pebble.Stderr = &plog, &plog
	if err := pebble.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		pebble.Process.Kill()
		pebble.Wait()
		if t.Failed() {
			t.Logf("pebble log:\n%s", plog.String())
		}
	})
	waitForPort(t, fmt.Sprintf("127.0.0.1:%d", acmePort))

	subPort := freePort(t)
	p := startPostamt(t, postamtConfig{Hostname: "mail.example.test", Extra: fmt.Sprintf(`[tls]
acme = true
acme_ca = "https://localhost:%d/dir"
acme_ca_root = %s
acme_http_listen = "127.0.0.1:%d"

[submission]
listen_tls = ["127.0.0.1:%d"]
`, acmePort, tomlString(pcert), httpPort, subPort)})
	p.waitForLog(t, regexp.MustCompile(`ACME certificate obtained`), regexp.MustCompile(`domain=mail\.example\.test`))

	// Pebble's root is made fresh at each start: fetch it from the management interface.
	caPool := x509.NewCertPool()
	pemData, _ := os.ReadFile(pcert)
	caPool.AppendCertsFromPEM(pemData)
	hc := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: caPool}}}
	resp, err := hc.Get(fmt.Sprintf("https://localhost:%d/roots/0", mgmtPort))
	if err != nil {
		t.Fatal(err)
	}
	root, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(root) {
		t.Fatalf("no root from pebble: %s", root)
	}

	// Implicit TLS on the submission port: the ACME certificate, verified.
	conn, err := tls.DialWithDialer(&net.Dialer{Timeout: 10 * time.Second}, "tcp", fmt.Sprintf("127.0.0.1:%d", subPort),
		&tls.Config{ServerName: "mail.example.test", RootCAs: roots})
	if err != nil {
		t.Fatalf("TLS with the ACME certificate: %v", err)
	}
	leaf := conn.ConnectionState().PeerCertificates[0]
	conn.Close()
	if !strings.Contains(leaf.Issuer.CommonName, "Pebble") || leaf.DNSNames[0] != "mail.example.test" {
		t.Errorf("certificate issuer %q names %v", leaf.Issuer.CommonName, leaf.DNSNames)
	}
	// STARTTLS on the MX listener serves it too (swaks checks nothing, Go does).
	c, err := net.DialTimeout("tcp", p.Addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	buf := make([]byte, 4096)
	readReply := func() string {
		var all string
		for !regexp.MustCompile(`(?m)^\d{3} .*\r\n$`).MatchString(all) {
			n, err := c.Read(buf)
			if err != nil {
				t.Fatalf("read: %v (%q)", err, all)
			}
			all += string(buf[:n])
		}
		return all
	}
	readReply()
	c.Write([]byte("EHLO client.test\r\n"))
	readReply()
	c.Write([]byte("STARTTLS\r\n"))
	if r := readReply(); !strings.HasPrefix(r, "220") {
		t.Fatalf("STARTTLS: %q", r)
	}
	tc := tls.Client(c, &tls.Config{ServerName: "mail.example.test", RootCAs: roots})
	if err := tc.Handshake(); err != nil {
		t.Errorf("STARTTLS with the ACME certificate: %v", err)
	}
	if !strings.Contains(plog.String(), "mail.example.test") {
		t.Errorf("pebble log does not mention the validation of mail.example.test")
	}
}
