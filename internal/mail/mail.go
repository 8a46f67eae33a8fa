// Package mail holds the data that travels along the one mail path: the envelope of an accepted
// message and its routed recipients. It is plain data shared by smtpserver, router, queue and the
// transports; it does no I/O.
package mail

import (
	"fmt"
	"net"
	"strconv"
	"strings"
	"time"
)

// Envelope is an accepted message's metadata. The body lives in the spool under ID.
type Envelope struct {
	ID         string
	From       string // reverse-path without brackets; "" for the null sender <>
	Rcpts      []Recipient
	Size       int64 // bytes in the spool, including headers we added
	ReceivedAt time.Time
	SMTPUTF8   bool
	Body       string // BODY= parameter: 7BIT, 8BITMIME or ""
	Ret        string // RET= (RFC 3461): FULL, HDRS or ""
	EnvID      string // ENVID= (RFC 3461), decoded
	Client     string // remote IP address, for logs and the sandbox
	Helo       string
	// BodyInline says the body is stored in the queue database rather than a spool file.
	BodyInline bool
	// Prefix holds header fields added at the end of data (authentication results, a DKIM
	// signature) when the body was already in a spool file; readers put it before the file.
	Prefix []byte
	// Quarantine, when set, is why a check wants the message held for an administrator
	// instead of delivered.
	Quarantine string
}

// Recipient is one delivery target after routing and alias expansion.
type Recipient struct {
	Addr   string // the address delivered to: a mailbox, or a remote address
	Orig   string // the address the client gave in RCPT TO, before alias expansion
	ORCPT  string // RFC 3461 ORCPT parameter, "type;address"
	Notify string // RFC 3461 NOTIFY keywords, comma-separated; "" means the default
	Route  Route
}

// Route says how a recipient leaves the queue.
type Route struct {
	Transport string // maildir, lmtp, remote, ...
	NextHop   string // for local transports the mailbox address; for remote the domain
}

// SplitNextHop parses "[host]:port" or "[host]" (port 25).
func SplitNextHop(hop string) (host string, port int, ok bool) {
	rest, found := strings.CutPrefix(hop, "[")
	if !found {
		return "", 0, false
	}
	host, rest, found = strings.Cut(rest, "]")
	if !found {
		return "", 0, false
	}
	if rest == "" {
		return host, 25, true
	}
	p, err := strconv.Atoi(strings.TrimPrefix(rest, ":"))
	if err != nil || !strings.HasPrefix(rest, ":") {
		return "", 0, false
	}
	return host, p, true
}

// ParseTransportMap reads a transport map value: "[host]:port" or "smtp:[host]:port" (SMTP to
// that server, no MX lookup), "lmtp:host:port" or "lmtp:unix:/path" (LMTP, a transport of its
// own named after the address; NextHop is left for the recipient). The error says what is
// wrong, for the configuration check.
func ParseTransportMap(v string) (Route, error) {
	if addr, ok := strings.CutPrefix(v, "lmtp:"); ok {
		if p, unix := strings.CutPrefix(addr, "unix:"); unix {
			if !strings.HasPrefix(p, "/") {
				return Route{}, fmt.Errorf("%q: the LMTP socket must be an absolute path, e.g. \"lmtp:unix:/run/dovecot/lmtp\"", v)
			}
		} else if _, port, err := net.SplitHostPort(addr); err != nil || port == "" {
			return Route{}, fmt.Errorf("%q: LMTP needs host:port or unix:/path", v)
		}
		return Route{Transport: "lmtp:" + addr}, nil
	}
	hop := strings.TrimPrefix(v, "smtp:")
	if host, port, ok := SplitNextHop(hop); !ok || host == "" || port < 1 || port > 65535 {
		return Route{}, fmt.Errorf("%q must be \"[host]:port\", \"smtp:[host]:port\", \"lmtp:host:port\" or \"lmtp:unix:/path\"", v)
	}
	return Route{Transport: "remote", NextHop: hop}, nil
}
