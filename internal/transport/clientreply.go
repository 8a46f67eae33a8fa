package transport

import (
	"errors"
	"fmt"

	gosmtp "github.com/emersion/go-smtp"

	"github.com/postamt/postamt/internal/mail"
	"github.com/postamt/postamt/internal/smtp"
)

// ClientReply turns an error from an SMTP or LMTP client exchange into our reply type. A reply
// from the peer keeps its code and text (logs and DSNs quote it), prefixed with who said it and
// when; anything else (a broken connection, a timeout) is a temporary 4.4.2.
func ClientReply(err error, peer, stage string) *smtp.Reply {
	var se *gosmtp.SMTPError
	if errors.As(err, &se) {
		enh := smtp.EnhancedCode(se.EnhancedCode)
		if enh[0] <= 0 {
			enh = smtp.EnhancedCode{se.Code / 100, 0, 0}
		}
		r := smtp.NewReply(se.Code, enh, fmt.Sprintf("%s said after %s: %s", peer, stage, se.Message))
		r.Err = err
		return r
	}
	return smtp.NewReply(451, smtp.EnhancedCode{4, 4, 2}, fmt.Sprintf("Connection to %s failed during %s", peer, stage)).WithErr(err)
}

// NeedsUTF8 reports whether the envelope cannot be sent without SMTPUTF8: an address is not
// ASCII (RFC 6531 §3.2). A client that merely declared SMTPUTF8 does not make it needed.
func NeedsUTF8(from string, rcpts []mail.Recipient) bool {
	if !isASCII(from) {
		return true
	}
	for _, r := range rcpts {
		if !isASCII(r.Route.NextHop) || !isASCII(r.Addr) {
			return true
		}
	}
	return false
}

func isASCII(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] >= 0x80 {
			return false
		}
	}
	return true
}
