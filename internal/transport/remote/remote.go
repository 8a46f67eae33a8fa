// Package remote delivers to the recipient domain's mail exchangers (RFC 5321 §5.1): MX lookup
// by preference with random order among equals, implicit MX (A/AAAA) when there is none, null MX
// (RFC 7505) bounced at once, then SMTP with opportunistic STARTTLS, trying the next host on
// connection failures and 4xx at the greeting or MAIL. One attempt per call; the queue retries.
//
// How much TLS each MX needs (MTA-STS, DANE, configured overrides) is decided by
// internal/tlspolicy; when required TLS is missing or does not verify, the host is skipped and
// the attempt deferred with 4.7.x.
//
// Not yet here (issue 4): connection reuse, 8BITMIME downgrade, CHUNKING.
package remote

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/netip"
	"net/textproto"
	"sort"
	"strconv"
	"strings"
	"time"

	gosmtp "github.com/emersion/go-smtp"

	"github.com/postamt/postamt/internal/dns"
	"github.com/postamt/postamt/internal/mail"
	"github.com/postamt/postamt/internal/smtp"
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
	// TLSPolicy decides per domain and MX how much TLS is required; nil: opportunistic only.
	TLSPolicy *tlspolicy.Engine
	// Logger receives TLS checks that failed but did not stop delivery (MTA-STS testing).
	Logger *slog.Logger
}

func (t *Transport) Name() string { return "remote" }

