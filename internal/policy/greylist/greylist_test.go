package greylist

import (
	"context"
	"net/netip"
	"path/filepath"
	"testing"
	"time"

	"github.com/postamt/postamt/internal/policy"
	"github.com/postamt/postamt/internal/smtp"
)

func TestGreylistLifecycle(t *testing.T) {
	now := time.Unix(1.7e9, 0)
	path := filepath.Join(t.TempDir(), "greylist.db")
	g, err := Open(Options{Path: path, Delay: 5 * time.Minute, RetryWindow: time.Hour, AllowTTL: 24 * time.Hour, Now: func() time.Time { return now }})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	conn := &policy.Conn{RemoteIP: netip.MustParseAddr("192.0.2.10"), Values: map[string]any{}}
	tx := &policy.Txn{Conn: conn, From: "a@remote.example"}
	rcpt := func(addr string) policy.Verdict {
		p, _, err := smtp.ParsePath("<"+addr+">", true)
		if err != nil {
			t.Fatal(err)
		}
		return g.CheckRcpt(ctx, tx, p, nil)
	}
	v := rcpt("alice@example.test")
	if v.Action != policy.Tempfail || v.Reply.Line() != "451 4.7.1 Greylisted: please try again in 300 seconds" {
		t.Fatalf("first attempt: %+v %v", v, v.Reply)
	}
	now = now.Add(2 * time.Minute)
	if v := rcpt("alice@example.test"); v.Action != policy.Tempfail || v.Reply.Line() != "451 4.7.1 Greylisted: please try again in 180 seconds" {
		t.Fatalf("too early: %+v %v", v, v.Reply)
	}
	now = now.Add(3 * time.Minute)
	if v := rcpt("alice@example.test"); v.Action != policy.Continue || v.Result != "pass" {
		t.Fatalf("after the delay: %+v", v)
	}
	// Auto-allow: the network passed, so another sender and recipient from a neighbour pass.
	conn.RemoteIP = netip.MustParseAddr("192.0.2.77")
	tx.From = "other@remote.example"
	if v := rcpt("bob@example.test"); v.Action != policy.Continue {
		t.Fatalf("auto-allowed network: %+v", v)
	}
	// Another network starts over, and survives a reopen of the database.
	conn.RemoteIP = netip.MustParseAddr("198.51.100.1")
	if v := rcpt("bob@example.test"); v.Action != policy.Tempfail {
		t.Fatalf("new network: %+v", v)
	}
	g.Close()
	g, err = Open(Options{Path: path, Delay: 5 * time.Minute, RetryWindow: time.Hour, AllowTTL: 24 * time.Hour, Now: func() time.Time { return now }})
	if err != nil {
		t.Fatal(err)
	}
	defer g.Close()
	if tr, al, err := g.Counts(ctx); err != nil || tr != 1 || al != 1 {
		t.Fatalf("after reopen: %d triplets, %d allowed, %v", tr, al, err)
	}
	// Expiry: past the retry window the waiting triplet is forgotten (a retry starts over),
	// and past the allow TTL the network is no longer allowed.
	now = now.Add(25 * time.Hour)
	conn.RemoteIP = netip.MustParseAddr("192.0.2.10")
	if v := rcpt("carol@example.test"); v.Action != policy.Tempfail {
		t.Fatalf("expired allowance still allows: %+v", v)
	}
	if tr, al, _ := g.Counts(ctx); tr != 1 || al != 0 {
		t.Fatalf("purge left %d triplets, %d allowed", tr, al)
	}
	conn.Trusted = true
	if v := rcpt("dave@example.test"); v.Action != policy.Continue {
		t.Fatalf("trusted client greylisted: %+v", v)
	}
}
