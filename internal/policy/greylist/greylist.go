// Package greylist defers mail from a (client network, sender, recipient) triplet seen for the
// first time; a real MTA retries after the delay, much spamware does not. Triplets and the
// networks that passed live in their own SQLite file, so a restart forgets nothing and the
// queue's database never waits on them.
package greylist

import (
	"context"
	"database/sql"
	"fmt"
	"net/netip"
	"net/url"
	"strings"
	"sync"
	"time"

	_ "modernc.org/sqlite" // the pure-Go driver the queue uses too

	"github.com/postamt/postamt/internal/mail"
	"github.com/postamt/postamt/internal/policy"
	"github.com/postamt/postamt/internal/smtp"
)

// Options configure a Greylist.
type Options struct {
	Path        string        // the database file
	Delay       time.Duration // how long a new triplet waits; 5m by default
	RetryWindow time.Duration // how long a waiting triplet is remembered; 24h by default
	// AllowTTL is how long a client network that passed stays allowed for every triplet
	// (auto-allow), renewed by each message; 35 days by default.
	AllowTTL               time.Duration
	IPv4Prefix, IPv6Prefix int
	Now                    func() time.Time
}

// Greylist is the RCPT-stage check.
type Greylist struct {
	opts Options
	db   *sql.DB

	mu        sync.Mutex
	lastPurge time.Time
}

const schema = `
CREATE TABLE IF NOT EXISTS triplet (
	net     TEXT NOT NULL,
	sender  TEXT NOT NULL,
	rcpt    TEXT NOT NULL,
	first   INTEGER NOT NULL, -- unix seconds of the first attempt
	expires INTEGER NOT NULL,
	PRIMARY KEY (net, sender, rcpt)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS allowed (
	net     TEXT PRIMARY KEY,
	expires INTEGER NOT NULL
) WITHOUT ROWID;
`

