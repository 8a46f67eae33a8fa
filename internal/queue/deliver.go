package queue

import (
	"bytes"
	"context"
	"database/sql"
	"fmt"
	"io"
	"strconv"
	"strings"
	"time"

	"github.com/postamt/postamt/internal/mail"
	"github.com/postamt/postamt/internal/smtp"
	"github.com/postamt/postamt/internal/transport"
)

// job is one delivery attempt: recipients of one message that share a route.
type job struct {
	env      *mail.Envelope // shared by the jobs of one message; read-only
	mem      *memBody       // the body in memory (first attempt of an inline body), or nil
	idx      []int          // recipient indexes in env.Rcpts
	attempts []int          // attempts made so far, per recipient
	route    mail.Route
}

func rcptKey(id string, idx int) string { return id + "/" + strconv.Itoa(idx) }

// dispatchNew schedules a just-committed message without touching the database: on the hot path
// the envelope is still in memory.
func (q *Queue) dispatchNew(env *mail.Envelope, mem *memBody) {
	idx := make([]int, len(env.Rcpts))
	for i := range idx {
		idx[i] = i
	}
	q.dispatch(env, mem, idx, make([]int, len(env.Rcpts)), -1)
}

// dispatch groups recipients by route and hands the jobs to the workers. When block is false and
// the workers are saturated, the recipients stay pending in the database and the scheduler's next
// scan picks them up: nothing is lost, delivery is only later.
//
// readSeq is the commit sequence number read before the rows were read (-1 for a new message):
// a recipient whose last outcome was committed after that may have been read stale and is skipped.
func (q *Queue) dispatch(env *mail.Envelope, mem *memBody, idx, attempts []int, readSeq int64) {
	byRoute := map[mail.Route]*job{}
	var order []*job
	q.mu.Lock()
	for n, i := range idx {
		k := rcptKey(env.ID, i)
		if seq, ok := q.inflight[k]; ok && (seq == busy || seq > readSeq) {
			continue
		}
		q.inflight[k] = busy
		r := env.Rcpts[i].Route
		j := byRoute[r]
		if j == nil {
			j = &job{env: env, mem: mem, route: r}
			byRoute[r] = j
			order = append(order, j)
		}
		j.idx = append(j.idx, i)
		j.attempts = append(j.attempts, attempts[n])
	}
	q.mu.Unlock()
	if mem != nil {
		mem.refs.Store(int32(len(order)))
		if len(order) == 0 {
			mem.release()
		}
	}
	block := readSeq >= 0
	for _, j := range order {
		if claimed, parked := q.claimOrPark(j); !claimed {
			if !parked {
				// Too many waiting already: the recipients stay pending in the database and a
				// scan picks them up when a slot frees.
				j.mem.done()
				q.release(j)
			}
			continue
		}
		if block {
			select {
			case q.work <- j:
				continue
			case <-q.stop:
			}
		} else {
			select {
			case q.work <- j:
				continue
			default:
			}
		}
		if n := q.unclaim(j.route); n != nil {
			q.repark(n)
		}
		j.mem.done()
		q.release(j)
	}
}

// repark puts back a job that unclaim handed over but nobody can run now.
func (q *Queue) repark(j *job) {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.active[j.route]--; q.active[j.route] <= 0 {
		delete(q.active, j.route)
	}
	q.activeRemote--
	q.parked[j.route] = append([]*job{j}, q.parked[j.route]...)
	q.parkedN++
}

// limited reports routes whose concurrency is capped: remote destinations, where many parallel
// connections would look like an attack to the receiving server. Local transports batch or
// pipeline themselves.
func limited(r mail.Route) bool { return r.Transport == "remote" }

// maxParked bounds the jobs waiting in memory for a delivery slot. Past it, recipients wait in
// the database for the scheduler's next scan instead.
const maxParked = 20000

// claimOrPark takes one of the route's delivery slots, or else parks the job until a delivery
// to its destination finishes and hands the slot over (unclaim). Parking keeps a backlog for a
// slow destination in memory instead of having the scheduler re-read it from the database
// every time a slot frees: a profile of relaying 10,000 messages to one destination showed 71 %
// of the CPU in those rescans.
func (q *Queue) claimOrPark(j *job) (claimed, parked bool) {
	r := j.route
	if !limited(r) {
		return true, false
	}
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.active[r] < q.opts.DestinationLimit && q.activeRemote < q.opts.RemoteLimit {
		q.active[r]++
		q.activeRemote++
		return true, false
	}
	if q.parkedN >= maxParked {
		q.turnedAway.Store(true)
		return false, false
	}
	// The body is read back from the database when the job runs: waiting jobs must not hold
	// the memory budget that new messages need.
	j.mem.done()
	j.mem = nil
	q.parked[r] = append(q.parked[r], j)
	q.parkedN++
	return false, true
}

