package queue

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"strings"
	"time"
	"unicode"

	"github.com/postamt/postamt/internal/smtp"
)

// Errors of the administrative operations; the admin API maps them to HTTP status codes.
var (
	ErrNotFound = errors.New("no such message in the queue")
	ErrHeld     = errors.New("the message is held; release it first")
	ErrNotHeld  = errors.New("the message is not held")
	ErrNoneLeft = errors.New("the message has no undelivered recipient left")
)

// heldNext is the next_attempt of a held message's recipients: past any clock, so that they
// stay out of the head of the due index the scheduler reads. What keeps them from being
// dispatched is msg.held; this only keeps a large held backlog from costing every scan.
const heldNext = int64(1) << 62

// Message is one queued message as `postamt queue show` prints it.
type Message struct {
	ID         string       `json:"id"`
	From       string       `json:"from"`
	Received   time.Time    `json:"received"`
	Size       int64        `json:"size"`
	SMTPUTF8   bool         `json:"smtputf8"`
	Body       string       `json:"body,omitempty"` // 7BIT, 8BITMIME, BINARYMIME
	Ret        string       `json:"ret,omitempty"`
	EnvID      string       `json:"envid,omitempty"`
	Client     string       `json:"client,omitempty"`
	Helo       string       `json:"helo,omitempty"`
	Held       bool         `json:"held"`
	Bouncing   bool         `json:"bouncing"` // all recipients are done, some failed: a DSN is due
	Recipients []RcptStatus `json:"recipients"`
}

// RcptStatus is one recipient of a Message.
type RcptStatus struct {
	Index       int       `json:"index"`
	Addr        string    `json:"addr"`
	Orig        string    `json:"orig,omitempty"`
	ORCPT       string    `json:"orcpt,omitempty"`
	Notify      string    `json:"notify,omitempty"`
	Transport   string    `json:"transport"`
	NextHop     string    `json:"next_hop,omitempty"`
	State       string    `json:"state"`     // pending, delivered, failed
	InFlight    bool      `json:"in_flight"` // an attempt is running right now
	Attempts    int       `json:"attempts"`
	LastReply   string    `json:"last_reply,omitempty"` // verbatim, as the peer (or we) said it
	RemoteMTA   string    `json:"remote_mta,omitempty"`
	NextAttempt time.Time `json:"next_attempt,omitzero"` // zero when not scheduled or held
}

var stateNames = map[int]string{statePending: "pending", stateDelivered: "delivered", stateFailed: "failed"}

// Show returns a message with all its recipients.
func (q *Queue) Show(ctx context.Context, id string) (*Message, error) {
	m, err := show(ctx, q.rdb, id)
	if err != nil {
		return nil, err
	}
	q.mu.Lock()
	for i := range m.Recipients {
		m.Recipients[i].InFlight = q.inflight[rcptKey(id, m.Recipients[i].Index)] == busy
	}
	q.mu.Unlock()
	return m, nil
}

// ShowDir reads one message from the queue in dir without opening it for writing, like List;
// without a server, nothing is in flight.
func ShowDir(ctx context.Context, dir, id string) (*Message, error) {
	db, err := openReadOnly(dir)
	if err != nil {
		return nil, err
	}
	defer db.Close()
	return show(ctx, db, id)
}

