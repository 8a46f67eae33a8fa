package submission

import (
	"context"
	"errors"
	"io"
	"net/netip"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/postamt/postamt/internal/mail"
	"github.com/postamt/postamt/internal/policy"
	"github.com/postamt/postamt/internal/scram"
	"github.com/postamt/postamt/internal/smtp"
	"github.com/postamt/postamt/internal/users"
)

type msg string

func (m msg) Size() int64                  { return int64(len(m)) }
func (m msg) Open() (io.ReadCloser, error) { return io.NopCloser(strings.NewReader(string(m))), nil }

func openStore(t *testing.T) *users.Store {
	t.Helper()
	s, err := users.OpenWith(filepath.Join(t.TempDir(), "users.db"), users.Params{Memory: 64, Time: 1, Threads: 1, ScramIterations: 4096})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	ctx := context.Background()
	if err := s.Add(ctx, "alice@example.test", "alice password", []string{"sales@example.test"}); err != nil {
		t.Fatal(err)
	}
	if err := s.Add(ctx, "admin", "admin password", []string{"@example.test"}); err != nil {
		t.Fatal(err)
	}
	return s
}

func txn(user, from string) *policy.Txn {
	now := time.Date(2026, 11, 29, 10, 0, 0, 0, time.UTC)
	return &policy.Txn{Conn: &policy.Conn{AuthUser: user, Now: func() time.Time { return now }}, From: from}
}

func TestSenderCheckMail(t *testing.T) {
	c := SenderCheck{Senders: openStore(t)}
	tests := []struct {
		user, from string
		reject     bool
	}{
		{"alice@example.test", "alice@example.test", false},
		{"alice@example.test", "Sales@Example.Test", false},
		{"alice@example.test", "", false},
		{"alice@example.test", "bob@example.test", true},
		{"alice@example.test", "alice@example.test.evil", true},
		{"admin", "anyone@example.test", false},
		{"admin", "anyone@other.test", true},
		{"", "anyone@other.test", false}, // not authenticated: not this check's business
	}
	for _, tt := range tests {
		v := c.CheckMail(context.Background(), txn(tt.user, tt.from))
		if got := v.Action == policy.Reject; got != tt.reject {
			t.Errorf("%s as <%s>: %v %v, want reject=%v", tt.user, tt.from, v.Action, v.Reply, tt.reject)
		}
		if tt.reject && (v.Reply.Code != 553 || v.Reply.Enhanced != (smtp.EnhancedCode{5, 7, 1}) || !strings.Contains(v.Reply.Text, "not owned by user "+tt.user)) {
			t.Errorf("reply %v", v.Reply)
		}
	}
}

func TestSenderCheckHeader(t *testing.T) {
	c := SenderCheck{Senders: openStore(t)}
	tests := []struct {
		name, header string
		reject       string // substring of the reply, "" for accept
	}{
		{"own", "From: Alice <alice@example.test>\r\n", ""},
		{"alias-folded", "From: \"Sales\r\n Team\" <sales@example.test>\r\n", ""},
		{"encoded-name", "From: =?utf-8?q?J=C3=B6rg?= <alice@example.test>\r\n", ""},
		{"foreign", "From: Bob <bob@example.test>\r\n", "<bob@example.test> in From: is not owned"},
		{"two-in-list", "From: alice@example.test, bob@example.test\r\n", "<bob@example.test> in From:"},
		{"two-fields", "From: alice@example.test\r\nFrom: bob@example.test\r\n", "more than one From:"},
		{"missing", "Subject: x\r\n", "no From:"},
		{"sender-foreign", "From: alice@example.test\r\nSender: ceo@example.test\r\n", "<ceo@example.test> in Sender:"},
		{"garbage", "From: <<<\r\n", "Cannot parse the From:"},
		{"body-not-header", "Subject: x\r\n\r\nFrom: bob@example.test\r\n", "no From:"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m := msg("Received: by mx\r\n\tid 1; date\r\n" + tt.header + "\r\nbody\r\n")
			v := c.CheckData(context.Background(), txn("alice@example.test", "alice@example.test"), m)
			if tt.reject == "" {
				if v.Action != policy.Continue || v.Err != nil {
					t.Fatalf("refused: %v %v", v.Reply, v.Err)
				}
				return
			}
			if v.Action != policy.Reject || v.Reply.Code != 553 || !strings.Contains(v.Reply.Text, tt.reject) {
				t.Fatalf("got %v %v, want 553 with %q", v.Action, v.Reply, tt.reject)
			}
		})
	}
}

