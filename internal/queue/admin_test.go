package queue

import (
	"context"
	"database/sql"
	"errors"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/postamt/postamt/internal/mail"
	"github.com/postamt/postamt/internal/smtp"
	"github.com/postamt/postamt/internal/spool"
	"github.com/postamt/postamt/internal/transport"
	"github.com/postamt/postamt/internal/transport/transporttest"
)

// gate holds every delivery attempt until the test opens it, so that admin operations can be
// run against a message whose attempt is in flight.
type gate struct {
	name    string // "" for maildir
	rec     *transporttest.Recorder
	entered chan struct{}
	open    chan struct{}
}

func newGate(rec *transporttest.Recorder) *gate {
	return &gate{rec: rec, entered: make(chan struct{}, 16), open: make(chan struct{})}
}

func (g *gate) Name() string {
	if g.name == "" {
		return "maildir"
	}
	return g.name
}
func (g *gate) Deliver(ctx context.Context, msg *transport.Message, rcpts []mail.Recipient) ([]transport.Result, error) {
	g.entered <- struct{}{}
	select {
	case <-g.open:
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	return g.rec.Deliver(ctx, msg, rcpts)
}

func (g *gate) waitEntered(t *testing.T) {
	t.Helper()
	select {
	case <-g.entered:
	case <-time.After(10 * time.Second):
		t.Fatal("no attempt started")
	}
}

// bounces collects what the queue hands to Options.Bounce.
type bounces struct {
	mu    sync.Mutex
	calls []*Bounce
	err   error // when set, the DSN stage fails
}

func (b *bounces) bounce(_ context.Context, x *Bounce) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.err != nil {
		return b.err
	}
	b.calls = append(b.calls, x)
	return nil
}

func (b *bounces) get() []*Bounce {
	b.mu.Lock()
	defer b.mu.Unlock()
	return append([]*Bounce(nil), b.calls...)
}

// adminFixture is newFixture with a bounce collector and, optionally, a gated transport.
func adminFixture(t *testing.T, gated bool) (*fixture, *gate, *bounces) {
	f := &fixture{t: t, dir: t.TempDir(), rec: &transporttest.Recorder{}, clk: &clock{t: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)}}
	var g *gate
	var tr transport.Transport = f.rec
	if gated {
		g = newGate(f.rec)
		tr = g
	}
	b := &bounces{}
	open := func() {
		q, err := Open(Options{Dir: f.dir, Transports: []transport.Transport{tr}, Now: f.clk.Now,
			RetryIntervals: []time.Duration{time.Minute, 10 * time.Minute}, MaxAge: 24 * time.Hour,
			ScanInterval: time.Hour, Jitter: func(time.Duration) time.Duration { return 0 }, Bounce: b.bounce})
		if err != nil {
			t.Fatal(err)
		}
		q.Start()
		f.q = q
	}
	open()
	t.Cleanup(func() {
		if g != nil {
			select {
			case <-g.open:
			default:
				close(g.open)
			}
		}
		f.q.Close(context.Background())
	})
	return f, g, b
}

// waitIdle waits until no attempt is running and every outcome is committed.
func (f *fixture) waitIdle() {
	f.t.Helper()
	for end := time.Now().Add(10 * time.Second); time.Now().Before(end); time.Sleep(2 * time.Millisecond) {
		if !f.busy() {
			return
		}
	}
	f.t.Fatal("attempts still running")
}

func (f *fixture) reopen() {
	f.t.Helper()
	f.q.Close(context.Background())
	f.open(nil)
}

func TestAdminShow(t *testing.T) {
	f := newFixture(t, nil)
	f.rec.SetFail("a@x.test", smtp.NewReply(451, smtp.EnhancedCode{4, 2, 0}, "mailbox busy, try later"))
	id, err := f.accept("a@x.test", "b@x.test")
	if err != nil {
		t.Fatal(err)
	}
	f.waitAttempts(1)
	m, err := f.q.Show(context.Background(), id)
	if err != nil {
		t.Fatal(err)
	}
	if m.ID != id || m.From != "sender@remote.test" || m.Held || m.Bouncing || len(m.Recipients) != 2 {
		t.Fatalf("%+v", m)
	}
	a, b := m.Recipients[0], m.Recipients[1]
	want := f.clk.Now().Add(time.Minute)
	if a.Addr != "a@x.test" || a.State != "pending" || a.Attempts != 1 || a.LastReply != "451 4.2.0 mailbox busy, try later" ||
		!a.NextAttempt.Equal(want) || a.Transport != "maildir" || a.NextHop != "x.test" || a.InFlight {
		t.Fatalf("a: %+v (next want %v)", a, want)
	}
	if b.State != "delivered" || !b.NextAttempt.IsZero() {
		t.Fatalf("b: %+v", b)
	}
	if _, err := f.q.Show(context.Background(), "NOSUCH"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("unknown id: %v", err)
	}
}

