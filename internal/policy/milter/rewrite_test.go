package milter

import (
	"bytes"
	"context"
	"io"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	gomilter "github.com/d--j/go-milter"

	"github.com/postamt/postamt/internal/policy"
	"github.com/postamt/postamt/internal/smtp"
)

// rewritable is a message a check may replace, like the session's.
type rewritable struct{ b []byte }

func (m *rewritable) Size() int64                  { return int64(len(m.b)) }
func (m *rewritable) Open() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(m.b)), nil }
func (m *rewritable) Replace(b []byte) error       { m.b = append([]byte(nil), b...); return nil }

// A milter that changes and deletes header fields, replaces the body and edits the envelope:
// every change reaches the stored message or the envelope edit (none is "ignored").
func TestModificationsApplied(t *testing.T) {
	var mu sync.Mutex
	var events []string
	srv := gomilter.NewServer(gomilter.WithMilter(func() gomilter.Milter {
		return &scripted{mu: &mu, events: &events, onBody: func(_ string, m gomilter.Modifier) (*gomilter.Response, error) {
			m.ChangeHeader(1, "Subject", "[checked] hi")
			m.ChangeHeader(2, "X-Tag", "")         // delete the second X-Tag
			m.ChangeHeader(1, "X-New", "appended") // a field that does not exist is added
			m.ReplaceBody(strings.NewReader("new body\nsecond line\n"))
			m.ChangeFrom("<bounces@example.org>", "")
			m.AddRecipient("<archive@example.test>", "")
			m.DeleteRecipient("<b@example.test>")
			return gomilter.RespAccept, nil
		}}
	}), gomilter.WithActions(gomilter.OptAddHeader|gomilter.OptChangeHeader|gomilter.OptChangeBody|
		gomilter.OptAddRcpt|gomilter.OptRemoveRcpt|gomilter.OptChangeFrom))
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(ln)
	defer srv.Close()
	c, _ := New(Options{Name: "test", Network: "tcp", Address: ln.Addr().String()})
	in := "Received: from client by mx\r\nSubject: hi\r\nX-Tag: one\r\nX-Tag: two\r\n\tfolded\r\nX-Tag: three\r\n\r\nold body\r\n"
	m := &rewritable{b: []byte(in)}
	ch := &policy.Chain{Entries: []policy.Entry{{Check: c, Timeout: 5 * time.Second}}}
	pc := &policy.Conn{Values: map[string]any{}}
	ctx := context.Background()
	ch.Conn(ctx, pc)
	pc.Helo = "client.example"
	ch.Helo(ctx, pc)
	tx := &policy.Txn{Conn: pc, From: "a@example.org", ID: "Q1"}
	ch.Mail(ctx, tx)
	ch.Rcpt(ctx, tx, smtp.Path{Addr: smtp.Address{Local: "b", Domain: "example.test"}}, nil)
	r := ch.Data(ctx, tx, m)
	defer ch.Close(pc)
	if r.Refused() {
		t.Fatalf("refused: %+v", r)
	}
	if len(r.Outcomes) > 0 && r.Outcomes[0].Err != nil {
		t.Fatalf("milter failed: %v (events %q)", r.Outcomes[0].Err, events)
	}
	want := "Received: from client by mx\r\nSubject: [checked] hi\r\nX-Tag: one\r\nX-Tag: three\r\nX-New: appended\r\n\r\nnew body\r\nsecond line\r\n"
	if string(m.b) != want {
		t.Errorf("rewritten message\n got %q\nwant %q", m.b, want)
	}
	if len(tx.Edits) != 1 {
		t.Fatalf("edits %+v", tx.Edits)
	}
	e := tx.Edits[0]
	if !e.SetFrom || e.From != "<bounces@example.org>" || strings.Join(e.AddRcpts, ",") != "<archive@example.test>" || strings.Join(e.DelRcpts, ",") != "<b@example.test>" {
		t.Errorf("edit %+v", e)
	}
	if o := r.Outcomes[len(r.Outcomes)-1]; o.Result != "modified" || strings.Contains(o.Reason, "ignored") {
		t.Errorf("outcome %+v", o)
	}
}

func TestChangeFieldEdges(t *testing.T) {
	fields, body := splitFields([]byte("A: 1\r\nB: 2\r\n\tcont\r\na: 3\r\n\r\nbody\r\n"))
	if len(fields) != 3 || string(body) != "body\r\n" {
		t.Fatalf("split %q %q", fields, body)
	}
	out, err := changeField(fields, "a", 2, "")
	if err != nil || len(out) != 2 || string(out[1]) != "B: 2\r\n\tcont\r\n" {
		t.Errorf("delete second a: %q %v", out, err)
	}
	if _, err := changeField(fields, "A", 1, "x\r\nInjected: yes"); err == nil {
		t.Error("a value that starts a new field was accepted")
	}
	if out, _ := changeField(fields, "C", 5, ""); len(out) != 3 {
		t.Errorf("deleting a missing field changed the header: %q", out)
	}
	// A message without an empty line: the header ends where a line is no field.
	fields, body = splitFields([]byte("A: 1\r\nnot a field\r\n"))
	if len(fields) != 1 || string(body) != "not a field\r\n" {
		t.Errorf("no blank line: %q %q", fields, body)
	}
}
