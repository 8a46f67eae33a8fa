// Package sandbox is the sandbox's message store: every message the sandbox transport captures
// is kept here (SQLite, with an FTS5 index over subject, body and addresses), searchable with a
// small query language, and announced to subscribers (the web UI's event stream, the wait API,
// webhooks) as it arrives. It does not speak SMTP or HTTP: mail reaches it through the queue and
// transport/sandbox like all mail, and internal/httpapi serves it.
package sandbox

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"regexp"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unicode"
	"unicode/utf8"

	_ "modernc.org/sqlite" // pure-Go SQLite with FTS5
)

// ErrNotFound is returned for an unknown message ID.
var ErrNotFound = errors.New("sandbox: no such message")

// ErrClosed is returned after Close.
var ErrClosed = errors.New("sandbox: store closed")

// Options configure a Store.
type Options struct {
	// Path is the SQLite file; "" keeps everything in memory (lost when the process ends).
	Path string
	// MaxMessages keeps at most this many messages, deleting the oldest; 0 means no limit.
	MaxMessages int
	// MaxAge deletes messages older than this; 0 means no limit.
	MaxAge time.Duration
	Now    func() time.Time
	Logger *slog.Logger
}

// Envelope is what the SMTP transaction said about a message.
type Envelope struct {
	ID         string // the queue ID; saving the same ID twice keeps one message
	From       string
	To         []string
	ReceivedAt time.Time
}

// Summary is a message as lists show it.
type Summary struct {
	ID           string    `json:"id"`
	Received     time.Time `json:"received"`
	EnvelopeFrom string    `json:"envelope_from"`
	EnvelopeTo   []string  `json:"envelope_to"`
	From         string    `json:"from"`
	To           []string  `json:"to"`
	Subject      string    `json:"subject"`
	Snippet      string    `json:"snippet"`
	Size         int64     `json:"size"`
	Attachments  int       `json:"attachments"`
	Read         bool      `json:"read"`
	Tags         []string  `json:"tags"`
}

// Event tells subscribers what changed.
type Event struct {
	Type    string   `json:"type"` // new, update, delete, clear
	Message *Summary `json:"message,omitempty"`
	IDs     []string `json:"ids,omitempty"`
}

// Stats is the store's size, for the UI's storage display.
type Stats struct {
	Messages    int   `json:"messages"`
	Unread      int   `json:"unread"`
	Bytes       int64 `json:"bytes"`        // sum of message sizes
	FileBytes   int64 `json:"file_bytes"`   // database size (memory or disk)
	MaxMessages int   `json:"max_messages"` // retention limits, 0 = none
	MaxAgeSecs  int64 `json:"max_age_seconds"`
	MemoryOnly  bool  `json:"memory_only"`
}

// Store keeps captured messages. It is safe for concurrent use.
type Store struct {
	opts   Options
	db     *sql.DB // the writer (and, in memory mode, everything)
	rdb    *sql.DB
	log    *slog.Logger
	saveCh chan *saveReq
	stop   chan struct{}
	done   chan struct{}
	closed atomic.Bool
	count  atomic.Int64

	mu   sync.Mutex
	subs map[chan Event]struct{}
}

const schema = `
CREATE TABLE IF NOT EXISTS msg (
	id          INTEGER PRIMARY KEY, -- insertion order, which lists use
	uid         TEXT NOT NULL UNIQUE,
	received    INTEGER NOT NULL,    -- unix microseconds
	env_from    TEXT NOT NULL,
	env_to      TEXT NOT NULL,       -- newline-separated
	hdr_from    TEXT NOT NULL,
	hdr_to      TEXT NOT NULL,       -- newline-separated (To, then Cc)
	subject     TEXT NOT NULL,
	snippet     TEXT NOT NULL,
	size        INTEGER NOT NULL,
	attachments INTEGER NOT NULL,
	seen        INTEGER NOT NULL DEFAULT 0,
	tags        TEXT NOT NULL DEFAULT ',' -- ",a,b," so that LIKE '%,a,%' finds a tag
);
CREATE INDEX IF NOT EXISTS msg_received ON msg (received);
CREATE INDEX IF NOT EXISTS msg_unread ON msg (seen) WHERE seen = 0;
-- Raw messages apart from the rows that lists scan.
CREATE TABLE IF NOT EXISTS raw (id INTEGER PRIMARY KEY, data BLOB NOT NULL);
-- Contentless: the index holds no second copy of the text; contentless_delete lets us delete.
CREATE VIRTUAL TABLE IF NOT EXISTS msg_fts USING fts5(
	subject, body, from_addr, to_addr,
	content='', contentless_delete=1, tokenize='unicode61 remove_diacritics 2');
`

