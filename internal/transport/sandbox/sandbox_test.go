package sandbox

import (
	"context"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/postamt/postamt/internal/mail"
	"github.com/postamt/postamt/internal/policy/faults"
	store "github.com/postamt/postamt/internal/sandbox"
	"github.com/postamt/postamt/internal/transport"
)

func TestDeliverCaptures(t *testing.T) {
	st, err := store.Open(store.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	tr := &Transport{Store: st}
	raw := "Subject: captured\r\n\r\nbody\r\n"
	msg := &transport.Message{ID: "Q1", From: "app@dev.test", Size: int64(len(raw)), ReceivedAt: time.Now(),
		Open: func() (io.ReadCloser, error) { return io.NopCloser(strings.NewReader(raw)), nil }}
	rcpts := []mail.Recipient{
		{Addr: "A@x.test", Orig: "A@x.test", Route: mail.Route{Transport: Name, NextHop: Name}},
		{Addr: "b@y.test", Route: mail.Route{Transport: Name, NextHop: Name}},
	}
	for range 2 { // a repeated attempt keeps one copy
		res, err := tr.Deliver(context.Background(), msg, rcpts)
		if err != nil || len(res) != 2 || res[0].Reply != nil || res[1].Reply != nil {
			t.Fatalf("Deliver = %+v, %v", res, err)
		}
	}
	pg, err := st.List(context.Background(), nil, 10, 0)
	if err != nil || pg.Total != 1 {
		t.Fatalf("stored %d messages, want 1 (%v)", pg.Total, err)
	}
	m := pg.Messages[0]
	if m.ID != "Q1" || m.EnvelopeFrom != "app@dev.test" || strings.Join(m.EnvelopeTo, ",") != "A@x.test,b@y.test" || m.Subject != "captured" {
		t.Errorf("stored = %+v", m)
	}
	st.Close()
	if _, err := tr.Deliver(context.Background(), &transport.Message{ID: "Q2", Open: msg.Open}, rcpts); err == nil {
		t.Error("Deliver into a closed store succeeded; the queue must see an error and retry")
	}
}

// TestDeliveryFaults: a delivery rule fails its recipients with the rule's reply; the others
// are captured; a message whose every recipient fails is not stored.
func TestDeliveryFaults(t *testing.T) {
	st, err := store.Open(store.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	f, err := faults.New([]faults.Rule{{Stage: "delivery", Reply: "550 5.1.1 Mailbox gone", Probability: 1, Match: "gone"}})
	if err != nil {
		t.Fatal(err)
	}
	tr := &Transport{Store: st, Faults: f}
	raw := "Subject: partly\r\n\r\nx\r\n"
	open := func() (io.ReadCloser, error) { return io.NopCloser(strings.NewReader(raw)), nil }
	rc := func(a string) mail.Recipient {
		return mail.Recipient{Addr: a, Orig: a, Route: mail.Route{Transport: Name, NextHop: Name}}
	}
	res, err := tr.Deliver(context.Background(), &transport.Message{ID: "Q1", From: "a@x.test", Open: open}, []mail.Recipient{rc("ok@x.test"), rc("gone@x.test")})
	if err != nil || res[0].Reply != nil || res[1].Reply == nil || res[1].Reply.Line() != "550 5.1.1 Mailbox gone" {
		t.Fatalf("Deliver = %+v, %v", res, err)
	}
	res, err = tr.Deliver(context.Background(), &transport.Message{ID: "Q2", From: "a@x.test", Open: open}, []mail.Recipient{rc("gone@y.test")})
	if err != nil || res[0].Reply == nil {
		t.Fatalf("Deliver all failing = %+v, %v", res, err)
	}
	pg, _ := st.List(context.Background(), nil, 10, 0)
	if pg.Total != 1 || strings.Join(pg.Messages[0].EnvelopeTo, ",") != "ok@x.test" {
		t.Errorf("stored = %+v", pg.Messages)
	}
}
