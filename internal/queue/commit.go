package queue

import (
	"errors"
	"syscall"

	"database/sql"
	"fmt"
	"github.com/postamt/postamt/internal/spool"

	"github.com/postamt/postamt/internal/mail"
)

// op is one unit of work for the group-commit loop: it runs inside a shared transaction, and done
// receives the commit's outcome. after runs once the transaction is durable.
type op struct {
	apply func(tx *sql.Tx) error
	after func()
	// syncDir names the spool directory of a new body referenced by the op: the name must be
	// durable before the rows that point at it commit. "" for ops without a new body.
	syncDir string
	done    chan error // nil for fire-and-forget ops
}

const maxBatch = 512

// commitLoop is the single writer. While one transaction commits (one fsync of the WAL), new ops
// queue up on the channel and all go into the next transaction: that is the group commit that
// lets concurrent sessions share fsyncs.
func (q *Queue) commitLoop() {
	defer close(q.commitDone)
	for {
		first, ok := <-q.commitCh
		if !ok {
			return
		}
		batch := append(q.batchBuf[:0], first)
	drain:
		for len(batch) < maxBatch {
			select {
			case o, ok := <-q.commitCh:
				if !ok {
					break drain
				}
				batch = append(batch, o)
			default:
				break drain
			}
		}
		q.commitBatch(batch)
		q.batchBuf = batch
		q.metrics.batches.Add(1)
		q.metrics.batchedOps.Add(int64(len(batch)))
	}
}

func (q *Queue) commitBatch(batch []*op) {
	dirs := map[string]bool{}
	for _, o := range batch {
		if o.syncDir != "" {
			dirs[o.syncDir] = true
		}
	}
	dirErr := q.spool.SyncDirs(dirs)
	ready := batch
	if dirErr != nil {
		ready = ready[:0:0]
		for _, o := range batch {
			if o.syncDir != "" {
				finish(o, dirErr)
			} else {
				ready = append(ready, o)
			}
		}
	}
	if len(ready) == 0 {
		return
	}
	if err := q.runTx(ready); err == nil {
		q.commitSeq.Add(1)
		for _, o := range ready {
			finish(o, nil)
		}
		return
	}
	// Something in the batch failed: commit each op on its own so that one bad op cannot fail
	// its neighbours.
	for _, o := range ready {
		err := q.runTx([]*op{o})
		if err == nil {
			q.commitSeq.Add(1)
		}
		finish(o, err)
	}
}

func finish(o *op, err error) {
	if err == nil && o.after != nil {
		o.after()
	}
	if o.done != nil {
		o.done <- err
	}
}

func (q *Queue) runTx(ops []*op) error {
	tx, err := q.db.Begin()
	if err != nil {
		return storageErr("begin", err)
	}
	for _, o := range ops {
		if err := o.apply(tx); err != nil {
			tx.Rollback()
			return storageErr("apply", err)
		}
	}
	if err := tx.Commit(); err != nil {
		return storageErr("commit", err)
	}
	return nil
}

// storageErr marks a full disk so that the client hears 452 4.3.1 and retries later, as it does
// for a full spool (RFC 3463 4.3.1).
func storageErr(op string, err error) error {
	var coded interface{ Code() int }
	if errors.Is(err, syscall.ENOSPC) || errors.Is(err, syscall.EDQUOT) ||
		errors.As(err, &coded) && coded.Code()&0xff == sqliteFull {
		return spool.ErrStorageFull.WithErr(fmt.Errorf("queue: %s: %w", op, err))
	}
	return fmt.Errorf("queue: %s: %w", op, err)
}

const sqliteFull = 13 // SQLITE_FULL, https://www.sqlite.org/rescode.html#full

// insertOp stores a new message, its recipients and, when small, its body.
func (q *Queue) insertOp(env *mail.Envelope, inline []byte) func(tx *sql.Tx) error {
	return func(tx *sql.Tx) error {
		received := env.ReceivedAt.UnixMicro()
		if _, err := tx.Stmt(q.stmts.insMsg).Exec(env.ID, env.From, env.Size, received, env.SMTPUTF8,
			env.Body, env.Ret, env.EnvID, env.Client, env.Helo, env.BodyInline, nonNil(env.Prefix)); err != nil {
			return fmt.Errorf("queue: insert message %s: %w", env.ID, err)
		}
		if env.BodyInline {
			if _, err := tx.Stmt(q.stmts.insBody).Exec(env.ID, inline); err != nil {
				return fmt.Errorf("queue: insert body %s: %w", env.ID, err)
			}
		}
		ins := tx.Stmt(q.stmts.insRcpt)
		for i, r := range env.Rcpts {
			if _, err := ins.Exec(env.ID, i, r.Addr, r.Orig, r.ORCPT, r.Notify, r.Route.Transport,
				r.Route.NextHop, statePending, received); err != nil {
				return fmt.Errorf("queue: insert recipient %s/%d: %w", env.ID, i, err)
			}
		}
		return nil
	}
}

type stmts struct {
	insMsg, insRcpt, insBody, updRcpt, countState, delRcpts, delMsg, delBody, failMsg *sql.Stmt
}

func (s *stmts) prepare(db *sql.DB) error {
	var err error
	p := func(q string) *sql.Stmt {
		if err != nil {
			return nil
		}
		var st *sql.Stmt
		st, err = db.Prepare(q)
		return st
	}
	s.insMsg = p(`INSERT INTO msg (id, sender, size, received, smtputf8, body, ret, envid, client, helo, inline, prefix) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)`)
	s.insBody = p(`INSERT INTO body (id, data) VALUES (?,?)`)
	s.delBody = p(`DELETE FROM body WHERE id = ?`)
	// The first attempt is due at arrival: next_attempt and received are both the arrival time.
	s.insRcpt = p(`INSERT INTO rcpt (msg_id, idx, addr, orig, orcpt, notify, transport, next_hop, state, next_attempt, received) VALUES (?1,?2,?3,?4,?5,?6,?7,?8,?9,?10,?10)`)
	// Only a pending recipient takes an attempt's outcome, except a delivery, which always wins:
	// a recipient the postmaster bounced while an attempt was running keeps the admin's verdict
	// when that attempt failed, and is not reported failed when it in fact got through.
	s.updRcpt = p(`UPDATE rcpt SET state = ?1, attempts = ?2, next_attempt = ?3, last_error = ?4, remote_mta = ?5, success = ?6
		WHERE msg_id = ?7 AND idx = ?8 AND (state = 0 OR ?1 = 1)`)
	// "Failed" here means "the sender is owed a report": a failure, or a requested success notice.
	s.countState = p(`SELECT COUNT(*) FILTER (WHERE state = 0), COUNT(*) FILTER (WHERE state = 2 OR success > 0) FROM rcpt WHERE msg_id = ?`)
	s.delRcpts = p(`DELETE FROM rcpt WHERE msg_id = ?`)
	s.delMsg = p(`DELETE FROM msg WHERE id = ?`)
	s.failMsg = p(`UPDATE msg SET state = 2 WHERE id = ?`)
	if err != nil {
		return fmt.Errorf("queue: prepare: %w", err)
	}
	return nil
}

// nonNil keeps a NOT NULL blob column happy with an empty prefix.
func nonNil(b []byte) []byte {
	if b == nil {
		return []byte{}
	}
	return b
}