func TestAdminRetryMakesDueNow(t *testing.T) {
	f := newFixture(t, nil)
	f.rec.Err = errors.New("connection refused")
	id1, _ := f.accept("a@x.test")
	id2, _ := f.accept("b@x.test")
	f.waitAttempts(2)
	f.rec.Err = nil
	// The clock does not move: only Retry can make the recipient due.
	n, err := f.q.Retry(context.Background(), id1)
	if err != nil || n != 1 {
		t.Fatalf("retry: %d %v", n, err)
	}
	f.q.RunDue(context.Background())
	f.waitAttempts(3)
	if d := f.rec.Deliveries(); len(d) != 1 || d[0].ID != id1 {
		t.Fatalf("deliveries %+v", d)
	}
	if st, n, _ := f.rcptState(id2, 0); st != statePending || n != 1 {
		t.Fatalf("the other message was retried too: %d %d", st, n)
	}
	if n, err := f.q.RetryAll(context.Background()); err != nil || n != 1 {
		t.Fatalf("retry all: %d %v", n, err)
	}
	f.q.RunDue(context.Background())
	f.waitAttempts(4)
	if f.count("msg") != 0 {
		t.Fatal("queue not drained after retry all")
	}
	if _, err := f.q.Retry(context.Background(), id1); !errors.Is(err, ErrNotFound) {
		t.Fatalf("retry of a delivered message: %v", err)
	}
}

func TestAdminHoldSurvivesRestartAndRelease(t *testing.T) {
	f := newFixture(t, nil)
	f.rec.Err = errors.New("connection refused")
	id, _ := f.accept("a@x.test")
	f.waitAttempts(1)
	if err := f.q.Hold(context.Background(), id); err != nil {
		t.Fatal(err)
	}
	f.rec.Err = nil
	f.clk.Add(2 * time.Hour)
	f.q.RunDue(context.Background())
	f.reopen()
	f.clk.Add(2 * time.Hour)
	f.q.RunDue(context.Background())
	if _, err := f.q.RetryAll(context.Background()); err != nil {
		t.Fatal(err)
	}
	f.q.RunDue(context.Background())
	time.Sleep(20 * time.Millisecond)
	if f.rec.Attempts() != 1 {
		t.Fatalf("a held message was attempted: %d attempts", f.rec.Attempts())
	}
	m, err := f.q.Show(context.Background(), id)
	if err != nil || !m.Held || !m.Recipients[0].NextAttempt.IsZero() {
		t.Fatalf("show after restart: %+v %v", m, err)
	}
	if es, _ := List(context.Background(), f.dir); len(es) != 1 || !es[0].Held || !es[0].NextAttempt.IsZero() {
		t.Fatalf("list: %+v", es)
	}
	if _, err := f.q.Retry(context.Background(), id); !errors.Is(err, ErrHeld) {
		t.Fatalf("retry of a held message: %v", err)
	}
	if err := f.q.Release(context.Background(), id); err != nil {
		t.Fatal(err)
	}
	if err := f.q.Release(context.Background(), id); !errors.Is(err, ErrNotHeld) {
		t.Fatalf("second release: %v", err)
	}
	f.q.RunDue(context.Background())
	f.waitAttempts(2)
	if f.count("msg") != 0 {
		t.Fatal("released message not delivered")
	}
	if err := f.q.Hold(context.Background(), id); !errors.Is(err, ErrNotFound) {
		t.Fatalf("hold of a delivered message: %v", err)
	}
}

