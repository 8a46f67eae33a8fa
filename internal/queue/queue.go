// Package queue is Postamt's durable queue: it accepts a message (body in the spool, envelope and
// per-recipient state in SQLite), acknowledges only once both are on stable storage, and drives
// delivery through transports with retries and backoff. It is the Intake every entry point
// (SMTP, submission, API, DSNs) uses.
//
// It does not parse SMTP, route addresses (recipients arrive routed) or build DSNs; it records
// permanent failures for the bounce stage.
package queue

import (
	"bytes"
	"context"
	"database/sql"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"github.com/postamt/postamt/internal/mail"
	"github.com/postamt/postamt/internal/observe"
	"github.com/postamt/postamt/internal/spool"
	"github.com/postamt/postamt/internal/transport"
)

// Options configure a Queue. Zero values get defaults.
type Options struct {
	Dir            string // holds queue.db and spool/
	RetryIntervals []time.Duration
	MaxAge         time.Duration
	Workers        int
	// DestinationLimit caps simultaneous deliveries to one remote destination (domain or relay
	// host); 0 means 20, Postfix's default_destination_concurrency_limit.
	DestinationLimit int
	// RemoteLimit caps simultaneous deliveries to all remote destinations together; 0 means 100.
	RemoteLimit int
	// AttemptTimeout bounds one delivery attempt.
	AttemptTimeout time.Duration
	// ScanInterval is how often the scheduler looks for due retries.
	ScanInterval time.Duration
	Transports   []transport.Transport
	Logger       *slog.Logger
	Now          func() time.Time // injected clock for tests
	FS           spool.FS         // injected file system for fault tests
	// Bounce, when set, is called for each message whose recipients are all done and some of
	// them failed; on success the message is removed. When nil, such messages are kept (state 2)
	// with their reasons.
	Bounce func(ctx context.Context, b *Bounce) error
	// DelayWarning is how long a recipient may stay undelivered (with at least one failed
	// attempt) before Bounce is called with Delayed set, once; 0 disables delay warnings.
	DelayWarning time.Duration
	// AttemptLatency, when set, is told how long each delivery attempt took and its transport.
	AttemptLatency func(transport string, d time.Duration)
	// AttemptResult, when set, is told each recipient's attempt outcome (sent, deferred,
	// failed) and its destination: the next hop (domain or relay host) for remote delivery,
	// the transport name for local delivery.
	AttemptResult func(destination, result string)
	// Jitter returns the random extra delay added to a retry interval; nil for up to 10%.
	Jitter func(d time.Duration) time.Duration
}

// Queue is the durable queue.
type Queue struct {
	opts       Options
	db, rdb    *sql.DB
	ckpt       *sql.DB // checkpoints the WAL outside the commit path
	stmts      stmts
	spool      *spool.Spool
	ids        *observe.IDGen
	log        *slog.Logger
	transports map[string]transport.Transport

	commitCh   chan *op
	commitDone chan struct{}
	batchBuf   []*op

	work          chan *job
	mu            sync.Mutex
	inflight      map[string]int64      // rcptKey → busy, or a tombstone (see release)
	active        map[mail.Route]int    // deliveries running per limited route
	activeRemote  int                   // deliveries running on all limited routes
	parked        map[mail.Route][]*job // jobs waiting for a slot, in arrival order
	parkedN       int
	stopping      bool
	turnedAway    atomic.Bool  // a job waited for a slot since the last unclaim
	commitSeq     atomic.Int64 // transactions committed so far
	wg            sync.WaitGroup
	stop          chan struct{}
	kick          chan struct{}
	ctx           context.Context
	cancel        context.CancelFunc
	closed        atomic.Bool
	memBytes      atomic.Int64 // inline bodies held in memory for their first attempt
	bounceMu      sync.Mutex   // one bounce scan at a time, so no DSN is sent twice
	lastDelayScan time.Time    // guarded by bounceMu
	acceptMu      sync.RWMutex

	metrics    Metrics
	retryChunk int // see RetryAll
}

