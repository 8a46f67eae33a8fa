package tlspolicy

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"time"
)

// Mode is how much TLS a connection to one MX needs.
type Mode int

const (
	// Opportunistic: STARTTLS when offered, certificate not checked, plain text otherwise
	// (RFC 7435). The default when nothing else applies.
	Opportunistic Mode = iota
	// NoTLS: do not even try STARTTLS (override "none", for peers with broken TLS).
	NoTLS
	// Encrypt: STARTTLS required, certificate not checked (override "encrypt").
	Encrypt
	// Verify: STARTTLS required and the certificate must be valid for the MX name under the
	// trusted roots (override "verify").
	Verify
	// MTASTS: as Verify, because the domain's MTA-STS policy says so (RFC 8461 §4.2).
	MTASTS
	// DANE: STARTTLS required and the chain must match the MX host's TLSA records (RFC 7672).
	DANE
)

func (m Mode) String() string {
	switch m {
	case NoTLS:
		return "none"
	case Encrypt:
		return "encrypt"
	case Verify:
		return "verify"
	case MTASTS:
		return "mta-sts"
	case DANE:
		return "dane"
	}
	return "opportunistic"
}

// Requirement is the decision for one MX host of one destination domain.
type Requirement struct {
	Mode Mode
	// Testing is MTA-STS "testing": check and report, deliver anyway (RFC 8461 §5).
	Testing bool
	// Source explains where the mode came from, for replies and logs: "override for example.org",
	// "MTA-STS policy of example.org", "DANE TLSA _25._tcp.mx.example.org".
	Source string
	Host   string // the MX host name: the reference identity for Verify, MTASTS and DANE-TA
	Domain string // the destination domain, also acceptable to DANE-TA (RFC 7672 §3.2.3)
	TLSA   []TLSA // usable records, for DANE
	Roots  *x509.CertPool
	Now    func() time.Time
}

// ErrNoSTARTTLS is Check's answer for a connection that stayed in plain text.
var ErrNoSTARTTLS = errors.New("server did not offer STARTTLS")

// Required reports whether the connection must use TLS (before Testing is taken into account).
func (r *Requirement) Required() bool { return r.Mode >= Encrypt }

// Enforced reports whether a failed Check must stop delivery to this host.
func (r *Requirement) Enforced() bool { return r.Required() && !r.Testing }

// Check reports whether state (nil: no TLS) satisfies the requirement, naming why not.
func (r *Requirement) Check(state *tls.ConnectionState) error {
	if !r.Required() {
		return nil
	}
	if state == nil {
		return fmt.Errorf("%w, which the %s requires", ErrNoSTARTTLS, r.Source)
	}
	now := time.Now()
	if r.Now != nil {
		now = r.Now()
	}
	switch r.Mode {
	case Verify, MTASTS:
		if err := VerifyPKIX(state.PeerCertificates, r.Roots, r.Host, now); err != nil {
			return fmt.Errorf("certificate of %s not valid for that name (%s): %v", r.Host, r.Source, err)
		}
	case DANE:
		names := []string{r.Host}
		if r.Domain != "" && r.Domain != r.Host {
			names = append(names, r.Domain)
		}
		if err := VerifyDANE(state.PeerCertificates, r.TLSA, names, now); err != nil {
			return fmt.Errorf("TLSA mismatch for %s (%s): %v", r.Host, r.Source, err)
		}
	}
	return nil
}

// Describe is the TLS outcome for Result.TLS and the delivery log: "none", or the version and
// cipher followed by "verified=mta-sts|dane|pkix", "policy=encrypt" or "policy=opportunistic",
// and in testing mode the check that failed.
func (r *Requirement) Describe(state *tls.ConnectionState) string {
	err := r.Check(state)
	var s string
	if state == nil {
		s = "none"
	} else {
		s = tls.VersionName(state.Version) + " " + tls.CipherSuiteName(state.CipherSuite)
		switch {
		case err != nil:
		case r.Mode == Verify:
			s += " verified=pkix"
		case r.Mode == MTASTS || r.Mode == DANE:
			s += " verified=" + r.Mode.String()
		default:
			s += " policy=" + r.Mode.String()
		}
	}
	if err != nil {
		s += " unverified (testing: " + err.Error() + ")"
	}
	return s
}
