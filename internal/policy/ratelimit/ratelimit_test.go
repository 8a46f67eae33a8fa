package ratelimit

import (
	"context"
	"fmt"
	"net/netip"
	"testing"
	"time"

	"github.com/postamt/postamt/internal/policy"
)

func TestLimits(t *testing.T) {
	now := time.Unix(1e9, 0)
	l := New(Limits{ConnPerIP: 3, ConnPerNet: 5, MsgPerIP: 2}, func() time.Time { return now })
	ctx := context.Background()
	conn := func(ip string) policy.Verdict {
		return l.CheckConn(ctx, &policy.Conn{RemoteIP: netip.MustParseAddr(ip)})
	}
	for i := 0; i < 3; i++ {
		if v := conn("192.0.2.1"); v.Action != policy.Continue {
			t.Fatalf("connection %d refused: %+v", i, v)
		}
	}
	v := conn("192.0.2.1")
	if v.Action != policy.Tempfail || v.Reply.Code != 421 {
		t.Fatalf("fourth connection: %+v", v)
	}
	// The network has 5: two more from a neighbour, then the /24 is full.
	conn("192.0.2.2")
	conn("192.0.2.2")
	if v := conn("192.0.2.3"); v.Action != policy.Tempfail || v.Reason != "connection rate of your network 192.0.2.0/24" {
		t.Fatalf("network limit: %+v", v)
	}
	if v := conn("198.51.100.1"); v.Action != policy.Continue {
		t.Fatalf("other network: %+v", v)
	}
	now = now.Add(30 * time.Second) // half the per-minute rate comes back
	if v := conn("192.0.2.1"); v.Action != policy.Continue {
		t.Fatalf("after refill: %+v", v)
	}
	tx := &policy.Txn{Conn: &policy.Conn{RemoteIP: netip.MustParseAddr("203.0.113.9")}}
	l.CheckMail(ctx, tx)
	l.CheckMail(ctx, tx)
	if v := l.CheckMail(ctx, tx); v.Action != policy.Tempfail || v.Reply.Code != 451 {
		t.Fatalf("message limit: %+v", v)
	}
	tx.Conn.Trusted = true
	if v := l.CheckMail(ctx, tx); v.Action != policy.Continue {
		t.Fatalf("trusted client limited: %+v", v)
	}
}

func TestBounded(t *testing.T) {
	now := time.Unix(1e9, 0)
	l := New(Limits{ConnPerIP: 10, MaxKeys: 100}, func() time.Time { return now })
	for i := 0; i < 1000; i++ {
		l.CheckConn(context.Background(), &policy.Conn{RemoteIP: netip.MustParseAddr(fmt.Sprintf("10.%d.%d.1", i/250, i%250))})
	}
	if n := l.Len(); n > 100 {
		t.Fatalf("%d keys kept, limit 100", n)
	}
}
