package tlspolicy

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"mime"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/postamt/postamt/internal/dns"
)

// maxPolicyBody caps the policy download; RFC 8461 §3.3 suggests 64 KiB.
const maxPolicyBody = 64 << 10

// DefaultHTTPClient is the policy fetcher RFC 8461 §3.3 asks for: certificates verified against
// the system roots, no redirects, a short timeout.
func DefaultHTTPClient() *http.Client {
	return &http.Client{
		Timeout: 10 * time.Second,
		CheckRedirect: func(*http.Request, []*http.Request) error {
			return http.ErrUseLastResponse // a 3xx is then refused as "not 200"
		},
	}
}

// HTTPClientVia is DefaultHTTPClient resolving names through r, so that the policy host is
// looked up with the same DNS servers as everything else (outbound.dns_servers).
func HTTPClientVia(r *net.Resolver) *http.Client {
	c := DefaultHTTPClient()
	t := http.DefaultTransport.(*http.Transport).Clone()
	t.DialContext = (&net.Dialer{Timeout: 10 * time.Second, Resolver: r}).DialContext
	c.Transport = t
	return c
}

// STS finds, fetches and caches MTA-STS policies.
//
// The cache is one small JSON file per domain under Dir, written by rename. A policy is read at
// most once per domain per process and rewritten only when it changes, so a database would add
// a schema and a dependency for nothing; files are also easy to inspect and delete by hand.
type STS struct {
	Resolver dns.Resolver
	HTTP     *http.Client // nil: DefaultHTTPClient
	Dir      string       // cache directory, created on first write
	Now      func() time.Time
	Logger   *slog.Logger

	mu  sync.Mutex
	mem map[string]*cached
	// fetching serialises fetches per domain, so a burst of mail to one domain fetches once
	// while a slow policy server does not hold up other domains.
	fetching map[string]*sync.Mutex
}

// cached is a policy as stored: the TXT id it came with and when it expires.
type cached struct {
	Domain  string    `json:"domain"`
	ID      string    `json:"id"`
	Fetched time.Time `json:"fetched"`
	Expires time.Time `json:"expires"`
	Body    string    `json:"body"`
	policy  *Policy
}

// NewSTS returns an MTA-STS client that caches under dir.
func NewSTS(r dns.Resolver, dir string, client *http.Client, log *slog.Logger) *STS {
	return &STS{Resolver: r, HTTP: client, Dir: dir, Logger: log}
}

func (s *STS) now() time.Time {
	if s.Now != nil {
		return s.Now()
	}
	return time.Now()
}

func (s *STS) log() *slog.Logger {
	if s.Logger != nil {
		return s.Logger
	}
	return slog.New(slog.DiscardHandler)
}

// Lookup returns domain's policy, or nil when it has none (or only one that cannot be had and
// nothing valid is cached). Errors are never returned: RFC 8461 §5 makes MTA-STS fail open when
// no policy is known, and §5.1 says to keep using a cached one when discovery or fetch fails.
func (s *STS) Lookup(ctx context.Context, domain string) *Policy {
	domain = strings.ToLower(strings.TrimSuffix(domain, "."))
	now := s.now()
	c := s.load(domain)
	if c != nil && !now.Before(c.Expires) {
		c = nil
	}
	txts, err := s.Resolver.LookupTXT(ctx, "_mta-sts."+domain)
	id, ok := parseTXT(txts)
	if err != nil || !ok {
		// No (usable) record: an unexpired cached policy still applies (§5.1), so that
		// stripping the TXT record on the path does not downgrade us.
		if c != nil {
			return c.policy
		}
		return nil
	}
	if c != nil && c.ID == id {
		return c.policy
	}
	fm := s.fetchLock(domain)
	fm.Lock()
	defer fm.Unlock()
	// Another delivery may have fetched it while we waited.
	if c2 := s.load(domain); c2 != nil && c2.ID == id && now.Before(c2.Expires) {
		return c2.policy
	}
	p, body, err := s.get(ctx, domain)
	if err != nil {
		s.log().Warn("mta-sts policy fetch failed", "domain", domain, "id", id, "err", err, "using_cached", c != nil)
		if c != nil {
			return c.policy
		}
		return nil
	}
	nc := &cached{Domain: domain, ID: id, Fetched: now, Expires: now.Add(time.Duration(p.MaxAge) * time.Second), Body: body, policy: p}
	if err := s.store(nc); err != nil {
		s.log().Warn("mta-sts cache write failed", "domain", domain, "err", err)
	}
	return p
}

