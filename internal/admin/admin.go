// Package admin is the queue administration API of a running server: HTTP with JSON bodies on a
// unix socket in the data directory (and, when configured, a loopback TCP port), every request
// authenticated with the bearer token stored beside it. `postamt queue` is its client.
//
// The socket is mode 0600 inside the 0700 data directory, so only the server's user reaches it;
// the token is a second lock that also protects the optional TCP listener, which any local user
// can connect to.
package admin

import (
	"context"
	"crypto/rand"
	"crypto/subtle"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/postamt/postamt/internal/queue"
)

// File names inside the data directory.
const (
	SocketName = "admin.sock"
	TokenName  = "admin.token"
)

// Queue is what the API administers; *queue.Queue implements it.
type Queue interface {
	Entries(ctx context.Context, f queue.Filter, limit int) ([]queue.Entry, bool, error)
	Show(ctx context.Context, id string) (*queue.Message, error)
	Retry(ctx context.Context, id string) (int, error)
	RetryAll(ctx context.Context) (int, error)
	Hold(ctx context.Context, id string) error
	Release(ctx context.Context, id string) error
	Delete(ctx context.Context, id string) error
	Bounce(ctx context.Context, id, reason string) (int, error)
}

// Options configure a Server.
type Options struct {
	DataDir string // holds admin.sock and admin.token
	Listen  string // optional loopback host:port, validated by config
	Queue   Queue
	Logger  *slog.Logger
}

// Server serves the API until Close.
type Server struct {
	srv    *http.Server
	unix   net.Listener
	tcp    net.Listener
	sock   string
	closed chan struct{}
}

// maxSocketPath is sun_path's size on Linux less the terminating NUL.
const maxSocketPath = 107

// socketAddr returns the address to bind or dial for the socket at path. A path too long for a
// socket address is reached through /proc/self/fd/N/, N a descriptor of its directory, which
// keeps a deep data_dir working without changing the process's working directory; done closes
// that descriptor once the bind or connect is over.
func socketAddr(path string) (addr string, done func(), err error) {
	if len(path) <= maxSocketPath {
		return path, func() {}, nil
	}
	fd, err := syscall.Open(filepath.Dir(path), syscall.O_RDONLY|syscall.O_DIRECTORY|syscall.O_CLOEXEC, 0)
	if err != nil {
		return "", nil, fmt.Errorf("admin: socket path %s is longer than %d bytes and its directory cannot be opened: %w", path, maxSocketPath, err)
	}
	addr = fmt.Sprintf("/proc/self/fd/%d/%s", fd, filepath.Base(path))
	if len(addr) > maxSocketPath {
		syscall.Close(fd)
		return "", nil, fmt.Errorf("admin: socket path %s is too long for a unix socket; use a shorter data_dir", path)
	}
	return addr, func() { syscall.Close(fd) }, nil
}

// Start creates the token if needed, listens, and serves.
func Start(o Options) (*Server, error) {
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	token, err := LoadOrCreateToken(filepath.Join(o.DataDir, TokenName))
	if err != nil {
		return nil, err
	}
	sock := filepath.Join(o.DataDir, SocketName)
	addr, done, err := socketAddr(sock)
	if err != nil {
		return nil, err
	}
	defer done()
	if err := removeStale(sock, addr); err != nil {
		return nil, err
	}
	ul, err := net.Listen("unix", addr)
	if err != nil {
		return nil, fmt.Errorf("admin: listen %s: %w", sock, err)
	}
	// Close removes the socket by its real name.
	ul.(*net.UnixListener).SetUnlinkOnClose(false)
	// The data directory is 0700 already; the mode keeps the socket private if it is not.
	if err := os.Chmod(sock, 0o600); err != nil {
		ul.Close()
		return nil, fmt.Errorf("admin: %w", err)
	}
	s := &Server{unix: ul, sock: sock, closed: make(chan struct{})}
	if o.Listen != "" {
		if s.tcp, err = net.Listen("tcp", o.Listen); err != nil {
			ul.Close()
			return nil, fmt.Errorf("admin.listen %s: %w", o.Listen, err)
		}
	}
	h := &handler{q: o.Queue, token: token, log: o.Logger}
	s.srv = &http.Server{Handler: h.routes(), ReadHeaderTimeout: 10 * time.Second, ReadTimeout: time.Minute, WriteTimeout: 5 * time.Minute}
	for _, ln := range []net.Listener{s.unix, s.tcp} {
		if ln == nil {
			continue
		}
		o.Logger.Info("listening", "addr", ln.Addr().String(), "service", "admin")
		go func() {
			if err := s.srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
				o.Logger.Error("admin server", "err", err)
			}
		}()
	}
	return s, nil
}

