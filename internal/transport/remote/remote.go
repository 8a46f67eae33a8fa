// Package remote delivers to the recipient domain's mail exchangers (RFC 5321 §5.1): MX lookup
// by preference with random order among equals, implicit MX (A/AAAA) when there is none, null MX
// (RFC 7505) bounced at once, then SMTP with opportunistic STARTTLS, trying the next host on
// connection failures and 4xx at the greeting or MAIL. One attempt per call; the queue retries.
//
// How much TLS each MX needs (MTA-STS, DANE, configured overrides) is decided by
// internal/tlspolicy; when required TLS is missing or does not verify, the host is skipped and
// the attempt deferred with 4.7.x.
//
// Connections are kept for a few seconds after a transaction and reused for the next message to
// the same destination (Postfix's connection cache); the SMTP dialogue is internal/smtpclient's
// (pipelining, BDAT, per-command timeouts). Per-destination concurrency is the queue's job.
package remote

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/netip"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/postamt/postamt/internal/dns"
	"github.com/postamt/postamt/internal/mail"
	"github.com/postamt/postamt/internal/smtp"
	"github.com/postamt/postamt/internal/smtpclient"
	"github.com/postamt/postamt/internal/tlspolicy"
	"github.com/postamt/postamt/internal/transport"
)

// Transport delivers by MX.
type Transport struct {
	Resolver dns.Resolver
	Hostname string // our EHLO name
	// Port is the destination port, 25 unless a test or a special set-up says otherwise.
	Port int
	// Dialer dials the MX; nil for a net.Dialer with a 30 s timeout.
	Dialer interface {
		DialContext(ctx context.Context, network, addr string) (net.Conn, error)
	}
	// Auth holds credentials per relay next hop ("[host]:port", as in the route); they are
	// sent only over TLS.
	Auth map[string]Credentials
	// Timeouts per SMTP command; zero fields take RFC 5321's values.
	Timeouts smtpclient.Timeouts
	// ReuseIdle is how long a connection waits for the next message to its destination
	// (0: 5 s; negative: no reuse). ReuseMax caps the messages sent over one connection (0: 100).
	ReuseIdle time.Duration
	ReuseMax  int

	// TLSPolicy decides per domain and MX how much TLS is required; nil: opportunistic only.
	TLSPolicy *tlspolicy.Engine
	// Logger receives TLS checks that failed but did not stop delivery (MTA-STS testing).
	Logger *slog.Logger

	cache connCache
}

// Credentials authenticate us to a relay host.
type Credentials struct {
	Username, Password string
}

func (t *Transport) Name() string { return "remote" }

// Deliver makes one attempt for rcpts, which share the destination domain (their NextHop).
func (t *Transport) Deliver(ctx context.Context, msg *transport.Message, rcpts []mail.Recipient) ([]transport.Result, error) {
	domain := rcpts[0].Route.NextHop
	port := t.Port
	if port == 0 {
		port = 25
	}
	// A connection kept from the last message to this destination passed the same checks.
	if res, ok := t.deliverCached(ctx, domain, msg, rcpts); ok {
		return res, nil
	}
	var hosts []string
	var dest *tlspolicy.Destination
	if host, p, ok := mail.SplitNextHop(domain); ok {
		// A relay host or transport-map entry: that server, no MX lookup.
		hosts, port = []string{host}, p
		dest = t.TLSPolicy.ForRelay(host)
	} else {
		var reply *smtp.Reply
		if hosts, reply = t.exchangers(ctx, domain); reply != nil {
			return nil, reply
		}
		var err error
		if dest, err = t.TLSPolicy.ForDomain(ctx, domain); err != nil {
			return nil, smtp.Replyf(451, smtp.EnhancedCode{4, 4, 3}, "DNSSEC lookup of MX for %s failed, will retry", domain).WithErr(err)
		}
		if dest.MXSecure() {
			// DANE is only as good as the MX names it protects: use the validated set (or the
			// implicit MX when it validly has none), never hosts an unvalidated answer named.
			hosts = []string{domain}
			if len(dest.SecureMX) > 0 {
				hosts = orderMX(dest.SecureMX)
			}
		}
	}
	var last *smtp.Reply
	for _, h := range hosts {
		req, err := dest.ForHost(ctx, h, port)
		if err != nil {
			last = policyReply(h, err)
			continue
		}
		addrs, err := t.addresses(ctx, h)
		if err != nil {
			last = smtp.Replyf(451, smtp.EnhancedCode{4, 4, 3}, "Cannot resolve mail exchanger %s", h).WithErr(err)
			continue
		}
		for _, a := range addrs {
			res, err := t.deliverTo(ctx, a, port, h, domain, msg, rcpts, req)
			if err == nil {
				return res, nil
			}
			// Whatever one exchanger said before the transaction (greeting, EHLO, TLS), the next
			// may do better; only when all fail does the last answer count.
			last = err
		}
	}
	if last == nil {
		last = smtp.Replyf(451, smtp.EnhancedCode{4, 4, 4}, "No usable mail exchanger for %s", domain)
	}
	return nil, last
}