// unclaim gives the slot back. It returns a parked job that now holds a slot (same
// destination first, which also reuses its connection), for the calling worker to run next;
// if recipients were turned away meanwhile, the scheduler looks again.
func (q *Queue) unclaim(r mail.Route) *job {
	if !limited(r) {
		return nil
	}
	q.mu.Lock()
	if q.active[r]--; q.active[r] <= 0 {
		delete(q.active, r)
	}
	q.activeRemote--
	next := q.takeParked(r)
	q.mu.Unlock()
	if next == nil && q.turnedAway.Swap(false) {
		q.Kick()
	}
	return next
}

// takeParked claims a slot for a parked job, or returns nil. q.mu must be held.
func (q *Queue) takeParked(r mail.Route) *job {
	if q.parkedN == 0 || q.activeRemote >= q.opts.RemoteLimit || q.stopping {
		return nil
	}
	pick := func(r mail.Route) *job {
		l := q.parked[r]
		if len(l) == 0 || q.active[r] >= q.opts.DestinationLimit {
			return nil
		}
		j := l[0]
		l[0] = nil
		if len(l) == 1 {
			delete(q.parked, r)
		} else {
			q.parked[r] = l[1:]
		}
		q.parkedN--
		q.active[r]++
		q.activeRemote++
		return j
	}
	// A destination with nothing running goes first, so that one big backlog cannot starve
	// the others under the global limit; then the same destination, which reuses its connection.
	if len(q.parked) > 1 || q.parked[r] == nil {
		for other := range q.parked {
			if q.active[other] == 0 {
				if j := pick(other); j != nil {
					return j
				}
			}
		}
	}
	if j := pick(r); j != nil {
		return j
	}
	for other := range q.parked {
		if j := pick(other); j != nil {
			return j
		}
	}
	return nil
}

// busy marks a recipient with an attempt in progress; other values in inflight are tombstones:
// the commit sequence number after which the recipient's latest outcome is visible to readers.
const busy = -1

func (q *Queue) release(j *job) {
	seq := q.commitSeq.Load()
	q.mu.Lock()
	for _, i := range j.idx {
		q.inflight[rcptKey(j.env.ID, i)] = seq
	}
	q.mu.Unlock()
}

// dropTombstones forgets outcomes that every later scan sees anyway.
func (q *Queue) dropTombstones(upTo int64) {
	q.mu.Lock()
	for k, seq := range q.inflight {
		if seq != busy && seq <= upTo {
			delete(q.inflight, k)
		}
	}
	q.mu.Unlock()
}

func (q *Queue) worker() {
	defer q.wg.Done()
	for {
		select {
		case j := <-q.work:
			for j != nil {
				q.attempt(j)
				j = q.unclaim(j.route)
			}
		case <-q.stop:
			return
		}
	}
}

// outcome is the new state of one recipient after an attempt.
type outcome struct {
	idx      int
	state    int
	attempts int
	next     time.Time
	reply    *smtp.Reply
	remote   string
	tls      string
	success  int // successDelivered or successRelayed when the sender asked for NOTIFY=SUCCESS
}

