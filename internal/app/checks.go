package app

import (
	"fmt"
	"log/slog"
	"strings"
	"time"

	"github.com/postamt/postamt/internal/config"
	"github.com/postamt/postamt/internal/dns"
	"github.com/postamt/postamt/internal/mailauth"
	"github.com/postamt/postamt/internal/policy"
	"github.com/postamt/postamt/internal/policy/dnsbl"
	"github.com/postamt/postamt/internal/policy/greylist"
	"github.com/postamt/postamt/internal/policy/hostcheck"
	"github.com/postamt/postamt/internal/policy/ratelimit"
)

// checkDeps is what building the chain needs besides the configuration.
type checkDeps struct {
	Resolver dns.Resolver
	Now      func() time.Time
	Logger   *slog.Logger
}

// builtChecks is the MX listener's chain and what its checks hold open.
type builtChecks struct {
	Chain      *policy.Chain
	GreetDelay time.Duration
	closers    []func() error
}

// add appends a configured check; the entry takes the sub-table's timeout and fail rule.
func (b *builtChecks) add(c policy.Check, cc config.CheckCommon) {
	b.Chain.Entries = append(b.Chain.Entries, policy.Entry{Check: c, Timeout: cc.Timeout.D(), FailClosed: cc.FailClosed})
}

// Close releases what the checks hold (the greylist database).
func (b *builtChecks) Close() error {
	var first error
	for _, f := range b.closers {
		if err := f(); err != nil && first == nil {
			first = err
		}
	}
	return first
}

// buildChecks makes the MX listener's chain from [checks], in the order a message meets them:
// allowlist (it exempts clients from what follows), rate limits, pre-greet, DNS block lists,
// FCrDNS (connect); HELO; SPF (HELO and MAIL); greylisting (RCPT); DKIM, ARC, DMARC and then
// the Authentication-Results header (DATA). Content checks follow (contentChecks).
func buildChecks(cfg *config.Config, d checkDeps) (*builtChecks, error) {
	k := cfg.Checks
	b := &builtChecks{Chain: &policy.Chain{RejectScore: k.RejectScore}}
	if a := k.Allowlist; a.Enabled {
		trusted, err := config.ParseNetworks(a.TrustedNetworks)
		if err != nil {
			return nil, fmt.Errorf("checks.allowlist.trusted_networks: %w", err)
		}
		lists, err := dnsLists(a.Lists)
		if err != nil {
			return nil, fmt.Errorf("checks.allowlist.lists: %w", err)
		}
		b.add(&dnsbl.Allowlist{Resolver: d.Resolver, Trusted: trusted, Lists: lists}, a.CheckCommon)
	}
	if r := k.RateLimit; r.Enabled {
		b.add(ratelimit.New(ratelimit.Limits{
			ConnPerIP: r.ConnectionsPerMinuteIP, ConnPerNet: r.ConnectionsPerMinuteNet,
			MsgPerIP: r.MessagesPerMinuteIP, MsgPerNet: r.MessagesPerMinuteNet,
			IPv4Prefix: r.IPv4Prefix, IPv6Prefix: r.IPv6Prefix, MaxKeys: r.MaxTracked,
		}, d.Now), r.CheckCommon)
	}
	if p := k.PreGreet; p.Enabled {
		b.GreetDelay = p.Delay.D()
		b.add(&hostcheck.PreGreet{Action: config.Action(p.Action)}, p.CheckCommon)
	}
	if l := k.DNSBL; l.Enabled {
		lists, err := dnsLists(l.Lists)
		if err != nil {
			return nil, fmt.Errorf("checks.dnsbl.lists: %w", err)
		}
		b.add(&dnsbl.Blocklist{Resolver: d.Resolver, Lists: lists}, l.CheckCommon)
	}
	if f := k.FCrDNS; f.Enabled {
		b.add(&hostcheck.FCrDNS{Resolver: d.Resolver, OnFail: config.Action(f.Action)}, f.CheckCommon)
	}
	if h := k.Helo; h.Enabled {
		// "localhost" (the default local domain) is every machine's name, not a claim to be us.
		var names []string
		for _, n := range append([]string{cfg.Hostname}, cfg.Local.Domains...) {
			if strings.Contains(n, ".") {
				names = append(names, strings.ToLower(n))
			}
		}
		b.add(&hostcheck.Helo{OurNames: names, Strict: h.Strict, Action: config.Action(h.Action)}, h.CheckCommon)
	}
	if s := k.SPF; s.Enabled {
		b.add(&mailauth.SPFCheck{Resolver: d.Resolver, OnFail: config.Action(s.OnFail), OnSoftfail: config.Action(s.OnSoftfail)}, s.CheckCommon)
	}
	if g := k.Greylist; g.Enabled {
		gl, err := greylist.Open(greylist.Options{
			Path: cfg.Path(g.Database), Delay: g.Delay.D(), RetryWindow: g.RetryWindow.D(), AllowTTL: g.AllowTTL.D(),
			IPv4Prefix: g.IPv4Prefix, IPv6Prefix: g.IPv6Prefix, Now: d.Now,
		})
		if err != nil {
			return nil, err
		}
		b.closers = append(b.closers, gl.Close)
		b.add(gl, g.CheckCommon)
	}
	auth := false
	if c := k.DKIM; c.Enabled {
		auth = true
		b.add(&mailauth.DKIMCheck{Resolver: d.Resolver, OnFail: config.Action(c.OnFail)}, c.CheckCommon)
	}
	if c := k.ARC; c.Enabled {
		// Before DMARC, which reads whether a trusted sealer vouches for the message.
		auth = true
		trusted := make([]string, len(c.TrustedSealers))
		for i, s := range c.TrustedSealers {
			trusted[i] = strings.ToLower(s)
		}
		b.add(&mailauth.ARCCheck{Resolver: d.Resolver, TrustedSealers: trusted}, c.CheckCommon)
	}
	if c := k.DMARC; c.Enabled {
		auth = true
		b.add(&mailauth.DMARCCheck{Resolver: d.Resolver, OnReject: config.Action(c.OnReject), OnQuarantine: config.Action(c.OnQuarantine)}, c.CheckCommon)
	}
	// Content checks (rspamd, ClamAV, milters, attachments) after DMARC, so that a refused
	// forgery costs no scan.
	content, err := contentChecks(cfg)
	if err != nil {
		b.Close()
		return nil, err
	}
	b.Chain.Entries = append(b.Chain.Entries, content...)
	if auth || k.SPF.Enabled {
		// Not a configurable check: whenever results exist they are reported, and forged
		// reports in our name are renamed. It reads only the header, in memory.
		b.Chain.Entries = append(b.Chain.Entries, policy.Entry{Check: &mailauth.AuthResultsCheck{AuthServID: cfg.Hostname}, Timeout: 10 * time.Second})
	}
	return b, nil
}

func dnsLists(ls []config.DNSList) ([]dnsbl.List, error) {
	out := make([]dnsbl.List, 0, len(ls))
	for _, l := range ls {
		codes, err := config.ParseCodes(l.Codes)
		if err != nil {
			return nil, err
		}
		action := policy.Reject
		if l.Action != "" {
			action = config.Action(l.Action)
		}
		out = append(out, dnsbl.List{Zone: l.Zone, Codes: codes, Action: action, Score: l.Score})
	}
	return out, nil
}
