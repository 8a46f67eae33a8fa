package queue

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/postamt/postamt/internal/mail"
	"github.com/postamt/postamt/internal/smtp"
	"github.com/postamt/postamt/internal/spool"
	"github.com/postamt/postamt/internal/transport"
	"github.com/postamt/postamt/internal/transport/transporttest"
)

type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) Now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *clock) Add(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

type fixture struct {
	t   *testing.T
	dir string
	q   *Queue
	rec *transporttest.Recorder
	clk *clock
}

func newFixture(t *testing.T, fs spool.FS) *fixture {
	f := &fixture{t: t, dir: t.TempDir(), rec: &transporttest.Recorder{}, clk: &clock{t: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)}}
	f.open(fs)
	t.Cleanup(func() { f.q.Close(context.Background()) })
	return f
}

func (f *fixture) open(fs spool.FS) {
	q, err := Open(Options{Dir: f.dir, Transports: []transport.Transport{f.rec}, Now: f.clk.Now, FS: fs,
		RetryIntervals: []time.Duration{time.Minute, 10 * time.Minute}, MaxAge: time.Hour,
		ScanInterval: time.Hour, // tests drive the scheduler with RunDue
		Jitter:       func(time.Duration) time.Duration { return 0 }})
	if err != nil {
		f.t.Fatal(err)
	}
	q.Start()
	f.q = q
}

func (f *fixture) accept(rcpts ...string) (string, error) { return f.acceptSized(0, rcpts...) }

// acceptSized queues a message with at least size bytes of body: past spool.InlineMax the body
// goes to a spool file instead of the database.
func (f *fixture) acceptSized(size int, rcpts ...string) (string, error) {
	w, err := f.q.Create()
	if err != nil {
		return "", err
	}
	fmt.Fprintf(w, "Subject: test\r\n\r\nbody of %s\r\n", w.ID())
	for n := 0; n < size; n += 76 {
		if _, err := w.WriteString(strings.Repeat("z", 74) + "\r\n"); err != nil {
			w.Abort()
			return "", err
		}
	}
	env := &mail.Envelope{From: "sender@remote.test"}
	for _, r := range rcpts {
		env.Rcpts = append(env.Rcpts, mail.Recipient{Addr: r, Orig: r, Route: mail.Route{Transport: "maildir", NextHop: "x.test"}})
	}
	err = f.q.Accept(context.Background(), env, w)
	return env.ID, err
}

func (f *fixture) waitAttempts(n int) {
	f.t.Helper()
	for end := time.Now().Add(10 * time.Second); time.Now().Before(end); time.Sleep(2 * time.Millisecond) {
		if f.rec.Attempts() >= n && !f.busy() {
			return
		}
	}
	f.t.Fatalf("want %d attempts, have %d", n, f.rec.Attempts())
}

// busy reports an attempt whose outcome is not yet committed.
func (f *fixture) busy() bool {
	f.q.mu.Lock()
	defer f.q.mu.Unlock()
	for _, v := range f.q.inflight {
		if v == busy {
			return true
		}
	}
	return false
}

func (f *fixture) rcptState(id string, idx int) (state, attempts int, lastErr string) {
	f.t.Helper()
	err := f.q.rdb.QueryRow(`SELECT state, attempts, last_error FROM rcpt WHERE msg_id = ? AND idx = ?`, id, idx).Scan(&state, &attempts, &lastErr)
	if err != nil {
		f.t.Fatalf("rcpt %s/%d: %v", id, idx, err)
	}
	return
}

func (f *fixture) count(table string) int {
	var n int
	f.q.rdb.QueryRow(`SELECT COUNT(*) FROM ` + table).Scan(&n)
	return n
}

func TestDeliverAndCleanUp(t *testing.T) {
	f := newFixture(t, nil)
	id, err := f.accept("a@x.test", "b@x.test")
	if err != nil {
		t.Fatal(err)
	}
	f.waitAttempts(1)
	if d := f.rec.Deliveries(); len(d) != 2 || d[0].ID != id {
		t.Fatalf("%+v", d)
	}
	if f.count("msg") != 0 || f.count("rcpt") != 0 {
		t.Fatal("rows left after full delivery")
	}
	if _, err := os.Stat(filepath.Join(f.q.spool.ShardDir(id), id)); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("body left in spool: %v", err)
	}
}

