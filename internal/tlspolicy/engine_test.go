package tlspolicy

import (
	"context"
	"crypto/tls"
	"errors"
	"log/slog"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/postamt/postamt/internal/dns/dnstest"
	"github.com/postamt/postamt/internal/tlspolicy/tlspolicytest"
)

// TestEngineOrder: override > DANE (secure MX and TLSA) > MTA-STS > opportunistic.
func TestEngineOrder(t *testing.T) {
	ps := startPolicyServer(t, "sts.test")
	ps.Set("version: STSv1\nmode: enforce\nmx: mx.sts.test\nmax_age: 600\n", 200, "text/plain")
	tlsa := map[string][]dnstest.TLSA{"_25._tcp.mx.both.test": {{Usage: 3, Selector: 1, MatchingType: 1, Data: make([]byte, 32)}},
		"_25._tcp.mx.unusable.test": {{Usage: 1, Selector: 1, MatchingType: 1, Data: make([]byte, 32)}}}
	zone := &dnstest.Zone{
		TXT:    map[string][]string{"_mta-sts.sts.test": {"v=STSv1; id=1"}, "_mta-sts.both.test": {"v=STSv1; id=1"}},
		MX:     map[string][]*net.MX{"both.test": {{Host: "mx.both.test", Pref: 1}}, "unusable.test": {{Host: "mx.unusable.test", Pref: 1}}},
		TLSA:   tlsa,
		Secure: map[string]bool{"both.test": true, "_25._tcp.mx.both.test": true, "unusable.test": true, "_25._tcp.mx.unusable.test": true, "daneonly.test": true, "_25._tcp.mx.failing.test": true, "failing.test": true},
		Fail:   map[string]bool{"_25._tcp.mx.failing.test": true, "mxfail.test": true},
	}
	e := &Engine{
		Overrides: map[string]Mode{"forced.test": Encrypt, "sts.test.override": NoTLS, "daneonly.test": DANE},
		STS:       NewSTS(zone, "", ps.Client(DefaultHTTPClient()), nil),
		DANE:      &SecureResolver{Addr: dnstest.Server(t, zone), Timeout: 2 * time.Second},
	}
	ctx := context.Background()
	for _, tt := range []struct {
		domain, host string
		mode         Mode
		testing      bool
		err          error
	}{
		{"forced.test", "mx.forced.test", Encrypt, false, nil},
		{"both.test", "mx.both.test", DANE, false, nil},            // DANE beats the (failing) MTA-STS lookup
		{"unusable.test", "mx.unusable.test", Encrypt, false, nil}, // RFC 7672 §2.2
		{"sts.test", "mx.sts.test", MTASTS, false, nil},
		{"sts.test", "other.sts.test", 0, false, ErrMXNotInPolicy},
		{"daneonly.test", "mx.daneonly.test", 0, false, ErrNoDANE},
		{"failing.test", "mx.failing.test", 0, false, ErrLookup},
		{"plain.test", "mx.plain.test", Opportunistic, false, nil},
	} {
		d, err := e.ForDomain(ctx, tt.domain)
		if err != nil {
			t.Fatalf("%s: %v", tt.domain, err)
		}
		req, err := d.ForHost(ctx, tt.host, 25)
		if tt.err != nil {
			if !errors.Is(err, tt.err) {
				t.Errorf("%s/%s: got %v %v, want %v", tt.domain, tt.host, req, err, tt.err)
			}
			continue
		}
		if err != nil || req.Mode != tt.mode || req.Testing != tt.testing {
			t.Errorf("%s/%s: got %+v %v, want %s", tt.domain, tt.host, req, err, tt.mode)
		}
	}
	if _, err := e.ForDomain(ctx, "mxfail.test"); !errors.Is(err, ErrLookup) {
		t.Errorf("SERVFAIL on the secure MX lookup: %v", err)
	}
	var nilEngine *Engine
	d, _ := nilEngine.ForDomain(ctx, "x.test")
	if req, err := d.ForHost(ctx, "mx.x.test", 25); err != nil || req.Mode != Opportunistic {
		t.Errorf("nil engine: %+v %v", req, err)
	}
}

