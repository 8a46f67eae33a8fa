package e2e

import (
	"bufio"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// TestTenThousandConnections opens 10,000 connections at once against the real binary, whose
// limit is 2,000: every connection must be greeted (220) or refused (421 4.7.0), none may hang,
// the server must survive, its memory must stay bounded, and a client on another address must
// still get in while one address floods (per-IP limit).
func TestTenThousandConnections(t *testing.T) {
	if testing.Short() {
		t.Skip("load test skipped in -short mode")
	}
	var lim syscall.Rlimit
	syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim)
	lim.Cur = lim.Max
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil || lim.Cur < 14000 {
		t.Fatalf("need 14000 file descriptors, have %d (%v)", lim.Cur, err)
	}
	dir := t.TempDir()
	addr := freePort(t)
	cfg := writeConfig(t, dir, addr, "")
	// Per-IP limit below the total, so that the flood from 127.0.0.1 leaves room for others.
	os.WriteFile(cfg, []byte(strings.Replace(mustRead(t, cfg), "max_connections_per_ip = 1000", "max_connections = 2000\nmax_connections_per_ip = 1500", 1)), 0o644)
	srv := start(t, dir, cfg, addr)
	defer srv.stop()
	rssBefore := rssKiB(t, srv.cmd.Process.Pid)

	const n = 10000
	var wg sync.WaitGroup
	var mu sync.Mutex
	counts := map[string]int{}
	conns := make(chan net.Conn, n)
	sem := make(chan struct{}, 512) // dials in flight, to stay within the listen backlog
	deadline := time.Now().Add(90 * time.Second)
	for i := 0; i < n; i++ {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			c, err := net.DialTimeout("tcp", addr, 30*time.Second)
			<-sem
			key := "dial error"
			if err == nil {
				c.SetReadDeadline(deadline)
				line, rerr := bufio.NewReader(c).ReadString('\n')
				switch {
				case rerr != nil:
					key = "no reply: " + rerr.Error()
				case strings.HasPrefix(line, "220 "):
					key = "220"
					conns <- c // hold the slot
				case strings.HasPrefix(line, "421 4.7.0 "):
					key = "421"
					c.Close()
				default:
					key = "other: " + line
				}
			} else {
				key += ": " + err.Error()
			}
			mu.Lock()
			counts[key]++
			mu.Unlock()
		}()
	}
	wg.Wait()
	// Another client address still gets in although 127.0.0.1 holds its per-IP maximum.
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP("127.0.0.2")}, Timeout: 10 * time.Second}
	other, err := d.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	other.SetReadDeadline(time.Now().Add(10 * time.Second))
	line, _ := bufio.NewReader(other).ReadString('\n')
	other.Close()
	rssHeld := rssKiB(t, srv.cmd.Process.Pid)
	close(conns)
	for c := range conns {
		c.Close()
	}
	t.Logf("replies: %v; RSS %d KiB before, %d KiB with %d sessions open", counts, rssBefore, rssHeld, counts["220"])
	if counts["220"]+counts["421"] != n {
		t.Fatalf("connections neither greeted nor refused: %v", counts)
	}
	if counts["220"] != 1500 {
		t.Errorf("greeted %d, want exactly the per-IP limit 1500", counts["220"])
	}
	if !strings.HasPrefix(line, "220 ") {
		t.Errorf("client on another address got %q while 127.0.0.1 was flooding", line)
	}
	if rssHeld > rssBefore+1500*64 {
		t.Errorf("memory grew by %d KiB for 1500 sessions: over 64 KiB each", rssHeld-rssBefore)
	}
	// Still serving after the storm.
	s, err := dialSender(addr)
	if err != nil {
		t.Fatalf("server not answering after the flood: %v\n%s", err, srv.logs.String())
	}
	s.close()
}

func mustRead(t *testing.T, p string) string {
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func rssKiB(t *testing.T, pid int) int {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/status")
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, "VmRSS:"); ok {
			n, _ := strconv.Atoi(strings.Fields(v)[0])
			return n
		}
	}
	return 0
}
