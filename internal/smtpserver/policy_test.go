package smtpserver_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/postamt/postamt/internal/mail"
	"github.com/postamt/postamt/internal/policy"
	"github.com/postamt/postamt/internal/smtp"
)

// scripted is a check whose verdicts the test sets per stage.
type scripted struct {
	name                   string
	conn, helo, mail, data func(string) policy.Verdict
	rcpt                   func(smtp.Path) policy.Verdict
	seenBody               []byte
}

func (s *scripted) Name() string { return s.name }
func (s *scripted) CheckConn(ctx context.Context, c *policy.Conn) policy.Verdict {
	if s.conn == nil {
		return policy.Verdict{}
	}
	return s.conn(c.RemoteIP.String())
}
func (s *scripted) CheckHelo(ctx context.Context, c *policy.Conn) policy.Verdict {
	if s.helo == nil {
		return policy.Verdict{}
	}
	return s.helo(c.Helo)
}
func (s *scripted) CheckMail(ctx context.Context, t *policy.Txn) policy.Verdict {
	if s.mail == nil {
		return policy.Verdict{}
	}
	return s.mail(t.From)
}
func (s *scripted) CheckRcpt(ctx context.Context, t *policy.Txn, p smtp.Path, _ []mail.Recipient) policy.Verdict {
	if s.rcpt == nil {
		return policy.Verdict{}
	}
	return s.rcpt(p)
}
func (s *scripted) CheckData(ctx context.Context, t *policy.Txn, m policy.Message) policy.Verdict {
	r, err := m.Open()
	if err != nil {
		return policy.Verdict{Err: err}
	}
	s.seenBody, _ = io.ReadAll(r)
	r.Close()
	if int64(len(s.seenBody)) != m.Size() {
		return policy.Verdict{Action: policy.Reject, Reason: "size mismatch"}
	}
	if s.data == nil {
		return policy.Verdict{}
	}
	return s.data(t.ID)
}

func TestPolicyStages(t *testing.T) {
	refuse := func(code int, enh smtp.EnhancedCode, text string, a policy.Action) policy.Verdict {
		return policy.Verdict{Action: a, Reply: smtp.NewReply(code, enh, text), Result: "fail"}
	}
	chk := &scripted{name: "scripted"}
	chk.helo = func(h string) policy.Verdict {
		if h == "bad.example" {
			return refuse(550, smtp.EnhancedCode{5, 7, 1}, "HELO name refused", policy.Reject)
		}
		return policy.Verdict{}
	}
	chk.mail = func(from string) policy.Verdict {
		if from == "spammer@remote.test" {
			return refuse(550, smtp.EnhancedCode{5, 7, 1}, "Sender blocked", policy.Reject)
		}
		return policy.Verdict{Headers: []string{"X-Mail-Check: ok"}, Result: "pass"}
	}
	chk.rcpt = func(p smtp.Path) policy.Verdict {
		if p.Addr.Local == "bob" {
			return refuse(451, smtp.EnhancedCode{4, 7, 1}, "Greylisted, try again later", policy.Tempfail)
		}
		return policy.Verdict{}
	}
	chk.data = func(id string) policy.Verdict {
		return policy.Verdict{Headers: []string{"X-Data-Check: id=" + id}, Result: "tagged", Action: policy.Tag}
	}
	e := newEnv(t, envOpts{policy: &policy.Chain{Entries: []policy.Entry{{Check: chk}}}})
	c := e.dial()
	c.expect(220, "")
	c.cmd("EHLO bad.example", 550, "5.7.1")
	c.cmd("MAIL FROM:<a@remote.test>", 503, "5.5.1") // the refused HELO did not count
	c.cmd("EHLO good.example", 250, "")
	c.cmd("MAIL FROM:<spammer@remote.test>", 550, "5.7.1")
	c.cmd("MAIL FROM:<friend@remote.test>", 250, "2.1.0")
	c.cmd("RCPT TO:<bob@example.test>", 451, "4.7.1")
	c.cmd("RCPT TO:<alice@example.test>", 250, "2.1.5")
	c.cmd("DATA", 354, "")
	c.raw(testMsg + ".\r\n")
	r := c.expect(250, "2.0.0")
	id := strings.TrimPrefix(r.lines[0], "OK: queued as ")
	ds := e.waitDeliveries(1)
	if len(ds) != 1 || ds[0].Rcpt.Addr != "alice@example.test" {
		t.Fatalf("deliveries %+v", ds)
	}
	want := "X-Mail-Check: ok\r\nX-Data-Check: id=" + id + "\r\nReceived: from good.example"
	if !bytes.HasPrefix(ds[0].Body, []byte(want)) {
		t.Errorf("delivered body starts %q, want %q", ds[0].Body[:min(len(ds[0].Body), 120)], want)
	}
	if !bytes.HasPrefix(chk.seenBody, []byte("Received: from good.example")) || !bytes.HasSuffix(chk.seenBody, []byte("Hello\r\n")) {
		t.Errorf("the DATA check saw %q", chk.seenBody)
	}
	if !strings.Contains(e.logs.String(), "checks=\"scripted=pass scripted=fail scripted=tagged\"") {
		t.Errorf("no checks summary on the queued line:\n%s", e.logs.String())
	}
}

