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

	"github.com/postamt/postamt/internal/certs"
	"github.com/postamt/postamt/internal/config"
	"github.com/postamt/postamt/internal/observe"
	"github.com/postamt/postamt/internal/queue"
	"github.com/postamt/postamt/internal/router"
	"github.com/postamt/postamt/internal/smtpserver"
	"github.com/postamt/postamt/internal/transport"
	"github.com/postamt/postamt/internal/transport/lmtp"
	"github.com/postamt/postamt/internal/transport/maildir"
)

// App is a running server.
type App struct {
	Config *config.Config
	Queue  *queue.Queue
	SMTP   *smtpserver.Server
	log    *slog.Logger
	addrs  []net.Addr
	errc   chan error
}

// Start opens the queue, starts delivery and begins listening. On error nothing is left running.
func Start(cfg *config.Config, log *slog.Logger) (*App, error) {
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
	q, err := queue.Open(queue.Options{
		Dir:            cfg.Path("queue"),
		RetryIntervals: durations(cfg.Queue.RetryIntervals),
		MaxAge:         cfg.Queue.MaxAge.D(),
		Workers:        cfg.Queue.DeliveryWorkers,
		Transports:     []transport.Transport{local},
		Logger:         log,
	})
	if err != nil {
		return nil, err
	}
	tlsConf, err := certs.ServerConfig(cfg.TLS.CertFile, cfg.TLS.KeyFile, cfg.Path("tls"), cfg.Hostname)
	if err != nil {
		q.Close(context.Background())
		return nil, err
	}
	l := cfg.SMTP
	srv := smtpserver.New(smtpserver.Options{
		Hostname: cfg.Hostname,
		Limits: smtpserver.Limits{
			MaxMessageSize: int64(l.MaxMessageSize), MaxRecipients: l.MaxRecipients, MaxLineLength: l.MaxLineLength,
			CommandTimeout: l.CommandTimeout.D(), DataTimeout: l.DataTimeout.D(),
			MaxConnections: l.MaxConnections, MaxConnectionsPerIP: l.MaxConnectionsPerIP, MaxErrors: l.MaxErrors,
		},
		TLS:    tlsConf,
		Router: router.New(cfg.Local),
		Intake: q,
		Logger: log,
		IDs:    observe.NewIDGen(nil),
	})
	a := &App{Config: cfg, Queue: q, SMTP: srv, log: log, errc: make(chan error, len(l.Listen))}
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
	q.Start()
	for _, ln := range lns {
		log.Info("listening", "addr", ln.Addr().String(), "service", "smtp")
		go func() {
			if err := srv.Serve(ln); err != nil && !errors.Is(err, smtpserver.ErrServerClosed) {
				a.errc <- err
			}
		}()
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
	err := a.SMTP.Shutdown(ctx)
	qctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if qerr := a.Queue.Close(qctx); err == nil {
		err = qerr
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
