// Package clamav scans messages with clamd over its INSTREAM command (TCP or a unix socket).
// clamd decodes the MIME structure itself, so the whole message is streamed as received.
package clamav

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"time"

	"github.com/postamt/postamt/internal/policy"
	"github.com/postamt/postamt/internal/smtp"
)

// Options configure a Check.
type Options struct {
	Network string // "tcp" or "unix"
	Address string // "127.0.0.1:3310" or "/run/clamav/clamd.ctl"
	// Action for an infected message: policy.Reject (default) or policy.Quarantine.
	Action policy.Action
	// MaxSize is the most we stream; it should equal clamd's StreamMaxLength (default 25 MiB
	// there). A larger message is not scanned and counts as a failure of the check (the entry's
	// fail mode decides), because an unscanned message is what an attacker would send.
	MaxSize int64
	// ChunkSize is the INSTREAM chunk size; 0 means 64 KiB.
	ChunkSize int
	// Dial replaces net.Dialer, for tests.
	Dial func(ctx context.Context, network, addr string) (net.Conn, error)
}

// Check is the ClamAV DATA check.
type Check struct{ o Options }

// DefaultMaxSize matches clamd's default StreamMaxLength.
const DefaultMaxSize = 25 << 20

func New(o Options) (*Check, error) {
	switch o.Network {
	case "tcp", "unix":
	case "":
		o.Network = "tcp"
		if strings.HasPrefix(o.Address, "/") {
			o.Network = "unix"
		}
	default:
		return nil, fmt.Errorf("clamav: network %q must be tcp or unix", o.Network)
	}
	if o.Address == "" {
		return nil, errors.New("clamav: no address")
	}
	if o.Action == policy.Continue {
		o.Action = policy.Reject
	}
	if o.Action != policy.Reject && o.Action != policy.Quarantine && o.Action != policy.Tempfail {
		return nil, fmt.Errorf("clamav: action %s: use reject, quarantine or tempfail", o.Action)
	}
	if o.MaxSize <= 0 {
		o.MaxSize = DefaultMaxSize
	}
	if o.ChunkSize <= 0 {
		o.ChunkSize = 64 << 10
	}
	if o.Dial == nil {
		var d net.Dialer
		o.Dial = d.DialContext
	}
	return &Check{o: o}, nil
}

func (c *Check) Name() string { return "clamav" }

// ErrTooLarge reports a message over MaxSize, or one clamd found over its StreamMaxLength.
var ErrTooLarge = errors.New("clamav: message larger than the stream limit, not scanned")

// Result of one scan: Virus is "" for a clean stream.
type Result struct{ Virus string }

func (c *Check) CheckData(ctx context.Context, t *policy.Txn, m policy.Message) policy.Verdict {
	res, err := c.ScanMessage(ctx, m)
	if err != nil {
		logFailure(t, err)
		return policy.Verdict{Err: err, Result: "error", Reason: err.Error()}
	}
	if res.Virus == "" {
		return policy.Verdict{Result: "clean"}
	}
	v := policy.Verdict{Action: c.o.Action, Result: "virus", Reason: "virus found: " + res.Virus}
	// clamd marks signatures from local databases ".UNOFFICIAL"; the sender needs the name only.
	name := strings.TrimSuffix(res.Virus, ".UNOFFICIAL")
	switch c.o.Action {
	case policy.Reject:
		v.Reply = smtp.Replyf(554, smtp.EnhancedCode{5, 7, 1}, "Message refused: virus found (%s)", name)
	case policy.Tempfail:
		v.Reply = smtp.Replyf(451, smtp.EnhancedCode{4, 7, 1}, "Message deferred: virus found (%s)", name)
	}
	return v
}

// ScanMessage streams m to clamd.
func (c *Check) ScanMessage(ctx context.Context, m policy.Message) (Result, error) {
	if m.Size() > c.o.MaxSize {
		return Result{}, fmt.Errorf("%w (%d bytes, limit %d)", ErrTooLarge, m.Size(), c.o.MaxSize)
	}
	r, err := m.Open()
	if err != nil {
		return Result{}, fmt.Errorf("clamav: open message: %w", err)
	}
	defer r.Close()
	return c.Scan(ctx, r)
}

