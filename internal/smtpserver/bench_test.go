package smtpserver

import (
	"bufio"
	"io"
	"strings"
	"testing"
)

// BenchmarkReadDot measures DATA reading of a 10 KB message (the benchmark workload's size).
func BenchmarkReadDot(b *testing.B) {
	var sb strings.Builder
	sb.WriteString("From: <a@b.test>\r\nTo: <c@d.test>\r\nSubject: bench\r\n\r\n")
	for sb.Len() < 10<<10 {
		sb.WriteString("The quick brown fox jumps over the lazy dog, again and again and again.\r\n")
	}
	sb.WriteString(".\r\n")
	msg := sb.String()
	r := strings.NewReader(msg)
	br := bufio.NewReaderSize(r, 4096)
	b.SetBytes(int64(len(msg)))
	b.ReportAllocs()
	for b.Loop() {
		r.Reset(msg)
		br.Reset(r)
		sink := &dataSink{w: io.Discard, max: 1 << 20}
		if err := readDot(br, sink); err != nil || sink.bad {
			b.Fatal(err)
		}
	}
}
