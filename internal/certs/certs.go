// Package certs loads the TLS certificate, or makes and keeps a self-signed one so that STARTTLS
// works out of the box (opportunistic TLS between MTAs does not verify certificates, RFC 7435),
// or obtains one from an ACME CA (acme.go). Certificates from files are reloaded when the files
// change.
package certs

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"log/slog"
	"math/big"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"
)

// ServerConfig returns a TLS configuration for a server. With certFile and keyFile empty it uses
// dir/cert.pem and dir/key.pem, generating a self-signed certificate for hostname the first time.
// The files are checked for changes at most every 5 seconds (see Reloader).
func ServerConfig(certFile, keyFile, dir, hostname string) (*tls.Config, error) {
	return ServerConfigReload(certFile, keyFile, dir, hostname, 5*time.Second, nil)
}

// ServerConfigReload is ServerConfig with the reload interval and a logger for reload events.
// TLS 1.2 is the minimum (RFC 8314 §4.1, RFC 8996), and TLS 1.2 offers only ECDHE with AEAD
// suites; TLS 1.3 suites are not configurable in Go and all are modern.
func ServerConfigReload(certFile, keyFile, dir, hostname string, every time.Duration, log *slog.Logger) (*tls.Config, error) {
	if certFile == "" {
		certFile, keyFile = filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
		if _, err := os.Stat(certFile); os.IsNotExist(err) {
			if err := generate(certFile, keyFile, hostname); err != nil {
				return nil, err
			}
		}
	}
	r, err := NewReloader(certFile, keyFile, every, log)
	if err != nil {
		return nil, err
	}
	return &tls.Config{
		GetCertificate: r.GetCertificate,
		MinVersion:     tls.VersionTLS12,
		CipherSuites:   modernSuites,
	}, nil
}

// modernSuites are the TLS 1.2 suites offered: ECDHE key exchange with AEAD ciphers only.
var modernSuites = []uint16{
	tls.TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256, tls.TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
	tls.TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384, tls.TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
	tls.TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256, tls.TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
}

// Reloader serves a certificate from files and picks up new files without a restart: on a
// handshake, at most once per interval, it compares the files' modification times and sizes
// and loads them again when they changed. A pair that does not load (a renewal half written)
// is logged and the previous certificate kept, so a bad deploy never takes TLS down.
type Reloader struct {
	certFile, keyFile string
	every             time.Duration
	log               *slog.Logger
	now               func() time.Time

	mu      sync.Mutex
	cert    *tls.Certificate
	stamp   string // modification times and sizes of the loaded files
	checked time.Time
}

// NewReloader loads the pair once (an error here is fatal: there is nothing to fall back to).
func NewReloader(certFile, keyFile string, every time.Duration, log *slog.Logger) (*Reloader, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	r := &Reloader{certFile: certFile, keyFile: keyFile, every: every, log: log, now: time.Now}
	stamp, err := r.stat()
	if err != nil {
		return nil, fmt.Errorf("tls: %w", err)
	}
	cert, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		return nil, fmt.Errorf("tls: %w", err)
	}
	r.cert, r.stamp, r.checked = &cert, stamp, r.now()
	return r, nil
}

func (r *Reloader) stat() (string, error) {
	var b strings.Builder
	for _, f := range []string{r.certFile, r.keyFile} {
		fi, err := os.Stat(f)
		if err != nil {
			return "", err
		}
		fmt.Fprintf(&b, "%d:%d;", fi.ModTime().UnixNano(), fi.Size())
	}
	return b.String(), nil
}

// GetCertificate is for tls.Config.
func (r *Reloader) GetCertificate(*tls.ClientHelloInfo) (*tls.Certificate, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if now := r.now(); now.Sub(r.checked) >= r.every {
		r.checked = now
		if stamp, err := r.stat(); err == nil && stamp != r.stamp {
			cert, err := tls.LoadX509KeyPair(r.certFile, r.keyFile)
			if err != nil {
				r.log.Error("TLS certificate changed but does not load; keeping the previous one", "cert_file", r.certFile, "err", err)
			} else {
				r.cert, r.stamp = &cert, stamp
				r.log.Info("TLS certificate reloaded", "cert_file", r.certFile)
			}
		}
	}
	return r.cert, nil
}

func generate(certFile, keyFile, hostname string) error {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	serial, _ := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 120))
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject:      pkix.Name{CommonName: hostname, Organization: []string{"Postamt self-signed"}},
		DNSNames:     []string{hostname},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().AddDate(5, 0, 0),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return err
	}
	kder, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(certFile), 0o700); err != nil {
		return err
	}
	if err := os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kder}), 0o600); err != nil {
		return err
	}
	return os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644)
}
