// Package faults is the sandbox's chaos check: rules that make the server answer chosen SMTP
// errors at chosen stages (451 4.3.0 at RCPT for 10% of recipients, 552 for messages over a
// size), so that a program under test can prove it handles them. It is an ordinary policy
// check; rules can be replaced while the server runs (the sandbox API does).
package faults

import (
	"context"
	"fmt"
	"math/rand/v2"
	"strconv"
	"strings"
	"sync"

	"github.com/postamt/postamt/internal/mail"
	"github.com/postamt/postamt/internal/policy"
	"github.com/postamt/postamt/internal/smtp"
)

// Rule is one fault.
type Rule struct {
	// Stage is connect, helo, mail, rcpt or data (answers in the SMTP session), or delivery
	// (the capture transport fails for the recipient, so the queue retries a 4xx and returns
	// a 5xx to the sender in a DSN, as it would for a real destination).
	Stage string `json:"stage"`
	// Reply is the answer: "451 4.3.0 Temporary failure"; the enhanced code and text are
	// optional.
	Reply string `json:"reply"`
	// Probability is the chance the rule fires, from 0 (never) to 1 (always).
	Probability float64 `json:"probability"`
	// Match, when set, limits the rule to addresses containing it (case-insensitive): the
	// sender at MAIL and DATA, the recipient at RCPT and delivery.
	Match string `json:"match,omitempty"`
	// MinSize, when set, limits the rule to messages of at least this many bytes (DATA and
	// delivery, or MAIL with a SIZE parameter).
	MinSize int64 `json:"min_size,omitempty"`
}

var stages = []string{"connect", "helo", "mail", "rcpt", "data", "delivery"}

// ParseReply reads "451 4.3.0 text" (enhanced code and text optional).
func ParseReply(s string) (*smtp.Reply, error) {
	f := strings.Fields(s)
	if len(f) == 0 {
		return nil, fmt.Errorf("reply is empty; write e.g. \"451 4.3.0 Try again later\"")
	}
	code, err := strconv.Atoi(f[0])
	if err != nil || code < 400 || code > 599 {
		return nil, fmt.Errorf("reply %q: the code must be 4xx or 5xx", s)
	}
	enh := smtp.EnhancedCode{code / 100, 0, 0}
	rest := f[1:]
	if len(rest) > 0 && strings.Count(rest[0], ".") == 2 {
		var a, b, c int
		if n, _ := fmt.Sscanf(rest[0], "%d.%d.%d", &a, &b, &c); n != 3 || a != code/100 || b < 0 || c < 0 || b > 999 || c > 999 {
			return nil, fmt.Errorf("reply %q: enhanced code %q must be %d.x.y like the code", s, rest[0], code/100)
		}
		enh = smtp.EnhancedCode{a, b, c}
		rest = rest[1:]
	}
	text := strings.Join(rest, " ")
	if text == "" {
		text = "Error injected by the sandbox"
	}
	return smtp.NewReply(code, enh, text), nil
}

// Validate checks a rule and says what is wrong in the user's words.
func (r Rule) Validate() error {
	ok := false
	for _, s := range stages {
		ok = ok || r.Stage == s
	}
	if !ok {
		return fmt.Errorf("stage %q: use one of %s", r.Stage, strings.Join(stages, ", "))
	}
	if _, err := ParseReply(r.Reply); err != nil {
		return err
	}
	if r.Probability < 0 || r.Probability > 1 {
		return fmt.Errorf("probability %v: must be from 0 to 1", r.Probability)
	}
	if r.MinSize < 0 {
		return fmt.Errorf("min_size must not be negative")
	}
	return nil
}

type compiled struct {
	Rule
	reply *smtp.Reply
}

// Faults is the check. The zero value has no rules.
type Faults struct {
	mu    sync.RWMutex
	rules []compiled
	// Rand returns a number in [0, 1); nil uses math/rand/v2. Tests make it deterministic.
	Rand func() float64
}

// New returns a check with rules.
func New(rules []Rule) (*Faults, error) {
	f := &Faults{}
	return f, f.SetRules(rules)
}

// SetRules replaces every rule at once; on error nothing changes.
func (f *Faults) SetRules(rules []Rule) error {
	c := make([]compiled, 0, len(rules))
	for i, r := range rules {
		if err := r.Validate(); err != nil {
			return fmt.Errorf("rule %d: %w", i+1, err)
		}
		reply, _ := ParseReply(r.Reply)
		c = append(c, compiled{Rule: r, reply: reply})
	}
	f.mu.Lock()
	f.rules = c
	f.mu.Unlock()
	return nil
}

// Rules returns a copy of the rules.
func (f *Faults) Rules() []Rule {
	f.mu.RLock()
	defer f.mu.RUnlock()
	out := make([]Rule, len(f.rules))
	for i, r := range f.rules {
		out[i] = r.Rule
	}
	return out
}

func (f *Faults) Name() string { return "chaos" }

func (f *Faults) fire(stage, addr string, size int64) policy.Verdict {
	reply := f.match(stage, addr, size)
	if reply == nil {
		return policy.Verdict{}
	}
	a := policy.Reject
	if reply.Code < 500 {
		a = policy.Tempfail
	}
	return policy.Verdict{Action: a, Reply: reply, Result: "injected", Reason: "chaos rule: " + reply.Line()}
}

// Delivery returns the reply a delivery rule gives for rcpt, or nil (see transport/sandbox).
func (f *Faults) Delivery(rcpt string, size int64) *smtp.Reply {
	if f == nil {
		return nil
	}
	return f.match("delivery", rcpt, size)
}

// match returns the reply of the first rule of stage that fires, or nil.
func (f *Faults) match(stage, addr string, size int64) *smtp.Reply {
	f.mu.RLock()
	defer f.mu.RUnlock()
	for _, r := range f.rules {
		if r.Stage != stage {
			continue
		}
		if r.Match != "" && !strings.Contains(strings.ToLower(addr), strings.ToLower(r.Match)) {
			continue
		}
		if r.MinSize > 0 && size < r.MinSize {
			continue
		}
		if r.Probability <= 0 {
			continue
		}
		rnd := f.Rand
		if rnd == nil {
			rnd = rand.Float64
		}
		if r.Probability < 1 && rnd() >= r.Probability {
			continue
		}
		return r.reply
	}
	return nil
}

func (f *Faults) CheckConn(_ context.Context, _ *policy.Conn) policy.Verdict {
	return f.fire("connect", "", 0)
}

func (f *Faults) CheckHelo(_ context.Context, c *policy.Conn) policy.Verdict {
	return f.fire("helo", c.Helo, 0)
}

func (f *Faults) CheckMail(_ context.Context, t *policy.Txn) policy.Verdict {
	return f.fire("mail", t.From, t.Params.Size)
}

func (f *Faults) CheckRcpt(_ context.Context, _ *policy.Txn, rcpt smtp.Path, _ []mail.Recipient) policy.Verdict {
	return f.fire("rcpt", rcpt.Addr.String(), 0)
}

func (f *Faults) CheckData(_ context.Context, t *policy.Txn, m policy.Message) policy.Verdict {
	return f.fire("data", t.From, m.Size())
}
