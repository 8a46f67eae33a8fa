package queue

import (
	"context"
	"database/sql"
	"fmt"
	"os"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/postamt/postamt/internal/transport"
	"github.com/postamt/postamt/internal/transport/transporttest"
)

// fill inserts n messages of one recipient each, numbered from first, with small inline bodies,
// straight into the tables in large transactions: the shape a long outage leaves behind. next
// gives message i's next attempt; attempts is the attempts made so far.
func fill(tb testing.TB, db *sql.DB, first, n int, received time.Time, attempts int, next func(i int) time.Time) {
	tb.Helper()
	body := []byte("Subject: scale\r\n\r\n" + strings.Repeat("x", 240) + "\r\n")
	const batch = 50000
	for start := first; start < first+n; start += batch {
		tx, err := db.Begin()
		if err != nil {
			tb.Fatal(err)
		}
		insMsg, _ := tx.Prepare(`INSERT INTO msg (id, sender, size, received, smtputf8, body, ret, envid, client, helo, inline) VALUES (?,?,?,?,0,'','','','192.0.2.1','client.test',1)`)
		insBody, _ := tx.Prepare(`INSERT INTO body (id, data) VALUES (?,?)`)
		insRcpt, _ := tx.Prepare(`INSERT INTO rcpt (msg_id, idx, addr, orig, orcpt, notify, transport, next_hop, state, attempts, next_attempt, last_error, received)
			VALUES (?,0,?,?,'','',?,?,0,?,?,'451 4.4.1 No answer from host',?)`)
		for i := start; i < min(start+batch, first+n); i++ {
			id := fmt.Sprintf("S%015d", i)
			dom := fmt.Sprintf("d%d.test", i%1000)
			rcpt := "user" + id + "@" + dom
			if _, err := insMsg.Exec(id, "sender@example.test", len(body), received.UnixMicro()); err != nil {
				tb.Fatal(err)
			}
			if _, err := insBody.Exec(id, body); err != nil {
				tb.Fatal(err)
			}
			if _, err := insRcpt.Exec(id, rcpt, rcpt, "maildir", dom, attempts, next(i).UnixMicro(), received.UnixMicro()); err != nil {
				tb.Fatal(err)
			}
		}
		if err := tx.Commit(); err != nil {
			tb.Fatal(err)
		}
	}
}

func queryPlan(t *testing.T, db *sql.DB, query string, args ...any) string {
	t.Helper()
	rows, err := db.Query(`EXPLAIN QUERY PLAN `+query, args...)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	var lines []string
	for rows.Next() {
		var id, parent, notused int
		var detail string
		if err := rows.Scan(&id, &parent, &notused, &detail); err != nil {
			t.Fatal(err)
		}
		lines = append(lines, detail)
	}
	return strings.Join(lines, "\n")
}

