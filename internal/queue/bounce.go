package queue

import (
	"context"
	"database/sql"
	"fmt"
	"io"
	"time"

	"github.com/postamt/postamt/internal/mail"
)

// Failed is a recipient whose delivery failed for good, with what is known about why.
type Failed struct {
	mail.Recipient
	LastError   string // the final reply, e.g. "550 5.1.1 No such user"
	RemoteMTA   string // the host that gave it, "" when it was our own verdict
	Attempts    int
	LastAttempt time.Time
	// Relayed is set for a recipient in Bounce.Succeeded that was handed to a next hop without
	// DSN support ("relayed"), clear for a final delivery here ("delivered").
	Relayed bool
}

// Bounce is what the queue hands to Options.Bounce for a message with failed recipients.
type Bounce struct {
	Env    *mail.Envelope // the original envelope (Rcpts left empty)
	Failed []Failed
	// Succeeded are delivered recipients whose sender asked for NOTIFY=SUCCESS.
	Succeeded []Failed
	// Delayed marks a delay warning (RFC 3464 Action: delayed): the recipients in Failed are
	// still being retried, and the message stays in the queue.
	Delayed bool
	// Open reads the original message as stored.
	Open func() (io.ReadCloser, error)
}

// bounceDue hands finished messages with failed recipients to Options.Bounce and then removes
// them. A Bounce error keeps the message for the next scan.
func (q *Queue) bounceDue(ctx context.Context) error {
	if q.opts.Bounce == nil || !q.bounceMu.TryLock() {
		return nil // not configured, or another scan is bouncing right now
	}
	defer q.bounceMu.Unlock()
	envs, err := q.envelopes(ctx, `SELECT `+envColumns+` FROM msg m WHERE m.state = 2 LIMIT 100`)
	if err != nil {
		return fmt.Errorf("queue: bounce scan: %w", err)
	}
	for _, e := range envs {
		if q.attempting(e.ID) {
			// Bounced by the postmaster while an attempt was running: its outcome may still
			// turn a recipient into a delivery, so the DSN waits for it.
			continue
		}
		if err := q.bounceOne(ctx, e); err != nil {
			q.log.Error("queue: cannot bounce; will retry", "id", e.ID, "err", err)
		}
	}
	return q.warnDelayed(ctx)
}

// warnDelayed sends one delay DSN per message whose recipients have been retried for longer
// than DelayWarning (mox sends its at about 2h; the issue asks for 4h by default).
func (q *Queue) warnDelayed(ctx context.Context) error {
	// Hours-long thresholds need no per-second precision: scanning every pending recipient
	// once a minute instead of every second keeps the scheduler cheap under a backlog.
	now := q.opts.Now()
	if q.opts.DelayWarning <= 0 || now.Sub(q.lastDelayScan) < time.Minute {
		return nil
	}
	q.lastDelayScan = now
	cutoff := now.Add(-q.opts.DelayWarning).UnixMicro()
	envs, err := q.envelopes(ctx, delayQuery, cutoff)
	if err != nil {
		return fmt.Errorf("queue: delay scan: %w", err)
	}
	for _, e := range envs {
		failed, err := q.recipients(ctx, e.ID, `state = 0 AND warned = 0 AND attempts > 0`)
		if err != nil {
			return err
		}
		b := &Bounce{Env: e, Failed: failed, Delayed: true, Open: func() (io.ReadCloser, error) { return q.openBody(e) }}
		if err := q.opts.Bounce(ctx, b); err != nil {
			q.log.Error("queue: cannot send delay warning; will retry", "id", e.ID, "err", err)
			continue
		}
		if err := q.commit(func(tx *sql.Tx) error {
			_, err := tx.Exec(`UPDATE rcpt SET warned = 1 WHERE msg_id = ? AND state = 0 AND attempts > 0`, e.ID)
			return err
		}, nil); err != nil {
			return err
		}
	}
	return nil
}

// delayQuery finds messages due a delay warning through the partial index rcpt_unwarned, so
// its cost does not grow with the recipients that are too young or already warned.
const delayQuery = `SELECT DISTINCT ` + envColumns + ` FROM rcpt r INDEXED BY rcpt_unwarned JOIN msg m ON m.id = r.msg_id
	WHERE r.state = 0 AND r.warned = 0 AND r.attempts > 0 AND r.received <= ? LIMIT 100`

// recipients loads a message's recipients matching where (a fixed SQL condition).
func (q *Queue) recipients(ctx context.Context, id, where string) ([]Failed, error) {
	rows, err := q.rdb.QueryContext(ctx, `SELECT addr, orig, orcpt, notify, transport, next_hop, last_error, attempts, remote_mta, success
		FROM rcpt WHERE msg_id = ? AND `+where+` ORDER BY idx`, id)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []Failed
	for rows.Next() {
		var f Failed
		var success int
		if err := rows.Scan(&f.Addr, &f.Orig, &f.ORCPT, &f.Notify, &f.Route.Transport, &f.Route.NextHop, &f.LastError, &f.Attempts, &f.RemoteMTA, &success); err != nil {
			return nil, err
		}
		f.Relayed = success == successRelayed
		f.LastAttempt = q.opts.Now()
		out = append(out, f)
	}
	return out, rows.Err()
}

func (q *Queue) bounceOne(ctx context.Context, env *mail.Envelope) error {
	failed, err := q.recipients(ctx, env.ID, `state = 2`)
	if err != nil {
		return err
	}
	succeeded, err := q.recipients(ctx, env.ID, `state = 1 AND success > 0`)
	if err != nil {
		return err
	}
	b := &Bounce{Env: env, Failed: failed, Succeeded: succeeded, Open: func() (io.ReadCloser, error) { return q.openBody(env) }}
	if err := q.opts.Bounce(ctx, b); err != nil {
		return err
	}
	return q.remove(env)
}

// remove deletes a finished message, its rows and its body.
func (q *Queue) remove(env *mail.Envelope) error {
	return q.commit(func(tx *sql.Tx) error {
		for _, st := range []*sql.Stmt{q.stmts.delRcpts, q.stmts.delBody, q.stmts.delMsg} {
			if _, err := tx.Stmt(st).Exec(env.ID); err != nil {
				return err
			}
		}
		return nil
	}, func() {
		if !env.BodyInline {
			q.spool.Remove(env.ID)
		}
	})
}

// commit runs apply through the group commit and waits until it is durable; after, if not nil,
// runs once it is.
func (q *Queue) commit(apply func(tx *sql.Tx) error, after func()) error {
	done := make(chan error, 1)
	q.commitCh <- &op{apply: apply, after: after, done: done}
	return <-done
}

// envColumns are the msg columns scanEnvelope reads, in its order (the table is aliased m).
const envColumns = `m.id, m.sender, m.size, m.received, m.smtputf8, m.body, m.ret, m.envid, m.client, m.helo, m.inline, m.prefix`

// envelopes runs a query selecting envColumns and returns the envelopes, recipients left empty.
func (q *Queue) envelopes(ctx context.Context, query string, args ...any) ([]*mail.Envelope, error) {
	rows, err := q.rdb.QueryContext(ctx, query, args...)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var envs []*mail.Envelope
	for rows.Next() {
		e := &mail.Envelope{}
		var received int64
		if err := rows.Scan(&e.ID, &e.From, &e.Size, &received, &e.SMTPUTF8, &e.Body, &e.Ret, &e.EnvID, &e.Client, &e.Helo, &e.BodyInline, &e.Prefix); err != nil {
			return nil, err
		}
		e.ReceivedAt = time.UnixMicro(received)
		envs = append(envs, e)
	}
	return envs, rows.Err()
}