// exchangers returns the hosts to try, best first (RFC 5321 §5.1).
func (t *Transport) exchangers(ctx context.Context, domain string) ([]string, *smtp.Reply) {
	mxs, err := t.Resolver.LookupMX(ctx, domain)
	switch {
	case err == nil && len(mxs) == 1 && (mxs[0].Host == "." || mxs[0].Host == ""):
		// RFC 7505: the domain says it accepts no mail.
		return nil, smtp.Replyf(556, smtp.EnhancedCode{5, 1, 10}, "Domain %s does not accept mail (null MX)", domain)
	case err == nil && len(mxs) > 0:
		return orderMX(mxs), nil
	case err != nil && !dns.IsNotFound(err):
		return nil, smtp.Replyf(451, smtp.EnhancedCode{4, 4, 3}, "DNS lookup of MX for %s failed, will retry", domain).WithErr(err)
	}
	// No MX: the domain itself is the implicit MX if it has an address (RFC 5321 §5.1).
	if _, err := t.Resolver.LookupNetIP(ctx, "ip", domain); err != nil {
		if dns.IsNotFound(err) {
			return nil, smtp.Replyf(550, smtp.EnhancedCode{5, 1, 2}, "Domain %s has no mail server (no MX and no address)", domain).WithErr(err)
		}
		return nil, smtp.Replyf(451, smtp.EnhancedCode{4, 4, 3}, "DNS lookup of %s failed, will retry", domain).WithErr(err)
	}
	return []string{domain}, nil
}

// orderMX sorts by preference, random among equals, and drops empty names.
func orderMX(mxs []*net.MX) []string {
	sort.SliceStable(mxs, func(i, j int) bool { return mxs[i].Pref < mxs[j].Pref })
	// Random order among equal preferences spreads load as the RFC asks.
	for i := 0; i < len(mxs); {
		j := i
		for j < len(mxs) && mxs[j].Pref == mxs[i].Pref {
			j++
		}
		rand.Shuffle(j-i, func(a, b int) { mxs[i+a], mxs[i+b] = mxs[i+b], mxs[i+a] })
		i = j
	}
	hosts := make([]string, 0, len(mxs))
	for _, mx := range mxs {
		if h := strings.TrimSuffix(mx.Host, "."); h != "" {
			hosts = append(hosts, h)
		}
	}
	return hosts
}

// addresses resolves a host; an IP literal is its own address.
func (t *Transport) addresses(ctx context.Context, host string) ([]netip.Addr, error) {
	if a, err := netip.ParseAddr(strings.TrimPrefix(host, "IPv6:")); err == nil {
		return []netip.Addr{a}, nil
	}
	return t.Resolver.LookupNetIP(ctx, "ip", host)
}

