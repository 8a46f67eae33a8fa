package sandbox

import (
	"context"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/postamt/postamt/internal/mail"
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
