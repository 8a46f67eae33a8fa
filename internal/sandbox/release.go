package sandbox

import (
	"context"
	"fmt"
	"time"

	"github.com/postamt/postamt/internal/mail"
	"github.com/postamt/postamt/internal/smtp"
	"github.com/postamt/postamt/internal/spool"
)

// Intake is the queue's entry point (see queue.Queue).
type Intake interface {
	Create() (*spool.Writer, error)
	Accept(ctx context.Context, env *mail.Envelope, w *spool.Writer) error
}

// Releaser sends a captured message on through the normal outbound path: it goes back into
// the queue with every recipient routed to the remote transport (MX, transport map or relay
// host, as the [outbound] configuration says), never to the sandbox again.
type Releaser struct {
	Store  *Store
	Intake Intake
	// Route gives the outbound route for a recipient's ASCII domain and address
	// (router.RemoteRoute).
	Route    func(domain, addr string) mail.Route
	Hostname string
	Now      func() time.Time
}

// Release queues message id from from to to and returns the new queue ID.
func (r *Releaser) Release(ctx context.Context, id, from string, to []string) (string, error) {
	if len(to) == 0 {
		return "", fmt.Errorf("at least one recipient is needed")
	}
	if len(to) > 100 {
		return "", fmt.Errorf("at most 100 recipients")
	}
	var rcpts []mail.Recipient
	for _, t := range to {
		a, err := smtp.ParseAddress(t, true)
		if err != nil || a.Domain == "" {
			return "", fmt.Errorf("recipient %q is not an address", t)
		}
		rcpts = append(rcpts, mail.Recipient{Addr: a.String(), Orig: a.String(), Route: r.Route(a.ASCIIDomain(), a.String())})
	}
	if from != "" {
		if _, err := smtp.ParseAddress(from, true); err != nil {
			return "", fmt.Errorf("sender %q is not an address", from)
		}
	}
	raw, err := r.Store.Raw(ctx, id)
	if err != nil {
		return "", err
	}
	now := time.Now
	if r.Now != nil {
		now = r.Now
	}
	w, err := r.Intake.Create()
	if err != nil {
		return "", err
	}
	fmt.Fprintf(w, "Received: by %s (Postamt sandbox release) id %s;\r\n\t%s\r\n", r.Hostname, w.ID(), now().Format(time.RFC1123Z))
	if _, err := w.Write(raw); err != nil {
		w.Abort()
		return "", err
	}
	// SMTPUTF8 only when an address needs it: asking for it makes delivery fail at servers
	// that lack the extension.
	utf8 := !isASCII(from)
	for _, t := range to {
		utf8 = utf8 || !isASCII(t)
	}
	env := &mail.Envelope{From: from, Rcpts: rcpts, ReceivedAt: now(), Body: "8BITMIME", SMTPUTF8: utf8, Client: "127.0.0.1", Helo: "sandbox-release"}
	if err := r.Intake.Accept(ctx, env, w); err != nil {
		return "", err
	}
	return env.ID, nil
}

func isASCII(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] >= 0x80 {
			return false
		}
	}
	return true
}
