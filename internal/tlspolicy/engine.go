package tlspolicy

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/postamt/postamt/internal/dns"
)

// ParseOverride maps a configured per-domain policy to its Mode.
func ParseOverride(s string) (Mode, bool) {
	switch s {
	case "none":
		return NoTLS, true
	case "may":
		return Opportunistic, true
	case "encrypt":
		return Encrypt, true
	case "verify":
		return Verify, true
	case "dane":
		return DANE, true
	}
	return 0, false
}

// Engine makes the decisions. The order, strongest claim first:
//  1. a configured override for the domain (the operator knows best);
//  2. DANE, when the MX RRset is DNSSEC-secure and the host has secure usable TLSA records
//     (RFC 8461 §2: DANE takes precedence over MTA-STS);
//  3. MTA-STS in enforce (or testing) mode: the MX must match the policy, the certificate
//     must be valid for it;
//  4. opportunistic STARTTLS.
//
// A nil *Engine decides opportunistic TLS for everything.
type Engine struct {
	Overrides map[string]Mode // lower-case domain → mode
	STS       *STS            // nil: no MTA-STS
	DANE      *SecureResolver // nil: no DANE
	Roots     *x509.CertPool  // for PKIX checks; nil: the system roots
	Now       func() time.Time
	Logger    *slog.Logger
}

// ErrMXNotInPolicy: the domain's enforced MTA-STS policy does not list this MX (RFC 8461 §4.1).
var ErrMXNotInPolicy = errors.New("MX host not listed in the MTA-STS policy")

// ErrNoDANE: the override asks for DANE but the host has no DNSSEC-secure usable TLSA records.
var ErrNoDANE = errors.New("no DNSSEC-secure TLSA records")

// Destination holds what was learned about one destination domain.
type Destination struct {
	e        *Engine
	Domain   string
	override *Mode
	sts      *Policy // enforce or testing only
	mxSecure bool
	// SecureMX is the DNSSEC-validated MX RRset (empty: validated "no MX", so the implicit MX)
	// when MXSecure says there is one: the caller must then try these hosts rather than those
	// from its ordinary resolver, which an attacker may have fed.
	SecureMX []*net.MX
}

// MXSecure reports whether the MX lookup was DNSSEC-validated (only with DANE on).
func (d *Destination) MXSecure() bool { return d.mxSecure && d.e != nil && d.e.DANE != nil }

func (e *Engine) log() *slog.Logger {
	if e != nil && e.Logger != nil {
		return e.Logger
	}
	return slog.New(slog.DiscardHandler)
}

// ForDomain learns domain's policies. The error is a failed secure MX lookup with DANE on, which
// must defer delivery: it may be an attacker stripping DNSSEC (RFC 7672 §2.2.1).
func (e *Engine) ForDomain(ctx context.Context, domain string) (*Destination, error) {
	domain = strings.ToLower(strings.TrimSuffix(domain, "."))
	d := &Destination{e: e, Domain: domain}
	if e == nil {
		return d, nil
	}
	if m, ok := e.Overrides[domain]; ok {
		d.override = &m
		if m != DANE {
			return d, nil // no discovery: the override decides alone
		}
	}
	if e.DANE != nil {
		mxs, sec, err := e.DANE.MX(ctx, domain)
		if err != nil {
			return nil, err
		}
		d.mxSecure = sec
		if sec {
			d.SecureMX = mxs
		}
	}
	if e.STS != nil && d.override == nil {
		if p := e.STS.Lookup(ctx, domain); p != nil && p.Mode != STSNone {
			d.sts = p
		}
	}
	return d, nil
}

// ForRelay is the decision for a relay host or transport-map next hop: only an override keyed by
// the host name applies, as there is no recipient domain to discover policies for. A "dane"
// override looks up TLSA records for the host itself (there is no MX RRset to be secure; the
// host was chosen by configuration), and without secure records the host is not used.
func (e *Engine) ForRelay(host string) *Destination {
	d := &Destination{e: e, Domain: strings.ToLower(strings.TrimSuffix(host, "."))}
	if e != nil {
		if m, ok := e.Overrides[d.Domain]; ok {
			d.override = &m
			d.mxSecure = m == DANE
		}
	}
	return d
}

