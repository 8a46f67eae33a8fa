// Package users is the account store for submission: login names, argon2id password hashes and
// the sender addresses each account may use. It lives in its own SQLite file in the data
// directory (WAL mode), so `postamt user ...` can change it while the server runs: the server
// reads the database on every AUTH and MAIL, it caches nothing.
//
// Passwords are never logged and never stored; only PHC-format argon2id hashes are. Application
// passwords (tokens, "pat_..."), several per account and revocable one by one, authenticate as
// the account; they are random, so a SHA-256 of them is stored.
package users

import (
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"database/sql"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"net/url"
	"runtime"
	"slices"
	"strings"
	"time"

	"golang.org/x/crypto/argon2"
	_ "modernc.org/sqlite" // pure-Go SQLite driver

	"github.com/postamt/postamt/internal/scram"
	"github.com/postamt/postamt/internal/smtp"
)

// Params are argon2id cost parameters. The defaults follow OWASP's minimum recommendation for
// argon2id (19 MiB, 2 passes, 1 lane): about 30 ms per check on a small server, which is slow
// for an offline guesser yet does not let a flood of AUTH attempts exhaust memory.
type Params struct {
	Memory  uint32 // KiB
	Time    uint32
	Threads uint8
	// ScramIterations is the PBKDF2 count of the SCRAM-SHA-256 verifier (0: 100000).
	ScramIterations int
}

// DefaultParams are used for new hashes.
var DefaultParams = Params{Memory: 19 * 1024, Time: 2, Threads: 1}

var (
	// ErrInvalid is returned for an unknown user or a wrong password alike, so that a client
	// cannot tell which.
	ErrInvalid = errors.New("users: invalid credentials")
	// ErrNotFound is returned by the administrative functions for an unknown user.
	ErrNotFound = errors.New("users: no such user")
	// ErrExists is returned by Add when the name is taken.
	ErrExists = errors.New("users: user already exists")
)

const schema = `
CREATE TABLE IF NOT EXISTS user (
	name    TEXT PRIMARY KEY, -- the login, lower case
	hash    TEXT NOT NULL,    -- PHC string: $argon2id$v=19$m=...,t=...,p=...$salt$hash
	scram   TEXT NOT NULL,    -- SCRAM-SHA-256$iter:salt$StoredKey:ServerKey (RFC 7677)
	created INTEGER NOT NULL  -- unix seconds
) WITHOUT ROWID;
-- secret: keys the made-up SCRAM salts of unknown users, so they stay stable across restarts.
CREATE TABLE IF NOT EXISTS meta (
	key   TEXT PRIMARY KEY,
	value BLOB NOT NULL
) WITHOUT ROWID;
-- Application passwords: random tokens for machines and mail programs, revocable one by one
-- without changing the account's password. 128 random bits need no slow hash: SHA-256 (hex).
CREATE TABLE IF NOT EXISTS token (
	name    TEXT NOT NULL,
	label   TEXT NOT NULL,
	hash    TEXT NOT NULL,
	created INTEGER NOT NULL,
	PRIMARY KEY (name, label)
) WITHOUT ROWID;
-- What the user may send as: a full address, or "@domain" for every address in a domain.
CREATE TABLE IF NOT EXISTS sender (
	name    TEXT NOT NULL,
	pattern TEXT NOT NULL,
	PRIMARY KEY (name, pattern)
) WITHOUT ROWID;
`

// Store is the user database.
type Store struct {
	db        *sql.DB
	params    Params
	dummy     string // a hash compared for unknown users so their timing matches a wrong password
	secret    []byte // keys made-up SCRAM salts
	scramIter int
	sem       chan struct{} // see acquire
}

// Open opens (creating if needed) the database at path.
func Open(path string) (*Store, error) { return OpenWith(path, DefaultParams) }

