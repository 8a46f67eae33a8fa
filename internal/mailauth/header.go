package mailauth

import (
	"bufio"
	"bytes"
	"io"
	"strings"
)

// Field is one header field of a received message.
type Field struct {
	Name   string // as written
	Value  string // unfolded (CRLF before WSP removed), without the leading space
	Offset int64  // of the name's first byte in the message
}

// Bounds on what ReadHeader looks at: a header section larger than this is abuse, and the
// fields past it are not looked at (they are still delivered).
const (
	maxHeaderBytes  = 1 << 20
	maxHeaderFields = 2000
)

// ReadHeader reads the header section of a message (RFC 5322 §2.2) up to the empty line, the
// end of input, a line that is not a field, or the bounds above. It never fails on content:
// what it cannot parse ends the header, as it does for mail readers.
func ReadHeader(r io.Reader) ([]Field, error) {
	br := bufio.NewReaderSize(io.LimitReader(r, maxHeaderBytes), 16<<10)
	var fields []Field
	var off int64
	var val strings.Builder
	flush := func() {
		if n := len(fields); n > 0 {
			fields[n-1].Value = strings.TrimLeft(val.String(), " \t")
		}
		val.Reset()
	}
	for len(fields) <= maxHeaderFields {
		line, err := br.ReadSlice('\n')
		if err == bufio.ErrBufferFull {
			// A line longer than the buffer: RFC 5322 allows 998 octets, so give up here.
			break
		}
		start := off
		off += int64(len(line))
		body := bytes.TrimRight(line, "\r\n")
		switch {
		case len(line) == 0:
		case len(body) == 0:
			flush()
			return fields, nil
		case body[0] == ' ' || body[0] == '\t':
			if len(fields) == 0 {
				flush()
				return fields, nil
			}
			val.Write(body)
		default:
			colon := bytes.IndexByte(body, ':')
			if colon <= 0 || !isFieldName(body[:colon]) {
				flush()
				return fields, nil
			}
			flush()
			fields = append(fields, Field{Name: string(body[:colon]), Offset: start})
			val.Write(body[colon+1:])
		}
		if err != nil {
			if err == io.EOF {
				break
			}
			return fields, err
		}
	}
	flush()
	return fields, nil
}

// isFieldName checks RFC 5322 §3.6.8 ftext: printable ASCII except colon.
func isFieldName(b []byte) bool {
	for _, c := range b {
		if c < 33 || c > 126 {
			return false
		}
	}
	return true
}