// ForHost decides for one MX host. An error means "do not use this host" and wraps
// ErrMXNotInPolicy, ErrNoDANE or ErrLookup (a failed TLSA lookup on a secure zone, RFC 7672 §2.2).
func (d *Destination) ForHost(ctx context.Context, host string, port int) (*Requirement, error) {
	host = strings.ToLower(strings.TrimSuffix(host, "."))
	req := &Requirement{Mode: Opportunistic, Source: "opportunistic TLS", Host: host, Domain: d.Domain}
	e := d.e
	if e == nil {
		return req, nil
	}
	req.Roots, req.Now = e.Roots, e.Now
	if d.override != nil && *d.override != DANE {
		req.Mode, req.Source = *d.override, "tls policy override for "+d.Domain
		return req, nil
	}
	if e.DANE != nil && d.mxSecure {
		recs, secure, err := e.DANE.TLSA(ctx, host, port)
		if err != nil {
			return nil, err
		}
		if secure && len(recs) > 0 {
			name := "_" + strconv.Itoa(port) + "._tcp." + host
			if u := Usable(recs); len(u) > 0 {
				req.Mode, req.TLSA, req.Source = DANE, u, "DANE TLSA "+name
			} else {
				// RFC 7672 §2.2: secure but unusable records still make TLS mandatory.
				req.Mode, req.Source = Encrypt, "DANE TLSA "+name+" (no usable records)"
			}
			return req, nil
		}
	}
	if d.override != nil { // dane override without secure TLSA
		return nil, fmt.Errorf("%w for %s, which the tls policy override for %s requires", ErrNoDANE, host, d.Domain)
	}
	if p := d.sts; p != nil {
		req.Mode, req.Testing, req.Source = MTASTS, p.Mode == STSTesting, "MTA-STS policy of "+d.Domain
		if p.Mode == STSTesting {
			req.Source = "MTA-STS testing policy of " + d.Domain
		}
		if !p.Match(host) {
			if !req.Testing {
				return nil, fmt.Errorf("%w of %s: %s", ErrMXNotInPolicy, d.Domain, host)
			}
			e.log().Warn("mta-sts testing: MX not in policy, delivering anyway", "domain", d.Domain, "mx", host)
		}
	}
	return req, nil
}

// Options is what NewEngine needs from the configuration.
type Options struct {
	MTASTS       bool
	Resolver     dns.Resolver // for MTA-STS TXT records
	CacheDir     string       // MTA-STS policy cache
	DANEResolver string       // "ip:port" of the trusted validating resolver; "" disables DANE
	Overrides    map[string]string
	Logger       *slog.Logger
}

// NewEngine builds an Engine from validated settings.
func NewEngine(o Options) (*Engine, error) {
	e := &Engine{Logger: o.Logger, Overrides: map[string]Mode{}}
	for d, s := range o.Overrides {
		m, ok := ParseOverride(s)
		if !ok {
			return nil, fmt.Errorf("tls policy for %s: unknown mode %q", d, s)
		}
		e.Overrides[strings.ToLower(strings.TrimSuffix(d, "."))] = m
	}
	if o.MTASTS {
		var client *http.Client
		if nr, ok := o.Resolver.(*net.Resolver); ok {
			client = HTTPClientVia(nr)
		} else if s, ok := o.Resolver.(interface{ Net() *net.Resolver }); ok {
			client = HTTPClientVia(s.Net())
		}
		e.STS = NewSTS(o.Resolver, o.CacheDir, client, o.Logger)
	}
	if o.DANEResolver != "" {
		e.DANE = &SecureResolver{Addr: o.DANEResolver}
	}
	return e, nil
}
