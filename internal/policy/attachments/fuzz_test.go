package attachments

import (
	"context"
	"strings"
	"testing"
)

// FuzzInspect feeds arbitrary messages to the MIME walker: it must not panic, must finish
// quickly, and a finding must name something printable after safe().
func FuzzInspect(f *testing.F) {
	f.Add([]byte("Subject: x\r\n\r\nhello\r\n"))
	f.Add([]byte(message(att("a.exe", []byte("x")))))
	f.Add([]byte(nested(3)))
	f.Add([]byte("Content-Type: message/rfc822\r\n\r\nContent-Type: multipart/mixed; boundary=A\r\n\r\n--A\r\nContent-Transfer-Encoding: base64\r\n\r\nTVqQ\r\n--A--\r\n"))
	f.Add([]byte("Content-Type: multipart/mixed; boundary=\"\"\r\n\r\n--\r\n"))
	c := newCheck(f, nil)
	f.Fuzz(func(t *testing.T, data []byte) {
		fd, err := c.Inspect(context.Background(), strings.NewReader(string(data)))
		if err != nil {
			t.Fatalf("error from an in-memory reader: %v", err)
		}
		if fd != nil && strings.ContainsAny(safe(fd.String()), "\r\n") {
			t.Fatalf("unsafe finding text %q", fd.String())
		}
	})
}

// FuzzZip feeds arbitrary bytes to the archive inspection as if they were a zip attachment.
func FuzzZip(f *testing.F) {
	f.Add(zipOf(f, map[string][]byte{"a.txt": []byte("hello")}))
	f.Add(zipOf(f, map[string][]byte{"b.zip": zipOf(f, map[string][]byte{"setup.exe": []byte("MZ")})}))
	f.Add(zipOf(f, map[string][]byte{"word/vbaProject.bin": []byte("x"), "x.bin": []byte("\x7fELF")}))
	f.Add([]byte("PK\x03\x04"))
	c := newCheck(f, func(o *Options) { o.MaxArchiveSize = 1 << 20 })
	f.Fuzz(func(t *testing.T, data []byte) {
		b := &budget{left: c.o.MaxArchiveSize}
		if _, err := c.zip(context.Background(), "f.zip", data, b, 0); err != nil {
			t.Fatalf("error: %v", err)
		}
		if b.left < 0 {
			t.Fatalf("budget overdrawn: %d", b.left)
		}
	})
}
