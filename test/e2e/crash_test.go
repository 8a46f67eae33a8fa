package e2e

import (
	"math/rand/v2"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// TestKill9LosesNothing sends messages over parallel connections, kills the server with SIGKILL
// at random moments, restarts it, and checks that every message that got a 250 ends up in the
// mailbox. Postamt's guarantee is at-least-once: a crash after a Maildir delivery but before its
// outcome commits delivers that message again after restart, so duplicates are counted and
// reported, not failed.
//
// POSTAMT_CRASH_KILLS and POSTAMT_CRASH_SENDERS scale it up for `make soak`.
func TestKill9LosesNothing(t *testing.T) {
	if testing.Short() {
		t.Skip("crash test skipped in -short mode")
	}
	kills := envInt("POSTAMT_CRASH_KILLS", 6)
	senders := envInt("POSTAMT_CRASH_SENDERS", 16)
	dir := t.TempDir()
	addr := freePort(t)
	cfg := writeConfig(t, dir, addr, "")
	mailbox := filepath.Join(dir, "data", "mail", "crash.test", "u")

	var acked sync.Map // token → struct{}
	var nAcked, nSent, seq atomic.Int64
	for round := 0; round <= kills; round++ {
		srv := start(t, dir, cfg, addr)
		if round == kills {
			// Final run: no more kills; wait for the queue to deliver everything acknowledged.
			waitAll(t, mailbox, &acked, srv)
			srv.stop()
			break
		}
		stop := make(chan struct{})
		var wg sync.WaitGroup
		for i := 0; i < senders; i++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				s, err := dialSender(addr)
				if err != nil {
					return
				}
				defer s.close()
				for n := 0; n < 2000; n++ { // bounded: the kill comes long before
					select {
					case <-stop:
						return
					default:
					}
					tok := strconv.FormatInt(seq.Add(1), 10)
					nSent.Add(1)
					code, err := s.send("u@crash.test", tok, 100)
					if err != nil {
						return
					}
					if code == 250 {
						acked.Store(tok, struct{}{})
						nAcked.Add(1)
					}
				}
			}()
		}
		time.Sleep(time.Duration(150+rand.IntN(600)) * time.Millisecond)
		srv.kill()
		close(stop)
		wg.Wait()
	}
	seen := tokensInMaildir(t, mailbox)
	dups, lost := 0, 0
	acked.Range(func(k, _ any) bool {
		switch c := seen[k.(string)]; {
		case c == 0:
			lost++
			if lost < 10 {
				t.Errorf("message %s got 250 but was never delivered", k)
			}
		case c > 1:
			dups += c - 1
		}
		return true
	})
	t.Logf("%d kills, %d messages sent, %d acknowledged, %d delivered files, %d lost, %d duplicates",
		kills, nSent.Load(), nAcked.Load(), len(seen), lost, dups)
	if lost > 0 {
		t.Fatalf("%d acknowledged messages lost", lost)
	}
	if nAcked.Load() < int64(kills) {
		t.Fatalf("only %d messages acknowledged: the test did not exercise the server", nAcked.Load())
	}
}

func waitAll(t *testing.T, mailbox string, acked *sync.Map, srv *server) {
	deadline := time.Now().Add(60 * time.Second)
	for time.Now().Before(deadline) {
		seen := tokensInMaildir(t, mailbox)
		missing := 0
		acked.Range(func(k, _ any) bool {
			if seen[k.(string)] == 0 {
				missing++
			}
			return true
		})
		if missing == 0 {
			return
		}
		time.Sleep(200 * time.Millisecond)
	}
	t.Logf("server log of the final run:\n%s", srv.logs.String())
}

func envInt(name string, def int) int {
	if v, err := strconv.Atoi(os.Getenv(name)); err == nil && v > 0 {
		return v
	}
	return def
}
