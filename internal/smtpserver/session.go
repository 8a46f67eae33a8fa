package smtpserver

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"runtime/debug"
	"strings"
	"time"

	"github.com/postamt/postamt/internal/mail"
	"github.com/postamt/postamt/internal/policy"
	"github.com/postamt/postamt/internal/smtp"
	"github.com/postamt/postamt/internal/spool"
)

// session is one SMTP connection.
type session struct {
	srv   *Server
	conn  net.Conn
	r     *bufio.Reader
	w     *bufio.Writer
	id    string
	ip    netip.Addr
	start time.Time
	ctx   context.Context

	helo     string
	esmtp    bool
	tls      *tls.ConnectionState
	errors   int
	messages int
	rejected int
	quit     bool
	end      string // why the session ended, for the log line

	tx       *txn
	pc       *policy.Conn // what checks see of this session
	authUser string       // after a successful AUTH
}

// txn is the current mail transaction (MAIL FROM until the end of data or RSET).
type txn struct {
	from     smtp.Path
	params   smtp.MailParams
	rcpts    []mail.Recipient
	rcptCmds int // accepted RCPT commands, for the recipient limit
	// BDAT state (RFC 3030): the body being assembled across chunks.
	bdat      *spool.Writer
	bdatCheck *lineCheck
	bdatSize  int64
	pt        *policy.Txn
}

func (s *Server) serveConn(c net.Conn, ip netip.Addr) {
	defer s.wg.Done()
	defer s.release(c, ip)
	sess := &session{
		srv: s, conn: c, ip: ip, id: s.opts.IDs.New(), start: s.opts.Now(),
		r:   bufio.NewReaderSize(c, max(1024, s.opts.Limits.MaxLineLength+2)),
		w:   bufio.NewWriterSize(c, 1024),
		ctx: context.Background(),
	}
	sess.pc = &policy.Conn{
		SessionID: sess.id, Listener: s.opts.Listener, RemoteIP: ip, RemoteAddr: c.RemoteAddr(), LocalAddr: c.LocalAddr(),
		Values: map[string]any{}, Now: s.opts.Now, Logger: s.log,
	}
	defer func() {
		if p := recover(); p != nil {
			s.log.Error("panic in SMTP session", "session", sess.id, "panic", p, "stack", string(debug.Stack()))
			sess.reply(smtp.Replyf(421, smtp.EnhancedCode{4, 3, 0}, "%s Internal error, closing connection (ref %s)", s.opts.Hostname, sess.id))
			sess.w.Flush()
			sess.end = "panic"
		}
		sess.abortTx()
		c.Close()
		sess.logEnd()
	}()
	sess.serve()
}

func (s *session) logEnd() {
	attrs := []any{"session", s.id, "client", s.ip.String(), "helo", s.helo, "messages", s.messages,
		"rejected", s.rejected, "errors", s.errors, "duration", s.srv.opts.Now().Sub(s.start).Round(time.Millisecond), "end", s.end}
	if s.tls != nil {
		attrs = append(attrs, "tls", tls.VersionName(s.tls.Version))
	}
	s.srv.log.Info("session", attrs...)
}

func (s *session) reply(r *smtp.Reply) {
	if r.Code >= 400 {
		s.errors++
	}
	r.WriteTo(s.w)
}

func (s *session) flush() error {
	s.conn.SetWriteDeadline(time.Now().Add(s.srv.opts.Limits.CommandTimeout))
	return s.w.Flush()
}

var (
	errLineTooLong = errors.New("line too long")
	errBareLF      = errors.New("bare LF")
	errBadChar     = errors.New("bad character")
)

// readLine reads one command line. Replies are flushed only when the client has sent nothing
// further, so a pipelined batch of commands gets its replies in one packet (RFC 2920).
func (s *session) readLine() ([]byte, error) {
	if s.r.Buffered() == 0 && s.w.Buffered() > 0 {
		if err := s.flush(); err != nil {
			return nil, err
		}
	}
	s.conn.SetReadDeadline(time.Now().Add(s.srv.opts.Limits.CommandTimeout))
	line, err := s.r.ReadSlice('\n')
	if errors.Is(err, bufio.ErrBufferFull) {
		for errors.Is(err, bufio.ErrBufferFull) {
			_, err = s.r.ReadSlice('\n')
		}
		if err != nil {
			return nil, err
		}
		return nil, errLineTooLong
	}
	if err != nil {
		return nil, err
	}
	if len(line) > s.srv.opts.Limits.MaxLineLength {
		return nil, errLineTooLong
	}
	if len(line) < 2 || line[len(line)-2] != '\r' {
		return nil, errBareLF
	}
	line = line[:len(line)-2]
	if bytes.IndexByte(line, '\r') >= 0 || bytes.IndexByte(line, 0) >= 0 {
		return nil, errBadChar
	}
	return line, nil
}

