// Package milter lets any milter application (OpenDKIM, rspamd's milter proxy, custom filters)
// take part in the check chain, using the milter protocol client of github.com/d--j/go-milter.
//
// One milter session (one socket) serves one SMTP connection: connect, HELO, MAIL and RCPT are
// sent at those stages, the header, body and end-of-message at the end of data, so a milter can
// refuse early as with Postfix. What we honour from the milter: accept, continue, reject (and
// reject with its own code), tempfail, discard (kept in quarantine rather than dropped, so
// nothing vanishes unseen), quarantine, and adding header fields (add and insert; both are put
// at the top of the message, where trace and authentication headers belong), changing and
// deleting header fields and replacing the body (the message is rewritten before it is stored,
// through policy.Replacer), and changing the sender or adding and removing recipients (a
// policy.EnvelopeEdit the session applies; added recipients are routed like an authenticated
// client's).
package milter

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"strconv"
	"strings"
	"sync"
	"time"

	gomilter "github.com/d--j/go-milter"

	"github.com/postamt/postamt/internal/mail"
	"github.com/postamt/postamt/internal/policy"
	"github.com/postamt/postamt/internal/smtp"
)

// Options configure one milter.
type Options struct {
	Name     string // for logs and replies ("opendkim")
	Network  string // "tcp" or "unix"
	Address  string
	Hostname string // our name, sent as the j macro
	// Timeout bounds each protocol step when the chain's context has no deadline.
	Timeout time.Duration
}

// Check is one milter in the chain.
type Check struct {
	o   Options
	key string // in policy.Conn.Values
}

func New(o Options) (*Check, error) {
	if o.Name == "" || o.Address == "" {
		return nil, errors.New("milter: name and address are required")
	}
	if o.Network != "tcp" && o.Network != "unix" {
		return nil, fmt.Errorf("milter %s: network %q must be tcp or unix", o.Name, o.Network)
	}
	if o.Timeout <= 0 {
		o.Timeout = 30 * time.Second
	}
	return &Check{o: o, key: "milter:" + o.Name}, nil
}

// client is a library client for one already dialled connection: the library dials by itself
// without a context, we dial with the chain's.
func (c *Check) client(conn net.Conn) *gomilter.Client {
	return gomilter.NewClient(c.o.Network, c.o.Address,
		// Offered in full, as Postfix does: libmilter filters such as OpenDKIM refuse to
		// negotiate unless the MTA offers every action they might use (OpenDKIM wants header
		// changes to remove forged Authentication-Results). What we cannot apply is logged.
		gomilter.WithActions(gomilter.AllClientSupportedActionMasks),
		gomilter.WithDialer(dialed{conn}),
		// The chain's context is the real bound (ctxConn); these only cap a single read/write.
		gomilter.WithReadTimeout(c.o.Timeout), gomilter.WithWriteTimeout(c.o.Timeout),
	)
}

func (c *Check) Name() string { return c.o.Name }

// state is one SMTP connection's milter session.
type state struct {
	mu     sync.Mutex
	sess   *gomilter.ClientSession
	conn   *ctxConn
	macros *gomilter.MacroBag
	err    error // the session broke: every later stage reports it
	last   *gomilter.Action
	log    *slog.Logger
	helo   string
	inTxn  bool // MAIL sent, end of message not yet
	rcpts  int
}

// fail breaks the session for the rest of the connection and says why, once.
func (st *state) fail(err error) error {
	if st.err == nil && st.log != nil {
		st.log.Warn("milter failed", "err", err)
	}
	st.err = err
	st.close()
	return err
}

