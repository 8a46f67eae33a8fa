// Package dsn builds delivery status notifications (RFC 3464 inside an RFC 6522
// multipart/report; RFC 6533 for SMTPUTF8 mail). Build is a pure function of its input, so golden
// files pin its output. It does not decide when to send one (the queue does) and does not parse
// incoming DSNs yet.
package dsn

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"strings"
	"time"
)

// MaxOriginal caps the copy of the original message returned with a DSN (chasquid uses the same
// order of magnitude): enough to identify it, not enough to bounce a large attachment back.
const MaxOriginal = 256 << 10

// Recipient is one recipient the report is about.
type Recipient struct {
	Final       string // the address delivery was attempted to
	Original    string // ORCPT ("rfc822;addr") or the RCPT TO address; may be empty
	Action      string // failed | delayed | delivered | relayed | expanded
	Status      string // RFC 3463 code, e.g. 5.1.1
	Diagnostic  string // the remote or local reply, e.g. "550 5.1.1 No such user"
	RemoteMTA   string
	LastAttempt time.Time
}

// Report describes the DSN to build.
type Report struct {
	ReportingMTA string    // our host name
	QueueID      string    // the original message's queue ID
	Sender       string    // the original reverse-path: the DSN's recipient
	EnvID        string    // ENVID of the original transaction
	Arrival      time.Time // when the original message arrived
	Date         time.Time // when the DSN is made
	MessageID    string    // Message-ID of the DSN, without brackets
	Ret          string    // HDRS returns only the original header, anything else the message
	SMTPUTF8     bool      // the original needed SMTPUTF8: use RFC 6533 types
	Recipients   []Recipient
}

// Build renders the DSN. original is the stored message; only its first MaxOriginal bytes are
// read, and only its header when Ret is HDRS or the message is longer than that.
func Build(r Report, original io.Reader) ([]byte, error) {
	orig, truncated, err := readOriginal(original)
	if err != nil {
		return nil, fmt.Errorf("dsn: read original: %w", err)
	}
	boundary := "=_" + r.QueueID + "_dsn"
	if bytes.Contains(orig, []byte(boundary)) {
		// The original (the sender's own content) must not be able to close the report early
		// or add parts to it (RFC 2046 §5.1.1). A digest of the original cannot occur in it.
		sum := sha256.Sum256(orig)
		boundary += "_" + hex.EncodeToString(sum[:12])
	}
	var b bytes.Buffer
	w := func(format string, a ...any) { fmt.Fprintf(&b, format, a...) }
	delayed := allAction(r.Recipients, "delayed")
	success := allAction(r.Recipients, "delivered", "relayed")
	mixed := !delayed && !success && !allAction(r.Recipients, "failed")
	subject := "Undelivered Mail Returned to Sender"
	switch {
	case delayed:
		subject = "Delayed Mail (still being retried)"
	case success:
		subject = "Successful Mail Delivery Report"
	case mixed:
		subject = "Delivery Status Notification"
	}
	w("From: Mail Delivery System <MAILER-DAEMON@%s>\r\n", r.ReportingMTA)
	w("To: <%s>\r\n", r.Sender)
	w("Subject: %s\r\n", subject)
	w("Date: %s\r\n", r.Date.Format(time.RFC1123Z))
	w("Message-ID: <%s>\r\n", r.MessageID)
	w("Auto-Submitted: auto-replied\r\n") // RFC 3834 §5: no auto-reply loops
	w("MIME-Version: 1.0\r\n")
	w("Content-Type: multipart/report; report-type=delivery-status;\r\n\tboundary=\"%s\"\r\n", boundary)
	w("\r\nThis is a MIME-encapsulated delivery status notification.\r\n")

	w("\r\n--%s\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n", boundary)
	w("This is the mail system at host %s.\r\n\r\n", r.ReportingMTA)
	switch {
	case delayed:
		w("Your message could not be delivered yet. The mail system will keep trying; you do not\r\nneed to send it again.\r\n\r\n")
	case success:
		w("Your message was delivered as you asked to be told (a delivery status notification was\r\nrequested).\r\n\r\n")
	case mixed:
		w("This is the report on your message that you asked for. Each recipient's outcome is\r\nbelow.\r\n\r\n")
	default:
		w("Your message could not be delivered to one or more recipients. It is attached below.\r\n\r\n")
	}
	for _, rc := range r.Recipients {
		switch rc.Action {
		case "delivered":
			w("<%s>: delivered to the mailbox\r\n", rc.Final)
		case "relayed":
			w("<%s>: handed on to %s, which does not send delivery notifications; no further\r\n    notice will come from there\r\n", rc.Final, oneLine(rc.RemoteMTA))
		default:
			w("<%s>: %s\r\n", rc.Final, oneLine(rc.Diagnostic))
		}
	}

	statusType, msgType := "message/delivery-status", "message/rfc822"
	if r.SMTPUTF8 {
		statusType, msgType = "message/global-delivery-status", "message/global" // RFC 6533 §6
	}
	w("\r\n--%s\r\nContent-Type: %s\r\n\r\n", boundary, statusType)
	w("Reporting-MTA: dns; %s\r\n", r.ReportingMTA)
	w("X-Postamt-Queue-ID: %s\r\n", r.QueueID)
	if r.EnvID != "" {
		w("Original-Envelope-Id: %s\r\n", oneLine(r.EnvID))
	}
	w("Arrival-Date: %s\r\n", r.Arrival.Format(time.RFC1123Z))
	for _, rc := range r.Recipients {
		w("\r\n")
		if rc.Original != "" {
			w("Original-Recipient: %s\r\n", addrField(rc.Original))
		}
		w("Final-Recipient: rfc822; %s\r\n", rc.Final)
		w("Action: %s\r\n", rc.Action)
		w("Status: %s\r\n", rc.Status)
		if rc.RemoteMTA != "" {
			w("Remote-MTA: dns; %s\r\n", oneLine(rc.RemoteMTA))
		}
		if rc.Diagnostic != "" {
			w("Diagnostic-Code: smtp; %s\r\n", oneLine(rc.Diagnostic))
		}
		if !rc.LastAttempt.IsZero() {
			w("Last-Attempt-Date: %s\r\n", rc.LastAttempt.Format(time.RFC1123Z))
		}
	}

	// RFC 3461 §4.3: a success report should not carry the content back; its header identifies it.
	if strings.EqualFold(r.Ret, "HDRS") || truncated || success {
		ct := "text/rfc822-headers"
		if r.SMTPUTF8 {
			ct = "message/global-headers"
		}
		w("\r\n--%s\r\nContent-Type: %s\r\n\r\n", boundary, ct)
		b.Write(header(orig))
	} else {
		w("\r\n--%s\r\nContent-Type: %s\r\n\r\n", boundary, msgType)
		b.Write(orig)
		if len(orig) > 0 && !bytes.HasSuffix(orig, []byte("\r\n")) {
			b.WriteString("\r\n")
		}
	}
	w("\r\n--%s--\r\n", boundary)
	return b.Bytes(), nil
}

