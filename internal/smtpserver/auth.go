package smtpserver

import (
	"bytes"
	"encoding/base64"
	"errors"
	"strings"

	"github.com/postamt/postamt/internal/scram"
	"github.com/postamt/postamt/internal/smtp"
)

var (
	errAuthNeedTLS   = smtp.NewReply(530, smtp.EnhancedCode{5, 7, 0}, "Must issue a STARTTLS command first")
	errAuthRequired  = smtp.NewReply(530, smtp.EnhancedCode{5, 7, 0}, "Authentication required")
	errAuthInvalid   = smtp.NewReply(535, smtp.EnhancedCode{5, 7, 8}, "Authentication credentials invalid")
	errAuthCancelled = smtp.NewReply(501, smtp.EnhancedCode{5, 0, 0}, "Authentication cancelled")
	errAuthBase64    = smtp.NewReply(501, smtp.EnhancedCode{5, 5, 2}, "Cannot decode the base64 response")
)

// authOffered reports whether EHLO advertises AUTH now.
func (s *session) authOffered() bool {
	return s.srv.opts.Auth != nil && s.pc.AuthUser == "" && (s.tls != nil || s.srv.opts.AllowPlaintextAuth)
}

// cmdAuth is RFC 4954 with the PLAIN (RFC 4616) and LOGIN mechanisms.
func (s *session) cmdAuth(args string) {
	switch {
	case s.srv.opts.Auth == nil:
		s.reply(smtp.NewReply(502, smtp.CodeInvalidCommand, "AUTH is not available on this service"))
		return
	case s.helo == "" || !s.esmtp:
		s.reply(smtp.NewReply(503, smtp.CodeInvalidCommand, "Send EHLO first"))
		return
	case s.tls == nil && !s.srv.opts.AllowPlaintextAuth:
		// RFC 4954 §4 and RFC 3207: no credentials in plain text.
		s.reply(errAuthNeedTLS)
		return
	case s.pc.AuthUser != "":
		s.reply(smtp.NewReply(503, smtp.CodeInvalidCommand, "Already authenticated"))
		return
	case s.tx != nil:
		s.reply(smtp.NewReply(503, smtp.CodeInvalidCommand, "AUTH is not allowed during a mail transaction"))
		return
	}
	mech, initial, hasInitial := strings.Cut(strings.TrimSpace(args), " ")
	var user, pass string
	switch strings.ToUpper(mech) {
	case "PLAIN":
		resp := initial
		if !hasInitial {
			var ok bool
			if resp, ok = s.authChallenge(""); !ok {
				return
			}
		}
		_, u, p, err := decodePlain(resp)
		if err != nil {
			s.reply(smtp.NewReply(501, smtp.EnhancedCode{5, 5, 2}, "Malformed PLAIN response: "+err.Error()))
			return
		}
		user, pass = u, p
	case "LOGIN":
		// The LOGIN draft (draft-murchison-sasl-login) allows the user name as initial response.
		var u64 string
		var ok bool
		if hasInitial {
			u64 = initial
		} else if u64, ok = s.authChallenge("VXNlcm5hbWU6"); !ok { // "Username:"
			return
		}
		u, err := decodeB64(u64)
		if err != nil {
			s.reply(errAuthBase64)
			return
		}
		p64, ok := s.authChallenge("UGFzc3dvcmQ6") // "Password:"
		if !ok {
			return
		}
		p, err := decodeB64(p64)
		if err != nil {
			s.reply(errAuthBase64)
			return
		}
		user, pass = string(u), string(p)
	case scram.Mechanism:
		if sa, ok := s.srv.opts.Auth.(ScramAuthenticator); ok {
			s.authScram(sa, initial, hasInitial)
			return
		}
		s.reply(smtp.NewReply(504, smtp.EnhancedCode{5, 5, 4}, "Unrecognized authentication type (use PLAIN or LOGIN)"))
		return
	case "":
		s.reply(smtp.NewReply(501, smtp.EnhancedCode{5, 5, 4}, "Syntax: AUTH mechanism [initial-response]"))
		return
	default:
		s.reply(smtp.NewReply(504, smtp.EnhancedCode{5, 5, 4}, "Unrecognized authentication type (use PLAIN or LOGIN)"))
		return
	}
	name, err := s.srv.opts.Auth.Authenticate(s.ctx, s.ip, user, pass)
	s.authResult(strings.ToUpper(mech), user, name, err)
}

