package smtpserver_test

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"log/slog"
	"net"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/postamt/postamt/internal/certs"
	"github.com/postamt/postamt/internal/config"
	"github.com/postamt/postamt/internal/policy"
	"github.com/postamt/postamt/internal/queue"
	"github.com/postamt/postamt/internal/router"
	"github.com/postamt/postamt/internal/smtpserver"
	"github.com/postamt/postamt/internal/spool"
	"github.com/postamt/postamt/internal/transport"
	"github.com/postamt/postamt/internal/transport/transporttest"
)

// testEnv is a live server on 127.0.0.1:0 with a real queue delivering into a Recorder.
type testEnv struct {
	t    *testing.T
	addr string
	q    *queue.Queue
	rec  *transporttest.Recorder
	srv  *smtpserver.Server
	logs *syncBuffer
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

type envOpts struct {
	limits smtpserver.Limits
	noTLS  bool
	fs     spool.FS
	policy *policy.Chain
	// AUTH (see auth_test.go)
	auth          smtpserver.Authenticator
	authPlaintext bool
	requireAuth   bool
}

func newEnv(t *testing.T, o envOpts) *testEnv {
	t.Helper()
	dir := t.TempDir()
	logs := &syncBuffer{}
	log := slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	rec := &transporttest.Recorder{}
	q, err := queue.Open(queue.Options{Dir: dir + "/queue", Transports: []transport.Transport{rec}, Logger: log, FS: o.fs,
		ScanInterval: 50 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	q.Start()
	var tlsConf *tls.Config
	if !o.noTLS {
		tlsConf, err = certs.ServerConfig("", "", dir+"/tls", "mx.example.test")
		if err != nil {
			t.Fatal(err)
		}
	}
	r := router.New(config.Local{
		Domains:       []string{"example.test"},
		Mailboxes:     []string{"alice@example.test", "bob@example.test", "jörg@example.test"},
		PlusSeparator: "+", Transport: "maildir",
		Aliases: map[string][]string{"both@example.test": {"alice@example.test", "bob@example.test"}},
	}, config.Outbound{})
	if o.limits.MaxMessageSize == 0 {
		o.limits.MaxMessageSize = 1 << 20
	}
	srv := smtpserver.New(smtpserver.Options{Hostname: "mx.example.test", Limits: o.limits, TLS: tlsConf,
		Router: r, Intake: q, Logger: log, Policy: o.policy,
		Auth: o.auth, AuthPlaintext: o.authPlaintext, RequireAuth: o.requireAuth})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(ln)
	e := &testEnv{t: t, addr: ln.Addr().String(), q: q, rec: rec, srv: srv, logs: logs}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		srv.Shutdown(ctx)
		q.Close(ctx)
		if t.Failed() {
			t.Logf("server log:\n%s", logs.String())
		}
	})
	return e
}

// waitDeliveries waits until n deliveries have arrived.
func (e *testEnv) waitDeliveries(n int) []transporttest.Delivery {
	e.t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		if d := e.rec.Deliveries(); len(d) >= n {
			return d
		}
		time.Sleep(5 * time.Millisecond)
	}
	e.t.Fatalf("want %d deliveries, have %d", n, len(e.rec.Deliveries()))
	return nil
}

type client struct {
	t       *testing.T
	c       net.Conn
	r       *bufio.Reader
	timeout time.Duration // per reply; 5s when zero
}

func (e *testEnv) dial() *client {
	e.t.Helper()
	c, err := net.DialTimeout("tcp", e.addr, 5*time.Second)
	if err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(func() { c.Close() })
	return &client{t: e.t, c: c, r: bufio.NewReader(c)}
}

// dialReady connects, checks the greeting and sends EHLO.
func (e *testEnv) dialReady() *client {
	c := e.dial()
	c.expect(220, "")
	c.cmd("EHLO client.example", 250, "")
	return c
}

func (c *client) raw(s string) {
	c.t.Helper()
	c.c.SetWriteDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.c.Write([]byte(s)); err != nil {
		c.t.Fatalf("write: %v", err)
	}
}

type reply struct {
	code  int
	enh   string
	lines []string
}

var enhRe = regexp.MustCompile(`^[245]\.\d{1,3}\.\d{1,3}$`)

// read reads one (possibly multi-line) reply.
func (c *client) read() (reply, error) {
	var r reply
	if c.timeout == 0 {
		c.timeout = 5 * time.Second
	}
	c.c.SetReadDeadline(time.Now().Add(c.timeout))
	for {
		line, err := c.r.ReadString('\n')
		if err != nil {
			return r, err
		}
		if !strings.HasSuffix(line, "\r\n") || len(line) < 6 {
			c.t.Fatalf("malformed reply line %q", line)
		}
		line = strings.TrimSuffix(line, "\r\n")
		code, _ := strconv.Atoi(line[:3])
		r.code = code
		text := line[4:]
		// RFC 2034: 2xx/4xx/5xx replies carry an enhanced code, except the greeting and EHLO.
		if f := strings.Fields(text); len(f) > 0 && enhRe.MatchString(f[0]) {
			r.enh = f[0]
			text = strings.TrimPrefix(text, f[0]+" ")
		}
		r.lines = append(r.lines, text)
		if line[3] == ' ' {
			return r, nil
		}
	}
}

// expect reads a reply and checks its code and enhanced code ("" accepts none, "*" any).
func (c *client) expect(code int, enh string) reply {
	c.t.Helper()
	r, err := c.read()
	if err != nil {
		c.t.Fatalf("want %d %s, read error %v", code, enh, err)
	}
	if r.code != code {
		c.t.Fatalf("want %d %s, got %d %s %q", code, enh, r.code, r.enh, r.lines)
	}
	if enh != "*" && r.enh != enh {
		c.t.Fatalf("want %d %s, got %d %q %q", code, enh, r.code, r.enh, r.lines)
	}
	if enh == "*" && code != 220 && code/100 != 3 && r.enh == "" {
		c.t.Fatalf("reply %d has no enhanced status code: %q", code, r.lines)
	}
	return r
}

func (c *client) cmd(line string, code int, enh string) reply {
	c.t.Helper()
	c.raw(line + "\r\n")
	return c.expect(code, enh)
}

// expectClosed checks that the server closed the connection.
func (c *client) expectClosed() {
	c.t.Helper()
	c.c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if line, err := c.r.ReadString('\n'); err == nil {
		c.t.Fatalf("connection still open, got %q", line)
	}
}

const testMsg = "From: <sender@remote.test>\r\nTo: <alice@example.test>\r\nSubject: test\r\n\r\nHello\r\n"

func newReader(c net.Conn) *bufio.Reader { return bufio.NewReader(c) }