// get downloads and parses the policy (RFC 8461 §3.3).
func (s *STS) get(ctx context.Context, domain string) (*Policy, string, error) {
	client := s.HTTP
	if client == nil {
		client = DefaultHTTPClient()
	}
	url := "https://mta-sts." + domain + "/.well-known/mta-sts.txt"
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return nil, "", err
	}
	resp, err := client.Do(req)
	if err != nil {
		return nil, "", err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, "", fmt.Errorf("%s: HTTP status %s", url, resp.Status)
	}
	if mt, _, err := mime.ParseMediaType(resp.Header.Get("Content-Type")); err != nil || mt != "text/plain" {
		return nil, "", fmt.Errorf("%s: content type %q, want text/plain", url, resp.Header.Get("Content-Type"))
	}
	b, err := io.ReadAll(io.LimitReader(resp.Body, maxPolicyBody+1))
	if err != nil {
		return nil, "", fmt.Errorf("%s: %w", url, err)
	}
	if len(b) > maxPolicyBody {
		return nil, "", fmt.Errorf("%s: policy larger than %d bytes", url, maxPolicyBody)
	}
	p, err := ParsePolicy(string(b))
	if err != nil {
		return nil, "", fmt.Errorf("%s: %w", url, err)
	}
	return p, string(b), nil
}

func (s *STS) fetchLock(domain string) *sync.Mutex {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.fetching == nil {
		s.fetching = map[string]*sync.Mutex{}
	}
	m, ok := s.fetching[domain]
	if !ok {
		m = &sync.Mutex{}
		s.fetching[domain] = m
	}
	return m
}

func (s *STS) file(domain string) string { return filepath.Join(s.Dir, domain+".json") }

// load returns the cached entry from memory, else from disk; nil when there is none.
func (s *STS) load(domain string) *cached {
	s.mu.Lock()
	defer s.mu.Unlock()
	if c, ok := s.mem[domain]; ok {
		return c
	}
	if s.mem == nil {
		s.mem = map[string]*cached{}
	}
	var c *cached
	if s.Dir != "" && validPattern(domain) && !strings.HasPrefix(domain, "*") {
		if b, err := os.ReadFile(s.file(domain)); err == nil {
			var fc cached
			if err := json.Unmarshal(b, &fc); err == nil && fc.Domain == domain {
				if p, err := ParsePolicy(fc.Body); err == nil {
					fc.policy = p
					c = &fc
				}
			}
		} else if !errors.Is(err, os.ErrNotExist) {
			s.log().Warn("mta-sts cache read failed", "domain", domain, "err", err)
		}
	}
	s.mem[domain] = c
	return c
}

func (s *STS) store(c *cached) error {
	s.mu.Lock()
	if s.mem == nil {
		s.mem = map[string]*cached{}
	}
	s.mem[c.Domain] = c
	s.mu.Unlock()
	if s.Dir == "" || !validPattern(c.Domain) || strings.HasPrefix(c.Domain, "*") {
		return nil
	}
	if err := os.MkdirAll(s.Dir, 0o700); err != nil {
		return err
	}
	b, err := json.Marshal(c)
	if err != nil {
		return err
	}
	tmp, err := os.CreateTemp(s.Dir, ".tmp-*")
	if err != nil {
		return err
	}
	if _, err := tmp.Write(b); err != nil {
		tmp.Close()
		os.Remove(tmp.Name())
		return err
	}
	if err := tmp.Close(); err != nil {
		os.Remove(tmp.Name())
		return err
	}
	return os.Rename(tmp.Name(), s.file(c.Domain))
}
