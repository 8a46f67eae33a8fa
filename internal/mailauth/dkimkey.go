package mailauth

import (
	"context"
	"crypto"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/base64"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/postamt/postamt/internal/dns"
)

// DKIMKey is one signing key: a domain, a selector and the private key behind
// <selector>._domainkey.<domain>.
type DKIMKey struct {
	Domain   string
	Selector string
	Signer   crypto.Signer
}

// Algo is "rsa" or "ed25519" (the k= tag).
func (k *DKIMKey) Algo() string {
	if _, ok := k.Signer.Public().(ed25519.PublicKey); ok {
		return "ed25519"
	}
	return "rsa"
}

// DKIMKeyPath is where `postamt dkim keygen` writes a key and where the signer looks for it:
// <dir>/<domain>/<selector>.key.
func DKIMKeyPath(dir, domain, selector string) string {
	return filepath.Join(dir, strings.ToLower(domain), selector+".key")
}

// CheckDKIMNames refuses a domain or selector that is not a DNS name: both become a DNS name
// and a file path, so "../x" must never get through.
func CheckDKIMNames(domain, selector string) error {
	for _, n := range []struct{ what, v string }{{"domain", domain}, {"selector", selector}} {
		labels := strings.Split(n.v, ".")
		if n.v == "" || len(n.v) > 253 || n.what == "domain" && len(labels) < 2 {
			return fmt.Errorf("%q is not a valid DKIM %s", n.v, n.what)
		}
		for _, l := range labels {
			if l == "" || len(l) > 63 || l[0] == '-' || l[len(l)-1] == '-' {
				return fmt.Errorf("%q is not a valid DKIM %s", n.v, n.what)
			}
			for _, r := range l {
				if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '_') {
					return fmt.Errorf("%q is not a valid DKIM %s (letters, digits, hyphens; IDNs in A-label form)", n.v, n.what)
				}
			}
		}
	}
	return nil
}

// GenerateDKIMKey makes a new key: RSA-2048 (what every verifier understands) or Ed25519
// (RFC 8463: short records, fast, but not yet verified everywhere, hence dual signing).
func GenerateDKIMKey(algo string) (crypto.Signer, error) {
	switch algo {
	case "rsa":
		return rsa.GenerateKey(rand.Reader, 2048)
	case "ed25519":
		_, k, err := ed25519.GenerateKey(rand.Reader)
		return k, err
	}
	return nil, fmt.Errorf("unknown DKIM key algorithm %q (use rsa or ed25519)", algo)
}