func TestRequirementCheck(t *testing.T) {
	ca := tlspolicytest.NewCA(t, "CA")
	cert := ca.Valid(t, "mx1.remote.test")
	st := &tls.ConnectionState{Version: tls.VersionTLS13, CipherSuite: tls.TLS_AES_128_GCM_SHA256, PeerCertificates: tlspolicytest.Chain(cert)}
	for _, tt := range []struct {
		req      Requirement
		state    *tls.ConnectionState
		err      string
		describe string
	}{
		{Requirement{Mode: Opportunistic}, nil, "", "none"},
		{Requirement{Mode: Opportunistic}, st, "", "TLS 1.3 TLS_AES_128_GCM_SHA256 policy=opportunistic"},
		{Requirement{Mode: Encrypt, Source: "override"}, nil, "did not offer STARTTLS, which the override requires", ""},
		{Requirement{Mode: Encrypt}, st, "", "TLS 1.3 TLS_AES_128_GCM_SHA256 policy=encrypt"},
		{Requirement{Mode: MTASTS, Host: "mx1.remote.test", Roots: ca.Pool()}, st, "", "TLS 1.3 TLS_AES_128_GCM_SHA256 verified=mta-sts"},
		{Requirement{Mode: Verify, Host: "mx1.remote.test", Roots: ca.Pool()}, st, "", "TLS 1.3 TLS_AES_128_GCM_SHA256 verified=pkix"},
		{Requirement{Mode: MTASTS, Host: "mx2.remote.test", Roots: ca.Pool(), Source: "MTA-STS policy of remote.test"}, st,
			"certificate of mx2.remote.test not valid for that name (MTA-STS policy of remote.test)", ""},
		{Requirement{Mode: MTASTS, Host: "mx1.remote.test", Roots: tlspolicytest.NewCA(t, "x").Pool()}, st, "not valid", ""},
		{Requirement{Mode: MTASTS, Testing: true, Host: "mx1.remote.test", Roots: tlspolicytest.NewCA(t, "x").Pool()}, st, "not valid",
			"TLS 1.3 TLS_AES_128_GCM_SHA256 unverified (testing: certificate of mx1.remote.test"},
		{Requirement{Mode: DANE, Host: "mx1.remote.test", TLSA: []TLSA{tlsaFor(3, 1, 1, cert.Leaf)}}, st, "", "TLS 1.3 TLS_AES_128_GCM_SHA256 verified=dane"},
		{Requirement{Mode: DANE, Host: "mx1.remote.test", TLSA: []TLSA{tlsaFor(3, 1, 1, ca.Cert)}}, st, "TLSA mismatch for mx1.remote.test", ""},
	} {
		err := tt.req.Check(tt.state)
		if tt.err == "" && err != nil || tt.err != "" && (err == nil || !strings.Contains(err.Error(), tt.err)) {
			t.Errorf("%s: Check = %v, want %q", tt.req.Mode, err, tt.err)
		}
		if tt.describe != "" {
			if got := tt.req.Describe(tt.state); !strings.HasPrefix(got, tt.describe) {
				t.Errorf("%s: Describe = %q, want %q", tt.req.Mode, got, tt.describe)
			}
		}
	}
}

func TestNewEngine(t *testing.T) {
	e, err := NewEngine(Options{MTASTS: true, Resolver: &dnstest.Zone{}, CacheDir: t.TempDir(), DANEResolver: "127.0.0.1:53",
		Overrides: map[string]string{"Bank.Example.": "verify", "legacy.example": "none"}})
	if err != nil || e.STS == nil || e.DANE == nil || e.Overrides["bank.example"] != Verify || e.Overrides["legacy.example"] != NoTLS {
		t.Fatalf("%+v %v", e, err)
	}
	e, err = NewEngine(Options{})
	if err != nil || e.STS != nil || e.DANE != nil {
		t.Fatalf("all off: %+v %v", e, err)
	}
	if _, err := NewEngine(Options{Overrides: map[string]string{"x.example": "strict"}}); err == nil {
		t.Fatal("unknown mode accepted")
	}
}

// TestEngineRelay: a relay host gets only its override; "dane" fails closed without TLSA.
func TestEngineRelay(t *testing.T) {
	zone := &dnstest.Zone{
		TLSA:   map[string][]dnstest.TLSA{"_587._tcp.signed-relay.test": {{Usage: 3, Selector: 1, MatchingType: 1, Data: make([]byte, 32)}}},
		Secure: map[string]bool{"_587._tcp.signed-relay.test": true},
	}
	e := &Engine{
		Overrides: map[string]Mode{"relay.test": Verify, "signed-relay.test": DANE, "unsigned-relay.test": DANE},
		DANE:      &SecureResolver{Addr: dnstest.Server(t, zone), Timeout: 2 * time.Second},
	}
	ctx := context.Background()
	for host, want := range map[string]Mode{"relay.test": Verify, "signed-relay.test": DANE, "other.test": Opportunistic} {
		req, err := e.ForRelay(host).ForHost(ctx, host, 587)
		if err != nil || req.Mode != want {
			t.Errorf("%s: %+v %v, want %s", host, req, err, want)
		}
	}
	if _, err := e.ForRelay("unsigned-relay.test").ForHost(ctx, "unsigned-relay.test", 587); !errors.Is(err, ErrNoDANE) {
		t.Errorf("dane override without TLSA: %v", err)
	}
}

// TestEngineSTSTesting: a testing policy never removes an MX; a mismatch is logged.
func TestEngineSTSTesting(t *testing.T) {
	ps := startPolicyServer(t, "sts.test")
	ps.Set("version: STSv1\nmode: testing\nmx: mx.sts.test\nmax_age: 600\n", 200, "text/plain")
	zone := &dnstest.Zone{TXT: map[string][]string{"_mta-sts.sts.test": {"v=STSv1; id=1"}}}
	var logs strings.Builder
	e := &Engine{STS: NewSTS(zone, "", ps.Client(DefaultHTTPClient()), nil), Logger: slog.New(slog.NewTextHandler(&logs, nil))}
	d, err := e.ForDomain(context.Background(), "sts.test")
	if err != nil {
		t.Fatal(err)
	}
	for _, host := range []string{"mx.sts.test", "other.sts.test"} {
		req, err := d.ForHost(context.Background(), host, 25)
		if err != nil || req.Mode != MTASTS || !req.Testing || req.Enforced() {
			t.Errorf("%s: %+v %v", host, req, err)
		}
	}
	if !strings.Contains(logs.String(), "MX not in policy") || !strings.Contains(logs.String(), "mx=other.sts.test") {
		t.Errorf("mismatch not logged: %s", logs.String())
	}
}
