// Package smtpclient is Postamt's outbound SMTP client: greeting, EHLO with HELO fallback,
// STARTTLS, AUTH PLAIN/LOGIN, and a mail transaction that pipelines MAIL, RCPT and DATA
// (RFC 2920) and sends the body with BDAT (RFC 3030) when the server offers CHUNKING. Every
// command has its own RFC 5321 §4.5.3.2 timeout, bounded by the caller's context. Replies come
// back as *smtp.Reply, verbatim.
//
// It is ours rather than go-smtp's client because a relay needs what that client does not
// offer: our EHLO name before STARTTLS, pipelining, BDAT, control over BODY=, and per-command
// timeouts (see docs/architecture.md).
package smtpclient

import (
	"bufio"
	"context"
	"crypto/tls"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"net"
	"net/textproto"
	"strconv"
	"strings"
	"time"

	"github.com/postamt/postamt/internal/smtp"
)

// Timeouts per command, RFC 5321 §4.5.3.2. Zero fields take the RFC's values.
type Timeouts struct {
	Greeting  time.Duration // 5 min
	Command   time.Duration // MAIL, RCPT, EHLO, RSET, ...: 5 min
	DataInit  time.Duration // the 354 after DATA: 2 min
	DataBlock time.Duration // each write of the body: 3 min
	DataFinal time.Duration // the reply after the end of data: 10 min
}

func (t *Timeouts) fill() {
	def := func(d *time.Duration, v time.Duration) {
		if *d <= 0 {
			*d = v
		}
	}
	def(&t.Greeting, 5*time.Minute)
	def(&t.Command, 5*time.Minute)
	def(&t.DataInit, 2*time.Minute)
	def(&t.DataBlock, 3*time.Minute)
	def(&t.DataFinal, 10*time.Minute)
}

// Limits on what a server may send us: a hostile or broken peer must not grow our memory.
const (
	maxReplyLine  = 4096
	maxReplyLines = 200
)

// Client is one SMTP connection. It is not safe for concurrent use.
type Client struct {
	conn net.Conn
	r    *bufio.Reader
	w    *bufio.Writer
	ctx  context.Context
	t    Timeouts

	ESMTP bool
	Ext   map[string]string // EHLO keywords (upper case) → parameters
	TLS   *tls.ConnectionState
	helo  string
}

// ErrProtocol is wrapped by errors for replies that are not SMTP.
var ErrProtocol = errors.New("smtpclient: malformed reply")

// New wraps an open connection. ctx bounds every operation until Close; t may be zero.
func New(ctx context.Context, conn net.Conn, t Timeouts) *Client {
	t.fill()
	return &Client{conn: conn, r: bufio.NewReaderSize(conn, 4096), w: bufio.NewWriterSize(conn, 32<<10), ctx: ctx, t: t}
}

// SetContext replaces the context bounding operations (a reused connection serves a new attempt).
func (c *Client) SetContext(ctx context.Context) { c.ctx = ctx }

// Conn is the underlying connection (a *tls.Conn after StartTLS).
func (c *Client) Conn() net.Conn { return c.conn }

// deadline sets the connection deadline to d from now, or the context's deadline if earlier.
func (c *Client) deadline(d time.Duration) error {
	if err := c.ctx.Err(); err != nil {
		return err
	}
	dl := time.Now().Add(d)
	if cd, ok := c.ctx.Deadline(); ok && cd.Before(dl) {
		dl = cd
	}
	return c.conn.SetDeadline(dl)
}

// ReadReply reads one reply, single- or multi-line.
func (c *Client) ReadReply(timeout time.Duration) (*smtp.Reply, error) {
	if err := c.deadline(timeout); err != nil {
		return nil, err
	}
	var lines []string
	code := 0
	for {
		line, err := c.readLine()
		if err != nil {
			return nil, err
		}
		if len(line) < 3 {
			return nil, fmt.Errorf("%w: %q", ErrProtocol, line)
		}
		n, err := strconv.Atoi(line[:3])
		if err != nil || n < 200 || n > 599 || (code != 0 && n != code) || (len(line) > 3 && line[3] != ' ' && line[3] != '-') {
			return nil, fmt.Errorf("%w: %q", ErrProtocol, line)
		}
		code = n
		text := ""
		if len(line) > 4 {
			text = line[4:]
		}
		lines = append(lines, text)
		if len(line) == 3 || line[3] == ' ' {
			break
		}
		if len(lines) >= maxReplyLines {
			return nil, fmt.Errorf("%w: more than %d lines", ErrProtocol, maxReplyLines)
		}
	}
	return parseReply(code, lines), nil
}

