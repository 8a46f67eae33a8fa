package queue

import (
	"context"
	"database/sql"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// Entry is one recipient in the queue, as `postamt queue list` shows it.
type Entry struct {
	ID          string    `json:"id"`
	From        string    `json:"from"`
	Received    time.Time `json:"received"`
	Size        int64     `json:"size"`
	Rcpt        string    `json:"rcpt"`
	Transport   string    `json:"transport"`
	State       string    `json:"state"` // pending, failed
	Attempts    int       `json:"attempts"`
	NextAttempt time.Time `json:"next_attempt,omitzero"` // zero when not scheduled
	LastError   string    `json:"last_error,omitempty"`
	Held        bool      `json:"held,omitempty"`
}

// Filter selects entries; empty fields match everything. Address fields match
// case-insensitively, Domain against the recipient's domain.
type Filter struct {
	ID, From, To, Domain, State string
}

// Match reports whether e passes the filter.
func (f Filter) Match(e Entry) bool {
	eq := strings.EqualFold
	switch {
	case f.ID != "" && f.ID != e.ID,
		f.From != "" && !eq(f.From, e.From),
		f.To != "" && !eq(f.To, e.Rcpt),
		f.State != "" && f.State != e.State:
		return false
	case f.Domain != "":
		_, d, _ := strings.Cut(e.Rcpt, "@")
		return eq(d, f.Domain)
	}
	return true
}

// List reads the queue in dir without opening it for writing, so it works beside a running
// server (WAL readers do not block the writer). Delivered recipients of unfinished messages are
// left out.
func List(ctx context.Context, dir string) ([]Entry, error) {
	db, err := openReadOnly(dir)
	if err != nil {
		return nil, err
	}
	defer db.Close()
	es, _, err := list(ctx, db, Filter{}, 0)
	return es, err
}

// ListDir is List with a filter and a limit (0 for none); more reports entries past the limit.
func ListDir(ctx context.Context, dir string, f Filter, limit int) (es []Entry, more bool, err error) {
	db, err := openReadOnly(dir)
	if err != nil {
		return nil, false, err
	}
	defer db.Close()
	return list(ctx, db, f, limit)
}

func openReadOnly(dir string) (*sql.DB, error) {
	path := filepath.Join(dir, "queue.db")
	if _, err := os.Stat(path); err != nil {
		return nil, fmt.Errorf("queue: %w", err)
	}
	return sql.Open("sqlite", "file:"+url.PathEscape(path)+"?mode=ro&_pragma=busy_timeout(10000)")
}

// Entries lists the queue of a running server like ListDir.
func (q *Queue) Entries(ctx context.Context, f Filter, limit int) ([]Entry, bool, error) {
	return list(ctx, q.rdb, f, limit)
}

// listQuery walks msg in primary key order, which is arrival order (queue IDs are time-ordered),
// so that rows stream out without a sort of the whole queue.
const listQuery = `SELECT m.id, m.sender, m.received, m.size, r.addr, r.transport, r.state,
	r.attempts, r.next_attempt, r.last_error, %s FROM msg m JOIN rcpt r ON r.msg_id = m.id
	WHERE r.state != ? %s ORDER BY m.id, r.idx`

// list streams the matching entries; memory holds at most limit of them, however large the queue.
func list(ctx context.Context, db *sql.DB, f Filter, limit int) (out []Entry, more bool, err error) {
	// A database no server of this version has opened yet has no held column.
	var hasHeld bool
	if err := db.QueryRowContext(ctx, `SELECT COUNT(*) FROM pragma_table_info('msg') WHERE name = 'held'`).Scan(&hasHeld); err != nil {
		return nil, false, fmt.Errorf("queue: list: %w", err)
	}
	held := "m.held"
	if !hasHeld {
		held = "0"
	}
	args := []any{stateDelivered}
	byID := ""
	if f.ID != "" {
		byID, args = "AND m.id = ?", append(args, f.ID)
	}
	rows, err := db.QueryContext(ctx, fmt.Sprintf(listQuery, held, byID), args...)
	if err != nil {
		return nil, false, fmt.Errorf("queue: list: %w", err)
	}
	defer rows.Close()
	for rows.Next() {
		var e Entry
		var received, next int64
		var state int
		if err := rows.Scan(&e.ID, &e.From, &received, &e.Size, &e.Rcpt, &e.Transport, &state, &e.Attempts, &next, &e.LastError, &e.Held); err != nil {
			return nil, false, fmt.Errorf("queue: list: %w", err)
		}
		e.Received = time.UnixMicro(received)
		e.State = "pending"
		if state == stateFailed {
			e.State = "failed"
		} else if next > 0 && e.Attempts > 0 && !e.Held && next < heldNext {
			e.NextAttempt = time.UnixMicro(next)
		}
		if !f.Match(e) {
			continue
		}
		if limit > 0 && len(out) == limit {
			return out, true, nil
		}
		out = append(out, e)
	}
	return out, false, rows.Err()
}