// OpenWith is Open with explicit hash parameters (tests use cheap ones).
func OpenWith(path string, p Params) (*Store, error) {
	dsn := "file:" + url.PathEscape(path) + "?_pragma=journal_mode(WAL)&_pragma=synchronous(FULL)" +
		"&_pragma=busy_timeout(10000)&_txlock=immediate"
	db, err := sql.Open("sqlite", dsn)
	if err != nil {
		return nil, fmt.Errorf("users: open %s: %w", path, err)
	}
	if _, err := db.Exec(schema); err != nil {
		db.Close()
		return nil, fmt.Errorf("users: %s: %w", path, err)
	}
	s := &Store{db: db, params: p, scramIter: p.ScramIterations, sem: make(chan struct{}, max(2, runtime.NumCPU()))}
	if s.scramIter < 4096 {
		s.scramIter = scram.DefaultIterations
	}
	s.dummy, err = hash("not a password", p)
	if err != nil {
		db.Close()
		return nil, err
	}
	secret := make([]byte, 32)
	rand.Read(secret)
	if _, err := db.Exec(`INSERT OR IGNORE INTO meta (key, value) VALUES ('secret', ?)`, secret); err != nil {
		db.Close()
		return nil, err
	}
	if err := db.QueryRow(`SELECT value FROM meta WHERE key = 'secret'`).Scan(&s.secret); err != nil {
		db.Close()
		return nil, err
	}
	return s, nil
}

// Close closes the database.
func (s *Store) Close() error { return s.db.Close() }

// User is an account as listed.
type User struct {
	Name    string
	Created time.Time
	Senders []string // addresses and "@domain" patterns
}

// Normalize returns the canonical form of a login name: trimmed and lower case (logins are
// usually addresses; case-insensitive matching is what people expect).
func Normalize(name string) string { return strings.ToLower(strings.TrimSpace(name)) }

// ValidName reports whether name can be a login: printable, no spaces, at most 255 bytes.
func ValidName(name string) error {
	if name == "" || len(name) > 255 {
		return errors.New("a user name must be 1 to 255 characters")
	}
	for _, r := range name {
		if r <= ' ' || r == 0x7f {
			return fmt.Errorf("user name %q contains a space or control character", name)
		}
	}
	return nil
}

// NormalizeSender checks and canonicalises an allowed-sender pattern: an address
// ("alice@example.org") or a whole domain ("@example.org").
func NormalizeSender(p string) (string, error) {
	p = strings.TrimSpace(p)
	if d, ok := strings.CutPrefix(p, "@"); ok {
		a, err := smtp.ParseAddress("x@"+d, true)
		if err != nil || strings.HasPrefix(d, "[") {
			return "", fmt.Errorf("%q is not a valid domain", d)
		}
		return "@" + a.ASCIIDomain(), nil
	}
	a, err := smtp.ParseAddress(p, true)
	if err != nil {
		return "", fmt.Errorf("%q is not a valid address: %v", p, err)
	}
	return canonAddr(a), nil
}

// canonAddr is the form addresses are compared in: local part as given (RFC 5321 says it may be
// case-sensitive, but no one relies on that for their own sender address, so lower case), domain
// in lower-case ASCII.
func canonAddr(a smtp.Address) string {
	return strings.ToLower(a.Local) + "@" + a.ASCIIDomain()
}

// Add creates a user. When the login is itself an address it is an allowed sender too.
func (s *Store) Add(ctx context.Context, name, password string, senders []string) error {
	name = Normalize(name)
	if err := ValidName(name); err != nil {
		return err
	}
	if err := checkPassword(password); err != nil {
		return err
	}
	if a, err := smtp.ParseAddress(name, true); err == nil {
		senders = append([]string{canonAddr(a)}, senders...)
	}
	pats, err := normalizeAll(senders)
	if err != nil {
		return err
	}
	h, sc, err := s.hashes(password)
	if err != nil {
		return err
	}
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	defer tx.Rollback()
	var n int
	if err := tx.QueryRowContext(ctx, `SELECT count(*) FROM user WHERE name = ?`, name).Scan(&n); err != nil {
		return err
	}
	if n > 0 {
		return fmt.Errorf("%w: %s", ErrExists, name)
	}
	if _, err := tx.ExecContext(ctx, `INSERT INTO user (name, hash, scram, created) VALUES (?, ?, ?, ?)`, name, h, sc, time.Now().Unix()); err != nil {
		return err
	}
	for _, p := range pats {
		if _, err := tx.ExecContext(ctx, `INSERT OR IGNORE INTO sender (name, pattern) VALUES (?, ?)`, name, p); err != nil {
			return err
		}
	}
	return tx.Commit()
}