func TestRetryBackoffAndPermanentFailure(t *testing.T) {
	f := newFixture(t, nil)
	f.rec.SetFail("a@x.test", smtp.NewReply(451, smtp.EnhancedCode{4, 2, 0}, "try later"))
	f.rec.SetFail("b@x.test", smtp.NewReply(550, smtp.EnhancedCode{5, 1, 1}, "no such user"))
	id, err := f.accept("a@x.test", "b@x.test", "c@x.test")
	if err != nil {
		t.Fatal(err)
	}
	f.waitAttempts(1)
	if st, n, e := f.rcptState(id, 0); st != statePending || n != 1 || e != "451 4.2.0 try later" {
		t.Fatalf("a: %d %d %q", st, n, e)
	}
	if st, _, e := f.rcptState(id, 1); st != stateFailed || e != "550 5.1.1 no such user" {
		t.Fatalf("b: %d %q", st, e)
	}
	if st, _, _ := f.rcptState(id, 2); st != stateDelivered {
		t.Fatalf("c: %d", st)
	}
	// Not due yet: nothing happens.
	f.clk.Add(59 * time.Second)
	f.q.RunDue(context.Background())
	time.Sleep(20 * time.Millisecond)
	if f.rec.Attempts() != 1 {
		st, n, e := f.rcptState(id, 0)
		t.Fatalf("retried before the backoff interval: %d attempts; a: %d %d %q; deliveries %d", f.rec.Attempts(), st, n, e, len(f.rec.Deliveries()))
	}
	f.clk.Add(time.Second)
	f.rec.SetFail("a@x.test", nil)
	f.q.RunDue(context.Background())
	f.waitAttempts(2)
	if st, n, _ := f.rcptState(id, 0); st != stateDelivered || n != 2 {
		t.Fatalf("a after retry: %d %d", st, n)
	}
	// b failed permanently: the message is kept, marked for the bounce stage, body included.
	var state int
	f.q.rdb.QueryRow(`SELECT state FROM msg WHERE id = ?`, id).Scan(&state)
	if state != 2 {
		t.Fatalf("message state %d, want 2", state)
	}
	if f.count("body") != 1 {
		t.Fatal("body of a message with a failed recipient must be kept for the DSN")
	}
}

func TestGiveUpAfterMaxAge(t *testing.T) {
	f := newFixture(t, nil)
	f.rec.SetFail("a@x.test", smtp.NewReply(421, smtp.EnhancedCode{4, 4, 2}, "busy"))
	id, _ := f.accept("a@x.test")
	f.waitAttempts(1)
	for i := 2; i <= 7; i++ {
		f.clk.Add(10 * time.Minute)
		f.q.RunDue(context.Background())
		f.waitAttempts(i)
	}
	st, n, e := f.rcptState(id, 0)
	if st != stateFailed || n != 7 || e == "" {
		t.Fatalf("%d %d %q", st, n, e)
	}
	t.Log(e)
}

// failFS makes one operation fail.
type failFS struct {
	spool.OS
	syncErr, dirErr, createErr error
}

type failFile struct {
	*os.File
	err error
}

func (f failFile) Sync() error { return f.err }

func (fs failFS) Create(name string) (spool.File, error) {
	if fs.createErr != nil {
		return nil, fs.createErr
	}
	f, err := spool.OS{}.Create(name)
	if err != nil || fs.syncErr == nil {
		return f, err
	}
	return failFile{f.(*os.File), fs.syncErr}, nil
}

func (fs failFS) SyncDir(dir string) error {
	if fs.dirErr != nil {
		return fs.dirErr
	}
	return spool.SyncDir(dir)
}

func TestStorageFaultsAcknowledgeNothing(t *testing.T) {
	for name, fs := range map[string]failFS{
		"fsync":    {syncErr: errors.New("I/O error")},
		"dir sync": {dirErr: errors.New("I/O error")},
		"full":     {syncErr: syscall.ENOSPC},
		"create":   {createErr: syscall.ENOSPC},
	} {
		t.Run(name, func(t *testing.T) {
			f := newFixture(t, fs)
			_, err := f.acceptSized(spool.InlineMax+1, "a@x.test")
			if err == nil {
				t.Fatal("accepted despite the storage fault")
			}
			r := smtp.ReplyFor(err, "REF")
			if errors.Is(fs.syncErr, syscall.ENOSPC) || errors.Is(fs.createErr, syscall.ENOSPC) {
				if r.Code != 452 || r.Enhanced != (smtp.EnhancedCode{4, 3, 1}) {
					t.Fatalf("disk full gave %v", r)
				}
			} else if r.Code != 451 {
				t.Fatalf("got %v", r)
			}
			time.Sleep(20 * time.Millisecond)
			if f.count("msg") != 0 || f.rec.Attempts() != 0 {
				t.Fatal("a refused message was queued or delivered")
			}
			ids, _ := f.q.spool.List()
			if len(ids) != 0 {
				t.Fatalf("half-written bodies left: %v", ids)
			}
		})
	}
}

