package remote

import (
	"bytes"
	"context"
	"crypto/tls"
	"log/slog"
	"net"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	gosmtp "github.com/emersion/go-smtp"

	"github.com/postamt/postamt/internal/dns/dnstest"
	"github.com/postamt/postamt/internal/smtp"
	"github.com/postamt/postamt/internal/tlspolicy"
	"github.com/postamt/postamt/internal/tlspolicy/tlspolicytest"
)

// startCertPeer is startPeer with a chosen certificate; nil cert offers no STARTTLS.
func startCertPeer(t *testing.T, cert *tls.Certificate) (*peer, int) {
	p := &peer{got: map[string]string{}}
	srv := gosmtp.NewServer(p)
	srv.Domain = "mx.remote.test"
	if cert != nil {
		srv.TLSConfig = &tls.Config{Certificates: []tls.Certificate{*cert}}
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return p, ln.Addr().(*net.TCPAddr).Port
}

func (p *peer) delivered() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.got)
}

// syncBuf is a log sink safe for the transport's goroutine and the test.
type syncBuf struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuf) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuf) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// TestTLSPolicyDelivery runs the remote transport against SMTP peers on 127.0.0.1 under each kind
// of TLS policy and checks both what was reported and what the peer actually received.
func TestTLSPolicyDelivery(t *testing.T) {
	ca := tlspolicytest.NewCA(t, "mx CA")
	good := ca.Valid(t, "mx1.remote.test")
	wrongName := ca.Valid(t, "elsewhere.test")
	tlsa := func(c tls.Certificate) []dnstest.TLSA {
		return []dnstest.TLSA{{Usage: 3, Selector: 1, MatchingType: 1, Data: tlspolicytest.TLSAData(1, 1, c.Leaf)}}
	}
	taFor := func(c *tlspolicytest.CA) []dnstest.TLSA {
		return []dnstest.TLSA{{Usage: 2, Selector: 0, MatchingType: 1, Data: tlspolicytest.TLSAData(0, 1, c.Cert)}}
	}
	const enforce = "version: STSv1\nmode: enforce\nmx: mx1.remote.test\nmax_age: 600\n"
	const testing_ = "version: STSv1\nmode: testing\nmx: mx1.remote.test\nmax_age: 600\n"
	type setup struct {
		cert     *tls.Certificate // what the peer presents; nil: no STARTTLS
		sts      string           // MTA-STS policy body; "" none published
		trustCA  bool             // the engine's roots include the CA
		tlsa     []dnstest.TLSA   // secure TLSA for mx1 (DANE on, zone signed)
		tlsaFail bool             // TLSA lookup SERVFAILs on the signed zone
		override string
		decoyMX  bool // an extra, preferred MX outside the MTA-STS policy that would accept anything
	}
	for _, tt := range []struct {
		name      string
		s         setup
		delivered bool
		code      string // enhanced code of the deferral
		reason    string // in the reply text
		tlsInfo   string // in Result.TLS when delivered
		logged    string // in the transport's log
	}{
		{name: "mta-sts enforce, untrusted certificate", s: setup{cert: &good, sts: enforce},
			code: "4.7.5", reason: "MTA-STS policy of remote.test"},
		{name: "mta-sts enforce, certificate for another name", s: setup{cert: &wrongName, sts: enforce, trustCA: true},
			code: "4.7.5", reason: "certificate of mx1.remote.test not valid for that name"},
		{name: "mta-sts enforce, no STARTTLS", s: setup{sts: enforce, trustCA: true},
			code: "4.7.4", reason: "did not offer STARTTLS, which the MTA-STS policy of remote.test requires"},
		{name: "mta-sts enforce, trusted certificate", s: setup{cert: &good, sts: enforce, trustCA: true},
			delivered: true, tlsInfo: "verified=mta-sts"},
		{name: "mta-sts enforce skips MX outside the policy", s: setup{cert: &good, sts: enforce, trustCA: true, decoyMX: true},
			delivered: true, tlsInfo: "verified=mta-sts"},
		{name: "mta-sts testing, untrusted certificate", s: setup{cert: &good, sts: testing_},
			delivered: true, tlsInfo: "unverified (testing: certificate of mx1.remote.test", logged: "tls policy check failed in testing mode"},
		{name: "no policy: opportunistic", s: setup{cert: &good},
			delivered: true, tlsInfo: "policy=opportunistic"},
		{name: "dane-ee match", s: setup{cert: &good, tlsa: tlsa(good)},
			delivered: true, tlsInfo: "verified=dane"},
		{name: "dane-ta match", s: setup{cert: &good, tlsa: taFor(ca)},
			delivered: true, tlsInfo: "verified=dane"},
		{name: "dane-ta, certificate for another name", s: setup{cert: &wrongName, tlsa: taFor(ca)},
			code: "4.7.5", reason: "chain does not verify"},
		{name: "dane beats mta-sts", s: setup{cert: &good, tlsa: tlsa(good), sts: enforce},
			delivered: true, tlsInfo: "verified=dane"},
		{name: "dane-ee mismatch", s: setup{cert: &good, tlsa: tlsa(wrongName)},
			code: "4.7.5", reason: "TLSA mismatch for mx1.remote.test"},
		{name: "dane tlsa servfail", s: setup{cert: &good, tlsaFail: true},
			code: "4.7.5", reason: "DNSSEC lookup of TLSA records for mx1.remote.test failed"},
		{name: "override encrypt, no STARTTLS", s: setup{override: "encrypt"},
			code: "4.7.4", reason: "tls policy override for remote.test"},
		{name: "override encrypt, untrusted certificate is fine", s: setup{cert: &good, override: "encrypt"},
			delivered: true, tlsInfo: "policy=encrypt"},
		{name: "override verify, untrusted certificate", s: setup{cert: &good, override: "verify"},
			code: "4.7.5", reason: "tls policy override for remote.test"},
		{name: "override none beats mta-sts", s: setup{cert: &good, sts: enforce, override: "none"},
			delivered: true},
		{name: "override dane without tlsa", s: setup{cert: &good, override: "dane"},
			code: "4.7.5", reason: "no DNSSEC-secure TLSA records"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			p, port := startCertPeer(t, tt.s.cert)
			zone := &dnstest.Zone{
				MX:     map[string][]*net.MX{"remote.test": {{Host: "mx1.remote.test.", Pref: 10}}},
				A:      map[string][]netip.Addr{"mx1.remote.test": ip("127.0.0.1")},
				TXT:    map[string][]string{},
				TLSA:   map[string][]dnstest.TLSA{},
				Secure: map[string]bool{},
				Fail:   map[string]bool{},
			}
			var decoy *peer
			if tt.s.decoyMX {
				// Same port on 127.0.0.2: a server with a trusted certificate for its own name,
				// which would pass every check but the policy's mx list.
				decoy = &peer{got: map[string]string{}}
				srv := gosmtp.NewServer(decoy)
				srv.TLSConfig = &tls.Config{Certificates: []tls.Certificate{ca.Valid(t, "mx0.remote.test")}}
				ln, err := net.Listen("tcp", net.JoinHostPort("127.0.0.2", itoa(port)))
				if err != nil {
					t.Fatalf("127.0.0.2: %v", err)
				}
				go srv.Serve(ln)
				t.Cleanup(func() { srv.Close() })
				zone.MX["remote.test"] = append(zone.MX["remote.test"], &net.MX{Host: "mx0.remote.test.", Pref: 5})
				zone.A["mx0.remote.test"] = ip("127.0.0.2")
			}
			logs := &syncBuf{}
			log := slog.New(slog.NewTextHandler(logs, nil))
			e := &tlspolicy.Engine{Logger: log}
			if tt.s.trustCA {
				e.Roots = ca.Pool()
			} else {
				e.Roots = tlspolicytest.NewCA(t, "unrelated").Pool()
			}
			if tt.s.sts != "" {
				ps := tlspolicytest.StartPolicyServer(t, "remote.test", tt.s.sts)
				zone.TXT["_mta-sts.remote.test"] = []string{"v=STSv1; id=1"}
				e.STS = tlspolicy.NewSTS(zone, t.TempDir(), ps.Client(tlspolicy.DefaultHTTPClient()), log)
			}
			if tt.s.tlsa != nil || tt.s.tlsaFail || tt.s.override == "dane" {
				zone.Secure["remote.test"] = true
				zone.Secure["_"+itoa(port)+"._tcp.mx1.remote.test"] = true
				if tt.s.tlsa != nil {
					zone.TLSA["_"+itoa(port)+"._tcp.mx1.remote.test"] = tt.s.tlsa
				}
				if tt.s.tlsaFail {
					zone.Fail["_"+itoa(port)+"._tcp.mx1.remote.test"] = true
				}
				e.DANE = &tlspolicy.SecureResolver{Addr: dnstest.Server(t, zone), Timeout: 2 * time.Second}
			}
			if tt.s.override != "" {
				m, ok := tlspolicy.ParseOverride(tt.s.override)
				if !ok {
					t.Fatal(tt.s.override)
				}
				e.Overrides = map[string]tlspolicy.Mode{"remote.test": m}
			}
			tr := &Transport{Resolver: zone, Hostname: "mx.example.test", Port: port, TLSPolicy: e, Logger: log}
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			res, err := tr.Deliver(ctx, message("Subject: x\r\n\r\ny\r\n"), rcpts("remote.test", "bob@remote.test"))
			if decoy != nil && decoy.delivered() != 0 {
				t.Fatal("the MX outside the MTA-STS policy got the message")
			}
			if !tt.delivered {
				r, ok := err.(*smtp.Reply)
				if !ok || r.Code != 451 || r.Enhanced.String() != tt.code || !strings.Contains(r.Text, tt.reason) {
					t.Fatalf("got %v %+v; want 451 %s ...%s...", err, res, tt.code, tt.reason)
				}
				if p.delivered() != 0 {
					t.Fatal("message reached the peer although the policy forbids it")
				}
				return
			}
			if err != nil || res[0].Reply != nil {
				t.Fatalf("not delivered: %v %+v", err, res)
			}
			if p.delivered() != 1 || res[0].RemoteMTA != "mx1.remote.test" {
				t.Fatalf("peer did not get the message (RemoteMTA %q)", res[0].RemoteMTA)
			}
			if !strings.Contains(res[0].TLS, tt.tlsInfo) || (tt.s.override == "none") != (res[0].TLS == "none") {
				t.Errorf("Result.TLS = %q, want %q", res[0].TLS, tt.tlsInfo)
			}
			if tt.logged != "" && !strings.Contains(logs.String(), tt.logged) {
				t.Errorf("log lacks %q:\n%s", tt.logged, logs.String())
			}
		})
	}
}

