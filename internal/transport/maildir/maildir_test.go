package maildir

import (
	"bytes"
	"context"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"testing/iotest"

	"github.com/postamt/postamt/internal/mail"
	"github.com/postamt/postamt/internal/transport"
)

func msg(body string) *transport.Message {
	return &transport.Message{ID: "Q1", From: "sender@remote.test", Open: func() (io.ReadCloser, error) {
		return io.NopCloser(strings.NewReader(body)), nil
	}}
}

func TestDeliver(t *testing.T) {
	root := t.TempDir()
	tr := &Transport{Root: root, Hostname: "mx.example.test"}
	body := "Received: from x\r\n\tby y; date\r\nSubject: hi\r\n\r\nline 1\r\nline 2\r\n"
	rcpts := []mail.Recipient{
		{Addr: "alice+tag@example.test", Route: mail.Route{Transport: "maildir", NextHop: "alice@example.test"}},
		{Addr: "../../etc@example.test", Route: mail.Route{Transport: "maildir", NextHop: "../../etc@example.test"}},
	}
	res, err := tr.Deliver(context.Background(), msg(body), rcpts)
	if err != nil || res[0].Reply != nil || res[1].Reply != nil {
		t.Fatalf("%v %+v", err, res)
	}
	files, _ := filepath.Glob(filepath.Join(root, "example.test", "alice", "new", "*"))
	if len(files) != 1 {
		t.Fatalf("files: %v", files)
	}
	got, _ := os.ReadFile(files[0])
	want := "Return-Path: <sender@remote.test>\nDelivered-To: alice+tag@example.test\nReceived: from x\n\tby y; date\nSubject: hi\n\nline 1\nline 2\n"
	if string(got) != want {
		t.Fatalf("got %q\nwant %q", got, want)
	}
	// A second attempt (the outcome of the first was lost in a crash) does not deliver again.
	if res, err := tr.Deliver(context.Background(), msg(body), rcpts[:1]); err != nil || res[0].Reply != nil {
		t.Fatal(err, res)
	}
	if again, _ := filepath.Glob(filepath.Join(root, "example.test", "alice", "new", "*")); len(again) != 1 {
		t.Fatalf("redelivered: %v", again)
	}
	for _, sub := range []string{"tmp", "cur"} {
		if fi, err := os.Stat(filepath.Join(root, "example.test", "alice", sub)); err != nil || !fi.IsDir() {
			t.Errorf("%s missing", sub)
		}
	}
	if tmp, _ := os.ReadDir(filepath.Join(root, "example.test", "alice", "tmp")); len(tmp) != 0 {
		t.Error("file left in tmp")
	}
	// The hostile local part stays inside the root.
	escaped, _ := filepath.Glob(filepath.Join(root, "example.test", "%2E.%2F..%2Fetc", "new", "*"))
	if len(escaped) != 1 {
		t.Fatalf("escaped mailbox not where expected")
	}
}

func TestCopyLFSplitAcrossReads(t *testing.T) {
	in := "a\r\nb\r\n\r\nc\rd\r\n"
	for _, r := range []io.Reader{strings.NewReader(in), iotest.OneByteReader(strings.NewReader(in)), iotest.HalfReader(strings.NewReader(in))} {
		var out bytes.Buffer
		if err := copyLF(&out, r); err != nil {
			t.Fatal(err)
		}
		if out.String() != "a\nb\n\nc\rd\n" {
			t.Fatalf("%q", out.String())
		}
	}
}

func TestCRLFMode(t *testing.T) {
	root := t.TempDir()
	tr := &Transport{Root: root, Hostname: "h", CRLF: true}
	tr.Deliver(context.Background(), msg("S: x\r\n\r\nb\r\n"), []mail.Recipient{{Addr: "a@d", Route: mail.Route{NextHop: "a@d"}}})
	files, _ := filepath.Glob(filepath.Join(root, "d", "a", "new", "*"))
	got, _ := os.ReadFile(files[0])
	if string(got) != "Return-Path: <sender@remote.test>\r\nDelivered-To: a@d\r\nS: x\r\n\r\nb\r\n" {
		t.Fatalf("%q", got)
	}
}