// A large body has spilled to a spool file before the checks run: the headers they add are kept
// beside it and come first when it is read back.
func TestPolicyHeadersOnSpooledBody(t *testing.T) {
	chk := &scripted{name: "big", data: func(string) policy.Verdict {
		return policy.Verdict{Headers: []string{"X-Big: yes"}}
	}}
	e := newEnv(t, envOpts{policy: &policy.Chain{Entries: []policy.Entry{{Check: chk}}}})
	c := e.dialReady()
	c.cmd("MAIL FROM:<friend@remote.test>", 250, "2.1.0")
	c.cmd("RCPT TO:<alice@example.test>", 250, "2.1.5")
	c.cmd("DATA", 354, "")
	line := strings.Repeat("x", 998) + "\r\n"
	body := testMsg + strings.Repeat(line, 300) // ~300 KB, past the inline limit
	c.raw(body + ".\r\n")
	c.expect(250, "2.0.0")
	ds := e.waitDeliveries(1)
	if !bytes.HasPrefix(ds[0].Body, []byte("X-Big: yes\r\nReceived: ")) || !bytes.HasSuffix(ds[0].Body, []byte(line)) {
		t.Errorf("spooled body with prefix starts %q", ds[0].Body[:80])
	}
	if len(chk.seenBody) < 300*1000 {
		t.Errorf("the check saw %d bytes", len(chk.seenBody))
	}
}

func TestPolicyConnectAndFailModes(t *testing.T) {
	down := errors.New("backend down")
	open := &scripted{name: "open", mail: func(string) policy.Verdict { return policy.Verdict{Err: down} }}
	closed := &scripted{name: "closed", rcpt: func(smtp.Path) policy.Verdict { return policy.Verdict{Err: down} }}
	e := newEnv(t, envOpts{policy: &policy.Chain{Entries: []policy.Entry{{Check: open}, {Check: closed, FailClosed: true}}}})
	c := e.dialReady()
	c.cmd("MAIL FROM:<friend@remote.test>", 250, "2.1.0") // fail-open: skipped
	r := c.cmd("RCPT TO:<alice@example.test>", 451, "4.7.1")
	if !strings.Contains(r.lines[0], "closed unavailable") {
		t.Errorf("fail-closed reply %q does not name the check", r.lines[0])
	}

	block := &scripted{name: "dnsbl", conn: func(ip string) policy.Verdict {
		return policy.Verdict{Action: policy.Reject, Reply: smtp.NewReply(554, smtp.EnhancedCode{5, 7, 1}, "Client host "+ip+" blocked using zen.example")}
	}}
	e2 := newEnv(t, envOpts{policy: &policy.Chain{Entries: []policy.Entry{{Check: block}}}})
	c2 := e2.dial()
	r = c2.expect(554, "5.7.1")
	if !strings.Contains(r.lines[0], "blocked using zen.example") {
		t.Errorf("connect refusal %q", r.lines)
	}
	if _, err := c2.read(); err == nil {
		t.Errorf("connection still open after a refusal at connect")
	}
}