// TestDueQueryUsesIndex: with 20,000 deferred messages, the scheduler's scan reads the due index
// (SEARCH), never the whole table (SCAN), and dispatches exactly the due recipients.
func TestDueQueryUsesIndex(t *testing.T) {
	f := newFixture(t, nil)
	now := f.clk.Now()
	fill(t, f.q.db, 0, 20000, now.Add(-time.Hour), 1, func(i int) time.Time { return now.Add(time.Hour + time.Duration(i)*time.Millisecond) })
	fill(t, f.q.db, 20000, 10, now.Add(-time.Hour), 1, func(i int) time.Time { return now.Add(-time.Duration(i) * time.Second) })
	f.q.db.Exec(`ANALYZE`)
	plan := queryPlan(t, f.q.rdb, dueQuery, now.UnixMicro())
	if !strings.Contains(plan, "SEARCH r USING INDEX rcpt_due (state=? AND next_attempt<?)") || strings.Contains(plan, "SCAN") {
		t.Fatalf("due query plan:\n%s", plan)
	}
	plan = queryPlan(t, f.q.rdb, `SELECT `+envColumns+` FROM msg m WHERE m.state = 2 LIMIT 100`)
	if !strings.Contains(plan, "USING INDEX msg_failed") || strings.Contains(plan, "SCAN") {
		t.Fatalf("bounce scan plan:\n%s", plan)
	}
	// The admin list streams in arrival order without sorting the whole queue first.
	plan = queryPlan(t, f.q.rdb, fmt.Sprintf(listQuery, "m.held", ""), stateDelivered)
	if strings.Contains(plan, "TEMP B-TREE") || !strings.Contains(plan, "SCAN m") {
		t.Fatalf("list plan:\n%s", plan)
	}
	if es, more, err := f.q.Entries(context.Background(), Filter{Domain: "d7.test"}, 5); err != nil || len(es) != 5 || !more {
		t.Fatalf("list with a limit: %v %v %d", err, more, len(es))
	}
	plan = queryPlan(t, f.q.db, retryAllChunk, 0, heldNext, retryChunk)
	if !strings.Contains(plan, "INDEX rcpt_due (state=? AND next_attempt>? AND next_attempt<?)") || strings.Contains(plan, "SCAN") {
		t.Fatalf("retry all plan:\n%s", plan)
	}
	plan = queryPlan(t, f.q.rdb, delayQuery, now.UnixMicro())
	if !strings.Contains(plan, "SEARCH r USING INDEX rcpt_unwarned (received<?)") || strings.Contains(plan, "SCAN") {
		t.Fatalf("delay scan plan:\n%s", plan)
	}
	if err := f.q.RunDue(context.Background()); err != nil {
		t.Fatal(err)
	}
	f.waitAttempts(10)
	time.Sleep(20 * time.Millisecond)
	if f.rec.Attempts() != 10 || len(f.rec.Deliveries()) != 10 {
		t.Fatalf("%d attempts for 10 due recipients", f.rec.Attempts())
	}
	if n := f.count("msg"); n != 20000 {
		t.Fatalf("%d messages left, want the 20000 deferred", n)
	}
}

// TestRetryAllInChunks: retry all reschedules a backlog larger than one chunk completely, and
// leaves the held message alone. The queue is not started, so nothing is delivered meanwhile.
func TestRetryAllInChunks(t *testing.T) {
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	q, err := Open(Options{Dir: t.TempDir(), Now: func() time.Time { return now }})
	if err != nil {
		t.Fatal(err)
	}
	defer q.Close(context.Background())
	q.retryChunk = 1000
	n := 2*q.retryChunk + 500
	fill(t, q.db, 0, n, now.Add(-time.Hour), 1, func(i int) time.Time { return now.Add(time.Hour + time.Duration(i)*time.Millisecond) })
	if err := q.Hold(context.Background(), "S000000000000007"); err != nil {
		t.Fatal(err)
	}
	got, err := q.RetryAll(context.Background())
	if err != nil || got != n-1 {
		t.Fatalf("retry all: %d %v, want %d", got, err, n-1)
	}
	var later int
	q.rdb.QueryRow(`SELECT COUNT(*) FROM rcpt WHERE state = 0 AND next_attempt > ?`, now.UnixMicro()).Scan(&later)
	if later != 1 {
		t.Fatalf("%d recipients not rescheduled, want only the held one", later)
	}
}