func TestFixups(t *testing.T) {
	f := Fixups{Hostname: "mail.example.test"}
	tx := txn("alice@example.test", "")
	v := f.CheckData(context.Background(), tx, msg("From: a@example.test\r\nSubject: x\r\n\r\nbody\r\n"))
	if len(v.Headers) != 2 || v.Headers[0] != "Date: Sun, 29 Nov 2026 10:00:00 +0000" ||
		!regexp.MustCompile(`^Message-ID: <[0-9a-z]+\.[0-9a-v]{16}@mail\.example\.test>$`).MatchString(v.Headers[1]) {
		t.Errorf("headers = %q", v.Headers)
	}
	v = f.CheckData(context.Background(), tx, msg("From: a@example.test\r\ndate: Sat, 28 Nov 2026 10:00:00 +0000\r\nMessage-Id: <x@y>\r\n\r\n"))
	if len(v.Headers) != 0 {
		t.Errorf("present fields rewritten: %q", v.Headers)
	}
	// A Date added by an earlier check counts as present.
	tx.Headers = []string{"Date: Sat, 28 Nov 2026 10:00:00 +0000"}
	v = f.CheckData(context.Background(), tx, msg("From: a@example.test\r\n\r\n"))
	if len(v.Headers) != 1 || !strings.HasPrefix(v.Headers[0], "Message-ID: ") {
		t.Errorf("headers = %q", v.Headers)
	}
}

func TestLimits(t *testing.T) {
	now := time.Date(2026, 11, 29, 10, 0, 0, 0, time.UTC)
	l := &Limits{MessagesPerHour: 2, RecipientsPerMessage: 2, Now: func() time.Time { return now }}
	ctx := context.Background()
	send := func(user string) policy.Verdict {
		tx := txn(user, user)
		if v := l.CheckMail(ctx, tx); v.Action != policy.Continue {
			return v
		}
		l.CheckData(ctx, tx, msg(""))
		return policy.Verdict{}
	}
	for i := range 2 {
		if v := send("alice"); v.Action != policy.Continue {
			t.Fatalf("message %d refused: %v", i+1, v.Reply)
		}
	}
	v := send("alice")
	if v.Action != policy.Tempfail || v.Reply.Code != 451 || v.Reply.Enhanced != (smtp.EnhancedCode{4, 7, 1}) {
		t.Fatalf("third message: %v %v", v.Action, v.Reply)
	}
	if v := send("bob"); v.Action != policy.Continue {
		t.Errorf("another user limited: %v", v.Reply)
	}
	now = now.Add(time.Hour)
	if v := send("alice"); v.Action != policy.Continue {
		t.Errorf("limit not lifted after an hour: %v", v.Reply)
	}
	// Recipients per hour: two messages to 3 recipients each reach a limit of 5 at the second
	// message's third recipient, and the next MAIL is refused.
	l2 := &Limits{RecipientsPerHour: 5, Now: func() time.Time { return now }}
	tx2 := txn("carol", "carol")
	for i := range 3 {
		if v := l2.CheckRcpt(ctx, tx2, smtp.Path{}, nil); v.Action != policy.Continue {
			t.Fatalf("first message, recipient %d refused", i+1)
		}
		tx2.Rcpts = append(tx2.Rcpts, mail.Recipient{Addr: "x@y"})
	}
	l2.CheckData(ctx, tx2, msg(""))
	tx2 = txn("carol", "carol")
	for i := range 3 {
		v := l2.CheckRcpt(ctx, tx2, smtp.Path{}, nil)
		if want := i == 2; (v.Action == policy.Tempfail) != want || want && !strings.Contains(v.Reply.Text, "5 recipients per hour") {
			t.Errorf("second message, recipient %d: %v %v", i+1, v.Action, v.Reply)
		}
		if v.Action == policy.Continue {
			tx2.Rcpts = append(tx2.Rcpts, mail.Recipient{Addr: "x@y"})
		}
	}
	l2.CheckData(ctx, tx2, msg(""))
	if v := l2.CheckMail(ctx, txn("carol", "carol")); v.Action != policy.Tempfail {
		t.Errorf("MAIL after 5 recipients this hour: %v, want tempfail", v.Action)
	}
	tx := txn("alice", "alice")
	for i := range 3 {
		v := l.CheckRcpt(ctx, tx, smtp.Path{}, nil)
		if want := i >= 2; (v.Action == policy.Tempfail) != want {
			t.Errorf("recipient %d: %v", i+1, v.Action)
		}
		tx.Rcpts = append(tx.Rcpts, mail.Recipient{Addr: "x@y"})
	}
}

type countingStore struct {
	calls int
	err   error
}

func (s *countingStore) Authenticate(_ context.Context, name, password string) (string, error) {
	s.calls++
	if s.err != nil {
		return "", s.err
	}
	if name == "alice" && password == "right" {
		return "alice", nil
	}
	return "", users.ErrInvalid
}

func (s *countingStore) ScramCredentials(context.Context, string) (scram.Credentials, bool, error) {
	return scram.Credentials{}, false, s.err
}

