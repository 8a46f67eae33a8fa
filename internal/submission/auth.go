// Package submission holds what the submission listeners (RFC 6409 on 587, RFC 8314 on 465)
// add to the SMTP server: the authenticator with its brute-force guard, and the policy checks
// of the submission chain — sender authorisation, per-user sending limits and the RFC 6409 §8
// fix-ups. DKIM signing is internal/mailauth's; app puts it last in the same chain.
package submission

import (
	"context"
	"errors"
	"net/netip"
	"sync"
	"time"

	"github.com/postamt/postamt/internal/scram"
	"github.com/postamt/postamt/internal/smtp"
	"github.com/postamt/postamt/internal/users"
)

// GuardConfig limits failed AUTH attempts.
type GuardConfig struct {
	// MaxFailuresPerIP and MaxFailuresPerUser are the failures within Window that lock the
	// address or the account out for Lockout.
	MaxFailuresPerIP   int
	MaxFailuresPerUser int
	Window             time.Duration
	Lockout            time.Duration
	// BaseDelay is the pause before answering the first failure; it doubles with each further
	// failure of the same address or account, up to MaxDelay.
	BaseDelay time.Duration
	MaxDelay  time.Duration
}

// Guard counts failed AUTH attempts per client address (IPv6 per /64, since one host usually
// has a whole /64) and per account. Its state is in memory: a restart forgives everyone, which
// is acceptable for a delay and a lockout measured in minutes.
type Guard struct {
	cfg GuardConfig
	now func() time.Time

	mu      sync.Mutex
	entries map[string]*guardEntry
}

type guardEntry struct {
	failures    int
	last        time.Time
	lockedUntil time.Time
}

// maxGuardEntries bounds memory under an attack from many addresses.
const maxGuardEntries = 100000

// NewGuard returns a Guard; zero fields get defaults (10 per IP, 5 per user, 15 min window and
// lockout, 500 ms base delay, 8 s maximum).
func NewGuard(cfg GuardConfig, now func() time.Time) *Guard {
	if cfg.MaxFailuresPerIP <= 0 {
		cfg.MaxFailuresPerIP = 10
	}
	if cfg.MaxFailuresPerUser <= 0 {
		cfg.MaxFailuresPerUser = 5
	}
	if cfg.Window <= 0 {
		cfg.Window = 15 * time.Minute
	}
	if cfg.Lockout <= 0 {
		cfg.Lockout = 15 * time.Minute
	}
	if cfg.MaxDelay <= 0 {
		cfg.MaxDelay = 8 * time.Second
	}
	if now == nil {
		now = time.Now
	}
	return &Guard{cfg: cfg, now: now, entries: map[string]*guardEntry{}}
}

func ipKey(ip netip.Addr) string {
	if ip.Is6() && !ip.Is4In6() {
		p, _ := ip.Prefix(64)
		return "ip:" + p.String()
	}
	return "ip:" + ip.Unmap().String()
}

func userKey(user string) string { return "user:" + users.Normalize(user) }

// Locked reports whether the address or the account is locked out now.
func (g *Guard) Locked(ip netip.Addr, user string) bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	now := g.now()
	for _, k := range []string{ipKey(ip), userKey(user)} {
		if e := g.entries[k]; e != nil && now.Before(e.lockedUntil) {
			return true
		}
	}
	return false
}

// Fail records a failure and returns how long to wait before answering, and whether this
// failure locked the address or the account out.
func (g *Guard) Fail(ip netip.Addr, user string) (delay time.Duration, locked bool) {
	g.mu.Lock()
	defer g.mu.Unlock()
	now := g.now()
	if len(g.entries) >= maxGuardEntries {
		g.prune(now)
	}
	// Still full (a distributed attack with fresh names and addresses): forget arbitrary
	// entries that are not locked rather than grow without bound.
	for k, e := range g.entries {
		if len(g.entries) < maxGuardEntries {
			break
		}
		if !now.Before(e.lockedUntil) {
			delete(g.entries, k)
		}
	}
	n := 0
	for _, k := range []struct {
		key string
		max int
	}{{ipKey(ip), g.cfg.MaxFailuresPerIP}, {userKey(user), g.cfg.MaxFailuresPerUser}} {
		e := g.entries[k.key]
		if e == nil {
			e = &guardEntry{}
			g.entries[k.key] = e
		}
		if now.Sub(e.last) > g.cfg.Window {
			e.failures = 0
		}
		e.failures++
		e.last = now
		if e.failures >= k.max {
			e.lockedUntil = now.Add(g.cfg.Lockout)
			e.failures = 0
			locked = true
		}
		n = max(n, e.failures)
	}
	if g.cfg.BaseDelay > 0 && n > 0 {
		delay = g.cfg.BaseDelay
		for i := 1; i < n && delay < g.cfg.MaxDelay; i++ {
			delay *= 2
		}
		delay = min(delay, g.cfg.MaxDelay)
	}
	return delay, locked
}

