package submission

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/base32"
	"errors"
	"fmt"
	"io"
	"net/mail"
	"strings"
	"sync"
	"time"

	pmail "github.com/postamt/postamt/internal/mail"
	"github.com/postamt/postamt/internal/policy"
	"github.com/postamt/postamt/internal/smtp"
)

// Senders tells which addresses a user may send as; see users.Store.
type Senders interface {
	MaySend(ctx context.Context, user string, addr smtp.Address) (bool, error)
}

// SenderCheck is sender authorisation: an authenticated user may use only their own
// addresses, as the envelope sender (MAIL FROM) and in the From: and Sender: header fields.
// Without it any account could send as the CEO. Unauthenticated sessions are not its business
// (the server refuses their MAIL before checks run).
type SenderCheck struct{ Senders Senders }

func (SenderCheck) Name() string { return "sender" }

func refuse553(format string, args ...any) policy.Verdict {
	r := smtp.Replyf(553, smtp.EnhancedCode{5, 7, 1}, format, args...)
	return policy.Verdict{Action: policy.Reject, Reply: r, Result: "forbidden", Reason: r.Text}
}

func (c SenderCheck) CheckMail(ctx context.Context, t *policy.Txn) policy.Verdict {
	user := t.Conn.AuthUser
	if user == "" || t.From == "" {
		// The null sender is for notifications (MDNs, bounces a client generates); From: is
		// still checked at DATA.
		return policy.Verdict{}
	}
	a, err := smtp.ParseAddress(t.From, true)
	if err != nil {
		return refuse553("Sender address <%s> is not valid", t.From)
	}
	ok, err := c.Senders.MaySend(ctx, user, a)
	if err != nil {
		return policy.Verdict{Err: err}
	}
	if !ok {
		return refuse553("Sender address <%s> is not owned by user %s", t.From, user)
	}
	return policy.Verdict{Result: "ok"}
}

func (c SenderCheck) CheckData(ctx context.Context, t *policy.Txn, m policy.Message) policy.Verdict {
	user := t.Conn.AuthUser
	if user == "" {
		return policy.Verdict{}
	}
	h, err := ReadHeader(m, t.AddedHeaders())
	if err != nil {
		return policy.Verdict{Err: err}
	}
	froms := h.Values("From")
	switch len(froms) {
	case 0:
		return refuse553("Message has no From: header field")
	case 1:
	default:
		// RFC 5322 §3.6 allows one; a second is how DMARC gets fooled.
		return refuse553("Message has more than one From: header field")
	}
	for _, field := range []string{"From", "Sender"} {
		for _, v := range h.Values(field) {
			list, err := mail.ParseAddressList(v)
			if err != nil || len(list) == 0 {
				return refuse553("Cannot parse the %s: header field", field)
			}
			for _, ma := range list {
				a, err := smtp.ParseAddress(ma.Address, true)
				if err != nil {
					return refuse553("Address <%s> in %s: is not valid", ma.Address, field)
				}
				ok, err := c.Senders.MaySend(ctx, user, a)
				if err != nil {
					return policy.Verdict{Err: err}
				}
				if !ok {
					return refuse553("Address <%s> in %s: is not owned by user %s", ma.Address, field, user)
				}
			}
		}
	}
	return policy.Verdict{Result: "ok"}
}

// Fixups adds Date and Message-ID when the client left them out (RFC 6409 §8.2, §8.3). It
// never rewrites a field that is present.
type Fixups struct {
	Hostname string // right-hand side of generated Message-IDs
}

func (Fixups) Name() string { return "fixups" }

func (f Fixups) CheckData(_ context.Context, t *policy.Txn, m policy.Message) policy.Verdict {
	h, err := ReadHeader(m, t.AddedHeaders())
	if err != nil {
		return policy.Verdict{Err: err}
	}
	var add []string
	if len(h.Values("Date")) == 0 {
		add = append(add, "Date: "+t.Conn.Now().Format(time.RFC1123Z))
	}
	if len(h.Values("Message-ID")) == 0 {
		add = append(add, "Message-ID: <"+NewMessageID(t.Conn.Now())+"@"+f.Hostname+">")
	}
	if len(add) == 0 {
		return policy.Verdict{}
	}
	return policy.Verdict{Headers: add, Result: fmt.Sprintf("added-%d", len(add))}
}

var idEnc = base32.NewEncoding("0123456789abcdefghijklmnopqrstuv").WithPadding(base32.NoPadding)

// NewMessageID returns a unique left-hand side: time, then 80 random bits.
func NewMessageID(now time.Time) string {
	b := make([]byte, 10)
	rand.Read(b)
	return fmt.Sprintf("%s.%s", strings.ToLower(fmt.Sprintf("%x", now.UnixMilli())), idEnc.EncodeToString(b))
}

// Limits are per-user sending limits; they keep a compromised account from turning the server
// into a spam cannon. Zero disables a limit. The counts are in memory (a restart resets them).
type Limits struct {
	MessagesPerHour      int
	RecipientsPerMessage int
	RecipientsPerHour    int
	Now                  func() time.Time

	mu   sync.Mutex
	sent map[string][]sendEvent // per user, accepted messages within the last hour
}

type sendEvent struct {
	at    time.Time
	rcpts int
}

func (*Limits) Name() string { return "limits" }

