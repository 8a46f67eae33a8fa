// Package smtp is Postamt's protocol vocabulary: replies with RFC 3463 enhanced status codes,
// mailbox and path parsing (RFC 5321, RFC 6531 SMTPUTF8, IDN), and MAIL/RCPT parameters.
//
// It does no I/O and knows nothing about the queue, routing or listeners: every other package may
// import it, and it imports none of them.
package smtp

import (
	"bufio"
	"errors"
	"fmt"
	"strconv"
	"strings"
)

// EnhancedCode is an RFC 3463 enhanced status code: class.subject.detail.
type EnhancedCode [3]int

func (c EnhancedCode) String() string {
	return strconv.Itoa(c[0]) + "." + strconv.Itoa(c[1]) + "." + strconv.Itoa(c[2])
}

// Reply is the only kind of value that reaches the wire. Text is shown to the peer and must be
// generic: no file paths, no configuration names, no internal error text. Err is kept for logs.
type Reply struct {
	Code     int
	Enhanced EnhancedCode
	Text     string
	Err      error
}

// NewReply builds a reply. The enhanced code's class must agree with the basic code's class;
// a mismatch is a programming error that would mislead clients, so it is corrected here.
//
// A zero EnhancedCode means "none": RFC 2034 §3 excludes the greeting and the HELO/EHLO replies.
func NewReply(code int, enh EnhancedCode, text string) *Reply {
	if c := code / 100; c >= 2 && c <= 5 && enh[0] != c && c != 3 && enh != (EnhancedCode{}) {
		enh[0] = c
	}
	return &Reply{Code: code, Enhanced: enh, Text: text}
}

// Replyf is NewReply with a format string.
func Replyf(code int, enh EnhancedCode, format string, args ...any) *Reply {
	return NewReply(code, enh, fmt.Sprintf(format, args...))
}

// WithErr returns a copy of r carrying err as its cause (for logs only).
func (r *Reply) WithErr(err error) *Reply {
	c := *r
	c.Err = err
	return &c
}

func (r *Reply) Error() string {
	s := strconv.Itoa(r.Code) + " " + r.Enhanced.String() + " " + r.Text
	if r.Err != nil {
		s += ": " + r.Err.Error()
	}
	return s
}

func (r *Reply) Unwrap() error { return r.Err }

// Temporary reports a 4xx reply: the peer may try again later.
func (r *Reply) Temporary() bool { return r.Code/100 == 4 }

// Permanent reports a 5xx reply.
func (r *Reply) Permanent() bool { return r.Code/100 == 5 }

// Line returns the reply as it is written on the wire, without the trailing CRLF, for single-line
// replies; multi-line text is joined with " / ". It is meant for logs and DSN diagnostic fields.
func (r *Reply) Line() string {
	return strconv.Itoa(r.Code) + " " + r.Enhanced.String() + " " + strings.ReplaceAll(r.Text, "\n", " / ")
}

// WriteTo writes the reply in wire format. Every line carries the enhanced code (RFC 2034 §4),
// except 3xx replies such as DATA's 354 (RFC 2034 defines codes only for 2xx, 4xx and 5xx) and
// replies built without one (the greeting and EHLO).
func (r *Reply) WriteTo(w *bufio.Writer) error {
	lines := strings.Split(r.Text, "\n")
	for i, l := range lines {
		w.WriteString(strconv.Itoa(r.Code))
		if i < len(lines)-1 {
			w.WriteByte('-')
		} else {
			w.WriteByte(' ')
		}
		if r.Code/100 != 3 && r.Enhanced != (EnhancedCode{}) {
			w.WriteString(r.Enhanced.String())
			w.WriteByte(' ')
		}
		w.WriteString(l)
		w.WriteString("\r\n")
	}
	return nil
}

// ReplyFor maps any error to the reply a peer should see. A *Reply anywhere in the chain is used as
// is; an error it does not recognise becomes 451 4.3.0 with ref, the identifier that the matching
// log line carries, so an operator can find the cause without it being shown on the wire.
func ReplyFor(err error, ref string) *Reply {
	if err == nil {
		return nil
	}
	var r *Reply
	if errors.As(err, &r) {
		return r
	}
	text := "Internal error, please try again later"
	if ref != "" {
		text += " (ref " + ref + ")"
	}
	return &Reply{Code: 451, Enhanced: EnhancedCode{4, 3, 0}, Text: text, Err: err}
}

// Common enhanced codes (RFC 3463 §3), named for what they mean to the reader of our code.
var (
	CodeOK              = EnhancedCode{2, 0, 0}
	CodeSenderOK        = EnhancedCode{2, 1, 0}
	CodeDestOK          = EnhancedCode{2, 1, 5}
	CodeBadDestMailbox  = EnhancedCode{5, 1, 1}
	CodeBadDestSyntax   = EnhancedCode{5, 1, 3}
	CodeBadSenderSyntax = EnhancedCode{5, 1, 7}
	CodeMailboxFull     = EnhancedCode{4, 2, 2}
	CodeMsgTooBig       = EnhancedCode{5, 3, 4}
	CodeSystemFull      = EnhancedCode{4, 3, 1}
	CodeSystemNotAccept = EnhancedCode{4, 3, 2}
	CodeOtherSystem     = EnhancedCode{4, 3, 0}
	CodeNetwork         = EnhancedCode{4, 4, 0}
	CodeConnTimeout     = EnhancedCode{4, 4, 2}
	CodeRoutingLoop     = EnhancedCode{5, 4, 6}
	CodeInvalidCommand  = EnhancedCode{5, 5, 1}
	CodeSyntax          = EnhancedCode{5, 5, 2}
	CodeTooManyRcpts    = EnhancedCode{4, 5, 3}
	CodeBadParams       = EnhancedCode{5, 5, 4}
	CodeProtocol        = EnhancedCode{5, 5, 0}
	CodeMediaError      = EnhancedCode{5, 6, 0}
	CodeNeedsUTF8       = EnhancedCode{5, 6, 7} // RFC 6531 §3.7.5
	CodeDelivNotAuth    = EnhancedCode{5, 7, 1}
	CodeSecurity        = EnhancedCode{4, 7, 0}
)
