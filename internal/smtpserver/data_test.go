package smtpserver

import (
	"bufio"
	"bytes"
	"io"
	"strings"
	"testing"
	"time"
)

// refDot is the obvious line-based reading of RFC 5321 DATA, used as the oracle for readDot.
func refDot(in string) (content string, bad, ended bool, rest string) {
	s := "\r\n" + in
	idx := strings.Index(s, "\r\n.\r\n")
	if idx < 0 {
		return "", false, false, ""
	}
	raw := s[2 : idx+2]
	rest = s[idx+5:]
	clean := strings.ReplaceAll(raw, "\r\n", "")
	bad = strings.ContainsAny(clean, "\r\n")
	var b strings.Builder
	for _, line := range strings.SplitAfter(raw, "\r\n") {
		b.WriteString(strings.TrimPrefix(line, "."))
	}
	return b.String(), bad, true, rest
}

func checkReadDot(t *testing.T, in string, bufSize int) {
	t.Helper()
	r := bufio.NewReaderSize(strings.NewReader(in), bufSize)
	var out bytes.Buffer
	sink := &dataSink{w: &out, max: 1 << 30}
	var err error
	done := make(chan struct{})
	go func() { err = readDot(r, sink); close(done) }()
	select {
	case <-done:
	case <-time.After(2 * time.Second):
		t.Fatalf("readDot hangs on %q (buffer %d)", in, bufSize)
	}
	want, bad, ended, rest := refDot(in)
	if !ended {
		if err == nil {
			t.Fatalf("%q: ended without a terminator", in)
		}
		return
	}
	if err != nil {
		t.Fatalf("%q: %v", in, err)
	}
	left, _ := io.ReadAll(r)
	if string(left) != rest {
		t.Fatalf("%q: ended at the wrong place: left %q want %q", in, left, rest)
	}
	if bad != sink.bad {
		t.Fatalf("%q: bad=%v want %v", in, sink.bad, bad)
	}
	if !bad && out.String() != want {
		t.Fatalf("%q: got %q want %q", in, out.String(), want)
	}
}

func TestReadDot(t *testing.T) {
	for _, in := range []string{
		".\r\n", "a\r\n.\r\n", "..\r\n.\r\nNEXT", "a\r\n..b\r\n.\r\n", "a\n.\nb\r\n.\r\n", "a\r.\rb\r\n.\r\n",
		"a\n.\r\nb\r\n.\r\n", "a\r\n.\rb\r\n.\r\n", "a\r\n.\nb\r\n.\r\n", "\r\n\r\n.\r\n", "x", "x\r\n.\r",
		strings.Repeat("y", 5000) + "\r\n." + strings.Repeat("z", 3000) + "\r\n.\r\n",
	} {
		for _, size := range []int{16, 17, 64, 4096} {
			checkReadDot(t, in, size)
		}
	}
}

func FuzzReadDot(f *testing.F) {
	for _, s := range []string{".\r\n", "a\r\n..b\r\n.\r\nQUIT\r\n", "a\n.\nMAIL\r\n.\r\n", "a\r.\r\r\n.\r\n", "\r\n.\r"} {
		f.Add(s, uint8(0))
	}
	f.Fuzz(func(t *testing.T, in string, size uint8) {
		checkReadDot(t, in, 16+int(size))
	})
}

func FuzzLineCheck(f *testing.F) {
	f.Add("a\r\nb\r\n", uint8(3))
	f.Add("a\nb\r", uint8(1))
	f.Fuzz(func(t *testing.T, in string, cut uint8) {
		want := !strings.ContainsAny(strings.ReplaceAll(in, "\r\n", ""), "\r\n")
		var c lineCheck
		i := min(int(cut), len(in))
		got := c.ok([]byte(in[:i]))
		got = c.ok([]byte(in[i:])) && got
		got = got && !c.pendingCR
		if got != want {
			t.Fatalf("%q split at %d: ok=%v want %v", in, i, got, want)
		}
	})
}
