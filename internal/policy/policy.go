// Package policy is the one interface every check implements (SPF, DKIM, DMARC, DNSBL,
// greylisting, rate limits, rspamd, ClamAV, milters, submission rules, sandbox chaos) and the
// Chain that runs them at the SMTP stage they belong to. The SMTP server calls the Chain; it
// knows nothing about individual checks, and checks know nothing about the session's I/O.
package policy

import (
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"strings"
	"time"

	"github.com/postamt/postamt/internal/mail"
	"github.com/postamt/postamt/internal/smtp"
)

// Action is what a check wants done. Higher values win when checks disagree.
type Action int

const (
	Continue   Action = iota // nothing to do (headers may still be added)
	Tag                      // accept, adding the check's headers
	Quarantine               // accept, but hold the message for an administrator
	Tempfail                 // refuse with 4xx
	Reject                   // refuse with 5xx
)

func (a Action) String() string {
	switch a {
	case Continue:
		return "continue"
	case Tag:
		return "tag"
	case Quarantine:
		return "quarantine"
	case Tempfail:
		return "tempfail"
	case Reject:
		return "reject"
	}
	return fmt.Sprintf("action(%d)", int(a))
}

// ParseAction reads a configured action name.
func ParseAction(s string) (Action, error) {
	for a := Continue; a <= Reject; a++ {
		if strings.EqualFold(s, a.String()) {
			return a, nil
		}
	}
	return 0, fmt.Errorf("unknown action %q (use continue, tag, quarantine, tempfail or reject)", s)
}

// Verdict is one check's answer.
type Verdict struct {
	Action Action
	// Reply is sent for Tempfail and Reject; when nil a generic one is made. Its text is what
	// the client sees, so it names the reason in plain words and never internal details.
	Reply *smtp.Reply
	// Headers are complete header fields ("Name: value", folded with CRLF+WSP if long, no
	// final CRLF) put at the top of the message when it is accepted.
	Headers []string
	// Score adds to the message's score; the Chain rejects at its threshold.
	Score float64
	// Result is a short token for the one log line per message ("pass", "fail", "hit:zen").
	Result string
	// Reason explains the verdict for logs and the quarantine.
	Reason string
	// Edit, when set, changes the envelope once the message is accepted.
	Edit *EnvelopeEdit
	// Err reports that the check could not decide (backend down, timeout); the Chain then
	// applies the entry's fail-open or fail-closed rule instead of Action.
	Err error
	// Overwrites edit the received message in place (DATA stage only), for example to rename a
	// forged Authentication-Results field. They keep the length because a large body is already
	// in its spool file, which is patched before it is committed but never rewritten.
	Overwrites []Overwrite
}

// Overwrite replaces len(Data) bytes at Offset of the message as Message.Open reads it.
type Overwrite struct {
	Offset int64
	Data   []byte
}

// Conn is what checks may know about the client connection.
type Conn struct {
	SessionID  string
	Listener   string // "smtp", "submission", "sandbox", ...
	RemoteIP   netip.Addr
	RemoteAddr net.Addr
	LocalAddr  net.Addr
	Helo       string // after HELO/EHLO
	// PreGreet is set when the client sent something before our greeting (the server waited
	// Options.GreetDelay for it): a real SMTP client waits for the banner, a spam bot often not.
	PreGreet bool
	// Trusted is set by the allowlist check for clients in its trusted networks (loopback by
	// default): Postamt's own checks leave them alone, as Postfix does for mynetworks.
	Trusted bool
	// Allowlisted names the allowlist that vouches for the client ("list.dnswl.example");
	// reputation checks (DNSBL, greylisting, pre-greet, rate limits) then skip it, sender
	// authentication still runs.
	Allowlisted string
	TLS         *tls.ConnectionState // nil in plain text
	AuthUser    string               // "" unless authenticated
	Values      map[string]any       // per-session state a check keeps between stages; see IPRevKey
	Now         func() time.Time     // the server's clock
	Logger      *slog.Logger         // for checks that need to say more than their verdict
}

// IPRevKey is the Values entry where the FCrDNS check leaves its result ("pass", "fail",
// "temperror") for the Authentication-Results header's iprev method (RFC 8601 §3).
const IPRevKey = "iprev"

// Exempt reports whether reputation checks should leave the client alone.
func (c *Conn) Exempt() bool { return c.Trusted || c.Allowlisted != "" || c.AuthUser != "" }

// Txn is the mail transaction being checked.
type Txn struct {
	Conn   *Conn
	ID     string // queue ID once DATA started, "" before
	From   string // reverse-path without brackets; "" for <>
	Params smtp.MailParams
	Rcpts  []mail.Recipient // routed recipients accepted so far

	// Kept by the Chain across the transaction's stages.
	Score    float64
	Action   Action   // strongest accepted action so far (Tag, Quarantine)
	Reason   string   // of that action
	Headers  []string // to add at the top of the message
	Edits    []EnvelopeEdit
	Outcomes []Outcome
	// Overwrites collected at DATA, applied by the server before the headers are added.
	Overwrites []Overwrite

	pending []string // headers of earlier checks in the running stage, not yet in Headers
}

// AddedHeaders returns every header field checks have added so far, including those of the
// earlier checks of the stage now running, in the order they will stand at the top of the
// message. A check that must see the message as it will leave (a DKIM signer, which runs last)
// reads these followed by Message.Open().
func (t *Txn) AddedHeaders() []string {
	return append(t.Headers[:len(t.Headers):len(t.Headers)], t.pending...)
}

// Message gives DATA-stage checks the received message: our Received header first, then the
// client's header and body exactly as received (CRLF line ends, dot-stuffing removed).
type Message interface {
	Size() int64
	Open() (io.ReadCloser, error)
}

// Replacer is implemented by a Message that a check may rewrite (the session's is): Replace
// makes msg the message that later checks read and that is stored, for milters that change or
// delete header fields or replace the body. Header fields in Verdict.Headers are still added on
// top afterwards.
type Replacer interface {
	Replace(msg []byte) error
}

// EnvelopeEdit changes the transaction's envelope after the checks, as milters may ask:
// another sender, recipients added (routed like an authenticated client's) or removed (by
// the address the client gave).
type EnvelopeEdit struct {
	SetFrom  bool
	From     string // with SetFrom; "" is the null sender
	AddRcpts []string
	DelRcpts []string
}

// A Check has a name for logs and implements one or more of the stage interfaces below.
type Check interface {
	Name() string
}

type ConnCheck interface {
	CheckConn(ctx context.Context, c *Conn) Verdict
}

type HeloCheck interface {
	CheckHelo(ctx context.Context, c *Conn) Verdict
}

type MailCheck interface {
	CheckMail(ctx context.Context, t *Txn) Verdict
}

type RcptCheck interface {
	// CheckRcpt sees one RCPT TO: the path as given and what the router made of it.
	CheckRcpt(ctx context.Context, t *Txn, rcpt smtp.Path, routed []mail.Recipient) Verdict
}

type DataCheck interface {
	CheckData(ctx context.Context, t *Txn, m Message) Verdict
}

// ConnCloser is implemented by checks that keep state for the whole connection (a milter
// session with its own socket); the server calls Chain.Close once when the connection ends,
// however it ended.
type ConnCloser interface {
	CloseConn(c *Conn)
}
