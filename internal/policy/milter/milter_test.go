package milter

import (
	"context"
	"io"
	"net"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	gomilter "github.com/d--j/go-milter"

	"github.com/postamt/postamt/internal/mail"
	"github.com/postamt/postamt/internal/policy"
	"github.com/postamt/postamt/internal/smtp"
)

// scripted is a milter (served by the library's server side) that records what it was told
// and answers as the test says.
type scripted struct {
	gomilter.NoOpMilter
	mu     *sync.Mutex
	events *[]string
	onRcpt func(string) (*gomilter.Response, error)
	onBody func(body string, m gomilter.Modifier) (*gomilter.Response, error)
	body   strings.Builder
}

func (s *scripted) log(e string) { s.mu.Lock(); *s.events = append(*s.events, e); s.mu.Unlock() }

func (s *scripted) Connect(host, family string, port uint16, addr string, m gomilter.Modifier) (*gomilter.Response, error) {
	s.log("connect " + host + " " + family + " " + addr)
	return gomilter.RespContinue, nil
}
func (s *scripted) Helo(name string, m gomilter.Modifier) (*gomilter.Response, error) {
	s.log("helo " + name)
	return gomilter.RespContinue, nil
}
func (s *scripted) MailFrom(from, args string, m gomilter.Modifier) (*gomilter.Response, error) {
	s.log("mail " + from + " j=" + m.Get(gomilter.MacroMTAFQDN))
	return gomilter.RespContinue, nil
}
func (s *scripted) RcptTo(rcpt, args string, m gomilter.Modifier) (*gomilter.Response, error) {
	s.log("rcpt " + rcpt)
	if s.onRcpt != nil {
		return s.onRcpt(rcpt)
	}
	return gomilter.RespContinue, nil
}
func (s *scripted) Header(name, value string, m gomilter.Modifier) (*gomilter.Response, error) {
	s.log("header " + name + ": " + value)
	return gomilter.RespContinue, nil
}
func (s *scripted) BodyChunk(chunk []byte, m gomilter.Modifier) (*gomilter.Response, error) {
	s.body.Write(chunk)
	return gomilter.RespContinue, nil
}
func (s *scripted) EndOfMessage(m gomilter.Modifier) (*gomilter.Response, error) {
	s.log("eom i=" + m.Get(gomilter.MacroQueueId))
	if s.onBody != nil {
		return s.onBody(s.body.String(), m)
	}
	return gomilter.RespAccept, nil
}
func (s *scripted) Abort(m gomilter.Modifier) error {
	s.log("abort")
	s.body.Reset()
	return nil
}

type fake struct {
	addr   string
	mu     sync.Mutex
	events []string
}

func (f *fake) Events() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.events...)
}

func startMilter(t *testing.T, setup func(*scripted)) *fake {
	t.Helper()
	f := &fake{}
	srv := gomilter.NewServer(gomilter.WithMilter(func() gomilter.Milter {
		s := &scripted{mu: &f.mu, events: &f.events}
		if setup != nil {
			setup(s)
		}
		return s
	}), gomilter.WithActions(gomilter.OptAddHeader|gomilter.OptQuarantine))
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	f.addr = ln.Addr().String()
	return f
}

type msg string

func (m msg) Size() int64                  { return int64(len(m)) }
func (m msg) Open() (io.ReadCloser, error) { return io.NopCloser(strings.NewReader(string(m))), nil }

const testMsg = "Received: from client.example by mx\r\n\tfor <b@example.test>\r\nSubject: hi\r\n\r\nline 1\r\nline 2\r\n"

// session drives one connection through the chain the way smtpserver does.
func session(t *testing.T, c *Check, rcpts ...string) (*policy.Conn, *policy.Txn, []policy.Result) {
	t.Helper()
	ch := &policy.Chain{Entries: []policy.Entry{{Check: c, Timeout: 5 * time.Second}}}
	ctx := context.Background()
	pc := &policy.Conn{RemoteIP: netip.MustParseAddr("192.0.2.9"), RemoteAddr: &net.TCPAddr{IP: net.ParseIP("192.0.2.9"), Port: 40000}, Values: map[string]any{}}
	var rs []policy.Result
	rs = append(rs, ch.Conn(ctx, pc))
	pc.Helo = "client.example"
	rs = append(rs, ch.Helo(ctx, pc))
	tx := &policy.Txn{Conn: pc, From: "a@example.org", ID: "Q1"}
	rs = append(rs, ch.Mail(ctx, tx))
	for _, r := range rcpts {
		p := smtp.Path{Addr: smtp.Address{Local: strings.Split(r, "@")[0], Domain: strings.Split(r, "@")[1]}}
		res := ch.Rcpt(ctx, tx, p, nil)
		rs = append(rs, res)
		if !res.Refused() {
			tx.Rcpts = append(tx.Rcpts, mail.Recipient{Addr: r})
		}
	}
	rs = append(rs, ch.Data(ctx, tx, msg(testMsg)))
	t.Cleanup(func() { ch.Close(pc) })
	return pc, tx, rs
}

