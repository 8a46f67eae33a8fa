package smtp

import (
	"errors"
	"strings"
	"unicode/utf8"

	"golang.org/x/net/idna"
)

// Limits from RFC 5321 §4.5.3.1.
const (
	MaxLocalPartLen = 64
	MaxDomainLen    = 255
	MaxPathLen      = 256
)

// Address is a mailbox, local-part@domain, as RFC 5321 §4.1.2 defines it.
type Address struct {
	// Local is the local part with any quoting removed: "a b"@x has Local `a b`.
	Local string
	// Domain is the domain as the peer wrote it (it may hold U-labels under SMTPUTF8) or an
	// address literal such as [192.0.2.1]. Empty only for the special RCPT TO:<Postmaster>.
	Domain string
	// Quoted reports that the peer wrote the local part as a quoted string.
	Quoted bool
}

// ASCIIDomain returns the domain lower-cased and, for internationalized names, converted to
// A-labels, which is the form routing and DNS use. It returns "" for an empty domain.
func (a Address) ASCIIDomain() string {
	d := strings.ToLower(a.Domain)
	if isASCII(d) {
		return d
	}
	if ascii, err := idna.Lookup.ToASCII(d); err == nil {
		return ascii
	}
	return d
}

// String renders the address as it would appear inside a path, quoting the local part only when
// it cannot be written as a dot-string.
func (a Address) String() string {
	local := a.Local
	if !isDotString(local, true) {
		local = quoteLocal(local)
	}
	if a.Domain == "" {
		return local
	}
	return local + "@" + a.Domain
}

// IsASCII reports whether the address can be carried without SMTPUTF8.
func (a Address) IsASCII() bool { return isASCII(a.Local) && isASCII(a.Domain) }

// Path is a reverse-path (MAIL FROM) or forward-path (RCPT TO).
type Path struct {
	Addr Address
	// Null is the null reverse-path <>, used by bounces (RFC 5321 §4.5.5).
	Null bool
	// SourceRoute reports an obsolete source route (<@a,@b:user@c>) that was present and dropped,
	// as RFC 5321 Appendix C allows. Relay control treats such paths with suspicion.
	SourceRoute bool
}

func (p Path) String() string {
	if p.Null {
		return "<>"
	}
	return "<" + p.Addr.String() + ">"
}

// ErrSyntax is wrapped by every address syntax error.
var ErrSyntax = errors.New("address syntax error")

type syntaxError string

func (e syntaxError) Error() string { return "address syntax: " + string(e) }
func (e syntaxError) Unwrap() error { return ErrSyntax }

// ParsePath parses the path at the start of arg (the text after "FROM:" or "TO:") and returns the
// rest, which holds the ESMTP parameters. Angle brackets are required (RFC 5321 §4.1.2); a space
// before the "<" is tolerated because common clients send it. allowUTF8 is true when the
// transaction declared SMTPUTF8 (RFC 6531 §3.4): only then may addresses hold non-ASCII.
func ParsePath(arg string, allowUTF8 bool) (p Path, rest string, err error) {
	arg = strings.TrimLeft(arg, " ")
	if !strings.HasPrefix(arg, "<") {
		return p, "", syntaxError("path must be enclosed in <>")
	}
	end := closingBracket(arg)
	if end < 0 {
		return p, "", syntaxError("missing > at the end of the path")
	}
	inner := arg[1:end]
	rest = arg[end+1:]
	if rest != "" && rest[0] != ' ' {
		return p, "", syntaxError("junk after the path")
	}
	rest = strings.TrimLeft(rest, " ")
	if len(inner)+2 > MaxPathLen {
		return p, "", syntaxError("path too long")
	}
	if inner == "" {
		p.Null = true
		return p, rest, nil
	}
	if inner[0] == '@' {
		colon := strings.IndexByte(inner, ':')
		if colon < 0 {
			return p, "", syntaxError("bad source route")
		}
		for _, hop := range strings.Split(inner[:colon], ",") {
			if len(hop) < 2 || hop[0] != '@' || !isDomain(hop[1:], allowUTF8) {
				return p, "", syntaxError("bad source route")
			}
		}
		p.SourceRoute = true
		inner = inner[colon+1:]
	}
	a, err := ParseAddress(inner, allowUTF8)
	if err != nil {
		if strings.EqualFold(inner, "postmaster") && !p.SourceRoute {
			p.Addr = Address{Local: "postmaster"}
			return p, rest, nil
		}
		return p, "", err
	}
	p.Addr = a
	return p, rest, nil
}

