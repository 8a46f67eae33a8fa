package maildir

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/postamt/postamt/internal/mail"
	"github.com/postamt/postamt/internal/transport"
)

var rcptU = []mail.Recipient{{Addr: "u@d.test", Route: mail.Route{NextHop: "u@d.test"}}}

func newFiles(t *testing.T, root string) []string {
	t.Helper()
	files, err := filepath.Glob(filepath.Join(root, "d.test", "u", "new", "*"))
	if err != nil {
		t.Fatal(err)
	}
	return files
}

func deliverOK(t *testing.T, tr *Transport, m *transport.Message) {
	t.Helper()
	res, err := tr.Deliver(context.Background(), m, rcptU)
	if err != nil || res[0].Reply != nil {
		t.Fatalf("deliver: %v %+v", err, res)
	}
}

// unnamedFiles reports whether this system can make and link O_TMPFILE files in dir; where it
// cannot, the tests of that path cannot run (and the fallback tests cover the system).
func unnamedFiles(t *testing.T, dir string) bool {
	t.Helper()
	f, err := openTmpfile(dir)
	if err != nil {
		return false
	}
	defer f.Close()
	return linkTmpfile(f, filepath.Join(dir, "probe")) == nil && os.Remove(filepath.Join(dir, "probe")) == nil
}

// A crash after the link into new/ but before the queue recorded the outcome: the retry finds
// the name taken and reports success without a second copy, and the first copy is untouched.
func TestTmpfileRedeliveryAfterCrash(t *testing.T) {
	root := t.TempDir()
	if !unnamedFiles(t, root) {
		if os.Getenv("CI") == "true" && runtime.GOOS == "linux" {
			t.Fatal("O_TMPFILE unsupported under TMPDIR on Linux in CI")
		}
		t.Skip("O_TMPFILE unsupported here")
	}
	tr := &Transport{Root: root, Hostname: "h"}
	m := msg("Subject: one\r\n\r\nfirst\r\n")
	m.ReceivedAt = time.Unix(1700000000, 123456000)
	deliverOK(t, tr, m)
	if tr.tmpfileOff.Load() {
		t.Fatal("fell back to tmp/ although O_TMPFILE works here")
	}
	files := newFiles(t, root)
	if len(files) != 1 || filepath.Base(files[0]) != tr.fileName(m, rcptU[0]) {
		t.Fatalf("files: %v", files)
	}
	// The retry carries the same message; a different body shows that nothing was rewritten.
	retry := msg("Subject: one\r\n\r\nsecond\r\n")
	retry.ID, retry.ReceivedAt = m.ID, m.ReceivedAt
	deliverOK(t, tr, retry)
	files = newFiles(t, root)
	if len(files) != 1 {
		t.Fatalf("second copy: %v", files)
	}
	if got, _ := os.ReadFile(files[0]); !strings.Contains(string(got), "first") {
		t.Fatalf("existing file replaced: %q", got)
	}
	// A fresh Transport (the restarted process) behaves the same.
	deliverOK(t, &Transport{Root: root, Hostname: "h"}, retry)
	if files = newFiles(t, root); len(files) != 1 {
		t.Fatalf("second copy after restart: %v", files)
	}
	if tmp, _ := os.ReadDir(filepath.Join(root, "d.test", "u", "tmp")); len(tmp) != 0 {
		t.Errorf("tmp/ not empty: %v", tmp)
	}
}

func TestTmpfileFallback(t *testing.T) {
	for _, tc := range []struct {
		name       string
		open       func(string) (*os.File, error)
		link       func(*os.File, string) error
		wantFiles  int
		wantOff    bool
		wantReply  int
		wantNoTemp bool
	}{
		{name: "open unsupported (file system)", open: failOpen(syscall.EOPNOTSUPP), wantFiles: 1, wantOff: true},
		{name: "open unsupported (old kernel)", open: failOpen(syscall.EISDIR), wantFiles: 1, wantOff: true},
		{name: "link not permitted", link: failLink(syscall.EPERM), wantFiles: 1, wantOff: true},
		{name: "no /proc", link: failLink(syscall.ENOENT), wantFiles: 1, wantOff: true},
		{name: "disk full is not a fallback", open: failOpen(syscall.ENOSPC), wantFiles: 0, wantReply: 452},
		{name: "open ENOENT is about new/, not a fallback", open: failOpen(syscall.ENOENT), wantFiles: 0, wantReply: 451},
		{name: "I/O error on link is not a fallback", link: failLink(syscall.EIO), wantFiles: 0, wantReply: 451},
	} {
		t.Run(tc.name, func(t *testing.T) {
			root := t.TempDir()
			tr := &Transport{Root: root, Hostname: "h", openTmp: tc.open, linkTmp: tc.link}
			if tc.open == nil && !unnamedFiles(t, root) {
				t.Skip("O_TMPFILE unsupported here; the link hook is never reached")
			}
			m := msg("Subject: x\r\n\r\nbody\r\n")
			m.ReceivedAt = time.Unix(1700000000, 0)
			res, err := tr.Deliver(context.Background(), m, rcptU)
			if err != nil {
				t.Fatal(err)
			}
			if tc.wantReply == 0 && res[0].Reply != nil || tc.wantReply != 0 && (res[0].Reply == nil || res[0].Reply.Code != tc.wantReply) {
				t.Fatalf("reply %v, want %d", res[0].Reply, tc.wantReply)
			}
			if got := tr.tmpfileOff.Load(); got != tc.wantOff {
				t.Errorf("tmpfileOff = %v, want %v", got, tc.wantOff)
			}
			files := newFiles(t, root)
			if len(files) != tc.wantFiles {
				t.Fatalf("files: %v", files)
			}
			if tc.wantFiles == 1 {
				got, _ := os.ReadFile(files[0])
				if want := "Return-Path: <sender@remote.test>\nDelivered-To: u@d.test\nSubject: x\n\nbody\n"; string(got) != want {
					t.Fatalf("got %q want %q", got, want)
				}
				// Redelivery on the fallback path is idempotent too.
				deliverOK(t, tr, m)
				if again := newFiles(t, root); len(again) != 1 {
					t.Fatalf("second copy: %v", again)
				}
			}
			if tmp, _ := os.ReadDir(filepath.Join(root, "d.test", "u", "tmp")); len(tmp) != 0 {
				t.Errorf("tmp/ not empty: %v", tmp)
			}
		})
	}
}

