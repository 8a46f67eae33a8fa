// Package app assembles a running Postamt from a validated Config: queue, router, transports and
// listeners. It is the wiring that cmd/postamt and end-to-end tests share; it holds no logic of
// its own beyond start-up order and shutdown.
package app

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"github.com/postamt/postamt/internal/mail"
	"github.com/postamt/postamt/internal/mailauth"
	"github.com/postamt/postamt/internal/policy"
	"io"
	"log/slog"
	"maps"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/postamt/postamt/internal/admin"
	"github.com/postamt/postamt/internal/bounce"
	"github.com/postamt/postamt/internal/certs"
	"github.com/postamt/postamt/internal/config"
	"github.com/postamt/postamt/internal/dns"
	"github.com/postamt/postamt/internal/observe"
	"github.com/postamt/postamt/internal/quarantine"
	"github.com/postamt/postamt/internal/queue"
	"github.com/postamt/postamt/internal/router"
	"github.com/postamt/postamt/internal/smtpserver"
	"github.com/postamt/postamt/internal/tlspolicy"
	"github.com/postamt/postamt/internal/transport"
	"github.com/postamt/postamt/internal/transport/lmtp"
	"github.com/postamt/postamt/internal/transport/maildir"
	"github.com/postamt/postamt/internal/transport/remote"
	"github.com/postamt/postamt/internal/users"
)

// App is a running server.
type App struct {
	Config *config.Config
	Queue  *queue.Queue
	SMTP   *smtpserver.Server
	// Submission serves the submission listeners (nil when none is configured).
	Submission *smtpserver.Server
	Sandbox    *Sandbox // nil unless [sandbox] is enabled
	log        *slog.Logger
	addrs      []net.Addr
	subAddrs   []net.Addr
	users      *users.Store
	acme       *certs.ACME
	metrics    *observe.MetricsServer
	admin      *admin.Server
	checks     *builtChecks
	remote     *remote.Transport
	// Quarantine holds the messages checks quarantined; its release loop runs until Shutdown.
	Quarantine   *quarantine.Store
	stopReleases context.CancelFunc
	releasesDone chan struct{}
	errc         chan error
}

