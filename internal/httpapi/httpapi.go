// Package httpapi serves the sandbox over HTTP: the REST API test suites use (list, search, get,
// raw, attachments, tags, delete, wait, release, chaos rules, checks), the event stream the web
// UI listens to, the OpenAPI description, and the UI's files. It holds no state of its own;
// everything is in the sandbox store and the chaos check it is given.
package httpapi

import (
	"context"
	_ "embed"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"mime"
	"net"
	"net/http"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/postamt/postamt/internal/policy/faults"
	"github.com/postamt/postamt/internal/sandbox"
)

//go:embed openapi.json
var openAPI []byte

// Options configure the handler.
type Options struct {
	Store *sandbox.Store
	// Faults are the chaos rules the API reads and replaces; nil disables that part.
	Faults *faults.Faults
	// Release sends a message on; nil disables release.
	Release func(ctx context.Context, id, from string, to []string) (string, error)
	// Auth verifies SPF/DKIM/DMARC for the checks report; nil reports them as unavailable.
	Auth sandbox.Authenticator
	// SMTPAddrs are the SMTP listeners, shown by the UI ("point your application at ...").
	SMTPAddrs []string
	// UI serves everything outside /api/ (the web UI); nil serves nothing there.
	UI http.Handler
	// AllowedHosts are Host header names accepted besides IP literals and localhost; they
	// guard against DNS rebinding, which would let any web page read captured mail.
	AllowedHosts []string
	// LinkClient checks links on request; nil uses a client with a 10 s timeout.
	LinkClient *http.Client
	Logger     *slog.Logger
	Now        func() time.Time
}

type api struct {
	o Options
}

// New returns the handler.
func New(o Options) http.Handler {
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.LinkClient == nil {
		o.LinkClient = &http.Client{Timeout: 10 * time.Second}
	}
	a := &api{o: o}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /api/v1/messages", a.list)
	mux.HandleFunc("DELETE /api/v1/messages", a.deleteMatching)
	mux.HandleFunc("POST /api/v1/messages/read", a.markAllRead)
	mux.HandleFunc("GET /api/v1/messages/{id}", a.get)
	mux.HandleFunc("PATCH /api/v1/messages/{id}", a.patch)
	mux.HandleFunc("DELETE /api/v1/messages/{id}", a.delete)
	mux.HandleFunc("GET /api/v1/messages/{id}/raw", a.raw)
	mux.HandleFunc("GET /api/v1/messages/{id}/html", a.html)
	mux.HandleFunc("GET /api/v1/messages/{id}/parts/{index}", a.part)
	mux.HandleFunc("GET /api/v1/messages/{id}/check", a.check)
	mux.HandleFunc("POST /api/v1/messages/{id}/check/links", a.checkLinks)
	mux.HandleFunc("POST /api/v1/messages/{id}/release", a.release)
	mux.HandleFunc("GET /api/v1/wait", a.wait)
	mux.HandleFunc("GET /api/v1/events", a.events)
	mux.HandleFunc("GET /api/v1/stats", a.stats)
	mux.HandleFunc("GET /api/v1/tags", a.tags)
	mux.HandleFunc("GET /api/v1/info", func(w http.ResponseWriter, r *http.Request) {
		addrs := a.o.SMTPAddrs
		if addrs == nil {
			addrs = []string{}
		}
		writeJSON(w, http.StatusOK, map[string]any{"smtp": addrs})
	})
	mux.HandleFunc("GET /api/v1/chaos", a.getChaos)
	mux.HandleFunc("PUT /api/v1/chaos", a.putChaos)
	mux.HandleFunc("GET /api/v1/openapi.json", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		w.Write(openAPI)
	})
	mux.HandleFunc("/api/", func(w http.ResponseWriter, r *http.Request) {
		fail(w, http.StatusNotFound, "no such API endpoint; see /api/v1/openapi.json")
	})
	if o.UI != nil {
		mux.Handle("/", o.UI)
	}
	return a.guard(mux)
}