// Metrics are counters for observability and tests.
type Metrics struct {
	Accepted, Delivered, Deferred, Failed atomic.Int64
	batches, batchedOps                   atomic.Int64
}

// Open opens or creates the queue in opts.Dir, cleans up after a crash, and starts the commit
// loop. Delivery starts with Start, so that callers can finish wiring first.
func Open(opts Options) (*Queue, error) {
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	if len(opts.RetryIntervals) == 0 {
		opts.RetryIntervals = []time.Duration{time.Minute, 5 * time.Minute, 15 * time.Minute, 30 * time.Minute, time.Hour, 2 * time.Hour, 4 * time.Hour}
	}
	if opts.MaxAge == 0 {
		opts.MaxAge = 5 * 24 * time.Hour
	}
	if opts.Workers == 0 {
		opts.Workers = 64
	}
	if opts.DestinationLimit <= 0 {
		opts.DestinationLimit = 20
	}
	if opts.RemoteLimit <= 0 {
		opts.RemoteLimit = 100
	}
	if opts.AttemptTimeout == 0 {
		opts.AttemptTimeout = 10 * time.Minute
	}
	if opts.ScanInterval == 0 {
		opts.ScanInterval = time.Second
	}
	if opts.Jitter == nil {
		opts.Jitter = func(d time.Duration) time.Duration { return time.Duration(rand.Int64N(int64(d)/10 + 1)) }
	}
	if err := os.MkdirAll(opts.Dir, 0o700); err != nil {
		return nil, fmt.Errorf("queue: %w", err)
	}
	sp, err := spool.New(filepath.Join(opts.Dir, "spool"), opts.FS)
	if err != nil {
		return nil, err
	}
	dbPath := filepath.Join(opts.Dir, "queue.db")
	db, rdb, err := openDB(dbPath)
	if err != nil {
		return nil, err
	}
	ckpt, err := openCheckpointer(dbPath)
	if err != nil {
		db.Close()
		rdb.Close()
		return nil, err
	}
	q := &Queue{
		opts: opts, db: db, rdb: rdb, ckpt: ckpt, spool: sp,
		ids:        observe.NewIDGen(opts.Now),
		log:        opts.Logger,
		transports: map[string]transport.Transport{},
		commitCh:   make(chan *op, 4096),
		commitDone: make(chan struct{}),
		work:       make(chan *job, 8192),
		stop:       make(chan struct{}),
		kick:       make(chan struct{}, 1),
		inflight:   map[string]int64{},
		active:     map[mail.Route]int{},
		retryChunk: retryChunk,
		parked:     map[mail.Route][]*job{},
	}
	q.ctx, q.cancel = context.WithCancel(context.Background())
	for _, t := range opts.Transports {
		q.transports[t.Name()] = t
	}
	if err := q.stmts.prepare(db); err != nil {
		db.Close()
		rdb.Close()
		return nil, err
	}
	if err := q.recover(); err != nil {
		db.Close()
		rdb.Close()
		return nil, err
	}
	go q.commitLoop()
	return q, nil
}

// Spool exposes the body store to readers such as the admin CLI.
func (q *Queue) Spool() *spool.Spool { return q.spool }

// Metrics returns live counters.
func (q *Queue) Metrics() *Metrics { return &q.metrics }

// NewID returns a fresh queue ID.
func (q *Queue) NewID() string { return q.ids.New() }

// Create starts a body in the spool under a new queue ID.
func (q *Queue) Create() (*spool.Writer, error) {
	return q.spool.Create(q.ids.New())
}

// ErrClosed is returned by Accept after Close.
var ErrClosed = errors.New("queue: closed")

