package clamav

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/postamt/postamt/internal/policy"
)

type msg string

func (m msg) Size() int64                  { return int64(len(m)) }
func (m msg) Open() (io.ReadCloser, error) { return io.NopCloser(strings.NewReader(string(m))), nil }

// fakeClamd reads INSTREAM like clamd (command, chunks, zero chunk) and answers with what
// decide says about the bytes; limit mimics StreamMaxLength (clamd answers and closes as soon
// as the stream passes it).
type fakeClamd struct {
	ln     net.Listener
	limit  int
	decide func(data []byte) string
	stall  bool
	got    chan []byte
}

func startFake(t *testing.T, network string, f *fakeClamd) string {
	t.Helper()
	addr := "127.0.0.1:0"
	if network == "unix" {
		addr = filepath.Join(t.TempDir(), "clamd.sock")
	}
	ln, err := net.Listen(network, addr)
	if err != nil {
		t.Fatal(err)
	}
	f.ln, f.got = ln, make(chan []byte, 10)
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go f.serve(c)
		}
	}()
	return ln.Addr().String()
}

func (f *fakeClamd) serve(c net.Conn) {
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	r := bufio.NewReader(c)
	cmd, err := r.ReadString(0)
	if err != nil || cmd != "zINSTREAM\x00" {
		io.WriteString(c, "UNKNOWN COMMAND\x00")
		return
	}
	if f.stall {
		io.Copy(io.Discard, r)
		return
	}
	var data []byte
	for {
		var hdr [4]byte
		if _, err := io.ReadFull(r, hdr[:]); err != nil {
			return
		}
		n := binary.BigEndian.Uint32(hdr[:])
		if n == 0 {
			break
		}
		if f.limit > 0 && len(data)+int(n) > f.limit {
			io.WriteString(c, "INSTREAM size limit exceeded. ERROR\x00")
			return
		}
		buf := make([]byte, n)
		if _, err := io.ReadFull(r, buf); err != nil {
			return
		}
		data = append(data, buf...)
	}
	f.got <- data
	io.WriteString(c, f.decide(data)+"\x00")
}

func virusIf(marker string) func([]byte) string {
	return func(b []byte) string {
		if bytes.Contains(b, []byte(marker)) {
			return "stream: Eicar-Test-Signature FOUND"
		}
		return "stream: OK"
	}
}

func TestFoundAndClean(t *testing.T) {
	for _, network := range []string{"tcp", "unix"} {
		t.Run(network, func(t *testing.T) {
			f := &fakeClamd{decide: virusIf("EICAR")}
			addr := startFake(t, network, f)
			c, err := New(Options{Address: addr, ChunkSize: 7})
			if err != nil {
				t.Fatal(err)
			}
			message := "Subject: x\r\n\r\n" + strings.Repeat("clean text ", 20) + "EICAR\r\n"
			v := c.CheckData(context.Background(), nil, msg(message))
			if v.Action != policy.Reject || v.Reply == nil || v.Reply.Line() != "554 5.7.1 Message refused: virus found (Eicar-Test-Signature)" {
				t.Errorf("verdict %+v reply %v", v, v.Reply)
			}
			if got := string(<-f.got); got != message {
				t.Errorf("clamd got %q, want the message reassembled from 7-byte chunks", got)
			}
			v = c.CheckData(context.Background(), nil, msg("Subject: x\r\n\r\nhello\r\n"))
			if v.Action != policy.Continue || v.Err != nil || v.Result != "clean" {
				t.Errorf("clean message: %+v", v)
			}
		})
	}
}

func TestQuarantineAction(t *testing.T) {
	addr := startFake(t, "tcp", &fakeClamd{decide: virusIf("EICAR")})
	c, _ := New(Options{Address: addr, Action: policy.Quarantine})
	v := c.CheckData(context.Background(), nil, msg("EICAR"))
	if v.Action != policy.Quarantine || !strings.Contains(v.Reason, "Eicar-Test-Signature") {
		t.Errorf("%+v", v)
	}
}

// TestStreamLimit: over our max_size nothing is sent; over clamd's own limit its ERROR reply
// is understood even though it cut our stream short. Both are check failures.
func TestStreamLimit(t *testing.T) {
	f := &fakeClamd{decide: virusIf("EICAR"), limit: 1000}
	addr := startFake(t, "tcp", f)
	c, _ := New(Options{Address: addr, MaxSize: 100})
	v := c.CheckData(context.Background(), nil, msg(strings.Repeat("x", 101)))
	if !errors.Is(v.Err, ErrTooLarge) {
		t.Errorf("over max_size: %+v", v)
	}
	c, _ = New(Options{Address: addr, MaxSize: 10 << 20, ChunkSize: 512})
	v = c.CheckData(context.Background(), nil, msg(strings.Repeat("x", 2<<20)))
	if !errors.Is(v.Err, ErrTooLarge) {
		t.Errorf("over clamd's limit: %+v", v)
	}
}

func TestTimeoutAndDown(t *testing.T) {
	addr := startFake(t, "tcp", &fakeClamd{stall: true})
	c, _ := New(Options{Address: addr})
	for _, closed := range []bool{false, true} {
		ch := &policy.Chain{Entries: []policy.Entry{{Check: c, Timeout: 200 * time.Millisecond, FailClosed: closed}}}
		start := time.Now()
		r := ch.Data(context.Background(), &policy.Txn{}, msg("hello"))
		if d := time.Since(start); d > 2*time.Second {
			t.Errorf("took %v", d)
		}
		if len(r.Outcomes) != 1 || r.Outcomes[0].Err == nil {
			t.Fatalf("outcomes %+v", r.Outcomes)
		}
		if closed != (r.Action == policy.Tempfail) {
			t.Errorf("fail_closed=%v: action %v", closed, r.Action)
		}
	}
	ln, _ := net.Listen("tcp", "127.0.0.1:0")
	dead := ln.Addr().String()
	ln.Close()
	c, _ = New(Options{Address: dead})
	if v := c.CheckData(context.Background(), nil, msg("x")); v.Err == nil {
		t.Errorf("down clamd: %+v", v)
	}
}

func TestParseReply(t *testing.T) {
	tests := []struct {
		in, virus string
		err       bool
	}{
		{"stream: OK", "", false},
		{"1: stream: OK", "", false},
		{"stream: Win.Test.EICAR_HDB-1 FOUND", "Win.Test.EICAR_HDB-1", false},
		{"stream: Eicar\r\nX FOUND", "Eicar??X", false},
		{"INSTREAM size limit exceeded. ERROR", "", true},
		{"stream: Can't allocate memory ERROR", "", true},
		{"", "", true},
	}
	for _, tt := range tests {
		r, err := parseReply(tt.in)
		if r.Virus != tt.virus || (err != nil) != tt.err {
			t.Errorf("parseReply(%q) = %q, %v", tt.in, r.Virus, err)
		}
	}
}

// FuzzParseReply: whatever clamd (or something posing as it) answers, the virus name that can
// reach an SMTP reply is short and printable.
func FuzzParseReply(f *testing.F) {
	for _, s := range []string{"stream: OK", "stream: Eicar-Test-Signature FOUND", "INSTREAM size limit exceeded. ERROR", "stream: \xff\x00 FOUND"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		r, _ := parseReply(s)
		if len(r.Virus) > 110 || strings.ContainsAny(r.Virus, "\r\n\x00") {
			t.Fatalf("virus name %q", r.Virus)
		}
	})
}