func (c *Client) readLine() (string, error) {
	var b []byte
	for {
		chunk, more, err := c.r.ReadLine()
		if err != nil {
			return "", err
		}
		b = append(b, chunk...)
		if len(b) > maxReplyLine {
			return "", fmt.Errorf("%w: line longer than %d octets", ErrProtocol, maxReplyLine)
		}
		if !more {
			return string(b), nil
		}
	}
}

// parseReply takes an RFC 3463 code off every line when the first carries one of the same class.
func parseReply(code int, lines []string) *smtp.Reply {
	var enh smtp.EnhancedCode
	if e, ok := parseEnhanced(lines[0]); ok && e[0] == code/100 {
		enh = e
		for i, l := range lines {
			if f, rest, _ := strings.Cut(l, " "); f == e.String() {
				lines[i] = rest
			} else if l == e.String() {
				lines[i] = ""
			}
		}
	}
	return smtp.NewReply(code, enh, strings.Join(lines, "\n"))
}

func parseEnhanced(s string) (smtp.EnhancedCode, bool) {
	f, _, _ := strings.Cut(s, " ")
	parts := strings.Split(f, ".")
	if len(parts) != 3 {
		return smtp.EnhancedCode{}, false
	}
	var e smtp.EnhancedCode
	for i, p := range parts {
		n, err := strconv.Atoi(p)
		if err != nil || n < 0 || n > 999 || len(p) > 3 {
			return smtp.EnhancedCode{}, false
		}
		e[i] = n
	}
	if e[0] < 2 || e[0] > 5 {
		return smtp.EnhancedCode{}, false
	}
	return e, true
}

// cmd writes a command line without flushing.
func (c *Client) cmd(format string, args ...any) error {
	s := fmt.Sprintf(format, args...)
	if strings.ContainsAny(s, "\r\n") {
		return fmt.Errorf("smtpclient: line break in command %q", s)
	}
	c.w.WriteString(s)
	_, err := c.w.WriteString("\r\n")
	return err
}

func (c *Client) flush(timeout time.Duration) error {
	if err := c.deadline(timeout); err != nil {
		return err
	}
	return c.w.Flush()
}

// roundTrip sends one command and reads its reply.
func (c *Client) roundTrip(timeout time.Duration, format string, args ...any) (*smtp.Reply, error) {
	if err := c.cmd(format, args...); err != nil {
		return nil, err
	}
	if err := c.flush(timeout); err != nil {
		return nil, err
	}
	return c.ReadReply(timeout)
}

// Greet reads the server's greeting; a reply other than 220 is returned as the error.
func (c *Client) Greet() error {
	r, err := c.ReadReply(c.t.Greeting)
	if err != nil {
		return err
	}
	if r.Code != 220 {
		return r
	}
	return nil
}

// Hello introduces us with EHLO, falling back to HELO when the server does not know EHLO
// (RFC 5321 §3.2).
func (c *Client) Hello(name string) error {
	c.helo = name
	r, err := c.roundTrip(c.t.Command, "EHLO %s", name)
	if err != nil {
		return err
	}
	if r.Code == 250 {
		c.ESMTP = true
		c.Ext = map[string]string{}
		for _, l := range strings.Split(r.Text, "\n")[1:] {
			k, v, _ := strings.Cut(strings.TrimSpace(l), " ")
			c.Ext[strings.ToUpper(k)] = v
		}
		return nil
	}
	if r.Code/100 != 5 {
		return r
	}
	c.ESMTP, c.Ext = false, map[string]string{}
	if r, err = c.roundTrip(c.t.Command, "HELO %s", name); err != nil {
		return err
	}
	if r.Code != 250 {
		return r
	}
	return nil
}

// Has reports whether the server announced an extension.
func (c *Client) Has(ext string) bool {
	_, ok := c.Ext[ext]
	return ok
}

// MaxSize is the server's SIZE limit, 0 when it announced none.
func (c *Client) MaxSize() int64 {
	n, _ := strconv.ParseInt(c.Ext["SIZE"], 10, 64)
	return n
}

// StartTLS upgrades the connection and repeats EHLO, as RFC 3207 §4.2 requires. A reply other
// than 220 is returned as the error and the connection stays usable in plain text.
func (c *Client) StartTLS(cfg *tls.Config) error {
	r, err := c.roundTrip(c.t.Command, "STARTTLS")
	if err != nil {
		return err
	}
	if r.Code != 220 {
		return r
	}
	tc := tls.Client(c.conn, cfg)
	if err := c.deadline(c.t.Command); err != nil {
		return err
	}
	if err := tc.HandshakeContext(c.ctx); err != nil {
		return &TLSError{Err: err}
	}
	st := tc.ConnectionState()
	c.conn, c.TLS = tc, &st
	c.r.Reset(tc)
	c.w.Reset(tc)
	return c.Hello(c.helo)
}

