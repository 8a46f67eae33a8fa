package queue

import (
	"database/sql"
	"fmt"
	"net/url"

	_ "modernc.org/sqlite" // registers the pure-Go "sqlite" driver: no cgo, no server
)

// Recipient states as stored. "In delivery" is never stored: it lives in memory, so a crash
// leaves such recipients pending and they are simply tried again (at-least-once).
const (
	statePending   = 0
	stateDelivered = 1
	stateFailed    = 2
)

const schema = `
CREATE TABLE IF NOT EXISTS msg (
	id       TEXT PRIMARY KEY,
	sender   TEXT NOT NULL,
	size     INTEGER NOT NULL,
	received INTEGER NOT NULL, -- unix microseconds
	smtputf8 INTEGER NOT NULL,
	body     TEXT NOT NULL,
	ret      TEXT NOT NULL,
	envid    TEXT NOT NULL,
	client   TEXT NOT NULL,
	helo     TEXT NOT NULL,
	inline   INTEGER NOT NULL, -- 1: the body is in the body table, 0: in a spool file
	state    INTEGER NOT NULL DEFAULT 0 -- 0 active, 2 has failed recipients awaiting a bounce
) WITHOUT ROWID;
-- Small bodies live here so that they reach stable storage with the rows, in the same WAL fsync.
-- A rowid table: SQLite advises against WITHOUT ROWID for rows this large.
CREATE TABLE IF NOT EXISTS body (
	id   TEXT PRIMARY KEY,
	data BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS rcpt (
	msg_id       TEXT NOT NULL,
	idx          INTEGER NOT NULL,
	addr         TEXT NOT NULL,
	orig         TEXT NOT NULL,
	orcpt        TEXT NOT NULL,
	notify       TEXT NOT NULL,
	transport    TEXT NOT NULL,
	next_hop     TEXT NOT NULL,
	state        INTEGER NOT NULL,
	attempts     INTEGER NOT NULL DEFAULT 0,
	next_attempt INTEGER NOT NULL, -- unix microseconds
	last_error   TEXT NOT NULL DEFAULT '',
	remote_mta   TEXT NOT NULL DEFAULT '', -- who gave last_error, for the DSN's Remote-MTA
	warned       INTEGER NOT NULL DEFAULT 0, -- a delay DSN was sent
	PRIMARY KEY (msg_id, idx)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS rcpt_due ON rcpt (state, next_attempt);
-- The bounce scan runs every second; messages awaiting a bounce are rare, so index only them.
CREATE INDEX IF NOT EXISTS msg_failed ON msg (state) WHERE state = 2;
`

// dueQuery is the scheduler's scan: the recipients due for an attempt, oldest due first, a
// bounded batch at a time. It reads the head of rcpt_due (state, next_attempt), so its cost
// grows with the batch, not with the queue (TestDueQueryUsesIndex asserts the plan).
const dueQuery = `SELECT r.msg_id, r.idx, r.addr, r.orig, r.orcpt, r.notify, r.transport,
	r.next_hop, r.attempts, m.sender, m.size, m.received, m.smtputf8, m.body, m.ret, m.envid, m.client, m.helo, m.inline
	FROM rcpt r JOIN msg m ON m.id = r.msg_id
	WHERE r.state = 0 AND r.next_attempt <= ? AND m.held = 0 ORDER BY r.next_attempt LIMIT 5000`

// migrations bring a database created by an older Postamt up to date. Entry n moves the schema
// from user_version n to n+1; a new database goes through all of them, so every path is the
// one existing installations take. Append only: never edit a step that has shipped.
var migrations = []string{
	// 0 → 1: held messages (postamt queue hold) are never dispatched until released.
	`ALTER TABLE msg ADD COLUMN held INTEGER NOT NULL DEFAULT 0`,
	// 1 → 2: held messages are few; the metrics gauge counts them without reading every row.
	`CREATE INDEX msg_held ON msg (held) WHERE held = 1`,
	// 2 → 3: the delay-warning scan finds its candidates through an index instead of reading
	// every pending recipient once a minute (1.2 s with a million deferred). The message's
	// arrival time is copied onto its recipients, the only way an index can cover the scan's
	// condition; the index holds only recipients that could still get a warning.
	`ALTER TABLE rcpt ADD COLUMN received INTEGER NOT NULL DEFAULT 0;
	UPDATE rcpt SET received = (SELECT received FROM msg WHERE msg.id = rcpt.msg_id);
	CREATE INDEX rcpt_unwarned ON rcpt (received) WHERE state = 0 AND warned = 0 AND attempts > 0;`,
}