func (q *Queue) attempt(j *job) {
	env := j.env
	rcpts := make([]mail.Recipient, len(j.idx))
	for n, i := range j.idx {
		rcpts[n] = env.Rcpts[i]
	}
	msg := &transport.Message{
		ID: env.ID, From: env.From, Size: env.Size, ReceivedAt: env.ReceivedAt,
		SMTPUTF8: env.SMTPUTF8, Body8Bit: env.Body == "8BITMIME", Ret: env.Ret, EnvID: env.EnvID,
		Open: func() (io.ReadCloser, error) {
			if j.mem != nil {
				return io.NopCloser(bytes.NewReader(j.mem.data)), nil
			}
			return q.openBody(env)
		},
	}
	start := q.opts.Now()
	var results []transport.Result
	var err error
	if tr := q.transports[j.route.Transport]; tr == nil {
		err = smtp.Replyf(451, smtp.EnhancedCode{4, 3, 5}, "No %q transport is configured", j.route.Transport)
	} else {
		ctx, cancel := context.WithTimeout(q.ctx, q.opts.AttemptTimeout)
		results, err = tr.Deliver(ctx, msg, rcpts)
		cancel()
		if err == nil && len(results) != len(rcpts) {
			err = fmt.Errorf("transport %s returned %d results for %d recipients", tr.Name(), len(results), len(rcpts))
		}
	}
	j.mem.done()
	j.mem = nil
	now := q.opts.Now()
	if q.opts.AttemptLatency != nil {
		q.opts.AttemptLatency(j.route.Transport, now.Sub(start))
	}
	outs := make([]outcome, len(j.idx))
	for n, i := range j.idx {
		o := outcome{idx: i, attempts: j.attempts[n] + 1}
		if err != nil {
			o.reply = smtp.ReplyFor(err, env.ID)
		} else {
			o.reply, o.remote, o.tls = results[n].Reply, results[n].RemoteMTA, results[n].TLS
		}
		switch {
		case o.reply == nil:
			o.state = stateDelivered
			if notifySuccess(rcpts[n].Notify) {
				switch {
				case err == nil && results[n].Relayed:
					o.success = successRelayed
				case j.route.Transport != "remote":
					o.success = successDelivered
				}
			}
		case o.reply.Permanent():
			o.state = stateFailed
		default:
			o.next = now.Add(q.backoff(o.attempts))
			o.state = statePending
			if o.next.Sub(env.ReceivedAt) > q.opts.MaxAge {
				o.state = stateFailed
				o.reply = smtp.Replyf(550, smtp.EnhancedCode{5, 4, 7}, "Delivery time expired after %d attempts; last error: %s",
					o.attempts, o.reply.Line())
			}
		}
		outs[n] = o
		q.logDelivery(env, rcpts[n], o, now.Sub(start), err)
	}
	q.record(j, outs)
}

// backoff is the fixed schedule with jitter, so that messages queued together after an outage
// do not all retry at the same instant (chasquid's reasoning).
func (q *Queue) backoff(attempts int) time.Duration {
	iv := q.opts.RetryIntervals
	d := iv[min(attempts-1, len(iv)-1)]
	return d + q.opts.Jitter(d)
}

func (q *Queue) logDelivery(env *mail.Envelope, r mail.Recipient, o outcome, took time.Duration, err error) {
	status := map[int]string{stateDelivered: "sent", statePending: "deferred", stateFailed: "bounced"}[o.state]
	attrs := []any{"id", env.ID, "to", r.Addr, "transport", r.Route.Transport, "status", status,
		"attempt", o.attempts, "delay", q.opts.Now().Sub(env.ReceivedAt).Round(time.Millisecond), "took", took.Round(time.Microsecond)}
	if r.Orig != r.Addr {
		attrs = append(attrs, "orig_to", r.Orig)
	}
	if o.remote != "" {
		attrs = append(attrs, "relay", o.remote)
	}
	if o.tls != "" {
		attrs = append(attrs, "tls", o.tls)
	}
	if o.reply != nil {
		attrs = append(attrs, "reply", o.reply.Line())
		if o.reply.Err != nil {
			attrs = append(attrs, "cause", o.reply.Err.Error())
		}
	}
	if o.state == statePending {
		attrs = append(attrs, "next_attempt", o.next.UTC().Format(time.RFC3339))
	}
	q.countResult(r.Route, o.state)
	switch o.state {
	case stateDelivered:
		q.metrics.Delivered.Add(1)
		q.log.Info("delivery", attrs...)
	case statePending:
		q.metrics.Deferred.Add(1)
		q.log.Warn("delivery", attrs...)
	default:
		q.metrics.Failed.Add(1)
		q.log.Warn("delivery", attrs...)
	}
}