func TestAdminDelete(t *testing.T) {
	f, _, b := adminFixture(t, false)
	f.rec.Err = errors.New("connection refused")
	small, _ := f.accept("a@x.test")
	big, err := f.acceptSized(spool.InlineMax+1, "b@x.test")
	if err != nil {
		t.Fatal(err)
	}
	f.waitAttempts(2)
	for _, id := range []string{small, big} {
		if err := f.q.Delete(context.Background(), id); err != nil {
			t.Fatal(err)
		}
	}
	if f.count("msg") != 0 || f.count("rcpt") != 0 || f.count("body") != 0 {
		t.Fatal("rows left after delete")
	}
	if _, err := os.Stat(filepath.Join(f.q.spool.ShardDir(big), big)); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("spool file left: %v", err)
	}
	f.rec.Err = nil
	f.clk.Add(time.Hour)
	f.q.RunDue(context.Background())
	time.Sleep(20 * time.Millisecond)
	if f.rec.Attempts() != 2 || len(b.get()) != 0 {
		t.Fatalf("deleted messages attempted (%d) or bounced (%d)", f.rec.Attempts(), len(b.get()))
	}
	if err := f.q.Delete(context.Background(), small); !errors.Is(err, ErrNotFound) {
		t.Fatalf("second delete: %v", err)
	}
}

func TestAdminBounceSendsDSN(t *testing.T) {
	f, _, b := adminFixture(t, false)
	f.rec.SetFail("a@x.test", smtp.NewReply(451, smtp.EnhancedCode{4, 2, 0}, "try later"))
	f.rec.SetFail("c@x.test", smtp.NewReply(451, smtp.EnhancedCode{4, 2, 0}, "try later"))
	id, _ := f.accept("a@x.test", "b@x.test", "c@x.test")
	f.waitAttempts(1)
	n, err := f.q.Bounce(context.Background(), id, "spam run\r\nfrom a hacked account")
	if err != nil || n != 2 {
		t.Fatalf("bounce: %d %v", n, err)
	}
	f.q.RunDue(context.Background())
	waitFor(t, func() bool { return f.count("msg") == 0 })
	calls := b.get()
	if len(calls) != 1 || calls[0].Delayed || len(calls[0].Failed) != 2 {
		t.Fatalf("bounces: %+v", calls)
	}
	for _, fl := range calls[0].Failed {
		if fl.LastError != "550 5.0.0 Returned to the sender by the postmaster: spam run from a hacked account" {
			t.Fatalf("reason: %q", fl.LastError)
		}
	}
	if calls[0].Failed[0].Addr != "a@x.test" || calls[0].Failed[1].Addr != "c@x.test" {
		t.Fatalf("failed: %+v", calls[0].Failed)
	}
	if _, err := f.q.Bounce(context.Background(), id, "x"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("second bounce: %v", err)
	}
	// A message whose recipients are all done waits only for its DSN: nothing to hold or bounce.
	f.rec.SetFail("a@x.test", smtp.NewReply(550, smtp.EnhancedCode{5, 1, 1}, "no such user"))
	b.mu.Lock()
	b.err = errors.New("DSN stage down")
	b.mu.Unlock()
	id2, _ := f.accept("a@x.test")
	f.waitAttempts(2)
	f.q.RunDue(context.Background())
	if err := f.q.Hold(context.Background(), id2); !errors.Is(err, ErrNoneLeft) {
		t.Fatalf("hold of a message awaiting its DSN: %v", err)
	}
	if _, err := f.q.Bounce(context.Background(), id2, "x"); !errors.Is(err, ErrNoneLeft) {
		t.Fatalf("bounce of a message awaiting its DSN: %v", err)
	}
}

func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	for end := time.Now().Add(10 * time.Second); time.Now().Before(end); time.Sleep(2 * time.Millisecond) {
		if cond() {
			return
		}
	}
	t.Fatal("condition not reached")
}

// TestAdminDeleteInFlight: the attempt that was running when the message was deleted completes,
// its outcome brings no row back, and nothing is attempted or bounced afterwards.
func TestAdminDeleteInFlight(t *testing.T) {
	for _, outcome := range []string{"deferred", "delivered", "failed"} {
		t.Run(outcome, func(t *testing.T) {
			f, g, b := adminFixture(t, true)
			switch outcome {
			case "deferred":
				f.rec.SetFail("a@x.test", smtp.NewReply(451, smtp.EnhancedCode{4, 2, 0}, "later"))
			case "failed":
				f.rec.SetFail("a@x.test", smtp.NewReply(550, smtp.EnhancedCode{5, 1, 1}, "no such user"))
			}
			id, _ := f.acceptSized(spool.InlineMax+1, "a@x.test")
			g.waitEntered(t)
			if err := f.q.Delete(context.Background(), id); err != nil {
				t.Fatal(err)
			}
			close(g.open) // the attempt still reads the body it has open
			f.waitIdle()
			f.clk.Add(time.Hour)
			f.q.RunDue(context.Background())
			time.Sleep(20 * time.Millisecond)
			f.waitIdle()
			if f.count("msg") != 0 || f.count("rcpt") != 0 || f.rec.Attempts() != 1 || len(b.get()) != 0 {
				t.Fatalf("msg %d rcpt %d attempts %d bounces %d", f.count("msg"), f.count("rcpt"), f.rec.Attempts(), len(b.get()))
			}
		})
	}
}