func show(ctx context.Context, db *sql.DB, id string) (*Message, error) {
	m := &Message{ID: id}
	var received int64
	var state int
	err := db.QueryRowContext(ctx, `SELECT sender, size, received, smtputf8, body, ret, envid, client, helo, held, state
		FROM msg WHERE id = ?`, id).Scan(&m.From, &m.Size, &received, &m.SMTPUTF8, &m.Body, &m.Ret, &m.EnvID, &m.Client, &m.Helo, &m.Held, &state)
	if errors.Is(err, sql.ErrNoRows) {
		return nil, fmt.Errorf("%s: %w", id, ErrNotFound)
	}
	if err != nil {
		return nil, fmt.Errorf("queue: show %s: %w", id, err)
	}
	m.Received, m.Bouncing = time.UnixMicro(received), state == 2
	rows, err := db.QueryContext(ctx, `SELECT idx, addr, orig, orcpt, notify, transport, next_hop, state, attempts,
		next_attempt, last_error, remote_mta FROM rcpt WHERE msg_id = ? ORDER BY idx`, id)
	if err != nil {
		return nil, fmt.Errorf("queue: show %s: %w", id, err)
	}
	defer rows.Close()
	for rows.Next() {
		var r RcptStatus
		var st int
		var next int64
		if err := rows.Scan(&r.Index, &r.Addr, &r.Orig, &r.ORCPT, &r.Notify, &r.Transport, &r.NextHop, &st, &r.Attempts,
			&next, &r.LastReply, &r.RemoteMTA); err != nil {
			return nil, fmt.Errorf("queue: show %s: %w", id, err)
		}
		r.State = stateNames[st]
		if st == statePending && !m.Held && next < heldNext {
			r.NextAttempt = time.UnixMicro(next)
		}
		m.Recipients = append(m.Recipients, r)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("queue: show %s: %w", id, err)
	}
	return m, nil
}

// Held counts the held messages.
func (q *Queue) Held(ctx context.Context) (n int, err error) {
	err = q.rdb.QueryRowContext(ctx, `SELECT COUNT(*) FROM msg WHERE held = 1`).Scan(&n)
	return
}

// Retry makes the message's pending recipients due now and wakes the scheduler. It returns how
// many recipients were rescheduled; one with an attempt running keeps that attempt's outcome.
func (q *Queue) Retry(ctx context.Context, id string) (int, error) {
	var n int64
	err := q.commit(func(tx *sql.Tx) error {
		held, err := msgHeld(tx, id)
		if err != nil {
			return err
		}
		if held {
			return ErrHeld
		}
		res, err := tx.Exec(`UPDATE rcpt SET next_attempt = ? WHERE msg_id = ? AND state = 0`, q.opts.Now().UnixMicro(), id)
		if err != nil {
			return err
		}
		n, err = res.RowsAffected()
		return err
	}, nil)
	if err != nil {
		return 0, adminErr("retry", id, err)
	}
	q.Kick()
	return int(n), nil
}

// RetryAll makes every pending recipient of every message that is not held due now. It works in
// transactions of retryChunk recipients, so that with a large backlog the single writer is not
// taken away from accepting mail for seconds at a time.
func (q *Queue) RetryAll(ctx context.Context) (int, error) {
	total := 0
	now := q.opts.Now().UnixMicro()
	for ctx.Err() == nil {
		var n int64
		err := q.commit(func(tx *sql.Tx) error {
			// Held recipients sit at heldNext, outside the range; rescheduled ones fall out of it.
			// CROSS JOIN keeps rcpt (its due index) the outer loop: each chunk then starts where
			// the previous one ended instead of walking msg from the beginning again.
			res, err := tx.Exec(retryAllChunk, now, heldNext, q.retryChunk)
			if err != nil {
				return err
			}
			n, err = res.RowsAffected()
			return err
		}, nil)
		if err != nil {
			return total, fmt.Errorf("queue: retry all: %w", err)
		}
		total += int(n)
		q.Kick()
		if n < int64(q.retryChunk) {
			return total, nil
		}
	}
	return total, ctx.Err()
}

// retryChunk is how many recipients one RetryAll transaction reschedules (Queue.retryChunk
// unless a test sets it smaller).
const retryChunk = 10000

const retryAllChunk = `UPDATE rcpt SET next_attempt = ?1 WHERE (msg_id, idx) IN (
	SELECT r.msg_id, r.idx FROM rcpt r CROSS JOIN msg m ON m.id = r.msg_id
	WHERE r.state = 0 AND r.next_attempt > ?1 AND r.next_attempt < ?2 AND m.held = 0 LIMIT ?3)`