// authResult answers the end of an AUTH exchange.
func (s *session) authResult(mech, user, name string, err error) {
	if err != nil {
		s.srv.Stats.AuthFailed.Add(1)
		var r *smtp.Reply
		if !errors.As(err, &r) {
			r = errAuthInvalid
		}
		// The attempted name is logged (sanitised) for fail2ban-style tooling; the password never is.
		s.srv.log.Info("authentication failed", "session", s.id, "client", s.ip.String(), "user", sanitize(user, 64),
			"mechanism", mech, "reply", r.Line())
		s.reply(r)
		if r.Code == 421 {
			s.quit, s.end = true, "authentication locked out"
		}
		return
	}
	s.srv.Stats.AuthOK.Add(1)
	s.pc.AuthUser = name
	s.srv.log.Info("authenticated", "session", s.id, "client", s.ip.String(), "user", name, "mechanism", mech)
	s.reply(smtp.NewReply(235, smtp.EnhancedCode{2, 7, 0}, "Authentication successful"))
}

// authScram runs SCRAM-SHA-256: client-first, server-first, client-final, then the server's
// signature as a last 334 challenge, which the client acknowledges with an empty line
// (RFC 4954 §4: no data in the 235).
func (s *session) authScram(sa ScramAuthenticator, initial string, hasInitial bool) {
	malformed := func(err error) {
		s.reply(smtp.NewReply(501, smtp.EnhancedCode{5, 5, 2}, "Malformed SCRAM message: "+strings.TrimPrefix(err.Error(), "scram: ")))
	}
	resp := initial
	if !hasInitial {
		var ok bool
		if resp, ok = s.authChallenge(""); !ok {
			return
		}
	}
	first, err := decodeB64(resp)
	if err != nil {
		s.reply(errAuthBase64)
		return
	}
	var srv scram.Server
	user, err := srv.First(string(first))
	if err != nil {
		malformed(err)
		return
	}
	creds, err := sa.ScramCredentials(s.ctx, s.ip, user)
	if err != nil {
		s.authResult(scram.Mechanism, user, "", err)
		return
	}
	resp, ok := s.authChallenge(base64.StdEncoding.EncodeToString([]byte(srv.Challenge(creds))))
	if !ok {
		return
	}
	final, err := decodeB64(resp)
	if err != nil {
		s.reply(errAuthBase64)
		return
	}
	verifier, err := srv.Final(string(final))
	if errors.Is(err, scram.ErrProtocol) {
		malformed(err)
		return
	}
	if err != nil {
		_, err = sa.ScramDone(s.ctx, s.ip, user, false)
		s.authResult(scram.Mechanism, user, "", err)
		return
	}
	if resp, ok = s.authChallenge(base64.StdEncoding.EncodeToString([]byte(verifier))); !ok {
		return
	}
	if resp != "" {
		s.reply(smtp.NewReply(501, smtp.EnhancedCode{5, 5, 2}, "Expected an empty response to the server signature"))
		return
	}
	name, err := sa.ScramDone(s.ctx, s.ip, user, true)
	s.authResult(scram.Mechanism, user, name, err)
}

// authChallenge sends a 334 challenge and reads the client's response line; false means the
// exchange is over (cancelled, unreadable or the connection failed) and has been answered.
func (s *session) authChallenge(challenge string) (string, bool) {
	s.reply(smtp.NewReply(334, smtp.EnhancedCode{}, challenge))
	if err := s.flush(); err != nil {
		s.quit, s.end = true, "write error"
		return "", false
	}
	s.inAuth = true
	line, err := s.readLine()
	s.inAuth = false
	switch {
	case err == nil:
	case errors.Is(err, errLineTooLong) || errors.Is(err, errBareLF) || errors.Is(err, errBadChar):
		s.reply(smtp.NewReply(500, smtp.CodeSyntax, "Bad authentication response line"))
		return "", false
	default:
		s.readFailed(err)
		s.quit = true
		return "", false
	}
	if string(line) == "*" {
		s.reply(errAuthCancelled)
		return "", false
	}
	return string(line), true
}

func decodeB64(s string) ([]byte, error) {
	if s == "=" { // RFC 4954 §4: an empty initial response
		return nil, nil
	}
	return base64.StdEncoding.DecodeString(s)
}

// decodePlain parses a PLAIN response (RFC 4616): authzid NUL authcid NUL passwd. An
// authorisation identity other than the user itself is refused: we do not let one account act
// as another.
func decodePlain(resp string) (authz, user, pass string, err error) {
	b, err := decodeB64(resp)
	if err != nil {
		return "", "", "", errors.New("bad base64")
	}
	parts := bytes.Split(b, []byte{0})
	if len(parts) != 3 {
		return "", "", "", errors.New("expected authzid NUL user NUL password")
	}
	authz, user, pass = string(parts[0]), string(parts[1]), string(parts[2])
	if user == "" || pass == "" {
		return "", "", "", errors.New("empty user or password")
	}
	if authz != "" && authz != user {
		return "", "", "", errors.New("authorization identity must be empty or the user")
	}
	return authz, user, pass, nil
}