func tempfail(format string, args ...any) policy.Verdict {
	r := smtp.Replyf(451, smtp.EnhancedCode{4, 7, 1}, format, args...)
	return policy.Verdict{Action: policy.Tempfail, Reply: r, Result: "limit", Reason: r.Text}
}

func (l *Limits) now() time.Time {
	if l.Now != nil {
		return l.Now()
	}
	return time.Now()
}

// recent returns the user's messages and recipients within the last hour, dropping older
// events (the caller holds mu).
func (l *Limits) recent(user string, now time.Time) (msgs, rcpts int) {
	if l.sent == nil {
		l.sent = map[string][]sendEvent{}
	}
	ev := l.sent[user]
	i := 0
	for i < len(ev) && now.Sub(ev[i].at) >= time.Hour {
		i++
	}
	ev = ev[i:]
	if len(ev) == 0 {
		delete(l.sent, user)
	} else {
		l.sent[user] = ev
	}
	for _, e := range ev {
		rcpts += e.rcpts
	}
	return len(ev), rcpts
}

func (l *Limits) CheckMail(_ context.Context, t *policy.Txn) policy.Verdict {
	user := t.Conn.AuthUser
	if user == "" {
		return policy.Verdict{}
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	msgs, rcpts := l.recent(user, l.now())
	switch {
	case l.MessagesPerHour > 0 && msgs >= l.MessagesPerHour:
		return tempfail("Sending limit reached: %d messages per hour for user %s; try again later", l.MessagesPerHour, user)
	case l.RecipientsPerHour > 0 && rcpts >= l.RecipientsPerHour:
		return tempfail("Sending limit reached: %d recipients per hour for user %s; try again later", l.RecipientsPerHour, user)
	}
	return policy.Verdict{}
}

func (l *Limits) CheckRcpt(_ context.Context, t *policy.Txn, _ smtp.Path, _ []pmail.Recipient) policy.Verdict {
	user := t.Conn.AuthUser
	if user == "" {
		return policy.Verdict{}
	}
	if l.RecipientsPerMessage > 0 && len(t.Rcpts) >= l.RecipientsPerMessage {
		return tempfail("Recipient limit reached: %d recipients per message; send the rest in another message", l.RecipientsPerMessage)
	}
	if l.RecipientsPerHour > 0 {
		l.mu.Lock()
		_, rcpts := l.recent(user, l.now())
		l.mu.Unlock()
		if rcpts+len(t.Rcpts) >= l.RecipientsPerHour {
			return tempfail("Sending limit reached: %d recipients per hour for user %s; try again later", l.RecipientsPerHour, user)
		}
	}
	return policy.Verdict{}
}

// CheckData counts the message against the hourly limits. It runs at the end of data, so a
// message refused later by another check still counts: the limit errs on the safe side.
func (l *Limits) CheckData(_ context.Context, t *policy.Txn, _ policy.Message) policy.Verdict {
	user := t.Conn.AuthUser
	if user == "" {
		return policy.Verdict{}
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	now := l.now()
	l.recent(user, now)
	l.sent[user] = append(l.sent[user], sendEvent{at: now, rcpts: len(t.Rcpts)})
	return policy.Verdict{}
}

// Header is a parsed header block: field names as written, values unfolded.
type Header struct{ fields [][2]string }

// Values returns the values of every field called name (case-insensitive), top to bottom.
func (h Header) Values(name string) []string {
	var out []string
	for _, f := range h.fields {
		if strings.EqualFold(f[0], name) {
			out = append(out, f[1])
		}
	}
	return out
}

// maxHeader bounds how much of a message is read as header.
const maxHeader = 1 << 20

var errHeaderTooBig = errors.New("header section larger than 1 MiB")

// ReadHeader parses added (fields checks put on top) followed by the message's header section.
func ReadHeader(m policy.Message, added []string) (Header, error) {
	var h Header
	for _, a := range added {
		parseFields(&h, a+"\r\n")
	}
	rc, err := m.Open()
	if err != nil {
		return h, err
	}
	defer rc.Close()
	br := bufio.NewReader(io.LimitReader(rc, maxHeader+1))
	var b strings.Builder
	for {
		line, err := br.ReadString('\n')
		if line == "\r\n" || line == "\n" || (err != nil && line == "") {
			break
		}
		b.WriteString(line)
		if b.Len() > maxHeader {
			return h, errHeaderTooBig
		}
		if err != nil {
			break
		}
	}
	parseFields(&h, b.String())
	return h, nil
}

// parseFields appends the fields in block (CRLF or LF line ends; continuation lines start
// with a space or tab). A line without a colon ends nothing and is skipped, as most parsers do.
func parseFields(h *Header, block string) {
	var name string
	var val strings.Builder
	flush := func() {
		if name != "" {
			h.fields = append(h.fields, [2]string{name, strings.TrimSpace(val.String())})
		}
		name = ""
		val.Reset()
	}
	for _, line := range strings.SplitAfter(block, "\n") {
		line = strings.TrimRight(line, "\r\n")
		if line == "" {
			continue
		}
		if line[0] == ' ' || line[0] == '\t' {
			if name != "" {
				val.WriteString(" " + strings.TrimSpace(line))
			}
			continue
		}
		flush()
		n, v, ok := strings.Cut(line, ":")
		if !ok {
			continue
		}
		name = strings.TrimSpace(n)
		val.WriteString(strings.TrimSpace(v))
	}
	flush()
}