// session returns the connection's milter session, opening it (and sending connect) on first
// use, so a milter added to a running chain or a skipped connect stage still works.
func (c *Check) session(ctx context.Context, pc *policy.Conn) (*state, error) {
	st := pc.Values[c.key].(*state)
	if st.err != nil {
		return st, st.err
	}
	if st.sess != nil {
		st.conn.use(ctx)
		return st, nil
	}
	st.macros = gomilter.NewMacroBag()
	st.macros.Set(gomilter.MacroMTAFQDN, c.o.Hostname)
	st.macros.Set(gomilter.MacroDaemonName, "postamt")
	cc, err := dialCtx(ctx, c.o.Network, c.o.Address)
	if err != nil {
		return st, st.fail(fmt.Errorf("milter %s: %w", c.o.Name, err))
	}
	st.conn = cc
	sess, err := c.client(cc).Session(st.macros)
	if err != nil {
		cc.Close()
		return st, st.fail(fmt.Errorf("milter %s: %w", c.o.Name, err))
	}
	st.sess = sess
	family, port, addr := gomilter.FamilyUnknown, uint16(0), ""
	if ip := pc.RemoteIP; ip.IsValid() {
		family, addr = gomilter.FamilyInet, ip.Unmap().String()
		if ip.Unmap().Is6() {
			family = gomilter.FamilyInet6
		}
		if ta, ok := pc.RemoteAddr.(*net.TCPAddr); ok {
			port = uint16(ta.Port)
		}
	}
	if la, ok := pc.LocalAddr.(*net.TCPAddr); ok {
		st.macros.Set(gomilter.MacroIfAddr, la.IP.String())
	}
	// Without reverse DNS here the client's name is its literal address, as Postfix sends it.
	name := "[" + addr + "]"
	if addr == "" {
		name = "unknown"
	}
	act, err := sess.Conn(name, family, port, addr)
	return st, c.result(st, act, err, "connect")
}

// result turns a protocol error into a broken session and keeps the action for the caller.
func (c *Check) result(st *state, act *gomilter.Action, err error, stage string) error {
	if err != nil {
		return st.fail(fmt.Errorf("milter %s: %s: %w", c.o.Name, stage, err))
	}
	st.last = act
	return nil
}

func (st *state) close() {
	if st.sess != nil {
		st.sess.Close()
		st.sess = nil
	}
}

func (c *Check) CloseConn(pc *policy.Conn) {
	if st, _ := pc.Values[c.key].(*state); st != nil {
		st.mu.Lock()
		defer st.mu.Unlock()
		if st.conn != nil {
			st.conn.use(context.Background())
			st.conn.SetDeadline(time.Now().Add(time.Second)) // QUIT must not hang the session's end
		}
		st.close()
	}
}

func (c *Check) CheckConn(ctx context.Context, pc *policy.Conn) policy.Verdict {
	st, err := c.lock(ctx, pc)
	defer st.mu.Unlock()
	if err != nil {
		return c.failed(err)
	}
	return c.verdict(st.take(), "connect")
}

// lock opens the session if needed and holds its lock; the caller unlocks st.mu.
func (c *Check) lock(ctx context.Context, pc *policy.Conn) (*state, error) {
	st, _ := pc.Values[c.key].(*state)
	if st == nil {
		st = &state{}
		if pc.Logger != nil {
			st.log = pc.Logger.With("session", pc.SessionID, "milter", c.o.Name)
		}
		pc.Values[c.key] = st
	}
	st.mu.Lock()
	_, err := c.session(ctx, pc)
	return st, err
}

func (c *Check) ensureHelo(st *state, pc *policy.Conn) error {
	if st.helo != "" || pc.Helo == "" {
		return nil
	}
	st.helo = pc.Helo
	act, err := st.sess.Helo(pc.Helo)
	if err := c.result(st, act, err, "helo"); err != nil {
		return err
	}
	return nil
}

func (c *Check) CheckHelo(ctx context.Context, pc *policy.Conn) policy.Verdict {
	st, err := c.lock(ctx, pc)
	defer st.mu.Unlock()
	if err != nil {
		return c.failed(err)
	}
	st.take()
	if st.helo != "" && st.helo != pc.Helo {
		// A second EHLO (after STARTTLS, say) starts over: the milter protocol allows one HELO
		// per connection state, so the old session goes and a new one says connect again.
		st.close()
		st.helo, st.inTxn = "", false
		if _, err := c.session(ctx, pc); err != nil {
			return c.failed(err)
		}
		st.take()
	}
	if err := c.ensureHelo(st, pc); err != nil {
		return c.failed(err)
	}
	return c.verdict(st.take(), "helo")
}