func (s *session) serve() {
	host := s.srv.opts.Hostname
	if s.srv.isClosing() {
		s.reply(smtp.NewReply(421, smtp.EnhancedCode{4, 3, 2}, host+" Service shutting down"))
		s.flush()
		return
	}
	if r := s.srv.opts.Policy.Conn(s.ctx, s.pc); r.Refused() {
		// RFC 5321 §3.1 allows 554 instead of the greeting; we close at once rather than wait
		// for a QUIT from a client we do not want.
		code := 554
		if r.Action == policy.Tempfail {
			code = 421
		}
		s.reply(smtp.NewReply(code, r.Reply.Enhanced, host+" "+r.Reply.Text))
		s.flush()
		s.end = "refused at connect: " + policy.Summary(r.Outcomes)
		s.srv.log.Info("connection refused by policy", "session", s.id, "client", s.ip.String(), "checks", policy.Summary(r.Outcomes), "reason", r.Reason)
		return
	}
	// RFC 5321 §4.2 and RFC 2034 §3: no enhanced code in the greeting.
	s.reply(smtp.NewReply(220, smtp.EnhancedCode{}, host+" ESMTP Postamt"))
	for !s.quit {
		line, err := s.readLine()
		switch {
		case err == nil:
		case errors.Is(err, errLineTooLong):
			s.reply(smtp.Replyf(500, smtp.CodeSyntax, "Line too long (the limit is %d octets)", s.srv.opts.Limits.MaxLineLength))
		case errors.Is(err, errBareLF):
			s.reply(smtp.NewReply(500, smtp.CodeSyntax, "Command lines must end with CRLF"))
		case errors.Is(err, errBadChar):
			s.reply(smtp.NewReply(500, smtp.CodeSyntax, "Bare CR or NUL in command line"))
		default:
			s.readFailed(err)
			return
		}
		if err == nil {
			s.command(line)
		}
		if s.errors >= s.srv.opts.Limits.MaxErrors && !s.quit {
			s.reply(smtp.NewReply(421, smtp.CodeSecurity, host+" Too many errors, closing connection"))
			s.flush()
			s.end = "too many errors"
			return
		}
	}
	s.flush()
}

// readFailed ends the session after a read error: a timeout gets its 421 (RFC 5321 §4.5.3.2),
// a vanished client gets nothing.
func (s *session) readFailed(err error) {
	var ne net.Error
	switch {
	case errors.As(err, &ne) && ne.Timeout() && s.srv.isClosing():
		s.reply(smtp.NewReply(421, smtp.EnhancedCode{4, 3, 2}, s.srv.opts.Hostname+" Service shutting down"))
		s.end = "shutdown"
	case errors.As(err, &ne) && ne.Timeout() || errors.Is(err, os.ErrDeadlineExceeded):
		s.reply(smtp.NewReply(421, smtp.CodeConnTimeout, s.srv.opts.Hostname+" Timeout exceeded, closing connection"))
		s.end = "timeout"
	case errors.Is(err, io.EOF):
		s.end = "disconnected"
		return
	default:
		s.end = "read error"
		return
	}
	s.flush()
}

func (s *session) command(line []byte) {
	verb, args, _ := strings.Cut(string(line), " ")
	switch strings.ToUpper(verb) {
	case "EHLO":
		s.cmdHello(args, true)
	case "HELO":
		s.cmdHello(args, false)
	case "MAIL":
		s.cmdMail(args)
	case "RCPT":
		s.cmdRcpt(args)
	case "DATA":
		s.cmdData(args)
	case "BDAT":
		s.cmdBdat(args)
	case "RSET":
		s.abortTx()
		s.reply(smtp.NewReply(250, smtp.CodeOK, "Reset OK"))
	case "NOOP":
		s.reply(smtp.NewReply(250, smtp.CodeOK, "OK"))
	case "QUIT":
		s.reply(smtp.NewReply(221, smtp.CodeOK, s.srv.opts.Hostname+" Bye"))
		s.quit = true
		s.end = "quit"
	case "STARTTLS":
		s.cmdStartTLS(args)
	case "VRFY":
		// RFC 5321 §3.5.3 allows 252; the same answer for every address reveals nothing.
		s.reply(smtp.NewReply(252, smtp.EnhancedCode{2, 5, 0}, "Cannot VRFY user, but will accept message and attempt delivery"))
	case "EXPN":
		s.reply(smtp.NewReply(502, smtp.CodeInvalidCommand, "EXPN is not available"))
	case "HELP":
		s.reply(smtp.NewReply(214, smtp.CodeOK, "See https://www.rfc-editor.org/rfc/rfc5321"))
	case "AUTH":
		s.cmdAuth(args)
	case "GET", "POST", "HEAD", "PUT", "CONNECT", "USER":
		// Postfix's smtpd_forbidden_commands: a web or proxy request sent to the SMTP port is an
		// attack or a mistake; end it rather than answering every header line.
		s.reply(smtp.NewReply(521, smtp.EnhancedCode{5, 7, 0}, s.srv.opts.Hostname+" This is an SMTP server, closing connection"))
		s.quit = true
		s.end = "forbidden command"
	default:
		s.reply(smtp.NewReply(500, smtp.CodeSyntax, "Command not recognized"))
	}
}