func (t *Transport) dial(ctx context.Context, addr string) (net.Conn, error) {
	if t.Dialer != nil {
		return t.Dialer.DialContext(ctx, "tcp", addr)
	}
	d := net.Dialer{Timeout: 30 * time.Second}
	return d.DialContext(ctx, "tcp", addr)
}

// conn is an open SMTP session with one server, greeted, secured and authenticated as needed.
type conn struct {
	c       *smtpclient.Client
	host    string // the server's name, for replies and Remote-MTA
	tlsInfo string
	uses    int
	idle    time.Time // when it was put back
}

// bind makes ctx govern the connection for one attempt: cancelling it unblocks any read or
// write at once. The returned function ends that.
func (cn *conn) bind(ctx context.Context) func() {
	cn.c.SetContext(ctx)
	stop := context.AfterFunc(ctx, func() { cn.c.Conn().SetDeadline(time.Now()) })
	return func() { stop() }
}

// deliverTo connects to one server and runs the transaction. A nil reply means the transaction
// ran and res holds each recipient's outcome; a reply means this server could not take the
// message at all (the caller tries the next one if it is temporary).
func (t *Transport) deliverTo(ctx context.Context, ip netip.Addr, port int, host, dest string, msg *transport.Message, rcpts []mail.Recipient, req *tlspolicy.Requirement) ([]transport.Result, *smtp.Reply) {
	nc, err := t.dial(ctx, net.JoinHostPort(ip.String(), strconv.Itoa(port)))
	if err != nil {
		return nil, smtp.Replyf(451, smtp.EnhancedCode{4, 4, 1}, "Cannot connect to %s [%s]", host, ip).WithErr(err)
	}
	cn := &conn{c: smtpclient.New(ctx, nc, t.Timeouts), host: host, tlsInfo: "none"}
	unbind := cn.bind(ctx)
	if reply := t.open(cn, dest, req); reply != nil {
		unbind()
		nc.Close()
		return nil, reply
	}
	res, reply, healthy := t.transact(cn, msg, rcpts)
	unbind()
	t.finish(cn, dest, healthy)
	return res, reply
}

// open greets, says EHLO, upgrades to TLS as req allows or demands, and authenticates when
// configured. req says whether TLS is optional (RFC 7435: encrypted, not authenticated),
// mandatory, or must also verify (MTA-STS, DANE, overrides); a server that falls short gets a
// 4.7.x reply and nothing is sent to it. The certificate is checked by req.Check after the
// handshake rather than by crypto/tls, so that DANE-EE can ignore names and dates and failures
// read in the policy's words.
func (t *Transport) open(cn *conn, dest string, req *tlspolicy.Requirement) *smtp.Reply {
	c, host := cn.c, cn.host
	if err := c.Greet(); err != nil {
		// Even a 5xx greeting only means "not this host" (Postfix: smtp_skip_5xx_greeting).
		r := stageReply(err, host, "greeting")
		return smtp.NewReply(451, smtp.EnhancedCode{4, 4, 0}, r.Text).WithErr(err)
	}
	if err := c.Hello(t.Hostname); err != nil {
		r := stageReply(err, host, "EHLO")
		return smtp.NewReply(451, smtp.EnhancedCode{4, 4, 0}, r.Text).WithErr(err)
	}
	if c.Has("STARTTLS") && req.Mode != tlspolicy.NoTLS {
		err := c.StartTLS(&tls.Config{ServerName: strings.TrimPrefix(host, "IPv6:"), InsecureSkipVerify: true, MinVersion: tls.VersionTLS12})
		var tlsErr *smtpclient.TLSError
		switch {
		case errors.As(err, &tlsErr):
			return smtp.Replyf(451, smtp.EnhancedCode{4, 7, 5}, "TLS handshake with %s failed", host).WithErr(err)
		case err != nil && isReply(err):
			// STARTTLS refused: carry on in plain text if the policy allows.
		case err != nil:
			return stageReply(err, host, "STARTTLS")
		}
	}
	if err := req.Check(c.TLS); err != nil {
		switch {
		case !req.Enforced():
			t.logger().Warn("tls policy check failed in testing mode, delivering anyway", "mx", host, "err", err)
		case c.TLS == nil:
			return smtp.Replyf(451, smtp.EnhancedCode{4, 7, 4}, "TLS required, message not sent to %s: %v", host, err).WithErr(err)
		default:
			return smtp.Replyf(451, smtp.EnhancedCode{4, 7, 5}, "TLS policy not met, message not sent to %s: %v", host, err).WithErr(err)
		}
	}
	cn.tlsInfo = req.Describe(c.TLS)
	if cred, ok := t.Auth[dest]; ok {
		if c.TLS == nil {
			return smtp.Replyf(451, smtp.EnhancedCode{4, 7, 10}, "Relay host %s offers no TLS; not sending the password in clear", host)
		}
		if err := c.Auth(cred.Username, cred.Password); err != nil {
			r := stageReply(err, host, "AUTH")
			// A refused password is our configuration's fault, not the message's: retry later.
			return smtp.NewReply(451, smtp.EnhancedCode{4, 7, 8}, r.Text).WithErr(err)
		}
	}
	return nil
}