// Start opens the queue, starts delivery and begins listening. On error nothing is left running.
func Start(cfg *config.Config, log *slog.Logger) (a *App, err error) {
	var sb *Sandbox
	if cfg.Sandbox.Enabled {
		if sb, cfg, err = openSandbox(cfg, log); err != nil {
			return nil, err
		}
		defer func() {
			if err != nil {
				sb.close(context.Background())
			}
		}()
	}
	if err := os.MkdirAll(cfg.DataDir, 0o700); err != nil {
		return nil, fmt.Errorf("data_dir: %w", err)
	}
	var local transport.Transport
	switch cfg.Local.Transport {
	case "lmtp":
		local = &lmtp.Transport{Address: cfg.Local.LMTPAddress, Hostname: cfg.Hostname}
	default:
		local = &maildir.Transport{Root: cfg.Path(cfg.Local.MaildirRoot), Hostname: cfg.Hostname}
	}
	hist := observe.NewHistograms()
	dests := observe.NewDestinations(100)
	rt := router.New(cfg.Local, cfg.Outbound)
	// One resolver for delivery and for the checks: outbound.dns_servers or the system's.
	resolver := dns.System(cfg.Outbound.DNSServers)
	ot := cfg.Outbound.TLS
	daneResolver := ""
	if ot.DANE {
		daneResolver = ot.DANEResolver
	}
	tlsPolicy, err := tlspolicy.NewEngine(tlspolicy.Options{
		MTASTS: ot.MTASTS, Resolver: resolver, CacheDir: cfg.Path("mta-sts"),
		DANEResolver: daneResolver, Overrides: ot.Policy, Logger: log,
	})
	if err != nil {
		return nil, err
	}
	out, err := outboundTransport(cfg)
	if err != nil {
		return nil, err
	}
	out.Resolver, out.TLSPolicy, out.Logger = resolver, tlsPolicy, log
	bouncer := &bounce.Bouncer{Hostname: cfg.Hostname, Router: rt, Logger: log, Now: time.Now}
	// Loaded once: the DSN signer here and the submission chain's signer share the keys.
	dkimKeys, err := LoadDKIMKeys(cfg)
	if err != nil {
		return nil, err
	}
	if len(dkimKeys) > 0 {
		bouncer.Sign = dsnSigner(&mailauth.DKIMSigner{Keys: dkimKeys})
	}
	q, err := queue.Open(queue.Options{
		Bounce:           bouncer.Bounce,
		AttemptLatency:   hist.Attempt,
		AttemptResult:    dests.Count,
		Dir:              cfg.Path("queue"),
		RetryIntervals:   durations(cfg.Queue.RetryIntervals),
		MaxAge:           cfg.Queue.MaxAge.D(),
		DelayWarning:     cfg.Queue.DelayWarning.D(),
		DestinationLimit: cfg.Outbound.DestinationLimit,
		RemoteLimit:      cfg.Outbound.MaxConnections,
		Workers:          cfg.Queue.DeliveryWorkers,
		Transports:       append(append([]transport.Transport{local, out}, mapTransports(cfg)...), sb.transports()...),
		Logger:           log,
	})
	if err != nil {
		return nil, err
	}
	bouncer.Intake = q // the DSN goes back in through the same queue
	qs, err := quarantine.Open(cfg.Path(cfg.Quarantine.Path))
	if err != nil {
		q.Close(context.Background())
		return nil, err
	}
	tlsConf, err := certs.ServerConfigReload(cfg.TLS.CertFile, cfg.TLS.KeyFile, cfg.Path("tls"), cfg.Hostname, cfg.TLS.ReloadInterval.D(), log)
	if err != nil {
		qs.Close()
		q.Close(context.Background())
		return nil, err
	}
	checks, err := buildChecks(cfg, checkDeps{Resolver: resolver, Now: time.Now, Logger: log})
	if err != nil {
		qs.Close()
		q.Close(context.Background())
		return nil, err
	}
	var acme *certs.ACME
	if cfg.TLS.ACME {
		domains := cfg.TLS.ACMEDomains
		if len(domains) == 0 {
			domains = []string{cfg.Hostname}
		}
		// The self-signed (or file) certificate serves until the CA has issued one.
		acme, err = certs.NewACME(context.Background(), certs.ACMEOptions{
			CA: cfg.TLS.ACMECA, Email: cfg.TLS.ACMEEmail, Domains: domains, Storage: cfg.Path("acme"),
			HTTPListen: cfg.TLS.ACMEHTTPListen, CARoot: cfg.TLS.ACMECARoot, Fallback: tlsConf, Log: log,
		})
		if err != nil {
			qs.Close()
			q.Close(context.Background())
			checks.Close()
			return nil, fmt.Errorf("tls.acme: %w", err)
		}
		tlsConf = acme.TLSConfig()
	}
	l := cfg.SMTP
	sbAuth, sbPlain, sbRequire := sb.smtpAuth()
	srv := smtpserver.New(smtpserver.Options{
		Hostname: cfg.Hostname,
		Limits: smtpserver.Limits{
			MaxMessageSize: int64(l.MaxMessageSize), MaxRecipients: l.MaxRecipients, MaxLineLength: l.MaxLineLength,
			CommandTimeout: l.CommandTimeout.D(), DataTimeout: l.DataTimeout.D(),
			MaxConnections: l.MaxConnections, MaxConnectionsPerIP: l.MaxConnectionsPerIP, MaxErrors: l.MaxErrors,
		},
		TLS:                tlsConf,
		Router:             rt,
		Intake:             q,
		Logger:             log,
		IDs:                observe.NewIDGen(nil),
		CommitLatency:      hist.Commit,
		Policy:             withChaos(checks.Chain, sb),
		Auth:               sbAuth,
		AllowPlaintextAuth: sbPlain,
		RequireAuth:        sbRequire,
		GreetDelay:         checks.GreetDelay,
		Quarantine:         qs,
	})
	sub := cfg.Submission
	a = &App{Config: cfg, Queue: q, SMTP: srv, Sandbox: sb, log: log, checks: checks, remote: out, Quarantine: qs, acme: acme,
		errc: make(chan error, len(l.Listen)+len(sub.Listen)+len(sub.ListenTLS)+1)}
	type listener struct {
		ln      net.Listener
		srv     *smtpserver.Server
		service string
	}
	var lns []listener
	fail := func(err error) (*App, error) {
		for _, x := range lns {
			x.ln.Close()
		}
		if a.users != nil {
			a.users.Close()
		}
		if acme != nil {
			acme.Stop()
		}
		qs.Close()
		q.Close(context.Background())
		checks.Close()
		return nil, err
	}
	if len(sub.Listen)+len(sub.ListenTLS) > 0 {
		if a.users, a.Submission, err = startSubmission(cfg, log, rt, q, tlsConf, hist, dkimKeys); err != nil {
			return fail(err)
		}
	}
	listen := func(option, addr string, s *smtpserver.Server, service string, implicitTLS bool) error {
		ln, err := net.Listen("tcp", addr)
		if err != nil {
			return fmt.Errorf("%s %s: %w", option, addr, err)
		}
		if service == "smtp" {
			a.addrs = append(a.addrs, ln.Addr())
		} else {
			a.subAddrs = append(a.subAddrs, ln.Addr())
		}
		if implicitTLS {
			// RFC 8314 §3.3: the session starts with the TLS handshake; the server finishes
			// it before its greeting.
			ln = tls.NewListener(ln, tlsConf)
		}
		lns = append(lns, listener{ln, s, service})
		return nil
	}
	for _, addr := range l.Listen {
		if err := listen("smtp.listen", addr, srv, "smtp", false); err != nil {
			return fail(err)
		}
	}
	for _, addr := range sub.Listen {
		if err := listen("submission.listen", addr, a.Submission, "submission", false); err != nil {
			return fail(err)
		}
	}
	for _, addr := range sub.ListenTLS {
		if err := listen("submission.listen_tls", addr, a.Submission, "submissions", true); err != nil {
			return fail(err)
		}
	}
	if sb != nil {
		if err := sb.serve(q, rt, a.addrs, a.errc); err != nil {
			return fail(err)
		}
	}
	q.Start()
	rctx, stop := context.WithCancel(context.Background())
	a.stopReleases, a.releasesDone = stop, make(chan struct{})
	go func() {
		defer close(a.releasesDone)
		// `postamt quarantine release` marks messages; this loop delivers them.
		qs.RunReleases(rctx, q, releasePoll, log)
	}()
	for _, x := range lns {
		log.Info("listening", "addr", x.ln.Addr().String(), "service", x.service)
		go func() {
			if err := x.srv.Serve(x.ln); err != nil && !errors.Is(err, smtpserver.ErrServerClosed) {
				a.errc <- err
			}
		}()
	}
	if cfg.Metrics.Listen != "" {
		m, err := observe.NewMetricsServer(cfg.Metrics.Listen, a.counters(), hist, func() error {
			if srv.Closing() {
				return errors.New("shutting down")
			}
			return nil
		}, log, dests)
		if err != nil {
			a.Shutdown(context.Background())
			return nil, fmt.Errorf("metrics.listen %s: %w", cfg.Metrics.Listen, err)
		}
		a.metrics = m
	}
	adm, err := admin.Start(admin.Options{DataDir: cfg.DataDir, Listen: cfg.Admin.Listen, Queue: q, Logger: log})
	if err != nil {
		a.Shutdown(context.Background())
		return nil, err
	}
	a.admin = adm
	log.Info("ready", "hostname", cfg.Hostname, "data_dir", abs(cfg.DataDir), "config", cfg.File())
	return a, nil
}