func (s *session) cmdHello(args string, ehlo bool) {
	args = strings.TrimSpace(args)
	if args == "" || strings.ContainsAny(args, " \t") && !strings.HasPrefix(args, "[") {
		name := "HELO"
		if ehlo {
			name = "EHLO"
		}
		s.reply(smtp.NewReply(501, smtp.EnhancedCode{5, 5, 4}, "Syntax: "+name+" hostname"))
		return
	}
	s.abortTx()
	s.pc.Helo = sanitize(args, 255)
	if r := s.srv.opts.Policy.Helo(s.ctx, s.pc); r.Refused() {
		s.pc.Helo = s.helo
		s.srv.log.Info("HELO refused by policy", "session", s.id, "client", s.ip.String(), "helo", sanitize(args, 255),
			"checks", policy.Summary(r.Outcomes), "reply", r.Reply.Line())
		s.reply(r.Reply)
		return
	}
	s.helo = s.pc.Helo
	s.esmtp = ehlo
	host := s.srv.opts.Hostname
	if !ehlo {
		s.reply(smtp.NewReply(250, smtp.EnhancedCode{}, host))
		return
	}
	ext := []string{host, "PIPELINING", fmt.Sprintf("SIZE %d", s.srv.opts.Limits.MaxMessageSize), "8BITMIME",
		"SMTPUTF8", "ENHANCEDSTATUSCODES", "CHUNKING", "DSN"}
	if s.srv.opts.TLS != nil && s.tls == nil {
		ext = append(ext, "STARTTLS")
	}
	if s.authOffered() {
		ext = append(ext, "AUTH PLAIN LOGIN")
	}
	s.reply(smtp.NewReply(250, smtp.EnhancedCode{}, strings.Join(ext, "\n")))
}

// sanitize makes client-supplied text safe for logs and the Received header: printable ASCII
// only (UTF-8 is kept), no parentheses or semicolons that would end a comment or the clause.
func sanitize(s string, limit int) string {
	if len(s) > limit {
		s = s[:limit]
	}
	return strings.Map(func(r rune) rune {
		switch {
		case r == '(' || r == ')' || r == ';' || r == '\\':
			return '_'
		case r < 0x20 || r == 0x7f:
			return '?'
		}
		return r
	}, s)
}

func (s *session) cmdStartTLS(args string) {
	switch {
	case args != "":
		s.reply(smtp.NewReply(501, smtp.EnhancedCode{5, 5, 4}, "STARTTLS takes no parameters"))
		return
	case s.srv.opts.TLS == nil:
		s.reply(smtp.NewReply(502, smtp.CodeInvalidCommand, "STARTTLS is not available"))
		return
	case s.tls != nil:
		s.reply(smtp.NewReply(503, smtp.CodeInvalidCommand, "TLS is already active"))
		return
	}
	s.reply(smtp.NewReply(220, smtp.CodeOK, "Ready to start TLS"))
	if err := s.flush(); err != nil {
		s.quit, s.end = true, "write error"
		return
	}
	// CVE-2011-0411: anything the client pipelined after STARTTLS arrived in plain text and must
	// not be executed inside the TLS session.
	if n := s.r.Buffered(); n > 0 {
		s.srv.log.Warn("discarding commands pipelined after STARTTLS", "session", s.id, "client", s.ip.String(), "bytes", n)
		s.r.Discard(n)
	}
	tc := tls.Server(s.conn, s.srv.opts.TLS)
	ctx, cancel := context.WithTimeout(context.Background(), s.srv.opts.Limits.CommandTimeout)
	defer cancel()
	s.conn.SetDeadline(time.Now().Add(s.srv.opts.Limits.CommandTimeout))
	if err := tc.HandshakeContext(ctx); err != nil {
		s.srv.log.Info("TLS handshake failed", "session", s.id, "client", s.ip.String(), "err", err)
		s.quit, s.end = true, "TLS handshake failed"
		return
	}
	s.conn.SetDeadline(time.Time{})
	st := tc.ConnectionState()
	s.tls = &st
	s.conn = tc
	s.r.Reset(tc)
	s.w.Reset(tc)
	// RFC 3207 §4.2: forget everything learnt before TLS; the client must EHLO again.
	s.abortTx()
	s.helo, s.esmtp = "", false
	s.authUser, s.pc.AuthUser = "", ""
}
