package tlspolicy

import (
	"context"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/postamt/postamt/internal/dns"
	"github.com/postamt/postamt/internal/dns/dnstest"
	"github.com/postamt/postamt/internal/tlspolicy/tlspolicytest"
)

func startPolicyServer(t *testing.T, domain string) *tlspolicytest.PolicyServer {
	return tlspolicytest.StartPolicyServer(t, domain, "")
}

type fakeClock struct{ t time.Time }

func (c *fakeClock) now() time.Time { return c.t }

const policyA = "version: STSv1\nmode: enforce\nmx: mx1.remote.test\nmax_age: 3600\n"
const policyB = "version: STSv1\nmode: testing\nmx: *.remote.test\nmax_age: 3600\n"

func TestSTSCacheLifecycle(t *testing.T) {
	ps := startPolicyServer(t, "remote.test")
	ps.Set(policyA, 200, "text/plain")
	zone := &dnstest.Zone{TXT: map[string][]string{"_mta-sts.remote.test": {"v=STSv1; id=one"}}}
	clock := &fakeClock{t: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)}
	dir := t.TempDir()
	newSTS := func() *STS {
		s := NewSTS(zone, dir, ps.Client(DefaultHTTPClient()), nil)
		s.Now = clock.now
		return s
	}
	s := newSTS()
	ctx := context.Background()
	mode := func(p *Policy) string {
		if p == nil {
			return "nil"
		}
		return string(p.Mode) + " " + strings.Join(p.MX, ",")
	}

	if p := s.Lookup(ctx, "remote.test"); mode(p) != "enforce mx1.remote.test" || ps.Hits() != 1 {
		t.Fatalf("first lookup: %s, %d fetches", mode(p), ps.Hits())
	}
	// Same id, not expired: from cache.
	clock.t = clock.t.Add(30 * time.Minute)
	if p := s.Lookup(ctx, "remote.test"); mode(p) != "enforce mx1.remote.test" || ps.Hits() != 1 {
		t.Fatalf("cached lookup: %s, %d fetches", mode(p), ps.Hits())
	}
	// New id: refetch at once, even though the old policy has not expired.
	ps.Set(policyB, 200, "text/plain")
	zone.TXT["_mta-sts.remote.test"] = []string{"v=STSv1; id=two"}
	if p := s.Lookup(ctx, "remote.test"); mode(p) != "testing *.remote.test" || ps.Hits() != 2 {
		t.Fatalf("id change: %s, %d fetches", mode(p), ps.Hits())
	}
	// Restart: a new STS over the same directory knows the policy without fetching, and keeps
	// it when the server is down and the TXT record is gone (RFC 8461 §5.1).
	ps.Set("", 500, "text/plain")
	delete(zone.TXT, "_mta-sts.remote.test")
	s = newSTS()
	if p := s.Lookup(ctx, "remote.test"); mode(p) != "testing *.remote.test" || ps.Hits() != 2 {
		t.Fatalf("after restart: %s, %d fetches", mode(p), ps.Hits())
	}
	// A changed id whose fetch fails: the unexpired cached policy still applies.
	zone.TXT["_mta-sts.remote.test"] = []string{"v=STSv1; id=three"}
	if p := s.Lookup(ctx, "remote.test"); mode(p) != "testing *.remote.test" || ps.Hits() != 3 {
		t.Fatalf("failed refetch: %s, %d fetches", mode(p), ps.Hits())
	}
	// Expired: refetch; if that fails there is no policy any more.
	clock.t = clock.t.Add(2 * time.Hour)
	if p := s.Lookup(ctx, "remote.test"); p != nil || ps.Hits() != 4 {
		t.Fatalf("expired, fetch failing: %s, %d fetches", mode(p), ps.Hits())
	}
	ps.Set(policyA, 200, "text/plain")
	if p := s.Lookup(ctx, "remote.test"); mode(p) != "enforce mx1.remote.test" || ps.Hits() != 5 {
		t.Fatalf("expired, refetched: %s, %d fetches", mode(p), ps.Hits())
	}
	// Expiry also holds across restarts: the file says when.
	clock.t = clock.t.Add(2 * time.Hour)
	delete(zone.TXT, "_mta-sts.remote.test")
	if p := newSTS().Lookup(ctx, "remote.test"); p != nil {
		t.Fatalf("expired cache file used after restart: %s", mode(p))
	}
}

