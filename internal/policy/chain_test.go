package policy

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/postamt/postamt/internal/smtp"
)

type fixed struct {
	name  string
	v     Verdict
	calls int
}

func (f *fixed) Name() string { return f.name }
func (f *fixed) CheckMail(ctx context.Context, t *Txn) Verdict {
	f.calls++
	return f.v
}

func TestChainMail(t *testing.T) {
	reject := Verdict{Action: Reject, Reply: smtp.NewReply(550, smtp.EnhancedCode{5, 7, 1}, "no"), Reason: "listed"}
	for _, tc := range []struct {
		name       string
		entries    []Entry
		score      float64
		wantAction Action
		wantCode   int
		wantCalls  []int
	}{
		{"empty chain accepts", nil, 0, Continue, 0, nil},
		{"first refusal stops the chain",
			[]Entry{{Check: &fixed{name: "a", v: reject}}, {Check: &fixed{name: "b"}}}, 0, Reject, 550, []int{1, 0}},
		{"strongest action wins",
			[]Entry{{Check: &fixed{name: "a", v: Verdict{Action: Tag}}}, {Check: &fixed{name: "b", v: Verdict{Action: Quarantine}}}}, 0, Quarantine, 0, []int{1, 1}},
		{"fail-open skips a broken check",
			[]Entry{{Check: &fixed{name: "a", v: Verdict{Action: Reject, Err: errors.New("down")}}}}, 0, Continue, 0, []int{1}},
		{"fail-closed defers",
			[]Entry{{Check: &fixed{name: "a", v: Verdict{Err: errors.New("down")}}, FailClosed: true}, {Check: &fixed{name: "b"}}}, 0, Tempfail, 451, []int{1, 0}},
		{"refusal without a reply gets the default",
			[]Entry{{Check: &fixed{name: "a", v: Verdict{Action: Tempfail}}}}, 0, Tempfail, 451, []int{1}},
		{"score reaches the threshold",
			[]Entry{{Check: &fixed{name: "a", v: Verdict{Score: 2.5}}}, {Check: &fixed{name: "b", v: Verdict{Score: 2.5}}}}, 5, Reject, 550, []int{1, 1}},
		{"score below the threshold",
			[]Entry{{Check: &fixed{name: "a", v: Verdict{Score: 2.5}}}}, 5, Continue, 0, []int{1}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := &Chain{Entries: tc.entries, RejectScore: tc.score}
			txn := &Txn{}
			r := c.Mail(context.Background(), txn)
			if r.Action != tc.wantAction {
				t.Errorf("action %v, want %v", r.Action, tc.wantAction)
			}
			if tc.wantCode != 0 && (r.Reply == nil || r.Reply.Code != tc.wantCode) {
				t.Errorf("reply %v, want code %d", r.Reply, tc.wantCode)
			}
			if tc.wantCode == 0 && r.Refused() {
				t.Errorf("refused: %v", r.Reply)
			}
			for i, e := range tc.entries {
				if got := e.Check.(*fixed).calls; got != tc.wantCalls[i] {
					t.Errorf("check %d called %d times, want %d", i, got, tc.wantCalls[i])
				}
			}
			if !r.Refused() && txn.Action != r.Action {
				t.Errorf("transaction keeps action %v, want %v", txn.Action, r.Action)
			}
		})
	}
}

func TestNilChain(t *testing.T) {
	var c *Chain
	if r := c.Mail(context.Background(), &Txn{}); r.Refused() || r.Action != Continue {
		t.Errorf("nil chain: %+v", r)
	}
}

func TestParseAction(t *testing.T) {
	for _, s := range []string{"continue", "tag", "quarantine", "tempfail", "Reject"} {
		if _, err := ParseAction(s); err != nil {
			t.Errorf("%s: %v", s, err)
		}
	}
	if _, err := ParseAction("drop"); err == nil {
		t.Error("drop accepted")
	}
}

type addHeader struct{ name, h string }

func (a addHeader) Name() string { return a.name }
func (a addHeader) CheckData(_ context.Context, t *Txn, _ Message) Verdict {
	return Verdict{Headers: []string{a.h}}
}

// seeHeaders records what AddedHeaders showed it.
type seeHeaders struct{ saw *[]string }

func (seeHeaders) Name() string { return "see" }
func (s seeHeaders) CheckData(_ context.Context, t *Txn, _ Message) Verdict {
	*s.saw = t.AddedHeaders()
	return Verdict{Headers: []string{"X-Seen: yes"}}
}

// A later check of the same stage sees the headers of the earlier ones (a signer must sign the
// fixed-up message); a failed check's headers are not among them.
func TestAddedHeadersWithinStage(t *testing.T) {
	var saw []string
	c := &Chain{Entries: []Entry{
		{Check: addHeader{"a", "Date: x"}},
		{Check: errCheck{}},
		{Check: addHeader{"b", "Message-ID: <y>"}},
		{Check: seeHeaders{&saw}},
	}}
	txn := &Txn{Conn: &Conn{}, Headers: []string{"X-Mail-Stage: 1"}}
	c.Data(context.Background(), txn, nil)
	if got := strings.Join(saw, "|"); got != "X-Mail-Stage: 1|Date: x|Message-ID: <y>" {
		t.Errorf("AddedHeaders during the stage = %q", got)
	}
	if got := strings.Join(txn.Headers, "|"); got != "X-Mail-Stage: 1|Date: x|Message-ID: <y>|X-Seen: yes" {
		t.Errorf("Headers after the stage = %q", got)
	}
}

type errCheck struct{}

func (errCheck) Name() string { return "err" }
func (errCheck) CheckData(context.Context, *Txn, Message) Verdict {
	return Verdict{Headers: []string{"X-Broken: 1"}, Err: errors.New("down")}
}