func isReply(err error) bool {
	var r *smtp.Reply
	return errors.As(err, &r)
}

// stageReply turns a client error into the reply recorded for the recipients: the server's
// own words when it answered, a temporary failure when the connection broke.
func stageReply(err error, host, stage string) *smtp.Reply {
	var r *smtp.Reply
	if errors.As(err, &r) {
		enh := r.Enhanced
		if enh[0] == 0 {
			enh = smtp.EnhancedCode{r.Code / 100, 0, 0}
		}
		return smtp.NewReply(r.Code, enh, fmt.Sprintf("%s said after %s: %s", host, stage, strings.ReplaceAll(r.Text, "\n", " "))).WithErr(err)
	}
	return smtp.NewReply(451, smtp.EnhancedCode{4, 4, 2}, fmt.Sprintf("Connection to %s failed during %s", host, stage)).WithErr(err)
}

// transact runs one mail transaction on an open connection. healthy says whether the
// connection is in a clean state for another transaction.
func (t *Transport) transact(cn *conn, msg *transport.Message, rcpts []mail.Recipient) (res []transport.Result, reply *smtp.Reply, healthy bool) {
	c, host := cn.c, cn.host
	cn.uses++
	results := make([]transport.Result, len(rcpts))
	for i := range results {
		results[i].RemoteMTA = host
		results[i].TLS = cn.tlsInfo
	}
	all := func(r *smtp.Reply) []transport.Result {
		for i := range results {
			results[i].Reply = r
		}
		return results
	}
	if msg.SMTPUTF8 && !c.Has("SMTPUTF8") && transport.NeedsUTF8(msg.From, rcpts) {
		return all(smtp.NewReply(553, smtp.CodeNeedsUTF8, "The receiving server does not support SMTPUTF8, which this message's addresses need")), nil, true
	}
	if max := c.MaxSize(); max > 0 && msg.Size > max {
		return all(smtp.Replyf(552, smtp.CodeMsgTooBig, "Message of %d bytes exceeds %s's limit of %d bytes", msg.Size, host, max)), nil, true
	}
	body, err := msg.Open()
	if err != nil {
		return nil, smtp.ReplyFor(err, msg.ID), true
	}
	defer body.Close()
	var r io.Reader = body
	params := []string{}
	if c.Has("SIZE") {
		params = append(params, "SIZE="+strconv.FormatInt(msg.Size, 10))
	}
	if msg.Body8Bit {
		if c.Has("8BITMIME") {
			params = append(params, "BODY=8BITMIME")
		} else {
			// RFC 6152 §3: convert rather than send 8-bit data to a server that did not ask for it.
			b, err := io.ReadAll(body)
			if err != nil {
				return nil, smtp.ReplyFor(err, msg.ID), true
			}
			r = bytes.NewReader(downgrade8bit(b))
		}
	}
	if msg.SMTPUTF8 && c.Has("SMTPUTF8") {
		params = append(params, "SMTPUTF8")
	}
	dsn := c.Has("DSN")
	if dsn {
		if msg.Ret != "" {
			params = append(params, "RET="+msg.Ret)
		}
		if msg.EnvID != "" {
			params = append(params, "ENVID="+smtp.EncodeXtext(msg.EnvID))
		}
	}
	env := smtpclient.Envelope{From: msg.From, MailParams: strings.Join(params, " ")}
	for _, rc := range rcpts {
		env.Rcpts = append(env.Rcpts, rc.Addr)
		p := ""
		if dsn {
			p = rcptParams(rc)
		}
		env.RcptParams = append(env.RcptParams, p)
	}
	out, err := c.Send(env, r)
	if err != nil {
		if out == nil || out.Mail == nil {
			return nil, stageReply(err, host, "the transaction"), false
		}
		// The server may have taken the message before the connection broke: RFC 5321 §4.1.1.4
		// leaves the client no way to know. Retrying risks a duplicate; giving up risks a loss,
		// so we retry (docs/reliability.md).
		return all(smtp.Replyf(451, smtp.EnhancedCode{4, 4, 2}, "Connection to %s lost before the reply to the end of data; will retry", host).WithErr(err)), nil, false
	}
	if out.Mail.Code != 250 {
		mr := stageReply(out.Mail, host, "MAIL FROM")
		if mr.Permanent() {
			return all(mr), nil, true
		}
		return nil, mr, true // try the next server
	}
	for i, rr := range out.Rcpts {
		if rr.Code/100 != 2 {
			results[i].Reply = stageReply(rr, host, "RCPT TO")
		}
	}
	if out.Data != nil && out.Data.Code/100 != 2 {
		dr := stageReply(out.Data, host, "end of DATA")
		for i := range results {
			if results[i].Reply == nil {
				results[i].Reply = dr
			}
		}
	}
	for i := range results {
		// Without DSN support at the next hop, a sender who asked for NOTIFY=SUCCESS hears it
		// from us (RFC 3461 §6.2.2: "relayed").
		results[i].Relayed = results[i].Reply == nil && !dsn
	}
	return results, nil, true
}