// guard refuses requests that a hostile web page could make through the user's browser: a
// foreign Host (DNS rebinding) and state changes without a JSON body or a same-origin header
// (cross-site form posts, which need no CORS preflight).
func (a *api) guard(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		host := r.Host
		if h, _, err := net.SplitHostPort(host); err == nil {
			host = h
		}
		host = strings.Trim(host, "[]")
		ok := net.ParseIP(host) != nil || strings.EqualFold(host, "localhost") || strings.HasSuffix(strings.ToLower(host), ".localhost")
		for _, h := range a.o.AllowedHosts {
			ok = ok || strings.EqualFold(h, host)
		}
		if !ok {
			fail(w, http.StatusMisdirectedRequest, "host "+host+" is not allowed (add it to the sandbox's allowed hosts)")
			return
		}
		if r.Method != http.MethodGet && r.Method != http.MethodHead {
			if site := r.Header.Get("Sec-Fetch-Site"); site != "" && site != "same-origin" && site != "none" {
				fail(w, http.StatusForbidden, "cross-site requests are refused")
				return
			}
		}
		w.Header().Set("X-Content-Type-Options", "nosniff")
		w.Header().Set("Referrer-Policy", "no-referrer")
		next.ServeHTTP(w, r)
	})
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	enc := json.NewEncoder(w)
	enc.SetEscapeHTML(false)
	enc.Encode(v)
}

func fail(w http.ResponseWriter, status int, msg string) {
	writeJSON(w, status, map[string]string{"error": msg})
}

func (a *api) storeErr(w http.ResponseWriter, err error) {
	switch {
	case errors.Is(err, sandbox.ErrNotFound):
		fail(w, http.StatusNotFound, "no such message")
	case errors.Is(err, context.Canceled):
	default:
		a.o.Logger.Error("sandbox API", "err", err)
		fail(w, http.StatusInternalServerError, "internal error, see the server log")
	}
}

func (a *api) query(w http.ResponseWriter, r *http.Request) (*sandbox.Query, bool) {
	q, err := sandbox.ParseQuery(r.URL.Query().Get("query"), a.o.Now())
	if err != nil {
		fail(w, http.StatusBadRequest, "query: "+err.Error())
		return nil, false
	}
	return q, true
}

func intParam(r *http.Request, name string, def int) int {
	if v, err := strconv.Atoi(r.URL.Query().Get(name)); err == nil && v >= 0 {
		return v
	}
	return def
}

func (a *api) list(w http.ResponseWriter, r *http.Request) {
	q, ok := a.query(w, r)
	if !ok {
		return
	}
	pg, err := a.o.Store.List(r.Context(), q, intParam(r, "limit", 50), intParam(r, "offset", 0))
	if err != nil {
		a.storeErr(w, err)
		return
	}
	writeJSON(w, http.StatusOK, pg)
}

func (a *api) deleteMatching(w http.ResponseWriter, r *http.Request) {
	q, ok := a.query(w, r)
	if !ok {
		return
	}
	n, err := a.o.Store.DeleteMatching(r.Context(), q)
	if err != nil {
		a.storeErr(w, err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]int{"deleted": n})
}

func (a *api) markAllRead(w http.ResponseWriter, r *http.Request) {
	if err := a.o.Store.MarkAllRead(r.Context()); err != nil {
		a.storeErr(w, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

// messageJSON is a message as GET /messages/{id} returns it.
type messageJSON struct {
	*sandbox.Summary
	Parsed *sandbox.Parsed `json:"parsed"`
}

func (a *api) get(w http.ResponseWriter, r *http.Request) {
	sum, p, err := a.o.Store.Get(r.Context(), r.PathValue("id"))
	if err != nil {
		a.storeErr(w, err)
		return
	}
	if p.Attachments == nil {
		p.Attachments = []sandbox.Part{}
	}
	writeJSON(w, http.StatusOK, messageJSON{Summary: sum, Parsed: p})
}

func decodeBody(w http.ResponseWriter, r *http.Request, v any) bool {
	if mt, _, _ := mime.ParseMediaType(r.Header.Get("Content-Type")); mt != "application/json" {
		fail(w, http.StatusUnsupportedMediaType, "send a JSON body with Content-Type: application/json")
		return false
	}
	dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, 1<<20))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		fail(w, http.StatusBadRequest, "body: "+err.Error())
		return false
	}
	return true
}

