package config

import (
	"fmt"
	"net/netip"
	"strings"
	"time"

	"github.com/postamt/postamt/internal/policy"
)

// Checks configures the policy chain of the inbound (MX) listener. Each check has its own
// sub-table with the common keys of CheckCommon; actions are the names policy.ParseAction
// reads (continue, tag, quarantine, tempfail, reject).
type Checks struct {
	// RejectScore refuses a message whose checks' scores add up to it; 0 disables.
	RejectScore float64 `toml:"reject_score"`

	// Connection-level defences and sender authentication, in the order they run.
	Allowlist AllowlistCheck `toml:"allowlist"`
	RateLimit RateLimitCheck `toml:"ratelimit"`
	PreGreet  PreGreetCheck  `toml:"pregreet"`
	DNSBL     DNSBLCheck     `toml:"dnsbl"`
	FCrDNS    FCrDNSCheck    `toml:"fcrdns"`
	Helo      HeloCheck      `toml:"helo"`
	SPF       SPFCheck       `toml:"spf"`
	Greylist  GreylistCheck  `toml:"greylist"`
	DKIM      DKIMCheck      `toml:"dkim"`
	ARC       ARCCheck       `toml:"arc"`
	DMARC     DMARCCheck     `toml:"dmarc"`

	// Content scanning (internal/app/contentchecks.go; types in content.go).
	Rspamd      Rspamd      `toml:"rspamd"`
	ClamAV      ClamAV      `toml:"clamav"`
	Milters     []Milter    `toml:"milter"`
	Attachments Attachments `toml:"attachments"`
}

// CheckCommon are the keys every check has.
type CheckCommon struct {
	Enabled bool `toml:"enabled"`
	// Timeout bounds one call of the check.
	Timeout Duration `toml:"timeout"`
	// FailClosed: when the check cannot decide (DNS or database down, timeout) the client
	// gets 451 4.7.1 and retries; otherwise (fail-open) the check is skipped and logged.
	FailClosed bool `toml:"fail_closed"`
}

// DNSList is one DNS block or allow list zone.
type DNSList struct {
	Zone string `toml:"zone"`
	// Codes are the answers that count ("127.0.0.2", "127.0.0.0/24"); empty: any 127/8 answer
	// except 127.255.255.0/24 (the "query refused" codes).
	Codes  []string `toml:"codes"`
	Action string   `toml:"action"` // block lists only; "" means reject
	Score  float64  `toml:"score"`  // block lists only
}

type AllowlistCheck struct {
	CheckCommon
	// TrustedNetworks are exempt from every built-in check (like Postfix's mynetworks).
	TrustedNetworks []string  `toml:"trusted_networks"`
	Lists           []DNSList `toml:"lists"`
}

type RateLimitCheck struct {
	CheckCommon
	ConnectionsPerMinuteIP  float64 `toml:"connections_per_minute_ip"`
	ConnectionsPerMinuteNet float64 `toml:"connections_per_minute_net"`
	MessagesPerMinuteIP     float64 `toml:"messages_per_minute_ip"`
	MessagesPerMinuteNet    float64 `toml:"messages_per_minute_net"`
	IPv4Prefix              int     `toml:"ipv4_prefix"`
	IPv6Prefix              int     `toml:"ipv6_prefix"`
	MaxTracked              int     `toml:"max_tracked"`
}

type PreGreetCheck struct {
	CheckCommon
	Delay  Duration `toml:"delay"`
	Action string   `toml:"action"`
}

type DNSBLCheck struct {
	CheckCommon
	Lists []DNSList `toml:"lists"`
}

type FCrDNSCheck struct {
	CheckCommon
	Action string `toml:"action"`
}

type HeloCheck struct {
	CheckCommon
	Strict bool   `toml:"strict"`
	Action string `toml:"action"`
}

type SPFCheck struct {
	CheckCommon
	OnFail     string `toml:"on_fail"`
	OnSoftfail string `toml:"on_softfail"`
}

type GreylistCheck struct {
	CheckCommon
	Database    string   `toml:"database"`
	Delay       Duration `toml:"delay"`
	RetryWindow Duration `toml:"retry_window"`
	AllowTTL    Duration `toml:"allow_ttl"`
	IPv4Prefix  int      `toml:"ipv4_prefix"`
	IPv6Prefix  int      `toml:"ipv6_prefix"`
}

type DKIMCheck struct {
	CheckCommon
	OnFail string `toml:"on_fail"`
}

type ARCCheck struct {
	CheckCommon
	// TrustedSealers are intermediaries (mailing lists, forwarders) whose passing ARC chain
	// makes DMARC's reject or quarantine not apply, matched against the newest seal's d=.
	TrustedSealers []string `toml:"trusted_sealers"`
}

