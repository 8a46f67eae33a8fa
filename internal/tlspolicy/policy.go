// Package tlspolicy decides how much TLS an outbound SMTP connection needs and checks that a
// connection delivers it: MTA-STS (RFC 8461), DANE for SMTP (RFC 7672), and per-domain overrides
// from the configuration, falling back to opportunistic TLS (RFC 7435). The remote transport asks
// an Engine once per destination domain and once per MX host, then hands the TLS connection
// state to Requirement.Check.
package tlspolicy

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
)

// STSMode is an MTA-STS policy mode (RFC 8461 §5).
type STSMode string

const (
	STSEnforce STSMode = "enforce"
	STSTesting STSMode = "testing"
	STSNone    STSMode = "none"
)

// maxSTSAge is the RFC 8461 §3.2 upper bound for max_age (about one year).
const maxSTSAge = 31557600

// Policy is a parsed MTA-STS policy file.
type Policy struct {
	Mode   STSMode
	MX     []string // patterns as published: "mx.example.com" or "*.example.com", lower case
	MaxAge int64    // seconds
}

// ParsePolicy parses the body of .well-known/mta-sts.txt (RFC 8461 §3.2). Unknown keys are
// ignored as the RFC asks; anything malformed in a known key makes the whole policy invalid,
// because a half-understood policy could enforce the wrong MX set.
func ParsePolicy(body string) (*Policy, error) {
	p := &Policy{}
	var version, mode, maxAge bool
	for n, line := range strings.Split(strings.ReplaceAll(body, "\r\n", "\n"), "\n") {
		line = strings.TrimRight(line, " \t")
		if line == "" {
			continue
		}
		key, val, ok := strings.Cut(line, ":")
		if !ok {
			return nil, fmt.Errorf("mta-sts policy line %d: no \":\" in %q", n+1, trunc(line))
		}
		val = strings.TrimLeft(val, " \t")
		switch key {
		case "version":
			if version {
				return nil, errors.New("mta-sts policy: version given twice")
			}
			if val != "STSv1" {
				return nil, fmt.Errorf("mta-sts policy: unsupported version %q", trunc(val))
			}
			version = true
		case "mode":
			if mode {
				return nil, errors.New("mta-sts policy: mode given twice")
			}
			switch STSMode(val) {
			case STSEnforce, STSTesting, STSNone:
				p.Mode = STSMode(val)
			default:
				return nil, fmt.Errorf("mta-sts policy: mode %q is not enforce, testing or none", trunc(val))
			}
			mode = true
		case "max_age":
			if maxAge {
				return nil, errors.New("mta-sts policy: max_age given twice")
			}
			// 1*10DIGIT; values above the RFC's bound are capped rather than refused, as the
			// RFC says senders may cap lifetimes.
			if len(val) == 0 || len(val) > 10 || strings.Trim(val, "0123456789") != "" {
				return nil, fmt.Errorf("mta-sts policy: max_age %q is not a number of seconds", trunc(val))
			}
			v, _ := strconv.ParseInt(val, 10, 64)
			p.MaxAge = min(v, maxSTSAge)
			maxAge = true
		case "mx":
			pat := strings.ToLower(strings.TrimSuffix(val, "."))
			if !validPattern(pat) {
				return nil, fmt.Errorf("mta-sts policy: mx %q is not a host name or *.domain pattern", trunc(val))
			}
			p.MX = append(p.MX, pat)
		}
	}
	switch {
	case !version:
		return nil, errors.New("mta-sts policy: no version")
	case !mode:
		return nil, errors.New("mta-sts policy: no mode")
	case !maxAge:
		return nil, errors.New("mta-sts policy: no max_age")
	case p.Mode != STSNone && len(p.MX) == 0:
		return nil, fmt.Errorf("mta-sts policy: mode %s without mx lines", p.Mode)
	}
	return p, nil
}

func trunc(s string) string {
	if len(s) > 64 {
		return s[:64] + "…"
	}
	return s
}

// validPattern accepts a host name, optionally with a leading "*." (RFC 8461 §3.2 mx).
func validPattern(p string) bool {
	p = strings.TrimPrefix(p, "*.")
	if p == "" || len(p) > 253 {
		return false
	}
	for _, label := range strings.Split(p, ".") {
		if label == "" || len(label) > 63 || label[0] == '-' || label[len(label)-1] == '-' {
			return false
		}
		for _, c := range label {
			if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-' || c == '_') {
				return false
			}
		}
	}
	return true
}

// Match reports whether mxHost is one of the policy's mx patterns (RFC 8461 §4.1). A wildcard
// covers exactly one leftmost label: "*.example.com" matches "mx.example.com" but neither
// "example.com" nor "a.b.example.com".
func (p *Policy) Match(mxHost string) bool {
	h := strings.ToLower(strings.TrimSuffix(mxHost, "."))
	for _, pat := range p.MX {
		if rest, ok := strings.CutPrefix(pat, "*."); ok {
			label, parent, ok := strings.Cut(h, ".")
			if ok && label != "" && parent == rest {
				return true
			}
			continue
		}
		if h == pat {
			return true
		}
	}
	return false
}

// parseTXT returns the id of the single v=STSv1 record among txts (RFC 8461 §3.1); ok is
// false when there is none or more than one, which both mean "no policy published".
func parseTXT(txts []string) (id string, ok bool) {
	n := 0
	for _, t := range txts {
		fields := strings.Split(t, ";")
		if strings.TrimSpace(fields[0]) != "v=STSv1" {
			continue
		}
		n++
		id = ""
		for _, f := range fields[1:] {
			k, v, _ := strings.Cut(strings.TrimSpace(f), "=")
			if k == "id" {
				id = v
			}
		}
	}
	if n != 1 || id == "" || len(id) > 32 || strings.Trim(id, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789") != "" {
		return "", false
	}
	return id, true
}