// Accept makes the message durable: it fsyncs the body, then hands the envelope to the group
// commit, which syncs the spool directory and commits the rows. It returns only when all of that
// is on stable storage (or has failed, in which case the body is removed and nothing was queued).
// On success the message is already scheduled for delivery.
func (q *Queue) Accept(ctx context.Context, env *mail.Envelope, w *spool.Writer) error {
	q.acceptMu.RLock()
	defer q.acceptMu.RUnlock()
	if q.closed.Load() {
		w.Abort()
		return ErrClosed
	}
	if err := w.Commit(); err != nil {
		w.Abort()
		return err
	}
	env.ID = w.ID()
	env.Size = w.Size()
	if env.ReceivedAt.IsZero() {
		env.ReceivedAt = q.opts.Now()
	}
	inline, isInline := w.Inline()
	env.BodyInline = isInline
	env.Prefix = w.Prefix()
	var mem *memBody
	if isInline && q.memBytes.Add(int64(cap(inline))) <= memBudget {
		// The first delivery attempt reads the body from memory; it is released after. Past the
		// budget (delivery is behind), bodies are released at once and read back from the
		// database, so a backlog costs disk, not memory.
		n := int64(cap(inline))
		mem = &memBody{data: inline, release: func() { w.Release(); q.memBytes.Add(-n) }}
	} else if isInline {
		q.memBytes.Add(-int64(cap(inline)))
	}
	o := &op{
		apply:   q.insertOp(env, inline),
		syncDir: w.Dir(),
		done:    make(chan error, 1),
		after:   func() { q.dispatchNew(env, mem) },
	}
	q.commitCh <- o
	// Wait even if ctx is cancelled: until the commit has finished we cannot tell the caller
	// whether the message is queued, and the commit itself is bounded by the disk.
	if err := <-o.done; err != nil {
		if mem != nil {
			q.memBytes.Add(-int64(cap(inline)))
		}
		w.Abort()
		return err
	}
	if mem == nil {
		w.Release()
	}
	q.metrics.Accepted.Add(1)
	return nil
}

// Start starts delivery workers and the retry scheduler.
func (q *Queue) Start() {
	for i := 0; i < q.opts.Workers; i++ {
		q.wg.Add(1)
		go q.worker()
	}
	q.wg.Add(1)
	go q.scheduler()
	q.wg.Add(1)
	go q.checkpointLoop()
}

// checkpointLoop copies the WAL into the database file in the background. PASSIVE never blocks
// the writer; when the WAL has been copied entirely, SQLite starts it over from the beginning at
// the next commit, so it does not grow without bound.
func (q *Queue) checkpointLoop() {
	defer q.wg.Done()
	t := time.NewTicker(250 * time.Millisecond)
	defer t.Stop()
	for {
		select {
		case <-q.stop:
			q.ckpt.Exec(`PRAGMA wal_checkpoint(PASSIVE)`)
			return
		case <-t.C:
			if _, err := q.ckpt.Exec(`PRAGMA wal_checkpoint(PASSIVE)`); err != nil {
				q.log.Warn("queue: checkpoint", "err", err)
			}
		}
	}
}

// Close stops accepting, lets running attempts finish until ctx ends, and closes the database.
func (q *Queue) Close(ctx context.Context) error {
	if q.closed.Swap(true) {
		return nil
	}
	q.mu.Lock()
	q.stopping = true // workers stop taking parked jobs; those stay pending in the database
	q.mu.Unlock()
	close(q.stop)
	done := make(chan struct{})
	go func() { q.wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-ctx.Done():
		q.cancel()
		<-done
	}
	q.cancel()
	q.acceptMu.Lock() // no Accept is between its closed check and its send any more
	close(q.commitCh)
	q.acceptMu.Unlock()
	<-q.commitDone
	q.rdb.Close()
	q.ckpt.Close()
	return q.db.Close()
}

// openBody opens a stored body for a delivery attempt.
func (q *Queue) openBody(env *mail.Envelope) (io.ReadCloser, error) {
	if !env.BodyInline {
		f, err := q.spool.Open(env.ID)
		if err != nil || len(env.Prefix) == 0 {
			return f, err
		}
		return struct {
			io.Reader
			io.Closer
		}{io.MultiReader(bytes.NewReader(env.Prefix), f), f}, nil
	}
	var data []byte
	if err := q.rdb.QueryRow(`SELECT data FROM body WHERE id = ?`, env.ID).Scan(&data); err != nil {
		return nil, fmt.Errorf("queue: read body %s: %w", env.ID, err)
	}
	return io.NopCloser(bytes.NewReader(data)), nil
}

