package sandbox

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
)

func TestCheck(t *testing.T) {
	for _, tc := range []struct {
		name    string
		raw     string
		want    []string // substrings of problems that must be reported
		notWant []string
		links   []string
	}{
		{
			name:    "clean text message",
			raw:     "Subject: hi\r\nMessage-ID: <a@b>\r\n\r\nSee https://example.test/a.\r\n",
			notWant: []string{"alt text", "plain-text", "Subject", "Message-ID"},
			links:   []string{"https://example.test/a"},
		},
		{
			name: "HTML only with the usual mistakes",
			raw: "Content-Type: text/html\r\n\r\n<html><head><link rel=\"stylesheet\" href=\"x.css\"><style>.a{display:flex}</style></head>" +
				"<body><img src=\"a.png\"><img src=\"b.png\" alt=\"\"><form></form><script>x()</script>" +
				"<div style=\"position: absolute\"><a href=\"https://example.test/buy\">buy</a><a href=\"mailto:x@y\">m</a></div></body></html>",
			want:  []string{"plain-text alternative", "1 image(s) without alt", "<script>", "<form>", "External style sheets", "flexbox", "position", "No Subject", "No Message-ID"},
			links: []string{"https://example.test/buy"},
		},
		{
			name: "Gmail clipping",
			raw:  "Subject: big\r\nMessage-ID: <a@b>\r\nContent-Type: multipart/alternative; boundary=b\r\n\r\n--b\r\nContent-Type: text/plain\r\n\r\nx\r\n--b\r\nContent-Type: text/html\r\n\r\n<p>" + strings.Repeat("a", 110<<10) + "</p>\r\n--b--\r\n",
			want: []string{"Gmail clips"},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := Check(Parse([]byte(tc.raw)), int64(len(tc.raw)))
			all := ""
			for _, p := range r.Problems {
				all += p.Text + "\n"
			}
			for _, w := range tc.want {
				if !strings.Contains(all, w) {
					t.Errorf("missing %q in:\n%s", w, all)
				}
			}
			for _, w := range tc.notWant {
				if strings.Contains(all, w) {
					t.Errorf("unexpected %q in:\n%s", w, all)
				}
			}
			var links []string
			for _, l := range r.Links {
				links = append(links, l.URL)
			}
			if strings.Join(links, " ") != strings.Join(tc.links, " ") {
				t.Errorf("links = %v, want %v", links, tc.links)
			}
		})
	}
}

func TestCheckLinks(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/ok":
		case "/nohead":
			if r.Method == http.MethodHead {
				w.WriteHeader(http.StatusMethodNotAllowed)
			}
		default:
			http.NotFound(w, r)
		}
	}))
	defer srv.Close()
	links := []Link{{URL: srv.URL + "/ok"}, {URL: srv.URL + "/nohead"}, {URL: srv.URL + "/gone"}, {URL: "http://127.0.0.1:1/refused"}}
	CheckLinks(context.Background(), srv.Client(), links, 5*time.Second)
	if links[0].Status != 200 || links[1].Status != 200 || links[2].Status != 404 || links[3].Error == "" {
		t.Errorf("links = %+v", links)
	}
}

func TestWebhook(t *testing.T) {
	got := make(chan Summary, 1)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var s Summary
		b, _ := io.ReadAll(r.Body)
		if r.Header.Get("Content-Type") != "application/json" || json.Unmarshal(b, &s) != nil {
			t.Errorf("webhook got %q %s", r.Header.Get("Content-Type"), b)
		}
		got <- s
	}))
	defer srv.Close()
	s := openStore(t, Options{})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { RunWebhook(ctx, s, srv.URL, srv.Client(), slog.New(slog.DiscardHandler)); close(done) }()
	for end := time.Now().Add(5 * time.Second); ; time.Sleep(5 * time.Millisecond) {
		s.mu.Lock()
		n := len(s.subs)
		s.mu.Unlock()
		if n == 1 {
			break
		}
		if time.Now().After(end) {
			t.Fatal("webhook never subscribed")
		}
	}
	save(t, s, "hook", time.Now(), msg("a@x.test", "b@x.test", "hooked", "x"), "b@x.test")
	select {
	case m := <-got:
		if m.ID != "hook" || m.Subject != "hooked" {
			t.Errorf("webhook summary = %+v", m)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("webhook not called")
	}
	cancel()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("RunWebhook did not stop with its context")
	}
}

func TestSnippet(t *testing.T) {
	for in, want := range map[string]string{
		"":                         "",
		"  hello \r\n\t world  ":   "hello world",
		strings.Repeat("ab ", 100): strings.TrimSpace(strings.Repeat("ab ", 67)),
		"Grüße\n\nbis bald":        "Grüße bis bald",
	} {
		if got := snippet(in); got != want {
			t.Errorf("snippet(%q) = %q, want %q", in, got, want)
		}
	}
}