func (c *Check) ensureMail(st *state, t *policy.Txn) error {
	if err := c.ensureHelo(st, t.Conn); err != nil {
		return err
	}
	if st.inTxn {
		// The previous transaction ended without an end of message (RSET, a refusal).
		if err := st.sess.Abort(nil); err != nil {
			return c.result(st, nil, err, "abort")
		}
	}
	st.inTxn, st.rcpts = true, 0
	if t.Conn.AuthUser != "" {
		st.macros.Set(gomilter.MacroAuthAuthen, t.Conn.AuthUser)
	}
	st.macros.Set(gomilter.MacroMailAddr, t.From)
	act, err := st.sess.Mail(t.From, mailArgs(t.Params))
	return c.result(st, act, err, "mail")
}

func mailArgs(p smtp.MailParams) string {
	var a []string
	if p.Body != "" {
		a = append(a, "BODY="+p.Body)
	}
	if p.SMTPUTF8 {
		a = append(a, "SMTPUTF8")
	}
	return strings.Join(a, " ")
}

func (c *Check) CheckMail(ctx context.Context, t *policy.Txn) policy.Verdict {
	st, err := c.lock(ctx, t.Conn)
	defer st.mu.Unlock()
	if err != nil {
		return c.failed(err)
	}
	st.take()
	if err := c.ensureMail(st, t); err != nil {
		return c.failed(err)
	}
	return c.verdict(st.take(), "mail")
}

func (c *Check) CheckRcpt(ctx context.Context, t *policy.Txn, rcpt smtp.Path, _ []mail.Recipient) policy.Verdict {
	st, err := c.lock(ctx, t.Conn)
	defer st.mu.Unlock()
	if err != nil {
		return c.failed(err)
	}
	st.take()
	if !st.inTxn {
		if err := c.ensureMail(st, t); err != nil {
			return c.failed(err)
		}
		if v := c.verdict(st.take(), "mail"); v.Action >= policy.Tempfail {
			return v
		}
	}
	st.macros.Set(gomilter.MacroRcptAddr, rcpt.Addr.String())
	act, err := st.sess.Rcpt(rcpt.Addr.String(), "")
	if err := c.result(st, act, err, "rcpt"); err != nil {
		return c.failed(err)
	}
	st.rcpts++
	return c.verdict(st.take(), "rcpt")
}

func (c *Check) CheckData(ctx context.Context, t *policy.Txn, m policy.Message) policy.Verdict {
	st, err := c.lock(ctx, t.Conn)
	defer st.mu.Unlock()
	if err != nil {
		return c.failed(err)
	}
	st.take()
	if !st.inTxn {
		if err := c.ensureMail(st, t); err != nil {
			return c.failed(err)
		}
		st.take()
	}
	if st.rcpts == 0 {
		for _, r := range t.Rcpts {
			act, err := st.sess.Rcpt(r.Addr, "")
			if err := c.result(st, act, err, "rcpt"); err != nil {
				return c.failed(err)
			}
			st.take()
		}
	}
	st.inTxn = false // from here the session either ends the message or breaks
	st.macros.Set(gomilter.MacroQueueId, t.ID)
	v, err := c.message(st, m)
	if err != nil {
		return c.failed(st.fail(fmt.Errorf("milter %s: %w", c.o.Name, err)))
	}
	return v
}

