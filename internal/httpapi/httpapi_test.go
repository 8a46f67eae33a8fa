package httpapi

import (
	"bufio"
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"os"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/postamt/postamt/internal/sandbox"
)

func newServer(t *testing.T) (*sandbox.Store, *httptest.Server) {
	t.Helper()
	st, err := sandbox.Open(sandbox.Options{})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(New(Options{Store: st}))
	t.Cleanup(func() { srv.Close(); st.Close() })
	return st, srv
}

func save(t *testing.T, st *sandbox.Store, id, subject string) {
	t.Helper()
	raw := "From: a@x.test\r\nTo: b@x.test\r\nSubject: " + subject + "\r\n\r\nbody\r\n"
	if _, err := st.Save(context.Background(), sandbox.Envelope{ID: id, From: "a@x.test", To: []string{"b@x.test"}}, []byte(raw)); err != nil {
		t.Fatal(err)
	}
}

// TestEvents: the event stream says ready, then announces a new message as one data line.
func TestEvents(t *testing.T) {
	st, srv := newServer(t)
	resp, err := http.Get(srv.URL + "/api/v1/events")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if ct := resp.Header.Get("Content-Type"); ct != "text/event-stream" {
		t.Fatalf("Content-Type = %q", ct)
	}
	lines := make(chan string, 100)
	go func() {
		sc := bufio.NewScanner(resp.Body)
		for sc.Scan() {
			lines <- sc.Text()
		}
		close(lines)
	}()
	next := func() string {
		select {
		case l := <-lines:
			return l
		case <-time.After(5 * time.Second):
			t.Fatal("no event")
			return ""
		}
	}
	for l := next(); l != "event: ready"; l = next() {
	}
	save(t, st, "e1", "streamed")
	for {
		l := next()
		if d, ok := strings.CutPrefix(l, "data: "); ok && d != "{}" {
			var ev sandbox.Event
			if err := json.Unmarshal([]byte(d), &ev); err != nil || ev.Type != "new" || ev.Message.Subject != "streamed" {
				t.Fatalf("event = %s (%v)", d, err)
			}
			return
		}
	}
}

func TestWaitTimeoutAndErrors(t *testing.T) {
	_, srv := newServer(t)
	start := time.Now()
	resp, err := http.Get(srv.URL + "/api/v1/wait?query=subject:never&timeout=200ms")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusRequestTimeout || time.Since(start) < 200*time.Millisecond {
		t.Errorf("wait: %d after %v, want 408 after 200ms", resp.StatusCode, time.Since(start))
	}
	for path, want := range map[string]int{
		"/api/v1/wait?timeout=1h":           400,
		"/api/v1/wait?since=yesterday":      400,
		"/api/v1/messages/nope":             404,
		"/api/v1/messages/nope/raw":         404,
		"/api/v1/messages/nope/parts/x":     400,
		"/api/v1/nothing":                   404,
		"/api/v1/chaos":                     501, // no Faults configured
		"/api/v1/messages?query=is:maybe":   400,
		"/api/v1/messages?limit=5&offset=0": 200,
	} {
		resp, err := http.Get(srv.URL + path)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != want {
			t.Errorf("GET %s = %d, want %d", path, resp.StatusCode, want)
		}
	}
}

// TestOpenAPIComplete: every route the handler serves is in the OpenAPI document, and the
// document names no route that does not exist.
func TestOpenAPIComplete(t *testing.T) {
	src, err := os.ReadFile("httpapi.go")
	if err != nil {
		t.Fatal(err)
	}
	routes := map[string]bool{}
	for _, m := range regexp.MustCompile(`mux\.HandleFunc\("(GET|POST|PUT|PATCH|DELETE) (/api/v1/[^"]*)"`).FindAllStringSubmatch(string(src), -1) {
		routes[strings.ToLower(m[1])+" "+m[2]] = true
	}
	var doc struct {
		Paths map[string]map[string]json.RawMessage `json:"paths"`
	}
	if err := json.Unmarshal(openAPI, &doc); err != nil {
		t.Fatal(err)
	}
	documented := map[string]bool{}
	for p, ops := range doc.Paths {
		for m := range ops {
			if m != "parameters" {
				documented[m+" "+p] = true
			}
		}
	}
	for r := range routes {
		if !documented[r] {
			t.Errorf("route %s is not in openapi.json", r)
		}
	}
	for d := range documented {
		if !routes[d] {
			t.Errorf("openapi.json documents %s, which is not served", d)
		}
	}
	if len(routes) < 15 {
		t.Errorf("found only %d routes; the pattern no longer matches the source", len(routes))
	}
}
