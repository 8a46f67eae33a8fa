package bounce

import (
	"context"
	"io"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/postamt/postamt/internal/config"
	"github.com/postamt/postamt/internal/mail"
	"github.com/postamt/postamt/internal/queue"
	"github.com/postamt/postamt/internal/router"
	"github.com/postamt/postamt/internal/spool"
)

type fakeIntake struct {
	sp   *spool.Spool
	envs []*mail.Envelope
	msgs []string
}

func (f *fakeIntake) Create() (*spool.Writer, error) { return f.sp.Create("DSN1") }
func (f *fakeIntake) Accept(_ context.Context, env *mail.Envelope, w *spool.Writer) error {
	b, _ := w.Inline()
	f.msgs = append(f.msgs, string(b))
	f.envs = append(f.envs, env)
	w.Release()
	return nil
}

func TestWhoGetsADSN(t *testing.T) {
	sp, _ := spool.New(t.TempDir(), nil)
	rt := router.New(config.Local{Domains: []string{"example.test"}, Mailboxes: []string{"alice@example.test"}, Transport: "maildir"}, config.Outbound{})
	failed := func(notify string) []queue.Failed {
		return []queue.Failed{{Recipient: mail.Recipient{Addr: "bob@remote.test", Orig: "bob@remote.test", Notify: notify}, LastError: "550 5.1.1 no such user"}}
	}
	open := func() (io.ReadCloser, error) {
		return io.NopCloser(strings.NewReader("Subject: x\r\n\r\nbody\r\n")), nil
	}
	for _, tt := range []struct {
		name, from, notify string
		want               bool
	}{
		{"default notify", "alice@example.test", "", true},
		{"failure asked", "alice@example.test", "FAILURE,DELAY", true},
		{"never", "alice@example.test", "NEVER", false},
		{"success only", "alice@example.test", "SUCCESS", false},
		{"null sender", "", "", false},
		{"unroutable sender", "nobody@example.test", "", false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			in := &fakeIntake{sp: sp}
			bo := &Bouncer{Hostname: "mx.example.test", Router: rt, Intake: in, Logger: slog.New(slog.DiscardHandler), Now: time.Now}
			err := bo.Bounce(context.Background(), &queue.Bounce{Env: &mail.Envelope{ID: "Q1", From: tt.from}, Failed: failed(tt.notify), Open: open})
			if err != nil {
				t.Fatal(err)
			}
			if got := len(in.envs) == 1; got != tt.want {
				t.Fatalf("DSN sent: %v, want %v", got, tt.want)
			}
			if tt.want {
				env := in.envs[0]
				if env.From != "" || len(env.Rcpts) != 1 || env.Rcpts[0].Addr != "alice@example.test" {
					t.Fatalf("DSN envelope %+v", env)
				}
				if !strings.Contains(in.msgs[0], "Final-Recipient: rfc822; bob@remote.test") || !strings.Contains(in.msgs[0], "Status: 5.1.1") {
					t.Fatalf("DSN:\n%s", in.msgs[0])
				}
			}
		})
	}
}

func TestDelayNotice(t *testing.T) {
	sp, _ := spool.New(t.TempDir(), nil)
	rt := router.New(config.Local{Domains: []string{"example.test"}, Mailboxes: []string{"alice@example.test"}, Transport: "maildir"}, config.Outbound{})
	in := &fakeIntake{sp: sp}
	bo := &Bouncer{Hostname: "mx.example.test", Router: rt, Intake: in, Logger: slog.New(slog.DiscardHandler), Now: time.Now}
	open := func() (io.ReadCloser, error) {
		return io.NopCloser(strings.NewReader("Subject: x\r\n\r\nbody\r\n")), nil
	}
	b := &queue.Bounce{Env: &mail.Envelope{ID: "Q1", From: "alice@example.test"}, Delayed: true, Open: open,
		Failed: []queue.Failed{{Recipient: mail.Recipient{Addr: "bob@remote.test"}, LastError: "451 4.4.1 no answer"}}}
	if err := bo.Bounce(context.Background(), b); err != nil {
		t.Fatal(err)
	}
	if len(in.msgs) != 1 || !strings.Contains(in.msgs[0], "Action: delayed") || !strings.Contains(in.msgs[0], "Status: 4.4.1") ||
		!strings.Contains(in.msgs[0], "Subject: Delayed Mail") {
		t.Fatalf("%q", in.msgs)
	}
	// NOTIFY=FAILURE only: no delay notice.
	in2 := &fakeIntake{sp: sp}
	bo.Intake = in2
	b.Failed[0].Notify = "FAILURE"
	bo.Bounce(context.Background(), b)
	if len(in2.msgs) != 0 {
		t.Fatal("delay notice sent although NOTIFY did not ask for DELAY")
	}
}
