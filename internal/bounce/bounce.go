// Package bounce returns failed mail to its sender: it turns the queue's record of a message with
// failed recipients into a DSN (package dsn) and submits it through the same Intake as any other
// mail, from the null sender, routed like any other recipient. It decides who gets a DSN
// (never the null sender, NOTIFY honoured); the queue decides when.
package bounce

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"time"

	"github.com/postamt/postamt/internal/dsn"
	"github.com/postamt/postamt/internal/mail"
	"github.com/postamt/postamt/internal/queue"
	"github.com/postamt/postamt/internal/smtp"
	"github.com/postamt/postamt/internal/spool"
)

// Router routes the DSN's recipient (the original sender); see router.Router.
type Router interface {
	Resolve(p smtp.Path, authenticated bool) ([]mail.Recipient, *smtp.Reply)
}

// Intake takes the DSN; see queue.Queue.
type Intake interface {
	Create() (*spool.Writer, error)
	Accept(ctx context.Context, env *mail.Envelope, w *spool.Writer) error
}

// Bouncer sends DSNs for failed recipients.
type Bouncer struct {
	Hostname string
	Router   Router
	Intake   Intake
	Logger   *slog.Logger
	Now      func() time.Time
	// Sign, when set, returns DKIM-Signature fields for a DSN (from MAILER-DAEMON@Hostname), so
	// that a bounce to a remote sender passes DMARC for our own domain. A signing failure is
	// logged and the DSN goes out unsigned: the report matters more than the signature.
	Sign func(ctx context.Context, msg []byte) ([]string, error)
}

// Bounce builds and queues the DSN for b. Cases where no DSN may or can be sent (null sender,
// NOTIFY without FAILURE, a sender address that does not route) are logged and return nil, so
// the queue removes the message; only a failure to queue the DSN returns an error (retried).
func (bo *Bouncer) Bounce(ctx context.Context, b *queue.Bounce) error {
	env := b.Env
	log := bo.Logger.With("id", env.ID, "sender", env.From)
	if env.From == "" {
		// RFC 5321 §4.5.5 / RFC 3464: never a DSN for a message from the null sender (loops).
		log.Info("bounce suppressed: the message came from the null sender")
		return nil
	}
	kind, action := "FAILURE", "failed"
	if b.Delayed {
		kind, action = "DELAY", "delayed"
	}
	var rcpts []dsn.Recipient
	for _, f := range b.Failed {
		if !dsn.Wanted(f.Notify, kind) {
			continue
		}
		orig := f.ORCPT
		if orig == "" && f.Orig != "" && f.Orig != f.Addr {
			orig = "rfc822;" + f.Orig
		}
		rcpts = append(rcpts, dsn.Recipient{
			Final: f.Addr, Original: orig, Action: action, Status: statusOf(f.LastError, b.Delayed),
			Diagnostic: f.LastError, RemoteMTA: f.RemoteMTA, LastAttempt: f.LastAttempt,
		})
	}
	for _, f := range b.Succeeded {
		if !dsn.Wanted(f.Notify, "SUCCESS") {
			continue
		}
		orig := f.ORCPT
		if orig == "" && f.Orig != "" && f.Orig != f.Addr {
			orig = "rfc822;" + f.Orig
		}
		r := dsn.Recipient{Final: f.Addr, Original: orig, Action: "delivered", Status: "2.0.0", LastAttempt: f.LastAttempt}
		if f.Relayed {
			r.Action, r.RemoteMTA = "relayed", f.RemoteMTA
		}
		rcpts = append(rcpts, r)
	}
	if len(rcpts) == 0 {
		log.Info("DSN suppressed: NOTIFY does not ask for it", "kind", kind)
		return nil
	}
	sender, _, err := smtp.ParsePath("<"+env.From+">", true)
	if err != nil {
		log.Warn("bounce dropped: sender address does not parse", "err", err)
		return nil
	}
	routed, reply := bo.Router.Resolve(sender, true)
	if reply != nil {
		log.Warn("bounce dropped: sender address does not route", "reply", reply.Line())
		return nil
	}
	body, err := b.Open()
	if err != nil {
		return fmt.Errorf("bounce: %w", err)
	}
	defer body.Close()
	w, err := bo.Intake.Create()
	if err != nil {
		return fmt.Errorf("bounce: %w", err)
	}
	now := bo.Now()
	msg, err := dsn.Build(dsn.Report{
		ReportingMTA: bo.Hostname, QueueID: env.ID, Sender: env.From, EnvID: env.EnvID,
		Arrival: env.ReceivedAt, Date: now, MessageID: w.ID() + ".dsn@" + bo.Hostname,
		Ret: env.Ret, SMTPUTF8: env.SMTPUTF8, Recipients: rcpts,
	}, body)
	if err != nil {
		w.Abort()
		return err
	}
	if bo.Sign != nil {
		if sigs, err := bo.Sign(ctx, msg); err != nil {
			log.Warn("DSN not signed", "err", err)
		} else {
			for _, s := range sigs {
				w.WriteString(s + "\r\n")
			}
		}
	}
	fmt.Fprintf(w, "Received: by %s (Postamt) id %s;\r\n\t%s\r\n", bo.Hostname, w.ID(), now.Format(time.RFC1123Z))
	w.Write(msg)
	dsnEnv := &mail.Envelope{From: "", Rcpts: routed, ReceivedAt: now, SMTPUTF8: env.SMTPUTF8, Body: "8BITMIME", Client: "127.0.0.1", Helo: "bounce"}
	if err := bo.Intake.Accept(ctx, dsnEnv, w); err != nil {
		if errors.Is(err, queue.ErrClosed) {
			return err
		}
		return fmt.Errorf("bounce: queue DSN: %w", err)
	}
	addrs := make([]string, len(rcpts))
	for i, r := range rcpts {
		addrs[i] = r.Final
	}
	switch {
	case b.Delayed:
		log.Info("delay warning sent", "dsn_id", dsnEnv.ID, "delayed", strings.Join(addrs, ","))
	case len(b.Failed) == 0:
		log.Info("success notice sent", "dsn_id", dsnEnv.ID, "rcpts", strings.Join(addrs, ","))
	default:
		log.Info("bounced", "dsn_id", dsnEnv.ID, "rcpts", strings.Join(addrs, ","))
	}
	return nil
}

// statusOf takes the enhanced code out of a stored reply line ("550 5.1.1 text") with the class
// the report needs: 5 for failures, 4 for delays.
func statusOf(line string, delayed bool) string {
	class := "5"
	if delayed {
		class = "4"
	}
	f := strings.Fields(line)
	if len(f) >= 2 && strings.Count(f[1], ".") == 2 && (f[1][0] == '5' || f[1][0] == '4') {
		return class + f[1][1:]
	}
	return class + ".0.0"
}