func normalizeAll(in []string) ([]string, error) {
	out := make([]string, 0, len(in))
	for _, p := range in {
		n, err := NormalizeSender(p)
		if err != nil {
			return nil, err
		}
		if !slices.Contains(out, n) {
			out = append(out, n)
		}
	}
	return out, nil
}

func checkPassword(p string) error {
	switch {
	case len(p) < 8:
		return errors.New("the password must have at least 8 characters")
	case len(p) > 1024:
		return errors.New("the password must have at most 1024 characters")
	case strings.ContainsAny(p, "\x00\r\n"):
		return errors.New("the password must not contain NUL or line breaks")
	}
	return nil
}

// Delete removes a user and their sender addresses.
func (s *Store) Delete(ctx context.Context, name string) error {
	name = Normalize(name)
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	defer tx.Rollback()
	res, err := tx.ExecContext(ctx, `DELETE FROM user WHERE name = ?`, name)
	if err != nil {
		return err
	}
	if n, _ := res.RowsAffected(); n == 0 {
		return fmt.Errorf("%w: %s", ErrNotFound, name)
	}
	for _, table := range []string{"sender", "token"} {
		if _, err := tx.ExecContext(ctx, `DELETE FROM `+table+` WHERE name = ?`, name); err != nil {
			return err
		}
	}
	return tx.Commit()
}

// SetPassword replaces a user's password.
func (s *Store) SetPassword(ctx context.Context, name, password string) error {
	name = Normalize(name)
	if err := checkPassword(password); err != nil {
		return err
	}
	h, sc, err := s.hashes(password)
	if err != nil {
		return err
	}
	res, err := s.db.ExecContext(ctx, `UPDATE user SET hash = ?, scram = ? WHERE name = ?`, h, sc, name)
	if err != nil {
		return err
	}
	if n, _ := res.RowsAffected(); n == 0 {
		return fmt.Errorf("%w: %s", ErrNotFound, name)
	}
	return nil
}

// AddSenders and RemoveSenders change what a user may send as.
func (s *Store) AddSenders(ctx context.Context, name string, senders []string) error {
	return s.changeSenders(ctx, name, senders, `INSERT OR IGNORE INTO sender (name, pattern) VALUES (?, ?)`)
}

func (s *Store) RemoveSenders(ctx context.Context, name string, senders []string) error {
	return s.changeSenders(ctx, name, senders, `DELETE FROM sender WHERE name = ? AND pattern = ?`)
}

func (s *Store) changeSenders(ctx context.Context, name string, senders []string, stmt string) error {
	name = Normalize(name)
	pats, err := normalizeAll(senders)
	if err != nil {
		return err
	}
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	defer tx.Rollback()
	var n int
	if err := tx.QueryRowContext(ctx, `SELECT count(*) FROM user WHERE name = ?`, name).Scan(&n); err != nil {
		return err
	}
	if n == 0 {
		return fmt.Errorf("%w: %s", ErrNotFound, name)
	}
	for _, p := range pats {
		if _, err := tx.ExecContext(ctx, stmt, name, p); err != nil {
			return err
		}
	}
	return tx.Commit()
}