// WriteDKIMKey writes key as a PKCS#8 PEM file readable by its owner only. It refuses to
// overwrite: replacing a published key by accident breaks every signature in transit.
func WriteDKIMKey(path string, key crypto.Signer) error {
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return err
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return err
	}
	if err := pem.Encode(f, &pem.Block{Type: "PRIVATE KEY", Bytes: der}); err != nil {
		f.Close()
		os.Remove(path)
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// LoadDKIMKey reads a PEM private key (PKCS#8, or PKCS#1 "RSA PRIVATE KEY" as openssl writes
// it). RSA keys under 1024 bits are refused (RFC 8301 §3.2).
func LoadDKIMKey(path string) (crypto.Signer, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	b, _ := pem.Decode(data)
	if b == nil {
		return nil, fmt.Errorf("%s: no PEM block", path)
	}
	var k any
	switch b.Type {
	case "PRIVATE KEY":
		k, err = x509.ParsePKCS8PrivateKey(b.Bytes)
	case "RSA PRIVATE KEY":
		k, err = x509.ParsePKCS1PrivateKey(b.Bytes)
	default:
		return nil, fmt.Errorf("%s: unsupported PEM block %q", path, b.Type)
	}
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	switch k := k.(type) {
	case *rsa.PrivateKey:
		if k.N.BitLen() < 1024 {
			return nil, fmt.Errorf("%s: RSA key of %d bits is too short (RFC 8301 wants at least 1024, 2048 recommended)", path, k.N.BitLen())
		}
		return k, nil
	case ed25519.PrivateKey:
		return k, nil
	}
	return nil, fmt.Errorf("%s: unsupported key type %T (use RSA or Ed25519)", path, k)
}

// DKIMPublicValue is the p= tag for key's public half: the DER SubjectPublicKeyInfo for RSA,
// the raw 32 bytes for Ed25519 (RFC 8463 §4.2), base64.
func DKIMPublicValue(pub crypto.PublicKey) (string, error) {
	switch p := pub.(type) {
	case ed25519.PublicKey:
		return base64.StdEncoding.EncodeToString(p), nil
	case *rsa.PublicKey:
		der, err := x509.MarshalPKIXPublicKey(p)
		if err != nil {
			return "", err
		}
		return base64.StdEncoding.EncodeToString(der), nil
	}
	return "", fmt.Errorf("unsupported public key %T", pub)
}

// DKIMRecord is the TXT record to publish for key.
func DKIMRecord(key crypto.Signer) (string, error) {
	p, err := DKIMPublicValue(key.Public())
	if err != nil {
		return "", err
	}
	algo := "rsa"
	if _, ok := key.Public().(ed25519.PublicKey); ok {
		algo = "ed25519"
	}
	return "v=DKIM1; k=" + algo + "; p=" + p, nil
}

// DKIMZoneLine formats the record as a zone-file line, split into the 255-byte strings a TXT
// record is made of (an RSA-2048 record is longer than one string).
func DKIMZoneLine(domain, selector, record string) string {
	var parts []string
	for len(record) > 255 {
		parts = append(parts, `"`+record[:255]+`"`)
		record = record[255:]
	}
	parts = append(parts, `"`+record+`"`)
	return fmt.Sprintf("%s._domainkey.%s. IN TXT ( %s )", selector, strings.TrimSuffix(domain, "."), strings.Join(parts, " "))
}

// DKIMRecordStatus is what CheckDKIMRecord found.
type DKIMRecordStatus struct {
	Name      string // the DNS name asked
	Published string // the record found ("" when none)
	OK        bool
	Problem   string // why not OK
}

// CheckDKIMRecord looks up <selector>._domainkey.<domain> and reports whether a DKIM record
// there carries key's public half.
func CheckDKIMRecord(ctx context.Context, r dns.Resolver, domain, selector string, key crypto.Signer) DKIMRecordStatus {
	st := DKIMRecordStatus{Name: selector + "._domainkey." + strings.TrimSuffix(domain, ".")}
	want, err := DKIMPublicValue(key.Public())
	if err != nil {
		st.Problem = err.Error()
		return st
	}
	txts, err := r.LookupTXT(ctx, st.Name)
	if err != nil {
		if dns.IsNotFound(err) {
			st.Problem = "no TXT record published"
		} else {
			st.Problem = "lookup failed: " + err.Error()
		}
		return st
	}
	var problems []string
	for _, txt := range txts {
		tags, err := parseDKIMTags(txt)
		if err != nil {
			problems = append(problems, err.Error())
			continue
		}
		if v, ok := tags["v"]; ok && v != "DKIM1" {
			problems = append(problems, fmt.Sprintf("v=%s is not DKIM1", v))
			continue
		}
		st.Published = txt
		k := tags["k"]
		if k == "" {
			k = "rsa"
		}
		p := strings.Join(strings.Fields(tags["p"]), "")
		switch {
		case p == "":
			problems = append(problems, "the record has an empty p= (the key is revoked)")
		case k != (&DKIMKey{Signer: key}).Algo():
			problems = append(problems, fmt.Sprintf("k=%s but the key is %s", k, (&DKIMKey{Signer: key}).Algo()))
		case p != want:
			problems = append(problems, "p= does not match the private key (an old key, or another server's)")
		default:
			st.OK = true
			return st
		}
	}
	if len(problems) == 0 {
		problems = append(problems, "no DKIM record among the TXT records")
	}
	st.Problem = strings.Join(problems, "; ")
	return st
}

// parseDKIMTags reads a tag=value list (RFC 6376 §3.2).
func parseDKIMTags(s string) (map[string]string, error) {
	tags := map[string]string{}
	for _, part := range strings.Split(s, ";") {
		part = strings.TrimSpace(part)
		if part == "" {
			continue
		}
		k, v, ok := strings.Cut(part, "=")
		if !ok {
			return nil, errors.New("malformed tag list: " + part)
		}
		tags[strings.TrimSpace(k)] = strings.TrimSpace(v)
	}
	return tags, nil
}