func failOpen(errno syscall.Errno) func(string) (*os.File, error) {
	return func(dir string) (*os.File, error) {
		return nil, &os.PathError{Op: "open O_TMPFILE", Path: dir, Err: errno}
	}
}

func failLink(errno syscall.Errno) func(*os.File, string) error {
	return func(f *os.File, dst string) error {
		return &os.LinkError{Op: "linkat", Old: f.Name(), New: dst, Err: errno}
	}
}

// Many delivery workers on one mailbox at once, on both paths: every message lands exactly once,
// under its own name, with its own content.
func TestConcurrentOneMailbox(t *testing.T) {
	for _, tmpfile := range []bool{true, false} {
		t.Run(fmt.Sprintf("tmpfile=%v", tmpfile), func(t *testing.T) {
			root := t.TempDir()
			tr := &Transport{Root: root, Hostname: "h"}
			tr.tmpfileOff.Store(!tmpfile)
			const workers, each = 32, 12
			at := time.Unix(1700000000, 0)
			var wg sync.WaitGroup
			errs := make(chan error, workers*each)
			for w := range workers {
				wg.Go(func() {
					for i := range each {
						id := fmt.Sprintf("w%di%d", w, i)
						m := msg("Subject: " + id + "\r\n\r\n" + id + "\r\n")
						m.ID, m.ReceivedAt = id, at
						res, err := tr.Deliver(context.Background(), m, rcptU)
						if err == nil && res[0].Reply != nil {
							err = res[0].Reply
						}
						if err != nil {
							errs <- fmt.Errorf("%s: %w", id, err)
						}
					}
				})
			}
			wg.Wait()
			close(errs)
			for err := range errs {
				t.Error(err)
			}
			files := newFiles(t, root)
			if len(files) != workers*each {
				t.Fatalf("%d files, want %d", len(files), workers*each)
			}
			for w := range workers {
				for i := range each {
					id := fmt.Sprintf("w%di%d", w, i)
					m := msg("")
					m.ID, m.ReceivedAt = id, at
					got, err := os.ReadFile(filepath.Join(root, "d.test", "u", "new", tr.fileName(m, rcptU[0])))
					if err != nil {
						t.Fatal(err)
					}
					if !strings.HasSuffix(string(got), "Subject: "+id+"\n\n"+id+"\n") {
						t.Fatalf("%s: %q", id, got)
					}
				}
			}
			if tmp, _ := os.ReadDir(filepath.Join(root, "d.test", "u", "tmp")); len(tmp) != 0 {
				t.Errorf("tmp/ not empty: %v", tmp)
			}
		})
	}
}

// Messages over prepareMax are streamed from the store by the writer instead of rendered before;
// on the fallback after a failed link they are streamed a second time.
func TestLargeMessage(t *testing.T) {
	line := strings.Repeat("y", 998) + "\r\n"
	body := "Subject: big\r\n\r\n" + strings.Repeat(line, prepareMax/len(line)+10)
	want := "Return-Path: <sender@remote.test>\nDelivered-To: u@d.test\n" + strings.ReplaceAll(body, "\r\n", "\n")
	for _, tc := range []struct {
		name string
		link func(*os.File, string) error
	}{{"unnamed file", nil}, {"link fails, tmp/ fallback", failLink(syscall.EPERM)}} {
		t.Run(tc.name, func(t *testing.T) {
			root := t.TempDir()
			if !unnamedFiles(t, root) {
				t.Skip("O_TMPFILE unsupported here")
			}
			tr := &Transport{Root: root, Hostname: "h", linkTmp: tc.link}
			m := msg(body)
			m.Size = int64(len(body))
			m.ReceivedAt = time.Unix(1700000000, 0)
			deliverOK(t, tr, m)
			if off := tr.tmpfileOff.Load(); off != (tc.link != nil) {
				t.Errorf("tmpfileOff = %v", off)
			}
			files := newFiles(t, root)
			if len(files) != 1 {
				t.Fatalf("files: %v", files)
			}
			if got, _ := os.ReadFile(files[0]); string(got) != want {
				t.Fatalf("content differs: %d bytes, want %d", len(got), len(want))
			}
		})
	}
}