type DMARCCheck struct {
	CheckCommon
	OnReject     string `toml:"on_reject"`
	OnQuarantine string `toml:"on_quarantine"`
}

func common(enabled bool, timeout time.Duration) CheckCommon {
	return CheckCommon{Enabled: enabled, Timeout: Duration(timeout)}
}

// defaultChecks: sender authentication on and fail-open; the reputation checks that need a
// choice from the operator (which DNS lists, whether to delay mail) off.
func defaultChecks() Checks {
	c := Checks{
		Allowlist: AllowlistCheck{CheckCommon: common(true, 10*time.Second), TrustedNetworks: []string{"127.0.0.0/8", "::1/128"}},
		RateLimit: RateLimitCheck{CheckCommon: common(true, time.Second),
			ConnectionsPerMinuteIP: 60, ConnectionsPerMinuteNet: 300, MessagesPerMinuteIP: 120, MessagesPerMinuteNet: 600,
			IPv4Prefix: 24, IPv6Prefix: 64, MaxTracked: 100000},
		PreGreet: PreGreetCheck{CheckCommon: common(false, time.Second), Delay: Duration(6 * time.Second), Action: "reject"},
		DNSBL:    DNSBLCheck{CheckCommon: common(false, 10*time.Second)},
		FCrDNS:   FCrDNSCheck{CheckCommon: common(true, 10*time.Second), Action: "continue"},
		Helo:     HeloCheck{CheckCommon: common(true, time.Second), Action: "reject"},
		SPF:      SPFCheck{CheckCommon: common(true, 20*time.Second), OnFail: "continue", OnSoftfail: "continue"},
		Greylist: GreylistCheck{CheckCommon: common(false, 5*time.Second), Database: "greylist.db",
			Delay: Duration(5 * time.Minute), RetryWindow: Duration(24 * time.Hour), AllowTTL: Duration(35 * 24 * time.Hour),
			IPv4Prefix: 24, IPv6Prefix: 64},
		DKIM:  DKIMCheck{CheckCommon: common(true, 20*time.Second), OnFail: "continue"},
		ARC:   ARCCheck{CheckCommon: common(true, 20*time.Second), TrustedSealers: []string{}},
		DMARC: DMARCCheck{CheckCommon: common(true, 20*time.Second), OnReject: "reject", OnQuarantine: "quarantine"},
	}
	defaultContentChecks(&c)
	return c
}

// Action returns a validated action name as a policy.Action (Continue for "").
func Action(s string) policy.Action {
	a, _ := policy.ParseAction(s)
	return a
}

// ParseCodes reads DNS list return codes: addresses or prefixes.
func ParseCodes(codes []string) ([]netip.Prefix, error) {
	var out []netip.Prefix
	for _, c := range codes {
		if p, err := netip.ParsePrefix(c); err == nil {
			out = append(out, p.Masked())
			continue
		}
		a, err := netip.ParseAddr(c)
		if err != nil {
			return nil, fmt.Errorf("%q is not an address or prefix such as 127.0.0.2 or 127.0.0.0/24", c)
		}
		out = append(out, netip.PrefixFrom(a, a.BitLen()))
	}
	return out, nil
}

// ParseNetworks reads CIDR prefixes; a bare address is a one-address network.
func ParseNetworks(nets []string) ([]netip.Prefix, error) { return ParseCodes(nets) }