// message sends DATA, the header fields, the body and end-of-message.
func (c *Check) message(st *state, m policy.Message) (policy.Verdict, error) {
	act, err := st.sess.DataStart()
	if err != nil {
		return policy.Verdict{}, err
	}
	if act.StopProcessing() || act.Type == gomilter.ActionDiscard {
		c.abortAfterStop(st)
		return c.verdict(act, "data"), nil
	}
	r, err := m.Open()
	if err != nil {
		return policy.Verdict{}, err
	}
	defer r.Close()
	br := newHeaderReader(r)
	for {
		name, value, err := br.next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return policy.Verdict{}, err
		}
		act, err := st.sess.HeaderField(name, value, nil)
		if err != nil {
			return policy.Verdict{}, err
		}
		if act.StopProcessing() || act.Type == gomilter.ActionDiscard || act.Type == gomilter.ActionAccept {
			c.abortAfterStop(st)
			return c.verdict(act, "header"), nil
		}
	}
	act, err = st.sess.HeaderEnd()
	if err != nil {
		return policy.Verdict{}, err
	}
	if act.StopProcessing() || act.Type == gomilter.ActionDiscard || act.Type == gomilter.ActionAccept {
		c.abortAfterStop(st)
		return c.verdict(act, "header"), nil
	}
	body := br.body()
	chunk := make([]byte, 64<<10) // the protocol's smallest maximum chunk (SMFI_V2: 64 KiB - 1)
	chunk = chunk[:len(chunk)-1]
	for {
		n, rerr := io.ReadFull(body, chunk)
		if n > 0 {
			act, err := st.sess.BodyChunk(chunk[:n])
			if err != nil {
				return policy.Verdict{}, err
			}
			if act.Type != gomilter.ActionContinue {
				// A final answer before the end: the milter needs no end-of-message.
				if act.StopProcessing() || act.Type == gomilter.ActionDiscard || act.Type == gomilter.ActionAccept {
					c.abortAfterStop(st)
				}
				return c.verdict(act, "body"), nil
			}
			if st.sess.Skip() {
				break
			}
		}
		if rerr == io.EOF || rerr == io.ErrUnexpectedEOF {
			break
		}
		if rerr != nil {
			return policy.Verdict{}, rerr
		}
	}
	mods, act, err := st.sess.End()
	if err != nil {
		return policy.Verdict{}, err
	}
	v := c.verdict(act, "end")
	c.applyMods(&v, mods, st, m)
	return v, nil
}

// abortAfterStop resets the milter's message state after it decided early.
func (c *Check) abortAfterStop(st *state) {
	if err := st.sess.Abort(nil); err != nil {
		st.fail(fmt.Errorf("milter %s: abort: %w", c.o.Name, err))
	}
}

func (c *Check) applyMods(v *policy.Verdict, mods []gomilter.ModifyAction, st *state, msg policy.Message) {
	var rewrite []gomilter.ModifyAction // header changes and body replacement, applied together
	for _, m := range mods {
		switch m.Type {
		case gomilter.ActionAddHeader, gomilter.ActionInsertHeader:
			if h, ok := headerField(m.HeaderName, m.HeaderValue); ok {
				v.Headers = append(v.Headers, h)
			}
		case gomilter.ActionChangeHeader, gomilter.ActionReplaceBody:
			rewrite = append(rewrite, m)
		case gomilter.ActionChangeFrom:
			c.edit(v).SetFrom, c.edit(v).From = true, m.From
		case gomilter.ActionAddRcpt:
			c.edit(v).AddRcpts = append(c.edit(v).AddRcpts, m.Rcpt)
		case gomilter.ActionDelRcpt:
			c.edit(v).DelRcpts = append(c.edit(v).DelRcpts, m.Rcpt)
		case gomilter.ActionQuarantine:
			if v.Action < policy.Quarantine {
				v.Action = policy.Quarantine
				v.Result = "quarantine"
				v.Reason = fmt.Sprintf("milter %s: %s", c.o.Name, printable(m.Reason, 200))
			}
		default:
			what := modName(m)
			v.Reason = strings.TrimSpace(v.Reason + " (ignored: " + what + ")")
			if st.log != nil {
				st.log.Warn("milter modification not supported, ignored", "modification", what)
			}
		}
	}
	if len(rewrite) > 0 {
		if err := rewriteMessage(msg, rewrite); err != nil {
			v.Reason = strings.TrimSpace(v.Reason + " (not applied: " + err.Error() + ")")
			if st.log != nil {
				st.log.Warn("milter modification not applied", "milter", c.o.Name, "err", err)
			}
		} else if v.Action == policy.Continue {
			v.Result = "modified"
		}
	}
	if v.Edit != nil && v.Action == policy.Continue && v.Result == "" {
		v.Result = "envelope"
	}
	if len(v.Headers) > 0 && v.Action == policy.Continue && v.Result == "" {
		v.Result = "headers"
	}
}

