package lmtp

import (
	"context"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	gosmtp "github.com/emersion/go-smtp"

	"github.com/postamt/postamt/internal/mail"
	"github.com/postamt/postamt/internal/transport"
	"github.com/postamt/postamt/internal/transport/lmtp/lmtptest"
)

// scriptedStore refuses "unknown" at RCPT and "full" after DATA.
func scriptedStore(t *testing.T) (*lmtptest.Store, string) {
	store := &lmtptest.Store{
		RcptReply: func(to string) *gosmtp.SMTPError {
			if strings.HasPrefix(to, "unknown@") {
				return &gosmtp.SMTPError{Code: 550, EnhancedCode: gosmtp.EnhancedCode{5, 1, 1}, Message: "User doesn't exist"}
			}
			return nil
		},
		DataReply: func(to string) *gosmtp.SMTPError {
			if strings.HasPrefix(to, "full@") {
				return &gosmtp.SMTPError{Code: 452, EnhancedCode: gosmtp.EnhancedCode{4, 2, 2}, Message: "Quota exceeded"}
			}
			return nil
		},
	}
	return store, store.Start(t)
}

func TestPerRecipientResults(t *testing.T) {
	store, addr := scriptedStore(t)
	tr := &Transport{Address: addr, Hostname: "mx.test"}
	body := "Subject: x\r\n\r\n.dot line\r\nbody\r\n"
	msg := &transport.Message{ID: "Q", From: "s@remote.test", Open: func() (io.ReadCloser, error) {
		return io.NopCloser(strings.NewReader(body)), nil
	}}
	rc := func(a string) mail.Recipient {
		return mail.Recipient{Addr: a, Route: mail.Route{Transport: "lmtp", NextHop: a}}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	res, err := tr.Deliver(ctx, msg, []mail.Recipient{rc("ok@d.test"), rc("unknown@d.test"), rc("full@d.test"), rc("ok2@d.test")})
	if err != nil {
		t.Fatal(err)
	}
	if res[0].Reply != nil || res[3].Reply != nil {
		t.Fatalf("ok recipients failed: %v %v", res[0].Reply, res[3].Reply)
	}
	if r := res[1].Reply; r == nil || r.Code != 550 || !r.Permanent() || !strings.Contains(r.Text, "User doesn't exist") {
		t.Fatalf("unknown: %v", r)
	}
	if r := res[2].Reply; r == nil || r.Code != 452 || !r.Temporary() {
		t.Fatalf("full: %v", r)
	}
	got := store.Messages()
	if len(got) != 2 || got[0].To != "ok@d.test" || got[0].Body != body || got[0].From != "s@remote.test" {
		t.Fatalf("stored %+v", got)
	}
}

func TestUnreachable(t *testing.T) {
	ln, _ := net.Listen("tcp", "127.0.0.1:0")
	addr := ln.Addr().String()
	ln.Close()
	tr := &Transport{Address: addr, Hostname: "mx.test"}
	_, err := tr.Deliver(context.Background(), &transport.Message{}, []mail.Recipient{{Addr: "a@b"}})
	if err == nil {
		t.Fatal("no error")
	}
	if r := err.(interface{ Temporary() bool }); !r.Temporary() {
		t.Fatal("unreachable LMTP must be a temporary failure")
	}
}

// TestSMTPUTF8Downgrade: a store without SMTPUTF8 still gets ASCII-addressed mail whose client
// declared SMTPUTF8, and refuses UTF-8 addresses permanently with 5.6.7.
func TestSMTPUTF8Downgrade(t *testing.T) {
	_, addr := scriptedStore(t)
	tr := &Transport{Address: addr, Hostname: "mx.test"}
	msg := &transport.Message{ID: "Q", From: "s@remote.test", SMTPUTF8: true, Open: func() (io.ReadCloser, error) {
		return io.NopCloser(strings.NewReader("Subject: x\r\n\r\nbody\r\n")), nil
	}}
	res, err := tr.Deliver(context.Background(), msg, []mail.Recipient{{Addr: "ok@d.test", Route: mail.Route{NextHop: "ok@d.test"}}})
	if err != nil || res[0].Reply != nil {
		t.Fatalf("ASCII recipient: %v %v", err, res[0].Reply)
	}
	res, err = tr.Deliver(context.Background(), msg, []mail.Recipient{{Addr: "jörg@d.test", Route: mail.Route{NextHop: "jörg@d.test"}}})
	if err != nil || res[0].Reply == nil || res[0].Reply.Code != 553 || !res[0].Reply.Permanent() {
		t.Fatalf("UTF-8 recipient: %v %v", err, res[0].Reply)
	}
}