func (a *api) patch(w http.ResponseWriter, r *http.Request) {
	var body struct {
		Read *bool    `json:"read"`
		Tags []string `json:"tags"`
	}
	if !decodeBody(w, r, &body) {
		return
	}
	id := r.PathValue("id")
	if body.Read != nil {
		if err := a.o.Store.SetRead(r.Context(), *body.Read, id); err != nil {
			a.storeErr(w, err)
			return
		}
	}
	if body.Tags != nil {
		if err := a.o.Store.SetTags(r.Context(), id, body.Tags); errors.Is(err, sandbox.ErrNotFound) {
			a.storeErr(w, err)
			return
		} else if err != nil {
			fail(w, http.StatusBadRequest, err.Error())
			return
		}
	}
	sum, _, err := a.o.Store.Get(r.Context(), id)
	if err != nil {
		a.storeErr(w, err)
		return
	}
	writeJSON(w, http.StatusOK, sum)
}

func (a *api) delete(w http.ResponseWriter, r *http.Request) {
	if err := a.o.Store.Delete(r.Context(), r.PathValue("id")); err != nil {
		a.storeErr(w, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

var unsafeName = regexp.MustCompile(`[^\w.\-]+`)

func attachmentHeader(name string) string {
	safe := strings.Trim(unsafeName.ReplaceAllString(name, "_"), "_")
	if safe == "" {
		safe = "download"
	}
	return mime.FormatMediaType("attachment", map[string]string{"filename": safe})
}

func (a *api) raw(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	raw, err := a.o.Store.Raw(r.Context(), id)
	if err != nil {
		a.storeErr(w, err)
		return
	}
	if r.URL.Query().Has("download") {
		w.Header().Set("Content-Type", "message/rfc822")
		w.Header().Set("Content-Disposition", attachmentHeader(id+".eml"))
	} else {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	}
	w.Header().Set("Content-Security-Policy", "sandbox; default-src 'none'")
	w.Write(raw)
}

// The HTML part is shown in an iframe with the sandbox attribute and no allow-scripts; the
// Content-Security-Policy here says the same again (for a user who opens the URL directly) and
// blocks every remote load unless the user asked for images: tracking pixels and remote CSS
// then never reach the network.
const (
	cspBlocked = "sandbox allow-popups allow-popups-to-escape-sandbox; default-src 'none'; style-src 'unsafe-inline'; img-src data:; font-src data:"
	cspImages  = "sandbox allow-popups allow-popups-to-escape-sandbox; default-src 'none'; style-src 'unsafe-inline' https: http:; img-src data: https: http:; font-src data: https: http:"
)

var cidRe = regexp.MustCompile(`(?i)cid:([^"'\s)>]+)`)

func (a *api) html(w http.ResponseWriter, r *http.Request) {
	_, p, err := a.o.Store.Get(r.Context(), r.PathValue("id"))
	if err != nil {
		a.storeErr(w, err)
		return
	}
	doc := p.HTML
	// Inline images become data: URLs, so the policy needs no exception for our own origin.
	doc = cidRe.ReplaceAllStringFunc(doc, func(m string) string {
		part, data, ok := p.PartByCID(cidRe.FindStringSubmatch(m)[1])
		if !ok || !strings.HasPrefix(part.ContentType, "image/") || len(data) > 10<<20 {
			return m
		}
		return "data:" + part.ContentType + ";base64," + base64.StdEncoding.EncodeToString(data)
	})
	// Links open outside the preview, never inside the frame.
	doc = "<base target=\"_blank\">" + doc
	csp := cspBlocked
	if r.URL.Query().Get("images") == "1" {
		csp = cspImages
	}
	w.Header().Set("Content-Security-Policy", csp)
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	w.Write([]byte(doc))
}

func (a *api) part(w http.ResponseWriter, r *http.Request) {
	idx, err := strconv.Atoi(r.PathValue("index"))
	if err != nil {
		fail(w, http.StatusBadRequest, "part index must be a number")
		return
	}
	_, p, err := a.o.Store.Get(r.Context(), r.PathValue("id"))
	if err != nil {
		a.storeErr(w, err)
		return
	}
	part, data, ok := p.PartData(idx)
	if !ok {
		fail(w, http.StatusNotFound, "no such part")
		return
	}
	ct := part.ContentType
	if ct == "" {
		ct = "application/octet-stream"
	}
	name := part.Filename
	if name == "" {
		name = fmt.Sprintf("part-%d", idx)
		if exts, _ := mime.ExtensionsByType(ct); len(exts) > 0 {
			name += exts[0]
		}
	}
	// Always a download (except images shown inline on request), and sandboxed: an HTML or SVG
	// attachment must never run on the sandbox's origin.
	w.Header().Set("Content-Security-Policy", "sandbox; default-src 'none'; img-src data:; style-src 'unsafe-inline'")
	if r.URL.Query().Has("inline") && strings.HasPrefix(ct, "image/") && ct != "image/svg+xml" {
		w.Header().Set("Content-Type", ct)
	} else {
		w.Header().Set("Content-Type", ct)
		w.Header().Set("Content-Disposition", attachmentHeader(name))
	}
	w.Write(data)
}

func (a *api) check(w http.ResponseWriter, r *http.Request) {
	sum, p, err := a.o.Store.Get(r.Context(), r.PathValue("id"))
	if err != nil {
		a.storeErr(w, err)
		return
	}
	rep := sandbox.Check(p, sum.Size)
	a.addAuth(r.Context(), rep, sum)
	writeJSON(w, http.StatusOK, rep)
}

func (a *api) addAuth(ctx context.Context, rep *sandbox.Report, sum *sandbox.Summary) {
	if a.o.Auth == nil {
		rep.AuthNote = "SPF, DKIM and DMARC verification is not available in this build"
		return
	}
	raw, err := a.o.Store.Raw(ctx, sum.ID)
	if err != nil {
		return
	}
	rep.Auth = a.o.Auth.Verify(ctx, raw, sandbox.Envelope{ID: sum.ID, From: sum.EnvelopeFrom, To: sum.EnvelopeTo, ReceivedAt: sum.Received})
}

func (a *api) checkLinks(w http.ResponseWriter, r *http.Request) {
	sum, p, err := a.o.Store.Get(r.Context(), r.PathValue("id"))
	if err != nil {
		a.storeErr(w, err)
		return
	}
	rep := sandbox.Check(p, sum.Size)
	sandbox.CheckLinks(r.Context(), a.o.LinkClient, rep.Links, 10*time.Second)
	writeJSON(w, http.StatusOK, rep.Links)
}

func (a *api) release(w http.ResponseWriter, r *http.Request) {
	if a.o.Release == nil {
		fail(w, http.StatusNotImplemented, "release is not configured")
		return
	}
	var body struct {
		From string   `json:"from"`
		To   []string `json:"to"`
	}
	if !decodeBody(w, r, &body) {
		return
	}
	qid, err := a.o.Release(r.Context(), r.PathValue("id"), body.From, body.To)
	if errors.Is(err, sandbox.ErrNotFound) {
		a.storeErr(w, err)
		return
	}
	if err != nil {
		fail(w, http.StatusBadRequest, "release: "+err.Error())
		return
	}
	writeJSON(w, http.StatusAccepted, map[string]string{"queue_id": qid})
}

func (a *api) wait(w http.ResponseWriter, r *http.Request) {
	q, ok := a.query(w, r)
	if !ok {
		return
	}
	timeout := 30 * time.Second
	if v := r.URL.Query().Get("timeout"); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil || d <= 0 || d > 10*time.Minute {
			fail(w, http.StatusBadRequest, "timeout: use a duration up to 10m, e.g. 30s")
			return
		}
		timeout = d
	}
	var since time.Time
	if v := r.URL.Query().Get("since"); v != "" {
		t, err := time.Parse(time.RFC3339Nano, v)
		if err != nil {
			fail(w, http.StatusBadRequest, "since: use an RFC 3339 time")
			return
		}
		since = t
	}
	ctx, cancel := context.WithTimeout(r.Context(), timeout)
	defer cancel()
	m, err := a.o.Store.Wait(ctx, q, since)
	if errors.Is(err, context.DeadlineExceeded) {
		fail(w, http.StatusRequestTimeout, fmt.Sprintf("no message matched %q within %v", q.String(), timeout))
		return
	}
	if err != nil {
		a.storeErr(w, err)
		return
	}
	writeJSON(w, http.StatusOK, m)
}

// events is a server-sent event stream of store changes. A client that falls behind is cut off
// and reconnects (EventSource does this by itself) and then reloads its list.
func (a *api) events(w http.ResponseWriter, r *http.Request) {
	fl, ok := w.(http.Flusher)
	if !ok {
		fail(w, http.StatusInternalServerError, "streaming unsupported")
		return
	}
	ch, stop := a.o.Store.Subscribe()
	defer stop()
	w.Header().Set("Content-Type", "text/event-stream")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(http.StatusOK)
	fmt.Fprint(w, "retry: 1000\nevent: ready\ndata: {}\n\n")
	fl.Flush()
	ping := time.NewTicker(25 * time.Second)
	defer ping.Stop()
	for {
		select {
		case <-r.Context().Done():
			return
		case <-ping.C:
			fmt.Fprint(w, ": ping\n\n")
			fl.Flush()
		case ev, ok := <-ch:
			if !ok {
				return
			}
			b, _ := json.Marshal(ev)
			fmt.Fprintf(w, "data: %s\n\n", b)
			fl.Flush()
		}
	}
}

func (a *api) stats(w http.ResponseWriter, r *http.Request) {
	st, err := a.o.Store.Stats(r.Context())
	if err != nil {
		a.storeErr(w, err)
		return
	}
	writeJSON(w, http.StatusOK, st)
}

func (a *api) tags(w http.ResponseWriter, r *http.Request) {
	t, err := a.o.Store.Tags(r.Context())
	if err != nil {
		a.storeErr(w, err)
		return
	}
	writeJSON(w, http.StatusOK, t)
}

func (a *api) getChaos(w http.ResponseWriter, r *http.Request) {
	if a.o.Faults == nil {
		fail(w, http.StatusNotImplemented, "chaos rules are not available")
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"rules": a.o.Faults.Rules()})
}

func (a *api) putChaos(w http.ResponseWriter, r *http.Request) {
	if a.o.Faults == nil {
		fail(w, http.StatusNotImplemented, "chaos rules are not available")
		return
	}
	var body struct {
		Rules []faults.Rule `json:"rules"`
	}
	if !decodeBody(w, r, &body) {
		return
	}
	if err := a.o.Faults.SetRules(body.Rules); err != nil {
		fail(w, http.StatusBadRequest, err.Error())
		return
	}
	a.o.Logger.Info("sandbox chaos rules replaced", "rules", len(body.Rules))
	writeJSON(w, http.StatusOK, map[string]any{"rules": a.o.Faults.Rules()})
}