// Deliver makes one attempt for rcpts, which share the destination domain (their NextHop).
func (t *Transport) Deliver(ctx context.Context, msg *transport.Message, rcpts []mail.Recipient) ([]transport.Result, error) {
	domain := rcpts[0].Route.NextHop
	port := t.Port
	if port == 0 {
		port = 25
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
			res, err := t.deliverTo(ctx, a, port, h, msg, rcpts, req)
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

// deliverTo runs one SMTP transaction with one server. A nil reply means the transaction ran
// and res holds each recipient's outcome; a reply means this server could not take the message
// at all (try the next one if it is temporary).
func (t *Transport) deliverTo(ctx context.Context, ip netip.Addr, port int, host string, msg *transport.Message, rcpts []mail.Recipient, req *tlspolicy.Requirement) ([]transport.Result, *smtp.Reply) {
	conn, err := t.dial(ctx, net.JoinHostPort(ip.String(), strconv.Itoa(port)))
	if err != nil {
		return nil, smtp.Replyf(451, smtp.EnhancedCode{4, 4, 1}, "Cannot connect to %s [%s]", host, ip).WithErr(err)
	}
	defer conn.Close()
	// RFC 5321 §4.5.3.2 gives per-command timeouts of 5–10 minutes; one deadline for the whole
	// transaction, from the queue's attempt timeout, is simpler and bounds the same thing.
	if dl, ok := ctx.Deadline(); ok {
		conn.SetDeadline(dl)
	}
	stop := context.AfterFunc(ctx, func() { conn.SetDeadline(time.Now()) })
	defer stop()
	peer := host
	conn, tlsState, reply := t.greetAndSecure(conn, host, peer, req)
	if reply != nil {
		return nil, reply
	}
	c := gosmtp.NewClient(conn)
	defer c.Close()
	if err := c.Hello(t.Hostname); err != nil {
		return nil, transport.ClientReply(err, peer, "EHLO")
	}
	results := make([]transport.Result, len(rcpts))
	tlsInfo := req.Describe(tlsState)
	for i := range results {
		results[i].RemoteMTA = host
		results[i].TLS = tlsInfo
	}
	all := func(r *smtp.Reply) []transport.Result {
		for i := range results {
			results[i].Reply = r
		}
		return results
	}
	hasUTF8, _ := c.Extension("SMTPUTF8")
	if msg.SMTPUTF8 && !hasUTF8 && transport.NeedsUTF8(msg.From, rcpts) {
		c.Quit()
		return all(smtp.NewReply(553, smtp.CodeNeedsUTF8, "The receiving server does not support SMTPUTF8, which this message's addresses need")), nil
	}
	if max, ok := c.MaxMessageSize(); ok && max > 0 && msg.Size > int64(max) {
		c.Quit()
		return all(smtp.Replyf(552, smtp.CodeMsgTooBig, "Message of %d bytes exceeds %s's limit of %d bytes", msg.Size, host, max)), nil
	}
	opts := &gosmtp.MailOptions{Size: msg.Size, UTF8: msg.SMTPUTF8 && hasUTF8}
	if msg.Body8Bit {
		opts.Body = gosmtp.Body8BitMIME
	}
	if err := c.Mail(msg.From, opts); err != nil {
		r := transport.ClientReply(err, peer, "MAIL FROM")
		if r.Permanent() {
			return all(r), nil
		}
		return nil, r
	}
	accepted := 0
	for i, rc := range rcpts {
		if err := c.Rcpt(rc.Addr, rcptOptions(rc)); err != nil {
			results[i].Reply = transport.ClientReply(err, peer, "RCPT TO")
			continue
		}
		accepted++
	}
	if accepted == 0 {
		c.Quit()
		return results, nil
	}
	final := func(r *smtp.Reply) ([]transport.Result, *smtp.Reply) {
		for i := range results {
			if results[i].Reply == nil {
				results[i].Reply = r
			}
		}
		return results, nil
	}
	w, err := c.Data()
	if err != nil {
		return final(transport.ClientReply(err, peer, "DATA"))
	}
	body, err := msg.Open()
	if err != nil {
		return nil, smtp.ReplyFor(err, msg.ID)
	}
	_, err = io.Copy(w, body)
	body.Close()
	if err == nil {
		err = w.Close()
	}
	if err != nil {
		return final(transport.ClientReply(err, peer, "end of DATA"))
	}
	c.Quit()
	return results, nil
}

// rcptOptions passes the RFC 3461 parameters on.
func rcptOptions(rc mail.Recipient) *gosmtp.RcptOptions {
	o := &gosmtp.RcptOptions{}
	for _, n := range strings.Split(rc.Notify, ",") {
		if n != "" {
			o.Notify = append(o.Notify, gosmtp.DSNNotify(n))
		}
	}
	if typ, addr, ok := strings.Cut(rc.ORCPT, ";"); ok && strings.EqualFold(typ, "rfc822") {
		o.OriginalRecipientType = gosmtp.DSNAddressTypeRFC822
		o.OriginalRecipient = addr
	}
	return o
}

// greetAndSecure reads the greeting, sends EHLO and, when the server offers it, upgrades with
// STARTTLS. go-smtp's client cannot be told our EHLO name before its own STARTTLS, so this part
// is done here and the client then starts on the (possibly encrypted) connection as if greeted.
// req says whether TLS is optional (RFC 7435: encrypted, not authenticated), mandatory, or
// must also verify (MTA-STS, DANE, overrides); a server that falls short gets a 4.7.x reply
// and nothing is sent to it. The certificate is checked by req.Check after the handshake rather
// than by crypto/tls, so that DANE-EE can ignore names and dates and failures can be reported
// in the policy's words.
func (t *Transport) greetAndSecure(conn net.Conn, host, peer string, req *tlspolicy.Requirement) (net.Conn, *tls.ConnectionState, *smtp.Reply) {
	tp := textproto.NewConn(conn)
	if _, msg, err := tp.ReadResponse(220); err != nil {
		// Even a 5xx greeting only means "not this host" (Postfix: smtp_skip_5xx_greeting).
		r := transport.ClientReply(asSMTPError(err), peer, "greeting")
		return nil, nil, smtp.NewReply(451, smtp.EnhancedCode{4, 4, 0}, r.Text).WithErr(fmt.Errorf("%s: %w", msg, err))
	}
	id, err := tp.Cmd("EHLO %s", t.Hostname)
	if err != nil {
		return nil, nil, transport.ClientReply(err, peer, "EHLO")
	}
	tp.StartResponse(id)
	_, msg, err := tp.ReadResponse(250)
	tp.EndResponse(id)
	if err != nil {
		// No ESMTP: let go-smtp fall back to HELO on a fresh start.
		return t.plain(conn, host, req)
	}
	offered := false
	for _, l := range strings.Split(msg, "\n") {
		if strings.EqualFold(strings.TrimSpace(l), "STARTTLS") {
			offered = true
		}
	}
	if !offered || req.Mode == tlspolicy.NoTLS {
		return t.plain(conn, host, req)
	}
	id, err = tp.Cmd("STARTTLS")
	if err != nil {
		return nil, nil, transport.ClientReply(err, peer, "STARTTLS")
	}
	tp.StartResponse(id)
	_, _, err = tp.ReadResponse(220)
	tp.EndResponse(id)
	if err != nil {
		return t.plain(conn, host, req) // refused: carry on in plain text if allowed
	}
	tc := tls.Client(conn, &tls.Config{ServerName: host, InsecureSkipVerify: true, MinVersion: tls.VersionTLS12})
	if err := tc.Handshake(); err != nil {
		return nil, nil, smtp.Replyf(451, smtp.EnhancedCode{4, 7, 5}, "TLS handshake with %s failed", host).WithErr(err)
	}
	st := tc.ConnectionState()
	if err := req.Check(&st); err != nil {
		if req.Enforced() {
			tc.Close()
			return nil, nil, smtp.Replyf(451, smtp.EnhancedCode{4, 7, 5}, "TLS policy not met, message not sent to %s: %v", host, err).WithErr(err)
		}
		t.logger().Warn("tls policy check failed in testing mode, delivering anyway", "mx", host, "err", err)
	}
	return greeted(tc), &st, nil
}

// plain continues without TLS when req allows it (or only tests it).
func (t *Transport) plain(conn net.Conn, host string, req *tlspolicy.Requirement) (net.Conn, *tls.ConnectionState, *smtp.Reply) {
	if err := req.Check(nil); err != nil {
		if req.Enforced() {
			return nil, nil, smtp.Replyf(451, smtp.EnhancedCode{4, 7, 4}, "TLS required, message not sent to %s: %v", host, err).WithErr(err)
		}
		t.logger().Warn("tls policy check failed in testing mode, delivering anyway", "mx", host, "err", err)
	}
	return greeted(conn), nil, nil
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

func asSMTPError(err error) error {
	var te *textproto.Error
	if errors.As(err, &te) {
		return &gosmtp.SMTPError{Code: te.Code, Message: te.Msg}
	}
	return err
}

// greeted makes a connection look freshly greeted to go-smtp's client, which reads a 220 first.
func greeted(c net.Conn) net.Conn {
	return &prefixConn{Conn: c, r: io.MultiReader(strings.NewReader("220 continued\r\n"), c)}
}

type prefixConn struct {
	net.Conn
	r io.Reader
}

func (p *prefixConn) Read(b []byte) (int, error) { return p.r.Read(b) }
