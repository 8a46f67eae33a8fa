// Package sandbox is the capture transport: instead of delivering, it saves the message in the
// sandbox store. Captured mail has therefore passed through the SMTP session, the policy chain,
// the spool and the queue like any other mail; only the last step differs.
package sandbox

import (
	"context"
	"fmt"
	"io"

	"github.com/postamt/postamt/internal/mail"
	"github.com/postamt/postamt/internal/policy/faults"
	"github.com/postamt/postamt/internal/sandbox"
	"github.com/postamt/postamt/internal/transport"
)

// Name is the transport name routes use.
const Name = "sandbox"

// Transport saves messages in Store.
type Transport struct {
	Store *sandbox.Store
	// Faults, when set, may fail chosen recipients at delivery time (stage "delivery").
	Faults *faults.Faults
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
	results := make([]transport.Result, len(rcpts))
	var to []string
	for i, rc := range rcpts {
		// The address the client gave: a tester asserts on what their program sent.
		addr := rc.Orig
		if addr == "" {
			addr = rc.Addr
		}
		if reply := t.Faults.Delivery(addr, msg.Size); reply != nil {
			results[i] = transport.Result{Reply: reply, RemoteMTA: "sandbox"}
			continue
		}
		to = append(to, addr)
	}
	if len(to) == 0 {
		return results, nil
	}
	if _, err := t.Store.Save(ctx, sandbox.Envelope{ID: msg.ID, From: msg.From, To: to, ReceivedAt: msg.ReceivedAt}, raw); err != nil {
		return nil, err
	}
	return results, nil
}
