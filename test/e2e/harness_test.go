// Package e2e runs the real postamt binary: crash (kill -9) and restart tests, and whole-process
// behaviour that in-process tests cannot show.
package e2e

import (
	"bufio"
	"fmt"
	"net"
	"net/textproto"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

var binary string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "postamt-e2e")
	if err != nil {
		panic(err)
	}
	binary = os.Getenv("POSTAMT_BIN")
	if binary == "" {
		binary = filepath.Join(dir, "postamt")
		out, err := exec.Command("go", "build", "-o", binary, "../../cmd/postamt").CombinedOutput()
		if err != nil {
			fmt.Fprintf(os.Stderr, "build: %v\n%s", err, out)
			os.Exit(1)
		}
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// server is one run of the binary.
type server struct {
	t    *testing.T
	cmd  *exec.Cmd
	logs *lockedBuf
	addr string
	dir  string
}

type lockedBuf struct {
	mu sync.Mutex
	b  strings.Builder
}

func (l *lockedBuf) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}
func (l *lockedBuf) String() string { l.mu.Lock(); defer l.mu.Unlock(); return l.b.String() }

func freePort(t *testing.T) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// writeConfig writes a config for the domain crash.test with mailbox u@crash.test.
func writeConfig(t *testing.T, dir, addr, extra string) string {
	cfg := fmt.Sprintf(`hostname = "mx.crash.test"
data_dir = %q
[log]
level = "warn"
[smtp]
listen = [%q]
max_connections_per_ip = 1000
[local]
domains = ["crash.test"]
mailboxes = ["u@crash.test"]
%s
`, filepath.Join(dir, "data"), addr, extra)
	p := filepath.Join(dir, "postamt.toml")
	if err := os.WriteFile(p, []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

func start(t *testing.T, dir, cfg, addr string) *server {
	t.Helper()
	s := &server{t: t, logs: &lockedBuf{}, addr: addr, dir: dir}
	s.cmd = exec.Command(binary, "serve", "--config", cfg)
	s.cmd.Stderr = s.logs
	s.cmd.Stdout = s.logs
	if err := s.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(20 * time.Second)
	for time.Now().Before(deadline) {
		if c, err := net.Dial("tcp", addr); err == nil {
			c.Close()
			return s
		}
		time.Sleep(10 * time.Millisecond)
	}
	s.cmd.Process.Kill()
	t.Fatalf("server did not start:\n%s", s.logs.String())
	return nil
}

func (s *server) kill() {
	s.cmd.Process.Kill() // SIGKILL: no chance to clean up
	s.cmd.Wait()
}

func (s *server) stop() {
	s.cmd.Process.Signal(os.Interrupt)
	done := make(chan struct{})
	go func() { s.cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(20 * time.Second):
		s.cmd.Process.Kill()
		<-done
	}
}

// sender keeps one SMTP connection and sends messages with PIPELINING.
type sender struct {
	conn net.Conn
	tp   *textproto.Conn
}

func dialSender(addr string) (*sender, error) {
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		return nil, err
	}
	s := &sender{conn: c, tp: textproto.NewConn(c)}
	c.SetDeadline(time.Now().Add(30 * time.Second))
	if _, _, err := s.tp.ReadResponse(220); err != nil {
		c.Close()
		return nil, err
	}
	if err := s.tp.PrintfLine("EHLO sender.test"); err != nil {
		c.Close()
		return nil, err
	}
	if _, _, err := s.tp.ReadResponse(250); err != nil {
		c.Close()
		return nil, err
	}
	return s, nil
}

// send sends one message carrying token and returns the final reply code (0 on a broken
// connection: the message was not acknowledged).
func (s *sender) send(rcpt, token string, bodyLines int) (int, error) {
	s.conn.SetDeadline(time.Now().Add(30 * time.Second))
	w := bufio.NewWriter(s.conn)
	fmt.Fprintf(w, "MAIL FROM:<load@sender.test>\r\nRCPT TO:<%s>\r\nDATA\r\n", rcpt)
	if err := w.Flush(); err != nil {
		return 0, err
	}
	for _, want := range []int{250, 250, 354} {
		code, msg, err := s.tp.ReadResponse(want)
		if err != nil {
			return code, fmt.Errorf("%d %s: %w", code, msg, err)
		}
	}
	fmt.Fprintf(w, "From: <load@sender.test>\r\nTo: <%s>\r\nSubject: token %s\r\nX-Token: %s\r\n\r\n", rcpt, token, token)
	for i := 0; i < bodyLines; i++ {
		fmt.Fprintf(w, "%04d The quick brown fox jumps over the lazy dog, again and again and again.\r\n", i)
	}
	w.WriteString(".\r\n")
	if err := w.Flush(); err != nil {
		return 0, err
	}
	code, _, err := s.tp.ReadResponse(250)
	return code, err
}

func (s *sender) close() { s.conn.Close() }

// tokensInMaildir reads every delivered message and counts the X-Token values.
func tokensInMaildir(t *testing.T, dir string) map[string]int {
	t.Helper()
	seen := map[string]int{}
	files, _ := filepath.Glob(filepath.Join(dir, "new", "*"))
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		for _, line := range strings.Split(string(b), "\n") {
			if tok, ok := strings.CutPrefix(line, "X-Token: "); ok {
				seen[strings.TrimSpace(tok)]++
				break
			}
			if line == "" {
				break
			}
		}
	}
	return seen
}