// rcptParams passes the RFC 3461 parameters on.
func rcptParams(rc mail.Recipient) string {
	var p []string
	if rc.Notify != "" {
		p = append(p, "NOTIFY="+rc.Notify)
	}
	if typ, addr, ok := strings.Cut(rc.ORCPT, ";"); ok && strings.EqualFold(typ, "rfc822") {
		p = append(p, "ORCPT=rfc822;"+smtp.EncodeXtext(addr))
	}
	return strings.Join(p, " ")
}

// finish keeps a healthy connection for the next message to dest, or closes it.
func (t *Transport) finish(cn *conn, dest string, healthy bool) {
	max := t.ReuseMax
	if max <= 0 {
		max = 100
	}
	if !healthy || t.ReuseIdle < 0 || cn.uses >= max || !t.cache.put(dest, cn, t.idleLimit()) {
		if healthy {
			cn.c.SetContext(context.Background())
			cn.c.Quit()
		} else {
			cn.c.Close()
		}
	}
}

func (t *Transport) idleLimit() time.Duration {
	if t.ReuseIdle > 0 {
		return t.ReuseIdle
	}
	return 5 * time.Second
}

func (t *Transport) logger() *slog.Logger {
	if t.Logger != nil {
		return t.Logger
	}
	return slog.New(slog.DiscardHandler)
}