// Open opens (creating) the database.
func Open(o Options) (*Greylist, error) {
	if o.Delay <= 0 {
		o.Delay = 5 * time.Minute
	}
	if o.RetryWindow <= 0 {
		o.RetryWindow = 24 * time.Hour
	}
	if o.AllowTTL <= 0 {
		o.AllowTTL = 35 * 24 * time.Hour
	}
	if o.IPv4Prefix <= 0 || o.IPv4Prefix > 32 {
		o.IPv4Prefix = 24
	}
	if o.IPv6Prefix <= 0 || o.IPv6Prefix > 128 {
		o.IPv6Prefix = 64
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	// A lost greylist row costs one more deferral, not a message: no fsync per write.
	db, err := sql.Open("sqlite", "file:"+url.PathEscape(o.Path)+"?_pragma=journal_mode(WAL)&_pragma=synchronous(NORMAL)&_pragma=busy_timeout(10000)")
	if err != nil {
		return nil, fmt.Errorf("greylist: %w", err)
	}
	db.SetMaxOpenConns(1)
	if _, err := db.Exec(schema); err != nil {
		db.Close()
		return nil, fmt.Errorf("greylist: %s: %w", o.Path, err)
	}
	return &Greylist{opts: o, db: db}, nil
}

// Close closes the database.
func (g *Greylist) Close() error { return g.db.Close() }

func (*Greylist) Name() string { return "greylist" }

func (g *Greylist) network(ip netip.Addr) string {
	ip = ip.Unmap()
	bits := g.opts.IPv6Prefix
	if ip.Is4() {
		bits = g.opts.IPv4Prefix
	}
	p, _ := ip.Prefix(bits)
	return p.String()
}

// Decision is what Check found.
type Decision struct {
	Pass   bool
	Wait   time.Duration // for a deferred triplet: how long until a retry passes
	Reason string        // "allowed network", "new", "too early", "retried"
}

// Check records an attempt and decides.
func (g *Greylist) Check(ctx context.Context, ip netip.Addr, sender, rcpt string) (Decision, error) {
	now := g.opts.Now()
	unix := now.Unix()
	netw := g.network(ip)
	sender, rcpt = strings.ToLower(sender), strings.ToLower(rcpt)
	g.purge(ctx, now)
	var exp int64
	err := g.db.QueryRowContext(ctx, `SELECT expires FROM allowed WHERE net = ?`, netw).Scan(&exp)
	switch {
	case err == nil && exp > unix:
		// Renew at most once an hour so that a busy sender does not cost a write per message.
		if exp-unix < int64(g.opts.AllowTTL/time.Second)-3600 {
			_, err = g.db.ExecContext(ctx, `UPDATE allowed SET expires = ? WHERE net = ?`, unix+int64(g.opts.AllowTTL/time.Second), netw)
		} else {
			err = nil
		}
		return Decision{Pass: true, Reason: "allowed network"}, err
	case err != nil && err != sql.ErrNoRows:
		return Decision{}, fmt.Errorf("greylist: %w", err)
	}
	var first, texp int64
	err = g.db.QueryRowContext(ctx, `SELECT first, expires FROM triplet WHERE net = ? AND sender = ? AND rcpt = ?`, netw, sender, rcpt).Scan(&first, &texp)
	if err == sql.ErrNoRows || err == nil && texp <= unix {
		_, err = g.db.ExecContext(ctx, `INSERT OR REPLACE INTO triplet (net, sender, rcpt, first, expires) VALUES (?,?,?,?,?)`,
			netw, sender, rcpt, unix, unix+int64(g.opts.RetryWindow/time.Second))
		if err != nil {
			return Decision{}, fmt.Errorf("greylist: %w", err)
		}
		return Decision{Wait: g.opts.Delay, Reason: "new"}, nil
	}
	if err != nil {
		return Decision{}, fmt.Errorf("greylist: %w", err)
	}
	if wait := time.Unix(first, 0).Add(g.opts.Delay).Sub(now); wait > 0 {
		return Decision{Wait: wait, Reason: "too early"}, nil
	}
	// Passed: the network is now allowed for every triplet, and this triplet is done.
	tx, err := g.db.BeginTx(ctx, nil)
	if err != nil {
		return Decision{}, fmt.Errorf("greylist: %w", err)
	}
	defer tx.Rollback()
	if _, err := tx.ExecContext(ctx, `INSERT OR REPLACE INTO allowed (net, expires) VALUES (?, ?)`, netw, unix+int64(g.opts.AllowTTL/time.Second)); err != nil {
		return Decision{}, fmt.Errorf("greylist: %w", err)
	}
	if _, err := tx.ExecContext(ctx, `DELETE FROM triplet WHERE net = ? AND sender = ? AND rcpt = ?`, netw, sender, rcpt); err != nil {
		return Decision{}, fmt.Errorf("greylist: %w", err)
	}
	if err := tx.Commit(); err != nil {
		return Decision{}, fmt.Errorf("greylist: %w", err)
	}
	return Decision{Pass: true, Reason: "retried"}, nil
}

// purge deletes expired rows, at most once an hour.
func (g *Greylist) purge(ctx context.Context, now time.Time) {
	g.mu.Lock()
	due := now.Sub(g.lastPurge) >= time.Hour
	if due {
		g.lastPurge = now
	}
	g.mu.Unlock()
	if !due {
		return
	}
	g.db.ExecContext(ctx, `DELETE FROM triplet WHERE expires <= ?`, now.Unix())
	g.db.ExecContext(ctx, `DELETE FROM allowed WHERE expires <= ?`, now.Unix())
}

// Counts returns the rows kept, for tests and the status command.
func (g *Greylist) Counts(ctx context.Context) (triplets, allowed int, err error) {
	if err = g.db.QueryRowContext(ctx, `SELECT COUNT(*) FROM triplet`).Scan(&triplets); err != nil {
		return
	}
	err = g.db.QueryRowContext(ctx, `SELECT COUNT(*) FROM allowed`).Scan(&allowed)
	return
}

func (g *Greylist) CheckRcpt(ctx context.Context, t *policy.Txn, rcpt smtp.Path, routed []mail.Recipient) policy.Verdict {
	c := t.Conn
	if c.Exempt() || !c.RemoteIP.IsValid() {
		return policy.Verdict{}
	}
	d, err := g.Check(ctx, c.RemoteIP, t.From, rcpt.Addr.String())
	if err != nil {
		return policy.Verdict{Err: err}
	}
	if d.Pass {
		return policy.Verdict{Result: "pass"}
	}
	secs, unit := max(int(d.Wait.Round(time.Second)/time.Second), 1), "seconds"
	if secs == 1 {
		unit = "second"
	}
	return policy.Verdict{Action: policy.Tempfail, Result: "deferred", Reason: "greylisted (" + d.Reason + ")",
		Reply: smtp.Replyf(451, smtp.EnhancedCode{4, 7, 1}, "Greylisted: please try again in %d %s", secs, unit)}
}
