package smtpserver

import (
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
	"time"

	"github.com/postamt/postamt/internal/mail"
	"github.com/postamt/postamt/internal/policy"
	"github.com/postamt/postamt/internal/smtp"
	"github.com/postamt/postamt/internal/spool"
)

var (
	errNeedHelo   = smtp.NewReply(503, smtp.CodeInvalidCommand, "Send HELO or EHLO first")
	errNeedMail   = smtp.NewReply(503, smtp.CodeInvalidCommand, "Send MAIL FROM first")
	errNestedMail = smtp.NewReply(503, smtp.CodeInvalidCommand, "Sender already given; send RSET to start over")
	errNeedRcpt   = smtp.NewReply(554, smtp.CodeInvalidCommand, "No valid recipients")
	errNeedUTF8   = smtp.NewReply(553, smtp.CodeNeedsUTF8, "Non-ASCII address requires the SMTPUTF8 parameter")
	errBareEOL    = smtp.NewReply(550, smtp.CodeSyntax, "Message refused: bare CR or LF in message data; lines must end with CRLF (RFC 5321 section 2.3.8)")
)

func (s *session) abortTx() {
	if s.tx != nil && s.tx.bdat != nil {
		s.tx.bdat.Abort()
	}
	s.tx = nil
}

// cutPrefixFold removes a case-insensitive prefix such as "FROM:".
func cutPrefixFold(s, prefix string) (string, bool) {
	if len(s) < len(prefix) || !strings.EqualFold(s[:len(prefix)], prefix) {
		return s, false
	}
	return s[len(prefix):], true
}

func (s *session) cmdMail(args string) {
	if s.helo == "" {
		s.reply(errNeedHelo)
		return
	}
	if s.tx != nil {
		s.reply(errNestedMail)
		return
	}
	if s.srv.opts.RequireAuth && s.authUser == "" {
		s.reply(errAuthRequired)
		return
	}
	arg, ok := cutPrefixFold(args, "FROM:")
	if !ok {
		s.reply(smtp.NewReply(501, smtp.EnhancedCode{5, 5, 4}, "Syntax: MAIL FROM:<address>"))
		return
	}
	path, rest, err := smtp.ParsePath(arg, true)
	if err != nil {
		s.reply(smtp.NewReply(501, smtp.CodeBadSenderSyntax, "Bad sender address syntax"))
		return
	}
	if rest != "" && !s.esmtp {
		s.reply(smtp.NewReply(555, smtp.CodeBadParams, "Parameters need EHLO"))
		return
	}
	params, reply := smtp.ParseMailParams(rest, s.srv.opts.Limits.MaxMessageSize)
	if reply != nil {
		s.reply(reply)
		return
	}
	if !params.SMTPUTF8 && !path.Addr.IsASCII() {
		s.reply(errNeedUTF8)
		return
	}
	if path.Addr.Domain == "" && !path.Null {
		s.reply(smtp.NewReply(501, smtp.CodeBadSenderSyntax, "Sender address needs a domain"))
		return
	}
	// A source route on the sender is dropped (RFC 5321 Appendix C): replies go to the mailbox.
	path.SourceRoute = false
	pt := &policy.Txn{Conn: s.pc, From: path.Addr.String(), Params: params}
	if path.Null {
		pt.From = ""
	}
	if r := s.srv.opts.Policy.Mail(s.ctx, pt); r.Refused() {
		s.srv.log.Info("sender refused by policy", "session", s.id, "client", s.ip.String(), "from", path.String(),
			"checks", policy.Summary(r.Outcomes), "reply", r.Reply.Line())
		s.rejected++
		s.reply(r.Reply)
		return
	}
	s.tx = &txn{from: path, params: params, pt: pt}
	s.reply(smtp.NewReply(250, smtp.CodeSenderOK, "Sender OK"))
}

