// Package lmtp delivers to a local mail store over LMTP (RFC 2033), such as Dovecot's lmtp
// service. LMTP answers DATA once per recipient, and each answer is honoured on its own: one
// recipient over quota does not fail or duplicate the others.
package lmtp

import (
	"context"
	"errors"
	"io"
	"net"
	"strings"
	"time"

	gosmtp "github.com/emersion/go-smtp"

	"github.com/postamt/postamt/internal/mail"
	"github.com/postamt/postamt/internal/smtp"
	"github.com/postamt/postamt/internal/transport"
)

// Transport delivers over LMTP to Address: "host:port" or "unix:/path".
type Transport struct {
	Address  string
	Hostname string // our name in LHLO
	Timeout  time.Duration
	// Label is the transport's name in routes; "" means "lmtp" (the local transport). A
	// transport-map entry gets "lmtp:" + its address.
	Label string
}

func (t *Transport) Name() string {
	if t.Label != "" {
		return t.Label
	}
	return "lmtp"
}

func (t *Transport) dial(ctx context.Context) (net.Conn, error) {
	d := net.Dialer{Timeout: 30 * time.Second}
	if p, ok := strings.CutPrefix(t.Address, "unix:"); ok {
		return d.DialContext(ctx, "unix", p)
	}
	return d.DialContext(ctx, "tcp", t.Address)
}

// Deliver makes one LMTP transaction for all rcpts.
func (t *Transport) Deliver(ctx context.Context, msg *transport.Message, rcpts []mail.Recipient) ([]transport.Result, error) {
	conn, err := t.dial(ctx)
	if err != nil {
		return nil, smtp.NewReply(451, smtp.EnhancedCode{4, 4, 1}, "LMTP server not reachable").WithErr(err)
	}
	defer conn.Close()
	if dl, ok := ctx.Deadline(); ok {
		conn.SetDeadline(dl)
	}
	stop := context.AfterFunc(ctx, func() { conn.SetDeadline(time.Now()) })
	defer stop()

	c := gosmtp.NewClientLMTP(conn)
	defer c.Close()
	// Remote-MTA in a DSN is a host name (RFC 3464 §2.3.5); a Unix socket has none.
	remote := ""
	if host, _, err := net.SplitHostPort(t.Address); err == nil {
		remote = host
	}
	res := make([]transport.Result, len(rcpts))
	if err := c.Hello(t.Hostname); err != nil {
		return nil, convert(err, "LHLO")
	}
	// Clients declare SMTPUTF8 whenever the server offers it (Go's net/smtp does), so it is passed
	// on only when the store offers it too; it is required only when an address needs it
	// (RFC 6531 §3.2; Postfix's smtputf8_autodetect does the same).
	hasUTF8, _ := c.Extension("SMTPUTF8")
	if msg.SMTPUTF8 && !hasUTF8 && transport.NeedsUTF8(msg.From, rcpts) {
		for i := range res {
			res[i].RemoteMTA = remote
			res[i].Reply = smtp.NewReply(553, smtp.CodeNeedsUTF8, "The mail store does not support SMTPUTF8, which this message's addresses need")
		}
		c.Quit()
		return res, nil
	}
	opts := &gosmtp.MailOptions{UTF8: msg.SMTPUTF8 && hasUTF8}
	if msg.Body8Bit {
		opts.Body = gosmtp.Body8BitMIME
	}
	if err := c.Mail(msg.From, opts); err != nil {
		return nil, convert(err, "MAIL FROM")
	}
	accepted := map[string]int{}
	for i, r := range rcpts {
		res[i].RemoteMTA = remote
		if err := c.Rcpt(r.Route.NextHop, nil); err != nil {
			res[i].Reply = convert(err, "RCPT TO")
			continue
		}
		accepted[r.Route.NextHop] = i
	}
	if len(accepted) == 0 {
		c.Quit()
		return res, nil
	}
	w, err := c.Data()
	if err != nil {
		return nil, convert(err, "DATA")
	}
	body, err := msg.Open()
	if err != nil {
		return nil, err
	}
	_, err = io.Copy(w, body)
	body.Close()
	if err != nil {
		return nil, convert(err, "DATA")
	}
	_, err = w.CloseWithLMTPResponse()
	var perRcpt gosmtp.LMTPDataError
	switch {
	case err == nil:
	case errors.As(err, &perRcpt):
		for addr, e := range perRcpt {
			if i, ok := accepted[addr]; ok {
				res[i].Reply = convert(e, "end of DATA")
			}
		}
	default:
		return nil, convert(err, "end of DATA")
	}
	c.Quit()
	return res, nil
}

func convert(err error, stage string) *smtp.Reply {
	return transport.ClientReply(err, "LMTP server", stage)
}
