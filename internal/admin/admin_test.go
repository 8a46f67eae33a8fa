package admin

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/postamt/postamt/internal/mail"
	"github.com/postamt/postamt/internal/queue"
	"github.com/postamt/postamt/internal/transport"
	"github.com/postamt/postamt/internal/transport/transporttest"
)

type env struct {
	dir     string
	q       *queue.Queue
	srv     *Server
	c       *Client
	rec     *transporttest.Recorder
	mu      sync.Mutex
	bounced []*queue.Bounce
}

// shortDir keeps the socket path under the unix socket limit whatever TMPDIR is.
func shortDir(t *testing.T) string {
	d, err := os.MkdirTemp("", "pa")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(d) })
	return d
}

func start(t *testing.T, listen string) *env {
	e := &env{dir: shortDir(t), rec: &transporttest.Recorder{Err: errors.New("connection refused")}}
	q, err := queue.Open(queue.Options{Dir: filepath.Join(e.dir, "queue"), Transports: []transport.Transport{e.rec},
		ScanInterval: time.Hour, Bounce: func(_ context.Context, b *queue.Bounce) error {
			e.mu.Lock()
			defer e.mu.Unlock()
			e.bounced = append(e.bounced, b)
			return nil
		}})
	if err != nil {
		t.Fatal(err)
	}
	q.Start()
	e.q = q
	if e.srv, err = Start(Options{DataDir: e.dir, Listen: listen, Queue: q}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		e.srv.Close(context.Background())
		q.Close(context.Background())
	})
	if e.c, err = NewClient(e.dir); err != nil {
		t.Fatal(err)
	}
	return e
}

func (e *env) accept(t *testing.T, from string, rcpts ...string) string {
	t.Helper()
	w, err := e.q.Create()
	if err != nil {
		t.Fatal(err)
	}
	w.WriteString("Subject: x\r\n\r\ny\r\n")
	en := &mail.Envelope{From: from}
	for _, r := range rcpts {
		en.Rcpts = append(en.Rcpts, mail.Recipient{Addr: r, Orig: r, Route: mail.Route{Transport: "maildir", NextHop: "x"}})
	}
	if err := e.q.Accept(context.Background(), en, w); err != nil {
		t.Fatal(err)
	}
	// Wait for the first (failing) attempt, so the message is deferred.
	for end := time.Now().Add(10 * time.Second); time.Now().Before(end); time.Sleep(2 * time.Millisecond) {
		if m, err := e.q.Show(context.Background(), en.ID); err == nil && m.Recipients[0].Attempts > 0 && !m.Recipients[0].InFlight {
			return en.ID
		}
	}
	t.Fatal("no first attempt")
	return ""
}

func status(err error) int {
	var ae *APIError
	if errors.As(err, &ae) {
		return ae.Status
	}
	return 0
}

func TestFilesArePrivateAndTokenStable(t *testing.T) {
	e := start(t, "")
	for _, name := range []string{SocketName, TokenName} {
		fi, err := os.Stat(filepath.Join(e.dir, name))
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode().Perm() != 0o600 {
			t.Fatalf("%s mode %#o, want 0600", name, fi.Mode().Perm())
		}
	}
	tok1, _ := ReadToken(filepath.Join(e.dir, TokenName))
	if len(tok1) != 64 {
		t.Fatalf("token %q", tok1)
	}
	tok2, err := LoadOrCreateToken(filepath.Join(e.dir, TokenName))
	if err != nil || tok2 != tok1 {
		t.Fatalf("token changed across starts: %q %q %v", tok1, tok2, err)
	}
	os.Chmod(filepath.Join(e.dir, TokenName), 0o644)
	if _, err := ReadToken(filepath.Join(e.dir, TokenName)); err == nil || !strings.Contains(err.Error(), "chmod 600") {
		t.Fatalf("world-readable token accepted: %v", err)
	}
}