func readOriginal(r io.Reader) (data []byte, truncated bool, err error) {
	data, err = io.ReadAll(io.LimitReader(r, MaxOriginal+1))
	if err != nil {
		return nil, false, err
	}
	if len(data) > MaxOriginal {
		return data[:MaxOriginal], true, nil
	}
	return data, false, nil
}

// header returns the header section of a message, ending with its blank line.
func header(msg []byte) []byte {
	if i := bytes.Index(msg, []byte("\r\n\r\n")); i >= 0 {
		return msg[:i+4]
	}
	return append(bytes.TrimRight(msg, "\r\n"), "\r\n\r\n"...)
}

// addrField renders an ORCPT value ("rfc822;a@b") as a DSN address field ("rfc822; a@b").
func addrField(orcpt string) string {
	typ, addr, ok := strings.Cut(orcpt, ";")
	if !ok {
		return "rfc822; " + oneLine(orcpt)
	}
	return strings.TrimSpace(typ) + "; " + oneLine(strings.TrimSpace(addr))
}

// oneLine keeps values from breaking the report's header structure.
func oneLine(s string) string {
	return strings.Map(func(r rune) rune {
		if r == '\r' || r == '\n' {
			return ' '
		}
		return r
	}, s)
}

func allAction(rs []Recipient, actions ...string) bool {
	for _, r := range rs {
		found := false
		for _, a := range actions {
			if r.Action == a {
				found = true
			}
		}
		if !found {
			return false
		}
	}
	return len(rs) > 0
}

// Wanted reports whether a recipient's NOTIFY parameter (RFC 3461 §4.1, comma-separated; "" is the
// default) asks for a report of this kind: failure, delay or success.
func Wanted(notify, kind string) bool {
	if notify == "" {
		return kind == "FAILURE" || kind == "DELAY"
	}
	for _, n := range strings.Split(notify, ",") {
		if n == kind {
			return true
		}
	}
	return false
}
