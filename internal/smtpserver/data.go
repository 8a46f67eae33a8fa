package smtpserver

import (
	"bufio"
	"bytes"
	"errors"
	"io"
)

// dataSink receives message content, counting it against the size limit. After the limit is
// passed, or after a bare CR or LF, it keeps swallowing input (the client is still sending) but
// stores nothing more: the transaction will be refused.
type dataSink struct {
	w      io.Writer
	n      int64
	max    int64
	tooBig bool
	bad    bool
	err    error // write error from the spool (disk full, ...)
}

func (d *dataSink) write(p []byte) {
	if d.tooBig || d.bad || d.err != nil {
		return
	}
	if d.n+int64(len(p)) > d.max {
		d.tooBig = true
		return
	}
	d.n += int64(len(p))
	if _, err := d.w.Write(p); err != nil {
		d.err = err
	}
}

// readDot reads DATA content up to the terminating <CRLF>.<CRLF> (RFC 5321 §4.1.1.4), removes
// dot-stuffing (§4.5.2) and flags any CR or LF that is not part of a CRLF pair.
//
// Only CRLF ends a line here. A bare LF or CR never starts a new line, so "\n.\n", "\r.\r",
// "\n.\r\n" and "\r\n.\r" can never end the message early: the 2023 SMTP smuggling attacks, in
// which a second message hides inside the first, depend on a server that accepts one of them as
// the end. The message is then refused whole (as Postfix's smtpd_forbid_bare_newline does), and
// the session goes on after the real terminator. It returns only connection errors.
func readDot(r *bufio.Reader, sink *dataSink) error {
	bol := true        // at the beginning of a line (after CRLF)
	pendingCR := false // the previous chunk ended with CR (a CRLF split by a full buffer)
	for {
		chunk, err := r.ReadSlice('\n')
		if err != nil && !errors.Is(err, bufio.ErrBufferFull) {
			return err
		}
		full := err == nil // chunk ends with '\n'
		if pendingCR {
			pendingCR = false
			if len(chunk) > 0 && chunk[0] == '\n' {
				sink.write(chunk[:1])
				chunk = chunk[1:]
				bol = true
				if len(chunk) == 0 {
					continue
				}
			} else {
				sink.bad = true
			}
		}
		if bol {
			if len(chunk) == 3 && chunk[0] == '.' && chunk[1] == '\r' && chunk[2] == '\n' {
				return nil
			}
			if chunk[0] == '.' {
				chunk = chunk[1:]
			}
		}
		// Find the line's terminator; everything before it must be free of CR and LF.
		body := chunk
		bol = false
		switch {
		case full && len(chunk) >= 2 && chunk[len(chunk)-2] == '\r':
			body = chunk[:len(chunk)-2]
			bol = true
		case full:
			body = chunk[:len(chunk)-1] // ends in a bare LF
			sink.bad = true
		case len(chunk) > 0 && chunk[len(chunk)-1] == '\r':
			body = chunk[:len(chunk)-1]
			pendingCR = true
		}
		if bytes.IndexByte(body, '\r') >= 0 {
			sink.bad = true
		}
		sink.write(chunk)
	}
}

// lineCheck flags bare CR and LF in BDAT content, whose chunks may split a CRLF anywhere.
type lineCheck struct {
	pendingCR bool
}

func (c *lineCheck) ok(p []byte) bool {
	good := true
	for len(p) > 0 {
		if c.pendingCR {
			if p[0] != '\n' {
				good = false
			}
			c.pendingCR = false
			if p[0] == '\n' {
				p = p[1:]
				continue
			}
		}
		i := bytes.IndexAny(p, "\r\n")
		if i < 0 {
			return good
		}
		if p[i] == '\n' {
			good = false
			p = p[i+1:]
			continue
		}
		c.pendingCR = true
		p = p[i+1:]
	}
	return good
}

// chunkWriter feeds BDAT chunks through the line check into the sink.
type chunkWriter struct {
	sink  *dataSink
	check *lineCheck
}

func (c chunkWriter) Write(p []byte) (int, error) {
	if !c.check.ok(p) {
		c.sink.bad = true
	}
	c.sink.write(p)
	return len(p), nil
}
