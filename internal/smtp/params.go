package smtp

import (
	"fmt"
	"strconv"
	"strings"
)

// MailParams are the MAIL FROM parameters Postamt understands.
type MailParams struct {
	Size     int64  // SIZE= (RFC 1870); 0 when absent
	Body     string // BODY= 7BIT or 8BITMIME (RFC 6152); "" when absent
	SMTPUTF8 bool   // SMTPUTF8 (RFC 6531)
	Ret      string // RET= FULL or HDRS (RFC 3461 §4.3)
	EnvID    string // ENVID= decoded from xtext (RFC 3461 §4.4)
	Auth     string // AUTH= (RFC 4954 §5), kept only for logs
}

// RcptParams are the RCPT TO parameters Postamt understands.
type RcptParams struct {
	// Notify holds the RFC 3461 §4.1 NOTIFY keywords, upper case; nil when absent.
	Notify []string
	// ORCPT is the original recipient, "addr-type;address" with the xtext decoded (RFC 3461 §4.2).
	ORCPT string
}

var (
	errUnknownParam = NewReply(555, CodeBadParams, "Unrecognized MAIL FROM or RCPT TO parameter")
)

func badParam(text string) *Reply { return NewReply(501, CodeBadParams, text) }

// splitParams splits "K=V K2" into pairs, refusing a keyword given twice. Keywords are
// case-insensitive (RFC 5321 §4.1.2).
func splitParams(s string) ([][2]string, *Reply) {
	var out [][2]string
	for _, f := range strings.Split(s, " ") {
		if f == "" {
			continue
		}
		k, v, hasV := strings.Cut(f, "=")
		if k == "" || (hasV && v == "") {
			return nil, badParam("Malformed parameter")
		}
		k = strings.ToUpper(k)
		for _, prev := range out {
			if prev[0] == k {
				return nil, badParam("Duplicate parameter " + k)
			}
		}
		out = append(out, [2]string{k, v})
	}
	return out, nil
}

// ParseMailParams parses the parameters after MAIL FROM:<path>. maxSize is the server's SIZE
// limit; a declared size above it is refused at once (RFC 1870 §6.1).
func ParseMailParams(s string, maxSize int64) (MailParams, *Reply) {
	var p MailParams
	kvs, r := splitParams(s)
	if r != nil {
		return p, r
	}
	for _, kv := range kvs {
		k, v := kv[0], kv[1]
		switch k {
		case "SIZE":
			n, err := strconv.ParseInt(v, 10, 64)
			if err != nil || n < 0 {
				return p, badParam("Bad SIZE value")
			}
			if maxSize > 0 && n > maxSize {
				return p, Replyf(552, CodeMsgTooBig, "Message size exceeds the limit of %d bytes", maxSize)
			}
			p.Size = n
		case "BODY":
			switch u := strings.ToUpper(v); u {
			case "7BIT", "8BITMIME":
				p.Body = u
			default:
				return p, NewReply(555, CodeBadParams, "BODY must be 7BIT or 8BITMIME")
			}
		case "SMTPUTF8":
			if v != "" {
				return p, badParam("SMTPUTF8 takes no value")
			}
			p.SMTPUTF8 = true
		case "RET":
			switch u := strings.ToUpper(v); u {
			case "FULL", "HDRS":
				p.Ret = u
			default:
				return p, badParam("RET must be FULL or HDRS")
			}
		case "ENVID":
			d, ok := DecodeXtext(v)
			if !ok || len(v) > 100 {
				return p, badParam("Bad ENVID value")
			}
			p.EnvID = d
		case "AUTH":
			d, ok := DecodeXtext(v)
			if !ok {
				return p, badParam("Bad AUTH value")
			}
			p.Auth = d
		default:
			return p, errUnknownParam
		}
	}
	return p, nil
}

// ParseRcptParams parses the parameters after RCPT TO:<path>.
func ParseRcptParams(s string) (RcptParams, *Reply) {
	var p RcptParams
	kvs, r := splitParams(s)
	if r != nil {
		return p, r
	}
	for _, kv := range kvs {
		k, v := kv[0], kv[1]
		switch k {
		case "NOTIFY":
			for _, n := range strings.Split(strings.ToUpper(v), ",") {
				switch n {
				case "NEVER", "SUCCESS", "FAILURE", "DELAY":
					p.Notify = append(p.Notify, n)
				default:
					return p, badParam("Bad NOTIFY value")
				}
			}
			// RFC 3461 §4.1: NEVER must appear alone.
			if len(p.Notify) > 1 && containsString(p.Notify, "NEVER") {
				return p, badParam("NOTIFY=NEVER cannot be combined")
			}
		case "ORCPT":
			// RFC 3461 §4.2: ORCPT=addr-type ";" xtext, where addr-type is an atom.
			typ, addr, ok := strings.Cut(v, ";")
			d, okX := DecodeXtext(addr)
			if !ok || !okX || !isDotString(typ, false) || strings.Contains(typ, ".") || len(v) > 500 {
				return p, badParam("Bad ORCPT value")
			}
			p.ORCPT = typ + ";" + d
		default:
			return p, errUnknownParam
		}
	}
	return p, nil
}

func containsString(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// DecodeXtext decodes RFC 3461 §4 xtext. Control characters, even when hex-encoded, are refused:
// ENVID and ORCPT end up in DSN headers, where a decoded CR or LF would allow header injection.
func DecodeXtext(s string) (string, bool) {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c == '+':
			if i+2 >= len(s) {
				return "", false
			}
			h := s[i+1 : i+3]
			n, err := strconv.ParseUint(h, 16, 8)
			if err != nil || h != strings.ToUpper(h) || n < 32 || n > 126 {
				return "", false
			}
			b.WriteByte(byte(n))
			i += 2
		case c >= 33 && c <= 126 && c != '=':
			b.WriteByte(c)
		default:
			return "", false
		}
	}
	return b.String(), true
}

// EncodeXtext is the inverse of DecodeXtext.
func EncodeXtext(s string) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c < 33 || c > 126 || c == '+' || c == '=' {
			b.WriteString(fmt.Sprintf("+%02X", c))
			continue
		}
		b.WriteByte(c)
	}
	return b.String()
}
