package dsn

import (
	"bytes"
	"io"
	"mime"
	"mime/multipart"
	"net/mail"
	"strings"
	"testing"
)

// FuzzBuild: whatever the original message and the remote's reply contain, the DSN is one
// well-formed multipart/report of exactly three parts (the original cannot end the report
// early or add parts), the reply stays on one Diagnostic-Code line, and the returned message is
// the original, byte for byte.
func FuzzBuild(f *testing.F) {
	f.Add([]byte(original), "550 5.1.1 No such user", false)
	f.Add([]byte("Subject: x\r\n\r\n--=_Q1_dsn\r\nContent-Type: text/plain\r\n\r\nforged part\r\n--=_Q1_dsn--\r\n"), "550 x", false)
	f.Add([]byte("Subject: x\n\n--=_Q1_dsn--\n"), "451 4.4.1 a\r\nDiagnostic-Code: smtp; forged", true)
	f.Add([]byte("no header at all"), "", false)
	f.Fuzz(func(t *testing.T, orig []byte, diag string, hdrs bool) {
		r := baseReport()
		r.Recipients[0].Diagnostic = diag
		if hdrs {
			r.Ret = "HDRS"
		}
		raw, err := Build(r, bytes.NewReader(orig))
		if err != nil {
			t.Fatal(err)
		}
		m, err := mail.ReadMessage(bytes.NewReader(raw))
		if err != nil {
			t.Fatalf("DSN is not a message: %v", err)
		}
		mt, params, err := mime.ParseMediaType(m.Header.Get("Content-Type"))
		if err != nil || mt != "multipart/report" {
			t.Fatalf("Content-Type %q: %v", m.Header.Get("Content-Type"), err)
		}
		mr := multipart.NewReader(m.Body, params["boundary"])
		var parts [][]byte
		for {
			p, err := mr.NextPart()
			if err == io.EOF {
				break
			}
			if err != nil {
				t.Fatalf("part %d: %v", len(parts)+1, err)
			}
			b, err := io.ReadAll(p)
			if err != nil {
				t.Fatalf("part %d: %v", len(parts)+1, err)
			}
			parts = append(parts, b)
		}
		if len(parts) != 3 {
			t.Fatalf("%d parts, want 3", len(parts))
		}
		fields := 0
		for _, line := range strings.Split(string(parts[1]), "\r\n") {
			if strings.HasPrefix(line, "Diagnostic-Code:") {
				fields++
			}
		}
		if want := map[bool]int{true: 1, false: 0}[diag != ""]; fields != want {
			t.Fatalf("%d Diagnostic-Code fields in the status part, want %d", fields, want)
		}
		if hdrs || len(orig) == 0 {
			return
		}
		// The CRLF before the closing delimiter belongs to the delimiter; Build adds one of its
		// own after an original that does not end with CRLF.
		got := parts[2]
		want := orig
		if !bytes.HasSuffix(orig, []byte("\r\n")) {
			want = append(append([]byte(nil), orig...), "\r\n"...)
		}
		if !bytes.Equal(got, want) {
			t.Fatalf("returned message differs from the original:\n got %q\nwant %q", got, want)
		}
	})
}