func TestSTSFetchRejects(t *testing.T) {
	ps := startPolicyServer(t, "remote.test")
	zone := &dnstest.Zone{TXT: map[string][]string{"_mta-sts.remote.test": {"v=STSv1; id=x"}}}
	for _, tt := range []struct {
		name, body, ctype string
		code              int
		client            *http.Client
	}{
		{"wrong content type", policyA, "text/html", 200, nil},
		{"not found", policyA, "text/plain", 404, nil},
		{"redirect", policyA, "text/plain", http.StatusFound, nil},
		{"too large", policyA + strings.Repeat("x: y\n", maxPolicyBody/5+1), "text/plain", 200, nil},
		{"invalid policy", "version: STSv1\nmode: enforce\n", "text/plain", 200, nil},
		{"untrusted certificate", policyA, "text/plain", 200, func() *http.Client {
			c := ps.Client(DefaultHTTPClient())
			c.Transport.(*http.Transport).TLSClientConfig.RootCAs = tlspolicytest.NewCA(t, "other").Pool()
			return c
		}()},
	} {
		t.Run(tt.name, func(t *testing.T) {
			ps.Set(tt.body, tt.code, tt.ctype)
			client := tt.client
			if client == nil {
				client = ps.Client(DefaultHTTPClient())
			}
			before := ps.Hits()
			s := NewSTS(zone, "", client, nil)
			if p := s.Lookup(context.Background(), "remote.test"); p != nil {
				t.Fatalf("accepted: %+v", p)
			}
			if tt.name != "untrusted certificate" && ps.Hits() == before {
				t.Fatal("server was not asked")
			}
		})
	}
	// Control: the same set-up with a good answer is accepted, so the rejections above are real.
	ps.Set(policyA, 200, "text/plain")
	if p := NewSTS(zone, "", ps.Client(DefaultHTTPClient()), nil).Lookup(context.Background(), "remote.test"); p == nil {
		t.Fatal("good policy refused")
	}
}

// TestSTSConcurrentFetchOnce: a burst of deliveries to one domain fetches the policy once.
func TestSTSConcurrentFetchOnce(t *testing.T) {
	ps := startPolicyServer(t, "remote.test")
	ps.Set(policyA, 200, "text/plain")
	zone := &dnstest.Zone{TXT: map[string][]string{"_mta-sts.remote.test": {"v=STSv1; id=one"}}}
	s := NewSTS(zone, t.TempDir(), ps.Client(DefaultHTTPClient()), nil)
	var wg sync.WaitGroup
	for range 20 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if p := s.Lookup(context.Background(), "remote.test"); p == nil {
				t.Error("no policy")
			}
		}()
	}
	wg.Wait()
	if n := ps.Hits(); n != 1 {
		t.Fatalf("%d fetches, want 1", n)
	}
}

// TestHTTPClientViaResolver: the policy host is resolved with the configured DNS servers.
func TestHTTPClientViaResolver(t *testing.T) {
	ps := startPolicyServer(t, "remote.test")
	zone := &dnstest.Zone{A: map[string][]netip.Addr{"mta-sts.remote.test": {netip.MustParseAddr("127.0.0.1")}}}
	c := HTTPClientVia(dns.System([]string{dnstest.Server(t, zone)}).Net())
	_, port, _ := net.SplitHostPort(ps.Srv.Listener.Addr().String())
	conn, err := c.Transport.(*http.Transport).DialContext(context.Background(), "tcp", "mta-sts.remote.test:"+port)
	if err != nil {
		t.Fatalf("mta-sts.remote.test not resolved through the zone: %v", err)
	}
	conn.Close()
	if c.CheckRedirect == nil || c.Timeout != 10*time.Second {
		t.Fatal("not the RFC 8461 client settings")
	}
}
