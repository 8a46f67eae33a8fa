package remote

import (
	"bytes"
	"mime"
	"mime/quotedprintable"
	"strings"
	"unicode/utf8"
)

// downgrade8bit rewrites a message with 8-bit body content for a server without 8BITMIME
// (RFC 6152 §3): every leaf MIME part holding 8-bit octets is re-encoded as quoted-printable and
// its Content-Transfer-Encoding changed; multipart structure, boundaries and all other octets
// are kept. A non-MIME message gets the MIME header fields that describe its new encoding.
// 8-bit octets in header fields cannot be fixed here and are sent as they are (the alternative,
// bouncing, loses mail that most servers accept anyway). A DKIM signature over the body no longer
// verifies after this, as with every MTA that downgrades.
func downgrade8bit(msg []byte) []byte {
	return convertEntity(msg, true)
}

func has8bit(b []byte) bool {
	for _, c := range b {
		if c >= 0x80 {
			return true
		}
	}
	return false
}

// maxDepth bounds recursion into nested multiparts on hostile input.
const maxDepth = 32

func convertEntity(e []byte, top bool) []byte { return convertDepth(e, top, 0) }

func convertDepth(e []byte, top bool, depth int) []byte {
	if !has8bit(e) || depth > maxDepth {
		return e
	}
	head, body, ok := splitHeader(e)
	if !ok {
		return e
	}
	ctype, params := "text/plain", map[string]string{}
	hasCT := false
	if v := headerValue(head, "Content-Type"); v != "" {
		if t, p, err := mime.ParseMediaType(v); err == nil {
			ctype, params, hasCT = t, p, true
		}
	}
	switch {
	case strings.HasPrefix(ctype, "multipart/") && params["boundary"] != "":
		return append(bytes.Clone(head), convertMultipart(body, params["boundary"], depth)...)
	case ctype == "message/rfc822" || ctype == "message/global":
		// RFC 2046 §5.2.1: an encapsulated message may not be encoded; convert inside it.
		return append(bytes.Clone(head), convertDepth(body, false, depth+1)...)
	}
	if !has8bit(body) {
		return e
	}
	var b bytes.Buffer
	w := quotedprintable.NewWriter(&b)
	w.Write(body)
	w.Close()
	newHead := removeField(head, "Content-Transfer-Encoding")
	newHead = newHead[:len(newHead)-2] // before the blank line
	var add strings.Builder
	if top && !hasCT {
		if headerValue(head, "MIME-Version") == "" {
			add.WriteString("MIME-Version: 1.0\r\n")
		}
		charset := "unknown-8bit" // RFC 1428
		if utf8.Valid(body) {
			charset = "utf-8"
		}
		add.WriteString("Content-Type: text/plain; charset=" + charset + "\r\n")
	}
	add.WriteString("Content-Transfer-Encoding: quoted-printable\r\n\r\n")
	out := append(newHead, add.String()...)
	return append(out, b.Bytes()...)
}

// splitHeader returns the header including its terminating blank line, and the body.
func splitHeader(e []byte) (head, body []byte, ok bool) {
	if bytes.HasPrefix(e, []byte("\r\n")) {
		return e[:2], e[2:], true
	}
	i := bytes.Index(e, []byte("\r\n\r\n"))
	if i < 0 {
		return nil, nil, false
	}
	return e[:i+4], e[i+4:], true
}

// headerValue returns the unfolded value of the first field named name.
func headerValue(head []byte, name string) string {
	lines := strings.Split(string(head), "\r\n")
	for i := 0; i < len(lines); i++ {
		k, v, ok := strings.Cut(lines[i], ":")
		if !ok || !strings.EqualFold(strings.TrimSpace(k), name) {
			continue
		}
		for i+1 < len(lines) && len(lines[i+1]) > 0 && (lines[i+1][0] == ' ' || lines[i+1][0] == '\t') {
			i++
			v += " " + strings.TrimSpace(lines[i])
		}
		return strings.TrimSpace(v)
	}
	return ""
}

// removeField drops every field named name, with its continuation lines.
func removeField(head []byte, name string) []byte {
	var out []byte
	skipping := false
	for _, line := range bytes.SplitAfter(head, []byte("\r\n")) {
		if len(line) == 0 {
			continue
		}
		if skipping && (line[0] == ' ' || line[0] == '\t') {
			continue
		}
		skipping = false
		if k, _, ok := bytes.Cut(line, []byte(":")); ok && strings.EqualFold(strings.TrimSpace(string(k)), name) {
			skipping = true
			continue
		}
		out = append(out, line...)
	}
	return out
}

// convertMultipart converts each part between boundary lines, keeping everything else.
func convertMultipart(body []byte, boundary string, depth int) []byte {
	delim := []byte("--" + boundary)
	var out []byte
	rest := body
	var part []byte
	inPart := false
	for len(rest) > 0 {
		var line []byte
		if i := bytes.Index(rest, []byte("\r\n")); i >= 0 {
			line, rest = rest[:i+2], rest[i+2:]
		} else {
			line, rest = rest, nil
		}
		trimmed := bytes.TrimRight(line, " \t\r\n")
		if bytes.HasPrefix(trimmed, delim) && (len(trimmed) == len(delim) || bytes.Equal(trimmed[len(delim):], []byte("--"))) {
			if inPart {
				// The CRLF before a boundary belongs to the boundary (RFC 2046 §5.1.1).
				content := part
				var crlf []byte
				if bytes.HasSuffix(content, []byte("\r\n")) {
					content, crlf = content[:len(content)-2], []byte("\r\n")
				}
				out = append(out, convertDepth(content, false, depth+1)...)
				out = append(out, crlf...)
			}
			out = append(out, line...)
			part = nil
			inPart = len(trimmed) == len(delim)
			if !inPart {
				out = append(out, rest...) // epilogue
				return out
			}
			continue
		}
		if inPart {
			part = append(part, line...)
		} else {
			out = append(out, line...)
		}
	}
	if inPart {
		out = append(out, convertDepth(part, false, depth+1)...)
	}
	return out
}
