package remote

import (
	"bufio"
	"context"
	"errors"
	"io"
	"net"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-sasl"
	gosmtp "github.com/emersion/go-smtp"

	"github.com/postamt/postamt/internal/mail"
)

type authSession struct{ peerSession }

func (s *authSession) AuthMechanisms() []string { return []string{sasl.Plain} }
func (s *authSession) Auth(mech string) (sasl.Server, error) {
	return sasl.NewPlainServer(func(identity, user, pass string) error {
		s.p.mu.Lock()
		defer s.p.mu.Unlock()
		if s.p.auth[user] != pass {
			return errors.New("bad credentials")
		}
		s.p.user = user
		return nil
	}), nil
}

func relayRcpt(port int, addr string) []mail.Recipient {
	return []mail.Recipient{{Addr: addr, Route: mail.Route{Transport: "remote", NextHop: "[127.0.0.1]:" + strconv.Itoa(port)}, Notify: "SUCCESS"}}
}

func TestConnectionReuse(t *testing.T) {
	p, port := startPeer(t, "127.0.0.1", true)
	tr := &Transport{Hostname: "mx.example.test", ReuseIdle: 300 * time.Millisecond}
	defer tr.Close()
	for i := 0; i < 5; i++ {
		res, err := tr.Deliver(context.Background(), message("Subject: "+strconv.Itoa(i)+"\r\n\r\nx\r\n"), relayRcpt(port, "r"+strconv.Itoa(i)+"@remote.test"))
		if err != nil || res[0].Reply != nil {
			t.Fatalf("message %d: %v %+v", i, err, res)
		}
		if !strings.HasPrefix(res[0].TLS, "TLS") {
			t.Errorf("reused connection lost its TLS record: %q", res[0].TLS)
		}
	}
	p.mu.Lock()
	n, got := p.sessions, len(p.got)
	p.mu.Unlock()
	if n != 1 || got != 5 {
		t.Fatalf("5 messages took %d connections (%d delivered), want 1", n, got)
	}
	// Idle past the limit: the connection is closed and the next message dials again.
	time.Sleep(700 * time.Millisecond)
	if res, err := tr.Deliver(context.Background(), message("Subject: late\r\n\r\nx\r\n"), relayRcpt(port, "late@remote.test")); err != nil || res[0].Reply != nil {
		t.Fatalf("after idle: %v %+v", err, res)
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.sessions != 2 {
		t.Errorf("%d connections after the idle limit, want 2", p.sessions)
	}
}

// A cached connection the server has since closed is noticed (RSET fails) and replaced.
func TestReuseAfterServerClosed(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	conns := make(chan int, 4)
	go func() {
		for n := 1; ; n++ {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			conns <- n
			go func(c net.Conn, n int) {
				defer c.Close()
				r := bufio.NewReader(c)
				io.WriteString(c, "220 mx ESMTP\r\n")
				for {
					line, err := r.ReadString('\n')
					if err != nil {
						return
					}
					switch cmd := strings.ToUpper(strings.Fields(line)[0]); cmd {
					case "EHLO":
						io.WriteString(c, "250-mx\r\n250 PIPELINING\r\n")
					case "DATA":
						io.WriteString(c, "354 go\r\n")
						for {
							l, err := r.ReadString('\n')
							if err != nil || l == ".\r\n" {
								break
							}
						}
						io.WriteString(c, "250 2.0.0 ok\r\n")
						if n == 1 {
							return // hang up while the client keeps the connection idle
						}
					default:
						io.WriteString(c, "250 ok\r\n")
					}
				}
			}(c, n)
		}
	}()
	port := ln.Addr().(*net.TCPAddr).Port
	tr := &Transport{Hostname: "mx.example.test"}
	defer tr.Close()
	for i := 0; i < 2; i++ {
		res, err := tr.Deliver(context.Background(), message("Subject: x\r\n\r\nx\r\n"), relayRcpt(port, "a@remote.test"))
		if err != nil || res[0].Reply != nil {
			t.Fatalf("message %d: %v %+v", i, err, res)
		}
		time.Sleep(50 * time.Millisecond)
	}
	if len(conns) != 2 {
		t.Errorf("%d connections, want 2", len(conns))
	}
}

// RFC 5321 §4.1.1.4 / the fault case: the server takes the data and drops the connection
// before its reply. The recipient is deferred (retried), never counted as delivered or failed.
func TestDropBeforeFinalReply(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		r := bufio.NewReader(c)
		io.WriteString(c, "220 mx ESMTP\r\n")
		for {
			line, err := r.ReadString('\n')
			if err != nil {
				return
			}
			switch strings.ToUpper(strings.Fields(line)[0]) {
			case "EHLO":
				io.WriteString(c, "250-mx\r\n250 PIPELINING\r\n")
			case "DATA":
				io.WriteString(c, "354 go\r\n")
				for {
					if l, err := r.ReadString('\n'); err != nil || l == ".\r\n" {
						return // all data read, no reply
					}
				}
			default:
				io.WriteString(c, "250 ok\r\n")
			}
		}
	}()
	tr := &Transport{Hostname: "mx.example.test"}
	defer tr.Close()
	res, err := tr.Deliver(context.Background(), message("Subject: x\r\n\r\nx\r\n"), relayRcpt(ln.Addr().(*net.TCPAddr).Port, "a@remote.test"))
	if err != nil {
		t.Fatal(err)
	}
	if r := res[0].Reply; r == nil || r.Code != 451 || r.Enhanced.String() != "4.4.2" || !strings.Contains(r.Text, "lost before the reply") {
		t.Fatalf("result %+v", res[0])
	}
}