// TestQueueScale is issue 4's measurement, opt-in because it writes about 1 GB and takes
// minutes: POSTAMT_SCALE=1000000 go test -run TestQueueScale -v -timeout 1h ./internal/queue
// It fills a queue with deferred messages in steps and reports, at each size, the time to open
// the queue (start-up recovery), the time of one scheduler pass (RunDue with 100 recipients due),
// and the process's peak resident memory.
func TestQueueScale(t *testing.T) {
	total := 0
	fmt.Sscan(os.Getenv("POSTAMT_SCALE"), &total)
	if total <= 0 {
		t.Skip("set POSTAMT_SCALE=N (e.g. 1000000) to run")
	}
	dir := t.TempDir()
	if d := os.Getenv("POSTAMT_SCALE_DIR"); d != "" {
		dir = d
	}
	now := time.Date(2026, 1, 1, 12, 0, 0, 0, time.UTC)
	open := func() (*Queue, time.Duration) {
		start := time.Now()
		q, err := Open(Options{Dir: dir, Now: func() time.Time { return now },
			Transports: []transport.Transport{&transporttest.Recorder{}}, Workers: 1,
			DelayWarning: 4 * time.Hour, Bounce: func(context.Context, *Bounce) error { return nil }})
		if err != nil {
			t.Fatal(err)
		}
		return q, time.Since(start)
	}
	q, _ := open()
	// 100 recipients due now; the queue is never started, so they are dispatched to the work
	// channel once and then stay in flight: every later pass reads them again and skips them.
	fill(t, q.db, 0, 100, now.Add(-time.Hour), 1, func(i int) time.Time { return now.Add(-time.Duration(i+1) * time.Second) })
	q.Close(context.Background())
	have := 0
	t.Logf("machine: %s/%s, %d CPUs, %s", runtime.GOOS, runtime.GOARCH, runtime.NumCPU(), cpuModel())
	t.Logf("%10s %12s %10s %14s %14s %12s %12s %12s", "deferred", "fill", "open", "RunDue p50", "RunDue max", "delay scan", "Counts", "VmHWM")
	for _, size := range []int{10000, 100000, 1000000, 10000000} {
		if size > total {
			break
		}
		q, _ := open()
		start := time.Now()
		// Deferred for an hour or more, received an hour ago: not due, no delay warning yet.
		fill(t, q.db, 100+have, size-have, now.Add(-time.Hour), 1, func(i int) time.Time {
			return now.Add(time.Hour + time.Duration(i%100000)*time.Second)
		})
		fillTime := time.Since(start)
		have = size
		q.db.Exec(`ANALYZE`)
		q.Close(context.Background())

		q, openTime := open()
		var runs []time.Duration
		for i := 0; i < 51; i++ {
			start := time.Now()
			if err := q.RunDue(context.Background()); err != nil {
				t.Fatal(err)
			}
			runs = append(runs, time.Since(start))
		}
		runs = runs[1:] // the first pass also dispatches the 100 due recipients
		slices.Sort(runs)
		// The delay-warning scan runs at most once a minute; time one on its own.
		q.bounceMu.Lock()
		q.lastDelayScan = time.Time{}
		start = time.Now()
		if err := q.warnDelayed(context.Background()); err != nil {
			t.Fatal(err)
		}
		delayScan := time.Since(start)
		q.bounceMu.Unlock()
		start = time.Now()
		if _, _, _, err := q.Counts(context.Background()); err != nil {
			t.Fatal(err)
		}
		counts := time.Since(start)
		if n := len(q.work); n != 100 {
			t.Fatalf("%d jobs dispatched, want the 100 due", n)
		}
		q.Close(context.Background())
		t.Logf("%10d %12s %10s %14s %14s %12s %12s %9d MB", size, fillTime.Round(time.Millisecond), openTime.Round(time.Millisecond),
			runs[len(runs)/2].Round(time.Microsecond), runs[len(runs)-1].Round(time.Microsecond), delayScan.Round(time.Microsecond),
			counts.Round(time.Microsecond), vmHWM()>>10)
	}
}

// vmHWM is the process's peak resident set in KiB.
func vmHWM() int {
	b, _ := os.ReadFile("/proc/self/status")
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, "VmHWM:"); ok {
			var kb int
			fmt.Sscan(strings.TrimSuffix(strings.TrimSpace(v), " kB"), &kb)
			return kb
		}
	}
	return -1
}

func cpuModel() string {
	b, _ := os.ReadFile("/proc/cpuinfo")
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, "model name"); ok {
			return strings.TrimSpace(strings.TrimPrefix(strings.TrimSpace(v), ":"))
		}
	}
	return "unknown CPU"
}
