// Package app assembles a running Postamt from a validated Config: queue, router, transports and
// listeners. It is the wiring that cmd/postamt and end-to-end tests share; it holds no logic of
// its own beyond start-up order and shutdown.
package app

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"time"

	"github.com/postamt/postamt/internal/bounce"
	"github.com/postamt/postamt/internal/certs"
	"github.com/postamt/postamt/internal/config"
	"github.com/postamt/postamt/internal/dns"
	"github.com/postamt/postamt/internal/observe"
	"github.com/postamt/postamt/internal/queue"
	"github.com/postamt/postamt/internal/router"
	"github.com/postamt/postamt/internal/smtpserver"
	"github.com/postamt/postamt/internal/transport"
	"github.com/postamt/postamt/internal/transport/lmtp"
	"github.com/postamt/postamt/internal/transport/maildir"
	"github.com/postamt/postamt/internal/transport/remote"
)

// App is a running server.
type App struct {
	Config  *config.Config
	Queue   *queue.Queue
	SMTP    *smtpserver.Server
	Sandbox *Sandbox // nil unless [sandbox] is enabled
	log     *slog.Logger
	addrs   []net.Addr
	metrics *observe.MetricsServer
	errc    chan error
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
	rt := router.New(cfg.Local, cfg.Outbound)
	bouncer := &bounce.Bouncer{Hostname: cfg.Hostname, Router: rt, Logger: log, Now: time.Now}
	q, err := queue.Open(queue.Options{
		Bounce:           bouncer.Bounce,
		AttemptLatency:   hist.Attempt,
		Dir:              cfg.Path("queue"),
		RetryIntervals:   durations(cfg.Queue.RetryIntervals),
		MaxAge:           cfg.Queue.MaxAge.D(),
		DelayWarning:     cfg.Queue.DelayWarning.D(),
		DestinationLimit: cfg.Outbound.DestinationLimit,
		Workers:          cfg.Queue.DeliveryWorkers,
		Transports: append([]transport.Transport{local, &remote.Transport{
			Resolver: dns.System(cfg.Outbound.DNSServers), Hostname: cfg.Hostname, Port: cfg.Outbound.Port,
		}}, sb.transports()...),
		Logger: log,
	})
	if err != nil {
		return nil, err
	}
	bouncer.Intake = q // the DSN goes back in through the same queue
	tlsConf, err := certs.ServerConfig(cfg.TLS.CertFile, cfg.TLS.KeyFile, cfg.Path("tls"), cfg.Hostname)
	if err != nil {
		q.Close(context.Background())
		return nil, err
	}
	l := cfg.SMTP
	auth, authPlaintext, requireAuth := sb.smtpAuth()
	srv := smtpserver.New(smtpserver.Options{
		Hostname: cfg.Hostname,
		Limits: smtpserver.Limits{
			MaxMessageSize: int64(l.MaxMessageSize), MaxRecipients: l.MaxRecipients, MaxLineLength: l.MaxLineLength,
			CommandTimeout: l.CommandTimeout.D(), DataTimeout: l.DataTimeout.D(),
			MaxConnections: l.MaxConnections, MaxConnectionsPerIP: l.MaxConnectionsPerIP, MaxErrors: l.MaxErrors,
		},
		TLS:           tlsConf,
		Router:        rt,
		Intake:        q,
		Logger:        log,
		IDs:           observe.NewIDGen(nil),
		CommitLatency: hist.Commit,
		Policy:        sb.policy(),
		Auth:          auth,
		AuthPlaintext: authPlaintext,
		RequireAuth:   requireAuth,
	})
	a = &App{Config: cfg, Queue: q, SMTP: srv, Sandbox: sb, log: log, errc: make(chan error, len(l.Listen)+1)}
	var lns []net.Listener
	for _, addr := range l.Listen {
		ln, err := net.Listen("tcp", addr)
		if err != nil {
			for _, x := range lns {
				x.Close()
			}
			q.Close(context.Background())
			return nil, fmt.Errorf("smtp.listen %s: %w", addr, err)
		}
		lns = append(lns, ln)
		a.addrs = append(a.addrs, ln.Addr())
	}
	if sb != nil {
		if err := sb.serve(q, rt, a.addrs, a.errc); err != nil {
			for _, x := range lns {
				x.Close()
			}
			q.Close(context.Background())
			return nil, err
		}
	}
	q.Start()
	for _, ln := range lns {
		log.Info("listening", "addr", ln.Addr().String(), "service", "smtp")
		go func() {
			if err := srv.Serve(ln); err != nil && !errors.Is(err, smtpserver.ErrServerClosed) {
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
		}, log)
		if err != nil {
			a.Shutdown(context.Background())
			return nil, fmt.Errorf("metrics.listen %s: %w", cfg.Metrics.Listen, err)
		}
		a.metrics = m
	}
	log.Info("ready", "hostname", cfg.Hostname, "data_dir", abs(cfg.DataDir), "config", cfg.File())
	return a, nil
}

// Addrs are the addresses the SMTP listeners are bound to (useful with port 0).
func (a *App) Addrs() []net.Addr { return a.addrs }

// Err reports a listener that failed after start.
func (a *App) Err() <-chan error { return a.errc }

// Shutdown stops the listeners, then the queue.
func (a *App) Shutdown(ctx context.Context) error {
	if a.metrics != nil {
		a.metrics.Close(ctx)
	}
	err := a.SMTP.Shutdown(ctx)
	qctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if qerr := a.Queue.Close(qctx); err == nil {
		err = qerr
	}
	// The sandbox store closes after the queue, whose last deliveries may still be saving.
	if a.Sandbox != nil {
		a.Sandbox.close(ctx)
	}
	a.log.Info("stopped")
	return err
}

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
	return []observe.Counter{
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
	}
}