var memSeq atomic.Int64

// Open opens or creates the store.
func Open(opts Options) (*Store, error) {
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	s := &Store{opts: opts, log: opts.Logger, saveCh: make(chan *saveReq, 1024),
		stop: make(chan struct{}), done: make(chan struct{}), subs: map[chan Event]struct{}{}}
	var err error
	if opts.Path == "" {
		// One connection holds the in-memory database; it must never be closed while we run.
		s.db, err = sql.Open("sqlite", fmt.Sprintf("file:sandbox%d?mode=memory&_pragma=busy_timeout(10000)", memSeq.Add(1)))
		if err == nil {
			s.db.SetMaxOpenConns(1)
			s.db.SetMaxIdleConns(1)
			s.db.SetConnMaxLifetime(0)
			s.db.SetConnMaxIdleTime(0)
		}
		s.rdb = s.db
	} else {
		// synchronous=NORMAL: the queue already made the message durable before the 250, and
		// with WAL a process crash loses nothing; only a power cut may lose the last captures,
		// which is the right price for a test tool's ingest rate. Small page caches (256 KiB
		// per connection instead of 2 MiB): the writer only appends, searches read the FTS
		// index from the OS's cache, and the sandbox is meant to stay small (measured: 5-10 MiB
		// less resident memory, no slower searches over 100,000 messages).
		dsn := "file:" + url.PathEscape(opts.Path) + "?_pragma=journal_mode(WAL)&_pragma=synchronous(NORMAL)&_pragma=busy_timeout(10000)&_pragma=cache_size(-256)&_txlock=immediate"
		s.db, err = sql.Open("sqlite", dsn)
		if err == nil {
			s.db.SetMaxOpenConns(1)
			s.rdb, err = sql.Open("sqlite", "file:"+url.PathEscape(opts.Path)+"?_pragma=busy_timeout(10000)&_pragma=query_only(1)&_pragma=cache_size(-256)")
			if err == nil {
				s.rdb.SetMaxOpenConns(8)
			}
		}
	}
	if err != nil {
		return nil, fmt.Errorf("sandbox: open: %w", err)
	}
	if _, err := s.db.Exec(schema); err != nil {
		s.closeDBs()
		return nil, fmt.Errorf("sandbox: schema: %w", err)
	}
	var n int64
	if err := s.db.QueryRow(`SELECT COUNT(*) FROM msg`).Scan(&n); err != nil {
		s.closeDBs()
		return nil, fmt.Errorf("sandbox: %w", err)
	}
	s.count.Store(n)
	go s.writer()
	return s, nil
}

func (s *Store) closeDBs() {
	if s.rdb != nil && s.rdb != s.db {
		s.rdb.Close()
	}
	if s.db != nil {
		s.db.Close()
	}
}

// Close stops the writer and closes the database. Subscribers' channels are closed.
func (s *Store) Close() error {
	if s.closed.Swap(true) {
		return nil
	}
	close(s.stop)
	<-s.done
	s.mu.Lock()
	for ch := range s.subs {
		close(ch)
		delete(s.subs, ch)
	}
	s.mu.Unlock()
	s.closeDBs()
	return nil
}

// MemoryOnly reports whether the store keeps nothing on disk.
func (s *Store) MemoryOnly() bool { return s.opts.Path == "" }

type row struct {
	env     Envelope
	raw     []byte
	p       *Parsed
	body    string
	snippet string
}

type saveReq struct {
	r    *row
	sum  *Summary
	done chan error
}