// TestStagesAndHeaders: every stage reaches the milter in order with the right data, the
// header fields keep their folding, the body arrives whole, and the headers it adds come back.
func TestStagesAndHeaders(t *testing.T) {
	var gotBody string
	f := startMilter(t, func(s *scripted) {
		s.onBody = func(body string, m gomilter.Modifier) (*gomilter.Response, error) {
			gotBody = body
			m.AddHeader("X-Milter", "checked")
			m.InsertHeader(0, "Authentication-Results", "mx; dkim=pass\r\n\theader.d=example.org")
			return gomilter.RespAccept, nil
		}
	})
	c, _ := New(Options{Name: "test", Network: "tcp", Address: f.addr, Hostname: "mx.example.test"})
	_, _, rs := session(t, c, "b@example.test")
	final := rs[len(rs)-1]
	if final.Action != policy.Continue || len(final.Headers) != 2 {
		t.Fatalf("final result %+v", final)
	}
	if final.Headers[0] != "X-Milter: checked" || final.Headers[1] != "Authentication-Results: mx; dkim=pass\r\n\theader.d=example.org" {
		t.Errorf("headers %q", final.Headers)
	}
	want := []string{
		"connect [192.0.2.9] tcp4 192.0.2.9", "helo client.example", "mail a@example.org j=mx.example.test", "rcpt b@example.test",
		"header Received: from client.example by mx\r\n\tfor <b@example.test>", "header Subject: hi", "eom i=Q1",
	}
	if got := f.Events(); strings.Join(got, "|") != strings.Join(want, "|") {
		t.Errorf("events\n got %q\nwant %q", got, want)
	}
	if gotBody != "line 1\r\nline 2\r\n" {
		t.Errorf("body %q", gotBody)
	}
}

func TestRejectsAndQuarantine(t *testing.T) {
	rej := func(code uint16, text string) func(string, gomilter.Modifier) (*gomilter.Response, error) {
		return func(string, gomilter.Modifier) (*gomilter.Response, error) {
			return gomilter.RejectWithCodeAndReason(code, text)
		}
	}
	tests := []struct {
		name   string
		onBody func(string, gomilter.Modifier) (*gomilter.Response, error)
		action policy.Action
		reply  string
	}{
		{"reject", func(string, gomilter.Modifier) (*gomilter.Response, error) { return gomilter.RespReject, nil }, policy.Reject, "550 5.7.1 Message refused by the test filter"},
		{"tempfail", func(string, gomilter.Modifier) (*gomilter.Response, error) { return gomilter.RespTempFail, nil }, policy.Tempfail, "451 4.7.1 Message deferred by the test filter, try again later"},
		{"custom code", rej(554, "5.7.0 Bad signature"), policy.Reject, "554 5.7.0 Bad signature"},
		{"custom code without enhanced", rej(550, "no thanks\r\nX: y"), policy.Reject, "550 5.7.1 no thanks X: y"},
		{"discard", func(string, gomilter.Modifier) (*gomilter.Response, error) { return gomilter.RespDiscard, nil }, policy.Quarantine, ""},
		{"quarantine", func(_ string, m gomilter.Modifier) (*gomilter.Response, error) {
			m.Quarantine("looks odd")
			return gomilter.RespAccept, nil
		}, policy.Quarantine, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := startMilter(t, func(s *scripted) { s.onBody = tt.onBody })
			c, _ := New(Options{Name: "test", Network: "tcp", Address: f.addr})
			_, _, rs := session(t, c, "b@example.test")
			final := rs[len(rs)-1]
			if final.Action != tt.action {
				t.Fatalf("action %v, want %v (%+v)", final.Action, tt.action, final)
			}
			if tt.reply != "" && final.Reply.Line() != tt.reply {
				t.Errorf("reply %q, want %q", final.Reply.Line(), tt.reply)
			}
		})
	}
}

