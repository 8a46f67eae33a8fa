package milter

import (
	"io"
	"strings"
	"testing"
)

// FuzzHeaderReader: whatever the message, the header split terminates, every field has a name
// without a colon, and header fields plus body never contain more bytes than the input.
func FuzzHeaderReader(f *testing.F) {
	f.Add([]byte(testMsg))
	f.Add([]byte("Subject: a\r\n folded\r\nNo colon line\r\n\r\nbody"))
	f.Add([]byte("\r\nbody only"))
	f.Add([]byte("X: " + strings.Repeat("y", 70000) + "\r\n\r\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		h := newHeaderReader(strings.NewReader(string(data)))
		total := 0
		for i := 0; ; i++ {
			if i > len(data)+1 {
				t.Fatal("more header fields than bytes")
			}
			name, value, err := h.next()
			if err == io.EOF {
				break
			}
			if err != nil {
				return // a field over the limit: the check reports it
			}
			if name == "" && value == "" {
				continue
			}
			if strings.Contains(name, ":") {
				t.Fatalf("field name %q", name)
			}
			total += len(name) + len(value)
		}
		body, _ := io.ReadAll(h.body())
		if total+len(body) > len(data) {
			t.Fatalf("%d header + %d body bytes from %d", total, len(body), len(data))
		}
	})
}
