package users

import (
	"context"
	"errors"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/postamt/postamt/internal/scram"
	"github.com/postamt/postamt/internal/smtp"
)

var cheap = Params{Memory: 64, Time: 1, Threads: 1, ScramIterations: 4096}

func openTest(t *testing.T) *Store {
	t.Helper()
	s, err := OpenWith(filepath.Join(t.TempDir(), "users.db"), cheap)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func addr(t *testing.T, s string) smtp.Address {
	a, err := smtp.ParseAddress(s, true)
	if err != nil {
		t.Fatal(err)
	}
	return a
}

func TestAddAuthenticate(t *testing.T) {
	ctx := context.Background()
	s := openTest(t)
	if err := s.Add(ctx, "Alice@Example.ORG", "correct horse", []string{"alias@example.org", "@shop.example"}); err != nil {
		t.Fatal(err)
	}
	if err := s.Add(ctx, "alice@example.org", "other password", nil); !errors.Is(err, ErrExists) {
		t.Fatalf("second add: %v, want ErrExists", err)
	}
	tests := []struct {
		user, pass string
		ok         bool
	}{
		{"alice@example.org", "correct horse", true},
		{"ALICE@example.org", "correct horse", true},
		{"alice@example.org", "correct horsE", false},
		{"alice@example.org", "", false},
		{"bob@example.org", "correct horse", false},
	}
	for _, tt := range tests {
		name, err := s.Authenticate(ctx, tt.user, tt.pass)
		if tt.ok && (err != nil || name != "alice@example.org") {
			t.Errorf("Authenticate(%q, %q) = %q, %v; want alice@example.org", tt.user, tt.pass, name, err)
		}
		if !tt.ok && !errors.Is(err, ErrInvalid) {
			t.Errorf("Authenticate(%q, %q) = %q, %v; want ErrInvalid", tt.user, tt.pass, name, err)
		}
	}
	// Only hashes are stored.
	var h string
	s.db.QueryRow(`SELECT hash FROM user`).Scan(&h)
	if !strings.HasPrefix(h, "$argon2id$v=19$m=64,t=1,p=1$") || strings.Contains(h, "correct horse") {
		t.Errorf("stored hash %q", h)
	}
}

func TestMaySend(t *testing.T) {
	ctx := context.Background()
	s := openTest(t)
	if err := s.Add(ctx, "alice@example.org", "correct horse", []string{"Alias@Example.org", "@shop.example"}); err != nil {
		t.Fatal(err)
	}
	if err := s.Add(ctx, "app1", "machine password", []string{"noreply@example.org"}); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		user, addr string
		want       bool
	}{
		{"alice@example.org", "alice@example.org", true},
		{"alice@example.org", "ALICE@EXAMPLE.ORG", true},
		{"alice@example.org", "alias@example.org", true},
		{"alice@example.org", "anyone@shop.example", true},
		{"alice@example.org", "anyone@sub.shop.example", false},
		{"alice@example.org", "bob@example.org", false},
		{"alice@example.org", "noreply@example.org", false},
		{"app1", "noreply@example.org", true},
		{"app1", "app1@example.org", false},
		{"nobody", "alice@example.org", false},
	}
	for _, tt := range tests {
		got, err := s.MaySend(ctx, tt.user, addr(t, tt.addr))
		if err != nil || got != tt.want {
			t.Errorf("MaySend(%q, %q) = %v, %v; want %v", tt.user, tt.addr, got, err, tt.want)
		}
	}
	if err := s.RemoveSenders(ctx, "alice@example.org", []string{"@shop.example"}); err != nil {
		t.Fatal(err)
	}
	if ok, _ := s.MaySend(ctx, "alice@example.org", addr(t, "x@shop.example")); ok {
		t.Error("domain still allowed after RemoveSenders")
	}
}

func TestPasswdDeleteList(t *testing.T) {
	ctx := context.Background()
	s := openTest(t)
	s.Add(ctx, "b@example.org", "password one", nil)
	s.Add(ctx, "a@example.org", "password two", []string{"@example.org"})
	if err := s.SetPassword(ctx, "b@example.org", "password three"); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Authenticate(ctx, "b@example.org", "password one"); !errors.Is(err, ErrInvalid) {
		t.Errorf("old password still works: %v", err)
	}
	if _, err := s.Authenticate(ctx, "b@example.org", "password three"); err != nil {
		t.Errorf("new password: %v", err)
	}
	if err := s.SetPassword(ctx, "nobody", "password four"); !errors.Is(err, ErrNotFound) {
		t.Errorf("SetPassword(nobody) = %v", err)
	}
	us, err := s.List(ctx)
	if err != nil || len(us) != 2 || us[0].Name != "a@example.org" || strings.Join(us[0].Senders, ",") != "@example.org,a@example.org" {
		t.Fatalf("List = %+v, %v", us, err)
	}
	if err := s.Delete(ctx, "a@example.org"); err != nil {
		t.Fatal(err)
	}
	if err := s.Delete(ctx, "a@example.org"); !errors.Is(err, ErrNotFound) {
		t.Errorf("second Delete = %v", err)
	}
	if ok, _ := s.MaySend(ctx, "a@example.org", addr(t, "a@example.org")); ok {
		t.Error("deleted user's senders remain")
	}
	for _, bad := range []string{"short", "line\nbreak password"} {
		if err := s.SetPassword(ctx, "b@example.org", bad); err == nil {
			t.Errorf("password %q accepted", bad)
		}
	}
}

