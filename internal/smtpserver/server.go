// Package smtpserver is the SMTP listener and session (RFC 5321 with PIPELINING, SIZE, 8BITMIME,
// SMTPUTF8, ENHANCEDSTATUSCODES, CHUNKING, DSN and STARTTLS). It enforces the limits a client
// controls, asks the Router about each recipient, streams the message into the Intake, and answers
// 250 only when the Intake says the message is on stable storage.
//
// It does not route, queue or deliver, and it holds no global state: everything arrives through
// Options. It is our own implementation rather than an adapter over go-smtp because the strictness
// this server promises (500 and carry on for an over-long line, refusing bare CR/LF in DATA and
// BDAT, discarding pipelined input after STARTTLS, enhanced codes on every reply, per-IP limits
// with 421) sits in the parts of go-smtp's server that cannot be configured; see
// docs/architecture.md.
package smtpserver

import (
	"context"
	"crypto/tls"
	"errors"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/postamt/postamt/internal/mail"
	"github.com/postamt/postamt/internal/observe"
	"github.com/postamt/postamt/internal/policy"
	"github.com/postamt/postamt/internal/smtp"
	"github.com/postamt/postamt/internal/spool"
)

// Router decides about each recipient; see router.Router.
type Router interface {
	Resolve(p smtp.Path, authenticated bool) ([]mail.Recipient, *smtp.Reply)
}

// Intake takes accepted messages; see queue.Queue.
type Intake interface {
	// Create starts a spool file under a fresh queue ID.
	Create() (*spool.Writer, error)
	// Accept returns nil only once the message is on stable storage.
	Accept(ctx context.Context, env *mail.Envelope, w *spool.Writer) error
}

// Limits bound everything a client controls.
type Limits struct {
	MaxMessageSize      int64
	MaxRecipients       int
	MaxLineLength       int
	CommandTimeout      time.Duration
	DataTimeout         time.Duration
	MaxConnections      int
	MaxConnectionsPerIP int
	MaxErrors           int
}

// Options configure a Server.
type Options struct {
	Hostname string
	Limits   Limits
	TLS      *tls.Config // nil disables STARTTLS
	Router   Router
	Intake   Intake
	Logger   *slog.Logger
	IDs      *observe.IDGen
	Now      func() time.Time
	// Listener names this server's role for checks and logs ("smtp" when empty).
	Listener string
	// Policy runs the configured checks at each stage; nil accepts everything the router does.
	Policy *policy.Chain
	// Auth, when set, offers AUTH PLAIN and LOGIN (RFC 4954) inside TLS, or also in plain text
	// with AuthPlaintext (the loopback sandbox). An authenticated client may relay (the Router
	// is told), and RequireAuth refuses MAIL before AUTH with 530 5.7.0. Nil: no AUTH.
	Auth          Authenticator
	AuthPlaintext bool
	RequireAuth   bool
	// CommitLatency, when set, is told how long each accepted message took from the end of its
	// data to the queue's durable commit (the wait before the 250), for metrics.
	CommitLatency func(time.Duration)
}

// Server serves SMTP on any number of listeners.
type Server struct {
	opts Options
	log  *slog.Logger

	mu        sync.Mutex
	listeners []net.Listener
	conns     map[net.Conn]struct{}
	perIP     map[netip.Addr]int
	closing   bool
	wg        sync.WaitGroup

	// Stats for metrics and tests.
	Stats Stats
}

// Stats counts what happened, for metrics.
type Stats struct {
	Connections, Refused, Messages, Rejected atomic.Int64
}

// New returns a Server; call Serve for each listener.
func New(opts Options) *Server {
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if opts.IDs == nil {
		opts.IDs = observe.NewIDGen(opts.Now)
	}
	if opts.Listener == "" {
		opts.Listener = "smtp"
	}
	l := &opts.Limits
	if l.MaxLineLength < 512 {
		l.MaxLineLength = 512
	}
	if l.MaxMessageSize <= 0 {
		l.MaxMessageSize = 25 << 20
	}
	if l.MaxRecipients <= 0 {
		l.MaxRecipients = 100
	}
	if l.CommandTimeout <= 0 {
		l.CommandTimeout = 5 * time.Minute
	}
	if l.DataTimeout <= 0 {
		l.DataTimeout = 10 * time.Minute
	}
	if l.MaxConnections <= 0 {
		l.MaxConnections = 1000
	}
	if l.MaxConnectionsPerIP <= 0 {
		l.MaxConnectionsPerIP = l.MaxConnections
	}
	if l.MaxErrors <= 0 {
		l.MaxErrors = 10
	}
	return &Server{opts: opts, log: opts.Logger, conns: map[net.Conn]struct{}{}, perIP: map[netip.Addr]int{}}
}