func TestRelayAuthAndDSNParameters(t *testing.T) {
	p, port := startPeer(t, "127.0.0.1", true)
	p.auth = map[string]string{"relayuser": "s3cret"}
	hop := "[127.0.0.1]:" + strconv.Itoa(port)
	tr := &Transport{Hostname: "mx.example.test", Auth: map[string]Credentials{hop: {"relayuser", "s3cret"}}}
	defer tr.Close()
	msg := message("Subject: x\r\n\r\nx\r\n")
	msg.Ret, msg.EnvID = "HDRS", "env id+1"
	rc := relayRcpt(port, "bob@far.test")
	rc[0].ORCPT = "rfc822;bob@far.test"
	res, err := tr.Deliver(context.Background(), msg, rc)
	if err != nil || res[0].Reply != nil {
		t.Fatalf("%v %+v", err, res)
	}
	if res[0].Relayed {
		t.Error("the next hop supports DSN: no relayed notice is due")
	}
	p.mu.Lock()
	if p.user != "relayuser" || p.opts.Return != gosmtp.DSNReturnHeaders || p.opts.EnvelopeID != "env id+1" {
		t.Errorf("peer saw user=%q ret=%q envid=%q", p.user, p.opts.Return, p.opts.EnvelopeID)
	}
	p.mu.Unlock()

	// Wrong password: our configuration's fault, retried, not bounced.
	tr2 := &Transport{Hostname: "mx.example.test", Auth: map[string]Credentials{hop: {"relayuser", "wrong"}}}
	defer tr2.Close()
	_, err = tr2.Deliver(context.Background(), message("x\r\n"), relayRcpt(port, "bob@far.test"))
	if err == nil || !strings.HasPrefix(err.Error(), "451 4.7.8") {
		t.Errorf("wrong password: %v", err)
	}
	// A relay host without TLS never sees the password.
	_, plainPort := startPeer(t, "127.0.0.1", false)
	tr3 := &Transport{Hostname: "mx.example.test", Auth: map[string]Credentials{"[127.0.0.1]:" + strconv.Itoa(plainPort): {"relayuser", "s3cret"}}}
	defer tr3.Close()
	_, err = tr3.Deliver(context.Background(), message("x\r\n"), relayRcpt(plainPort, "bob@far.test"))
	if err == nil || !strings.HasPrefix(err.Error(), "451 4.7.10") {
		t.Errorf("AUTH without TLS: %v", err)
	}
}

