// Package rspamd asks an rspamd worker about a message over its HTTP /checkv2 protocol and turns
// rspamd's action into a policy verdict. rspamd is the spam expert; this package only maps its
// answer: reject → 550, soft reject and greylist → 451, add header and rewrite subject → tag with
// X-Spam headers, no action → continue.
package rspamd

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/postamt/postamt/internal/policy"
	"github.com/postamt/postamt/internal/smtp"
)

// Options configure a Check.
type Options struct {
	// URL of the worker, e.g. "http://127.0.0.1:11333" (the path /checkv2 is added).
	URL string
	// Password, when set, is sent in the Password header (rspamd proxy or controller setups).
	Password string
	// RejectAction is what rspamd's "reject" becomes: policy.Reject (default), Quarantine or Tag.
	RejectAction policy.Action
	// MaxSize skips messages larger than this (0: no limit): rspamd would refuse them anyway
	// (its max_message setting) and the check then decides nothing.
	MaxSize int64
	// Client is the HTTP client; nil uses one without its own timeout (the chain's context
	// bounds every request).
	Client *http.Client
}

// Check is the rspamd DATA check.
type Check struct {
	o   Options
	url string
}

// New returns a Check; it does not contact rspamd.
func New(o Options) (*Check, error) {
	if o.URL == "" {
		return nil, errors.New("rspamd: no URL")
	}
	if !strings.HasPrefix(o.URL, "http://") && !strings.HasPrefix(o.URL, "https://") {
		return nil, fmt.Errorf("rspamd: URL %q must start with http:// or https://", o.URL)
	}
	if o.RejectAction == policy.Continue {
		o.RejectAction = policy.Reject
	}
	if o.Client == nil {
		o.Client = &http.Client{}
	}
	return &Check{o: o, url: strings.TrimSuffix(o.URL, "/") + "/checkv2"}, nil
}

func (c *Check) Name() string { return "rspamd" }

// Reply is the part of rspamd's JSON answer we use.
type Reply struct {
	Action        string            `json:"action"`
	Score         float64           `json:"score"`
	RequiredScore float64           `json:"required_score"`
	Symbols       map[string]Symbol `json:"symbols"`
	Skipped       bool              `json:"is_skipped"`
	Subject       string            `json:"subject"`
	Messages      map[string]any    `json:"messages"`
}

type Symbol struct {
	Name  string  `json:"name"`
	Score float64 `json:"score"`
}

// maxReply bounds the JSON we read: a reply with every symbol rspamd has stays far below.
const maxReply = 1 << 20

func (c *Check) CheckData(ctx context.Context, t *policy.Txn, m policy.Message) policy.Verdict {
	if c.o.MaxSize > 0 && m.Size() > c.o.MaxSize {
		return policy.Verdict{Result: "skipped", Reason: fmt.Sprintf("message of %d bytes is over max_size", m.Size())}
	}
	rep, err := c.Scan(ctx, t, m)
	if err != nil {
		logFailure(t, err)
		return policy.Verdict{Err: err, Result: "error", Reason: err.Error()}
	}
	return c.verdict(rep)
}

// Scan sends the message to rspamd and returns its decoded answer.
func (c *Check) Scan(ctx context.Context, t *policy.Txn, m policy.Message) (*Reply, error) {
	body, err := m.Open()
	if err != nil {
		return nil, fmt.Errorf("rspamd: open message: %w", err)
	}
	defer body.Close()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, c.url, body)
	if err != nil {
		return nil, fmt.Errorf("rspamd: %w", err)
	}
	req.ContentLength = m.Size()
	h := req.Header
	if t != nil {
		if t.Conn != nil {
			if t.Conn.RemoteIP.IsValid() {
				h.Set("IP", t.Conn.RemoteIP.String())
			}
			if t.Conn.Helo != "" {
				h.Set("Helo", t.Conn.Helo)
			}
			if t.Conn.AuthUser != "" {
				h.Set("User", t.Conn.AuthUser)
			}
		}
		// rspamd reads an empty From as the null reverse-path.
		h.Set("From", t.From)
		// The addresses the client gave (before alias expansion), once each: per-user
		// settings in rspamd key on them.
		seen := map[string]bool{}
		for _, r := range t.Rcpts {
			a := r.Orig
			if a == "" {
				a = r.Addr
			}
			if !seen[a] {
				seen[a] = true
				h.Add("Rcpt", a)
			}
		}
		if t.ID != "" {
			h.Set("Queue-Id", t.ID)
		}
	}
	if c.o.Password != "" {
		h.Set("Password", c.o.Password)
	}
	resp, err := c.o.Client.Do(req)
	if err != nil {
		return nil, fmt.Errorf("rspamd: %w", err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, maxReply+1))
	if err != nil {
		return nil, fmt.Errorf("rspamd: reading reply: %w", err)
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("rspamd: HTTP %s: %s", resp.Status, snippet(data))
	}
	if len(data) > maxReply {
		return nil, errors.New("rspamd: reply larger than 1 MiB")
	}
	var rep Reply
	if err := json.Unmarshal(data, &rep); err != nil {
		return nil, fmt.Errorf("rspamd: bad reply: %w", err)
	}
	if rep.Action == "" && !rep.Skipped {
		// Only a skipped message may come without an action.
		return nil, fmt.Errorf("rspamd: reply without an action: %s", snippet(data))
	}
	return &rep, nil
}

