package mailauth

import (
	"strings"

	"golang.org/x/net/publicsuffix"
)

// OrgDomain is the organizational domain of RFC 7489 §3.2: the public suffix (from the public
// suffix list compiled into golang.org/x/net) plus one label. A name that is itself a public
// suffix, or that the list cannot place, is its own organizational domain.
func OrgDomain(domain string) string {
	d := strings.TrimSuffix(strings.ToLower(domain), ".")
	if org, err := publicsuffix.EffectiveTLDPlusOne(d); err == nil {
		return org
	}
	return d
}

// aligned reports identifier alignment (RFC 7489 §3.1): strict wants the same name, relaxed
// the same organizational domain.
func aligned(a, b string, strict bool) bool {
	a, b = strings.TrimSuffix(strings.ToLower(a), "."), strings.TrimSuffix(strings.ToLower(b), ".")
	if a == "" || b == "" {
		return false
	}
	if strict {
		return a == b
	}
	return OrgDomain(a) == OrgDomain(b)
}
