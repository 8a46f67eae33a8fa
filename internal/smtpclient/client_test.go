package smtpclient

import (
	"bufio"
	"context"
	"crypto/tls"
	"encoding/base64"
	"errors"
	"io"
	"net"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/postamt/postamt/internal/certs"
)

// script is a scripted SMTP server for one connection. It reads and writes strictly in the
// order the test gives, so a client that waits where it should pipeline deadlocks (and fails on
// the test's deadline) instead of passing.
type script struct {
	t *testing.T
	c net.Conn
	r *bufio.Reader
}

func (s *script) expect(prefix string) string {
	s.t.Helper()
	s.c.SetReadDeadline(time.Now().Add(5 * time.Second))
	line, err := s.r.ReadString('\n')
	if err != nil {
		s.t.Errorf("server: want %q, read error %v", prefix, err)
		panic(errStop)
	}
	line = strings.TrimSuffix(line, "\r\n")
	if !strings.HasPrefix(line, prefix) {
		s.t.Errorf("server: got %q, want prefix %q", line, prefix)
		panic(errStop)
	}
	return line
}

func (s *script) send(lines ...string) {
	for _, l := range lines {
		io.WriteString(s.c, l+"\r\n")
	}
}

// readDot reads a DATA body up to the final dot and returns it un-stuffed.
func (s *script) readDot() string {
	var b strings.Builder
	for {
		line := s.expect("")
		if line == "." {
			return b.String()
		}
		b.WriteString(strings.TrimPrefix(line, ".") + "\r\n")
	}
}

func (s *script) readN(n int) string {
	buf := make([]byte, n)
	s.c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.ReadFull(s.r, buf); err != nil {
		s.t.Errorf("server: reading %d octets: %v", n, err)
		panic(errStop)
	}
	return string(buf)
}

var errStop = errors.New("script stopped")

func serve(t *testing.T, run func(s *script)) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		defer func() {
			if p := recover(); p != nil && p != errStop {
				panic(p)
			}
		}()
		run(&script{t: t, c: c, r: bufio.NewReader(c)})
	}()
	t.Cleanup(func() { ln.Close(); <-done })
	return ln.Addr().String()
}

func dial(t *testing.T, addr string) *Client {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	t.Cleanup(cancel)
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return New(ctx, conn, Timeouts{})
}

const body = "Subject: hi\r\n\r\n.leading dot\r\nline\r\n"

