// Package scram is the server side of SCRAM-SHA-256 (RFC 5802, RFC 7677): a password
// mechanism in which the password never crosses the wire, not even inside TLS, and the client
// learns that the server knows its verifier. Channel binding (-PLUS) is not offered.
//
// The server stores only StoredKey and ServerKey, never the salted password, so a stolen
// database does not let anyone log in without first cracking the PBKDF2 hash.
package scram

import (
	"crypto/hmac"
	"crypto/pbkdf2"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"errors"
	"fmt"
	"strconv"
	"strings"
)

// Mechanism is the SASL name.
const Mechanism = "SCRAM-SHA-256"

// DefaultIterations is the PBKDF2 count for new verifiers: well above RFC 7677's minimum of
// 4096, yet a few tens of milliseconds for a client.
const DefaultIterations = 100000

// Credentials are what the server keeps for one password.
type Credentials struct {
	Salt      []byte
	Iter      int
	StoredKey []byte
	ServerKey []byte
}

func hmacSHA256(key, msg []byte) []byte {
	h := hmac.New(sha256.New, key)
	h.Write(msg)
	return h.Sum(nil)
}

// NewCredentials derives the verifier for password with a fresh salt.
func NewCredentials(password string, iter int) (Credentials, error) {
	salt := make([]byte, 16)
	if _, err := rand.Read(salt); err != nil {
		return Credentials{}, err
	}
	return Derive(password, salt, iter)
}

// Derive computes the verifier for password, salt and iteration count. The password should be
// SASLprep'ed (RFC 4013); for the ASCII and NFC text people type, it is the identity.
func Derive(password string, salt []byte, iter int) (Credentials, error) {
	salted, err := pbkdf2.Key(sha256.New, password, salt, iter, sha256.Size)
	if err != nil {
		return Credentials{}, err
	}
	clientKey := hmacSHA256(salted, []byte("Client Key"))
	stored := sha256.Sum256(clientKey)
	return Credentials{Salt: salt, Iter: iter, StoredKey: stored[:], ServerKey: hmacSHA256(salted, []byte("Server Key"))}, nil
}

// String encodes the credentials for storage: SCRAM-SHA-256$iter:salt$StoredKey:ServerKey
// (the form PostgreSQL uses).
func (c Credentials) String() string {
	e := base64.StdEncoding.EncodeToString
	return fmt.Sprintf("%s$%d:%s$%s:%s", Mechanism, c.Iter, e(c.Salt), e(c.StoredKey), e(c.ServerKey))
}

// Parse reads String's form.
func Parse(s string) (Credentials, error) {
	bad := errors.New("scram: malformed stored credentials")
	f := strings.Split(s, "$")
	if len(f) != 3 || f[0] != Mechanism {
		return Credentials{}, bad
	}
	is, salt, ok1 := strings.Cut(f[1], ":")
	sk, svk, ok2 := strings.Cut(f[2], ":")
	iter, err := strconv.Atoi(is)
	if !ok1 || !ok2 || err != nil || iter < 4096 || iter > 10000000 {
		return Credentials{}, bad
	}
	d := base64.StdEncoding.DecodeString
	var c Credentials
	var e1, e2, e3 error
	c.Iter = iter
	c.Salt, e1 = d(salt)
	c.StoredKey, e2 = d(sk)
	c.ServerKey, e3 = d(svk)
	if e1 != nil || e2 != nil || e3 != nil || len(c.StoredKey) != sha256.Size || len(c.ServerKey) != sha256.Size {
		return Credentials{}, bad
	}
	return c, nil
}

// ErrProtocol is a malformed or unexpected client message; ErrAuth is a wrong proof.
var (
	ErrProtocol = errors.New("scram: protocol error")
	ErrAuth     = errors.New("scram: authentication failed")
)

// Server runs one exchange: First with the client-first message, then Final with the
// client-final message.
type Server struct {
	// Nonce makes the server's part of the nonce (crypto/rand when nil; tests pin it).
	Nonce func() string

	gs2Header       string
	clientFirstBare string
	serverFirst     string
	nonce           string
	user            string
	creds           Credentials
}

