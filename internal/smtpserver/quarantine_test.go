package smtpserver_test

import (
	"bytes"
	"context"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/postamt/postamt/internal/policy"
	"github.com/postamt/postamt/internal/quarantine"
)

// TestPolicyQuarantine: a DATA check that quarantines gets the client a 250, but the message
// goes to the quarantine store (with the reason and the headers checks added), not to delivery;
// releasing it delivers it through the queue.
func TestPolicyQuarantine(t *testing.T) {
	st, err := quarantine.Open(filepath.Join(t.TempDir(), "quarantine.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	chk := &scripted{name: "av", data: func(string) policy.Verdict {
		return policy.Verdict{Action: policy.Quarantine, Reason: "virus found: Test", Result: "virus", Headers: []string{"X-Virus: Test"}}
	}}
	e := newEnv(t, envOpts{policy: &policy.Chain{Entries: []policy.Entry{{Check: chk}}}, quarantine: st})
	c := e.dialReady()
	c.cmd("MAIL FROM:<friend@remote.test>", 250, "2.1.0")
	c.cmd("RCPT TO:<alice@example.test>", 250, "2.1.5")
	c.cmd("DATA", 354, "")
	c.raw(testMsg + ".\r\n")
	r := c.expect(250, "2.0.0")
	id := strings.TrimPrefix(r.lines[0], "OK: queued as ")
	time.Sleep(200 * time.Millisecond)
	if n := len(e.rec.Deliveries()); n != 0 {
		t.Fatalf("%d deliveries of a quarantined message", n)
	}
	items, err := st.List(context.Background())
	if err != nil || len(items) != 1 || items[0].ID != id || items[0].Reason != "virus found: Test" || items[0].Rcpts[0] != "alice@example.test" {
		t.Fatalf("quarantine: %+v %v", items, err)
	}
	_, body, _ := st.Get(context.Background(), id)
	if !bytes.HasPrefix(body, []byte("X-Virus: Test\r\nReceived: from client.example")) {
		t.Errorf("stored body starts %q", body[:min(len(body), 80)])
	}
	if !strings.Contains(e.logs.String(), "msg=quarantined") {
		t.Errorf("no quarantined log line:\n%s", e.logs.String())
	}

	if err := st.RequestRelease(context.Background(), id); err != nil {
		t.Fatal(err)
	}
	if n, err := st.ReleasePending(context.Background(), e.q, nil); n != 1 || err != nil {
		t.Fatalf("release: %d %v", n, err)
	}
	ds := e.waitDeliveries(1)
	if ds[0].Rcpt.Addr != "alice@example.test" || !bytes.Equal(ds[0].Body, body) {
		t.Errorf("released delivery to %s, body equal: %v", ds[0].Rcpt.Addr, bytes.Equal(ds[0].Body, body))
	}
}

// closer is a check with per-connection state; the server must release it when the
// connection ends, however it ends.
type closer struct {
	scripted
	closed chan string
}

func (c *closer) CloseConn(pc *policy.Conn) { c.closed <- pc.SessionID }

func TestPolicyCloseConn(t *testing.T) {
	chk := &closer{scripted: scripted{name: "stateful"}, closed: make(chan string, 4)}
	e := newEnv(t, envOpts{policy: &policy.Chain{Entries: []policy.Entry{{Check: chk}}}})
	c := e.dialReady()
	c.cmd("QUIT", 221, "2.0.0")
	c2 := e.dialReady()
	c2.c.Close() // a client that just goes away
	for i := range 2 {
		select {
		case <-chk.closed:
		case <-time.After(5 * time.Second):
			t.Fatalf("CloseConn called %d times, want 2", i)
		}
	}
}
