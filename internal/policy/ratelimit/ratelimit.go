// Package ratelimit limits how fast one address and one network may connect and send: a token
// bucket per key, in memory, with a bounded number of keys.
package ratelimit

import (
	"context"
	"fmt"
	"net/netip"
	"sync"
	"time"

	"github.com/postamt/postamt/internal/policy"
	"github.com/postamt/postamt/internal/smtp"
)

// Limits are per minute; 0 disables that limit.
type Limits struct {
	ConnPerIP, ConnPerNet  float64
	MsgPerIP, MsgPerNet    float64
	IPv4Prefix, IPv6Prefix int // the "network" of a client: /24 and /64 by default
	MaxKeys                int // bound on remembered clients; 0 means 100000
}

// Limiter is the check: connections are counted at connect, messages at MAIL FROM.
type Limiter struct {
	lim Limits
	now func() time.Time

	mu      sync.Mutex
	buckets map[key]*bucket
}

type key struct {
	kind byte // 'c' connections, 'm' messages
	net  netip.Prefix
}

type bucket struct {
	tokens float64
	last   time.Time
}

// New returns a Limiter; now may be nil for the real clock.
func New(l Limits, now func() time.Time) *Limiter {
	if l.IPv4Prefix <= 0 || l.IPv4Prefix > 32 {
		l.IPv4Prefix = 24
	}
	if l.IPv6Prefix <= 0 || l.IPv6Prefix > 128 {
		l.IPv6Prefix = 64
	}
	if l.MaxKeys <= 0 {
		l.MaxKeys = 100000
	}
	if now == nil {
		now = time.Now
	}
	return &Limiter{lim: l, now: now, buckets: map[key]*bucket{}}
}

func (*Limiter) Name() string { return "ratelimit" }

// take spends one token from the bucket of k (rate per minute, burst equal to the rate).
func (l *Limiter) take(k key, rate float64, now time.Time) bool {
	b := l.buckets[k]
	if b == nil {
		if len(l.buckets) >= l.lim.MaxKeys {
			l.evict(now)
		}
		b = &bucket{tokens: rate, last: now}
		l.buckets[k] = b
	}
	b.tokens = min(rate, b.tokens+now.Sub(b.last).Minutes()*rate)
	b.last = now
	if b.tokens < 1 {
		return false
	}
	b.tokens--
	return true
}

// evict drops buckets that have refilled (they carry no information); if that is not enough,
// arbitrary ones, so that a flood of new addresses cannot grow the map without bound.
func (l *Limiter) evict(now time.Time) {
	for k, b := range l.buckets {
		if now.Sub(b.last) > time.Minute {
			delete(l.buckets, k)
		}
	}
	for k := range l.buckets {
		if len(l.buckets) < l.lim.MaxKeys*9/10 {
			break
		}
		delete(l.buckets, k)
	}
}

// Len is the number of remembered keys, for tests.
func (l *Limiter) Len() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.buckets)
}

func (l *Limiter) nets(ip netip.Addr) (netip.Prefix, netip.Prefix) {
	ip = ip.Unmap()
	bits := l.lim.IPv6Prefix
	if ip.Is4() {
		bits = l.lim.IPv4Prefix
	}
	host := netip.PrefixFrom(ip, ip.BitLen())
	n, _ := ip.Prefix(bits)
	return host, n
}

// allow checks the address and network limits of one kind; it names the one exceeded.
func (l *Limiter) allow(kind byte, ip netip.Addr, perIP, perNet float64) string {
	host, n := l.nets(ip)
	now := l.now()
	l.mu.Lock()
	defer l.mu.Unlock()
	if perIP > 0 && !l.take(key{kind, host}, perIP, now) {
		return "your address"
	}
	if perNet > 0 && !l.take(key{kind, n}, perNet, now) {
		return "your network " + n.String()
	}
	return ""
}

func (l *Limiter) CheckConn(ctx context.Context, c *policy.Conn) policy.Verdict {
	if c.Exempt() || !c.RemoteIP.IsValid() {
		return policy.Verdict{}
	}
	if who := l.allow('c', c.RemoteIP, l.lim.ConnPerIP, l.lim.ConnPerNet); who != "" {
		return policy.Verdict{Action: policy.Tempfail, Result: "connections", Reason: "connection rate of " + who,
			Reply: smtp.NewReply(421, smtp.EnhancedCode{4, 7, 0}, fmt.Sprintf("Too many connections from %s, slow down and try again later", who))}
	}
	return policy.Verdict{}
}

func (l *Limiter) CheckMail(ctx context.Context, t *policy.Txn) policy.Verdict {
	c := t.Conn
	if c.Exempt() || !c.RemoteIP.IsValid() {
		return policy.Verdict{}
	}
	if who := l.allow('m', c.RemoteIP, l.lim.MsgPerIP, l.lim.MsgPerNet); who != "" {
		return policy.Verdict{Action: policy.Tempfail, Result: "messages", Reason: "message rate of " + who,
			Reply: smtp.NewReply(451, smtp.EnhancedCode{4, 7, 1}, fmt.Sprintf("Too many messages from %s, slow down and try again later", who))}
	}
	return policy.Verdict{}
}