// removeStale removes a socket left by a server that crashed, and refuses to take over the
// socket of one that is still running.
func removeStale(sock, addr string) error {
	fi, err := os.Lstat(sock)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("admin: %w", err)
	}
	if fi.Mode().Type() != fs.ModeSocket {
		return fmt.Errorf("admin: %s exists and is not a socket; remove it", sock)
	}
	if c, err := net.DialTimeout("unix", addr, time.Second); err == nil {
		c.Close()
		return fmt.Errorf("admin: %s is in use: is another postamt running on this data_dir?", sock)
	}
	if err := os.Remove(sock); err != nil {
		return fmt.Errorf("admin: remove stale socket: %w", err)
	}
	return nil
}

// TCPAddr is the bound TCP address, or nil without [admin] listen.
func (s *Server) TCPAddr() net.Addr {
	if s.tcp == nil {
		return nil
	}
	return s.tcp.Addr()
}

// Close stops serving and removes the socket.
func (s *Server) Close(ctx context.Context) error {
	err := s.srv.Shutdown(ctx)
	if rerr := os.Remove(s.sock); rerr != nil && !errors.Is(rerr, fs.ErrNotExist) && err == nil {
		err = rerr
	}
	return err
}

// LoadOrCreateToken reads the token file, creating it with a fresh random token the first time.
// A token file others can read is refused rather than used.
func LoadOrCreateToken(path string) (string, error) {
	b := make([]byte, 32)
	rand.Read(b)
	tok := hex.EncodeToString(b)
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err == nil {
		_, werr := f.WriteString(tok + "\n")
		if serr := f.Sync(); werr == nil {
			werr = serr
		}
		if cerr := f.Close(); werr == nil {
			werr = cerr
		}
		if werr != nil {
			os.Remove(path)
			return "", fmt.Errorf("admin: write %s: %w", path, werr)
		}
		return tok, nil
	}
	if !errors.Is(err, fs.ErrExist) {
		return "", fmt.Errorf("admin: create %s: %w", path, err)
	}
	return ReadToken(path)
}

// ReadToken reads an existing token file.
func ReadToken(path string) (string, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return "", fmt.Errorf("admin: %w", err)
	}
	if fi.Mode().Perm()&0o077 != 0 {
		return "", fmt.Errorf("admin: %s has mode %#o; it must be readable by its owner only (chmod 600 %s)", path, fi.Mode().Perm(), path)
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return "", fmt.Errorf("admin: %w", err)
	}
	tok := strings.TrimSpace(string(b))
	if len(tok) < 32 {
		return "", fmt.Errorf("admin: %s holds no usable token (at least 32 characters); delete it to have a new one made", path)
	}
	return tok, nil
}

type handler struct {
	q     Queue
	token string
	log   *slog.Logger
}

// DefaultListLimit bounds a list answer unless the request asks otherwise: a queue of a million
// recipients would otherwise be a several-hundred-megabyte answer built in the server's memory.
const DefaultListLimit = 1000

// Wire types of the API.
type (
	// ListResponse answers GET /v1/queue.
	ListResponse struct {
		Entries   []queue.Entry `json:"entries"`
		Truncated bool          `json:"truncated,omitempty"` // more entries match than the limit
	}
	// CountResponse answers retry and bounce: how many recipients were affected.
	CountResponse struct {
		Recipients int `json:"recipients"`
	}
	// BounceRequest is the body of POST /v1/queue/{id}/bounce.
	BounceRequest struct {
		Reason string `json:"reason"`
	}
	// ErrorResponse is every error's body.
	ErrorResponse struct {
		Error string `json:"error"`
	}
	okResponse struct {
		OK bool `json:"ok"`
	}
)

func (h *handler) routes() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v1/ping", func(w http.ResponseWriter, _ *http.Request) { writeJSON(w, http.StatusOK, okResponse{OK: true}) })
	mux.HandleFunc("GET /v1/queue", h.list)
	mux.HandleFunc("GET /v1/queue/{id}", h.show)
	mux.HandleFunc("POST /v1/queue/retry", h.retryAll)
	mux.HandleFunc("POST /v1/queue/{id}/retry", h.retry)
	mux.HandleFunc("POST /v1/queue/{id}/hold", h.hold)
	mux.HandleFunc("POST /v1/queue/{id}/release", h.release)
	mux.HandleFunc("POST /v1/queue/{id}/bounce", h.bounce)
	mux.HandleFunc("DELETE /v1/queue/{id}", h.delete)
	return h.auth(mux)
}

func (h *handler) auth(next http.Handler) http.Handler {
	want := []byte("Bearer " + h.token)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if subtle.ConstantTimeCompare([]byte(r.Header.Get("Authorization")), want) != 1 {
			w.Header().Set("WWW-Authenticate", `Bearer realm="postamt-admin"`)
			writeError(w, http.StatusUnauthorized, "missing or wrong bearer token (see admin.token in the data directory)")
			return
		}
		// 404 and 405 from the mux come as text; answer them in JSON like everything else.
		next.ServeHTTP(&jsonErrors{ResponseWriter: w}, r)
	})
}

