// Package tlspolicytest has helpers for tests of outbound TLS policy: a throw-away certificate
// authority and an HTTPS server that publishes an MTA-STS policy.
package tlspolicytest

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/sha512"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"math/big"
	"net"
	"net/http"
	"net/http/httptest"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

var serial atomic.Int64

// CA is a throw-away certificate authority.
type CA struct {
	Cert *x509.Certificate
	key  *ecdsa.PrivateKey
}

// NewCA makes a self-signed CA certificate valid for a day around now.
func NewCA(t testing.TB, name string) *CA {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(serial.Add(1)), Subject: pkix.Name{CommonName: name},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	c, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return &CA{Cert: c, key: key}
}

// Pool is a root pool holding only this CA.
func (ca *CA) Pool() *x509.CertPool {
	p := x509.NewCertPool()
	p.AddCert(ca.Cert)
	return p
}

// Leaf issues a server certificate for names, valid from nb to na; the chain sent includes the CA.
func (ca *CA) Leaf(t testing.TB, nb, na time.Time, names ...string) tls.Certificate {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(serial.Add(1)), Subject: pkix.Name{CommonName: names[0]},
		NotBefore: nb, NotAfter: na, DNSNames: names,
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.Cert, &key.PublicKey, ca.key)
	if err != nil {
		t.Fatal(err)
	}
	c, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{der, ca.Cert.Raw}, PrivateKey: key, Leaf: c}
}

// Valid issues a certificate for names valid for an hour either side of now.
func (ca *CA) Valid(t testing.TB, names ...string) tls.Certificate {
	return ca.Leaf(t, time.Now().Add(-time.Hour), time.Now().Add(time.Hour), names...)
}

// Chain parses the certificates a tls.Certificate would send.
func Chain(c tls.Certificate) []*x509.Certificate {
	var out []*x509.Certificate
	for _, der := range c.Certificate {
		x, _ := x509.ParseCertificate(der)
		out = append(out, x)
	}
	return out
}

// TLSAData is the association data of a TLSA record with selector sel and matching type mt.
func TLSAData(sel, mt uint8, c *x509.Certificate) []byte {
	data := c.Raw
	if sel == 1 {
		data = c.RawSubjectPublicKeyInfo
	}
	switch mt {
	case 1:
		h := sha256.Sum256(data)
		data = h[:]
	case 2:
		h := sha512.Sum512(data)
		data = h[:]
	}
	return data
}

// PolicyServer serves https://mta-sts.<domain>/.well-known/mta-sts.txt with an answer the test
// can change, and counts requests so tests can tell a cache hit from a fetch.
type PolicyServer struct {
	mu    sync.Mutex
	body  string
	ctype string
	code  int
	hits  int
	Srv   *httptest.Server
	CA    *CA
}

// StartPolicyServer starts the server on 127.0.0.1 with a certificate for mta-sts.<domain>.
func StartPolicyServer(t testing.TB, domain, body string) *PolicyServer {
	ps := &PolicyServer{body: body, ctype: "text/plain; charset=utf-8", code: 200, CA: NewCA(t, "policy CA")}
	ps.Srv = httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ps.mu.Lock()
		defer ps.mu.Unlock()
		ps.hits++
		if r.URL.Path != "/.well-known/mta-sts.txt" || r.Host != "mta-sts."+domain {
			http.NotFound(w, r)
			return
		}
		if ps.code == http.StatusFound {
			http.Redirect(w, r, "https://elsewhere.test/", http.StatusFound)
			return
		}
		w.Header().Set("Content-Type", ps.ctype)
		w.WriteHeader(ps.code)
		w.Write([]byte(ps.body))
	}))
	ps.Srv.TLS = &tls.Config{Certificates: []tls.Certificate{ps.CA.Valid(t, "mta-sts."+domain)}}
	ps.Srv.StartTLS()
	t.Cleanup(ps.Srv.Close)
	return ps
}

// Set changes the answer.
func (ps *PolicyServer) Set(body string, code int, ctype string) {
	ps.mu.Lock()
	defer ps.mu.Unlock()
	ps.body, ps.code, ps.ctype = body, code, ctype
}

// Hits counts the requests so far.
func (ps *PolicyServer) Hits() int {
	ps.mu.Lock()
	defer ps.mu.Unlock()
	return ps.hits
}

// Client returns an HTTP client that trusts the server's CA and dials it whatever the host name;
// redirect and timeout handling are taken from base (the production client).
func (ps *PolicyServer) Client(base *http.Client) *http.Client {
	c := *base
	addr := ps.Srv.Listener.Addr().String()
	c.Transport = &http.Transport{
		TLSClientConfig: &tls.Config{RootCAs: ps.CA.Pool()},
		DialContext: func(ctx context.Context, network, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, network, addr)
		},
	}
	return &c
}