// TestDANEUsesSecureMX: with DANE on and a signed zone, the hosts come from the validated MX
// RRset, not from the ordinary resolver (which here points at an impostor that would accept).
func TestDANEUsesSecureMX(t *testing.T) {
	ca := tlspolicytest.NewCA(t, "mx CA")
	good := ca.Valid(t, "mx1.remote.test")
	p, port := startCertPeer(t, &good)
	impostor := &peer{got: map[string]string{}}
	srv := gosmtp.NewServer(impostor)
	ln, err := net.Listen("tcp", net.JoinHostPort("127.0.0.2", itoa(port)))
	if err != nil {
		t.Fatalf("127.0.0.2: %v", err)
	}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	tlsaName := "_" + itoa(port) + "._tcp.mx1.remote.test"
	signed := &dnstest.Zone{
		MX:     map[string][]*net.MX{"remote.test": {{Host: "mx1.remote.test.", Pref: 10}}},
		TLSA:   map[string][]dnstest.TLSA{tlsaName: {{Usage: 3, Selector: 0, MatchingType: 2, Data: tlspolicytest.TLSAData(0, 2, good.Leaf)}}},
		Secure: map[string]bool{"remote.test": true, tlsaName: true},
	}
	ordinary := &dnstest.Zone{
		MX: map[string][]*net.MX{"remote.test": {{Host: "evil.remote.test.", Pref: 10}}},
		A:  map[string][]netip.Addr{"mx1.remote.test": ip("127.0.0.1"), "evil.remote.test": ip("127.0.0.2")},
	}
	e := &tlspolicy.Engine{DANE: &tlspolicy.SecureResolver{Addr: dnstest.Server(t, signed), Timeout: 2 * time.Second}}
	tr := &Transport{Resolver: ordinary, Hostname: "mx.example.test", Port: port, TLSPolicy: e}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	res, err := tr.Deliver(ctx, message("Subject: x\r\n\r\ny\r\n"), rcpts("remote.test", "bob@remote.test"))
	if err != nil || res[0].Reply != nil || res[0].RemoteMTA != "mx1.remote.test" || !strings.Contains(res[0].TLS, "verified=dane") {
		t.Fatalf("%v %+v", err, res)
	}
	if p.delivered() != 1 || impostor.delivered() != 0 {
		t.Fatalf("mx1 got %d, impostor got %d", p.delivered(), impostor.delivered())
	}
}