func (c *Check) verdict(rep *Reply) policy.Verdict {
	// rspamd marks a message "skipped" when a pre-filter decided early (GTUBE does that, with
	// action reject); only without an action did it really not look.
	if rep.Action == "" {
		return policy.Verdict{Result: "skipped", Reason: "rspamd skipped the message"}
	}
	v := policy.Verdict{Score: rep.Score, Result: strings.ReplaceAll(rep.Action, " ", "-")}
	syms := rep.symbolList()
	v.Reason = fmt.Sprintf("rspamd %s, score %.2f/%.2f [%s]", rep.Action, rep.Score, rep.RequiredScore, strings.Join(syms, ","))
	switch rep.Action {
	case "reject":
		v.Action = c.o.RejectAction
		switch v.Action {
		case policy.Reject:
			v.Reply = smtp.NewReply(550, smtp.EnhancedCode{5, 7, 1}, "Message refused: it looks like spam")
		case policy.Tempfail:
			v.Reply = smtp.NewReply(451, smtp.EnhancedCode{4, 7, 1}, "Message deferred: it looks like spam, try again later")
		}
		v.Headers = rep.headers(true, syms)
	case "soft reject":
		v.Action = policy.Tempfail
		v.Reply = smtp.NewReply(451, smtp.EnhancedCode{4, 7, 1}, "Message deferred by the spam filter, try again later")
	case "greylist":
		v.Action = policy.Tempfail
		v.Reply = smtp.NewReply(451, smtp.EnhancedCode{4, 7, 1}, "Greylisted, try again later")
	case "add header", "rewrite subject":
		// We cannot rewrite the Subject without rewriting the header block; the X-Spam
		// headers carry the same information for the mail client's filters.
		v.Action = policy.Tag
		v.Headers = rep.headers(true, syms)
	case "no action":
		v.Action = policy.Continue
		v.Headers = rep.headers(false, syms)
	default:
		// An action we do not know (a custom one): we tag rather than guess at refusal.
		v.Action = policy.Tag
		v.Headers = rep.headers(true, syms)
	}
	return v
}

// symbolList names the symbols that scored, highest first, bounded so headers stay short.
func (r *Reply) symbolList() []string {
	syms := make([]Symbol, 0, len(r.Symbols))
	for k, s := range r.Symbols {
		if s.Name == "" {
			s.Name = k
		}
		syms = append(syms, s)
	}
	slices.SortFunc(syms, func(a, b Symbol) int {
		if a.Score != b.Score {
			if a.Score > b.Score {
				return -1
			}
			return 1
		}
		return strings.Compare(a.Name, b.Name)
	})
	out := make([]string, 0, min(len(syms), 30))
	for _, s := range syms {
		if len(out) == 30 {
			break
		}
		if n := headerSafe(s.Name); n != "" {
			out = append(out, n+"("+strconv.FormatFloat(s.Score, 'f', 2, 64)+")")
		}
	}
	return out
}

func (r *Reply) headers(spam bool, syms []string) []string {
	flag := "No"
	if spam {
		flag = "Yes"
	}
	status := fmt.Sprintf("X-Spam-Status: %s, score=%.2f required=%.2f", flag, r.Score, r.RequiredScore)
	if len(syms) > 0 {
		status += "\r\n\ttests=" + strings.Join(syms, ",\r\n\t")
	}
	return []string{
		"X-Spam: " + flag,
		fmt.Sprintf("X-Spam-Score: %.2f / %.2f", r.Score, r.RequiredScore),
		status,
	}
}

// headerSafe keeps symbol names that are plain tokens, so nothing rspamd returns can break the
// header block.
func headerSafe(s string) string {
	if len(s) > 64 {
		return ""
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'A' && c <= 'Z' || c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '_' || c == '-' || c == '.') {
			return ""
		}
	}
	return s
}

func snippet(b []byte) string {
	s := strings.TrimSpace(string(b))
	if len(s) > 200 {
		s = s[:200] + "..."
	}
	return strings.ToValidUTF8(s, "?")
}

// Timeout is the default per-message bound when the configuration sets none: rspamd's own
// task timeout is 8 s.
const Timeout = 15 * time.Second

// logFailure says what went wrong; the chain then applies the fail-open or fail-closed rule
// and its log line only names the check.
func logFailure(t *policy.Txn, err error) {
	if t != nil && t.Conn != nil && t.Conn.Logger != nil {
		t.Conn.Logger.Warn("rspamd check failed", "session", t.Conn.SessionID, "id", t.ID, "err", err)
	}
}
