package smtpserver_test

import (
	"context"
	"crypto/hmac"
	"crypto/pbkdf2"
	"crypto/sha256"
	"encoding/base64"
	"net/netip"
	"strings"
	"testing"

	"github.com/postamt/postamt/internal/scram"
	"github.com/postamt/postamt/internal/smtp"
)

// scramAuth knows alice with password "secret"; "locked" is locked out.
type scramAuth struct {
	fakeAuth
	creds   scram.Credentials
	results []bool
}

func (a *scramAuth) ScramCredentials(_ context.Context, _ netip.Addr, user string) (scram.Credentials, error) {
	if user == "locked" {
		return scram.Credentials{}, smtp.NewReply(421, smtp.EnhancedCode{4, 7, 0}, "Too many failed attempts")
	}
	return a.creds, nil
}

func (a *scramAuth) ScramDone(_ context.Context, _ netip.Addr, user string, ok bool) (string, error) {
	a.results = append(a.results, ok)
	if ok {
		return user, nil
	}
	return "", smtp.NewReply(535, smtp.EnhancedCode{5, 7, 8}, "Authentication credentials invalid")
}

func hmacSum(key []byte, msg string) []byte {
	h := hmac.New(sha256.New, key)
	h.Write([]byte(msg))
	return h.Sum(nil)
}

// scramClientFinal computes the client-final message for password, written from RFC 5802 §3.
func scramClientFinal(t *testing.T, password, clientFirstBare, serverFirst string) (final, wantVerifier string) {
	t.Helper()
	var nonce, salt string
	var iter int
	for _, a := range strings.Split(serverFirst, ",") {
		switch {
		case strings.HasPrefix(a, "r="):
			nonce = a[2:]
		case strings.HasPrefix(a, "s="):
			salt = a[2:]
		case strings.HasPrefix(a, "i="):
			for _, c := range a[2:] {
				iter = iter*10 + int(c-'0')
			}
		}
	}
	rawSalt, _ := base64.StdEncoding.DecodeString(salt)
	c, err := scram.Derive(password, rawSalt, iter)
	if err != nil {
		t.Fatal(err)
	}
	// ClientKey is not in Credentials; recompute it the way a client does.
	salted := pbkdf(t, password, rawSalt, iter)
	clientKey := hmacSum(salted, "Client Key")
	without := "c=biws,r=" + nonce
	authMsg := clientFirstBare + "," + serverFirst + "," + without
	sig := hmacSum(c.StoredKey, authMsg)
	proof := make([]byte, len(clientKey))
	for i := range proof {
		proof[i] = clientKey[i] ^ sig[i]
	}
	return without + ",p=" + base64.StdEncoding.EncodeToString(proof),
		"v=" + base64.StdEncoding.EncodeToString(hmacSum(c.ServerKey, authMsg))
}

func TestAuthScram(t *testing.T) {
	creds, _ := scram.Derive("secret", []byte("0123456789abcdef"), 4096)
	a := &scramAuth{creds: creds}
	e := newEnv(t, envOpts{auth: a, requireAuth: true, implicitTLS: false})
	login := func(password string) (*client, reply) {
		c := e.dialReady()
		c.startTLS()
		if r := c.cmd("EHLO client.example", 250, ""); !hasExt(r, "AUTH SCRAM-SHA-256 PLAIN LOGIN") {
			t.Fatalf("EHLO: %q", r.lines)
		}
		bare := "n=alice,r=clientnonce123"
		r := c.cmd("AUTH SCRAM-SHA-256 "+b64("n,,"+bare), 334, "")
		sf, _ := base64.StdEncoding.DecodeString(r.lines[0])
		if !strings.HasPrefix(string(sf), "r=clientnonce123") || !strings.Contains(string(sf), ",i=4096") {
			t.Fatalf("server-first %q", sf)
		}
		final, wantV := scramClientFinal(t, password, bare, string(sf))
		c.raw(b64(final) + "\r\n")
		r, err := c.read()
		if err != nil {
			t.Fatal(err)
		}
		if r.code == 334 {
			if v, _ := base64.StdEncoding.DecodeString(r.lines[0]); string(v) != wantV {
				t.Errorf("server signature %q, want %q", v, wantV)
			}
			r = c.cmd("", 235, "2.7.0")
		}
		return c, r
	}
	c, r := login("secret")
	if r.code != 235 {
		t.Fatalf("right password: %d %q", r.code, r.lines)
	}
	c.cmd("MAIL FROM:<alice@example.test>", 250, "2.1.0")
	if _, r := login("wrong"); r.code != 535 || r.enh != "5.7.8" {
		t.Errorf("wrong password: %d %s", r.code, r.enh)
	}
	if len(a.results) != 2 || !a.results[0] || a.results[1] {
		t.Errorf("ScramDone calls %v", a.results)
	}
	// Malformed and refused exchanges.
	c = e.dialReady()
	c.startTLS()
	c.cmd("EHLO client.example", 250, "")
	c.cmd("AUTH SCRAM-SHA-256 "+b64("p=tls-unique,,n=alice,r=x"), 501, "5.5.2")
	c.cmd("AUTH SCRAM-SHA-256 "+b64("n,,n=alice,r=x"), 334, "")
	c.cmd(b64("c=biws,r=other,p="+base64.StdEncoding.EncodeToString(make([]byte, 32))), 501, "5.5.2")
	c.cmd("AUTH SCRAM-SHA-256", 334, "")
	c.cmd("*", 501, "5.0.0")
	c.cmd("AUTH SCRAM-SHA-256 "+b64("n,,n=locked,r=x"), 421, "4.7.0")
	c.expectClosed()
}

func pbkdf(t *testing.T, password string, salt []byte, iter int) []byte {
	t.Helper()
	k, err := pbkdf2.Key(sha256.New, password, salt, iter, 32)
	if err != nil {
		t.Fatal(err)
	}
	return k
}