// Addrs are the addresses the SMTP listeners are bound to (useful with port 0).
func (a *App) Addrs() []net.Addr { return a.addrs }

// SubmissionAddrs are the submission listeners' addresses: submission.listen first, then
// submission.listen_tls.
func (a *App) SubmissionAddrs() []net.Addr { return a.subAddrs }

// AdminAddr is the admin API's loopback TCP address, nil without [admin] listen.
func (a *App) AdminAddr() net.Addr {
	if a.admin == nil {
		return nil
	}
	return a.admin.TCPAddr()
}

// Err reports a listener that failed after start.
func (a *App) Err() <-chan error { return a.errc }

// Shutdown stops the listeners, then the queue.
func (a *App) Shutdown(ctx context.Context) error {
	if a.admin != nil {
		a.admin.Close(ctx)
	}
	if a.metrics != nil {
		a.metrics.Close(ctx)
	}
	err := a.SMTP.Shutdown(ctx)
	if a.Submission != nil {
		if serr := a.Submission.Shutdown(ctx); err == nil {
			err = serr
		}
	}
	if a.users != nil {
		a.users.Close()
	}
	if a.acme != nil {
		a.acme.Stop()
	}
	a.stopReleases()
	<-a.releasesDone
	a.Quarantine.Close()
	qctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if qerr := a.Queue.Close(qctx); err == nil {
		err = qerr
	}
	a.remote.Close() // idle connections kept for reuse
	if cerr := a.checks.Close(); err == nil {
		err = cerr
	}
	// The sandbox store closes after the queue, whose last deliveries may still be saving.
	if a.Sandbox != nil {
		a.Sandbox.close(ctx)
	}
	a.log.Info("stopped")
	return err
}

