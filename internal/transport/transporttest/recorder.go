// Package transporttest provides Recorder, a transport that keeps what it is given in memory and
// fails recipients on request: the fake the queue and server tests deliver into.
package transporttest

import (
	"context"
	"io"
	"sync"

	"github.com/postamt/postamt/internal/mail"
	"github.com/postamt/postamt/internal/smtp"
	"github.com/postamt/postamt/internal/transport"
)

// Delivery is one recipient's delivered copy.
type Delivery struct {
	ID   string
	From string
	Rcpt mail.Recipient
	Body []byte
}

// Recorder is a transport.Transport for tests.
type Recorder struct {
	TransportName string // default "maildir", so routers configured for Maildir deliver here
	mu            sync.Mutex
	deliveries    []Delivery
	attempts      int
	// Fail maps a recipient address to the reply its attempts get; a nil entry means success.
	Fail map[string]*smtp.Reply
	// Err, when set, fails whole attempts.
	Err     error
	Arrived chan Delivery // optional: each delivery is also sent here
}

func (r *Recorder) Name() string {
	if r.TransportName == "" {
		return "maildir"
	}
	return r.TransportName
}

// SetFail changes the failure for addr (nil to succeed) while deliveries run.
func (r *Recorder) SetFail(addr string, reply *smtp.Reply) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.Fail == nil {
		r.Fail = map[string]*smtp.Reply{}
	}
	r.Fail[addr] = reply
}

func (r *Recorder) Deliver(ctx context.Context, msg *transport.Message, rcpts []mail.Recipient) ([]transport.Result, error) {
	r.mu.Lock()
	r.attempts++
	err := r.Err
	r.mu.Unlock()
	if err != nil {
		return nil, err
	}
	f, err := msg.Open()
	if err != nil {
		return nil, err
	}
	body, err := io.ReadAll(f)
	f.Close()
	if err != nil {
		return nil, err
	}
	res := make([]transport.Result, len(rcpts))
	for i, rc := range rcpts {
		r.mu.Lock()
		fail := r.Fail[rc.Addr]
		if fail == nil {
			d := Delivery{ID: msg.ID, From: msg.From, Rcpt: rc, Body: body}
			r.deliveries = append(r.deliveries, d)
			if r.Arrived != nil {
				r.Arrived <- d
			}
		}
		r.mu.Unlock()
		res[i].Reply = fail
	}
	return res, nil
}

// Deliveries returns a copy of everything delivered so far.
func (r *Recorder) Deliveries() []Delivery {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]Delivery(nil), r.deliveries...)
}

// Attempts counts calls to Deliver.
func (r *Recorder) Attempts() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.attempts
}