// TestDANESecureMXServfailDefers: with DANE on, a validating resolver that cannot answer the MX
// query (what stripping DNSSEC looks like) defers, even though the ordinary resolver answered.
func TestDANESecureMXServfailDefers(t *testing.T) {
	p, port := startCertPeer(t, nil)
	ordinary := &dnstest.Zone{
		MX: map[string][]*net.MX{"remote.test": {{Host: "mx1.remote.test.", Pref: 10}}},
		A:  map[string][]netip.Addr{"mx1.remote.test": ip("127.0.0.1")},
	}
	validating := &dnstest.Zone{Fail: map[string]bool{"remote.test": true}}
	e := &tlspolicy.Engine{DANE: &tlspolicy.SecureResolver{Addr: dnstest.Server(t, validating), Timeout: 2 * time.Second}}
	tr := &Transport{Resolver: ordinary, Hostname: "mx.example.test", Port: port, TLSPolicy: e}
	_, err := tr.Deliver(context.Background(), message("x\r\n"), rcpts("remote.test", "bob@remote.test"))
	r, ok := err.(*smtp.Reply)
	if !ok || r.Code != 451 || r.Enhanced.String() != "4.4.3" || !strings.Contains(r.Text, "DNSSEC lookup of MX for remote.test") {
		t.Fatalf("got %v", err)
	}
	if p.delivered() != 0 {
		t.Fatal("delivered despite the failed DNSSEC lookup")
	}
}
