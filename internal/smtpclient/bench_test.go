package smtpclient

import (
	"bufio"
	"bytes"
	"context"
	"io"
	"net"
	"strconv"
	"strings"
	"testing"
)

// benchSink serves SMTP on loopback, one connection at a time, accepting everything. It
// announces ext after EHLO and writes its replies only when it has no more input buffered, as
// real servers do, so that a pipelining client saves round trips.
func benchSink(b *testing.B, ext ...string) string {
	b.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			sinkConn(c, ext)
		}
	}()
	b.Cleanup(func() { ln.Close(); <-done })
	return ln.Addr().String()
}

func sinkConn(c net.Conn, ext []string) {
	defer c.Close()
	r := bufio.NewReaderSize(c, 64<<10)
	w := bufio.NewWriter(c)
	reply := func(s string) bool {
		w.WriteString(s)
		if r.Buffered() == 0 {
			return w.Flush() == nil
		}
		return true
	}
	reply("220 sink.test ESMTP\r\n")
	for {
		line, err := r.ReadSlice('\n')
		if err != nil || len(line) < 4 {
			return
		}
		ok := true
		switch strings.ToUpper(string(line[:4])) {
		case "EHLO":
			var sb strings.Builder
			sb.WriteString("250-sink.test\r\n")
			for _, e := range ext {
				sb.WriteString("250-" + e + "\r\n")
			}
			sb.WriteString("250 8BITMIME\r\n")
			ok = reply(sb.String())
		case "DATA":
			if !reply("354 go on\r\n") {
				return
			}
			for {
				l, err := r.ReadSlice('\n')
				if err != nil {
					return
				}
				if bytes.Equal(l, []byte(".\r\n")) {
					break
				}
			}
			ok = reply("250 2.0.0 queued\r\n")
		case "BDAT":
			f := strings.Fields(string(line))
			if len(f) < 2 {
				return
			}
			n, _ := strconv.Atoi(f[1])
			if _, err := io.CopyN(io.Discard, r, int64(n)); err != nil {
				return
			}
			ok = reply("250 2.0.0 chunk ok\r\n")
		case "QUIT":
			reply("221 bye\r\n")
			w.Flush()
			return
		default: // MAIL, RCPT, RSET, NOOP
			ok = reply("250 2.0.0 ok\r\n")
		}
		if !ok {
			return
		}
	}
}

// BenchmarkSend is one transaction (three recipients, 10 KB body) per op over one kept
// connection to an in-process sink on loopback: without PIPELINING (a round trip per command),
// with it (MAIL, RCPTs and DATA in one group), and with CHUNKING as well (BDAT, no dot-stuffing).
// The sink runs in the same process, so its allocations are counted too.
func BenchmarkSend(b *testing.B) {
	var body strings.Builder
	body.WriteString("From: <a@b.test>\r\nTo: <x@sink.test>\r\nSubject: bench\r\n\r\n")
	for body.Len() < 10<<10 {
		body.WriteString("A line of body text, seventy-odd characters long, to fill ten kilobytes.\r\n")
	}
	msg := body.String()
	env := Envelope{From: "a@b.test", Rcpts: []string{"x@sink.test", "y@sink.test", "z@sink.test"}}
	for _, tc := range []struct {
		name string
		ext  []string
	}{
		{"lockstep", nil},
		{"pipelining", []string{"PIPELINING"}},
		{"pipelining+chunking", []string{"PIPELINING", "CHUNKING"}},
	} {
		b.Run(tc.name, func(b *testing.B) {
			addr := benchSink(b, tc.ext...)
			conn, err := net.Dial("tcp", addr)
			if err != nil {
				b.Fatal(err)
			}
			c := New(context.Background(), conn, Timeouts{})
			if err := c.Greet(); err != nil {
				b.Fatal(err)
			}
			if err := c.Hello("relay.test"); err != nil {
				b.Fatal(err)
			}
			for _, e := range tc.ext {
				if !c.Has(e) {
					b.Fatalf("sink did not announce %s", e)
				}
			}
			b.ReportAllocs()
			b.SetBytes(int64(len(msg)))
			for b.Loop() {
				res, err := c.Send(env, strings.NewReader(msg))
				if err != nil || res.Data == nil || res.Data.Code != 250 || len(res.Rcpts) != 3 {
					b.Fatalf("%+v %v", res, err)
				}
			}
			b.StopTimer()
			c.Quit()
		})
	}
}