func (s *session) cmdRcpt(args string) {
	if s.tx == nil {
		s.reply(errNeedMail)
		return
	}
	arg, ok := cutPrefixFold(args, "TO:")
	if !ok {
		s.reply(smtp.NewReply(501, smtp.EnhancedCode{5, 5, 4}, "Syntax: RCPT TO:<address>"))
		return
	}
	path, rest, err := smtp.ParsePath(arg, true)
	if err != nil || path.Null {
		s.reply(smtp.NewReply(501, smtp.CodeBadDestSyntax, "Bad recipient address syntax"))
		return
	}
	if !s.tx.params.SMTPUTF8 && !path.Addr.IsASCII() {
		s.reply(errNeedUTF8)
		return
	}
	params, reply := smtp.ParseRcptParams(rest)
	if reply != nil {
		s.reply(reply)
		return
	}
	// RFC 5321 §4.5.3.1.10: a recipient over the limit gets 452 and the client sends it later.
	if s.tx.rcptCmds >= s.srv.opts.Limits.MaxRecipients {
		s.reply(smtp.NewReply(452, smtp.CodeTooManyRcpts, "Too many recipients"))
		return
	}
	rcpts, reply := s.srv.opts.Router.Resolve(path, s.authUser != "")
	if reply != nil {
		s.srv.log.Info("recipient rejected", "session", s.id, "client", s.ip.String(), "from", s.tx.from.String(),
			"to", path.String(), "reply", reply.Line())
		s.rejected++
		s.reply(reply)
		return
	}
	if r := s.srv.opts.Policy.Rcpt(s.ctx, s.tx.pt, path, rcpts); r.Refused() {
		s.srv.log.Info("recipient refused by policy", "session", s.id, "client", s.ip.String(), "from", s.tx.from.String(),
			"to", path.String(), "checks", policy.Summary(r.Outcomes), "reply", r.Reply.Line())
		s.rejected++
		s.reply(r.Reply)
		return
	}
	notify := strings.Join(params.Notify, ",")
	for _, r := range rcpts {
		r.ORCPT, r.Notify = params.ORCPT, notify
		s.tx.addRcpt(r)
	}
	s.tx.rcptCmds++
	s.tx.pt.Rcpts = s.tx.rcpts
	s.reply(smtp.NewReply(250, smtp.CodeDestOK, "Recipient OK"))
}

// addRcpt adds r unless the transaction already delivers to the same place (two aliases that
// expand to one mailbox deliver once).
func (t *txn) addRcpt(r mail.Recipient) {
	for _, x := range t.rcpts {
		if x.Addr == r.Addr && x.Route == r.Route {
			return
		}
	}
	t.rcpts = append(t.rcpts, r)
}

// beginBody creates the spool file and writes our Received header (RFC 5321 §4.4) first.
func (s *session) beginBody() (*spool.Writer, *smtp.Reply) {
	w, err := s.srv.opts.Intake.Create()
	if err != nil {
		s.srv.log.Error("cannot create spool file", "session", s.id, "err", err)
		return nil, smtp.ReplyFor(err, s.id)
	}
	w.WriteString(s.received(w.ID()))
	return w, nil
}

func (s *session) cmdData(args string) {
	switch {
	case s.tx == nil:
		s.reply(errNeedMail)
		return
	case s.tx.bdat != nil:
		s.reply(smtp.NewReply(503, smtp.CodeInvalidCommand, "DATA cannot follow BDAT"))
		return
	case len(s.tx.rcpts) == 0:
		s.reply(errNeedRcpt)
		return
	case args != "":
		s.reply(smtp.NewReply(501, smtp.EnhancedCode{5, 5, 4}, "DATA takes no parameters"))
		return
	}
	w, reply := s.beginBody()
	if reply != nil {
		s.reply(reply)
		return
	}
	s.reply(smtp.NewReply(354, smtp.EnhancedCode{}, "End data with <CR><LF>.<CR><LF>"))
	if err := s.flush(); err != nil {
		w.Abort()
		s.quit, s.end = true, "write error"
		return
	}
	s.conn.SetReadDeadline(time.Now().Add(s.srv.opts.Limits.DataTimeout))
	sink := &dataSink{w: w, max: s.srv.opts.Limits.MaxMessageSize}
	if err := readDot(s.r, sink); err != nil {
		w.Abort()
		s.abortTx()
		s.dataReadFailed(err)
		return
	}
	s.finishBody(w, sink)
}

