package faults

import (
	"context"
	"io"
	"strings"
	"testing"

	"github.com/postamt/postamt/internal/policy"
	"github.com/postamt/postamt/internal/smtp"
)

type fakeData int64

func (m fakeData) Size() int64                { return int64(m) }
func (fakeData) Open() (io.ReadCloser, error) { return io.NopCloser(strings.NewReader("")), nil }

func TestParseReply(t *testing.T) {
	for _, tc := range []struct{ in, want, err string }{
		{in: "451 4.3.0 Try again", want: "451 4.3.0 Try again"},
		{in: "552", want: "552 5.0.0 Error injected by the sandbox"},
		{in: "550 mailbox full", want: "550 5.0.0 mailbox full"},
		{in: "250 ok", err: "4xx or 5xx"},
		{in: "451 5.3.0 x", err: "must be 4.x.y"},
		{in: "", err: "empty"},
	} {
		r, err := ParseReply(tc.in)
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("ParseReply(%q) err = %v, want %q", tc.in, err, tc.err)
			}
			continue
		}
		if err != nil || r.Line() != tc.want {
			t.Errorf("ParseReply(%q) = %v, %v; want %q", tc.in, r, err, tc.want)
		}
	}
}

func TestRules(t *testing.T) {
	f, err := New([]Rule{
		{Stage: "rcpt", Reply: "451 4.3.0 Try later", Probability: 0.1},
		{Stage: "rcpt", Reply: "550 5.1.1 No such user", Probability: 1, Match: "bounce"},
		{Stage: "data", Reply: "552 5.3.4 Too big", Probability: 1, MinSize: 1000},
	})
	if err != nil {
		t.Fatal(err)
	}
	roll := 0.05
	f.Rand = func() float64 { return roll }
	rcpt := func(addr string) policy.Verdict {
		p, _, err := smtp.ParsePath("<"+addr+">", true)
		if err != nil {
			t.Fatal(err)
		}
		return f.CheckRcpt(context.Background(), &policy.Txn{}, p, nil)
	}
	if v := rcpt("a@x.test"); v.Action != policy.Tempfail || v.Reply.Code != 451 {
		t.Errorf("roll 0.05 < 0.1: %+v", v)
	}
	roll = 0.5
	if v := rcpt("a@x.test"); v.Action != policy.Continue {
		t.Errorf("roll 0.5 >= 0.1 fired: %+v", v)
	}
	if v := rcpt("Bounce-me@x.test"); v.Action != policy.Reject || v.Reply.Line() != "550 5.1.1 No such user" {
		t.Errorf("match rule: %+v", v)
	}
	if v := f.CheckData(context.Background(), &policy.Txn{}, fakeData(999)); v.Action != policy.Continue {
		t.Errorf("small message refused: %+v", v)
	}
	if v := f.CheckData(context.Background(), &policy.Txn{}, fakeData(1000)); v.Reply == nil || v.Reply.Code != 552 {
		t.Errorf("big message accepted: %+v", v)
	}
	if err := f.SetRules([]Rule{{Stage: "quit", Reply: "421"}}); err == nil || !strings.Contains(err.Error(), "rule 1: stage") {
		t.Errorf("bad stage: %v", err)
	}
	if len(f.Rules()) != 3 {
		t.Error("a failed SetRules changed the rules")
	}
	if err := f.SetRules(nil); err != nil || len(f.Rules()) != 0 {
		t.Error("clearing rules failed")
	}
	if v := rcpt("Bounce-me@x.test"); v.Action != policy.Continue {
		t.Errorf("cleared rules still fire: %+v", v)
	}
}

func FuzzParseReply(f *testing.F) {
	for _, s := range []string{"451 4.3.0 x", "552", "550 5.1.1", "4", "599 5.999.999 y"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		r, err := ParseReply(s)
		if err != nil {
			return
		}
		if r.Code < 400 || r.Code > 599 || r.Enhanced[0] != r.Code/100 {
			t.Fatalf("ParseReply(%q) = %+v", s, r)
		}
	})
}
