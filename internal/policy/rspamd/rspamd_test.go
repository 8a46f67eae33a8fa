package rspamd

import (
	"context"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/postamt/postamt/internal/mail"
	"github.com/postamt/postamt/internal/policy"
)

type msg string

func (m msg) Size() int64                  { return int64(len(m)) }
func (m msg) Open() (io.ReadCloser, error) { return io.NopCloser(strings.NewReader(string(m))), nil }

func txn() *policy.Txn {
	return &policy.Txn{
		Conn: &policy.Conn{RemoteIP: netip.MustParseAddr("192.0.2.7"), Helo: "client.example", AuthUser: "alice"},
		ID:   "Q123", From: "a@example.org",
		Rcpts: []mail.Recipient{{Addr: "b@example.net"}, {Addr: "x@example.net", Orig: "c@example.net"}, {Addr: "y@example.net", Orig: "c@example.net"}},
	}
}

// TestVerdicts: every rspamd action maps to ours, the score is passed on, and the request
// carries the envelope in rspamd's headers and the message as the body.
func TestVerdicts(t *testing.T) {
	tests := []struct {
		action       string
		rejectAction policy.Action
		want         policy.Action
		code         int
		xspam        string
	}{
		{"reject", 0, policy.Reject, 550, ""},
		{"reject", policy.Tag, policy.Tag, 0, "X-Spam: Yes"},
		{"reject", policy.Quarantine, policy.Quarantine, 0, "X-Spam: Yes"},
		{"soft reject", 0, policy.Tempfail, 451, ""},
		{"greylist", 0, policy.Tempfail, 451, ""},
		{"add header", 0, policy.Tag, 0, "X-Spam: Yes"},
		{"rewrite subject", 0, policy.Tag, 0, "X-Spam: Yes"},
		{"no action", 0, policy.Continue, 0, "X-Spam: No"},
	}
	for _, tt := range tests {
		t.Run(tt.action, func(t *testing.T) {
			var got *http.Request
			var body string
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				got = r
				b, _ := io.ReadAll(r.Body)
				body = string(b)
				io.WriteString(w, `{"is_skipped":false,"score":9.5,"required_score":15,"action":"`+tt.action+
					`","symbols":{"BAYES_SPAM":{"name":"BAYES_SPAM","score":5.1},"EVIL\r\nX: y":{"name":"EVIL\r\nX: y","score":9}}}`)
			}))
			defer srv.Close()
			c, err := New(Options{URL: srv.URL, RejectAction: tt.rejectAction, Password: "s3cret"})
			if err != nil {
				t.Fatal(err)
			}
			v := c.CheckData(context.Background(), txn(), msg("Subject: x\r\n\r\nhi\r\n"))
			if v.Err != nil || v.Action != tt.want || v.Score != 9.5 {
				t.Fatalf("verdict = %+v, want action %v score 9.5", v, tt.want)
			}
			if tt.code != 0 && (v.Reply == nil || v.Reply.Code != tt.code) {
				t.Errorf("reply = %v, want %d", v.Reply, tt.code)
			}
			if tt.xspam != "" && (len(v.Headers) == 0 || v.Headers[0] != tt.xspam) {
				t.Errorf("headers = %q, want %q first", v.Headers, tt.xspam)
			}
			for _, h := range v.Headers {
				if strings.Contains(h, "EVIL") || strings.Contains(h, "X: y") {
					t.Errorf("a symbol name with CRLF reached the header block: %q", h)
				}
			}
			if got.URL.Path != "/checkv2" || got.Header.Get("IP") != "192.0.2.7" || got.Header.Get("Helo") != "client.example" ||
				got.Header.Get("From") != "a@example.org" || strings.Join(got.Header.Values("Rcpt"), ",") != "b@example.net,c@example.net" ||
				got.Header.Get("Queue-Id") != "Q123" || got.Header.Get("User") != "alice" || got.Header.Get("Password") != "s3cret" {
				t.Errorf("request %s headers %v", got.URL.Path, got.Header)
			}
			if body != "Subject: x\r\n\r\nhi\r\n" {
				t.Errorf("body = %q", body)
			}
		})
	}
}

// TestBackendFailures: everything that keeps rspamd from deciding is Verdict.Err, so the chain's
// fail mode applies; and through the chain, fail-open continues and fail-closed is 451.
func TestBackendFailures(t *testing.T) {
	slow := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-r.Context().Done():
		case <-time.After(2 * time.Second):
		}
	}))
	defer slow.Close()
	bad := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, `{"score": "not json`)
	}))
	defer bad.Close()
	e500 := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Error(w, "overloaded", http.StatusServiceUnavailable)
	}))
	defer e500.Close()
	huge := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, `{"action":"no action","x":"`+strings.Repeat("a", 2<<20)+`"}`)
	}))
	defer huge.Close()
	ln, _ := net.Listen("tcp", "127.0.0.1:0")
	down := "http://" + ln.Addr().String()
	ln.Close()

	for name, url := range map[string]string{"timeout": slow.URL, "bad json": bad.URL, "http 503": e500.URL, "down": down, "huge reply": huge.URL} {
		t.Run(name, func(t *testing.T) {
			c, _ := New(Options{URL: url})
			for _, closed := range []bool{false, true} {
				ch := &policy.Chain{Entries: []policy.Entry{{Check: c, Timeout: 200 * time.Millisecond, FailClosed: closed}}}
				start := time.Now()
				r := ch.Data(context.Background(), txn(), msg("Subject: x\r\n\r\nhi\r\n"))
				if time.Since(start) > 3*time.Second {
					t.Errorf("took %v despite the 200ms timeout", time.Since(start))
				}
				if len(r.Outcomes) != 1 || r.Outcomes[0].Err == nil {
					t.Fatalf("outcomes %+v, want one with an error", r.Outcomes)
				}
				if closed && (r.Action != policy.Tempfail || r.Reply.Code != 451) {
					t.Errorf("fail-closed: %v %v, want 451", r.Action, r.Reply)
				}
				if !closed && r.Action != policy.Continue {
					t.Errorf("fail-open: %v, want continue", r.Action)
				}
			}
		})
	}
}

func TestMaxSizeSkips(t *testing.T) {
	called := false
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { called = true }))
	defer srv.Close()
	c, _ := New(Options{URL: srv.URL, MaxSize: 10})
	v := c.CheckData(context.Background(), txn(), msg(strings.Repeat("x", 11)))
	if called || v.Action != policy.Continue || v.Err != nil || v.Result != "skipped" {
		t.Errorf("called=%v verdict=%+v", called, v)
	}
}

// TestSkippedWithAction: rspamd marks GTUBE hits is_skipped with action reject (seen from
// rspamd 3.4); that is a reject, not a skip.
func TestSkippedWithAction(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, `{"is_skipped":true,"score":15.0,"required_score":15.0,"action":"reject","symbols":{"GTUBE":{"name":"GTUBE","score":0.0}},"messages":{"smtp_message":"Gtube pattern"}}`)
	}))
	defer srv.Close()
	c, _ := New(Options{URL: srv.URL})
	if v := c.CheckData(context.Background(), txn(), msg("x")); v.Action != policy.Reject {
		t.Errorf("verdict %+v, want reject", v)
	}
}

func TestNewValidates(t *testing.T) {
	for _, u := range []string{"", "127.0.0.1:11333", "ftp://x"} {
		if _, err := New(Options{URL: u}); err == nil {
			t.Errorf("New(%q) accepted", u)
		}
	}
}