// policyReply is the answer for a host the TLS policy rules out before connecting.
func policyReply(host string, err error) *smtp.Reply {
	switch {
	case errors.Is(err, tlspolicy.ErrLookup):
		return smtp.Replyf(451, smtp.EnhancedCode{4, 7, 5}, "DNSSEC lookup of TLSA records for %s failed, will retry", host).WithErr(err)
	case errors.Is(err, tlspolicy.ErrMXNotInPolicy):
		return smtp.Replyf(451, smtp.EnhancedCode{4, 7, 5}, "Mail exchanger %s is not allowed by the domain's MTA-STS policy", host).WithErr(err)
	}
	return smtp.Replyf(451, smtp.EnhancedCode{4, 7, 5}, "TLS policy cannot be met for %s: %v", host, err).WithErr(err)
}

// deliverCached tries an idle connection to dest. ok is false when there was none that works;
// the caller then connects afresh.
func (t *Transport) deliverCached(ctx context.Context, dest string, msg *transport.Message, rcpts []mail.Recipient) ([]transport.Result, bool) {
	for {
		cn := t.cache.get(dest, t.idleLimit())
		if cn == nil {
			return nil, false
		}
		unbind := cn.bind(ctx)
		// The server may have closed an idle connection; RSET finds out before a transaction.
		if err := cn.c.Reset(); err != nil {
			unbind()
			cn.c.Close()
			continue
		}
		res, reply, healthy := t.transact(cn, msg, rcpts)
		unbind()
		t.finish(cn, dest, healthy)
		if reply != nil {
			// This server cannot take the message now; let the caller try the others.
			return nil, false
		}
		return res, true
	}
}

// Close closes the idle connections.
func (t *Transport) Close() {
	for _, cn := range t.cache.drain() {
		cn.c.SetContext(context.Background())
		cn.c.Quit()
	}
}

// connCache holds idle connections per destination.
type connCache struct {
	mu      sync.Mutex
	idle    map[string][]*conn
	closed  bool
	janitor bool
}

// maxIdlePerDest bounds what one destination may hold open while idle.
const maxIdlePerDest = 20

func (cc *connCache) put(dest string, cn *conn, limit time.Duration) bool {
	cc.mu.Lock()
	defer cc.mu.Unlock()
	if cc.closed || len(cc.idle[dest]) >= maxIdlePerDest {
		return false
	}
	if cc.idle == nil {
		cc.idle = map[string][]*conn{}
	}
	cn.idle = time.Now()
	cn.c.SetContext(context.Background())
	cc.idle[dest] = append(cc.idle[dest], cn)
	if !cc.janitor {
		cc.janitor = true
		go cc.sweep(limit)
	}
	return true
}

func (cc *connCache) get(dest string, limit time.Duration) *conn {
	cc.mu.Lock()
	defer cc.mu.Unlock()
	for l := cc.idle[dest]; len(l) > 0; l = cc.idle[dest] {
		cn := l[len(l)-1] // the most recently used is the most likely to be alive
		cc.idle[dest] = l[:len(l)-1]
		if len(cc.idle[dest]) == 0 {
			delete(cc.idle, dest)
		}
		if time.Since(cn.idle) < limit {
			return cn
		}
		go cn.c.Quit()
	}
	return nil
}

// sweep closes connections idle for longer than limit, until the cache is empty.
func (cc *connCache) sweep(limit time.Duration) {
	for {
		time.Sleep(limit / 2)
		cc.mu.Lock()
		var stale []*conn
		for d, l := range cc.idle {
			keep := l[:0]
			for _, cn := range l {
				if time.Since(cn.idle) >= limit {
					stale = append(stale, cn)
				} else {
					keep = append(keep, cn)
				}
			}
			if len(keep) == 0 {
				delete(cc.idle, d)
			} else {
				cc.idle[d] = keep
			}
		}
		done := len(cc.idle) == 0
		if done {
			cc.janitor = false
		}
		cc.mu.Unlock()
		for _, cn := range stale {
			cn.c.Quit()
		}
		if done {
			return
		}
	}
}

func (cc *connCache) drain() []*conn {
	cc.mu.Lock()
	defer cc.mu.Unlock()
	cc.closed = true
	var all []*conn
	for _, l := range cc.idle {
		all = append(all, l...)
	}
	cc.idle = nil
	return all
}