// Hold keeps the message from being dispatched until Release, across restarts. An attempt
// already running finishes; its outcome is recorded, and nothing new starts.
func (q *Queue) Hold(ctx context.Context, id string) error {
	var idxs []int
	err := q.commit(func(tx *sql.Tx) error {
		var state int
		if err := tx.QueryRow(`SELECT state FROM msg WHERE id = ?`, id).Scan(&state); err != nil {
			return err
		}
		if state == 2 {
			// Nothing is left to deliver; its DSN is on the way and holding would only lose it.
			return ErrNoneLeft
		}
		if _, err := tx.Exec(`UPDATE msg SET held = 1 WHERE id = ?`, id); err != nil {
			return err
		}
		if _, err := tx.Exec(`UPDATE rcpt SET next_attempt = ? WHERE msg_id = ? AND state = 0`, heldNext, id); err != nil {
			return err
		}
		var err error
		idxs, err = rcptIndexes(tx, id)
		return err
	}, func() { q.unpark(id); q.tombstone(id, idxs) })
	return adminErr("hold", id, err)
}

// Release undoes Hold: the pending recipients are due at once.
func (q *Queue) Release(ctx context.Context, id string) error {
	err := q.commit(func(tx *sql.Tx) error {
		held, err := msgHeld(tx, id)
		if err != nil {
			return err
		}
		if !held {
			return ErrNotHeld
		}
		if _, err := tx.Exec(`UPDATE msg SET held = 0 WHERE id = ?`, id); err != nil {
			return err
		}
		_, err = tx.Exec(`UPDATE rcpt SET next_attempt = ? WHERE msg_id = ? AND state = 0`, q.opts.Now().UnixMicro(), id)
		return err
	}, nil)
	if err != nil {
		return adminErr("release", id, err)
	}
	q.Kick()
	return nil
}

// Delete removes the message, its recipients and its body without a DSN. An attempt already
// running finishes, but its outcome finds no rows to update and brings nothing back.
func (q *Queue) Delete(ctx context.Context, id string) error {
	var idxs []int
	var inline bool
	err := q.commit(func(tx *sql.Tx) error {
		if err := tx.QueryRow(`SELECT inline FROM msg WHERE id = ?`, id).Scan(&inline); err != nil {
			return err
		}
		var err error
		if idxs, err = rcptIndexes(tx, id); err != nil {
			return err
		}
		for _, st := range []*sql.Stmt{q.stmts.delRcpts, q.stmts.delBody, q.stmts.delMsg} {
			if _, err := tx.Stmt(st).Exec(id); err != nil {
				return err
			}
		}
		return nil
	}, func() {
		q.unpark(id)
		q.tombstone(id, idxs)
		if !inline {
			// A running attempt that has the file open still reads it to the end (POSIX).
			q.spool.Remove(id)
		}
	})
	if err == nil {
		q.log.Info("queue: message deleted by the administrator", "id", id)
	}
	return adminErr("delete", id, err)
}

// Bounce fails every undelivered recipient with a 550 5.0.0 reply carrying reason, so that the
// bounce stage returns the message to its sender with a DSN as it does for any permanent failure.
// It returns how many recipients were failed.
func (q *Queue) Bounce(ctx context.Context, id, reason string) (int, error) {
	reason = cleanReason(reason)
	if reason == "" {
		reason = "no reason given"
	}
	reply := smtp.Replyf(550, smtp.EnhancedCode{5, 0, 0}, "Returned to the sender by the postmaster: %s", reason).Line()
	var n int64
	var idxs []int
	err := q.commit(func(tx *sql.Tx) error {
		if _, err := msgHeld(tx, id); err != nil {
			return err
		}
		res, err := tx.Exec(`UPDATE rcpt SET state = ?, last_error = ?, remote_mta = '' WHERE msg_id = ? AND state = ?`,
			stateFailed, reply, id, statePending)
		if err != nil {
			return err
		}
		if n, err = res.RowsAffected(); err != nil {
			return err
		}
		if n == 0 {
			return ErrNoneLeft
		}
		// Held or not, the message now waits only for its DSN.
		if _, err := tx.Exec(`UPDATE msg SET state = 2, held = 0 WHERE id = ?`, id); err != nil {
			return err
		}
		idxs, err = rcptIndexes(tx, id)
		return err
	}, func() { q.unpark(id); q.tombstone(id, idxs) })
	if err != nil {
		return 0, adminErr("bounce", id, err)
	}
	q.log.Info("queue: message bounced by the administrator", "id", id, "recipients", n, "reason", reason)
	q.Kick()
	return int(n), nil
}