// TestAdminBounceInFlight: the DSN waits for the running attempt; a recipient that attempt
// delivered is not reported failed, one it deferred keeps the postmaster's reason.
func TestAdminBounceInFlight(t *testing.T) {
	f, g, b := adminFixture(t, true)
	f.rec.SetFail("a@x.test", smtp.NewReply(451, smtp.EnhancedCode{4, 2, 0}, "later"))
	id, _ := f.accept("a@x.test", "b@x.test")
	g.waitEntered(t)
	if n, err := f.q.Bounce(context.Background(), id, "stop"); err != nil || n != 2 {
		t.Fatalf("bounce: %d %v", n, err)
	}
	f.q.RunDue(context.Background())
	if len(b.get()) != 0 {
		t.Fatal("DSN sent while an attempt was running")
	}
	close(g.open)
	f.waitIdle()
	f.q.RunDue(context.Background())
	waitFor(t, func() bool { return f.count("msg") == 0 })
	calls := b.get()
	if len(calls) != 1 || len(calls[0].Failed) != 1 || calls[0].Failed[0].Addr != "a@x.test" ||
		!strings.HasPrefix(calls[0].Failed[0].LastError, "550 5.0.0 ") {
		t.Fatalf("bounces: %+v", calls)
	}
	if d := f.rec.Deliveries(); len(d) != 1 || d[0].Rcpt.Addr != "b@x.test" {
		t.Fatalf("deliveries: %+v", d)
	}
}

// TestAdminHoldInFlight: holding during an attempt lets it finish; its deferral schedules a
// retry, which the hold still prevents.
func TestAdminHoldInFlight(t *testing.T) {
	f, g, _ := adminFixture(t, true)
	f.rec.SetFail("a@x.test", smtp.NewReply(451, smtp.EnhancedCode{4, 2, 0}, "later"))
	id, _ := f.accept("a@x.test")
	g.waitEntered(t)
	if err := f.q.Hold(context.Background(), id); err != nil {
		t.Fatal(err)
	}
	close(g.open)
	f.waitIdle()
	f.clk.Add(time.Hour)
	f.q.RunDue(context.Background())
	time.Sleep(20 * time.Millisecond)
	if f.rec.Attempts() != 1 {
		t.Fatalf("held message attempted again: %d", f.rec.Attempts())
	}
	if st, n, _ := f.rcptState(id, 0); st != statePending || n != 1 {
		t.Fatalf("outcome of the running attempt lost: %d %d", st, n)
	}
}

// TestAdminStaleScanSkipsDeleted: a scan that read the rows before a delete committed does not
// dispatch the deleted message (the tombstone).
func TestAdminStaleScanSkipsDeleted(t *testing.T) {
	f := newFixture(t, nil)
	f.rec.Err = errors.New("connection refused")
	id, _ := f.accept("a@x.test")
	f.waitAttempts(1)
	f.rec.Err = nil
	readSeq := f.q.commitSeq.Load()
	env := &mail.Envelope{ID: id, Rcpts: []mail.Recipient{{Addr: "a@x.test", Route: mail.Route{Transport: "maildir", NextHop: "x.test"}}}}
	if err := f.q.Delete(context.Background(), id); err != nil {
		t.Fatal(err)
	}
	f.q.dispatch(env, nil, []int{0}, []int{1}, readSeq)
	time.Sleep(20 * time.Millisecond)
	if f.rec.Attempts() != 1 {
		t.Fatal("a scan older than the delete dispatched the message")
	}
}

