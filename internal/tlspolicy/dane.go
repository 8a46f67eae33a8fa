package tlspolicy

import (
	"bytes"
	"crypto/sha256"
	"crypto/sha512"
	"crypto/x509"
	"errors"
	"fmt"
	"time"
)

// TLSA is one TLSA record (RFC 6698 §2.1).
type TLSA struct {
	Usage        uint8 // 2 DANE-TA, 3 DANE-EE; 0 and 1 are unusable for SMTP (RFC 7672 §3.1.3)
	Selector     uint8 // 0 whole certificate, 1 SubjectPublicKeyInfo
	MatchingType uint8 // 0 exact, 1 SHA-256, 2 SHA-512
	Data         []byte
}

func (r TLSA) String() string {
	return fmt.Sprintf("%d %d %d %x", r.Usage, r.Selector, r.MatchingType, r.Data)
}

// usable reports whether an SMTP client may use the record (RFC 7672 §3.1.3: PKIX-TA and
// PKIX-EE are not, nor are unknown parameters).
func (r TLSA) usable() bool {
	return (r.Usage == 2 || r.Usage == 3) && r.Selector <= 1 && r.MatchingType <= 2
}

// matches compares the record with cert.
func (r TLSA) matches(cert *x509.Certificate) bool {
	var data []byte
	switch r.Selector {
	case 0:
		data = cert.Raw
	case 1:
		data = cert.RawSubjectPublicKeyInfo
	default:
		return false
	}
	switch r.MatchingType {
	case 0:
	case 1:
		h := sha256.Sum256(data)
		data = h[:]
	case 2:
		h := sha512.Sum512(data)
		data = h[:]
	default:
		return false
	}
	return bytes.Equal(data, r.Data)
}

// Usable returns the records an SMTP client can authenticate with.
func Usable(recs []TLSA) []TLSA {
	var out []TLSA
	for _, r := range recs {
		if r.usable() {
			out = append(out, r)
		}
	}
	return out
}

// VerifyDANE checks a server's certificate chain against TLSA records (RFC 7672 §3.1). A
// DANE-EE record must match the leaf; names and dates are ignored because the DNSSEC-signed
// record is the whole trust (§3.1.1). A DANE-TA record must match a certificate the server
// sent, and the leaf must then chain to it and carry one of names (§3.1.2, §3.2.3).
func VerifyDANE(chain []*x509.Certificate, recs []TLSA, names []string, now time.Time) error {
	if len(chain) == 0 {
		return errors.New("server sent no certificate")
	}
	recs = Usable(recs)
	if len(recs) == 0 {
		return errors.New("no usable TLSA records (only PKIX-TA/PKIX-EE or unknown parameters)")
	}
	leaf := chain[0]
	var taErr error
	for _, r := range recs {
		switch r.Usage {
		case 3:
			if r.matches(leaf) {
				return nil
			}
		case 2:
			for _, c := range chain {
				if !r.matches(c) {
					continue
				}
				if err := chainTo(chain, c, names, now); err != nil {
					taErr = err
					continue
				}
				return nil
			}
		}
	}
	if taErr != nil {
		return fmt.Errorf("TLSA trust anchor matched but the chain does not verify: %w", taErr)
	}
	return errors.New("no TLSA record matches the server's certificate chain")
}

// chainTo verifies the leaf up to the trust anchor ta with one of names as reference identifier.
func chainTo(chain []*x509.Certificate, ta *x509.Certificate, names []string, now time.Time) error {
	roots := x509.NewCertPool()
	roots.AddCert(ta)
	inter := x509.NewCertPool()
	for _, c := range chain[1:] {
		inter.AddCert(c)
	}
	var err error
	for _, n := range names {
		_, err = chain[0].Verify(x509.VerifyOptions{DNSName: n, Roots: roots, Intermediates: inter, CurrentTime: now,
			KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}})
		if err == nil {
			return nil
		}
	}
	if err == nil {
		err = errors.New("no reference name")
	}
	return err
}

// VerifyPKIX checks the chain against roots (nil: the system's) for host, as MTA-STS
// (RFC 8461 §4.2) and the "verify" override require.
func VerifyPKIX(chain []*x509.Certificate, roots *x509.CertPool, host string, now time.Time) error {
	if len(chain) == 0 {
		return errors.New("server sent no certificate")
	}
	inter := x509.NewCertPool()
	for _, c := range chain[1:] {
		inter.AddCert(c)
	}
	_, err := chain[0].Verify(x509.VerifyOptions{DNSName: host, Roots: roots, Intermediates: inter, CurrentTime: now})
	return err
}