func (s *session) dataReadFailed(err error) {
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		s.reply(smtp.NewReply(421, smtp.CodeConnTimeout, s.srv.opts.Hostname+" Timeout during data transfer, closing connection"))
		s.flush()
		s.end = "data timeout"
	} else {
		s.end = "disconnected during data"
	}
	s.quit = true
}

// finishBody turns a completely received body into the final reply: refused, or durably queued.
func (s *session) finishBody(w *spool.Writer, sink *dataSink) {
	tx := s.tx
	s.tx = nil
	var reply *smtp.Reply
	switch {
	case sink.tooBig:
		reply = smtp.Replyf(552, smtp.CodeMsgTooBig, "Message exceeds the size limit of %d bytes", sink.max)
	case sink.bad:
		reply = errBareEOL
	case sink.err != nil:
		reply = smtp.ReplyFor(sink.err, s.id)
	}
	pt := tx.pt
	if reply == nil && s.srv.opts.Policy != nil {
		pt.ID, pt.Rcpts = w.ID(), tx.rcpts
		r := s.srv.opts.Policy.Data(s.ctx, pt, spooled{w})
		if r.Refused() {
			reply = r.Reply
		} else if len(pt.Headers) > 0 {
			w.Prepend([]byte(strings.Join(pt.Headers, "\r\n") + "\r\n"))
		}
	}
	if reply != nil {
		w.Abort()
		s.rejected++
		s.srv.Stats.Rejected.Add(1)
		s.srv.log.Info("message rejected", "session", s.id, "client", s.ip.String(), "from", tx.from.String(), "reply", reply.Line(),
			"checks", policy.Summary(pt.Outcomes))
		s.reply(reply)
		return
	}
	env := &mail.Envelope{
		From: tx.from.Addr.String(), Rcpts: tx.rcpts, ReceivedAt: s.srv.opts.Now(),
		SMTPUTF8: tx.params.SMTPUTF8, Body: tx.params.Body, Ret: tx.params.Ret, EnvID: tx.params.EnvID,
		Client: s.ip.String(), Helo: s.helo,
	}
	if pt.Action == policy.Quarantine {
		env.Quarantine = pt.Reason
	}
	if tx.from.Null {
		env.From = ""
	}
	start := time.Now()
	if err := s.srv.opts.Intake.Accept(s.ctx, env, w); err != nil {
		reply = smtp.ReplyFor(err, w.ID())
		s.srv.log.Error("message not queued", "session", s.id, "id", w.ID(), "err", err, "reply", reply.Line())
		s.rejected++
		s.reply(reply)
		return
	}
	s.messages++
	s.srv.Stats.Messages.Add(1)
	if s.srv.opts.CommitLatency != nil {
		s.srv.opts.CommitLatency(time.Since(start))
	}
	attrs := []any{"session", s.id, "id", env.ID, "client", s.ip.String(), "from", tx.from.String(),
		"rcpts", len(env.Rcpts), "size", env.Size, "commit", time.Since(start).Round(time.Microsecond)}
	if len(pt.Outcomes) > 0 {
		attrs = append(attrs, "checks", policy.Summary(pt.Outcomes))
	}
	if env.Quarantine != "" {
		attrs = append(attrs, "quarantine", env.Quarantine)
	}
	s.srv.log.Info("queued", attrs...)
	s.reply(smtp.NewReply(250, smtp.CodeOK, "OK: queued as "+env.ID))
}

