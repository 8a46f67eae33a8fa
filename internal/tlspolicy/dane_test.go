package tlspolicy

import (
	"context"
	"crypto/x509"
	"errors"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/postamt/postamt/internal/dns/dnstest"
	"github.com/postamt/postamt/internal/tlspolicy/tlspolicytest"
)

func tlsaFor(usage, sel, mt uint8, c *x509.Certificate) TLSA {
	return TLSA{Usage: usage, Selector: sel, MatchingType: mt, Data: tlspolicytest.TLSAData(sel, mt, c)}
}

func TestVerifyDANE(t *testing.T) {
	ca := tlspolicytest.NewCA(t, "DANE CA")
	good := ca.Valid(t, "mx1.remote.test")
	leaf, caCert := good.Leaf, ca.Cert
	// Expired and for another name: DANE-EE must not care, DANE-TA must.
	stale := ca.Leaf(t, time.Now().Add(-48*time.Hour), time.Now().Add(-24*time.Hour), "other.test")
	other := tlspolicytest.NewCA(t, "other CA").Valid(t, "mx1.remote.test")
	names := []string{"mx1.remote.test", "remote.test"}
	now := time.Now()
	type tc struct {
		name  string
		chain []*x509.Certificate
		recs  []TLSA
		err   string
	}
	var cases []tc
	for sel := uint8(0); sel <= 1; sel++ {
		for mt := uint8(0); mt <= 2; mt++ {
			cases = append(cases,
				tc{"EE match", tlspolicytest.Chain(good), []TLSA{tlsaFor(3, sel, mt, leaf)}, ""},
				tc{"EE mismatch", tlspolicytest.Chain(other), []TLSA{tlsaFor(3, sel, mt, leaf)}, "no TLSA record matches"},
				tc{"TA match", tlspolicytest.Chain(good), []TLSA{tlsaFor(2, sel, mt, caCert)}, ""},
				tc{"TA mismatch", tlspolicytest.Chain(other), []TLSA{tlsaFor(2, sel, mt, caCert)}, "no TLSA record matches"},
			)
		}
	}
	cases = append(cases,
		tc{"EE ignores name and expiry", tlspolicytest.Chain(stale), []TLSA{tlsaFor(3, 1, 1, stale.Leaf)}, ""},
		tc{"TA checks name and expiry", tlspolicytest.Chain(stale), []TLSA{tlsaFor(2, 1, 1, caCert)}, "chain does not verify"},
		tc{"TA accepts the next-hop domain as name", tlspolicytest.Chain(ca.Valid(t, "remote.test")), []TLSA{tlsaFor(2, 0, 1, caCert)}, ""},
		tc{"EE record for the CA does not match the leaf", tlspolicytest.Chain(good), []TLSA{tlsaFor(3, 0, 1, caCert)}, "no TLSA record matches"},
		tc{"PKIX-EE unusable", tlspolicytest.Chain(good), []TLSA{tlsaFor(1, 0, 1, leaf)}, "no usable TLSA"},
		tc{"PKIX-TA unusable", tlspolicytest.Chain(good), []TLSA{tlsaFor(0, 0, 1, caCert)}, "no usable TLSA"},
		tc{"unknown matching type", tlspolicytest.Chain(good), []TLSA{{Usage: 3, Selector: 0, MatchingType: 3, Data: leaf.Raw}}, "no usable TLSA"},
		tc{"one of several matches", tlspolicytest.Chain(good), []TLSA{tlsaFor(3, 1, 1, other.Leaf), tlsaFor(3, 1, 1, leaf)}, ""},
		tc{"no certificate", nil, []TLSA{tlsaFor(3, 1, 1, leaf)}, "no certificate"},
	)
	for _, tt := range cases {
		err := VerifyDANE(tt.chain, tt.recs, names, now)
		if tt.err == "" && err != nil || tt.err != "" && (err == nil || !strings.Contains(err.Error(), tt.err)) {
			t.Errorf("%s %v: got %v, want %q", tt.name, tt.recs[0].String()[:5], err, tt.err)
		}
	}
}

// TestSecureResolverADBit: the AD bit from the configured resolver decides "secure"; records in
// an unsigned zone are returned as not secure, SERVFAIL is ErrLookup, denial keeps AD.
func TestSecureResolverADBit(t *testing.T) {
	zone := &dnstest.Zone{
		MX: map[string][]*net.MX{"signed.test": {{Host: "mx.signed.test.", Pref: 10}}, "plain.test": {{Host: "mx.plain.test.", Pref: 10}}},
		TLSA: map[string][]dnstest.TLSA{
			"_25._tcp.mx.signed.test": {{Usage: 3, Selector: 1, MatchingType: 1, Data: []byte{1, 2, 3}}},
			"_25._tcp.mx.plain.test":  {{Usage: 3, Selector: 1, MatchingType: 1, Data: []byte{4, 5, 6}}},
		},
		Secure: map[string]bool{"signed.test": true, "_25._tcp.mx.signed.test": true, "_25._tcp.nothing.signed.test": true},
		Fail:   map[string]bool{"_25._tcp.broken.signed.test": true},
	}
	r := &SecureResolver{Addr: dnstest.Server(t, zone), Timeout: 2 * time.Second}
	ctx := context.Background()
	if mxs, sec, err := r.MX(ctx, "signed.test"); err != nil || !sec || len(mxs) != 1 || mxs[0].Host != "mx.signed.test." || mxs[0].Pref != 10 {
		t.Errorf("signed MX: %v %v %v", mxs, sec, err)
	}
	if mxs, sec, err := r.MX(ctx, "plain.test"); err != nil || sec || len(mxs) != 1 {
		t.Errorf("plain MX: %v %v %v", mxs, sec, err)
	}
	recs, sec, err := r.TLSA(ctx, "mx.signed.test", 25)
	if err != nil || !sec || len(recs) != 1 || recs[0].String() != "3 1 1 010203" {
		t.Errorf("signed TLSA: %v %v %v", recs, sec, err)
	}
	recs, sec, err = r.TLSA(ctx, "mx.plain.test.", 25)
	if err != nil || sec || len(recs) != 1 {
		t.Errorf("unsigned TLSA: %v %v %v", recs, sec, err)
	}
	if recs, sec, err := r.TLSA(ctx, "nothing.signed.test", 25); err != nil || !sec || len(recs) != 0 {
		t.Errorf("secure denial: %v %v %v", recs, sec, err)
	}
	if _, _, err := r.TLSA(ctx, "broken.signed.test", 25); !errors.Is(err, ErrLookup) {
		t.Errorf("SERVFAIL: %v", err)
	}
}