// memBudget bounds the inline bodies kept in memory between acceptance and the first attempt.
const memBudget = 16 << 20

// memBody is an inline body still in memory, shared by the first attempt's jobs.
type memBody struct {
	data    []byte
	refs    atomic.Int32
	release func()
}

func (m *memBody) done() {
	if m != nil && m.refs.Add(-1) == 0 {
		m.release()
	}
}

// Counts returns the number of recipients per state (pending, delivered, failed) and of
// messages in the queue, for metrics and the admin CLI.
func (q *Queue) Counts(ctx context.Context) (pending, failed, messages int, err error) {
	err = q.rdb.QueryRowContext(ctx, `SELECT COUNT(*) FILTER (WHERE state = 0), COUNT(*) FILTER (WHERE state = 2),
		(SELECT COUNT(*) FROM msg) FROM rcpt`).Scan(&pending, &failed, &messages)
	return
}

// recover makes the spool and the rows agree after a crash. It runs before anything is served,
// so no session is writing a body that has no row yet. Its memory does not grow with the queue:
// it holds one spool shard's names at a time and streams the rows (issue 4: a million queued
// messages must open in bounded memory).
func (q *Queue) recover() error {
	orphans := 0
	has, err := q.db.Prepare(`SELECT inline FROM msg WHERE id = ?`)
	if err != nil {
		return fmt.Errorf("queue: recover: %w", err)
	}
	defer has.Close()
	for i := 0; i < q.spool.Shards(); i++ {
		ids, err := q.spool.ListShard(i)
		if err != nil {
			return err
		}
		for _, id := range ids {
			var inline bool
			err := has.QueryRow(id).Scan(&inline)
			if err != nil && !errors.Is(err, sql.ErrNoRows) {
				return fmt.Errorf("queue: recover: %w", err)
			}
			if err != nil || inline {
				// A body without rows was never acknowledged (the rows commit after the body): drop it.
				q.spool.Remove(id)
				orphans++
			}
		}
	}
	// The writer connection is the only one, so the rows are read through the reader while
	// the (rare) repairs wait in a list.
	rows, err := q.rdb.Query(`SELECT id FROM msg WHERE inline = 0`)
	if err != nil {
		return fmt.Errorf("queue: recover: %w", err)
	}
	var missing []string
	for rows.Next() {
		var id string
		if err := rows.Scan(&id); err != nil {
			rows.Close()
			return fmt.Errorf("queue: recover: %w", err)
		}
		ok, err := q.spool.Exists(id)
		if err != nil {
			rows.Close()
			return fmt.Errorf("queue: recover: %w", err)
		}
		if !ok {
			missing = append(missing, id)
		}
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return fmt.Errorf("queue: recover: %w", err)
	}
	for _, id := range missing {
		q.log.Error("queue: message body missing from spool; failing its recipients", "id", id)
		if _, err := q.db.Exec(`UPDATE rcpt SET state = ?, last_error = ? WHERE msg_id = ? AND state = ?`,
			stateFailed, "451 4.3.0 message body lost from the spool", id, statePending); err != nil {
			return fmt.Errorf("queue: recover: %w", err)
		}
		q.db.Exec(`UPDATE msg SET state = 2 WHERE id = ?`, id)
	}
	var messages, pending int
	q.db.QueryRow(`SELECT COUNT(*) FROM msg`).Scan(&messages)
	q.db.QueryRow(`SELECT COUNT(*) FROM rcpt WHERE state = 0`).Scan(&pending)
	q.log.Info("queue opened", "dir", q.opts.Dir, "messages", messages, "pending_recipients", pending,
		"orphan_bodies_removed", orphans, "bodies_missing", len(missing))
	return nil
}