func TestRelayedWhenNextHopLacksDSN(t *testing.T) {
	p, port := startPeer(t, "127.0.0.1", false)
	_ = p
	tr := &Transport{Hostname: "mx.example.test"}
	defer tr.Close()
	// startPeer enables DSN; a second server without it:
	p2 := &peer{got: map[string]string{}}
	srv := gosmtp.NewServer(p2)
	srv.Domain = "nodsn.test"
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(ln)
	defer srv.Close()
	res, err := tr.Deliver(context.Background(), message("x\r\n"), relayRcpt(ln.Addr().(*net.TCPAddr).Port, "a@nodsn.test"))
	if err != nil || res[0].Reply != nil || !res[0].Relayed {
		t.Fatalf("%v %+v", err, res)
	}
	res, err = tr.Deliver(context.Background(), message("x\r\n"), relayRcpt(port, "a@dsn.test"))
	if err != nil || res[0].Reply != nil || res[0].Relayed {
		t.Fatalf("DSN-capable hop: %v %+v", err, res)
	}
}

// oldMX is a server that announces only the given extensions and reports the MAIL line and
// the message it received.
func oldMX(t *testing.T, ext ...string) (port int, mailLine, data chan string) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	mailLine, data = make(chan string, 1), make(chan string, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		r := bufio.NewReader(c)
		io.WriteString(c, "220 old ESMTP\r\n")
		for {
			line, err := r.ReadString('\n')
			if err != nil {
				return
			}
			switch strings.ToUpper(strings.Fields(line)[0]) {
			case "EHLO":
				io.WriteString(c, "250-old\r\n")
				for _, e := range ext {
					io.WriteString(c, "250-"+e+"\r\n")
				}
				io.WriteString(c, "250 HELP\r\n")
			case "MAIL":
				mailLine <- strings.TrimSpace(line)
				io.WriteString(c, "250 ok\r\n")
			case "DATA":
				io.WriteString(c, "354 go\r\n")
				var b strings.Builder
				for {
					l, err := r.ReadString('\n')
					if err != nil || l == ".\r\n" {
						break
					}
					b.WriteString(l)
				}
				data <- b.String()
				io.WriteString(c, "250 2.0.0 ok\r\n")
			case "QUIT":
				io.WriteString(c, "221 bye\r\n")
				return
			default:
				io.WriteString(c, "250 ok\r\n")
			}
		}
	}()
	return ln.Addr().(*net.TCPAddr).Port, mailLine, data
}

func TestEightBitDowngrade(t *testing.T) {
	port, mailLine, data := oldMX(t, "PIPELINING", "SIZE 100000")
	tr := &Transport{Hostname: "mx.example.test", ReuseIdle: -1}
	msg := message("Subject: x\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nGrüße\r\n")
	msg.Body8Bit = true
	res, err := tr.Deliver(context.Background(), msg, relayRcpt(port, "a@old.test"))
	if err != nil || res[0].Reply != nil {
		t.Fatalf("%v %+v", err, res)
	}
	if l := <-mailLine; strings.Contains(l, "BODY=") || !strings.Contains(l, "SIZE=") {
		t.Errorf("MAIL line %q", l)
	}
	got := <-data
	if has8bit([]byte(got)) || !strings.Contains(got, "Content-Transfer-Encoding: quoted-printable\r\n") || !strings.Contains(got, "Gr=C3=BC=C3=9Fe") {
		t.Errorf("server got %q", got)
	}

	// With 8BITMIME the body goes unchanged, declared.
	port, mailLine, data = oldMX(t, "8BITMIME")
	if res, err := tr.Deliver(context.Background(), msg, relayRcpt(port, "a@new.test")); err != nil || res[0].Reply != nil {
		t.Fatalf("%v %+v", err, res)
	}
	if l := <-mailLine; !strings.HasSuffix(l, " BODY=8BITMIME") {
		t.Errorf("MAIL line %q", l)
	}
	if got := <-data; !strings.Contains(got, "Grüße") {
		t.Errorf("server got %q", got)
	}
}
