package policy

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/postamt/postamt/internal/mail"
	"github.com/postamt/postamt/internal/smtp"
)

// Entry is one configured check in a Chain.
type Entry struct {
	Check Check
	// Timeout bounds one call; 0 means 30 s. A check must honour ctx.
	Timeout time.Duration
	// FailClosed decides what a backend failure (Verdict.Err) means: true → 451 4.7.1 and
	// the client retries later; false (fail-open) → the check is skipped and the failure logged.
	FailClosed bool
}

// Chain runs checks in configured order at each stage. The zero Chain (or nil) accepts all.
type Chain struct {
	Entries []Entry
	// RejectScore, when > 0, rejects a message whose summed Verdict.Score reaches it.
	RejectScore float64
}

// Outcome records one check's verdict for the per-message log line.
type Outcome struct {
	Check  string
	Stage  string
	Action Action
	Result string
	Reason string
	Err    error
	Took   time.Duration
}

func (o Outcome) String() string {
	s := o.Check + "=" + o.Result
	if o.Result == "" {
		s = o.Check + "=" + o.Action.String()
	}
	if o.Err != nil {
		s += "(error)"
	}
	return s
}

// Result is the combined outcome of a stage.
type Result struct {
	Action     Action
	Reply      *smtp.Reply // set for Tempfail and Reject
	Headers    []string
	Score      float64
	Reason     string // of the deciding check
	Outcomes   []Outcome
	Overwrites []Overwrite
	Edits      []EnvelopeEdit
}

// Refused reports whether the client must get Reply.
func (r *Result) Refused() bool { return r.Action >= Tempfail }

// Summary is the outcomes as one log value: "spf=pass dkim=fail dnsbl=reject". A check that
// had nothing to say (Continue, no result, no error) is left out.
func Summary(outcomes []Outcome) string {
	parts := make([]string, 0, len(outcomes))
	for _, o := range outcomes {
		if o.Action == Continue && o.Result == "" && o.Err == nil {
			continue
		}
		parts = append(parts, o.String())
	}
	return strings.Join(parts, " ")
}

var defaultReplies = map[Action]*smtp.Reply{
	Tempfail: smtp.NewReply(451, smtp.EnhancedCode{4, 7, 1}, "Message deferred by local policy, try again later"),
	Reject:   smtp.NewReply(550, smtp.EnhancedCode{5, 7, 1}, "Message refused by local policy"),
}

// run calls call for every entry whose check has the stage, in order, stopping at the first
// refusal. score is the transaction's score so far (for the threshold).
func (c *Chain) run(ctx context.Context, stage string, score float64, call func(ctx context.Context, ch Check) (Verdict, bool)) Result {
	var res Result
	if c == nil {
		return res
	}
	res.Score = score
	for _, e := range c.Entries {
		timeout := e.Timeout
		if timeout <= 0 {
			timeout = 30 * time.Second
		}
		cctx, cancel := context.WithTimeout(ctx, timeout)
		start := time.Now()
		v, ok := call(cctx, e.Check)
		cancel()
		if !ok {
			continue
		}
		o := Outcome{Check: e.Check.Name(), Stage: stage, Action: v.Action, Result: v.Result, Reason: v.Reason, Err: v.Err, Took: time.Since(start)}
		if v.Err != nil {
			// The backend failed: the configured rule decides, not whatever the check guessed.
			if e.FailClosed {
				v = Verdict{Action: Tempfail, Reply: smtp.NewReply(451, smtp.EnhancedCode{4, 7, 1},
					fmt.Sprintf("Cannot check the message right now (%s unavailable), try again later", e.Check.Name()))}
			} else {
				v = Verdict{Action: Continue}
			}
			o.Action = v.Action
		}
		res.Outcomes = append(res.Outcomes, o)
		res.Headers = append(res.Headers, v.Headers...)
		if v.Edit != nil {
			res.Edits = append(res.Edits, *v.Edit)
		}
		res.Overwrites = append(res.Overwrites, v.Overwrites...)
		res.Score += v.Score
		if v.Action > res.Action {
			res.Action, res.Reason = v.Action, v.Reason
			res.Reply = v.Reply
		}
		if c.RejectScore > 0 && res.Score >= c.RejectScore && res.Action < Reject {
			res.Action = Reject
			res.Reason = fmt.Sprintf("score %.1f reached the limit %.1f", res.Score, c.RejectScore)
			res.Reply = smtp.Replyf(550, smtp.EnhancedCode{5, 7, 1}, "Message refused: it looks like spam (score %.1f)", res.Score)
		}
		if res.Refused() {
			break
		}
	}
	if res.Refused() && res.Reply == nil {
		res.Reply = defaultReplies[res.Action]
	}
	return res
}