func TestSocketLifecycle(t *testing.T) {
	e := start(t, "")
	// A second server on the same data_dir must not steal the live socket.
	if _, err := Start(Options{DataDir: e.dir, Queue: e.q}); err == nil || !strings.Contains(err.Error(), "in use") {
		t.Fatalf("second start: %v", err)
	}
	if err := e.srv.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(e.dir, SocketName)); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("socket left after close: %v", err)
	}
	if _, _, err := e.c.List(context.Background(), queue.Filter{}, 0); !errors.Is(err, ErrNotRunning) {
		t.Fatalf("client with the server gone: %v", err)
	}
	// A crash leaves the socket file behind: the next start replaces it.
	ln, err := net.Listen("unix", filepath.Join(e.dir, SocketName))
	if err != nil {
		t.Fatal(err)
	}
	ln.(*net.UnixListener).SetUnlinkOnClose(false)
	ln.Close()
	if _, _, err := e.c.List(context.Background(), queue.Filter{}, 0); !errors.Is(err, ErrNotRunning) {
		t.Fatalf("client on a stale socket: %v", err)
	}
	srv, err := Start(Options{DataDir: e.dir, Queue: e.q})
	if err != nil {
		t.Fatalf("start over a stale socket: %v", err)
	}
	e.srv = srv
	if _, _, err := e.c.List(context.Background(), queue.Filter{}, 0); err != nil {
		t.Fatal(err)
	}
}