// closingBracket finds the ">" that closes the path, skipping quoted strings in which ">" may
// legally appear.
func closingBracket(s string) int {
	inQuote := false
	for i := 1; i < len(s); i++ {
		switch c := s[i]; {
		case inQuote && c == '\\':
			i++
		case c == '"':
			inQuote = !inQuote
		case !inQuote && c == '>':
			return i
		}
	}
	return -1
}

// ParseAddress parses local-part@domain (RFC 5321 §4.1.2 Mailbox).
func ParseAddress(s string, allowUTF8 bool) (Address, error) {
	var a Address
	if !utf8.ValidString(s) {
		return a, syntaxError("invalid UTF-8")
	}
	if !allowUTF8 && !isASCII(s) {
		return a, syntaxError("non-ASCII address without SMTPUTF8")
	}
	var local, domain string
	if strings.HasPrefix(s, `"`) {
		end := -1
		for i := 1; i < len(s); i++ {
			if s[i] == '\\' {
				i++
				continue
			}
			if s[i] == '"' {
				end = i
				break
			}
		}
		if end < 0 || end+1 >= len(s) || s[end+1] != '@' {
			return a, syntaxError("bad quoted local part")
		}
		v, ok := unquoteLocal(s[1:end], allowUTF8)
		if !ok {
			return a, syntaxError("bad quoted local part")
		}
		local, domain, a.Quoted = v, s[end+2:], true
		if len(s[:end+1]) > MaxLocalPartLen {
			return a, syntaxError("local part too long")
		}
	} else {
		at := strings.LastIndexByte(s, '@')
		if at < 0 {
			return a, syntaxError("missing @domain")
		}
		local, domain = s[:at], s[at+1:]
		if !isDotString(local, allowUTF8) {
			return a, syntaxError("bad local part")
		}
		if len(local) > MaxLocalPartLen {
			return a, syntaxError("local part too long")
		}
	}
	if !isDomain(domain, allowUTF8) {
		return a, syntaxError("bad domain")
	}
	a.Local, a.Domain = local, domain
	return a, nil
}

func isASCII(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] >= 0x80 {
			return false
		}
	}
	return true
}

// atext per RFC 5322 §3.2.3; with SMTPUTF8, any UTF-8 non-ASCII too (RFC 6531 §3.3).
func isAtext(c byte, allowUTF8 bool) bool {
	switch {
	case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9':
		return true
	case strings.IndexByte("!#$%&'*+-/=?^_`{|}~", c) >= 0:
		return true
	case c >= 0x80:
		return allowUTF8
	}
	return false
}

func isDotString(s string, allowUTF8 bool) bool {
	if s == "" || s[0] == '.' || s[len(s)-1] == '.' || strings.Contains(s, "..") {
		return false
	}
	for i := 0; i < len(s); i++ {
		if s[i] != '.' && !isAtext(s[i], allowUTF8) {
			return false
		}
	}
	return true
}

// unquoteLocal decodes the inside of a quoted string (RFC 5321 qtextSMTP / quoted-pairSMTP).
func unquoteLocal(q string, allowUTF8 bool) (string, bool) {
	var b strings.Builder
	for i := 0; i < len(q); i++ {
		c := q[i]
		switch {
		case c == '\\':
			if i+1 >= len(q) || q[i+1] < 32 || q[i+1] > 126 {
				return "", false
			}
			i++
			b.WriteByte(q[i])
		case c == 32 || c == 33 || (c >= 35 && c <= 91) || (c >= 93 && c <= 126):
			b.WriteByte(c)
		case c >= 0x80 && allowUTF8:
			b.WriteByte(c)
		default:
			return "", false
		}
	}
	return b.String(), true
}

func quoteLocal(s string) string {
	var b strings.Builder
	b.WriteByte('"')
	for i := 0; i < len(s); i++ {
		if s[i] == '"' || s[i] == '\\' {
			b.WriteByte('\\')
		}
		b.WriteByte(s[i])
	}
	b.WriteByte('"')
	return b.String()
}

// isDomain accepts an RFC 5321 Domain (LDH labels), an address literal, or, with SMTPUTF8,
// an internationalized name that IDNA 2008 lookup rules accept.
func isDomain(d string, allowUTF8 bool) bool {
	if d == "" || len(d) > MaxDomainLen {
		return false
	}
	if d[0] == '[' {
		return isAddressLiteral(d)
	}
	if !isASCII(d) {
		if !allowUTF8 {
			return false
		}
		ascii, err := idna.Lookup.ToASCII(d)
		if err != nil {
			return false
		}
		d = ascii
	}
	for _, label := range strings.Split(d, ".") {
		if label == "" || len(label) > 63 || label[0] == '-' || label[len(label)-1] == '-' {
			return false
		}
		for i := 0; i < len(label); i++ {
			c := label[i]
			if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '-') {
				return false
			}
		}
	}
	return true
}
