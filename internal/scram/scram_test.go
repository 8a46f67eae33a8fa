package scram

import (
	"encoding/base64"
	"errors"
	"testing"
)

// RFC 7677 §3: the SCRAM-SHA-256 example exchange, byte for byte.
func TestRFC7677Vector(t *testing.T) {
	salt, _ := base64.StdEncoding.DecodeString("W22ZaJ0SNY7soEsUEjb6gQ==")
	creds, err := Derive("pencil", salt, 4096)
	if err != nil {
		t.Fatal(err)
	}
	s := &Server{Nonce: func() string { return "%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0" }}
	user, err := s.First("n,,n=user,r=rOprNGfwEbeRWgbNEkqO")
	if err != nil || user != "user" {
		t.Fatalf("First = %q, %v", user, err)
	}
	if got := s.Challenge(creds); got != "r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096" {
		t.Fatalf("server-first = %q", got)
	}
	final, err := s.Final("c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=")
	if err != nil || final != "v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=" {
		t.Fatalf("server-final = %q, %v", final, err)
	}
	// The same exchange with another password fails at the proof.
	wrong, _ := Derive("pencil2", salt, 4096)
	s2 := &Server{Nonce: s.Nonce}
	s2.First("n,,n=user,r=rOprNGfwEbeRWgbNEkqO")
	s2.Challenge(wrong)
	if _, err := s2.Final("c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ="); !errors.Is(err, ErrAuth) {
		t.Errorf("wrong verifier: %v", err)
	}
}

func TestProtocolErrors(t *testing.T) {
	firsts := map[string]bool{
		"n,,n=user,r=abc":            true,
		"y,,n=user,r=abc":            true,
		"n,a=user,n=user,r=abc":      true,
		"n,a=admin,n=user,r=abc":     false,
		"p=tls-unique,,n=user,r=abc": false,
		"n,,m=ext,n=user,r=abc":      false,
		"n,,n=us=2Cer,r=abc":         true,
		"n,,n=us=er,r=abc":           false,
		"n,,r=abc":                   false,
		"n,,n=user":                  false,
		"garbage":                    false,
	}
	for msg, ok := range firsts {
		_, err := (&Server{}).First(msg)
		if (err == nil) != ok {
			t.Errorf("First(%q) = %v, want ok=%v", msg, err, ok)
		}
	}
	creds, _ := Derive("pw", []byte("salt"), 4096)
	s := &Server{Nonce: func() string { return "S" }}
	s.First("n,,n=user,r=C")
	s.Challenge(creds)
	for _, msg := range []string{"c=biws,r=CX,p=AAAA", "c=eSws,r=CS,p=" + base64.StdEncoding.EncodeToString(make([]byte, 32)), "r=CS", "c=biws,r=CS,p=!!"} {
		if _, err := s.Final(msg); !errors.Is(err, ErrProtocol) {
			t.Errorf("Final(%q) = %v, want a protocol error", msg, err)
		}
	}
}

func TestStoredForm(t *testing.T) {
	c, err := NewCredentials("secret", 4096)
	if err != nil {
		t.Fatal(err)
	}
	back, err := Parse(c.String())
	if err != nil || back.String() != c.String() {
		t.Fatalf("round trip: %v %q", err, back.String())
	}
	for _, bad := range []string{"", "SCRAM-SHA-256$10:AA$AA:AA", "SCRAM-SHA-1$4096:AA$AA:AA", c.String()[:len(c.String())-4]} {
		if _, err := Parse(bad); err == nil {
			t.Errorf("Parse(%q) accepted", bad)
		}
	}
}

func FuzzServer(f *testing.F) {
	f.Add("n,,n=user,r=abc", "c=biws,r=abcS,p=AAAA")
	creds, _ := Derive("pw", []byte("salt"), 4096)
	f.Fuzz(func(t *testing.T, first, final string) {
		s := &Server{Nonce: func() string { return "S" }}
		if _, err := s.First(first); err != nil {
			return
		}
		s.Challenge(creds)
		if v, err := s.Final(final); err == nil {
			t.Fatalf("a made-up proof verified: %q %q → %q", first, final, v)
		}
	})
}