func (s *session) cmdBdat(args string) {
	f := strings.Fields(args)
	if len(f) < 1 || len(f) > 2 || (len(f) == 2 && !strings.EqualFold(f[1], "LAST")) {
		// Without a valid size we cannot know where the chunk ends: the stream is lost.
		s.reply(smtp.NewReply(501, smtp.EnhancedCode{5, 5, 4}, "Syntax: BDAT size [LAST]; closing connection"))
		s.quit, s.end = true, "BDAT syntax"
		return
	}
	size, err := strconv.ParseInt(f[0], 10, 64)
	if err != nil || size < 0 {
		s.reply(smtp.NewReply(501, smtp.EnhancedCode{5, 5, 4}, "Syntax: BDAT size [LAST]; closing connection"))
		s.quit, s.end = true, "BDAT syntax"
		return
	}
	last := len(f) == 2
	// The chunk is on its way whatever we answer, so it is read (or discarded) in every case.
	var sinkW io.Writer = io.Discard
	var refuse *smtp.Reply
	switch {
	case s.tx == nil:
		refuse = errNeedMail
	case len(s.tx.rcpts) == 0:
		refuse = errNeedRcpt
	case s.tx.bdat == nil:
		w, reply := s.beginBody()
		if reply != nil {
			refuse = reply
			break
		}
		s.tx.bdat, s.tx.bdatCheck = w, &lineCheck{}
	}
	var sink *dataSink
	if refuse == nil {
		sink = &dataSink{w: s.tx.bdat, max: s.srv.opts.Limits.MaxMessageSize, n: s.tx.bdatSize}
		sinkW = chunkWriter{sink: sink, check: s.tx.bdatCheck}
	}
	s.conn.SetReadDeadline(time.Now().Add(s.srv.opts.Limits.DataTimeout))
	if _, err := io.CopyN(sinkW, s.r, size); err != nil {
		s.abortTx()
		s.dataReadFailed(err)
		return
	}
	if refuse != nil {
		s.abortTx()
		s.reply(refuse)
		return
	}
	s.tx.bdatSize = sink.n
	if last && s.tx.bdatCheck.pendingCR {
		sink.bad = true
	}
	if sink.tooBig || sink.bad || sink.err != nil || last {
		w := s.tx.bdat
		s.tx.bdat = nil
		s.finishBody(w, sink)
		return
	}
	s.reply(smtp.Replyf(250, smtp.CodeOK, "%d octets received", size))
}

// received builds our trace header (RFC 5321 §4.4). The protocol keyword follows RFC 3848 and
// RFC 6531 §3.7.3; TLS details go in a comment, as Postfix and others write them.
func (s *session) received(id string) string {
	proto := "SMTP"
	if s.esmtp {
		proto = "ESMTP"
	}
	if s.tx != nil && s.tx.params.SMTPUTF8 {
		proto = "UTF8SMTP"
	}
	if s.tls != nil {
		proto += "S"
	}
	var b strings.Builder
	fmt.Fprintf(&b, "Received: from %s ([%s])\r\n\tby %s (Postamt) with %s id %s", s.helo, s.ip.String(), s.srv.opts.Hostname, proto, id)
	if s.tls != nil {
		fmt.Fprintf(&b, "\r\n\t(version=%s cipher=%s)", tls.VersionName(s.tls.Version), tls.CipherSuiteName(s.tls.CipherSuite))
	}
	// Naming the recipient only when there is one keeps Bcc recipients private.
	if s.tx != nil && s.tx.rcptCmds == 1 && len(s.tx.rcpts) == 1 {
		fmt.Fprintf(&b, "\r\n\tfor <%s>", s.tx.rcpts[0].Orig)
	}
	fmt.Fprintf(&b, ";\r\n\t%s\r\n", s.srv.opts.Now().Format(time.RFC1123Z))
	return b.String()
}

// spooled lets DATA checks read the body being received.
type spooled struct{ w *spool.Writer }

func (m spooled) Size() int64                  { return m.w.Size() }
func (m spooled) Open() (io.ReadCloser, error) { return m.w.Reader() }