func (c *Config) validateChecks(v *validator) {
	k := &c.Checks
	if k.RejectScore < 0 {
		v.addf("checks.reject_score", "must not be negative")
	}
	action := func(opt, s string, allowed ...policy.Action) {
		a, err := policy.ParseAction(s)
		if err != nil {
			v.addf(opt, "%v", err)
			return
		}
		if len(allowed) > 0 {
			for _, x := range allowed {
				if a == x {
					return
				}
			}
			names := make([]string, len(allowed))
			for i, x := range allowed {
				names[i] = x.String()
			}
			v.addf(opt, "%q is not possible here; use one of: %s", s, strings.Join(names, ", "))
		}
	}
	com := func(name string, cc CheckCommon) {
		if cc.Timeout <= 0 {
			v.addf("checks."+name+".timeout", "must be positive")
		}
	}
	// Refusals at connect or HELO cannot quarantine or tag a message that does not exist yet.
	connActions := []policy.Action{policy.Continue, policy.Tempfail, policy.Reject}
	com("allowlist", k.Allowlist.CheckCommon)
	if _, err := ParseNetworks(k.Allowlist.TrustedNetworks); err != nil {
		v.addf("checks.allowlist.trusted_networks", "%v", err)
	}
	lists := func(opt string, ls []DNSList, block bool) {
		for i, l := range ls {
			o := fmt.Sprintf("%s[%d]", opt, i)
			if l.Zone == "" || strings.ContainsAny(l.Zone, " \t/") {
				v.addf(o+".zone", "must be a DNS zone such as zen.example.org")
			}
			if _, err := ParseCodes(l.Codes); err != nil {
				v.addf(o+".codes", "%v", err)
			}
			if block && l.Action != "" {
				action(o+".action", l.Action, connActions...)
			} else if l.Action != "" {
				v.addf(o+".action", "an allow list has no action")
			}
		}
	}
	lists("checks.allowlist.lists", k.Allowlist.Lists, false)
	r := k.RateLimit
	com("ratelimit", r.CheckCommon)
	for opt, x := range map[string]float64{"connections_per_minute_ip": r.ConnectionsPerMinuteIP, "connections_per_minute_net": r.ConnectionsPerMinuteNet,
		"messages_per_minute_ip": r.MessagesPerMinuteIP, "messages_per_minute_net": r.MessagesPerMinuteNet} {
		if x < 0 {
			v.addf("checks.ratelimit."+opt, "must not be negative (0 disables)")
		}
	}
	prefixes := func(name string, p4, p6 int) {
		if p4 < 8 || p4 > 32 {
			v.addf("checks."+name+".ipv4_prefix", "must be from 8 to 32, got %d", p4)
		}
		if p6 < 16 || p6 > 128 {
			v.addf("checks."+name+".ipv6_prefix", "must be from 16 to 128, got %d", p6)
		}
	}
	prefixes("ratelimit", r.IPv4Prefix, r.IPv6Prefix)
	v.atLeast("checks.ratelimit.max_tracked", r.MaxTracked, 100)
	com("pregreet", k.PreGreet.CheckCommon)
	if d := k.PreGreet.Delay.D(); d <= 0 || d > 30*time.Second {
		v.addf("checks.pregreet.delay", "must be between 0 and 30s, got %s", d)
	}
	action("checks.pregreet.action", k.PreGreet.Action, connActions...)
	com("dnsbl", k.DNSBL.CheckCommon)
	if k.DNSBL.Enabled && len(k.DNSBL.Lists) == 0 {
		v.addf("checks.dnsbl.lists", "at least one list is needed when the check is enabled")
	}
	lists("checks.dnsbl.lists", k.DNSBL.Lists, true)
	com("fcrdns", k.FCrDNS.CheckCommon)
	action("checks.fcrdns.action", k.FCrDNS.Action, connActions...)
	com("helo", k.Helo.CheckCommon)
	action("checks.helo.action", k.Helo.Action, connActions...)
	com("spf", k.SPF.CheckCommon)
	action("checks.spf.on_fail", k.SPF.OnFail, connActions...)
	action("checks.spf.on_softfail", k.SPF.OnSoftfail, connActions...)
	g := k.Greylist
	com("greylist", g.CheckCommon)
	if g.Database == "" {
		v.addf("checks.greylist.database", "must not be empty")
	}
	if g.Delay <= 0 || g.RetryWindow <= g.Delay {
		v.addf("checks.greylist.retry_window", "must be longer than delay (%s), got %s", g.Delay.D(), g.RetryWindow.D())
	}
	if g.AllowTTL <= 0 {
		v.addf("checks.greylist.allow_ttl", "must be positive")
	}
	prefixes("greylist", g.IPv4Prefix, g.IPv6Prefix)
	com("dkim", k.DKIM.CheckCommon)
	action("checks.dkim.on_fail", k.DKIM.OnFail)
	com("arc", k.ARC.CheckCommon)
	for i, d := range k.ARC.TrustedSealers {
		if d == "" || len(d) > 253 || strings.ContainsAny(d, " \t/@:;,") || strings.HasPrefix(d, ".") || strings.HasSuffix(d, ".") || !strings.Contains(d, ".") {
			v.addf(fmt.Sprintf("checks.arc.trusted_sealers[%d]", i), "%q is not a domain such as lists.example.org (the d= of the sealer's ARC-Seal)", d)
		}
	}
	if len(k.ARC.TrustedSealers) > 0 && !k.ARC.Enabled {
		v.addf("checks.arc.trusted_sealers", "has no effect while checks.arc is disabled")
	}
	com("dmarc", k.DMARC.CheckCommon)
	action("checks.dmarc.on_reject", k.DMARC.OnReject)
	action("checks.dmarc.on_quarantine", k.DMARC.OnQuarantine)
}