// Conn runs the connection checks (before the greeting).
func (c *Chain) Conn(ctx context.Context, conn *Conn) Result {
	return c.run(ctx, "connect", 0, func(ctx context.Context, ch Check) (Verdict, bool) {
		if k, ok := ch.(ConnCheck); ok {
			return k.CheckConn(ctx, conn), true
		}
		return Verdict{}, false
	})
}

// Helo runs the HELO/EHLO checks.
func (c *Chain) Helo(ctx context.Context, conn *Conn) Result {
	return c.run(ctx, "helo", 0, func(ctx context.Context, ch Check) (Verdict, bool) {
		if k, ok := ch.(HeloCheck); ok {
			return k.CheckHelo(ctx, conn), true
		}
		return Verdict{}, false
	})
}

// Mail runs the MAIL FROM checks.
func (c *Chain) Mail(ctx context.Context, t *Txn) Result {
	return c.stage(ctx, "mail", t, func(ctx context.Context, ch Check) (Verdict, bool) {
		if k, ok := ch.(MailCheck); ok {
			return k.CheckMail(ctx, t), true
		}
		return Verdict{}, false
	})
}

// Rcpt runs the RCPT TO checks for one recipient.
func (c *Chain) Rcpt(ctx context.Context, t *Txn, rcpt smtp.Path, routed []mail.Recipient) Result {
	return c.stage(ctx, "rcpt", t, func(ctx context.Context, ch Check) (Verdict, bool) {
		if k, ok := ch.(RcptCheck); ok {
			return k.CheckRcpt(ctx, t, rcpt, routed), true
		}
		return Verdict{}, false
	})
}

// Data runs the end-of-data checks.
func (c *Chain) Data(ctx context.Context, t *Txn, m Message) Result {
	return c.stage(ctx, "data", t, func(ctx context.Context, ch Check) (Verdict, bool) {
		if k, ok := ch.(DataCheck); ok {
			return k.CheckData(ctx, t, m), true
		}
		return Verdict{}, false
	})
}

// stage runs a transaction stage and keeps what it found on the transaction, so that headers
// and scores from MAIL and RCPT reach the message.
func (c *Chain) stage(ctx context.Context, name string, t *Txn, call func(ctx context.Context, ch Check) (Verdict, bool)) Result {
	t.pending = nil
	r := c.run(ctx, name, t.Score, func(ctx context.Context, ch Check) (Verdict, bool) {
		v, ok := call(ctx, ch)
		if ok && v.Err == nil {
			t.pending = append(t.pending, v.Headers...)
		}
		return v, ok
	})
	t.pending = nil
	if c == nil {
		return r
	}
	t.Score = r.Score
	t.Outcomes = append(t.Outcomes, r.Outcomes...)
	if !r.Refused() {
		t.Headers = append(t.Headers, r.Headers...)
		t.Overwrites = append(t.Overwrites, r.Overwrites...)
		t.Edits = append(t.Edits, r.Edits...)
		if r.Action > t.Action {
			t.Action, t.Reason = r.Action, r.Reason
		}
	}
	return r
}

// Close tells the checks that keep per-connection state that the connection has ended.
func (c *Chain) Close(conn *Conn) {
	if c == nil {
		return
	}
	for _, e := range c.Entries {
		if k, ok := e.Check.(ConnCloser); ok {
			k.CloseConn(conn)
		}
	}
}
