package smtpserver

import (
	"encoding/base64"
	"strings"

	"github.com/postamt/postamt/internal/smtp"
)

// Authenticator checks SMTP AUTH credentials (RFC 4954). See Options.Auth.
type Authenticator interface {
	Authenticate(user, pass string) bool
}

var (
	errAuthCancelled = smtp.NewReply(501, smtp.EnhancedCode{5, 7, 0}, "Authentication cancelled")
	errAuthDecode    = smtp.NewReply(501, smtp.EnhancedCode{5, 5, 2}, "Cannot decode the response (base64 expected)")
	errAuthFailed    = smtp.NewReply(535, smtp.EnhancedCode{5, 7, 8}, "Authentication credentials invalid")
	errAuthRequired  = smtp.NewReply(530, smtp.EnhancedCode{5, 7, 0}, "Authentication required")
)

// authOffered reports whether EHLO advertises AUTH now: only with an Authenticator, and only
// inside TLS unless plain-text AUTH was allowed (RFC 4954 §4 leaves that to the server).
func (s *session) authOffered() bool {
	return s.srv.opts.Auth != nil && (s.tls != nil || s.srv.opts.AuthPlaintext)
}

// cmdAuth runs AUTH PLAIN (RFC 4616) or AUTH LOGIN, the two mechanisms mail libraries send.
func (s *session) cmdAuth(args string) {
	switch {
	case s.srv.opts.Auth == nil:
		s.reply(smtp.NewReply(502, smtp.CodeInvalidCommand, "AUTH is not available on this service"))
		return
	case !s.esmtp:
		s.reply(smtp.NewReply(503, smtp.CodeInvalidCommand, "Send EHLO first"))
		return
	case s.authUser != "":
		s.reply(smtp.NewReply(503, smtp.CodeInvalidCommand, "Already authenticated"))
		return
	case s.tx != nil:
		s.reply(smtp.NewReply(503, smtp.CodeInvalidCommand, "AUTH is not allowed during a mail transaction"))
		return
	case !s.authOffered():
		s.reply(smtp.NewReply(538, smtp.EnhancedCode{5, 7, 11}, "Encryption required: use STARTTLS first"))
		return
	}
	mech, initial, _ := strings.Cut(strings.TrimSpace(args), " ")
	var user, pass string
	switch strings.ToUpper(mech) {
	case "PLAIN":
		resp, ok := s.authResponse(initial, "")
		if !ok {
			return
		}
		if user, pass, ok = parsePlain(resp); !ok {
			s.reply(smtp.NewReply(501, smtp.EnhancedCode{5, 5, 2}, "PLAIN response must be authzid NUL user NUL password"))
			return
		}
	case "LOGIN":
		var ok bool
		if user, ok = s.authResponse(initial, "VXNlcm5hbWU6"); !ok { // "Username:"
			return
		}
		if pass, ok = s.authResponse("", "UGFzc3dvcmQ6"); !ok { // "Password:"
			return
		}
	default:
		s.reply(smtp.NewReply(504, smtp.EnhancedCode{5, 5, 4}, "Unrecognized authentication mechanism (use PLAIN or LOGIN)"))
		return
	}
	if user == "" || !s.srv.opts.Auth.Authenticate(user, pass) {
		s.srv.log.Info("authentication failed", "session", s.id, "client", s.ip.String(), "user", sanitize(user, 100))
		s.reply(errAuthFailed)
		return
	}
	s.authUser = sanitize(user, 255)
	s.pc.AuthUser = s.authUser
	s.srv.log.Info("authenticated", "session", s.id, "client", s.ip.String(), "user", s.authUser)
	s.reply(smtp.NewReply(235, smtp.EnhancedCode{2, 7, 0}, "Authentication successful"))
}

// parsePlain splits a decoded PLAIN response (RFC 4616): authzid NUL authcid NUL passwd. We act
// only as the authenticated identity, so authzid is ignored.
func parsePlain(resp string) (user, pass string, ok bool) {
	parts := strings.Split(resp, "\x00")
	if len(parts) != 3 || parts[1] == "" {
		return "", "", false
	}
	return parts[1], parts[2], true
}

// authResponse returns the decoded client response: the initial response given with the
// command, or the answer to a 334 challenge. "=" is an empty initial response (RFC 4954 §4).
// On failure it has replied already.
func (s *session) authResponse(initial, challenge string) (string, bool) {
	if initial == "" {
		s.reply(smtp.NewReply(334, smtp.EnhancedCode{}, challenge))
		line, err := s.readLine()
		if err != nil {
			s.reply(smtp.NewReply(501, smtp.CodeSyntax, "Bad response line"))
			return "", false
		}
		initial = string(line)
		if initial == "" {
			initial = "="
		}
	}
	if initial == "*" {
		s.reply(errAuthCancelled)
		return "", false
	}
	if initial == "=" {
		return "", true
	}
	b, err := base64.StdEncoding.DecodeString(initial)
	if err != nil {
		s.reply(errAuthDecode)
		return "", false
	}
	return string(b), true
}