// Save stores a message and tells subscribers. Parsing happens in the caller's goroutine; the
// insert joins a batch that one writer commits in one transaction.
func (s *Store) Save(ctx context.Context, env Envelope, raw []byte) (*Summary, error) {
	if s.closed.Load() {
		return nil, ErrClosed
	}
	if env.ReceivedAt.IsZero() {
		env.ReceivedAt = s.opts.Now()
	}
	p := Parse(raw)
	body := p.Text
	if body == "" && p.HTML != "" {
		body = htmlToText(p.HTML)
	}
	req := &saveReq{r: &row{env: env, raw: raw, p: p, body: truncate(body, 256<<10), snippet: snippet(body)}, done: make(chan error, 1)}
	select {
	case s.saveCh <- req:
	case <-ctx.Done():
		return nil, ctx.Err()
	case <-s.stop:
		return nil, ErrClosed
	}
	select {
	case err := <-req.done:
		return req.sum, err
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

func (s *Store) writer() {
	defer close(s.done)
	prune := time.NewTicker(time.Minute)
	defer prune.Stop()
	s.pruneAge()
	batch := make([]*saveReq, 0, 256)
	for {
		select {
		case <-s.stop:
			// Drain what is queued so no caller waits forever.
			for {
				select {
				case r := <-s.saveCh:
					r.done <- ErrClosed
				default:
					return
				}
			}
		case <-prune.C:
			s.pruneAge()
			continue
		case r := <-s.saveCh:
			batch = append(batch[:0], r)
		}
	more:
		for len(batch) < cap(batch) {
			select {
			case r := <-s.saveCh:
				batch = append(batch, r)
			default:
				break more
			}
		}
		pruned, err := s.insert(batch)
		for _, r := range batch {
			r.done <- err
		}
		if err == nil {
			for _, r := range batch {
				if r.sum != nil {
					s.publish(Event{Type: "new", Message: r.sum})
				}
			}
			if len(pruned) > 0 {
				s.publish(Event{Type: "delete", IDs: pruned})
			}
		} else {
			s.log.Error("sandbox: saving messages failed", "err", err, "count", len(batch))
		}
	}
}

// insert stores a batch in one transaction and, in the same transaction, deletes the oldest
// messages beyond MaxMessages (returned), so that a caller whose Save returned never sees more.
func (s *Store) insert(batch []*saveReq) ([]string, error) {
	tx, err := s.db.Begin()
	if err != nil {
		return nil, err
	}
	defer tx.Rollback()
	ins, err := tx.Prepare(`INSERT OR IGNORE INTO msg (uid, received, env_from, env_to, hdr_from, hdr_to, subject, snippet, size, attachments)
		VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`)
	if err != nil {
		return nil, err
	}
	defer ins.Close()
	var added int64
	for _, req := range batch {
		r := req.r
		to := append(append([]string{}, r.p.To...), r.p.Cc...)
		res, err := ins.Exec(r.env.ID, r.env.ReceivedAt.UnixMicro(), r.env.From, strings.Join(r.env.To, "\n"),
			r.p.From, strings.Join(to, "\n"), r.p.Subject, r.snippet, len(r.raw), len(r.p.Attachments))
		if err != nil {
			return nil, err
		}
		if n, _ := res.RowsAffected(); n == 0 {
			continue // the same queue message again (a retry after a crash): keep the first
		}
		id, err := res.LastInsertId()
		if err != nil {
			return nil, err
		}
		if _, err := tx.Exec(`INSERT INTO raw (id, data) VALUES (?, ?)`, id, r.raw); err != nil {
			return nil, err
		}
		if _, err := tx.Exec(`INSERT INTO msg_fts (rowid, subject, body, from_addr, to_addr) VALUES (?, ?, ?, ?, ?)`,
			id, r.p.Subject, r.body, r.p.From+" "+r.env.From, strings.Join(to, " ")+" "+strings.Join(r.env.To, " ")); err != nil {
			return nil, err
		}
		added++
		req.sum = &Summary{ID: r.env.ID, Received: r.env.ReceivedAt.UTC(), EnvelopeFrom: r.env.From, EnvelopeTo: r.env.To,
			From: r.p.From, To: to, Subject: r.p.Subject, Snippet: r.snippet, Size: int64(len(r.raw)),
			Attachments: len(r.p.Attachments), Tags: []string{}}
	}
	var pruned []string
	if max := int64(s.opts.MaxMessages); max > 0 && s.count.Load()+added > max {
		if pruned, err = deleteTx(tx, `id IN (SELECT id FROM msg ORDER BY id LIMIT ?)`, s.count.Load()+added-max); err != nil {
			return nil, err
		}
	}
	if err := tx.Commit(); err != nil {
		for _, req := range batch {
			req.sum = nil
		}
		return nil, err
	}
	s.count.Add(added - int64(len(pruned)))
	return pruned, nil
}

func (s *Store) pruneAge() {
	if s.opts.MaxAge <= 0 {
		return
	}
	s.deleteWhere(`received < ?`, s.opts.Now().Add(-s.opts.MaxAge).UnixMicro())
}

// deleteWhere deletes the messages matching cond (over msg) and announces them.
func (s *Store) deleteWhere(cond string, args ...any) ([]string, error) {
	tx, err := s.db.Begin()
	if err != nil {
		return nil, err
	}
	defer tx.Rollback()
	uids, err := deleteTx(tx, cond, args...)
	if err != nil {
		return nil, err
	}
	if err := tx.Commit(); err != nil {
		return nil, err
	}
	s.count.Add(-int64(len(uids)))
	if len(uids) > 0 {
		s.publish(Event{Type: "delete", IDs: uids})
	}
	return uids, nil
}

// deleteTx deletes the messages matching cond inside tx and returns their IDs.
func deleteTx(tx *sql.Tx, cond string, args ...any) ([]string, error) {
	rows, err := tx.Query(`SELECT id, uid FROM msg WHERE `+cond, args...)
	if err != nil {
		return nil, err
	}
	var ids []int64
	var uids []string
	for rows.Next() {
		var id int64
		var uid string
		if err := rows.Scan(&id, &uid); err != nil {
			rows.Close()
			return nil, err
		}
		ids, uids = append(ids, id), append(uids, uid)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return nil, err
	}
	for _, id := range ids {
		for _, q := range []string{`DELETE FROM msg WHERE id = ?`, `DELETE FROM raw WHERE id = ?`, `DELETE FROM msg_fts WHERE rowid = ?`} {
			if _, err := tx.Exec(q, id); err != nil {
				return nil, err
			}
		}
	}
	return uids, nil
}

const summaryCols = `m.uid, m.received, m.env_from, m.env_to, m.hdr_from, m.hdr_to, m.subject, m.snippet, m.size, m.attachments, m.seen, m.tags`

type scanner interface{ Scan(...any) error }

func scanSummary(r scanner) (*Summary, error) {
	var s Summary
	var recv int64
	var envTo, hdrTo, tags string
	if err := r.Scan(&s.ID, &recv, &s.EnvelopeFrom, &envTo, &s.From, &hdrTo, &s.Subject, &s.Snippet, &s.Size, &s.Attachments, &s.Read, &tags); err != nil {
		return nil, err
	}
	s.Received = time.UnixMicro(recv).UTC()
	s.EnvelopeTo = splitNonEmpty(envTo, "\n")
	s.To = splitNonEmpty(hdrTo, "\n")
	s.Tags = splitNonEmpty(tags, ",")
	return &s, nil
}

func splitNonEmpty(s, sep string) []string {
	out := []string{}
	for _, x := range strings.Split(s, sep) {
		if x != "" {
			out = append(out, x)
		}
	}
	return out
}

// Page is one page of a listing.
type Page struct {
	Total    int        `json:"total"` // messages matching the query
	Unread   int        `json:"unread"`
	Messages []*Summary `json:"messages"`
}

// List returns the newest messages matching q (nil: all), skipping offset.
func (s *Store) List(ctx context.Context, q *Query, limit, offset int) (*Page, error) {
	if limit <= 0 || limit > 1000 {
		limit = 50
	}
	if q == nil {
		q = &Query{}
	}
	cond, args := q.where()
	pg := &Page{Messages: []*Summary{}}
	rows, err := s.rdb.QueryContext(ctx, `SELECT `+summaryCols+` FROM msg m WHERE `+cond+` ORDER BY m.id DESC LIMIT ? OFFSET ?`,
		append(args, limit, offset)...)
	if err != nil {
		return nil, fmt.Errorf("sandbox: list: %w", err)
	}
	defer rows.Close()
	for rows.Next() {
		sum, err := scanSummary(rows)
		if err != nil {
			return nil, err
		}
		pg.Messages = append(pg.Messages, sum)
	}
	if err := rows.Err(); err != nil {
		return nil, err
	}
	if cond == "1" {
		pg.Total = int(s.count.Load())
	} else if err := s.rdb.QueryRowContext(ctx, `SELECT COUNT(*) FROM msg m WHERE `+cond, args...).Scan(&pg.Total); err != nil {
		return nil, err
	}
	if err := s.rdb.QueryRowContext(ctx, `SELECT COUNT(*) FROM msg WHERE seen = 0`).Scan(&pg.Unread); err != nil {
		return nil, err
	}
	return pg, nil
}

// Get returns a message's summary and its parsed content.
func (s *Store) Get(ctx context.Context, id string) (*Summary, *Parsed, error) {
	sum, raw, err := s.get(ctx, id)
	if err != nil {
		return nil, nil, err
	}
	return sum, Parse(raw), nil
}

// Raw returns the message exactly as captured.
func (s *Store) Raw(ctx context.Context, id string) ([]byte, error) {
	_, raw, err := s.get(ctx, id)
	return raw, err
}

func (s *Store) get(ctx context.Context, id string) (*Summary, []byte, error) {
	row := s.rdb.QueryRowContext(ctx, `SELECT `+summaryCols+`, r.data FROM msg m JOIN raw r ON r.id = m.id WHERE m.uid = ?`, id)
	var sum Summary
	var recv int64
	var envTo, hdrTo, tags string
	var raw []byte
	err := row.Scan(&sum.ID, &recv, &sum.EnvelopeFrom, &envTo, &sum.From, &hdrTo, &sum.Subject, &sum.Snippet, &sum.Size, &sum.Attachments, &sum.Read, &tags, &raw)
	if errors.Is(err, sql.ErrNoRows) {
		return nil, nil, ErrNotFound
	}
	if err != nil {
		return nil, nil, fmt.Errorf("sandbox: get: %w", err)
	}
	sum.Received = time.UnixMicro(recv).UTC()
	sum.EnvelopeTo, sum.To, sum.Tags = splitNonEmpty(envTo, "\n"), splitNonEmpty(hdrTo, "\n"), splitNonEmpty(tags, ",")
	return &sum, raw, nil
}

func (s *Store) summary(ctx context.Context, id string) (*Summary, error) {
	sum, err := scanSummary(s.db.QueryRowContext(ctx, `SELECT `+summaryCols+` FROM msg m WHERE m.uid = ?`, id))
	if errors.Is(err, sql.ErrNoRows) {
		return nil, ErrNotFound
	}
	return sum, err
}

// Delete removes messages by ID.
func (s *Store) Delete(ctx context.Context, ids ...string) error {
	if len(ids) == 0 {
		return nil
	}
	ph := strings.TrimSuffix(strings.Repeat("?,", len(ids)), ",")
	args := make([]any, len(ids))
	for i, id := range ids {
		args[i] = id
	}
	gone, err := s.deleteWhere(`uid IN (`+ph+`)`, args...)
	if err != nil {
		return fmt.Errorf("sandbox: delete: %w", err)
	}
	if len(gone) == 0 {
		return ErrNotFound
	}
	return nil
}

// DeleteMatching removes every message matching q (nil: all) and returns how many.
func (s *Store) DeleteMatching(ctx context.Context, q *Query) (int, error) {
	if q == nil || len(q.Terms) == 0 {
		tx, err := s.db.BeginTx(ctx, nil)
		if err != nil {
			return 0, err
		}
		defer tx.Rollback()
		var n int
		if err := tx.QueryRow(`SELECT COUNT(*) FROM msg`).Scan(&n); err != nil {
			return 0, err
		}
		for _, q := range []string{`DELETE FROM msg`, `DELETE FROM raw`, `DELETE FROM msg_fts`} {
			if _, err := tx.Exec(q); err != nil {
				return 0, fmt.Errorf("sandbox: delete all: %w", err)
			}
		}
		if err := tx.Commit(); err != nil {
			return 0, err
		}
		s.count.Store(0)
		s.publish(Event{Type: "clear"})
		return n, nil
	}
	cond, args := q.where()
	gone, err := s.deleteWhere(`id IN (SELECT m.id FROM msg m WHERE `+cond+`)`, args...)
	return len(gone), err
}

// SetRead marks messages read or unread.
func (s *Store) SetRead(ctx context.Context, read bool, ids ...string) error {
	for _, id := range ids {
		res, err := s.db.ExecContext(ctx, `UPDATE msg SET seen = ? WHERE uid = ?`, read, id)
		if err != nil {
			return fmt.Errorf("sandbox: mark read: %w", err)
		}
		if n, _ := res.RowsAffected(); n == 0 {
			return ErrNotFound
		}
		s.announce(ctx, id)
	}
	return nil
}

// MarkAllRead marks every message read.
func (s *Store) MarkAllRead(ctx context.Context) error {
	if _, err := s.db.ExecContext(ctx, `UPDATE msg SET seen = 1 WHERE seen = 0`); err != nil {
		return err
	}
	s.publish(Event{Type: "clear"}) // lists reload
	return nil
}

var tagRe = regexp.MustCompile(`^[\p{L}\p{N}._-]{1,40}$`)

// SetTags replaces a message's tags. Tags are lower-cased; at most 20 of letters, digits,
// '.', '_' and '-'.
func (s *Store) SetTags(ctx context.Context, id string, tags []string) error {
	clean := []string{}
	for _, t := range tags {
		t = strings.ToLower(strings.TrimSpace(t))
		if t == "" {
			continue
		}
		if !tagRe.MatchString(t) {
			return fmt.Errorf("tag %q: use up to 40 letters, digits, '.', '_' or '-'", t)
		}
		if !slices.Contains(clean, t) {
			clean = append(clean, t)
		}
	}
	if len(clean) > 20 {
		return fmt.Errorf("at most 20 tags per message")
	}
	slices.Sort(clean)
	res, err := s.db.ExecContext(ctx, `UPDATE msg SET tags = ? WHERE uid = ?`, ","+strings.Join(clean, ",")+",", id)
	if err != nil {
		return fmt.Errorf("sandbox: tags: %w", err)
	}
	if n, _ := res.RowsAffected(); n == 0 {
		return ErrNotFound
	}
	s.announce(ctx, id)
	return nil
}

// Tags lists every tag in use.
func (s *Store) Tags(ctx context.Context) ([]string, error) {
	rows, err := s.rdb.QueryContext(ctx, `SELECT DISTINCT tags FROM msg WHERE tags != ','`)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	set := map[string]bool{}
	for rows.Next() {
		var t string
		if err := rows.Scan(&t); err != nil {
			return nil, err
		}
		for _, x := range splitNonEmpty(t, ",") {
			set[x] = true
		}
	}
	out := []string{}
	for t := range set {
		out = append(out, t)
	}
	slices.Sort(out)
	return out, rows.Err()
}

func (s *Store) announce(ctx context.Context, id string) {
	if sum, err := s.summary(ctx, id); err == nil {
		s.publish(Event{Type: "update", Message: sum})
	}
}

// Stats reports the store's size.
func (s *Store) Stats(ctx context.Context) (*Stats, error) {
	st := &Stats{MaxMessages: s.opts.MaxMessages, MaxAgeSecs: int64(s.opts.MaxAge / time.Second), MemoryOnly: s.MemoryOnly()}
	if err := s.rdb.QueryRowContext(ctx, `SELECT COUNT(*), COALESCE(SUM(size), 0), COALESCE(SUM(seen = 0), 0) FROM msg`).Scan(&st.Messages, &st.Bytes, &st.Unread); err != nil {
		return nil, err
	}
	var pages, size int64
	if err := s.rdb.QueryRowContext(ctx, `PRAGMA page_count`).Scan(&pages); err == nil {
		if err := s.rdb.QueryRowContext(ctx, `PRAGMA page_size`).Scan(&size); err == nil {
			st.FileBytes = pages * size
		}
	}
	return st, nil
}

// Matches reports whether the message id matches q.
func (s *Store) Matches(ctx context.Context, id string, q *Query) (bool, error) {
	cond, args := q.where()
	var one int
	err := s.rdb.QueryRowContext(ctx, `SELECT 1 FROM msg m WHERE m.uid = ? AND `+cond, append([]any{id}, args...)...).Scan(&one)
	if errors.Is(err, sql.ErrNoRows) {
		return false, nil
	}
	return err == nil, err
}

// Wait returns the newest message received at or after since that matches q, waiting for one
// to arrive until ctx ends. Test suites use it instead of sleeping.
func (s *Store) Wait(ctx context.Context, q *Query, since time.Time) (*Summary, error) {
	events, cancel := s.Subscribe()
	defer cancel()
	qq := &Query{Terms: append([]Term{}, q.Terms...)}
	if !since.IsZero() {
		qq.Terms = append(qq.Terms, Term{Field: "after", at: since})
	}
	pg, err := s.List(ctx, qq, 1, 0)
	if err != nil {
		return nil, err
	}
	if len(pg.Messages) > 0 {
		return pg.Messages[0], nil
	}
	for {
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case ev, ok := <-events:
			if !ok {
				// Dropped as a slow subscriber, or the store closed: look again from scratch.
				if s.closed.Load() {
					return nil, ErrClosed
				}
				return s.Wait(ctx, q, since)
			}
			if ev.Type != "new" || ev.Message == nil {
				continue
			}
			if ok, err := s.Matches(ctx, ev.Message.ID, qq); err != nil {
				return nil, err
			} else if ok {
				return ev.Message, nil
			}
		}
	}
}

// Subscribe returns a channel of events and a function to stop. A subscriber that falls 256
// events behind has its channel closed; it should reload and subscribe again.
func (s *Store) Subscribe() (<-chan Event, func()) {
	ch := make(chan Event, 256)
	s.mu.Lock()
	if s.closed.Load() {
		close(ch)
	} else {
		s.subs[ch] = struct{}{}
	}
	s.mu.Unlock()
	return ch, func() {
		s.mu.Lock()
		if _, ok := s.subs[ch]; ok {
			delete(s.subs, ch)
			close(ch)
		}
		s.mu.Unlock()
	}
}

func (s *Store) publish(ev Event) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for ch := range s.subs {
		select {
		case ch <- ev:
		default:
			delete(s.subs, ch)
			close(ch)
		}
	}
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	for n > 0 && !utf8.RuneStart(s[n]) {
		n--
	}
	return s[:n]
}

// snippet is the start of the body with runs of white space collapsed, at most 200 bytes. It
// runs for every captured message, so it looks at no more of the body than it needs (a regexp
// here was a fifth of the sandbox's CPU time under load).
func snippet(body string) string {
	var b strings.Builder
	space := false
	for _, r := range body {
		if b.Len() >= 200 {
			break
		}
		if unicode.IsSpace(r) {
			space = b.Len() > 0
			continue
		}
		if space {
			b.WriteByte(' ')
			space = false
		}
		b.WriteRune(r)
	}
	return truncate(b.String(), 200)
}

var (
	tagStripRe   = regexp.MustCompile(`(?s)<[^>]*>`)
	scriptRe     = regexp.MustCompile(`(?is)<(script|style|head)\b.*?</(script|style|head)\s*>`)
	entityReplac = strings.NewReplacer("&nbsp;", " ", "&amp;", "&", "&lt;", "<", "&gt;", ">", "&quot;", `"`, "&#39;", "'")
)

// htmlToText is a rough text version of an HTML-only message, for search and the snippet.
func htmlToText(h string) string {
	h = scriptRe.ReplaceAllString(h, " ")
	h = tagStripRe.ReplaceAllString(h, " ")
	return entityReplac.Replace(h)
}
