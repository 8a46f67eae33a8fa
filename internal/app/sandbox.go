package app

import (
	"context"
	"crypto/subtle"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"time"

	"github.com/postamt/postamt/internal/config"
	"github.com/postamt/postamt/internal/dns"
	"github.com/postamt/postamt/internal/httpapi"
	"github.com/postamt/postamt/internal/policy"
	"github.com/postamt/postamt/internal/policy/faults"
	"github.com/postamt/postamt/internal/queue"
	"github.com/postamt/postamt/internal/router"
	"github.com/postamt/postamt/internal/sandbox"
	"github.com/postamt/postamt/internal/smtpserver"
	"github.com/postamt/postamt/internal/transport"
	sandboxtransport "github.com/postamt/postamt/internal/transport/sandbox"
	"github.com/postamt/postamt/internal/webui"
)

// Sandbox is the running capture store with its HTTP side.
type Sandbox struct {
	Store  *sandbox.Store
	Faults *faults.Faults
	cfg    *config.Config
	log    *slog.Logger
	http   *http.Server
	ln     net.Listener
	tmpDir string // memory_only: the queue's temporary directory, removed at close
	cancel context.CancelFunc
}

// openSandbox opens the store. With memory_only the queue goes to a temporary directory, so
// the returned configuration is a copy with data_dir pointing there.
func openSandbox(cfg *config.Config, log *slog.Logger) (*Sandbox, *config.Config, error) {
	sc := cfg.Sandbox
	sb := &Sandbox{cfg: cfg, log: log}
	path := ""
	if sc.MemoryOnly {
		dir, err := os.MkdirTemp("", "postamt-sandbox-*")
		if err != nil {
			return nil, nil, fmt.Errorf("sandbox: %w", err)
		}
		c := *cfg
		c.DataDir = dir
		cfg, sb.tmpDir, sb.cfg = &c, dir, &c
	} else {
		if err := os.MkdirAll(cfg.DataDir, 0o700); err != nil {
			return nil, nil, fmt.Errorf("data_dir: %w", err)
		}
		path = cfg.Path("sandbox.db")
	}
	rules := make([]faults.Rule, len(sc.Chaos))
	for i, r := range sc.Chaos {
		rules[i] = faults.Rule{Stage: r.Stage, Reply: r.Reply, Probability: r.Probability, Match: r.Match, MinSize: int64(r.MinSize)}
	}
	f, err := faults.New(rules)
	if err != nil {
		sb.close(context.Background())
		return nil, nil, fmt.Errorf("sandbox.chaos: %w", err)
	}
	sb.Faults = f
	st, err := sandbox.Open(sandbox.Options{Path: path, MaxMessages: sc.MaxMessages, MaxAge: sc.MaxAge.D(), Logger: log})
	if err != nil {
		sb.close(context.Background())
		return nil, nil, err
	}
	sb.Store = st
	return sb, cfg, nil
}

func (sb *Sandbox) transports() []transport.Transport {
	if sb == nil {
		return nil
	}
	return []transport.Transport{&sandboxtransport.Transport{Store: sb.Store, Faults: sb.Faults}}
}

// sandboxAuth accepts any credentials or the configured ones.
type sandboxAuth struct {
	any   bool
	users map[string]string
}

func (a *sandboxAuth) Authenticate(_ context.Context, _ netip.Addr, user, pass string) (string, error) {
	if user == "" {
		return "", errSandboxAuth
	}
	if a.any {
		return user, nil
	}
	want, ok := a.users[user]
	if !ok || subtle.ConstantTimeCompare([]byte(want), []byte(pass)) != 1 {
		return "", errSandboxAuth
	}
	return user, nil
}

var errSandboxAuth = errors.New("sandbox: wrong credentials")

// smtpAuth returns the SMTP server's AUTH settings: nil unless the sandbox offers AUTH.
func (sb *Sandbox) smtpAuth() (auth smtpserver.Authenticator, plaintext, require bool) {
	if sb == nil || sb.cfg.Sandbox.Auth == "" {
		return nil, false, false
	}
	sc := sb.cfg.Sandbox
	// Plain-text AUTH: the sandbox listens on loopback for programs under test, which often
	// connect without TLS; STARTTLS is still offered.
	return &sandboxAuth{any: sc.Auth == "any", users: sc.Users}, true, sc.RequireAuth
}

func (sb *Sandbox) policy() *policy.Chain {
	if sb == nil {
		return nil
	}
	return &policy.Chain{Entries: []policy.Entry{{Check: sb.Faults, Timeout: time.Second}}}
}

// serve starts the web UI and API listener (and the webhook).
func (sb *Sandbox) serve(q *queue.Queue, rt *router.Router, smtpAddrs []net.Addr, errc chan<- error) error {
	rel := &sandbox.Releaser{Store: sb.Store, Intake: q, Route: rt.RemoteRoute, Hostname: sb.cfg.Hostname}
	var addrs []string
	for _, a := range smtpAddrs {
		addrs = append(addrs, a.String())
	}
	h := httpapi.New(httpapi.Options{
		Store: sb.Store, Faults: sb.Faults, Release: rel.Release, UI: webui.Handler(), Logger: sb.log, SMTPAddrs: addrs,
		Auth: sandboxVerifier{resolver: dns.System(sb.cfg.Outbound.DNSServers), rspamd: sb.cfg.Checks.Rspamd.Enabled},
	})
	ln, err := net.Listen("tcp", sb.cfg.Sandbox.HTTPListen)
	if err != nil {
		return fmt.Errorf("sandbox.http_listen %s: %w", sb.cfg.Sandbox.HTTPListen, err)
	}
	sb.ln = ln
	sb.http = &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second}
	sb.log.Info("listening", "addr", ln.Addr().String(), "service", "http", "url", "http://"+ln.Addr().String()+"/")
	go func() {
		if err := sb.http.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			errc <- err
		}
	}()
	ctx, cancel := context.WithCancel(context.Background())
	sb.cancel = cancel
	if u := sb.cfg.Sandbox.Webhook; u != "" {
		go sandbox.RunWebhook(ctx, sb.Store, u, &http.Client{Timeout: 10 * time.Second}, sb.log)
	}
	return nil
}

// HTTPAddr is the address of the web UI and API listener.
func (sb *Sandbox) HTTPAddr() net.Addr {
	if sb.ln == nil {
		return nil
	}
	return sb.ln.Addr()
}

func (sb *Sandbox) close(ctx context.Context) {
	if sb.cancel != nil {
		sb.cancel()
	}
	if sb.http != nil {
		// Event streams and long polls never end by themselves: close, not Shutdown.
		sb.http.Close()
	}
	if sb.Store != nil {
		sb.Store.Close()
	}
	if sb.tmpDir != "" {
		os.RemoveAll(sb.tmpDir)
	}
}
