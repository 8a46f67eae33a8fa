package quarantine

import (
	"context"
	"errors"
	"io"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/postamt/postamt/internal/mail"
	"github.com/postamt/postamt/internal/spool"
)

// fakeQueue is the delivery queue a release goes into: it records what it was given.
type fakeQueue struct {
	sp   *spool.Spool
	n    int
	envs []mail.Envelope
	body []string
	fail error
}

func (q *fakeQueue) Create() (*spool.Writer, error) {
	q.n++
	return q.sp.Create("NEW" + string(rune('A'+q.n)))
}

func (q *fakeQueue) Accept(ctx context.Context, env *mail.Envelope, w *spool.Writer) error {
	if q.fail != nil {
		w.Abort()
		return q.fail
	}
	r, _ := w.Reader()
	b, _ := io.ReadAll(r)
	r.Close()
	env.ID = w.ID()
	q.envs = append(q.envs, *env)
	q.body = append(q.body, string(b))
	w.Abort()
	return nil
}

func setup(t *testing.T) (*Store, *spool.Spool) {
	t.Helper()
	dir := t.TempDir()
	st, err := Open(filepath.Join(dir, "q", "quarantine.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	sp, err := spool.New(filepath.Join(dir, "spool"), nil)
	if err != nil {
		t.Fatal(err)
	}
	return st, sp
}

// put quarantines one message whose body is big enough (when large) to be spilled to a file,
// with a prefix header added by a check, as smtpserver does.
func put(t *testing.T, st *Store, sp *spool.Spool, id, reason string, large bool) string {
	t.Helper()
	w, err := sp.Create(id)
	if err != nil {
		t.Fatal(err)
	}
	body := "Received: by mx\r\nSubject: " + id + "\r\n\r\n" + "hello\r\n"
	if large {
		body += strings.Repeat("0123456789\r\n", 100000)
	}
	w.WriteString(body)
	w.Prepend([]byte("X-Spam: Yes\r\n"))
	env := &mail.Envelope{From: "a@example.org", ReceivedAt: time.Now().Add(-10 * 24 * time.Hour), Rcpts: []mail.Recipient{{Addr: "b@example.test", Route: mail.Route{Transport: "maildir", NextHop: "b@example.test"}}},
		Quarantine: reason, Client: "192.0.2.1"}
	if err := st.Accept(context.Background(), env, w); err != nil {
		t.Fatal(err)
	}
	return "X-Spam: Yes\r\n" + body
}

func TestAcceptListShowDelete(t *testing.T) {
	st, sp := setup(t)
	small := put(t, st, sp, "ID1", "virus found: Eicar", false)
	big := put(t, st, sp, "ID2", "attachment \"a.exe\": blocked file type .exe", true)
	items, err := st.List(context.Background())
	if err != nil || len(items) != 2 {
		t.Fatalf("list: %v %v", items, err)
	}
	if items[0].ID != "ID1" || items[0].Reason != "virus found: Eicar" || items[0].From != "a@example.org" ||
		len(items[0].Rcpts) != 1 || items[0].Rcpts[0] != "b@example.test" || items[0].Size != int64(len(small)) {
		t.Errorf("item %+v", items[0])
	}
	for id, want := range map[string]string{"ID1": small, "ID2": big} {
		_, body, err := st.Get(context.Background(), id)
		if err != nil || string(body) != want {
			t.Errorf("%s: body of %d bytes (err %v), want %d bytes with the prefix first", id, len(body), err, len(want))
		}
	}
	// The spool no longer holds the bodies: the queue never sees them.
	for _, id := range []string{"ID1", "ID2"} {
		if _, err := sp.Open(id); err == nil {
			t.Errorf("spool file %s left behind", id)
		}
	}
	if err := st.Delete(context.Background(), "ID1"); err != nil {
		t.Fatal(err)
	}
	if err := st.Delete(context.Background(), "ID1"); !errors.Is(err, ErrNotFound) {
		t.Errorf("second delete: %v", err)
	}
	if _, _, err := st.Get(context.Background(), "ID1"); !errors.Is(err, ErrNotFound) {
		t.Errorf("get deleted: %v", err)
	}
}

// TestRelease: only messages marked for release go to the queue, with their envelope (routes
// kept, quarantine reason cleared) and body; they leave the quarantine. A queue failure keeps
// the message in quarantine, marked, for the next round.
func TestRelease(t *testing.T) {
	st, sp := setup(t)
	body := put(t, st, sp, "ID1", "spam", false)
	put(t, st, sp, "ID2", "spam", false)
	if err := st.RequestRelease(context.Background(), "nope"); !errors.Is(err, ErrNotFound) {
		t.Errorf("release unknown: %v", err)
	}
	if err := st.RequestRelease(context.Background(), "ID1"); err != nil {
		t.Fatal(err)
	}
	qsp, _ := spool.New(t.TempDir(), nil)
	q := &fakeQueue{sp: qsp, fail: errors.New("disk full")}
	if n, err := st.ReleasePending(context.Background(), q, nil); err == nil || n != 0 {
		t.Errorf("failing queue: n=%d err=%v", n, err)
	}
	if items, _ := st.List(context.Background()); len(items) != 2 || !items[0].Release {
		t.Fatalf("after a failed release: %+v", items)
	}
	q.fail = nil
	n, err := st.ReleasePending(context.Background(), q, nil)
	if err != nil || n != 1 {
		t.Fatalf("n=%d err=%v", n, err)
	}
	if len(q.envs) != 1 || q.body[0] != body {
		t.Fatalf("queue got %d messages; body %q", len(q.envs), q.body)
	}
	e := q.envs[0]
	if e.ReceivedAt.Before(time.Now().Add(-time.Minute)) {
		t.Errorf("released with the old ReceivedAt %v: the queue's max_age would count from it", e.ReceivedAt)
	}
	if e.Quarantine != "" || e.From != "a@example.org" || e.Rcpts[0].Route.Transport != "maildir" || e.Client != "192.0.2.1" || e.ID == "ID1" {
		t.Errorf("released envelope %+v", e)
	}
	items, _ := st.List(context.Background())
	if len(items) != 1 || items[0].ID != "ID2" {
		t.Errorf("left in quarantine: %+v", items)
	}
}

// TestRunReleasesStops: the loop ends with its context.
func TestRunReleasesStops(t *testing.T) {
	st, _ := setup(t)
	qsp, _ := spool.New(t.TempDir(), nil)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { st.RunReleases(ctx, &fakeQueue{sp: qsp}, 10*time.Millisecond, nil); close(done) }()
	time.Sleep(30 * time.Millisecond)
	cancel()
	select {
	case <-done:
	case <-time.After(2 * time.Second):
		t.Fatal("RunReleases did not stop")
	}
}