func TestAuthenticatorGuard(t *testing.T) {
	now := time.Date(2026, 11, 29, 10, 0, 0, 0, time.UTC)
	var slept []time.Duration
	st := &countingStore{}
	a := &Authenticator{
		Store: st,
		Guard: NewGuard(GuardConfig{MaxFailuresPerIP: 4, MaxFailuresPerUser: 3, Lockout: 10 * time.Minute,
			BaseDelay: time.Second, MaxDelay: 4 * time.Second}, func() time.Time { return now }),
		Sleep: func(_ context.Context, d time.Duration) { slept = append(slept, d) },
	}
	ctx := context.Background()
	ip := netip.MustParseAddr("192.0.2.1")
	code := func(err error) int {
		var r *smtp.Reply
		if errors.As(err, &r) {
			return r.Code
		}
		return 0
	}
	// Two wrong passwords for alice: 535 after 1s, 2s.
	for range 2 {
		if _, err := a.Authenticate(ctx, ip, "alice", "wrong"); code(err) != 535 {
			t.Fatalf("wrong password: %v", err)
		}
	}
	// The right one resets the counters.
	if u, err := a.Authenticate(ctx, ip, "alice", "right"); err != nil || u != "alice" {
		t.Fatalf("right password: %q %v", u, err)
	}
	// Three more failures lock the account (the third answers 421 at once).
	for i := range 3 {
		_, err := a.Authenticate(ctx, ip, "alice", "wrong")
		if want := map[bool]int{true: 421, false: 535}[i == 2]; code(err) != want {
			t.Fatalf("failure %d: %v, want %d", i+1, err, want)
		}
	}
	if got := durs(slept); got != "1s 2s 1s 2s 4s" {
		t.Errorf("delays = %s", got)
	}
	// Locked: even the right password gets 421, without asking the store.
	calls := st.calls
	if _, err := a.Authenticate(ctx, netip.MustParseAddr("198.51.100.9"), "ALICE", "right"); code(err) != 421 {
		t.Errorf("locked account from another address: %v", err)
	}
	if st.calls != calls {
		t.Errorf("store asked during lockout")
	}
	now = now.Add(11 * time.Minute)
	if _, err := a.Authenticate(ctx, ip, "alice", "right"); err != nil {
		t.Errorf("after the lockout: %v", err)
	}
	// Per address: guesses spread over many user names still lock the address (its /64 for IPv6).
	v6 := func(s string) netip.Addr { return netip.MustParseAddr(s) }
	for i := range 4 {
		a.Authenticate(ctx, v6("2001:db8::"+string(rune('a'+i))), "user"+string(rune('a'+i)), "x")
	}
	if _, err := a.Authenticate(ctx, v6("2001:db8::ffff"), "alice", "right"); code(err) != 421 {
		t.Errorf("address /64 not locked: %v", err)
	}
	if _, err := a.Authenticate(ctx, v6("2001:db8:1::1"), "alice", "right"); err != nil {
		t.Errorf("another /64 locked too: %v", err)
	}
	st.err = errors.New("disk on fire")
	if _, err := a.Authenticate(ctx, ip, "alice", "right"); code(err) != 454 {
		t.Errorf("store failure: %v", err)
	}
}

func durs(ds []time.Duration) string {
	s := make([]string, len(ds))
	for i, d := range ds {
		s[i] = d.String()
	}
	return strings.Join(s, " ")
}

func FuzzParseFields(f *testing.F) {
	f.Add("From: a@b\r\nSubject: x\r\n y\r\n")
	f.Add(" leading continuation\r\nno colon\r\nX:\r\n")
	f.Fuzz(func(t *testing.T, block string) {
		var h Header
		parseFields(&h, block)
		for _, fl := range h.fields {
			if fl[0] == "" && !strings.Contains(block, ":") {
				t.Fatalf("field without a colon in the input: %q", fl)
			}
			// A bare CR inside a line is just a character here (the server refuses bare CR
			// in message data before checks run); a LF would mean a line was not split.
			if strings.Contains(fl[1], "\n") {
				t.Fatalf("value keeps a line break: %q", fl[1])
			}
		}
	})
}

// SCRAM failures count against the same limits, and a locked account gets no credentials.
func TestAuthenticatorScram(t *testing.T) {
	a := &Authenticator{Store: openStore(t), Guard: NewGuard(GuardConfig{MaxFailuresPerUser: 2}, nil),
		Sleep: func(context.Context, time.Duration) {}}
	ctx := context.Background()
	ip := netip.MustParseAddr("192.0.2.1")
	c, err := a.ScramCredentials(ctx, ip, "Alice@example.test")
	if err != nil || c.Iter != 4096 {
		t.Fatalf("%+v %v", c, err)
	}
	if u, err := a.ScramDone(ctx, ip, "Alice@example.test", true); err != nil || u != "alice@example.test" {
		t.Errorf("success: %q %v", u, err)
	}
	for i, want := range []int{535, 421} {
		_, err := a.ScramDone(ctx, ip, "alice@example.test", false)
		var r *smtp.Reply
		if !errors.As(err, &r) || r.Code != want {
			t.Fatalf("failure %d: %v, want %d", i+1, err, want)
		}
	}
	var r *smtp.Reply
	if _, err := a.ScramCredentials(ctx, ip, "alice@example.test"); !errors.As(err, &r) || r.Code != 421 {
		t.Errorf("locked: %v", err)
	}
}
