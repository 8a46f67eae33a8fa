package certs

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"strconv"

	"github.com/caddyserver/certmagic"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

// ACMEOptions configure certificates from an ACME CA (Let's Encrypt or any RFC 8555 server).
type ACMEOptions struct {
	CA      string   // directory URL
	Email   string   // contact for the account ("" is allowed by Let's Encrypt)
	Domains []string // names on the certificate; the first is used for clients without SNI
	Storage string   // directory for the account, keys and certificates
	// HTTPListen is where the HTTP-01 challenge is answered ("host:port"); the CA connects to
	// port 80 of each domain, so in production this is ":80" (or a port 80 is forwarded to).
	HTTPListen string
	// CARoot is a PEM file of roots to trust for the CA's own HTTPS (a private CA); "" uses the
	// system roots.
	CARoot string
	// Fallback serves handshakes until the first certificate arrives (and if issuance fails).
	Fallback *tls.Config
	Log      *slog.Logger
}

// ACME manages certificates with certmagic: obtained in the background at start, renewed
// before expiry, kept in Storage across restarts. Until a certificate exists the fallback
// (self-signed) one is served, so the server starts even while DNS or the CA is not ready.
type ACME struct {
	cache *certmagic.Cache
	magic *certmagic.Config
	conf  *tls.Config
}

// NewACME starts certificate management.
func NewACME(ctx context.Context, o ACMEOptions) (*ACME, error) {
	if len(o.Domains) == 0 {
		return nil, errors.New("acme: no domains")
	}
	log := o.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	zl := zap.New(slogCore{log: log.With("component", "acme"), level: zapcore.InfoLevel})
	host, portStr, err := net.SplitHostPort(o.HTTPListen)
	if err != nil {
		return nil, fmt.Errorf("acme: http listen %q: %w", o.HTTPListen, err)
	}
	port, err := strconv.Atoi(portStr)
	if err != nil {
		return nil, fmt.Errorf("acme: http listen %q: bad port", o.HTTPListen)
	}
	var roots *x509.CertPool
	if o.CARoot != "" {
		pem, err := os.ReadFile(o.CARoot)
		if err != nil {
			return nil, fmt.Errorf("acme: ca root: %w", err)
		}
		roots = x509.NewCertPool()
		if !roots.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("acme: ca root %s: no certificates", o.CARoot)
		}
	}
	a := &ACME{}
	a.cache = certmagic.NewCache(certmagic.CacheOptions{
		GetConfigForCert: func(certmagic.Certificate) (*certmagic.Config, error) { return a.magic, nil },
		Logger:           zl,
	})
	a.magic = certmagic.New(a.cache, certmagic.Config{
		Storage:           &certmagic.FileStorage{Path: o.Storage},
		DefaultServerName: o.Domains[0],
		Logger:            zl,
		OnEvent: func(_ context.Context, event string, data map[string]any) error {
			switch event {
			case "cert_obtained":
				log.Info("ACME certificate obtained", "domain", data["identifier"], "issuer", data["issuer"])
			case "cert_failed":
				log.Error("ACME certificate not obtained", "domain", data["identifier"], "err", data["error"], "renewal", data["renewal"])
			}
			return nil
		},
	})
	issuer := certmagic.NewACMEIssuer(a.magic, certmagic.ACMEIssuer{
		CA: o.CA, Email: o.Email, Agreed: true,
		// TLS-ALPN-01 would need port 443, which a mail server does not serve.
		DisableTLSALPNChallenge: true,
		ListenHost:              host, AltHTTPPort: port,
		TrustedRoots: roots,
		Logger:       zl,
	})
	a.magic.Issuers = []certmagic.Issuer{issuer}
	if err := a.magic.ManageAsync(ctx, o.Domains); err != nil {
		a.cache.Stop()
		return nil, fmt.Errorf("acme: %w", err)
	}
	a.conf = &tls.Config{
		MinVersion:   tls.VersionTLS12,
		CipherSuites: modernSuites,
		GetCertificate: func(hello *tls.ClientHelloInfo) (*tls.Certificate, error) {
			c, err := a.magic.GetCertificate(hello)
			if err == nil {
				return c, nil
			}
			if o.Fallback != nil && o.Fallback.GetCertificate != nil {
				return o.Fallback.GetCertificate(hello)
			}
			return nil, err
		},
	}
	return a, nil
}

// TLSConfig is the server configuration to use.
func (a *ACME) TLSConfig() *tls.Config { return a.conf }

// Stop ends renewal.
func (a *ACME) Stop() { a.cache.Stop() }

// slogCore sends certmagic's zap logging to our slog logger.
type slogCore struct {
	log    *slog.Logger
	level  zapcore.Level
	fields []zapcore.Field
}

func (c slogCore) Enabled(l zapcore.Level) bool { return l >= c.level }
func (c slogCore) With(fs []zapcore.Field) zapcore.Core {
	c.fields = append(c.fields[:len(c.fields):len(c.fields)], fs...)
	return c
}

func (c slogCore) Check(e zapcore.Entry, ce *zapcore.CheckedEntry) *zapcore.CheckedEntry {
	if c.Enabled(e.Level) {
		return ce.AddCore(e, c)
	}
	return ce
}

func (c slogCore) Write(e zapcore.Entry, fs []zapcore.Field) error {
	enc := zapcore.NewMapObjectEncoder()
	for _, f := range append(c.fields[:len(c.fields):len(c.fields)], fs...) {
		f.AddTo(enc)
	}
	attrs := make([]any, 0, 2*len(enc.Fields))
	for k, v := range enc.Fields {
		attrs = append(attrs, k, v)
	}
	lvl := slog.LevelInfo
	switch {
	case e.Level >= zapcore.ErrorLevel:
		lvl = slog.LevelError
	case e.Level >= zapcore.WarnLevel:
		lvl = slog.LevelWarn
	case e.Level < zapcore.InfoLevel:
		lvl = slog.LevelDebug
	}
	c.log.Log(context.Background(), lvl, e.Message, attrs...)
	return nil
}

func (slogCore) Sync() error { return nil }