// record stores an attempt's outcomes through the group commit. It does not wait: the outcome of
// a delivery that is lost in a crash is only a duplicate delivery later (at-least-once).
func (q *Queue) record(j *job, outs []outcome) {
	id := j.env.ID
	var finished, hasFailed bool
	o := &op{
		apply: func(tx *sql.Tx) error {
			upd := tx.Stmt(q.stmts.updRcpt)
			for _, o := range outs {
				errText := ""
				if o.reply != nil {
					errText = o.reply.Line()
				}
				next := int64(0)
				if !o.next.IsZero() {
					next = o.next.UnixMicro()
				}
				if _, err := upd.Exec(o.state, o.attempts, next, errText, o.remote, o.success, id, o.idx); err != nil {
					return fmt.Errorf("queue: update %s/%d: %w", id, o.idx, err)
				}
			}
			var pending, failed int
			if err := tx.Stmt(q.stmts.countState).QueryRow(id).Scan(&pending, &failed); err != nil {
				return fmt.Errorf("queue: count %s: %w", id, err)
			}
			finished, hasFailed = pending == 0, failed > 0
			switch {
			case !finished:
			case hasFailed:
				// Kept, with the reasons, for the bounce (DSN) stage.
				_, err := tx.Stmt(q.stmts.failMsg).Exec(id)
				return err
			default:
				if _, err := tx.Stmt(q.stmts.delRcpts).Exec(id); err != nil {
					return err
				}
				if j.env.BodyInline {
					if _, err := tx.Stmt(q.stmts.delBody).Exec(id); err != nil {
						return err
					}
				}
				_, err := tx.Stmt(q.stmts.delMsg).Exec(id)
				return err
			}
			return nil
		},
		after: func() {
			if finished && !hasFailed && !j.env.BodyInline {
				q.spool.Remove(id)
			}
			if finished && hasFailed {
				q.Kick() // the scheduler hands it to the bounce stage
			}
		},
	}
	// Release the in-flight marks only after the commit attempt, so the scheduler cannot pick a
	// recipient up again while its outcome is still being written.
	done := make(chan error, 1)
	o.done = done
	q.commitCh <- o
	go func() {
		if err := <-done; err != nil {
			q.log.Error("queue: cannot record delivery outcome; it will be retried", "id", id, "err", err)
		}
		q.release(j)
	}()
}

// Kick makes the scheduler scan for due recipients now.
func (q *Queue) Kick() {
	select {
	case q.kick <- struct{}{}:
	default:
	}
}

func (q *Queue) scheduler() {
	defer q.wg.Done()
	t := time.NewTicker(q.opts.ScanInterval)
	defer t.Stop()
	for {
		if err := q.RunDue(q.ctx); err != nil && q.ctx.Err() == nil {
			q.log.Error("queue: scan", "err", err)
		}
		select {
		case <-q.stop:
			return
		case <-t.C:
		case <-q.kick:
		}
	}
}

// RunDue dispatches every pending recipient whose next attempt is due by the queue's clock.
// Tests call it after moving an injected clock forward instead of sleeping.
func (q *Queue) RunDue(ctx context.Context) error {
	if err := q.bounceDue(ctx); err != nil {
		return err
	}
	readSeq := q.commitSeq.Load()
	rows, err := q.rdb.QueryContext(ctx, dueQuery, q.opts.Now().UnixMicro())
	if err != nil {
		return fmt.Errorf("queue: scan: %w", err)
	}
	type pend struct {
		env      *mail.Envelope
		idx      []int
		attempts []int
	}
	msgs := map[string]*pend{}
	var order []string
	for rows.Next() {
		var r mail.Recipient
		var id string
		var idx, attempts int
		var received int64
		env := &mail.Envelope{}
		if err := rows.Scan(&id, &idx, &r.Addr, &r.Orig, &r.ORCPT, &r.Notify, &r.Route.Transport, &r.Route.NextHop,
			&attempts, &env.From, &env.Size, &received, &env.SMTPUTF8, &env.Body, &env.Ret, &env.EnvID, &env.Client, &env.Helo, &env.BodyInline, &env.Prefix); err != nil {
			rows.Close()
			return fmt.Errorf("queue: scan: %w", err)
		}
		p := msgs[id]
		if p == nil {
			env.ID = id
			env.ReceivedAt = time.UnixMicro(received)
			p = &pend{env: env}
			msgs[id] = p
			order = append(order, id)
		}
		// Recipient indexes are sparse here; grow the slice so that idx addresses it.
		for len(p.env.Rcpts) <= idx {
			p.env.Rcpts = append(p.env.Rcpts, mail.Recipient{})
		}
		p.env.Rcpts[idx] = r
		p.idx = append(p.idx, idx)
		p.attempts = append(p.attempts, attempts)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return fmt.Errorf("queue: scan: %w", err)
	}
	for _, id := range order {
		p := msgs[id]
		q.dispatch(p.env, nil, p.idx, p.attempts, readSeq)
	}
	q.dropTombstones(readSeq)
	return nil
}

// notifySuccess reports whether RFC 3461 NOTIFY asks for a success notice.
func notifySuccess(notify string) bool {
	for _, n := range strings.Split(notify, ",") {
		if strings.EqualFold(n, "SUCCESS") {
			return true
		}
	}
	return false
}
