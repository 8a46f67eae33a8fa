package sandbox

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func msg(from, to, subject, body string) []byte {
	return []byte("From: " + from + "\r\nTo: " + to + "\r\nSubject: " + subject +
		"\r\nMessage-ID: <x@y>\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n" + body + "\r\n")
}

const withAttachment = "From: Alice <alice@example.test>\r\nTo: bob@example.test\r\nSubject: report\r\n" +
	"MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"b1\"\r\n\r\n" +
	"--b1\r\nContent-Type: multipart/alternative; boundary=\"b2\"\r\n\r\n" +
	"--b2\r\nContent-Type: text/plain; charset=iso-8859-1\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\nGr=FC=DFe quarterly\r\n" +
	"--b2\r\nContent-Type: text/html; charset=utf-8\r\n\r\n<p>Grüße <b>quarterly</b><img src=\"cid:logo@x\"></p>\r\n--b2--\r\n" +
	"--b1\r\nContent-Type: image/png\r\nContent-ID: <logo@x>\r\nContent-Transfer-Encoding: base64\r\n\r\niVBORw0K\r\nGgo=\r\n" +
	"--b1\r\nContent-Type: application/pdf; name=\"=?utf-8?q?r=C3=A9sum=C3=A9.pdf?=\"\r\nContent-Disposition: attachment\r\n" +
	"Content-Transfer-Encoding: base64\r\n\r\nJVBERi0xLjQK\r\n--b1--\r\n"

func openStore(t *testing.T, opts Options) *Store {
	t.Helper()
	s, err := Open(opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func save(t *testing.T, s *Store, id string, at time.Time, raw []byte, to ...string) {
	t.Helper()
	if _, err := s.Save(context.Background(), Envelope{ID: id, From: "env@example.test", To: to, ReceivedAt: at}, raw); err != nil {
		t.Fatal(err)
	}
}

func TestParseMIME(t *testing.T) {
	p := Parse([]byte(withAttachment))
	if p.Subject != "report" || p.From != "Alice <alice@example.test>" {
		t.Errorf("subject/from = %q/%q", p.Subject, p.From)
	}
	if strings.TrimSpace(p.Text) != "Grüße quarterly" {
		t.Errorf("text = %q (charset or QP not decoded)", p.Text)
	}
	if !strings.Contains(p.HTML, "<b>quarterly</b>") {
		t.Errorf("html = %q", p.HTML)
	}
	if len(p.Attachments) != 2 {
		t.Fatalf("attachments = %+v", p.Attachments)
	}
	img, data, ok := p.PartByCID("logo@x")
	if !ok || !img.Inline || string(data) != "\x89PNG\r\n\x1a\n" {
		t.Errorf("inline image = %+v %q", img, data)
	}
	pdf := p.Attachments[1]
	if pdf.Filename != "résumé.pdf" || pdf.Inline || pdf.ContentType != "application/pdf" {
		t.Errorf("pdf = %+v", pdf)
	}
	if _, d, ok := p.PartData(pdf.Index); !ok || string(d) != "%PDF-1.4\n" {
		t.Errorf("pdf data = %q", d)
	}
	if len(p.Problems) != 0 {
		t.Errorf("problems = %v", p.Problems)
	}
}

func TestParseBroken(t *testing.T) {
	for _, raw := range []string{
		"", "no header at all", "Subject: x\r\nContent-Type: multipart/mixed\r\n\r\nbody",
		"Subject: x\r\nContent-Type: multipart/mixed; boundary=z\r\n\r\n--z\r\nContent-Type: text/plain; charset=klingon\r\n\r\nqapla\r\n",
	} {
		p := Parse([]byte(raw))
		if p == nil {
			t.Fatalf("Parse(%q) = nil", raw)
		}
	}
	p := Parse([]byte("Subject: x\r\nContent-Type: text/plain; charset=klingon\r\n\r\nqapla\r\n"))
	if len(p.Problems) == 0 || !strings.Contains(p.Text, "qapla") {
		t.Errorf("unknown charset: problems %v text %q", p.Problems, p.Text)
	}
}

func TestQueryParse(t *testing.T) {
	now := time.Date(2026, 3, 10, 12, 0, 0, 0, time.UTC)
	for _, tc := range []struct{ in, want, err string }{
		{in: "from:alice", want: "from:alice"},
		{in: `subject:"weekly report" -tag:Seen  invoice`, want: `subject:"weekly report" -tag:Seen invoice`},
		{in: "has:attachments is:UNREAD", want: "has:attachment is:unread"},
		{in: `"from:alice"`, want: `"from:alice"`},
		{in: "https://example.test/x", want: `"https://example.test/x"`},
		{in: "after:2026-01-02 before:2h date:2026-03-01", want: "after:2026-01-02 before:2h date:2026-03-01"},
		{in: "form:alice", err: "unknown search field"},
		{in: "has:pdf", err: "has:attachment"},
		{in: "is:flagged", err: "is:read"},
		{in: "after:yesterday", err: "not a date"},
		{in: "date:2h", err: "YYYY-MM-DD"},
		{in: `subject:"open`, err: "unterminated"},
		{in: "from:", err: "needs a value"},
	} {
		q, err := ParseQuery(tc.in, now)
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("ParseQuery(%q) err = %v, want %q", tc.in, err, tc.err)
			}
			continue
		}
		if err != nil {
			t.Errorf("ParseQuery(%q): %v", tc.in, err)
			continue
		}
		if got := q.String(); got != tc.want {
			t.Errorf("ParseQuery(%q).String() = %q, want %q", tc.in, got, tc.want)
		}
	}
}