// ErrServerClosed is returned by Serve after Shutdown.
var ErrServerClosed = errors.New("smtpserver: closed")

// Serve accepts connections on ln until Shutdown.
func (s *Server) Serve(ln net.Listener) error {
	s.mu.Lock()
	if s.closing {
		s.mu.Unlock()
		ln.Close()
		return ErrServerClosed
	}
	s.listeners = append(s.listeners, ln)
	s.mu.Unlock()
	var backoff time.Duration
	for {
		c, err := ln.Accept()
		if err != nil {
			s.mu.Lock()
			closing := s.closing
			s.mu.Unlock()
			if closing {
				return ErrServerClosed
			}
			// EMFILE and friends: wait instead of spinning, as net/http does.
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() || isTemporaryAccept(err) {
				backoff = min(max(backoff*2, 5*time.Millisecond), time.Second)
				s.log.Warn("accept", "err", err, "retry_in", backoff)
				time.Sleep(backoff)
				continue
			}
			return err
		}
		backoff = 0
		ip := remoteIP(c)
		if reason := s.admit(c, ip); reason != "" {
			s.Stats.Refused.Add(1)
			go s.refuse(c, reason)
			continue
		}
		s.Stats.Connections.Add(1)
		s.wg.Add(1)
		go s.serveConn(c, ip)
	}
}

func isTemporaryAccept(err error) bool {
	var se interface{ Temporary() bool }
	return errors.As(err, &se) && se.Temporary()
}

func remoteIP(c net.Conn) netip.Addr {
	if ta, ok := c.RemoteAddr().(*net.TCPAddr); ok {
		a, _ := netip.AddrFromSlice(ta.IP)
		return a.Unmap()
	}
	return netip.Addr{}
}

// admit counts the connection against the total and per-IP limits; it returns a reason when the
// connection must be refused.
func (s *Server) admit(c net.Conn, ip netip.Addr) string {
	s.mu.Lock()
	defer s.mu.Unlock()
	switch {
	case s.closing:
		return "shutting down"
	case len(s.conns) >= s.opts.Limits.MaxConnections:
		return "too many connections"
	case s.perIP[ip] >= s.opts.Limits.MaxConnectionsPerIP:
		return "too many connections from your address"
	}
	s.conns[c] = struct{}{}
	s.perIP[ip]++
	return ""
}

func (s *Server) release(c net.Conn, ip netip.Addr) {
	s.mu.Lock()
	delete(s.conns, c)
	if s.perIP[ip]--; s.perIP[ip] <= 0 {
		delete(s.perIP, ip)
	}
	s.mu.Unlock()
}

// refuse answers an over-limit connection with 421 instead of leaving it hanging in the backlog
// (RFC 5321 §3.8), without spending a session on it.
func (s *Server) refuse(c net.Conn, reason string) {
	c.SetWriteDeadline(time.Now().Add(5 * time.Second))
	c.Write([]byte("421 4.7.0 " + s.opts.Hostname + " Service not available: " + reason + ", try again later\r\n"))
	// Let the reply reach the client before the reset that closing an unread socket can cause.
	if tc, ok := c.(*net.TCPConn); ok {
		tc.CloseWrite()
		c.SetReadDeadline(time.Now().Add(time.Second))
		var buf [512]byte
		for {
			if _, err := c.Read(buf[:]); err != nil {
				break
			}
		}
	}
	c.Close()
	s.log.Info("connection refused", "client", c.RemoteAddr().String(), "reason", reason)
}

// Shutdown stops accepting, interrupts sessions (each gets 421 4.3.2 at its next read) and waits
// for them until ctx ends. Messages not yet acknowledged are simply not acknowledged: clients
// retry them.
func (s *Server) Shutdown(ctx context.Context) error {
	s.mu.Lock()
	s.closing = true
	for _, ln := range s.listeners {
		ln.Close()
	}
	for c := range s.conns {
		c.SetReadDeadline(time.Now())
	}
	s.mu.Unlock()
	done := make(chan struct{})
	go func() { s.wg.Wait(); close(done) }()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		s.mu.Lock()
		for c := range s.conns {
			c.Close()
		}
		s.mu.Unlock()
		<-done
		return ctx.Err()
	}
}

// Active returns the number of open sessions.
func (s *Server) Active() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.conns)
}

// Closing reports whether Shutdown has begun.
func (s *Server) Closing() bool { return s.isClosing() }

func (s *Server) isClosing() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.closing
}
