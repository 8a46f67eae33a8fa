package milter

import (
	"bufio"
	"bytes"
	"errors"
	"io"
)

// headerReader splits a message into raw header fields (folding kept, as milters expect) and
// the body.
type headerReader struct {
	r       *bufio.Reader
	done    bool
	pending []byte // a body line met while looking for a header field
}

// maxField bounds one header field with its continuation lines; the message size limit bounds
// the rest.
const maxField = 64 << 10

func newHeaderReader(r io.Reader) *headerReader {
	return &headerReader{r: bufio.NewReaderSize(r, 16<<10)}
}

var errLongField = errors.New("header field longer than 64 KiB")

// field returns the next header field; io.EOF at the empty line that ends the header (or at
// the end of a message without body).
func (h *headerReader) next() (name, value string, err error) {
	if h.done {
		return "", "", io.EOF
	}
	var buf []byte
	for {
		line, err := h.r.ReadSlice('\n')
		for errors.Is(err, bufio.ErrBufferFull) && len(buf)+len(line) <= maxField {
			buf = append(buf, line...)
			line, err = h.r.ReadSlice('\n')
		}
		if errors.Is(err, bufio.ErrBufferFull) {
			return "", "", errLongField
		}
		if len(buf) == 0 && (bytes.Equal(line, []byte("\r\n")) || bytes.Equal(line, []byte("\n")) || len(line) == 0) {
			h.done = true
			return "", "", io.EOF
		}
		buf = append(buf, line...)
		if len(buf) > maxField {
			return "", "", errLongField
		}
		if err != nil && err != io.EOF {
			return "", "", err
		}
		// A continuation line starts with white space.
		if p, perr := h.r.Peek(1); err == nil && perr == nil && (p[0] == ' ' || p[0] == '\t') {
			continue
		}
		i := bytes.IndexByte(buf, ':')
		if i <= 0 {
			// Not a header field: the header ended without an empty line; this is body.
			h.done = true
			h.pending = buf
			return "", "", io.EOF
		}
		v := bytes.TrimLeft(buf[i+1:], " \t")
		v = bytes.TrimSuffix(bytes.TrimSuffix(v, []byte("\n")), []byte("\r"))
		if err == io.EOF {
			h.done = true
		}
		return string(bytes.TrimRight(buf[:i], " \t")), string(v), nil
	}
}

// body returns the rest of the message after the header.
func (h *headerReader) body() io.Reader {
	return io.MultiReader(bytes.NewReader(h.pending), h.r)
}