func TestSearch(t *testing.T) {
	for _, mode := range []string{"memory", "disk"} {
		t.Run(mode, func(t *testing.T) {
			opts := Options{}
			if mode == "disk" {
				opts.Path = filepath.Join(t.TempDir(), "sandbox.db")
			}
			s := openStore(t, opts)
			ctx := context.Background()
			day := time.Date(2026, 3, 1, 9, 0, 0, 0, time.UTC)
			save(t, s, "m1", day, msg("Alice <alice@example.test>", "bob@example.test", "Invoice 42", "please pay the invoice"), "bob@example.test")
			save(t, s, "m2", day.Add(24*time.Hour), msg("carol@example.test", "Dave <dave@other.test>", "Weekly report", "numbers are up"), "dave@other.test")
			save(t, s, "m3", day.Add(48*time.Hour), []byte(withAttachment), "bob@example.test")
			if err := s.SetRead(ctx, true, "m2"); err != nil {
				t.Fatal(err)
			}
			if err := s.SetTags(ctx, "m3", []string{"CI", "ci", "release-1.0"}); err != nil {
				t.Fatal(err)
			}
			now := day.Add(72 * time.Hour)
			for _, tc := range []struct{ q, want string }{
				{"", "m3 m2 m1"},
				{"from:alice", "m3 m1"},
				{"from:alice@example.test", "m3 m1"},
				{"from:Alice -has:attachment", "m1"},
				{"to:dave", "m2"},
				{"to:other.test", "m2"},
				{"to:bob@example.test", "m3 m1"},
				{"subject:weekly", "m2"},
				{"subject:pay", ""},
				{"pay", "m1"},
				{"invo", "m1"},      // prefix
				{"gruß", "m3"},      // diacritics folded (ü), charset decoded
				{"quarterly", "m3"}, // text part body
				{`"weekly report"`, "m2"},
				{"has:attachment", "m3"},
				{"is:unread", "m3 m1"},
				{"is:read", "m2"},
				{"tag:ci", "m3"},
				{"tag:CI", "m3"},
				{"tag:release-1.0", "m3"},
				{"-tag:ci", "m2 m1"},
				{"tag:c", ""},
				{"after:2026-03-02", "m3 m2"},
				{"before:2026-03-02", "m1"},
				{"date:2026-03-02", "m2"},
				{"after:30h", "m3"},
				{"-report", "m1"},
				{"@@", "m3 m2 m1"}, // nothing to search for: no condition
			} {
				q, err := ParseQuery(tc.q, now)
				if err != nil {
					t.Fatalf("%q: %v", tc.q, err)
				}
				pg, err := s.List(ctx, q, 10, 0)
				if err != nil {
					t.Fatalf("%q: %v", tc.q, err)
				}
				var ids []string
				for _, m := range pg.Messages {
					ids = append(ids, m.ID)
				}
				if got := strings.Join(ids, " "); got != tc.want || pg.Total != len(ids) {
					t.Errorf("search %q = %q (total %d), want %q", tc.q, got, pg.Total, tc.want)
				}
			}
			pg, _ := s.List(ctx, nil, 2, 1)
			if len(pg.Messages) != 2 || pg.Messages[0].ID != "m2" || pg.Total != 3 || pg.Unread != 2 {
				t.Errorf("page 2 = %+v", pg)
			}
			if tags, _ := s.Tags(ctx); strings.Join(tags, ",") != "ci,release-1.0" {
				t.Errorf("tags = %v", tags)
			}
		})
	}
}