func TestVerifyRejectsMalformed(t *testing.T) {
	for _, phc := range []string{"", "$argon2i$v=19$m=64,t=1,p=1$c2FsdHNhbHQ$a2V5a2V5a2V5a2V5a2V5", "$argon2id$v=19$m=99999999,t=1,p=1$c2FsdA$a2V5a2V5a2V5a2V5a2V5a2V5", "$argon2id$v=19$m=64,t=1,p=1$!!$!!"} {
		if verify(phc, "x") {
			t.Errorf("verify(%q) = true", phc)
		}
	}
	h, _ := hash("pw", cheap)
	if !verify(h, "pw") || verify(h, "pW") {
		t.Error("round trip")
	}
}

func TestGeneratePassword(t *testing.T) {
	a, b := GeneratePassword(), GeneratePassword()
	if len(a) != 20 || a == b || checkPassword(a) != nil {
		t.Errorf("GeneratePassword = %q, %q", a, b)
	}
}

func TestTokens(t *testing.T) {
	ctx := context.Background()
	s := openTest(t)
	s.Add(ctx, "alice@example.org", "alice password", nil)
	s.Add(ctx, "bob@example.org", "bob password", nil)
	tok, err := s.AddToken(ctx, "alice@example.org", "phone")
	if err != nil || !strings.HasPrefix(tok, "pat_") || len(tok) != 4+22 {
		t.Fatalf("AddToken = %q, %v", tok, err)
	}
	if _, err := s.AddToken(ctx, "alice@example.org", "phone"); err == nil {
		t.Error("duplicate label accepted")
	}
	if _, err := s.AddToken(ctx, "nobody", "x"); !errors.Is(err, ErrNotFound) {
		t.Errorf("token for a missing user: %v", err)
	}
	if u, err := s.Authenticate(ctx, "alice@example.org", tok); err != nil || u != "alice@example.org" {
		t.Errorf("token login: %q %v", u, err)
	}
	if _, err := s.Authenticate(ctx, "alice@example.org", "alice password"); err != nil {
		t.Errorf("the password stops working beside a token: %v", err)
	}
	if _, err := s.Authenticate(ctx, "bob@example.org", tok); !errors.Is(err, ErrInvalid) {
		t.Errorf("alice's token logs bob in: %v", err)
	}
	var stored string
	s.db.QueryRow(`SELECT hash FROM token`).Scan(&stored)
	if strings.Contains(stored, tok) || len(stored) != 64 {
		t.Errorf("stored %q", stored)
	}
	ts, _ := s.Tokens(ctx, "alice@example.org")
	if len(ts) != 1 || ts[0].Label != "phone" {
		t.Errorf("Tokens = %+v", ts)
	}
	if err := s.DeleteToken(ctx, "alice@example.org", "phone"); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Authenticate(ctx, "alice@example.org", tok); !errors.Is(err, ErrInvalid) {
		t.Errorf("revoked token still works: %v", err)
	}
	if err := s.DeleteToken(ctx, "alice@example.org", "phone"); !errors.Is(err, ErrNotFound) {
		t.Errorf("second DeleteToken: %v", err)
	}
}

func TestScramCredentials(t *testing.T) {
	ctx := context.Background()
	s := openTest(t)
	s.Add(ctx, "alice@example.org", "alice password", nil)
	c, found, err := s.ScramCredentials(ctx, "Alice@example.org")
	if err != nil || !found || c.Iter != 4096 {
		t.Fatalf("%+v %v %v", c, found, err)
	}
	want, _ := scram.Derive("alice password", c.Salt, c.Iter)
	if string(want.StoredKey) != string(c.StoredKey) || string(want.ServerKey) != string(c.ServerKey) {
		t.Error("stored verifier does not match the password")
	}
	s.SetPassword(ctx, "alice@example.org", "new password!")
	c2, _, _ := s.ScramCredentials(ctx, "alice@example.org")
	if string(c2.StoredKey) == string(c.StoredKey) {
		t.Error("passwd did not change the SCRAM verifier")
	}
	// Unknown users get a stable made-up salt, indistinguishable in form.
	u1, found, err := s.ScramCredentials(ctx, "mallory@example.org")
	u2, _, _ := s.ScramCredentials(ctx, "mallory@example.org")
	if err != nil || found || len(u1.Salt) != 16 || string(u1.Salt) != string(u2.Salt) || u1.Iter != c.Iter {
		t.Errorf("unknown user: %+v found=%v err=%v", u1, found, err)
	}
}

// Password checks beyond the concurrency bound wait (and give up with the caller's context)
// instead of each taking argon2id's memory at once.
func TestHashConcurrencyBound(t *testing.T) {
	s := openTest(t)
	s.Add(context.Background(), "alice@example.org", "alice password", nil)
	for range cap(s.sem) {
		s.sem <- struct{}{}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if _, err := s.Authenticate(ctx, "alice@example.org", "alice password"); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("with every slot taken: %v, want a deadline error", err)
	}
	<-s.sem
	if _, err := s.Authenticate(context.Background(), "alice@example.org", "alice password"); err != nil {
		t.Errorf("with a slot free: %v", err)
	}
}