func TestRestartResumesAndCleansUp(t *testing.T) {
	f := newFixture(t, nil)
	f.rec.Err = errors.New("connection refused")
	id, err := f.accept("a@x.test")
	if err != nil {
		t.Fatal(err)
	}
	bigID, err := f.acceptSized(spool.InlineMax+1, "b@x.test")
	if err != nil {
		t.Fatal(err)
	}
	f.waitAttempts(2)
	f.q.Close(context.Background())
	// A body with no rows (a crash between body and commit) and rows with no body.
	os.WriteFile(filepath.Join(f.q.spool.ShardDir("ORPHAN"), "ORPHAN"), []byte("x"), 0o600)
	f.rec.Err = nil
	f.open(nil)
	if _, err := os.Stat(filepath.Join(f.q.spool.ShardDir("ORPHAN"), "ORPHAN")); !errors.Is(err, os.ErrNotExist) {
		t.Fatal("orphan body kept")
	}
	f.clk.Add(time.Minute)
	f.q.RunDue(context.Background())
	f.waitAttempts(4)
	got := map[string]int{}
	for _, d := range f.rec.Deliveries() {
		got[d.ID] = len(d.Body)
	}
	if len(got) != 2 || got[id] == 0 || got[bigID] <= spool.InlineMax {
		t.Fatalf("after restart: %v", got)
	}
	if f.count("msg") != 0 || f.count("body") != 0 {
		t.Fatal("rows left")
	}
	if ids, _ := f.q.spool.List(); len(ids) != 0 {
		t.Fatalf("spool files left: %v", ids)
	}
}

func TestMissingBodyFailsLoudly(t *testing.T) {
	f := newFixture(t, nil)
	f.rec.Err = errors.New("down")
	id, _ := f.acceptSized(spool.InlineMax+1, "a@x.test")
	f.waitAttempts(1)
	f.q.Close(context.Background())
	os.Remove(filepath.Join(f.q.spool.ShardDir(id), id))
	f.open(nil)
	if st, _, e := f.rcptState(id, 0); st != stateFailed || e == "" {
		t.Fatalf("%d %q", st, e)
	}
}

