// Package quarantine keeps messages that a check wanted held for an administrator: envelope,
// reason and body in one SQLite file in the data directory, apart from the delivery queue.
//
// The running server owns the store: the SMTP server puts messages in (Accept, durable before
// the 250), and a release loop moves messages an administrator released back into the queue.
// The CLI opens the same file (WAL mode) to list, show and delete, and to request a release,
// which the running server carries out within a poll interval: only the server may write to
// its queue.
package quarantine

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/url"
	"os"
	"path/filepath"
	"time"

	_ "modernc.org/sqlite"

	"github.com/postamt/postamt/internal/mail"
	"github.com/postamt/postamt/internal/spool"
)

const schema = `
CREATE TABLE IF NOT EXISTS quarantine (
	id          TEXT PRIMARY KEY,
	received    INTEGER NOT NULL, -- unix ns when the message was received
	quarantined INTEGER NOT NULL, -- unix ns when it was stored here
	reason      TEXT NOT NULL,
	sender      TEXT NOT NULL,
	rcpts       TEXT NOT NULL,    -- JSON list of addresses, for listing
	envelope    TEXT NOT NULL,    -- JSON mail.Envelope, for release
	size        INTEGER NOT NULL,
	body        BLOB NOT NULL,    -- the message as it would have been delivered
	release     INTEGER NOT NULL DEFAULT 0 -- 1: an administrator asked for delivery
);
CREATE INDEX IF NOT EXISTS quarantine_release ON quarantine(release) WHERE release = 1;
`

// Store is the quarantine database.
type Store struct {
	db  *sql.DB
	now func() time.Time
}

// Open opens (creating if needed) the store at path. Writes are synchronous=FULL: Accept
// returns only once the message is on stable storage, like the queue.
func Open(path string) (*Store, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, fmt.Errorf("quarantine: %w", err)
	}
	dsn := "file:" + url.PathEscape(path) + "?_pragma=journal_mode(WAL)&_pragma=synchronous(FULL)" +
		"&_pragma=busy_timeout(10000)&_txlock=immediate"
	db, err := sql.Open("sqlite", dsn)
	if err != nil {
		return nil, fmt.Errorf("quarantine: %w", err)
	}
	db.SetMaxOpenConns(1) // one writer; SQLite serialises writers anyway
	if _, err := db.Exec(schema); err != nil {
		db.Close()
		return nil, fmt.Errorf("quarantine: %s: %w", path, err)
	}
	return &Store{db: db, now: time.Now}, nil
}

func (s *Store) Close() error { return s.db.Close() }

// Accept stores the message that w holds (our headers and prefix included) with env and the
// reason in env.Quarantine, then discards w's spool file. It returns nil only when the message is
// durable here.
func (s *Store) Accept(ctx context.Context, env *mail.Envelope, w *spool.Writer) error {
	defer w.Abort() // the queue never sees this body
	r, err := w.Reader()
	if err != nil {
		return fmt.Errorf("quarantine: %w", err)
	}
	body, err := io.ReadAll(r)
	r.Close()
	if err != nil {
		return fmt.Errorf("quarantine: reading the message: %w", err)
	}
	env.ID, env.Size = w.ID(), int64(len(body))
	if env.ReceivedAt.IsZero() {
		env.ReceivedAt = s.now()
	}
	e := *env
	e.Prefix, e.BodyInline = nil, false // the stored body has them already
	envJSON, err := json.Marshal(&e)
	if err != nil {
		return err
	}
	addrs := make([]string, len(env.Rcpts))
	for i, r := range env.Rcpts {
		addrs[i] = r.Addr
	}
	rcptJSON, _ := json.Marshal(addrs)
	_, err = s.db.ExecContext(context.WithoutCancel(ctx),
		`INSERT INTO quarantine (id, received, quarantined, reason, sender, rcpts, envelope, size, body) VALUES (?,?,?,?,?,?,?,?,?)`,
		env.ID, env.ReceivedAt.UnixNano(), s.now().UnixNano(), env.Quarantine, env.From, string(rcptJSON), string(envJSON), env.Size, body)
	if err != nil {
		return fmt.Errorf("quarantine: storing %s: %w", env.ID, err)
	}
	return nil
}

// Item is a quarantined message without its body.
type Item struct {
	ID          string    `json:"id"`
	Received    time.Time `json:"received"`
	Quarantined time.Time `json:"quarantined"`
	Reason      string    `json:"reason"`
	From        string    `json:"from"`
	Rcpts       []string  `json:"rcpts"`
	Size        int64     `json:"size"`
	Release     bool      `json:"release_requested"`
}

// ErrNotFound is returned for an ID that is not in quarantine.
var ErrNotFound = errors.New("not in quarantine")

const itemCols = `id, received, quarantined, reason, sender, rcpts, size, release`

func scanItem(sc interface{ Scan(...any) error }) (Item, error) {
	var it Item
	var recv, quar int64
	var rcpts string
	if err := sc.Scan(&it.ID, &recv, &quar, &it.Reason, &it.From, &rcpts, &it.Size, &it.Release); err != nil {
		return it, err
	}
	it.Received, it.Quarantined = time.Unix(0, recv), time.Unix(0, quar)
	json.Unmarshal([]byte(rcpts), &it.Rcpts)
	return it, nil
}