func TestAuth(t *testing.T) {
	e := start(t, "127.0.0.1:0")
	url := "http://" + e.srv.TCPAddr().String() + "/v1/queue"
	for _, auth := range []string{"", "Bearer wrong", "Basic " + e.c.token} {
		req, _ := http.NewRequest("GET", url, nil)
		if auth != "" {
			req.Header.Set("Authorization", auth)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		var body ErrorResponse
		json.NewDecoder(resp.Body).Decode(&body)
		resp.Body.Close()
		if resp.StatusCode != 401 || !strings.Contains(body.Error, "bearer token") || resp.Header.Get("WWW-Authenticate") == "" {
			t.Fatalf("%q: %d %+v", auth, resp.StatusCode, body)
		}
	}
	req, _ := http.NewRequest("GET", url, nil)
	req.Header.Set("Authorization", "Bearer "+e.c.token)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || string(b) != "{\"entries\":[]}\n" {
		t.Fatalf("TCP with token: %d %s", resp.StatusCode, b)
	}
	// Unknown endpoints and methods answer in JSON too.
	for _, c := range []struct{ method, path string }{{"GET", "/v2/x"}, {"PUT", "/v1/queue"}} {
		req, _ := http.NewRequest(c.method, "http://"+e.srv.TCPAddr().String()+c.path, nil)
		req.Header.Set("Authorization", "Bearer "+e.c.token)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		var body ErrorResponse
		err = json.NewDecoder(resp.Body).Decode(&body)
		resp.Body.Close()
		if err != nil || body.Error == "" || resp.StatusCode < 400 {
			t.Fatalf("%s %s: %d %v %+v", c.method, c.path, resp.StatusCode, err, body)
		}
	}
}

func TestOperations(t *testing.T) {
	e := start(t, "")
	ctx := context.Background()
	a := e.accept(t, "alice@a.test", "u1@x.test", "u2@y.test")
	b := e.accept(t, "bob@b.test", "u3@x.test")

	all, _, err := e.c.List(ctx, queue.Filter{}, 0)
	if err != nil || len(all) != 3 {
		t.Fatalf("list: %v %+v", err, all)
	}
	if es, more, err := e.c.List(ctx, queue.Filter{}, 2); err != nil || len(es) != 2 || !more || es[0].ID != a {
		t.Fatalf("limit 2: %v %v %+v", more, err, es)
	}
	if es, more, err := e.c.List(ctx, queue.Filter{}, 3); err != nil || len(es) != 3 || more {
		t.Fatalf("limit 3: %v %v %+v", more, err, es)
	}
	if es, _, _ := e.c.List(ctx, queue.Filter{ID: b}, 0); len(es) != 1 || es[0].Rcpt != "u3@x.test" {
		t.Fatalf("id filter: %+v", es)
	}
	if es, _, _ := e.c.List(ctx, queue.Filter{Domain: "x.test"}, 0); len(es) != 2 {
		t.Fatalf("domain filter: %+v", es)
	}
	if es, _, _ := e.c.List(ctx, queue.Filter{From: "bob@b.test"}, 0); len(es) != 1 || es[0].ID != b {
		t.Fatalf("from filter: %+v", es)
	}
	if _, _, err := e.c.List(ctx, queue.Filter{State: "bogus"}, 0); status(err) != 400 {
		t.Fatalf("bad state: %v", err)
	}

	m, err := e.c.Show(ctx, a)
	if err != nil || m.From != "alice@a.test" || len(m.Recipients) != 2 || m.Recipients[0].LastReply == "" {
		t.Fatalf("show: %v %+v", err, m)
	}
	if _, err := e.c.Show(ctx, "NOPE"); status(err) != 404 || !strings.Contains(err.Error(), "no such message") {
		t.Fatalf("show unknown: %v", err)
	}

	if err := e.c.Hold(ctx, a); err != nil {
		t.Fatal(err)
	}
	if m, _ := e.c.Show(ctx, a); !m.Held {
		t.Fatal("not held")
	}
	if _, err := e.c.Retry(ctx, a); status(err) != 409 {
		t.Fatalf("retry of a held message: %v", err)
	}
	attempts := e.rec.Attempts()
	if n, err := e.c.RetryAll(ctx); err != nil || n != 1 {
		t.Fatalf("retry all skips held: %d %v", n, err)
	}
	waitAttempts(t, e.rec, attempts+1)
	if err := e.c.Release(ctx, a); err != nil {
		t.Fatal(err)
	}
	if err := e.c.Release(ctx, a); status(err) != 409 {
		t.Fatalf("release twice: %v", err)
	}
	waitAttempts(t, e.rec, attempts+2)
	if n, err := e.c.Retry(ctx, b); err != nil || n != 1 {
		t.Fatalf("retry: %d %v", n, err)
	}

	if _, err := e.c.Bounce(ctx, a, " "); status(err) != 400 {
		t.Fatalf("bounce without reason: %v", err)
	}
	if n, err := e.c.Bounce(ctx, a, "sender asked us to"); err != nil || n != 2 {
		t.Fatalf("bounce: %d %v", n, err)
	}
	for end := time.Now().Add(10 * time.Second); time.Now().Before(end); time.Sleep(5 * time.Millisecond) {
		if _, err := e.c.Show(ctx, a); status(err) == 404 {
			break
		}
		e.q.RunDue(ctx)
	}
	e.mu.Lock()
	got := e.bounced
	e.mu.Unlock()
	if len(got) != 1 || got[0].Env.ID != a || !strings.Contains(got[0].Failed[0].LastError, "5.0.0") ||
		!strings.Contains(got[0].Failed[0].LastError, "sender asked us to") {
		t.Fatalf("DSN: %+v", got)
	}

	if err := e.c.Delete(ctx, b); err != nil {
		t.Fatal(err)
	}
	if err := e.c.Delete(ctx, b); status(err) != 404 {
		t.Fatalf("delete twice: %v", err)
	}
	if es, _, _ := e.c.List(ctx, queue.Filter{}, 0); len(es) != 0 {
		t.Fatalf("queue not empty: %+v", es)
	}
}

func waitAttempts(t *testing.T, r *transporttest.Recorder, n int) {
	t.Helper()
	for end := time.Now().Add(10 * time.Second); time.Now().Before(end); time.Sleep(2 * time.Millisecond) {
		if r.Attempts() >= n {
			return
		}
	}
	t.Fatalf("want %d attempts, have %d", n, r.Attempts())
}

// TestLongDataDir: a data_dir deeper than a unix socket address allows still gets its socket.
func TestLongDataDir(t *testing.T) {
	dir := filepath.Join(shortDir(t), strings.Repeat("d", 60), strings.Repeat("e", 60))
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	q, err := queue.Open(queue.Options{Dir: filepath.Join(dir, "queue")})
	if err != nil {
		t.Fatal(err)
	}
	defer q.Close(context.Background())
	srv, err := Start(Options{DataDir: dir, Queue: q})
	if err != nil {
		t.Fatal(err)
	}
	c, err := NewClient(dir)
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Ping(context.Background()); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(dir, SocketName)); err != nil {
		t.Fatalf("socket not at its real path: %v", err)
	}
	srv.Close(context.Background())
	if _, err := os.Stat(filepath.Join(dir, SocketName)); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("socket left: %v", err)
	}
	if err := c.Ping(context.Background()); !errors.Is(err, ErrNotRunning) {
		t.Fatalf("ping after close: %v", err)
	}
}