// TestConcurrentAcceptGroupCommit checks that concurrent acceptances share transactions and that
// every message is delivered exactly once even while the scheduler scans continuously.
func TestConcurrentAcceptGroupCommit(t *testing.T) {
	f := newFixture(t, nil)
	const n = 400
	var wg sync.WaitGroup
	errs := make(chan error, n)
	stop := make(chan struct{})
	go func() {
		for {
			select {
			case <-stop:
				return
			default:
				f.q.RunDue(context.Background())
			}
		}
	}()
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if _, err := f.accept("a@x.test"); err != nil {
				errs <- err
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	for end := time.Now().Add(10 * time.Second); len(f.rec.Deliveries()) < n && time.Now().Before(end); {
		time.Sleep(5 * time.Millisecond)
	}
	time.Sleep(100 * time.Millisecond)
	close(stop)
	seen := map[string]int{}
	for _, d := range f.rec.Deliveries() {
		seen[d.ID]++
	}
	if len(seen) != n {
		t.Fatalf("%d distinct messages delivered, want %d", len(seen), n)
	}
	for id, c := range seen {
		if c != 1 {
			t.Fatalf("%s delivered %d times", id, c)
		}
	}
	b, ops := f.q.metrics.batches.Load(), f.q.metrics.batchedOps.Load()
	t.Logf("%d ops in %d transactions", ops, b)
	if b >= ops {
		t.Errorf("no group commit: %d transactions for %d ops", b, ops)
	}
}

func TestList(t *testing.T) {
	f := newFixture(t, nil)
	f.rec.SetFail("a@x.test", smtp.NewReply(451, smtp.EnhancedCode{4, 2, 0}, "try later"))
	f.rec.SetFail("b@x.test", smtp.NewReply(550, smtp.EnhancedCode{5, 1, 1}, "no such user"))
	id, _ := f.accept("a@x.test", "b@x.test", "c@x.test")
	f.waitAttempts(1)
	es, err := List(context.Background(), f.dir)
	if err != nil {
		t.Fatal(err)
	}
	if len(es) != 2 || es[0].ID != id || es[0].Rcpt != "a@x.test" || es[0].State != "pending" || es[0].NextAttempt.IsZero() ||
		es[1].Rcpt != "b@x.test" || es[1].State != "failed" || es[1].LastError != "550 5.1.1 no such user" {
		t.Fatalf("%+v", es)
	}
	for _, tt := range []struct {
		f    Filter
		want int
	}{
		{Filter{}, 2}, {Filter{State: "failed"}, 1}, {Filter{To: "A@x.test"}, 1}, {Filter{Domain: "x.test"}, 2},
		{Filter{Domain: "y.test"}, 0}, {Filter{ID: id, State: "pending"}, 1}, {Filter{From: "nobody@else.test"}, 0},
	} {
		n := 0
		for _, e := range es {
			if tt.f.Match(e) {
				n++
			}
		}
		if n != tt.want {
			t.Errorf("%+v matched %d, want %d", tt.f, n, tt.want)
		}
	}
}

// TestDelayWarningAndBounce: a recipient still failing after DelayWarning gets one delay notice
// (and the message stays), and one that fails for good gets a bounce after which the message
// leaves the queue.
func TestDelayWarningAndBounce(t *testing.T) {
	f := &fixture{t: t, dir: t.TempDir(), rec: &transporttest.Recorder{}, clk: &clock{t: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)}}
	var mu sync.Mutex
	var calls []*Bounce
	q, err := Open(Options{Dir: f.dir, Transports: []transport.Transport{f.rec}, Now: f.clk.Now,
		RetryIntervals: []time.Duration{time.Minute}, MaxAge: 10 * time.Hour, DelayWarning: 4 * time.Hour,
		ScanInterval: time.Hour, Jitter: func(time.Duration) time.Duration { return 0 },
		Bounce: func(_ context.Context, b *Bounce) error {
			mu.Lock()
			defer mu.Unlock()
			calls = append(calls, b)
			return nil
		}})
	if err != nil {
		t.Fatal(err)
	}
	q.Start()
	f.q = q
	t.Cleanup(func() { q.Close(context.Background()) })
	f.rec.SetFail("slow@x.test", smtp.NewReply(451, smtp.EnhancedCode{4, 4, 1}, "no answer"))
	id, _ := f.accept("slow@x.test")
	f.waitAttempts(1)
	count := func() int { mu.Lock(); defer mu.Unlock(); return len(calls) }
	f.q.RunDue(context.Background())
	if count() != 0 {
		t.Fatal("delay warning before DelayWarning")
	}
	f.clk.Add(4*time.Hour + time.Minute)
	f.q.RunDue(context.Background())
	f.waitAttempts(2)
	f.q.RunDue(context.Background())
	if count() != 1 || !calls[0].Delayed || calls[0].Env.ID != id || calls[0].Failed[0].LastError != "451 4.4.1 no answer" {
		t.Fatalf("calls: %d %+v", count(), calls)
	}
	if f.count("msg") != 1 {
		t.Fatal("a delayed message must stay queued")
	}
	// Give up: past MaxAge the recipient fails, and the bounce removes the message.
	f.clk.Add(6 * time.Hour)
	f.q.RunDue(context.Background())
	f.waitAttempts(3)
	f.q.RunDue(context.Background())
	// The scheduler, kicked by the failure, may be the one that bounces: wait for it.
	for end := time.Now().Add(5 * time.Second); f.count("msg") != 0 && time.Now().Before(end); {
		time.Sleep(5 * time.Millisecond)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(calls) != 2 || calls[1].Delayed || !strings.Contains(calls[1].Failed[0].LastError, "5.4.7") {
		t.Fatalf("final bounce: %d %+v", len(calls), calls[len(calls)-1])
	}
	if f.count("msg") != 0 || f.count("rcpt") != 0 || f.count("body") != 0 {
		t.Fatal("bounced message left in the queue")
	}
}

// slowRemote counts how many deliveries run at once.
type slowRemote struct {
	mu        sync.Mutex
	now, peak int
	delivered int
}

func (s *slowRemote) Name() string { return "remote" }
func (s *slowRemote) Deliver(ctx context.Context, msg *transport.Message, rcpts []mail.Recipient) ([]transport.Result, error) {
	s.mu.Lock()
	s.now++
	s.peak = max(s.peak, s.now)
	s.mu.Unlock()
	time.Sleep(20 * time.Millisecond)
	s.mu.Lock()
	s.now--
	s.delivered += len(rcpts)
	s.mu.Unlock()
	return make([]transport.Result, len(rcpts)), nil
}

// TestDestinationLimit: a backlog for remote destinations never has more deliveries in flight
// than the per-destination limit or the global remote limit, and still drains completely.
func TestDestinationLimit(t *testing.T) {
	for _, tc := range []struct {
		name          string
		dest, remote  int
		domains, want int
	}{
		{"per destination", 3, 100, 1, 3},
		{"all remote together", 20, 4, 5, 4},
	} {
		// No periodic scan: the backlog must drain by handing slots to parked jobs alone.
		t.Run(tc.name, func(t *testing.T) {
			sr := &slowRemote{}
			q, err := Open(Options{Dir: t.TempDir(), Transports: []transport.Transport{sr}, DestinationLimit: tc.dest,
				RemoteLimit: tc.remote, Workers: 16, ScanInterval: time.Hour})
			if err != nil {
				t.Fatal(err)
			}
			q.Start()
			defer q.Close(context.Background())
			const n = 30
			for i := 0; i < n; i++ {
				w, _ := q.Create()
				w.WriteString("Subject: x\r\n\r\ny\r\n")
				d := fmt.Sprintf("far%d.test", i%tc.domains)
				env := &mail.Envelope{From: "a@b.test", Rcpts: []mail.Recipient{{Addr: "u@" + d, Route: mail.Route{Transport: "remote", NextHop: d}}}}
				if err := q.Accept(context.Background(), env, w); err != nil {
					t.Fatal(err)
				}
			}
			for end := time.Now().Add(10 * time.Second); time.Now().Before(end); time.Sleep(10 * time.Millisecond) {
				sr.mu.Lock()
				d := sr.delivered
				sr.mu.Unlock()
				if d == n {
					break
				}
			}
			sr.mu.Lock()
			defer sr.mu.Unlock()
			if sr.delivered != n || sr.peak > tc.want || sr.peak < tc.want-1 {
				t.Fatalf("delivered %d of %d, peak concurrency %d (limit %d)", sr.delivered, n, sr.peak, tc.want)
			}
			// The last worker gives its slot back just after its delivery is counted.
			var parked, active int
			for end := time.Now().Add(5 * time.Second); time.Now().Before(end); time.Sleep(5 * time.Millisecond) {
				q.mu.Lock()
				parked, active = q.parkedN+len(q.parked), q.activeRemote
				q.mu.Unlock()
				if parked == 0 && active == 0 {
					break
				}
			}
			if parked != 0 || active != 0 {
				t.Errorf("left over: %d parked, %d active", parked, active)
			}
		})
	}
}

// A database written before the prefix column existed opens, gains the column, and its
// messages are still delivered.
func TestMigrateAddsPrefix(t *testing.T) {
	dir := t.TempDir()
	db, err := sql.Open("sqlite", "file:"+dir+"/queue.db")
	if err != nil {
		t.Fatal(err)
	}
	old := regexp.MustCompile(`(?m)^\t(prefix|held) .*\n`).ReplaceAllString(schema, "")
	old = strings.Replace(old, "DEFAULT 0, -- 0 active", "DEFAULT 0 -- 0 active", 1)
	if old == schema {
		t.Fatal("test does not know the schema any more")
	}
	if _, err := db.Exec(old); err != nil {
		t.Fatal(err)
	}
	db.Close()
	w, r, err := openDB(dir + "/queue.db")
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	defer r.Close()
	var n int
	if err := w.QueryRow(`SELECT COUNT(*) FROM pragma_table_info('msg') WHERE name = 'prefix'`).Scan(&n); err != nil || n != 1 {
		t.Fatalf("prefix column: %d, %v", n, err)
	}
}