func TestPipelinedData(t *testing.T) {
	got := make(chan string, 1)
	addr := serve(t, func(s *script) {
		s.send("220 mx.test ESMTP")
		s.expect("EHLO relay.test")
		s.send("250-mx.test", "250-PIPELINING", "250-SIZE 1000", "250 8BITMIME")
		// All of the group before any reply: a non-pipelining client would hang here.
		s.expect("MAIL FROM:<a@b.test> SIZE=40")
		s.expect("RCPT TO:<x@mx.test> NOTIFY=FAILURE")
		s.expect("RCPT TO:<y@mx.test>")
		s.expect("DATA")
		s.send("250 2.1.0 ok", "250 2.1.5 ok", "550-5.1.1 no such", "550 5.1.1 user here", "354 go on")
		got <- s.readDot()
		s.send("250 2.0.0 queued as X")
		s.expect("QUIT")
		s.send("221 bye")
	})
	c := dial(t, addr)
	if err := c.Greet(); err != nil {
		t.Fatal(err)
	}
	if err := c.Hello("relay.test"); err != nil {
		t.Fatal(err)
	}
	if !c.ESMTP || !c.Has("PIPELINING") || c.MaxSize() != 1000 || c.Has("CHUNKING") {
		t.Fatalf("extensions %v", c.Ext)
	}
	res, err := c.Send(Envelope{From: "a@b.test", MailParams: "SIZE=40", Rcpts: []string{"x@mx.test", "y@mx.test"},
		RcptParams: []string{"NOTIFY=FAILURE"}}, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	if res.Mail.Code != 250 || res.Rcpts[0].Code != 250 || res.Rcpts[1].Code != 550 || res.Data.Code != 250 {
		t.Fatalf("result %+v %v %v", res.Mail, res.Rcpts, res.Data)
	}
	if r := res.Rcpts[1]; r.Enhanced.String() != "5.1.1" || r.Text != "no such\nuser here" {
		t.Errorf("multi-line reply parsed as %q %q", r.Enhanced, r.Text)
	}
	if res.Data.Text != "queued as X" {
		t.Errorf("data reply %q", res.Data.Text)
	}
	if b := <-got; b != body {
		t.Errorf("server got body %q", b)
	}
	c.Quit()
}

func TestBDATChunks(t *testing.T) {
	big := strings.Repeat("0123456789abcdef", 40000) // 640,000 octets: three chunks
	got := make(chan string, 1)
	addr := serve(t, func(s *script) {
		s.send("220 mx.test ESMTP")
		s.expect("EHLO relay.test")
		s.send("250-mx.test", "250-PIPELINING", "250 CHUNKING")
		s.expect("MAIL FROM:<>")
		s.expect("RCPT TO:<x@mx.test>")
		s.send("250 2.1.0 ok", "250 2.1.5 ok")
		var b strings.Builder
		for {
			f := strings.Fields(s.expect("BDAT "))
			n, _ := strconv.Atoi(f[1])
			b.WriteString(s.readN(n))
			if len(f) == 3 && f[2] == "LAST" {
				break
			}
		}
		got <- b.String()
		s.send("250 2.0.0 chunk", "250 2.0.0 chunk", "250 2.0.0 done")
	})
	c := dial(t, addr)
	c.Greet()
	if err := c.Hello("relay.test"); err != nil {
		t.Fatal(err)
	}
	res, err := c.Send(Envelope{From: "", Rcpts: []string{"x@mx.test"}}, strings.NewReader(big))
	if err != nil {
		t.Fatal(err)
	}
	if res.Data == nil || res.Data.Text != "done" {
		t.Fatalf("data reply %v", res.Data)
	}
	if b := <-got; b != big {
		t.Errorf("server got %d octets, want %d", len(b), len(big))
	}
}

// RFC 5321 §3.2: a server that does not know EHLO gets HELO, and then no extensions are used.
func TestHeloFallbackNoPipelining(t *testing.T) {
	addr := serve(t, func(s *script) {
		s.send("220 old.test SMTP")
		s.expect("EHLO relay.test")
		s.send("502 command not implemented")
		s.expect("HELO relay.test")
		s.send("250 old.test")
		s.expect("MAIL FROM:<a@b.test>")
		s.send("250 ok")
		s.expect("RCPT TO:<x@old.test>")
		s.send("451 try later")
		s.expect("RCPT TO:<y@old.test>")
		s.send("250 ok")
		s.expect("DATA")
		s.send("354 go")
		s.readDot()
		s.send("250 ok")
	})
	c := dial(t, addr)
	c.Greet()
	if err := c.Hello("relay.test"); err != nil {
		t.Fatal(err)
	}
	if c.ESMTP {
		t.Error("ESMTP after HELO")
	}
	res, err := c.Send(Envelope{From: "a@b.test", Rcpts: []string{"x@old.test", "y@old.test"}}, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	if res.Rcpts[0].Code != 451 || res.Rcpts[0].Enhanced[0] != 0 || res.Data.Code != 250 {
		t.Errorf("result %v %v", res.Rcpts, res.Data)
	}
}

func TestNoRecipientAccepted(t *testing.T) {
	for _, chunking := range []bool{false, true} {
		t.Run("chunking="+strconv.FormatBool(chunking), func(t *testing.T) {
			addr := serve(t, func(s *script) {
				s.send("220 mx.test ESMTP")
				s.expect("EHLO")
				if chunking {
					s.send("250-mx.test", "250-CHUNKING", "250 PIPELINING")
					s.expect("MAIL")
					s.expect("RCPT")
					s.send("250 ok", "550 5.1.1 no")
				} else {
					s.send("250-mx.test", "250 PIPELINING")
					s.expect("MAIL")
					s.expect("RCPT")
					s.expect("DATA")
					s.send("250 ok", "550 5.1.1 no", "554 5.5.1 no valid recipients")
				}
				s.expect("RSET")
				s.send("250 ok")
			})
			c := dial(t, addr)
			c.Greet()
			c.Hello("relay.test")
			res, err := c.Send(Envelope{From: "a@b.test", Rcpts: []string{"x@mx.test"}}, strings.NewReader(body))
			if !chunking {
				// The DATA refusal was read; the connection is in a known state for RSET.
				if err == nil {
					err = c.Reset()
				}
			}
			if err != nil {
				t.Fatal(err)
			}
			if res.Data != nil || res.Rcpts[0].Code != 550 {
				t.Errorf("result %v data %v", res.Rcpts, res.Data)
			}
		})
	}
}

func TestHostileReplies(t *testing.T) {
	for name, greeting := range map[string]string{
		"long line":  "220 " + strings.Repeat("x", 5000),
		"not smtp":   "HTTP/1.1 400 Bad Request",
		"mixed code": "220-a\r\n250 b",
		"bad sep":    "220xhello",
	} {
		t.Run(name, func(t *testing.T) {
			addr := serve(t, func(s *script) { s.send(greeting) })
			c := dial(t, addr)
			if err := c.Greet(); !errors.Is(err, ErrProtocol) {
				t.Errorf("Greet: %v, want ErrProtocol", err)
			}
		})
	}
	t.Run("too many lines", func(t *testing.T) {
		addr := serve(t, func(s *script) {
			for i := 0; i < 300; i++ {
				s.send("220-more")
			}
		})
		if err := dial(t, addr).Greet(); !errors.Is(err, ErrProtocol) {
			t.Errorf("Greet: %v", err)
		}
	})
}

func TestContextBoundsSilentServer(t *testing.T) {
	addr := serve(t, func(s *script) { io.Copy(io.Discard, s.c) })
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	start := time.Now()
	err = New(ctx, conn, Timeouts{}).Greet()
	var ne net.Error
	if !errors.As(err, &ne) || !ne.Timeout() {
		t.Errorf("Greet: %v, want a timeout", err)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("took %v", d)
	}
	conn2, _ := net.Dial("tcp", addr)
	defer conn2.Close()
	err = New(context.Background(), conn2, Timeouts{Greeting: 100 * time.Millisecond}).Greet()
	if !errors.As(err, &ne) || !ne.Timeout() {
		t.Errorf("greeting timeout: %v", err)
	}
}

func TestStartTLSAndAuth(t *testing.T) {
	srvTLS, err := certs.ServerConfig("", "", t.TempDir(), "mx.test")
	if err != nil {
		t.Fatal(err)
	}
	addr := serve(t, func(s *script) {
		s.send("220 mx.test ESMTP")
		s.expect("EHLO relay.test")
		s.send("250-mx.test", "250 STARTTLS")
		s.expect("STARTTLS")
		s.send("220 go ahead")
		tc := tls.Server(s.c, srvTLS)
		if err := tc.Handshake(); err != nil {
			t.Errorf("server handshake: %v", err)
			return
		}
		s.c, s.r = tc, bufio.NewReader(tc)
		s.expect("EHLO relay.test")
		s.send("250-mx.test", "250 AUTH LOGIN PLAIN")
		line := s.expect("AUTH PLAIN ")
		dec, _ := base64.StdEncoding.DecodeString(strings.TrimPrefix(line, "AUTH PLAIN "))
		if string(dec) != "\x00user\x00secret" {
			t.Errorf("PLAIN response %q", dec)
		}
		s.send("235 2.7.0 ok")
	})
	c := dial(t, addr)
	c.Greet()
	if err := c.Hello("relay.test"); err != nil {
		t.Fatal(err)
	}
	if err := c.Auth("user", "secret"); err == nil {
		t.Fatal("AUTH sent without TLS")
	}
	if err := c.StartTLS(&tls.Config{InsecureSkipVerify: true}); err != nil {
		t.Fatal(err)
	}
	if c.TLS == nil || !c.Has("AUTH") || c.Has("STARTTLS") {
		t.Fatalf("after STARTTLS: tls=%v ext=%v", c.TLS != nil, c.Ext)
	}
	if err := c.Auth("user", "secret"); err != nil {
		t.Fatal(err)
	}
}

func TestAuthLogin(t *testing.T) {
	srvTLS, _ := certs.ServerConfig("", "", t.TempDir(), "mx.test")
	addr := serve(t, func(s *script) {
		tc := tls.Server(s.c, srvTLS)
		s.c, s.r = tc, bufio.NewReader(tc)
		s.send("220 mx.test ESMTP")
		s.expect("EHLO")
		s.send("250-mx.test", "250 AUTH LOGIN")
		s.expect("AUTH LOGIN")
		s.send("334 VXNlcm5hbWU6")
		if u := s.expect(""); u != base64.StdEncoding.EncodeToString([]byte("user")) {
			t.Errorf("user %q", u)
		}
		s.send("334 UGFzc3dvcmQ6")
		s.expect(base64.StdEncoding.EncodeToString([]byte("wrong")))
		s.send("535 5.7.8 bad credentials")
	})
	conn, err := tls.Dial("tcp", addr, &tls.Config{InsecureSkipVerify: true})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	c := New(context.Background(), conn, Timeouts{})
	st := conn.ConnectionState()
	c.TLS = &st
	c.Greet()
	c.Hello("relay.test")
	err = c.Auth("user", "wrong")
	var r interface{ Permanent() bool }
	if !errors.As(err, &r) || !r.Permanent() {
		t.Errorf("AUTH LOGIN with a wrong password: %v", err)
	}
}

func FuzzReadReply(f *testing.F) {
	f.Add("250 ok\r\n")
	f.Add("250-a\r\n250 2.0.0 b\r\n")
	f.Add("550 5.1.1\r\n")
	f.Fuzz(func(t *testing.T, in string) {
		a, b := net.Pipe()
		defer a.Close()
		go func() { io.WriteString(b, in); b.Close() }()
		r, err := New(context.Background(), a, Timeouts{Greeting: time.Second}).ReadReply(time.Second)
		if err == nil && (r.Code < 200 || r.Code > 599) {
			t.Errorf("code %d accepted", r.Code)
		}
	})
}