func TestSaveTwiceKeepsOne(t *testing.T) {
	s := openStore(t, Options{})
	now := time.Now()
	save(t, s, "q1", now, msg("a@x.test", "b@x.test", "one", "x"))
	save(t, s, "q1", now, msg("a@x.test", "b@x.test", "one", "x"))
	if pg, _ := s.List(context.Background(), nil, 10, 0); pg.Total != 1 || len(pg.Messages) != 1 {
		t.Errorf("total = %d, want 1", pg.Total)
	}
}

func TestGetDeleteEvents(t *testing.T) {
	s := openStore(t, Options{})
	ctx := context.Background()
	ev, stop := s.Subscribe()
	defer stop()
	save(t, s, "a", time.Now(), []byte(withAttachment), "bob@example.test")
	save(t, s, "b", time.Now(), msg("a@x.test", "b@x.test", "two", "x"))
	e := <-ev
	if e.Type != "new" || e.Message.ID != "a" || e.Message.Attachments != 2 || e.Message.Subject != "report" {
		t.Errorf("first event = %+v", e)
	}
	<-ev
	sum, p, err := s.Get(ctx, "a")
	if err != nil || sum.EnvelopeTo[0] != "bob@example.test" || len(p.Attachments) != 2 {
		t.Fatalf("Get = %+v %v", sum, err)
	}
	raw, _ := s.Raw(ctx, "a")
	if string(raw) != withAttachment {
		t.Error("raw differs from what was saved")
	}
	if err := s.SetRead(ctx, true, "a"); err != nil {
		t.Fatal(err)
	}
	if e := <-ev; e.Type != "update" || !e.Message.Read {
		t.Errorf("update event = %+v", e)
	}
	if err := s.Delete(ctx, "a"); err != nil {
		t.Fatal(err)
	}
	if e := <-ev; e.Type != "delete" || e.IDs[0] != "a" {
		t.Errorf("delete event = %+v", e)
	}
	if _, _, err := s.Get(ctx, "a"); !errors.Is(err, ErrNotFound) {
		t.Errorf("Get after delete: %v", err)
	}
	if err := s.Delete(ctx, "a"); !errors.Is(err, ErrNotFound) {
		t.Errorf("second delete: %v", err)
	}
	// The deleted message is gone from the index too.
	q, _ := ParseQuery("quarterly", time.Now())
	if pg, _ := s.List(ctx, q, 10, 0); pg.Total != 0 {
		t.Errorf("deleted message still found by search")
	}
	if n, err := s.DeleteMatching(ctx, nil); n != 1 || err != nil {
		t.Errorf("delete all = %d, %v", n, err)
	}
	if e := <-ev; e.Type != "clear" {
		t.Errorf("clear event = %+v", e)
	}
	st, _ := s.Stats(ctx)
	if st.Messages != 0 || st.Bytes != 0 {
		t.Errorf("stats after delete all = %+v", st)
	}
}