// Succeed forgets the failures of the address and the account.
func (g *Guard) Succeed(ip netip.Addr, user string) {
	g.mu.Lock()
	defer g.mu.Unlock()
	for _, k := range []string{ipKey(ip), userKey(user)} {
		if e := g.entries[k]; e != nil && !g.now().Before(e.lockedUntil) {
			delete(g.entries, k)
		}
	}
}

func (g *Guard) prune(now time.Time) {
	for k, e := range g.entries {
		if now.Sub(e.last) > g.cfg.Window && !now.Before(e.lockedUntil) {
			delete(g.entries, k)
		}
	}
}

// Store is what the Authenticator needs of users.Store.
type Store interface {
	Authenticate(ctx context.Context, name, password string) (string, error)
	ScramCredentials(ctx context.Context, name string) (scram.Credentials, bool, error)
}

var (
	errLocked = smtp.NewReply(421, smtp.EnhancedCode{4, 7, 0}, "Too many failed authentication attempts; try again later")
	errTemp   = smtp.NewReply(454, smtp.EnhancedCode{4, 7, 0}, "Temporary authentication failure, try again later")
	errBad    = smtp.NewReply(535, smtp.EnhancedCode{5, 7, 8}, "Authentication credentials invalid")
)

// Authenticator checks credentials against the store under the Guard's limits. It implements
// smtpserver.Authenticator.
type Authenticator struct {
	Store Store
	Guard *Guard
	// Sleep waits out the failure delay (time.Sleep honouring ctx when nil; tests replace it).
	Sleep func(ctx context.Context, d time.Duration)
}

// Authenticate returns the canonical user name, or an *smtp.Reply: 535 5.7.8 for wrong
// credentials (after the delay), 421 4.7.0 while locked out (even for the right password, so
// that a lockout cannot be used to test guesses), 454 4.7.0 when the store fails.
func (a *Authenticator) Authenticate(ctx context.Context, ip netip.Addr, user, password string) (string, error) {
	if a.Guard.Locked(ip, user) {
		return "", errLocked
	}
	name, err := a.Store.Authenticate(ctx, user, password)
	switch {
	case err == nil:
		a.Guard.Succeed(ip, user)
		return name, nil
	case !errors.Is(err, users.ErrInvalid):
		return "", errTemp.WithErr(err)
	}
	delay, locked := a.Guard.Fail(ip, user)
	a.sleep(ctx, delay)
	if locked {
		return "", errLocked
	}
	return "", errBad
}

// ScramCredentials implements smtpserver.ScramAuthenticator under the same lockout.
func (a *Authenticator) ScramCredentials(ctx context.Context, ip netip.Addr, user string) (scram.Credentials, error) {
	if a.Guard.Locked(ip, user) {
		return scram.Credentials{}, errLocked
	}
	c, _, err := a.Store.ScramCredentials(ctx, user)
	if err != nil {
		return c, errTemp.WithErr(err)
	}
	return c, nil
}

// ScramDone implements smtpserver.ScramAuthenticator: a wrong proof counts as a failed AUTH.
func (a *Authenticator) ScramDone(ctx context.Context, ip netip.Addr, user string, ok bool) (string, error) {
	if ok {
		a.Guard.Succeed(ip, user)
		return users.Normalize(user), nil
	}
	delay, locked := a.Guard.Fail(ip, user)
	a.sleep(ctx, delay)
	if locked {
		return "", errLocked
	}
	return "", errBad
}

func (a *Authenticator) sleep(ctx context.Context, d time.Duration) {
	if d <= 0 {
		return
	}
	if a.Sleep != nil {
		a.Sleep(ctx, d)
		return
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
	case <-ctx.Done():
	}
}
