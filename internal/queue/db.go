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

// Success reports owed to senders who asked for NOTIFY=SUCCESS (RFC 3461 §6.2.2).
const (
	successNone      = 0
	successDelivered = 1 // final delivery here (Maildir, LMTP)
	successRelayed   = 2 // handed to a next hop without DSN support
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
	state    INTEGER NOT NULL DEFAULT 0, -- 0 active, 2 has failed recipients awaiting a bounce
	prefix   BLOB NOT NULL DEFAULT x'', -- header fields added after a spool-file body was written
	held     INTEGER NOT NULL DEFAULT 0 -- 1: postamt queue hold; never dispatched until released
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
	success      INTEGER NOT NULL DEFAULT 0, -- NOTIFY=SUCCESS report due: 1 delivered, 2 relayed
	received     INTEGER NOT NULL DEFAULT 0, -- msg.received, copied so that an index can cover the delay scan
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
	r.next_hop, r.attempts, m.sender, m.size, m.received, m.smtputf8, m.body, m.ret, m.envid, m.client, m.helo, m.inline, m.prefix
	FROM rcpt r JOIN msg m ON m.id = r.msg_id
	WHERE r.state = 0 AND r.next_attempt <= ? AND m.held = 0 ORDER BY r.next_attempt LIMIT 5000`

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
		return nil, nil, fmt.Errorf("queue: migrate %s: %w", path, err)
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

// migrate brings a database made by an older version up to the current schema: CREATE TABLE IF
// NOT EXISTS leaves existing tables alone, so columns added since are added here, each with
// whatever fills it for existing rows in the same transaction (a crash leaves the column either
// absent, and the step is done again, or complete). Indexes on added columns come last.
func migrate(db *sql.DB) error {
	has := func(table, column string) (bool, error) {
		rows, err := db.Query(`SELECT name FROM pragma_table_info(?)`, table)
		if err != nil {
			return false, err
		}
		defer rows.Close()
		for rows.Next() {
			var name string
			if err := rows.Scan(&name); err != nil {
				return false, err
			}
			if name == column {
				return true, nil
			}
		}
		return false, rows.Err()
	}
	for _, c := range []struct {
		table, column string
		ddl           []string
	}{
		{"msg", "prefix", []string{`ALTER TABLE msg ADD COLUMN prefix BLOB NOT NULL DEFAULT x''`}},
		{"rcpt", "success", []string{`ALTER TABLE rcpt ADD COLUMN success INTEGER NOT NULL DEFAULT 0`}},
		{"msg", "held", []string{`ALTER TABLE msg ADD COLUMN held INTEGER NOT NULL DEFAULT 0`}},
		{"rcpt", "received", []string{`ALTER TABLE rcpt ADD COLUMN received INTEGER NOT NULL DEFAULT 0`,
			`UPDATE rcpt SET received = (SELECT received FROM msg WHERE msg.id = rcpt.msg_id)`}},
	} {
		ok, err := has(c.table, c.column)
		if err != nil {
			return err
		}
		if ok {
			continue
		}
		tx, err := db.Begin()
		if err != nil {
			return err
		}
		for _, ddl := range c.ddl {
			if _, err := tx.Exec(ddl); err != nil {
				tx.Rollback()
				return fmt.Errorf("add %s.%s: %w", c.table, c.column, err)
			}
		}
		if err := tx.Commit(); err != nil {
			return err
		}
	}
	_, err := db.Exec(`
-- Held messages are few; the metrics gauge counts them without reading every row.
CREATE INDEX IF NOT EXISTS msg_held ON msg (held) WHERE held = 1;
-- The delay-warning scan reads only recipients that could still get a warning, oldest first,
-- instead of every pending recipient once a minute (1.2 s with a million deferred).
CREATE INDEX IF NOT EXISTS rcpt_unwarned ON rcpt (received) WHERE state = 0 AND warned = 0 AND attempts > 0;`)
	return err
}