// tombstone keeps a scan that read the message's rows before an admin change committed from
// dispatching it (see dispatch's readSeq). Recipients with an attempt running keep their busy
// mark; release sets their tombstone when the attempt's outcome is in.
func (q *Queue) tombstone(id string, idxs []int) {
	seq := q.commitSeq.Load()
	q.mu.Lock()
	for _, i := range idxs {
		k := rcptKey(id, i)
		if v, ok := q.inflight[k]; !ok || v != busy {
			q.inflight[k] = seq
		}
	}
	q.mu.Unlock()
}

// unpark takes the message's jobs out of the wait for a delivery slot (see claimOrPark), so that
// a job parked before a hold, delete or bounce does not run after it. Their recipients get a
// tombstone like those of a finished attempt.
func (q *Queue) unpark(id string) {
	seq := q.commitSeq.Load()
	q.mu.Lock()
	defer q.mu.Unlock()
	for r, l := range q.parked {
		kept := l[:0]
		for _, j := range l {
			if j.env.ID != id {
				kept = append(kept, j)
				continue
			}
			q.parkedN--
			for _, i := range j.idx {
				q.inflight[rcptKey(id, i)] = seq
			}
		}
		clear(l[len(kept):])
		if len(kept) == 0 {
			delete(q.parked, r)
		} else {
			q.parked[r] = kept
		}
	}
}

// attempting reports whether a delivery attempt of the message is running.
func (q *Queue) attempting(id string) bool {
	prefix := id + "/"
	q.mu.Lock()
	defer q.mu.Unlock()
	for k, v := range q.inflight {
		if v == busy && strings.HasPrefix(k, prefix) {
			return true
		}
	}
	return false
}

func msgHeld(tx *sql.Tx, id string) (bool, error) {
	var held bool
	err := tx.QueryRow(`SELECT held FROM msg WHERE id = ?`, id).Scan(&held)
	return held, err
}

func rcptIndexes(tx *sql.Tx, id string) ([]int, error) {
	rows, err := tx.Query(`SELECT idx FROM rcpt WHERE msg_id = ?`, id)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []int
	for rows.Next() {
		var i int
		if err := rows.Scan(&i); err != nil {
			return nil, err
		}
		out = append(out, i)
	}
	return out, rows.Err()
}

// adminErr keeps the sentinel errors matchable through the commit loop's wrapping.
func adminErr(op, id string, err error) error {
	switch {
	case err == nil:
		return nil
	case errors.Is(err, sql.ErrNoRows), errors.Is(err, ErrNotFound):
		return fmt.Errorf("%s %s: %w", op, id, ErrNotFound)
	case errors.Is(err, ErrHeld), errors.Is(err, ErrNotHeld), errors.Is(err, ErrNoneLeft):
		return fmt.Errorf("%s %s: %w", op, id, unwrapSentinel(err))
	}
	return fmt.Errorf("queue: %s %s: %w", op, id, err)
}

func unwrapSentinel(err error) error {
	for _, s := range []error{ErrHeld, ErrNotHeld, ErrNoneLeft} {
		if errors.Is(err, s) {
			return s
		}
	}
	return err
}

// cleanReason makes the admin's text fit in one reply line of a DSN.
func cleanReason(s string) string {
	s = strings.Map(func(r rune) rune {
		if unicode.IsControl(r) {
			return ' '
		}
		return r
	}, s)
	s = strings.Join(strings.Fields(s), " ")
	if r := []rune(s); len(r) > 200 {
		s = string(r[:200])
	}
	return s
}