// TLSError is a failed TLS handshake: the connection is unusable.
type TLSError struct{ Err error }

func (e *TLSError) Error() string { return "TLS handshake: " + e.Err.Error() }
func (e *TLSError) Unwrap() error { return e.Err }

// Auth authenticates with PLAIN or LOGIN, whichever the server offers (PLAIN first). It refuses
// to send a password over a connection without TLS.
func (c *Client) Auth(user, pass string) error {
	if c.TLS == nil {
		return errors.New("smtpclient: refusing to authenticate without TLS")
	}
	mechs := " " + strings.ToUpper(c.Ext["AUTH"]) + " "
	switch {
	case strings.Contains(mechs, " PLAIN "):
		resp := base64.StdEncoding.EncodeToString([]byte("\x00" + user + "\x00" + pass))
		return c.authSteps("AUTH PLAIN "+resp, nil)
	case strings.Contains(mechs, " LOGIN "):
		return c.authSteps("AUTH LOGIN", []string{user, pass})
	}
	return fmt.Errorf("smtpclient: server offers no usable AUTH mechanism (%q)", strings.TrimSpace(mechs))
}

func (c *Client) authSteps(first string, answers []string) error {
	r, err := c.roundTrip(c.t.Command, "%s", first)
	for err == nil && r.Code == 334 {
		if len(answers) == 0 {
			c.roundTrip(c.t.Command, "*") // cancel an exchange we cannot finish
			return fmt.Errorf("smtpclient: unexpected AUTH challenge %q", r.Text)
		}
		r, err = c.roundTrip(c.t.Command, "%s", base64.StdEncoding.EncodeToString([]byte(answers[0])))
		answers = answers[1:]
	}
	if err != nil {
		return err
	}
	if r.Code != 235 {
		return r
	}
	return nil
}

// Envelope is one transaction's envelope. Params are complete parameter strings
// ("SIZE=1234 BODY=8BITMIME"), built by the caller from what the server announced.
type Envelope struct {
	From       string
	MailParams string
	Rcpts      []string
	RcptParams []string // per recipient, may be nil
}

// Result is a transaction's outcome. Mail is the reply to MAIL; Rcpts one reply per recipient
// (nil when MAIL failed); Data the reply to the end of data (nil when no recipient was accepted
// or MAIL failed).
type Result struct {
	Mail  *smtp.Reply
	Rcpts []*smtp.Reply
	Data  *smtp.Reply
}

// Send runs one mail transaction. An error means the connection failed or the server broke the
// protocol, and the connection must not be reused. With the error, a nil Result means nothing
// was accepted; a non-nil one means the body was being sent or its reply awaited, so the server
// may or may not have the message. SMTP refusals are not errors; they are in the Result.
func (c *Client) Send(env Envelope, body io.Reader) (*Result, error) {
	res := &Result{}
	pipe := c.Has("PIPELINING")
	chunking := c.Has("CHUNKING")
	mail := "MAIL FROM:<" + env.From + ">"
	if env.MailParams != "" {
		mail += " " + env.MailParams
	}
	if err := c.cmd("%s", mail); err != nil {
		return nil, err
	}
	if !pipe {
		if err := c.flush(c.t.Command); err != nil {
			return nil, err
		}
		r, err := c.ReadReply(c.t.Command)
		if err != nil {
			return nil, err
		}
		if res.Mail = r; r.Code != 250 {
			return res, nil
		}
	}
	for i, rc := range env.Rcpts {
		line := "RCPT TO:<" + rc + ">"
		if i < len(env.RcptParams) && env.RcptParams[i] != "" {
			line += " " + env.RcptParams[i]
		}
		if err := c.cmd("%s", line); err != nil {
			return nil, err
		}
		if !pipe {
			if err := c.flush(c.t.Command); err != nil {
				return nil, err
			}
			r, err := c.ReadReply(c.t.Command)
			if err != nil {
				return nil, err
			}
			res.Rcpts = append(res.Rcpts, r)
		}
	}
	// RFC 2920 §3.1: DATA ends a pipelined group; BDAT is sent only once the recipients are known.
	sentData := false
	if pipe && !chunking {
		if err := c.cmd("DATA"); err != nil {
			return nil, err
		}
		sentData = true
	}
	if pipe {
		if err := c.flush(c.t.Command); err != nil {
			return nil, err
		}
		r, err := c.ReadReply(c.t.Command)
		if err != nil {
			return nil, err
		}
		res.Mail = r
		for range env.Rcpts {
			r, err := c.ReadReply(c.t.Command)
			if err != nil {
				return nil, err
			}
			res.Rcpts = append(res.Rcpts, r)
		}
		if res.Mail.Code != 250 {
			res.Rcpts = nil
		}
	}
	accepted := res.Mail.Code == 250
	if accepted {
		accepted = false
		for _, r := range res.Rcpts {
			if r.Code/100 == 2 {
				accepted = true
			}
		}
	}
	if chunking {
		if !accepted {
			return res, c.reset()
		}
		r, err := c.bdat(body)
		if err != nil {
			return res, err // the data may have arrived: the caller must not treat this as unsent
		}
		res.Data = r
		return res, nil
	}
	if !sentData {
		if !accepted {
			return res, c.reset()
		}
		if err := c.cmd("DATA"); err != nil {
			return nil, err
		}
		if err := c.flush(c.t.Command); err != nil {
			return nil, err
		}
	}
	r, err := c.ReadReply(c.t.DataInit)
	if err != nil {
		return nil, err
	}
	if r.Code != 354 {
		if accepted {
			res.Data = r // the transaction failed after the recipients were accepted
		}
		return res, nil
	}
	if !accepted {
		// A server that answers 354 with no valid recipient (RFC 2920 says it must not) gets an
		// empty message, which it must then refuse.
		c.w.WriteString(".\r\n")
		if err := c.flush(c.t.DataBlock); err != nil {
			return nil, err
		}
		_, err := c.ReadReply(c.t.DataFinal)
		return res, err
	}
	if err := c.data(body); err != nil {
		return res, err
	}
	if res.Data, err = c.ReadReply(c.t.DataFinal); err != nil {
		return res, err // the server may have taken the message: the caller must not assume either way
	}
	return res, nil
}