// Scan streams r to clamd with INSTREAM and reads the verdict.
func (c *Check) Scan(ctx context.Context, r io.Reader) (Result, error) {
	conn, err := c.o.Dial(ctx, c.o.Network, c.o.Address)
	if err != nil {
		return Result{}, fmt.Errorf("clamav: %w", err)
	}
	defer conn.Close()
	if dl, ok := ctx.Deadline(); ok {
		conn.SetDeadline(dl)
	}
	// Closing the connection is what interrupts a blocked read or write when ctx ends early.
	stop := context.AfterFunc(ctx, func() { conn.SetDeadline(time.Unix(1, 0)) })
	defer stop()

	werr := c.send(conn, r)
	// clamd answers and closes as soon as it has decided (limit exceeded, or an error), which
	// can break our write; its answer is still the truth, so read it before judging werr.
	reply, rerr := readReply(conn)
	if rerr != nil {
		if ctx.Err() != nil {
			return Result{}, fmt.Errorf("clamav: %w", ctx.Err())
		}
		if werr != nil {
			return Result{}, fmt.Errorf("clamav: sending: %w", werr)
		}
		return Result{}, fmt.Errorf("clamav: reading reply: %w", rerr)
	}
	return parseReply(reply)
}

func (c *Check) send(conn net.Conn, r io.Reader) error {
	w := bufio.NewWriterSize(conn, c.o.ChunkSize+4)
	if _, err := w.WriteString("zINSTREAM\x00"); err != nil {
		return err
	}
	buf := make([]byte, c.o.ChunkSize)
	var sent int64
	for {
		n, err := io.ReadFull(r, buf)
		if n > 0 {
			sent += int64(n)
			if sent > c.o.MaxSize {
				// The message grew after Size() was taken: never stream past the limit.
				return ErrTooLarge
			}
			var hdr [4]byte
			binary.BigEndian.PutUint32(hdr[:], uint32(n))
			w.Write(hdr[:])
			if _, werr := w.Write(buf[:n]); werr != nil {
				return werr
			}
		}
		if err == io.EOF || err == io.ErrUnexpectedEOF {
			break
		}
		if err != nil {
			return fmt.Errorf("reading message: %w", err)
		}
	}
	w.Write([]byte{0, 0, 0, 0})
	return w.Flush()
}

// maxReplyLen bounds clamd's one-line answer.
const maxReplyLen = 4096

func readReply(conn net.Conn) (string, error) {
	var b bytes.Buffer
	buf := make([]byte, 512)
	for b.Len() < maxReplyLen {
		n, err := conn.Read(buf)
		b.Write(buf[:n])
		if i := bytes.IndexAny(b.Bytes(), "\x00\n"); i >= 0 {
			return string(b.Bytes()[:i]), nil
		}
		if err == io.EOF && b.Len() > 0 {
			return b.String(), nil
		}
		if err != nil {
			return "", err
		}
	}
	return "", errors.New("reply too long")
}

// parseReply reads "stream: OK", "stream: NAME FOUND" or "... ERROR".
func parseReply(s string) (Result, error) {
	s = strings.TrimSpace(s)
	switch {
	case strings.HasSuffix(s, " FOUND"):
		name := strings.TrimSuffix(s, " FOUND")
		if i := strings.LastIndex(name, ": "); i >= 0 {
			name = name[i+2:]
		}
		return Result{Virus: safeName(name)}, nil
	case strings.HasSuffix(s, ": OK") || s == "OK":
		return Result{}, nil
	case strings.Contains(s, "size limit exceeded"):
		return Result{}, fmt.Errorf("%w (clamd: %s)", ErrTooLarge, safeName(s))
	}
	return Result{}, fmt.Errorf("clamav: clamd said %q", safeName(s))
}

// safeName keeps what clamd says printable and short: it ends up in an SMTP reply.
func safeName(s string) string {
	var b strings.Builder
	for _, r := range s {
		if b.Len() >= 100 {
			break
		}
		if r >= 0x21 && r < 0x7f || r == ' ' {
			b.WriteRune(r)
		} else {
			b.WriteByte('?')
		}
	}
	if b.Len() == 0 {
		return "unknown"
	}
	return b.String()
}

// logFailure says what went wrong; the chain then applies the fail-open or fail-closed rule
// and its log line only names the check.
func logFailure(t *policy.Txn, err error) {
	if t != nil && t.Conn != nil && t.Conn.Logger != nil {
		t.Conn.Logger.Warn("clamav check failed", "session", t.Conn.SessionID, "id", t.ID, "err", err)
	}
}