func (c *Check) edit(v *policy.Verdict) *policy.EnvelopeEdit {
	if v.Edit == nil {
		v.Edit = &policy.EnvelopeEdit{}
	}
	return v.Edit
}

func modName(m gomilter.ModifyAction) string {
	switch m.Type {
	case gomilter.ActionChangeHeader:
		if m.HeaderValue == "" {
			return fmt.Sprintf("delete header %s #%d", printable(m.HeaderName, 60), m.HeaderIndex)
		}
		return fmt.Sprintf("change header %s #%d", printable(m.HeaderName, 60), m.HeaderIndex)
	case gomilter.ActionReplaceBody:
		return "replace body"
	case gomilter.ActionAddRcpt:
		return "add recipient " + printable(m.Rcpt, 100)
	case gomilter.ActionDelRcpt:
		return "delete recipient " + printable(m.Rcpt, 100)
	case gomilter.ActionChangeFrom:
		return "change sender to " + printable(m.From, 100)
	}
	return fmt.Sprintf("modification %d", m.Type)
}

// headerField builds "Name: value" from a milter's header, refusing names and values that
// would break the header block. The milter sends folded values with LF or CRLF line ends.
func headerField(name, value string) (string, bool) {
	if name == "" || len(name) > 76 {
		return "", false
	}
	for i := 0; i < len(name); i++ {
		if b := name[i]; b <= ' ' || b >= 0x7f || b == ':' {
			return "", false
		}
	}
	value = strings.ReplaceAll(value, "\r\n", "\n")
	lines := strings.Split(value, "\n")
	for i, l := range lines {
		if i > 0 && (l == "" || (l[0] != ' ' && l[0] != '\t')) {
			return "", false // a line that is no continuation would start a new field
		}
		if strings.ContainsAny(l, "\r\x00") {
			return "", false
		}
	}
	return name + ": " + strings.Join(lines, "\r\n"), true
}

// verdict maps a milter action.
func (c *Check) verdict(act *gomilter.Action, stage string) policy.Verdict {
	if act == nil {
		return policy.Verdict{}
	}
	switch act.Type {
	case gomilter.ActionReject, gomilter.ActionRejectWithCode, gomilter.ActionTempFail:
		rep := c.reply(act)
		a := policy.Reject
		if rep.Code/100 == 4 {
			a = policy.Tempfail
		}
		return policy.Verdict{Action: a, Reply: rep, Result: strings.ToLower(a.String()),
			Reason: fmt.Sprintf("milter %s refused at %s: %s", c.o.Name, stage, rep.Line())}
	case gomilter.ActionDiscard:
		return policy.Verdict{Action: policy.Quarantine, Result: "discard",
			Reason: fmt.Sprintf("milter %s asked to discard the message (kept in quarantine)", c.o.Name)}
	case gomilter.ActionAccept:
		return policy.Verdict{Result: "accept"}
	}
	return policy.Verdict{}
}