// List returns every user, sorted by name.
func (s *Store) List(ctx context.Context) ([]User, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT u.name, u.created, coalesce(s.pattern, '') FROM user u
		LEFT JOIN sender s ON s.name = u.name ORDER BY u.name, s.pattern`)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []User
	for rows.Next() {
		var name, pat string
		var created int64
		if err := rows.Scan(&name, &created, &pat); err != nil {
			return nil, err
		}
		if len(out) == 0 || out[len(out)-1].Name != name {
			out = append(out, User{Name: name, Created: time.Unix(created, 0)})
		}
		if pat != "" {
			u := &out[len(out)-1]
			u.Senders = append(u.Senders, pat)
		}
	}
	return out, rows.Err()
}

// Authenticate checks a login and returns the canonical user name. Unknown users and wrong
// passwords take the same time and return the same ErrInvalid.
func (s *Store) Authenticate(ctx context.Context, name, password string) (string, error) {
	name = Normalize(name)
	var h string
	err := s.db.QueryRowContext(ctx, `SELECT hash FROM user WHERE name = ?`, name).Scan(&h)
	switch {
	case errors.Is(err, sql.ErrNoRows):
		if err := s.acquire(ctx); err != nil {
			return "", err
		}
		verify(s.dummy, password)
		s.release()
		return "", ErrInvalid
	case err != nil:
		return "", err
	}
	if s.tokenMatches(ctx, name, password) {
		return name, nil
	}
	if err := s.acquire(ctx); err != nil {
		return "", err
	}
	ok := verify(h, password)
	s.release()
	if ok {
		return name, nil
	}
	return "", ErrInvalid
}

// acquire bounds the argon2id computations running at once: each takes Params.Memory, so a
// flood of AUTH attempts on many connections would otherwise take memory without limit. Waiters
// queue (bounded by ctx), which also slows a guesser down.
func (s *Store) acquire(ctx context.Context) error {
	select {
	case s.sem <- struct{}{}:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (s *Store) release() { <-s.sem }

func tokenHash(token string) string {
	sum := sha256.Sum256([]byte(token))
	return hex.EncodeToString(sum[:])
}

func (s *Store) tokenMatches(ctx context.Context, name, password string) bool {
	if !strings.HasPrefix(password, tokenPrefix) {
		return false
	}
	var n int
	s.db.QueryRowContext(ctx, `SELECT count(*) FROM token WHERE name = ? AND hash = ?`, name, tokenHash(password)).Scan(&n)
	return n > 0
}

// tokenPrefix marks application passwords, so that an ordinary password costs no token lookup
// and a leaked token is recognisable (secret scanners match such prefixes).
const tokenPrefix = "pat_"

// Token is an application password as listed (the secret itself is shown only once).
type Token struct {
	Label   string
	Created time.Time
}

// AddToken creates an application password for a user and returns it; only its hash is kept.
func (s *Store) AddToken(ctx context.Context, name, label string) (string, error) {
	name = Normalize(name)
	if label == "" || len(label) > 64 || strings.ContainsAny(label, " \t\r\n") {
		return "", errors.New("a token label must be 1 to 64 characters without spaces")
	}
	b := make([]byte, 16)
	if _, err := rand.Read(b); err != nil {
		return "", err
	}
	token := tokenPrefix + base64.RawURLEncoding.EncodeToString(b)
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return "", err
	}
	defer tx.Rollback()
	var n int
	if err := tx.QueryRowContext(ctx, `SELECT count(*) FROM user WHERE name = ?`, name).Scan(&n); err != nil {
		return "", err
	}
	if n == 0 {
		return "", fmt.Errorf("%w: %s", ErrNotFound, name)
	}
	if err := tx.QueryRowContext(ctx, `SELECT count(*) FROM token WHERE name = ? AND label = ?`, name, label).Scan(&n); err != nil {
		return "", err
	}
	if n > 0 {
		return "", fmt.Errorf("user %s already has a token labelled %q", name, label)
	}
	if _, err := tx.ExecContext(ctx, `INSERT INTO token (name, label, hash, created) VALUES (?, ?, ?, ?)`,
		name, label, tokenHash(token), time.Now().Unix()); err != nil {
		return "", err
	}
	return token, tx.Commit()
}

// DeleteToken revokes one application password.
func (s *Store) DeleteToken(ctx context.Context, name, label string) error {
	res, err := s.db.ExecContext(ctx, `DELETE FROM token WHERE name = ? AND label = ?`, Normalize(name), label)
	if err != nil {
		return err
	}
	if n, _ := res.RowsAffected(); n == 0 {
		return fmt.Errorf("%w: no token %q for %s", ErrNotFound, label, Normalize(name))
	}
	return nil
}

// Tokens lists a user's application passwords.
func (s *Store) Tokens(ctx context.Context, name string) ([]Token, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT label, created FROM token WHERE name = ? ORDER BY label`, Normalize(name))
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []Token
	for rows.Next() {
		var t Token
		var created int64
		if err := rows.Scan(&t.Label, &created); err != nil {
			return nil, err
		}
		t.Created = time.Unix(created, 0)
		out = append(out, t)
	}
	return out, rows.Err()
}

// MaySend reports whether user may use addr (MAIL FROM or From:): an exact allowed address, or
// an allowed whole domain.
func (s *Store) MaySend(ctx context.Context, user string, addr smtp.Address) (bool, error) {
	var n int
	err := s.db.QueryRowContext(ctx, `SELECT count(*) FROM sender WHERE name = ? AND pattern IN (?, ?)`,
		Normalize(user), canonAddr(addr), "@"+addr.ASCIIDomain()).Scan(&n)
	return n > 0, err
}

