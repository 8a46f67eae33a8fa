package queue

import (
	"bytes"
	"context"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/postamt/postamt/internal/dns"
	"github.com/postamt/postamt/internal/dns/dnstest"
	"github.com/postamt/postamt/internal/mail"
	"github.com/postamt/postamt/internal/transport"
	"github.com/postamt/postamt/internal/transport/remote"
)

// TestDNSTimeoutDefersWithinAttemptDeadline: the remote transport's resolver never answers (a
// blackhole on UDP and TCP). Each attempt ends when the queue's attempt deadline does — not
// when the resolver's own retries (10 s and more) run out — with a 4.4.3 deferral; the queue
// retries on its schedule and the recipient stays pending: nothing is bounced or lost.
func TestDNSTimeoutDefersWithinAttemptDeadline(t *testing.T) {
	addr, queries := dnstest.Blackhole(t)
	const deadline = time.Second
	var (
		mu   sync.Mutex
		took []time.Duration
		logs bytes.Buffer
	)
	rt := &remote.Transport{Resolver: dns.System([]string{addr}), Hostname: "mx.example.test", ReuseIdle: -1}
	q, err := Open(Options{Dir: t.TempDir(), Transports: []transport.Transport{rt},
		AttemptTimeout: deadline, RetryIntervals: []time.Duration{100 * time.Millisecond}, MaxAge: time.Hour,
		ScanInterval: 50 * time.Millisecond, Jitter: func(time.Duration) time.Duration { return 0 },
		Logger: slog.New(slog.NewTextHandler(lockedWriter{&mu, &logs}, nil)),
		AttemptLatency: func(_ string, d time.Duration) {
			mu.Lock()
			took = append(took, d)
			mu.Unlock()
		}})
	if err != nil {
		t.Fatal(err)
	}
	q.Start()
	defer q.Close(context.Background())

	w, err := q.Create()
	if err != nil {
		t.Fatal(err)
	}
	w.WriteString("Subject: dns outage\r\n\r\nbody\r\n")
	env := &mail.Envelope{From: "a@example.test", Rcpts: []mail.Recipient{{Addr: "u@remote.test", Orig: "u@remote.test",
		Route: mail.Route{Transport: "remote", NextHop: "remote.test"}}}}
	if err := q.Accept(context.Background(), env, w); err != nil {
		t.Fatal(err)
	}
	attempts := func() []time.Duration {
		mu.Lock()
		defer mu.Unlock()
		return append([]time.Duration(nil), took...)
	}
	for end := time.Now().Add(15 * time.Second); len(attempts()) < 2 && time.Now().Before(end); time.Sleep(20 * time.Millisecond) {
	}
	got := attempts()
	if len(got) < 2 {
		t.Fatalf("%d attempts in 15 s, want at least 2 (the queue must retry)", len(got))
	}
	for i, d := range got {
		// A little slack for scheduling on a busy machine; the resolver alone would take 10 s.
		if d > deadline+2*time.Second {
			t.Errorf("attempt %d took %v, past the %v attempt deadline", i+1, d, deadline)
		}
	}
	if queries() == 0 {
		t.Error("the blackhole saw no query: the test did not exercise DNS")
	}
	// The second attempt's outcome is committed just after its latency is reported.
	var state, n int
	var lastErr string
	for end := time.Now().Add(5 * time.Second); n < 2 && time.Now().Before(end); time.Sleep(20 * time.Millisecond) {
		if err := q.rdb.QueryRow(`SELECT state, attempts, last_error FROM rcpt WHERE msg_id = ?`, env.ID).Scan(&state, &n, &lastErr); err != nil {
			t.Fatal(err)
		}
	}
	if state != statePending || n < 2 || !strings.HasPrefix(lastErr, "451 4.4.3 ") {
		t.Errorf("recipient state %d after %d attempts, last error %q; want pending with 451 4.4.3", state, n, lastErr)
	}
	mu.Lock()
	defer mu.Unlock()
	if !strings.Contains(logs.String(), "status=deferred") || strings.Contains(logs.String(), "status=bounced") {
		t.Errorf("log:\n%s", logs.String())
	}
}

type lockedWriter struct {
	mu *sync.Mutex
	w  *bytes.Buffer
}

func (l lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}
