package admin

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/postamt/postamt/internal/queue"
)

// memQueue is an in-memory Queue: one message "M1", so that requests can hit both the found and
// the not-found paths.
type memQueue struct{ held bool }

func (m *memQueue) find(id string) error {
	if id != "M1" {
		return queue.ErrNotFound
	}
	return nil
}
func (m *memQueue) Entries(context.Context, queue.Filter, int) ([]queue.Entry, bool, error) {
	return []queue.Entry{{ID: "M1", Rcpt: "a@b.test", State: "pending"}}, false, nil
}
func (m *memQueue) Show(_ context.Context, id string) (*queue.Message, error) {
	if err := m.find(id); err != nil {
		return nil, err
	}
	return &queue.Message{ID: id, Held: m.held}, nil
}
func (m *memQueue) Retry(_ context.Context, id string) (int, error) {
	if m.held {
		return 0, queue.ErrHeld
	}
	return 1, m.find(id)
}
func (m *memQueue) RetryAll(context.Context) (int, error) { return 1, nil }
func (m *memQueue) Hold(_ context.Context, id string) error {
	m.held = true
	return m.find(id)
}
func (m *memQueue) Release(_ context.Context, id string) error {
	if !m.held {
		return queue.ErrNotHeld
	}
	m.held = false
	return m.find(id)
}
func (m *memQueue) Delete(_ context.Context, id string) error { return m.find(id) }
func (m *memQueue) Bounce(_ context.Context, id, _ string) (int, error) {
	return 1, m.find(id)
}

// FuzzRequest: whatever method, path, query and body a client sends, the API answers with a JSON
// body and a 2xx or 4xx status, never a panic or a 500 (the queue here never fails).
func FuzzRequest(f *testing.F) {
	for _, s := range [][3]string{
		{"GET", "/v1/queue?state=pending&limit=2", ""},
		{"GET", "/v1/queue/M1", ""},
		{"POST", "/v1/queue/M1/bounce", `{"reason":"spam"}`},
		{"POST", "/v1/queue/M1/bounce", `{"reason":1}`},
		{"POST", "/v1/queue/M1/hold", ""},
		{"DELETE", "/v1/queue/%2e%2e", ""},
		{"GET", "/v1/queue?limit=-1", ""},
		{"PUT", "/v1/queue/M1/retry", "{}"},
	} {
		f.Add(s[0], s[1], s[2])
	}
	h := &handler{q: &memQueue{}, token: "tok"}
	srv := h.routes()
	f.Fuzz(func(t *testing.T, method, target, body string) {
		if !strings.HasPrefix(target, "/") {
			target = "/" + target
		}
		req, err := http.NewRequest(method, "http://x"+target, strings.NewReader(body))
		if err != nil {
			return // not a request a client could send
		}
		req.Header.Set("Authorization", "Bearer tok")
		rec := httptest.NewRecorder()
		srv.ServeHTTP(rec, req)
		if rec.Code >= 500 || rec.Code < 200 {
			t.Fatalf("%s %s %q: status %d", method, target, body, rec.Code)
		}
		if rec.Code == http.StatusMovedPermanently || rec.Code == http.StatusTemporaryRedirect || rec.Code == http.StatusPermanentRedirect {
			return // the mux cleaning a path; no body to check
		}
		if !json.Valid(rec.Body.Bytes()) {
			t.Fatalf("%s %s %q: %d with a body that is not JSON: %q", method, target, body, rec.Code, rec.Body.String())
		}
	})
}