// First parses the client-first message and returns the user name it names. Call Challenge
// next with that user's credentials.
func (s *Server) First(msg string) (user string, err error) {
	// gs2-header: cbind-flag "," [authzid] ","
	flag, rest, ok := strings.Cut(msg, ",")
	if !ok {
		return "", ErrProtocol
	}
	switch {
	case flag == "n" || flag == "y": // no channel binding; "y": the client could, but we did not offer it
	case strings.HasPrefix(flag, "p="):
		return "", fmt.Errorf("%w: channel binding is not supported", ErrProtocol)
	default:
		return "", ErrProtocol
	}
	authz, bare, ok := strings.Cut(rest, ",")
	if !ok {
		return "", ErrProtocol
	}
	s.gs2Header = flag + "," + authz + ","
	s.clientFirstBare = bare
	attrs := strings.Split(bare, ",")
	if strings.HasPrefix(attrs[0], "m=") {
		return "", fmt.Errorf("%w: mandatory extension", ErrProtocol)
	}
	if len(attrs) < 2 || !strings.HasPrefix(attrs[0], "n=") || !strings.HasPrefix(attrs[1], "r=") || len(attrs[1]) < 3 {
		return "", ErrProtocol
	}
	user, err = unescapeName(attrs[0][2:])
	if err != nil || user == "" {
		return "", ErrProtocol
	}
	if authz != "" {
		a, err := unescapeName(strings.TrimPrefix(authz, "a="))
		if !strings.HasPrefix(authz, "a=") || err != nil || a != user {
			return "", fmt.Errorf("%w: authorization identity must be empty or the user", ErrProtocol)
		}
	}
	cnonce := attrs[1][2:]
	if strings.ContainsAny(cnonce, ",") {
		return "", ErrProtocol
	}
	s.user = user
	snonce := ""
	if s.Nonce != nil {
		snonce = s.Nonce()
	} else {
		b := make([]byte, 18)
		rand.Read(b)
		snonce = base64.RawStdEncoding.EncodeToString(b)
	}
	s.nonce = cnonce + snonce
	return user, nil
}

// Challenge returns the server-first message for the user's credentials. For an unknown user
// pass made-up credentials (see users.Store.ScramCredentials) so that the exchange looks the
// same and fails only at the end.
func (s *Server) Challenge(c Credentials) string {
	s.creds = c
	s.serverFirst = "r=" + s.nonce + ",s=" + base64.StdEncoding.EncodeToString(c.Salt) + ",i=" + strconv.Itoa(c.Iter)
	return s.serverFirst
}

// Final checks the client-final message and returns the server-final message ("v=...") on
// success.
func (s *Server) Final(msg string) (string, error) {
	i := strings.LastIndex(msg, ",p=")
	if i < 0 {
		return "", ErrProtocol
	}
	without, proofB64 := msg[:i], msg[i+3:]
	attrs := strings.Split(without, ",")
	if len(attrs) < 2 || !strings.HasPrefix(attrs[0], "c=") || !strings.HasPrefix(attrs[1], "r=") {
		return "", ErrProtocol
	}
	cb, err := base64.StdEncoding.DecodeString(attrs[0][2:])
	if err != nil || string(cb) != s.gs2Header {
		return "", fmt.Errorf("%w: channel binding data does not match", ErrProtocol)
	}
	if attrs[1][2:] != s.nonce {
		return "", fmt.Errorf("%w: nonce mismatch", ErrProtocol)
	}
	proof, err := base64.StdEncoding.DecodeString(proofB64)
	if err != nil || len(proof) != sha256.Size {
		return "", ErrProtocol
	}
	authMessage := []byte(s.clientFirstBare + "," + s.serverFirst + "," + without)
	sig := hmacSHA256(s.creds.StoredKey, authMessage)
	clientKey := make([]byte, len(proof))
	for j := range proof {
		clientKey[j] = proof[j] ^ sig[j]
	}
	got := sha256.Sum256(clientKey)
	if subtle.ConstantTimeCompare(got[:], s.creds.StoredKey) != 1 {
		return "", ErrAuth
	}
	return "v=" + base64.StdEncoding.EncodeToString(hmacSHA256(s.creds.ServerKey, authMessage)), nil
}

// unescapeName decodes a saslname (RFC 5802 §5.1): "=2C" is ",", "=3D" is "=".
func unescapeName(s string) (string, error) {
	if !strings.Contains(s, "=") {
		return s, nil
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] != '=' {
			b.WriteByte(s[i])
			continue
		}
		switch {
		case strings.HasPrefix(s[i:], "=2C"):
			b.WriteByte(',')
		case strings.HasPrefix(s[i:], "=3D"):
			b.WriteByte('=')
		default:
			return "", ErrProtocol
		}
		i += 2
	}
	return b.String(), nil
}
