package certs

import (
	"crypto/tls"
	"crypto/x509"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"
)

func leafName(t *testing.T, c *tls.Certificate) string {
	t.Helper()
	x, err := x509.ParseCertificate(c.Certificate[0])
	if err != nil {
		t.Fatal(err)
	}
	return x.Subject.CommonName
}

func TestReloaderPicksUpNewFiles(t *testing.T) {
	dir := t.TempDir()
	cert, key := filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	if err := generate(cert, key, "one.example.test"); err != nil {
		t.Fatal(err)
	}
	r, err := NewReloader(cert, key, 5*time.Second, nil)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	r.now = func() time.Time { return now }
	get := func() string {
		c, err := r.GetCertificate(nil)
		if err != nil {
			t.Fatal(err)
		}
		return leafName(t, c)
	}
	if got := get(); got != "one.example.test" {
		t.Fatalf("first certificate %q", got)
	}
	// A renewal writes new files (as certbot or an ACME client does).
	os.Remove(cert)
	os.Remove(key)
	if err := generate(cert, key, "two.example.test"); err != nil {
		t.Fatal(err)
	}
	later := now.Add(time.Minute)
	os.Chtimes(cert, later, later)
	if got := get(); got != "one.example.test" {
		t.Errorf("reloaded before the interval: %q", got)
	}
	now = now.Add(6 * time.Second)
	if got := get(); got != "two.example.test" {
		t.Errorf("after the interval: %q, want the new certificate", got)
	}
	// A broken file keeps the previous certificate.
	os.WriteFile(cert, []byte("half written"), 0o644)
	now = now.Add(6 * time.Second)
	if got := get(); got != "two.example.test" {
		t.Errorf("after a broken write: %q", got)
	}
}

func TestServerConfigTLS12Minimum(t *testing.T) {
	conf, err := ServerConfig("", "", t.TempDir(), "mx.example.test")
	if err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		max uint16
		ok  bool
	}{{tls.VersionTLS11, false}, {tls.VersionTLS12, true}, {tls.VersionTLS13, true}} {
		a, b := net.Pipe()
		errc := make(chan error, 1)
		go func() {
			s := tls.Server(a, conf)
			errc <- s.Handshake()
			a.Close()
		}()
		c := tls.Client(b, &tls.Config{InsecureSkipVerify: true, MinVersion: tls.VersionTLS10, MaxVersion: tt.max})
		c.SetDeadline(time.Now().Add(5 * time.Second))
		err := c.Handshake()
		b.Close()
		<-errc
		if (err == nil) != tt.ok {
			t.Errorf("client max %x: handshake err %v, want ok=%v", tt.max, err, tt.ok)
		}
	}
}

// Until the CA has issued a certificate (here: it cannot be reached), handshakes get the
// fallback one instead of failing.
func TestACMEFallsBack(t *testing.T) {
	dir := t.TempDir()
	fb, err := ServerConfig("", "", filepath.Join(dir, "tls"), "mail.example.test")
	if err != nil {
		t.Fatal(err)
	}
	// certmagic's background work may still write its storage after Stop; keep that out of the
	// test's TempDir, whose cleanup fails on a directory that changes under it.
	storage, err := os.MkdirTemp("", "postamt-acme-test")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(storage) })
	a, err := NewACME(t.Context(), ACMEOptions{CA: "https://127.0.0.1:1/dir", Domains: []string{"mail.example.test"},
		Storage: storage, HTTPListen: "127.0.0.1:0", Fallback: fb})
	if err != nil {
		t.Fatal(err)
	}
	defer a.Stop()
	for _, sni := range []string{"mail.example.test", ""} {
		conn, other := net.Pipe()
		c, err := a.TLSConfig().GetCertificate(&tls.ClientHelloInfo{ServerName: sni, Conn: conn})
		conn.Close()
		other.Close()
		if err != nil || leafName(t, c) != "mail.example.test" {
			t.Fatalf("SNI %q: %v", sni, err)
		}
		x, _ := x509.ParseCertificate(c.Certificate[0])
		if x.Subject.Organization[0] != "Postamt self-signed" {
			t.Errorf("not the fallback: %v", x.Subject)
		}
	}
	if v := a.TLSConfig().MinVersion; v != tls.VersionTLS12 {
		t.Errorf("MinVersion %x", v)
	}
}