// oldSchema is the queue's schema before prefix, success, held and received were added.
const oldSchema = `
CREATE TABLE msg (id TEXT PRIMARY KEY, sender TEXT NOT NULL, size INTEGER NOT NULL, received INTEGER NOT NULL,
	smtputf8 INTEGER NOT NULL, body TEXT NOT NULL, ret TEXT NOT NULL, envid TEXT NOT NULL, client TEXT NOT NULL,
	helo TEXT NOT NULL, inline INTEGER NOT NULL, state INTEGER NOT NULL DEFAULT 0) WITHOUT ROWID;
CREATE TABLE body (id TEXT PRIMARY KEY, data BLOB NOT NULL);
CREATE TABLE rcpt (msg_id TEXT NOT NULL, idx INTEGER NOT NULL, addr TEXT NOT NULL, orig TEXT NOT NULL,
	orcpt TEXT NOT NULL, notify TEXT NOT NULL, transport TEXT NOT NULL, next_hop TEXT NOT NULL,
	state INTEGER NOT NULL, attempts INTEGER NOT NULL DEFAULT 0, next_attempt INTEGER NOT NULL,
	last_error TEXT NOT NULL DEFAULT '', remote_mta TEXT NOT NULL DEFAULT '', warned INTEGER NOT NULL DEFAULT 0,
	PRIMARY KEY (msg_id, idx)) WITHOUT ROWID;
CREATE INDEX rcpt_due ON rcpt (state, next_attempt);
`

// TestMigrateOldDatabase: a database written before the held and received columns opens,
// gains them (received filled in from the message), and its messages are delivered; the list
// of a running server shows them.
func TestMigrateOldDatabase(t *testing.T) {
	dir := t.TempDir()
	db, err := sql.Open("sqlite", "file:"+url.PathEscape(filepath.Join(dir, "queue.db")))
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range []string{oldSchema,
		`INSERT INTO msg (id, sender, size, received, smtputf8, body, ret, envid, client, helo, inline) VALUES ('OLD1', 's@x.test', 20, 1, 0, '', '', '', '', '', 1)`,
		`INSERT INTO body (id, data) VALUES ('OLD1', CAST('Subject: x' || char(13,10,13,10) || 'y' || char(13,10) AS BLOB))`,
		`INSERT INTO rcpt (msg_id, idx, addr, orig, orcpt, notify, transport, next_hop, state, next_attempt) VALUES ('OLD1', 0, 'a@x.test', 'a@x.test', '', '', 'maildir', 'x.test', 0, 1)`,
		// Waiting for a transport that does not exist any more: it stays in the queue.
		`INSERT INTO msg (id, sender, size, received, smtputf8, body, ret, envid, client, helo, inline) VALUES ('OLD2', 's@x.test', 20, 5, 0, '', '', '', '', '', 1)`,
		`INSERT INTO body (id, data) VALUES ('OLD2', CAST('Subject: x' AS BLOB))`,
		`INSERT INTO rcpt (msg_id, idx, addr, orig, orcpt, notify, transport, next_hop, state, next_attempt) VALUES ('OLD2', 0, 'b@x.test', 'b@x.test', '', '', 'pigeon', 'x.test', 0, 1)`,
	} {
		if _, err := db.Exec(s); err != nil {
			t.Fatal(err)
		}
	}
	db.Close()
	if err := os.MkdirAll(filepath.Join(dir, "spool"), 0o700); err != nil {
		t.Fatal(err)
	}
	f := &fixture{t: t, dir: dir, rec: &transporttest.Recorder{}, clk: &clock{t: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)}}
	f.open(nil)
	defer f.q.Close(context.Background())
	for _, idx := range []string{"msg_held", "rcpt_unwarned"} {
		var n int
		f.q.rdb.QueryRow(`SELECT COUNT(*) FROM sqlite_master WHERE type = 'index' AND name = ?`, idx).Scan(&n)
		if n != 1 {
			t.Fatalf("index %s missing after migration", idx)
		}
	}
	f.q.RunDue(context.Background())
	f.waitAttempts(1)
	if d := f.rec.Deliveries(); len(d) != 1 || d[0].ID != "OLD1" {
		t.Fatalf("%+v", d)
	}
	var received int64
	if err := f.q.rdb.QueryRow(`SELECT received FROM rcpt WHERE msg_id = 'OLD2'`).Scan(&received); err != nil || received != 5 {
		t.Fatalf("received not copied to the recipient: %d %v", received, err)
	}
	// Opening again does not migrate twice (ALTER TABLE would fail on the existing column).
	f.reopen()
}