func TestRetention(t *testing.T) {
	now := time.Date(2026, 3, 1, 0, 0, 0, 0, time.UTC)
	clock := func() time.Time { return now }
	s := openStore(t, Options{MaxMessages: 3, Now: clock})
	for i := range 5 {
		save(t, s, fmt.Sprintf("m%d", i), now.Add(time.Duration(i)*time.Second), msg("a@x.test", "b@x.test", fmt.Sprint("n", i), "x"))
	}
	pg, _ := s.List(context.Background(), nil, 10, 0)
	var ids []string
	for _, m := range pg.Messages {
		ids = append(ids, m.ID)
	}
	if strings.Join(ids, " ") != "m4 m3 m2" || pg.Total != 3 {
		t.Errorf("after max_messages=3: %v (total %d)", ids, pg.Total)
	}

	dir := t.TempDir()
	a := openStore(t, Options{Path: filepath.Join(dir, "s.db"), Now: clock})
	save(t, a, "old", now.Add(-48*time.Hour), msg("a@x.test", "b@x.test", "old", "x"))
	save(t, a, "new", now.Add(-time.Hour), msg("a@x.test", "b@x.test", "new", "x"))
	a.Close()
	// Reopening with max_age prunes at start.
	b := openStore(t, Options{Path: filepath.Join(dir, "s.db"), Now: clock, MaxAge: 24 * time.Hour})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	for ctx.Err() == nil {
		if pg, _ := b.List(ctx, nil, 10, 0); pg != nil && len(pg.Messages) == 1 && pg.Messages[0].ID == "new" {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Error("max_age did not prune the old message")
}

func TestWait(t *testing.T) {
	s := openStore(t, Options{})
	ctx := context.Background()
	save(t, s, "early", time.Now(), msg("a@x.test", "b@x.test", "already here", "x"))
	q, _ := ParseQuery("subject:already", time.Now())
	if m, err := s.Wait(ctx, q, time.Time{}); err != nil || m.ID != "early" {
		t.Fatalf("Wait for existing = %v %v", m, err)
	}
	q, _ = ParseQuery("subject:later to:carol", time.Now())
	got := make(chan *Summary, 1)
	go func() {
		m, err := s.Wait(ctx, q, time.Time{})
		if err != nil {
			t.Error(err)
		}
		got <- m
	}()
	time.Sleep(50 * time.Millisecond)
	save(t, s, "other", time.Now(), msg("a@x.test", "b@x.test", "later", "x"))
	save(t, s, "match", time.Now(), msg("a@x.test", "carol@x.test", "later", "x"))
	select {
	case m := <-got:
		if m == nil || m.ID != "match" {
			t.Errorf("Wait = %+v, want match", m)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Wait did not return")
	}
	tctx, cancel := context.WithTimeout(ctx, 50*time.Millisecond)
	defer cancel()
	q, _ = ParseQuery("subject:never", time.Now())
	if _, err := s.Wait(tctx, q, time.Time{}); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Wait timeout err = %v", err)
	}
	// since excludes what came before.
	q, _ = ParseQuery("subject:already", time.Now())
	tctx2, cancel2 := context.WithTimeout(ctx, 50*time.Millisecond)
	defer cancel2()
	if m, err := s.Wait(tctx2, q, time.Now().Add(time.Second)); err == nil {
		t.Errorf("Wait with since in the future found %v", m.ID)
	}
}

func TestTagsValidation(t *testing.T) {
	s := openStore(t, Options{})
	save(t, s, "a", time.Now(), msg("a@x.test", "b@x.test", "x", "x"))
	if err := s.SetTags(context.Background(), "a", []string{"has space"}); err == nil {
		t.Error("tag with a space accepted")
	}
	if err := s.SetTags(context.Background(), "nope", []string{"x"}); !errors.Is(err, ErrNotFound) {
		t.Errorf("tags on unknown message: %v", err)
	}
}