func (h *handler) list(w http.ResponseWriter, r *http.Request) {
	qs := r.URL.Query()
	f := queue.Filter{ID: qs.Get("id"), From: qs.Get("from"), To: qs.Get("to"), Domain: qs.Get("domain"), State: qs.Get("state")}
	if f.State != "" && f.State != "pending" && f.State != "failed" {
		writeError(w, http.StatusBadRequest, fmt.Sprintf("state %q: use pending or failed", f.State))
		return
	}
	limit := DefaultListLimit
	if v := qs.Get("limit"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 0 {
			writeError(w, http.StatusBadRequest, fmt.Sprintf("limit %q: use a number, 0 for no limit", v))
			return
		}
		limit = n
	}
	es, more, err := h.q.Entries(r.Context(), f, limit)
	if err != nil {
		h.fail(w, r, err)
		return
	}
	if es == nil {
		es = []queue.Entry{}
	}
	writeJSON(w, http.StatusOK, ListResponse{Entries: es, Truncated: more})
}

func (h *handler) show(w http.ResponseWriter, r *http.Request) {
	m, err := h.q.Show(r.Context(), r.PathValue("id"))
	if err != nil {
		h.fail(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, m)
}

func (h *handler) retry(w http.ResponseWriter, r *http.Request) {
	n, err := h.q.Retry(r.Context(), r.PathValue("id"))
	h.count(w, r, n, err)
}

func (h *handler) retryAll(w http.ResponseWriter, r *http.Request) {
	n, err := h.q.RetryAll(r.Context())
	h.count(w, r, n, err)
}

func (h *handler) hold(w http.ResponseWriter, r *http.Request) {
	h.done(w, r, h.q.Hold(r.Context(), r.PathValue("id")))
}

func (h *handler) release(w http.ResponseWriter, r *http.Request) {
	h.done(w, r, h.q.Release(r.Context(), r.PathValue("id")))
}

func (h *handler) delete(w http.ResponseWriter, r *http.Request) {
	h.done(w, r, h.q.Delete(r.Context(), r.PathValue("id")))
}

func (h *handler) bounce(w http.ResponseWriter, r *http.Request) {
	var req BounceRequest
	dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, 64<<10))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&req); err != nil {
		writeError(w, http.StatusBadRequest, "body must be JSON like {\"reason\": \"...\"}: "+err.Error())
		return
	}
	if strings.TrimSpace(req.Reason) == "" {
		writeError(w, http.StatusBadRequest, "a reason is required: it goes into the DSN the sender receives")
		return
	}
	n, err := h.q.Bounce(r.Context(), r.PathValue("id"), req.Reason)
	h.count(w, r, n, err)
}

func (h *handler) count(w http.ResponseWriter, r *http.Request, n int, err error) {
	if err != nil {
		h.fail(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, CountResponse{Recipients: n})
}

func (h *handler) done(w http.ResponseWriter, r *http.Request, err error) {
	if err != nil {
		h.fail(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, okResponse{OK: true})
}

// fail maps queue errors to status codes; anything unexpected is logged and reported as 500.
func (h *handler) fail(w http.ResponseWriter, r *http.Request, err error) {
	switch {
	case errors.Is(err, queue.ErrNotFound):
		writeError(w, http.StatusNotFound, err.Error())
	case errors.Is(err, queue.ErrHeld), errors.Is(err, queue.ErrNotHeld), errors.Is(err, queue.ErrNoneLeft):
		writeError(w, http.StatusConflict, err.Error())
	default:
		h.log.Error("admin: request failed", "method", r.Method, "path", r.URL.Path, "err", err)
		writeError(w, http.StatusInternalServerError, err.Error())
	}
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	json.NewEncoder(w).Encode(v)
}

func writeError(w http.ResponseWriter, code int, msg string) {
	writeJSON(w, code, ErrorResponse{Error: msg})
}

// jsonErrors rewrites the mux's plain-text 404 and 405 answers as JSON errors.
type jsonErrors struct {
	http.ResponseWriter
	swallow bool
}

func (j *jsonErrors) WriteHeader(code int) {
	if (code == http.StatusNotFound || code == http.StatusMethodNotAllowed) &&
		!strings.HasPrefix(j.Header().Get("Content-Type"), "application/json") {
		j.swallow = true
		j.Header().Del("X-Content-Type-Options")
		msg := "no such endpoint"
		if code == http.StatusMethodNotAllowed {
			msg = "method not allowed on this endpoint"
		}
		writeJSON(j.ResponseWriter, code, ErrorResponse{Error: msg})
		return
	}
	j.ResponseWriter.WriteHeader(code)
}

func (j *jsonErrors) Write(b []byte) (int, error) {
	if j.swallow {
		return len(b), nil
	}
	return j.ResponseWriter.Write(b)
}

var _ io.Writer = (*jsonErrors)(nil)
