// Package sandbox is the capture transport: instead of delivering, it saves the message in the
// sandbox store. Captured mail has therefore passed through the SMTP session, the policy chain,
// the spool and the queue like any other mail; only the last step differs.
package sandbox

import (
	"context"
	"fmt"
	"io"

	"github.com/postamt/postamt/internal/mail"
	"github.com/postamt/postamt/internal/sandbox"
	"github.com/postamt/postamt/internal/transport"
)

// Name is the transport name routes use.
const Name = "sandbox"

// Transport saves messages in Store.
type Transport struct {
	Store *sandbox.Store
}

func (t *Transport) Name() string { return Name }

// Deliver saves one message for all rcpts. The queue ID is the store's message ID, so an
// attempt repeated after a crash keeps a single copy.
func (t *Transport) Deliver(ctx context.Context, msg *transport.Message, rcpts []mail.Recipient) ([]transport.Result, error) {
	r, err := msg.Open()
	if err != nil {
		return nil, err
	}
	defer r.Close()
	raw, err := io.ReadAll(r)
	if err != nil {
		return nil, fmt.Errorf("sandbox: read body: %w", err)
	}
	to := make([]string, len(rcpts))
	for i, rc := range rcpts {
		// The address the client gave: a tester asserts on what their program sent.
		to[i] = rc.Orig
		if to[i] == "" {
			to[i] = rc.Addr
		}
	}
	if _, err := t.Store.Save(ctx, sandbox.Envelope{ID: msg.ID, From: msg.From, To: to, ReceivedAt: msg.ReceivedAt}, raw); err != nil {
		return nil, err
	}
	return make([]transport.Result, len(rcpts)), nil
}