// releasePoll is how soon a release requested with the CLI is carried out.
const releasePoll = time.Second

func durations(ds []config.Duration) []time.Duration {
	out := make([]time.Duration, len(ds))
	for i, d := range ds {
		out[i] = d.D()
	}
	return out
}

func abs(p string) string {
	if a, err := filepath.Abs(p); err == nil {
		return a
	}
	return p
}

// counters exposes the components' own counters to Prometheus.
func (a *App) counters() []observe.Counter {
	st, qm := &a.SMTP.Stats, a.Queue.Metrics()
	i := func(f func() int64) func() float64 { return func() float64 { return float64(f()) } }
	queueCount := func(pick func(p, f, m int) int) func() float64 {
		return func() float64 {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			p, f, m, err := a.Queue.Counts(ctx)
			if err != nil {
				return -1
			}
			return float64(pick(p, f, m))
		}
	}
	cs := []observe.Counter{
		{Name: "smtp_connections_total", Help: "SMTP connections accepted.", Value: i(st.Connections.Load)},
		{Name: "smtp_connections_refused_total", Help: "SMTP connections refused with 421 (limits).", Value: i(st.Refused.Load)},
		{Name: "smtp_connections_active", Help: "Open SMTP sessions.", Gauge: true, Value: func() float64 { return float64(a.SMTP.Active()) }},
		{Name: "smtp_messages_accepted_total", Help: "Messages acknowledged with 250.", Value: i(st.Messages.Load)},
		{Name: "smtp_messages_rejected_total", Help: "Messages refused after DATA (size, syntax).", Value: i(st.Rejected.Load)},
		{Name: "delivery_attempts_total", Help: "Delivery attempt outcomes per recipient.", Labels: map[string]string{"result": "sent"}, Value: i(qm.Delivered.Load)},
		{Name: "delivery_attempts_total", Help: "Delivery attempt outcomes per recipient.", Labels: map[string]string{"result": "deferred"}, Value: i(qm.Deferred.Load)},
		{Name: "delivery_attempts_total", Help: "Delivery attempt outcomes per recipient.", Labels: map[string]string{"result": "failed"}, Value: i(qm.Failed.Load)},
		{Name: "queue_recipients", Help: "Recipients in the queue by state.", Gauge: true, Labels: map[string]string{"state": "pending"}, Value: queueCount(func(p, _, _ int) int { return p })},
		{Name: "queue_recipients", Help: "Recipients in the queue by state.", Gauge: true, Labels: map[string]string{"state": "failed"}, Value: queueCount(func(_, f, _ int) int { return f })},
		{Name: "queue_messages", Help: "Messages in the queue.", Gauge: true, Value: queueCount(func(_, _, m int) int { return m })},
		{Name: "queue_messages_held", Help: "Messages held by the administrator (postamt queue hold).", Gauge: true, Value: func() float64 {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			n, err := a.Queue.Held(ctx)
			if err != nil {
				return -1
			}
			return float64(n)
		}},
	}
	if a.Submission != nil {
		sub := &a.Submission.Stats
		cs = append(cs,
			observe.Counter{Name: "submission_connections_total", Help: "Submission connections accepted.", Value: i(sub.Connections.Load)},
			observe.Counter{Name: "submission_messages_accepted_total", Help: "Submitted messages acknowledged with 250.", Value: i(sub.Messages.Load)},
			observe.Counter{Name: "submission_messages_rejected_total", Help: "Submitted messages refused after DATA (sender, size, limits).", Value: i(sub.Rejected.Load)},
			observe.Counter{Name: "submission_auth_total", Help: "AUTH exchanges by outcome.", Labels: map[string]string{"result": "ok"}, Value: i(sub.AuthOK.Load)},
			observe.Counter{Name: "submission_auth_total", Help: "AUTH exchanges by outcome.", Labels: map[string]string{"result": "failed"}, Value: i(sub.AuthFailed.Load)},
		)
	}
	return cs
}

