// Package transport defines how the queue hands a message to the thing that delivers it
// (a Maildir, an LMTP server, a remote MX, the sandbox store). Transports make one attempt and
// report one result per recipient; retries, backoff and bounces are the queue's job.
package transport

import (
	"context"
	"io"
	"time"

	"github.com/postamt/postamt/internal/mail"
	"github.com/postamt/postamt/internal/smtp"
)

// Message is what a transport gets for one attempt.
type Message struct {
	ID         string
	From       string // reverse-path without brackets; "" is the null sender
	Size       int64
	ReceivedAt time.Time
	SMTPUTF8   bool
	Body8Bit   bool
	Ret        string // RFC 3461 RET= to pass on: FULL, HDRS or ""
	EnvID      string // RFC 3461 ENVID= to pass on (decoded)
	// Open returns a fresh reader over the stored body (headers we added on the way in included).
	Open func() (io.ReadCloser, error)
}

// Result is the outcome for one recipient.
type Result struct {
	// Reply is nil when the recipient was delivered; otherwise the remote reply or one we made
	// up. Temporary replies are retried, permanent ones end delivery for that recipient.
	Reply     *smtp.Reply
	RemoteMTA string // who answered, for logs and the DSN Remote-MTA field
	TLS       string // the TLS outcome for logs: "none", or version and cipher
	// Relayed says the recipient was handed to a next hop that does not support DSN, so a
	// sender who asked for NOTIFY=SUCCESS gets a "relayed" notice from us (RFC 3461 §6.2.2).
	Relayed bool
}

// Transport delivers messages.
//
// Deliver makes one attempt for rcpts, which share one route. It returns one Result per recipient,
// in the same order. A non-nil error means the attempt as a whole failed (no connection, disk
// error); the queue then applies smtp.ReplyFor(err) to every recipient. Deliver must honour ctx.
type Transport interface {
	Name() string
	Deliver(ctx context.Context, msg *Message, rcpts []mail.Recipient) ([]Result, error)
}