// reset ends a transaction that will send no body.
func (c *Client) reset() error {
	r, err := c.roundTrip(c.t.Command, "RSET")
	if err != nil {
		return err
	}
	if r.Code != 250 {
		return fmt.Errorf("smtpclient: RSET refused: %s", r.Line())
	}
	return nil
}

// Reset starts over on a connection kept for reuse; an error means it is not usable.
func (c *Client) Reset() error { return c.reset() }

// blockWriter refreshes the write deadline for each block of the body.
type blockWriter struct{ c *Client }

func (b blockWriter) Write(p []byte) (int, error) {
	if err := b.c.deadline(b.c.t.DataBlock); err != nil {
		return 0, err
	}
	return b.c.conn.Write(p)
}

// data sends a dot-stuffed body (line ends must already be CRLF) and the final dot.
func (c *Client) data(body io.Reader) error {
	if err := c.w.Flush(); err != nil {
		return err
	}
	bw := bufio.NewWriterSize(blockWriter{c}, 64<<10)
	dw := textproto.NewWriter(bw).DotWriter()
	if _, err := io.Copy(dw, body); err != nil {
		return err
	}
	if err := dw.Close(); err != nil {
		return err
	}
	return bw.Flush()
}

// bdat sends the body in BDAT chunks, the last one marked LAST, pipelined, and returns the reply
// that decides the transaction (the first refusal, or the reply to LAST).
func (c *Client) bdat(body io.Reader) (*smtp.Reply, error) {
	const chunk = 256 << 10
	br := bufio.NewReaderSize(body, 4096)
	buf := make([]byte, chunk)
	chunks := 0
	for {
		n, err := io.ReadFull(br, buf)
		if err != nil && err != io.EOF && err != io.ErrUnexpectedEOF {
			return nil, err
		}
		last := err != nil
		if !last {
			if _, perr := br.Peek(1); perr == io.EOF {
				last = true
			} else if perr != nil {
				return nil, perr
			}
		}
		if last {
			c.cmd("BDAT %d LAST", n)
		} else {
			c.cmd("BDAT %d", n)
		}
		c.w.Write(buf[:n])
		chunks++
		if err := c.flush(c.t.DataBlock); err != nil {
			return nil, err
		}
		if last {
			break
		}
	}
	var decisive *smtp.Reply
	for i := 0; i < chunks; i++ {
		timeout := c.t.Command
		if i == chunks-1 {
			timeout = c.t.DataFinal
		}
		r, err := c.ReadReply(timeout)
		if err != nil {
			return nil, err
		}
		if decisive == nil && (r.Code != 250 || i == chunks-1) {
			decisive = r
		}
	}
	return decisive, nil
}

// Quit ends the session politely and closes the connection.
func (c *Client) Quit() error {
	c.deadline(10 * time.Second)
	c.cmd("QUIT")
	if c.w.Flush() == nil {
		c.ReadReply(10 * time.Second)
	}
	return c.conn.Close()
}

// Close closes the connection without QUIT.
func (c *Client) Close() error { return c.conn.Close() }