// reply turns the milter's answer into ours: its code and text when they are well-formed
// ("550 5.7.1 text"), otherwise a plain one of the same class.
func (c *Check) reply(act *gomilter.Action) *smtp.Reply {
	code := int(act.SMTPCode)
	temp := act.Type == gomilter.ActionTempFail || code/100 == 4
	def := smtp.Replyf(550, smtp.EnhancedCode{5, 7, 1}, "Message refused by the %s filter", c.o.Name)
	if temp {
		def = smtp.Replyf(451, smtp.EnhancedCode{4, 7, 1}, "Message deferred by the %s filter, try again later", c.o.Name)
	}
	if act.Type != gomilter.ActionRejectWithCode || code < 400 || code > 599 {
		return def
	}
	// Multi-line replies arrive as "550-5.7.1 a\r\n550 5.7.1 b": one line of text for us.
	enh := smtp.EnhancedCode{code / 100, 7, 1}
	var parts []string
	for i, line := range strings.Split(strings.ReplaceAll(act.SMTPReply, "\r\n", "\n"), "\n") {
		line = strings.TrimSpace(line)
		if rest, ok := strings.CutPrefix(line, strconv.Itoa(code)); ok && (rest == "" || rest[0] == ' ' || rest[0] == '-') {
			line = strings.TrimSpace(strings.TrimPrefix(rest, "-"))
		}
		if f := strings.Fields(line); len(f) > 0 {
			if e, ok := parseEnhanced(f[0]); ok && e[0] == code/100 {
				if i == 0 {
					enh = e
				}
				line = strings.TrimSpace(line[len(f[0]):])
			}
		}
		if line != "" {
			parts = append(parts, line)
		}
	}
	text := strings.Join(parts, " ")
	text = printable(text, 300)
	if text == "" {
		return def
	}
	return smtp.NewReply(code, enh, text)
}

func parseEnhanced(s string) (smtp.EnhancedCode, bool) {
	p := strings.Split(s, ".")
	if len(p) != 3 {
		return smtp.EnhancedCode{}, false
	}
	var e smtp.EnhancedCode
	for i, x := range p {
		n, err := strconv.Atoi(x)
		if err != nil || n < 0 || n > 999 {
			return smtp.EnhancedCode{}, false
		}
		e[i] = n
	}
	return e, e[0] == 4 || e[0] == 5
}

func printable(s string, max int) string {
	var b strings.Builder
	for _, r := range s {
		if b.Len() >= max {
			break
		}
		if r >= 0x20 && r < 0x7f {
			b.WriteRune(r)
		} else {
			b.WriteByte('?')
		}
	}
	return b.String()
}

func (c *Check) failed(err error) policy.Verdict {
	return policy.Verdict{Err: err, Result: "error", Reason: err.Error()}
}

// take returns and clears the action of the last protocol step.
func (st *state) take() *gomilter.Action {
	a := st.last
	st.last = nil
	return a
}

// ---- connection bounded by the chain's context ----

// dialed hands the library a connection we opened.
type dialed struct{ c net.Conn }

func (d dialed) Dial(network, addr string) (net.Conn, error) { return d.c, nil }

// ctxConn caps every deadline the library sets by the current stage's context deadline, and
// breaks a blocked read or write when that context ends.
type ctxConn struct {
	net.Conn
	mu   sync.Mutex
	dl   time.Time
	stop func() bool
	gen  int // which use() the pending AfterFunc belongs to
}

func dialCtx(ctx context.Context, network, addr string) (*ctxConn, error) {
	var d net.Dialer
	nc, err := d.DialContext(ctx, network, addr)
	if err != nil {
		return nil, err
	}
	c := &ctxConn{Conn: nc}
	c.use(ctx)
	return c, nil
}

// use binds the connection to ctx for the next protocol steps.
func (c *ctxConn) use(ctx context.Context) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.stop != nil {
		c.stop()
	}
	c.dl, _ = ctx.Deadline()
	c.gen++
	gen := c.gen
	// The callback of an earlier stage's context may still run after a later use(); the
	// generation keeps it from cutting off the later stage.
	c.stop = context.AfterFunc(ctx, func() {
		c.mu.Lock()
		defer c.mu.Unlock()
		if c.gen == gen {
			c.Conn.SetDeadline(time.Unix(1, 0))
		}
	})
	c.Conn.SetDeadline(c.dl)
}

func (c *ctxConn) cap(t time.Time) time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.dl.IsZero() && (t.IsZero() || c.dl.Before(t)) {
		return c.dl
	}
	return t
}

func (c *ctxConn) SetDeadline(t time.Time) error      { return c.Conn.SetDeadline(c.cap(t)) }
func (c *ctxConn) SetReadDeadline(t time.Time) error  { return c.Conn.SetReadDeadline(c.cap(t)) }
func (c *ctxConn) SetWriteDeadline(t time.Time) error { return c.Conn.SetWriteDeadline(c.cap(t)) }