func TestPolicyScoreThreshold(t *testing.T) {
	s := func(n float64) func(string) policy.Verdict {
		return func(string) policy.Verdict { return policy.Verdict{Score: n, Result: "scored"} }
	}
	a := &scripted{name: "a", mail: s(3)}
	b := &scripted{name: "b", data: s(4)}
	e := newEnv(t, envOpts{policy: &policy.Chain{RejectScore: 6, Entries: []policy.Entry{{Check: a}, {Check: b}}}})
	c := e.dialReady()
	c.cmd("MAIL FROM:<friend@remote.test>", 250, "2.1.0")
	c.cmd("RCPT TO:<alice@example.test>", 250, "2.1.5")
	c.cmd("DATA", 354, "")
	c.raw(testMsg + ".\r\n")
	r := c.expect(550, "5.7.1")
	if !strings.Contains(r.lines[0], "score 7.0") {
		t.Errorf("score reply %q", r.lines[0])
	}
	if n := len(e.rec.Deliveries()); n != 0 {
		t.Errorf("%d deliveries of a rejected message", n)
	}
}

// editing rewrites the message and the envelope as a milter may: the stored message is the
// rewritten one (inline and spooled bodies alike) and the envelope edits are applied.
type editing struct{ newBody string }

func (e *editing) Name() string { return "editing" }
func (e *editing) CheckData(ctx context.Context, t *policy.Txn, m policy.Message) policy.Verdict {
	if err := m.(policy.Replacer).Replace([]byte("Subject: rewritten\r\n\r\n" + e.newBody)); err != nil {
		return policy.Verdict{Err: err}
	}
	return policy.Verdict{Headers: []string{"X-Edited: yes"}, Result: "modified", Edit: &policy.EnvelopeEdit{
		SetFrom: true, From: "<bounces@remote.test>", AddRcpts: []string{"<bob@example.test>"}, DelRcpts: []string{"<alice@example.test>"}}}
}

func TestPolicyRewriteAndEnvelopeEdit(t *testing.T) {
	for _, size := range []int{10, 300 << 10} {
		t.Run(strconv.Itoa(size), func(t *testing.T) {
			body := strings.Repeat("y", 70) + "\r\n"
			body = strings.Repeat(body, size/len(body)+1)
			e := newEnv(t, envOpts{policy: &policy.Chain{Entries: []policy.Entry{{Check: &editing{newBody: "short\r\n"}}}}})
			c := e.dialReady()
			c.cmd("MAIL FROM:<friend@remote.test>", 250, "2.1.0")
			c.cmd("RCPT TO:<alice@example.test>", 250, "2.1.5")
			c.cmd("DATA", 354, "")
			c.raw("Subject: original\r\n\r\n" + body + ".\r\n")
			c.expect(250, "2.0.0")
			e.waitDeliveries(1)
			time.Sleep(50 * time.Millisecond)
			ds := e.rec.Deliveries()
			if len(ds) != 1 || ds[0].Rcpt.Addr != "bob@example.test" || ds[0].From != "bounces@remote.test" {
				t.Fatalf("deliveries %+v", ds)
			}
			if string(ds[0].Body) != "X-Edited: yes\r\nSubject: rewritten\r\n\r\nshort\r\n" {
				t.Errorf("stored %q", ds[0].Body[:min(len(ds[0].Body), 200)])
			}
		})
	}
}