// outboundTransport builds delivery to other domains from [outbound].
func outboundTransport(cfg *config.Config) (*remote.Transport, error) {
	o := cfg.Outbound
	t := &remote.Transport{
		Resolver: dns.System(o.DNSServers), Hostname: cfg.Hostname, Port: o.Port,
		ReuseIdle: o.ConnectionReuse.D(),
	}
	if t.ReuseIdle == 0 {
		t.ReuseIdle = -1 // "0s" in the file means no reuse
	}
	if o.RelayUsername != "" {
		pw, err := os.ReadFile(o.RelayPasswordFile)
		if err != nil {
			return nil, fmt.Errorf("outbound.relay_password_file: %w", err)
		}
		pass, _, _ := strings.Cut(string(pw), "\n")
		t.Auth = map[string]remote.Credentials{o.RelayHost: {Username: o.RelayUsername, Password: strings.TrimRight(pass, "\r")}}
	}
	return t, nil
}

// mapTransports makes one LMTP transport per distinct LMTP server in the transport map; SMTP
// entries use the remote transport.
func mapTransports(cfg *config.Config) []transport.Transport {
	seen := map[string]bool{}
	var out []transport.Transport
	for _, d := range slices.Sorted(maps.Keys(cfg.Outbound.Transports)) {
		rt, err := mail.ParseTransportMap(cfg.Outbound.Transports[d])
		if err != nil || seen[rt.Transport] || !strings.HasPrefix(rt.Transport, "lmtp:") {
			continue
		}
		seen[rt.Transport] = true
		out = append(out, &lmtp.Transport{Address: strings.TrimPrefix(rt.Transport, "lmtp:"), Hostname: cfg.Hostname, Label: rt.Transport})
	}
	return out
}

// withChaos puts the sandbox's fault rules (answers chosen errors at chosen stages) in front of
// the configured checks, so that a rule fires whatever the checks would say.
func withChaos(c *policy.Chain, sb *Sandbox) *policy.Chain {
	chaos := sb.policy()
	if chaos == nil {
		return c
	}
	if c == nil {
		return chaos
	}
	out := *c
	out.Entries = append(append([]policy.Entry(nil), chaos.Entries...), c.Entries...)
	return &out
}

// dsnSigner signs our own DSNs with the submission signer: their From is MAILER-DAEMON@hostname,
// so the key of the hostname's domain (or its nearest parent with keys) signs, in alignment.
func dsnSigner(s *mailauth.DKIMSigner) func(ctx context.Context, msg []byte) ([]string, error) {
	return func(ctx context.Context, msg []byte) ([]string, error) {
		v := s.CheckData(ctx, &policy.Txn{Conn: &policy.Conn{}}, rawMessage(msg))
		return v.Headers, v.Err
	}
}

// rawMessage is a policy.Message over bytes in memory.
type rawMessage []byte

func (m rawMessage) Size() int64                  { return int64(len(m)) }
func (m rawMessage) Open() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(m)), nil }