// TestRcptRejectAndNextTransaction: a recipient the milter refuses is refused alone; the next
// transaction on the same connection aborts the unfinished one and goes on.
func TestRcptRejectAndNextTransaction(t *testing.T) {
	f := startMilter(t, func(s *scripted) {
		s.onRcpt = func(r string) (*gomilter.Response, error) {
			if strings.HasPrefix(r, "spamtrap") {
				return gomilter.RejectWithCodeAndReason(550, "5.1.1 No such user")
			}
			return gomilter.RespContinue, nil
		}
	})
	c, _ := New(Options{Name: "test", Network: "tcp", Address: f.addr})
	pc, _, rs := session(t, c, "spamtrap@example.test", "b@example.test")
	if rs[3].Action != policy.Reject || rs[3].Reply.Line() != "550 5.1.1 No such user" || rs[4].Refused() {
		t.Fatalf("rcpt results %+v %+v", rs[3], rs[4])
	}
	// A second transaction: MAIL, then RSET (no data), then MAIL, RCPT, DATA.
	ch := &policy.Chain{Entries: []policy.Entry{{Check: c}}}
	ctx := context.Background()
	tx := &policy.Txn{Conn: pc, From: "c@example.org", ID: "Q2"}
	ch.Mail(ctx, tx)
	tx = &policy.Txn{Conn: pc, From: "d@example.org", ID: "Q3", Rcpts: []mail.Recipient{{Addr: "b@example.test"}}}
	ch.Mail(ctx, tx)
	ch.Rcpt(ctx, tx, smtp.Path{Addr: smtp.Address{Local: "b", Domain: "example.test"}}, nil)
	if r := ch.Data(ctx, tx, msg(testMsg)); r.Refused() || len(r.Outcomes) != 1 || r.Outcomes[0].Err != nil {
		t.Fatalf("second transaction: %+v", r)
	}
	ev := strings.Join(f.Events(), "|")
	if !strings.Contains(ev, "mail c@example.org") || !strings.Contains(ev, "abort|mail d@example.org") || !strings.HasSuffix(ev, "eom i=Q3") {
		t.Errorf("events %s", ev)
	}
}

// TestDownAndTimeout: a milter that is not there, or does not answer, is a check failure at the
// first stage and at every later one, within the chain's timeout; fail-closed answers 451.
func TestDownAndTimeout(t *testing.T) {
	ln, _ := net.Listen("tcp", "127.0.0.1:0")
	dead := ln.Addr().String()
	ln.Close()
	silent, _ := net.Listen("tcp", "127.0.0.1:0")
	defer silent.Close()
	go func() {
		for {
			c, err := silent.Accept()
			if err != nil {
				return
			}
			go func() { io.Copy(io.Discard, c) }()
		}
	}()
	for name, addr := range map[string]string{"down": dead, "silent": silent.Addr().String()} {
		t.Run(name, func(t *testing.T) {
			c, _ := New(Options{Name: "test", Network: "tcp", Address: addr})
			ch := &policy.Chain{Entries: []policy.Entry{{Check: c, Timeout: 300 * time.Millisecond, FailClosed: true}}}
			pc := &policy.Conn{RemoteIP: netip.MustParseAddr("192.0.2.9"), Values: map[string]any{}, Helo: "x"}
			start := time.Now()
			r := ch.Conn(context.Background(), pc)
			if r.Action != policy.Tempfail || r.Reply.Code != 451 || len(r.Outcomes) != 1 || r.Outcomes[0].Err == nil {
				t.Errorf("connect: %+v", r)
			}
			r = ch.Mail(context.Background(), &policy.Txn{Conn: pc, From: "a@b"})
			if r.Action != policy.Tempfail {
				t.Errorf("mail after failure: %+v", r)
			}
			if d := time.Since(start); d > 2*time.Second {
				t.Errorf("took %v with a 300ms timeout", d)
			}
			ch.Close(pc)
		})
	}
}

func TestHeaderField(t *testing.T) {
	tests := []struct {
		name, value, want string
		ok                bool
	}{
		{"X-A", "b", "X-A: b", true},
		{"DKIM-Signature", "v=1;\n\ta=rsa", "DKIM-Signature: v=1;\r\n\ta=rsa", true},
		{"X-A", "b\r\nX-Injected: y", "", false},
		{"X A", "b", "", false},
		{"X:A", "b", "", false},
		{"", "b", "", false},
		{"X-A", "b\n", "", false},
	}
	for _, tt := range tests {
		got, ok := headerField(tt.name, tt.value)
		if got != tt.want || ok != tt.ok {
			t.Errorf("headerField(%q, %q) = %q, %v", tt.name, tt.value, got, ok)
		}
	}
}
