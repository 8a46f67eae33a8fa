package main

import (
	"bytes"
	"math/rand"
	"testing"
)

func TestMessageHasExactSizeAndCleanLines(t *testing.T) {
	rng := rand.New(rand.NewSource(1))
	for _, size := range []int{512, 1000, 4096, 10240, 10241, 65536, 1 << 20} {
		body := makeBody(size+200, rng)
		m := message(size, "a@b.test", []string{"c@d.test", "e@f.test"}, "id", 7, body)
		if !bytes.HasSuffix(m, []byte("\r\n.\r\n")) {
			t.Fatalf("size %d: message does not end in CRLF.CRLF", size)
		}
		content := m[:len(m)-3] // without the terminator line
		if len(content) != size {
			t.Errorf("size %d: got %d bytes", size, len(content))
		}
		lines := bytes.Split(content[:len(content)-2], []byte("\r\n"))
		for i, l := range lines {
			if len(l)+2 > 1000 {
				t.Fatalf("size %d: line %d is %d bytes", size, i, len(l)+2)
			}
			if bytes.HasPrefix(l, []byte(".")) {
				t.Fatalf("size %d: line %d starts with a dot", size, i)
			}
			if bytes.ContainsAny(l, "\r\n") {
				t.Fatalf("size %d: bare CR or LF in line %d", size, i)
			}
		}
	}
}

func TestOnlyLoopbackAddresses(t *testing.T) {
	for _, ok := range []string{"127.0.0.1:25", "127.1.2.3:2525", "[::1]:25", "localhost:25"} {
		if err := checkLoopback(ok); err != nil {
			t.Errorf("%s refused: %v", ok, err)
		}
	}
	for _, bad := range []string{"10.0.0.1:25", "192.168.1.1:25", "8.8.8.8:25", "example.com:25", "[2001:db8::1]:25", "0.0.0.0:25", "127.0.0.1", "127.0.0.1:x"} {
		if err := checkLoopback(bad); err == nil {
			t.Errorf("%s accepted", bad)
		}
	}
}
