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