// schemaVersion is the user_version of an up-to-date database.
var schemaVersion = len(migrations)

// migrate applies the missing migrations, each in its own transaction with its version bump, so
// a crash leaves the database at one version or the next, never in between.
func migrate(db *sql.DB) error {
	var v int
	if err := db.QueryRow(`PRAGMA user_version`).Scan(&v); err != nil {
		return fmt.Errorf("queue: schema version: %w", err)
	}
	if v > len(migrations) {
		return fmt.Errorf("queue: the database has schema version %d, newer than this Postamt knows (%d): refusing to open it", v, len(migrations))
	}
	for ; v < len(migrations); v++ {
		tx, err := db.Begin()
		if err != nil {
			return fmt.Errorf("queue: migrate to version %d: %w", v+1, err)
		}
		if _, err := tx.Exec(migrations[v]); err != nil {
			tx.Rollback()
			return fmt.Errorf("queue: migrate to version %d: %w", v+1, err)
		}
		// PRAGMA takes no bound parameters; v is our own integer.
		if _, err := tx.Exec(fmt.Sprintf(`PRAGMA user_version = %d`, v+1)); err != nil {
			tx.Rollback()
			return fmt.Errorf("queue: migrate to version %d: %w", v+1, err)
		}
		if err := tx.Commit(); err != nil {
			return fmt.Errorf("queue: migrate to version %d: %w", v+1, err)
		}
	}
	return nil
}

// openDB opens the queue database. WAL with synchronous=FULL makes every commit durable
// (the WAL is fsynced at commit), which is what a 250 promises.
func openDB(path string) (w, r *sql.DB, err error) {
	// wal_autocheckpoint(0): the writer never checkpoints inside a commit, where copying the WAL
	// into the database and fsyncing it would stall every session waiting for that commit. The
	// checkpoint loop does it on its own connection instead.
	dsn := "file:" + url.PathEscape(path) + "?_pragma=journal_mode(WAL)&_pragma=synchronous(FULL)" +
		"&_pragma=busy_timeout(10000)&_pragma=foreign_keys(OFF)&_pragma=wal_autocheckpoint(0)&_txlock=immediate"
	w, err = sql.Open("sqlite", dsn)
	if err != nil {
		return nil, nil, fmt.Errorf("queue: open %s: %w", path, err)
	}
	// One writer connection: SQLite serialises writers anyway, and the group-commit loop is the
	// only writer.
	w.SetMaxOpenConns(1)
	if _, err := w.Exec(schema); err != nil {
		w.Close()
		return nil, nil, fmt.Errorf("queue: schema: %w", err)
	}
	if err := migrate(w); err != nil {
		w.Close()
		return nil, nil, err
	}
	r, err = sql.Open("sqlite", "file:"+url.PathEscape(path)+"?_pragma=busy_timeout(10000)&mode=ro")
	if err != nil {
		w.Close()
		return nil, nil, fmt.Errorf("queue: open %s: %w", path, err)
	}
	r.SetMaxOpenConns(4)
	return w, r, nil
}

// openCheckpointer opens the connection the checkpoint loop uses.
func openCheckpointer(path string) (*sql.DB, error) {
	c, err := sql.Open("sqlite", "file:"+url.PathEscape(path)+"?_pragma=busy_timeout(10000)&_pragma=synchronous(FULL)")
	if err != nil {
		return nil, fmt.Errorf("queue: open %s: %w", path, err)
	}
	c.SetMaxOpenConns(1)
	return c, nil
}