// hashes returns the argon2id hash and the SCRAM-SHA-256 verifier of password.
func (s *Store) hashes(password string) (string, string, error) {
	h, err := hash(password, s.params)
	if err != nil {
		return "", "", err
	}
	c, err := scram.NewCredentials(password, s.scramIter)
	if err != nil {
		return "", "", err
	}
	return h, c.String(), nil
}

// ScramCredentials returns the SCRAM-SHA-256 verifier of a user. For an unknown user it makes
// one up — a salt stable per name, keys no password matches — so that the exchange looks the
// same for known and unknown names and fails only at the proof (no user enumeration). found
// tells the caller which it was.
func (s *Store) ScramCredentials(ctx context.Context, name string) (c scram.Credentials, found bool, err error) {
	name = Normalize(name)
	var v string
	err = s.db.QueryRowContext(ctx, `SELECT scram FROM user WHERE name = ?`, name).Scan(&v)
	switch {
	case errors.Is(err, sql.ErrNoRows):
		m := hmac.New(sha256.New, s.secret)
		m.Write([]byte(name))
		keys := make([]byte, 64)
		rand.Read(keys)
		return scram.Credentials{Salt: m.Sum(nil)[:16], Iter: s.scramIter, StoredKey: keys[:32], ServerKey: keys[32:]}, false, nil
	case err != nil:
		return c, false, err
	}
	c, err = scram.Parse(v)
	return c, err == nil, err
}

// hash returns the PHC string for password with a fresh 16-byte salt.
func hash(password string, p Params) (string, error) {
	salt := make([]byte, 16)
	if _, err := rand.Read(salt); err != nil {
		return "", err
	}
	key := argon2.IDKey([]byte(password), salt, p.Time, p.Memory, p.Threads, 32)
	enc := base64.RawStdEncoding
	return fmt.Sprintf("$argon2id$v=%d$m=%d,t=%d,p=%d$%s$%s", argon2.Version, p.Memory, p.Time, p.Threads,
		enc.EncodeToString(salt), enc.EncodeToString(key)), nil
}

// verify checks password against a PHC string, using the parameters stored in it so that
// changing DefaultParams does not lock anyone out.
func verify(phc, password string) bool {
	f := strings.Split(phc, "$")
	// "", "argon2id", "v=19", "m=..,t=..,p=..", salt, key
	if len(f) != 6 || f[1] != "argon2id" || f[2] != fmt.Sprintf("v=%d", argon2.Version) {
		return false
	}
	var p Params
	if _, err := fmt.Sscanf(f[3], "m=%d,t=%d,p=%d", &p.Memory, &p.Time, &p.Threads); err != nil {
		return false
	}
	// Bounds keep a corrupted or hostile row from making one check take gigabytes or minutes.
	if p.Memory < 8 || p.Memory > 1<<21 || p.Time < 1 || p.Time > 64 || p.Threads < 1 {
		return false
	}
	enc := base64.RawStdEncoding
	salt, err1 := enc.DecodeString(f[4])
	want, err2 := enc.DecodeString(f[5])
	if err1 != nil || err2 != nil || len(want) < 16 || len(want) > 64 {
		return false
	}
	got := argon2.IDKey([]byte(password), salt, p.Time, p.Memory, p.Threads, uint32(len(want)))
	return subtle.ConstantTimeCompare(got, want) == 1
}

// GeneratePassword returns a random password for `user add` without --password-stdin: 20
// characters from an unambiguous alphabet (about 110 bits).
func GeneratePassword() string {
	const alphabet = "abcdefghijkmnopqrstuvwxyzABCDEFGHJKLMNPQRSTUVWXYZ23456789"
	b := make([]byte, 20)
	for i := range b {
		b[i] = alphabet[randIntn(len(alphabet))]
	}
	return string(b)
}

func randIntn(n int) int {
	var b [1]byte
	// Rejection sampling keeps the distribution uniform.
	for {
		rand.Read(b[:])
		if int(b[0]) < 256-256%n {
			return int(b[0]) % n
		}
	}
}