// TestAttemptResultByDestination: remote attempts are reported under their next hop (lower
// case), local ones under the transport's name.
func TestAttemptResultByDestination(t *testing.T) {
	var mu sync.Mutex
	got := map[string]int{}
	remote := &transporttest.Recorder{TransportName: "remote"}
	remote.SetFail("b@far.test", smtp.NewReply(451, smtp.EnhancedCode{4, 4, 1}, "no answer"))
	q, err := Open(Options{Dir: t.TempDir(), Transports: []transport.Transport{remote, &transporttest.Recorder{}},
		AttemptResult: func(dest, result string) { mu.Lock(); got[dest+" "+result]++; mu.Unlock() }})
	if err != nil {
		t.Fatal(err)
	}
	q.Start()
	defer q.Close(context.Background())
	w, _ := q.Create()
	w.WriteString("Subject: x\r\n\r\ny\r\n")
	env := &mail.Envelope{From: "s@here.test", Rcpts: []mail.Recipient{
		{Addr: "a@far.test", Route: mail.Route{Transport: "remote", NextHop: "Far.TEST"}},
		{Addr: "b@far.test", Route: mail.Route{Transport: "remote", NextHop: "Far.TEST"}},
		{Addr: "me@here.test", Route: mail.Route{Transport: "maildir", NextHop: "here.test"}},
	}}
	if err := q.Accept(context.Background(), env, w); err != nil {
		t.Fatal(err)
	}
	want := map[string]int{"far.test sent": 1, "far.test deferred": 1, "maildir sent": 1}
	waitFor(t, func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(got) == len(want) && got["far.test sent"] == 1 && got["far.test deferred"] == 1 && got["maildir sent"] == 1
	})
}

// TestAdminParkedJobs: with the one slot for a destination taken, later messages wait in memory
// for it (parked); holding, deleting or bouncing one of them takes it out of that wait, so it is
// not attempted when the slot frees.
func TestAdminParkedJobs(t *testing.T) {
	rec := &transporttest.Recorder{TransportName: "remote"}
	g := newGate(rec)
	g.name = "remote"
	b := &bounces{}
	q, err := Open(Options{Dir: t.TempDir(), Transports: []transport.Transport{g}, DestinationLimit: 1,
		ScanInterval: time.Hour, Bounce: b.bounce})
	if err != nil {
		t.Fatal(err)
	}
	q.Start()
	defer q.Close(context.Background())
	defer func() {
		select {
		case <-g.open:
		default:
			close(g.open)
		}
	}()
	accept := func(rcpt string) string {
		w, _ := q.Create()
		w.WriteString("Subject: x\r\n\r\ny\r\n")
		env := &mail.Envelope{From: "s@here.test", Rcpts: []mail.Recipient{{Addr: rcpt, Route: mail.Route{Transport: "remote", NextHop: "far.test"}}}}
		if err := q.Accept(context.Background(), env, w); err != nil {
			t.Fatal(err)
		}
		return env.ID
	}
	accept("first@far.test")
	g.waitEntered(t) // holds the only slot
	held, deleted, bounced := accept("held@far.test"), accept("deleted@far.test"), accept("bounced@far.test")
	accept("kept@far.test")
	waitFor(t, func() bool { q.mu.Lock(); defer q.mu.Unlock(); return q.parkedN == 4 })
	if err := q.Hold(context.Background(), held); err != nil {
		t.Fatal(err)
	}
	if err := q.Delete(context.Background(), deleted); err != nil {
		t.Fatal(err)
	}
	if _, err := q.Bounce(context.Background(), bounced, "no"); err != nil {
		t.Fatal(err)
	}
	q.mu.Lock()
	n := q.parkedN
	q.mu.Unlock()
	if n != 1 {
		t.Fatalf("%d jobs parked, want only the untouched one", n)
	}
	close(g.open)
	waitFor(t, func() bool { return len(rec.Deliveries()) == 2 })
	time.Sleep(50 * time.Millisecond)
	got := map[string]bool{}
	for _, d := range rec.Deliveries() {
		got[d.Rcpt.Addr] = true
	}
	if len(got) != 2 || !got["first@far.test"] || !got["kept@far.test"] || rec.Attempts() != 2 {
		t.Fatalf("delivered %v in %d attempts", got, rec.Attempts())
	}
	if m, err := q.Show(context.Background(), held); err != nil || !m.Held || m.Recipients[0].InFlight {
		t.Fatalf("held: %+v %v", m, err)
	}
}