// List returns all items, oldest first.
func (s *Store) List(ctx context.Context) ([]Item, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT `+itemCols+` FROM quarantine ORDER BY quarantined, id`)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []Item
	for rows.Next() {
		it, err := scanItem(rows)
		if err != nil {
			return nil, err
		}
		out = append(out, it)
	}
	return out, rows.Err()
}

// Get returns one item and its body.
func (s *Store) Get(ctx context.Context, id string) (Item, []byte, error) {
	row := s.db.QueryRowContext(ctx, `SELECT `+itemCols+`, body FROM quarantine WHERE id = ?`, id)
	var it Item
	var recv, quar int64
	var rcpts string
	var body []byte
	err := row.Scan(&it.ID, &recv, &quar, &it.Reason, &it.From, &rcpts, &it.Size, &it.Release, &body)
	if errors.Is(err, sql.ErrNoRows) {
		return it, nil, fmt.Errorf("%s: %w", id, ErrNotFound)
	}
	if err != nil {
		return it, nil, err
	}
	it.Received, it.Quarantined = time.Unix(0, recv), time.Unix(0, quar)
	json.Unmarshal([]byte(rcpts), &it.Rcpts)
	return it, body, nil
}

// Delete removes a message for good.
func (s *Store) Delete(ctx context.Context, id string) error {
	res, err := s.db.ExecContext(ctx, `DELETE FROM quarantine WHERE id = ?`, id)
	if err != nil {
		return err
	}
	if n, _ := res.RowsAffected(); n == 0 {
		return fmt.Errorf("%s: %w", id, ErrNotFound)
	}
	return nil
}

// RequestRelease marks a message for delivery; the running server's release loop does it.
func (s *Store) RequestRelease(ctx context.Context, id string) error {
	res, err := s.db.ExecContext(ctx, `UPDATE quarantine SET release = 1 WHERE id = ?`, id)
	if err != nil {
		return err
	}
	if n, _ := res.RowsAffected(); n == 0 {
		return fmt.Errorf("%s: %w", id, ErrNotFound)
	}
	return nil
}

// Intake is the delivery queue a released message goes into; see queue.Queue.
type Intake interface {
	Create() (*spool.Writer, error)
	Accept(ctx context.Context, env *mail.Envelope, w *spool.Writer) error
}

// ReleasePending moves every message marked for release into q and removes it from the
// quarantine. The message gets a new queue ID. The queue's commit comes first: a crash
// between the two leaves the message in both places and a second release delivers it twice,
// which is better than losing it.
func (s *Store) ReleasePending(ctx context.Context, q Intake, log *slog.Logger) (int, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT id FROM quarantine WHERE release = 1 ORDER BY quarantined LIMIT 100`)
	if err != nil {
		return 0, err
	}
	var ids []string
	for rows.Next() {
		var id string
		if err := rows.Scan(&id); err != nil {
			rows.Close()
			return 0, err
		}
		ids = append(ids, id)
	}
	rows.Close()
	n := 0
	for _, id := range ids {
		newID, err := s.release(ctx, q, id)
		if err != nil {
			return n, fmt.Errorf("quarantine: releasing %s: %w", id, err)
		}
		n++
		if log != nil {
			log.Info("released from quarantine", "quarantine_id", id, "id", newID)
		}
	}
	return n, nil
}

func (s *Store) release(ctx context.Context, q Intake, id string) (string, error) {
	var envJSON string
	var body []byte
	err := s.db.QueryRowContext(ctx, `SELECT envelope, body FROM quarantine WHERE id = ?`, id).Scan(&envJSON, &body)
	if err != nil {
		return "", err
	}
	var env mail.Envelope
	if err := json.Unmarshal([]byte(envJSON), &env); err != nil {
		return "", err
	}
	env.ID, env.Quarantine, env.Prefix, env.BodyInline = "", "", nil, false
	// The queue's give-up age (queue.max_age) counts from ReceivedAt: a message held longer
	// than that would bounce at once. Delivery starts now; the Received header keeps the
	// original time.
	env.ReceivedAt = s.now()
	w, err := q.Create()
	if err != nil {
		return "", err
	}
	if _, err := w.Write(body); err != nil {
		w.Abort()
		return "", err
	}
	if err := q.Accept(ctx, &env, w); err != nil {
		return "", err
	}
	if _, err := s.db.ExecContext(context.WithoutCancel(ctx), `DELETE FROM quarantine WHERE id = ?`, id); err != nil {
		return env.ID, err
	}
	return env.ID, nil
}

// RunReleases polls for release requests every interval until ctx ends.
func (s *Store) RunReleases(ctx context.Context, q Intake, interval time.Duration, log *slog.Logger) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		if _, err := s.ReleasePending(ctx, q, log); err != nil && ctx.Err() == nil {
			log.Error("quarantine release failed", "err", err)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}
