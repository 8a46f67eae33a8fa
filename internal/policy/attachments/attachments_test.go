package attachments

import (
	"archive/zip"
	"bytes"
	"context"
	"encoding/base64"
	"fmt"
	"io"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/postamt/postamt/internal/policy"
)

func newCheck(t testing.TB, mod func(*Options)) *Check {
	t.Helper()
	o := Options{
		BlockedExtensions: []string{"exe", "js", "vbs", "scr", "bat"},
		BlockedTypes:      []Kind{Executable, Script, OfficeMacro},
		ScanArchives:      true,
		MaxDepth:          5, MaxParts: 50, MaxArchiveEntries: 20, MaxArchiveSize: 1 << 20, MaxArchiveDepth: 2,
	}
	if mod != nil {
		mod(&o)
	}
	c, err := New(o)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// message builds a multipart/mixed message with a text part and the given attachments.
func message(atts ...string) string {
	var b strings.Builder
	b.WriteString("From: a@example.org\r\nSubject: test\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"BOUND\"\r\n\r\npreamble\r\n")
	b.WriteString("--BOUND\r\nContent-Type: text/plain\r\n\r\nhello\r\n")
	for _, a := range atts {
		b.WriteString("--BOUND\r\n" + a + "\r\n")
	}
	b.WriteString("--BOUND--\r\n")
	return b.String()
}

func att(name string, data []byte) string {
	return fmt.Sprintf("Content-Type: application/octet-stream\r\nContent-Disposition: attachment; filename=\"%s\"\r\nContent-Transfer-Encoding: base64\r\n\r\n%s", name, b64(data))
}

func b64(data []byte) string {
	s := base64.StdEncoding.EncodeToString(data)
	var b strings.Builder
	for len(s) > 76 {
		b.WriteString(s[:76] + "\r\n")
		s = s[76:]
	}
	return b.String() + s
}

func zipOf(t testing.TB, files map[string][]byte) []byte {
	t.Helper()
	var buf bytes.Buffer
	zw := zip.NewWriter(&buf)
	for name, data := range files {
		w, err := zw.Create(name)
		if err != nil {
			t.Fatal(err)
		}
		w.Write(data)
	}
	if err := zw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

var (
	pe     = append([]byte("MZ\x90\x00\x03\x00\x00\x00"), make([]byte, 100)...)
	elf    = append([]byte("\x7fELF\x02\x01\x01"), make([]byte, 100)...)
	macho  = append([]byte("\xcf\xfa\xed\xfe"), make([]byte, 100)...)
	script = []byte("#!/bin/sh\nrm -rf ~\n")
	pdf    = []byte("%PDF-1.7\n1 0 obj\n<<>>\nendobj\n")
	ole    = append(append([]byte{0xD0, 0xCF, 0x11, 0xE0, 0xA1, 0xB1, 0x1A, 0xE1}, make([]byte, 200)...), utf16("_VBA_PROJECT")...)
	oleDoc = append([]byte{0xD0, 0xCF, 0x11, 0xE0, 0xA1, 0xB1, 0x1A, 0xE1}, make([]byte, 200)...)
)

func TestInspect(t *testing.T) {
	docm := zipOf(t, map[string][]byte{"[Content_Types].xml": []byte("<Types/>"), "word/document.xml": []byte("<w/>"), "word/vbaProject.bin": ole})
	docx := zipOf(t, map[string][]byte{"[Content_Types].xml": []byte("<Types/>"), "word/document.xml": []byte("<w/>")})
	inner := zipOf(t, map[string][]byte{"setup.exe": []byte("whatever")})
	tests := []struct {
		name string
		msg  string
		want string // substring of the finding; "" for none
		mod  func(*Options)
	}{
		{"plain text", "Subject: x\r\n\r\nhello\r\n", "", nil},
		{"no header", "", "", nil},
		{"clean pdf", message(att("report.pdf", pdf)), "", nil},
		{"exe by name", message(att("invoice.exe", []byte("x"))), `"invoice.exe": blocked file type .exe`, nil},
		{"double extension", message(att("invoice.pdf.EXE", []byte("x"))), "blocked file type .exe", nil},
		{"trailing dot", message(att("run.exe.", []byte("x"))), "blocked file type .exe", nil},
		{"rfc2231 name", message("Content-Type: application/octet-stream\r\nContent-Disposition: attachment; filename*=UTF-8''rechnung%20%C3%BC.js\r\n\r\nalert(1)"), "blocked file type .js", nil},
		{"encoded-word name", message("Content-Type: application/octet-stream; name=\"=?UTF-8?B?c2V0dXAuZXhl?=\"\r\n\r\nx"), `"setup.exe"`, nil},
		{"name in content-type", message("Content-Type: application/x-msdownload; name=tool.scr\r\n\r\nx"), ".scr", nil},
		{"PE content, harmless name", message(att("photo.jpg", pe)), "executable content", nil},
		{"ELF", message(att("data.bin", elf)), "executable content", nil},
		{"Mach-O", message(att("data.bin", macho)), "executable content", nil},
		{"script", message(att("notes.txt", script)), "script content", nil},
		{"script allowed", message(att("notes.txt", script)), "", func(o *Options) { o.BlockedTypes = []Kind{Executable} }},
		{"docm by name", message(att("q3.docm", docx)), "macro-enabled Office document (.docm)", nil},
		{"docx with vbaProject", message(att("q3.docx", docm)), "Office document with macros", nil},
		{"clean docx", message(att("q3.docx", docx)), "", nil},
		{"ole doc with macros", message(att("old.doc", ole)), "Office document with macros", nil},
		{"ole doc clean", message(att("old.doc", oleDoc)), "", nil},
		{"exe in zip", message(att("docs.zip", zipOf(t, map[string][]byte{"readme.txt": []byte("hi"), "docs/setup.exe": []byte("x")}))), `"docs.zip/docs/setup.exe": blocked file type .exe`, nil},
		{"PE in zip", message(att("docs.zip", zipOf(t, map[string][]byte{"image.png": pe}))), `"docs.zip/image.png": executable content`, nil},
		{"zip in zip", message(att("a.zip", zipOf(t, map[string][]byte{"b.zip": inner}))), `"a.zip/b.zip/setup.exe"`, nil},
		{"zip too deep", message(att("a.zip", zipOf(t, map[string][]byte{"b.zip": zipOf(t, map[string][]byte{"c.zip": inner})}))), "nested deeper than 2", nil},
		{"zip not scanned", message(att("docs.zip", zipOf(t, map[string][]byte{"setup.exe": []byte("x")}))), "", func(o *Options) { o.ScanArchives = false }},
		{"clean zip", message(att("docs.zip", zipOf(t, map[string][]byte{"a.txt": []byte("a"), "b.pdf": pdf}))), "", nil},
		{"too many entries", message(att("many.zip", zipOf(t, manyFiles(21)))), "more than 20 entries", nil},
		{"forwarded message", message("Content-Type: message/rfc822\r\n\r\n" + strings.ReplaceAll(message(att("x.vbs", []byte("x"))), "BOUND", "INNER")), ".vbs", nil},
		{"quoted-printable PE", message("Content-Type: application/octet-stream\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\nMZ=90=00=03"), "executable content", nil},
		{"single-part attachment", "Content-Type: application/octet-stream\r\nContent-Disposition: attachment; filename=a.bat\r\n\r\nx\r\n", ".bat", nil},
		{"depth limit", nested(7), "nested deeper than 5", nil},
		{"depth within limit", nested(4), "", nil},
		{"part limit", message(manyParts(60)...), "more than 50 MIME parts", nil},
		{"bad part header", message("Content-Type: text/plain\r\nbroken header line\r\n\r\nx", att("a.exe", []byte("x"))), "cannot be parsed", nil},
		{"broken multipart", "Content-Type: multipart/mixed; boundary=X\r\n\r\n--X\r\nContent-Type: text/plain\r\n", "", nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := newCheck(t, tt.mod)
			f, err := c.Inspect(context.Background(), strings.NewReader(tt.msg))
			if err != nil {
				t.Fatal(err)
			}
			got := ""
			if f != nil {
				got = f.String()
			}
			if (tt.want == "") != (f == nil) || !strings.Contains(got, tt.want) {
				t.Errorf("finding %q, want %q", got, tt.want)
			}
		})
	}
}

// TestEncryptedEntries: a password-protected entry (flag bit 0) is not readable, so only its
// name is checked — unless block_encrypted_archives refuses it.
func TestEncryptedEntries(t *testing.T) {
	var buf bytes.Buffer
	zw := zip.NewWriter(&buf)
	w, err := zw.CreateHeader(&zip.FileHeader{Name: "invoice.pdf", Method: zip.Store, Flags: 1})
	if err != nil {
		t.Fatal(err)
	}
	w.Write(pe) // what an unencrypted look would call executable
	zw.Close()
	msg := message(att("secret.zip", buf.Bytes()))
	if f, err := newCheck(t, nil).Inspect(context.Background(), strings.NewReader(msg)); f != nil || err != nil {
		t.Errorf("default: finding %v, err %v; want the entry skipped", f, err)
	}
	f, err := newCheck(t, func(o *Options) { o.BlockEncrypted = true }).Inspect(context.Background(), strings.NewReader(msg))
	if err != nil || f == nil || f.String() != `attachment "secret.zip/invoice.pdf": encrypted archive content that cannot be scanned` {
		t.Errorf("blocking: finding %v, err %v", f, err)
	}
}

func manyFiles(n int) map[string][]byte {
	m := map[string][]byte{}
	for i := range n {
		m[fmt.Sprintf("f%d.txt", i)] = []byte("x")
	}
	return m
}

func manyParts(n int) []string {
	var ps []string
	for i := range n {
		ps = append(ps, fmt.Sprintf("Content-Type: text/plain\r\n\r\npart %d", i))
	}
	return ps
}

// nested returns a message whose multiparts nest n deep.
func nested(n int) string {
	body := "Content-Type: text/plain\r\n\r\nleaf\r\n"
	for i := range n {
		b := fmt.Sprintf("B%d", i)
		body = "Content-Type: multipart/mixed; boundary=" + b + "\r\n\r\n--" + b + "\r\n" + body + "\r\n--" + b + "--\r\n"
	}
	return "Subject: deep\r\n" + body
}

// TestZipBomb: an entry that inflates to 16 MiB of zeros (16 KiB compressed) costs at most
// the budget (2 MiB here). As plain data only its first bytes are sniffed; disguised as a nested
// zip (it starts with the zip magic) it is read up to the budget and refused. Both are quick and
// allocate far less than the inflated size.
func TestZipBomb(t *testing.T) {
	bomb := func(name string, prefix []byte) []byte {
		var buf bytes.Buffer
		zw := zip.NewWriter(&buf)
		w, _ := zw.Create(name)
		w.Write(prefix)
		chunk := make([]byte, 1<<20)
		for range 16 {
			w.Write(chunk)
		}
		zw.Close()
		return buf.Bytes()
	}
	tests := []struct {
		name, want string
		zip        []byte
	}{
		{"zeros", "", bomb("zeros.txt", nil)},
		{"zeros as zip", "archive larger than 2097152 bytes", bomb("inner.zip", []byte("PK\x03\x04"))},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := newCheck(t, func(o *Options) { o.MaxArchiveSize = 2 << 20 })
			msg := message(att("bomb.zip", tt.zip))
			var before, after runtime.MemStats
			runtime.GC()
			runtime.ReadMemStats(&before)
			start := time.Now()
			f, err := c.Inspect(context.Background(), strings.NewReader(msg))
			took := time.Since(start)
			runtime.ReadMemStats(&after)
			got := ""
			if f != nil {
				got = f.String()
			}
			if err != nil || (tt.want == "") != (f == nil) || !strings.Contains(got, tt.want) {
				t.Fatalf("finding %q, err %v, want %q", got, err, tt.want)
			}
			alloc := after.TotalAlloc - before.TotalAlloc
			t.Logf("%d KiB compressed, 16 MiB inflated: %v, %d MiB allocated", len(tt.zip)>>10, took, alloc>>20)
			if took > 5*time.Second {
				t.Errorf("took %v", took)
			}
			if alloc > 32<<20 {
				t.Errorf("allocated %d MiB with a 2 MiB budget", alloc>>20)
			}
		})
	}
}

func TestCheckDataVerdicts(t *testing.T) {
	for _, a := range []policy.Action{policy.Reject, policy.Quarantine} {
		c := newCheck(t, func(o *Options) { o.Action = a })
		v := c.CheckData(context.Background(), nil, msgOf(message("Content-Type: application/octet-stream\r\nContent-Disposition: attachment; filename*=UTF-8''evil%0D%0A250%20ok.exe\r\n\r\nx")))
		if v.Action != a {
			t.Errorf("action %v, want %v", v.Action, a)
		}
		if a == policy.Reject {
			line := v.Reply.Line()
			if !strings.HasPrefix(line, "550 5.7.1 Message refused: attachment ") || strings.ContainsAny(line, "\r\n") {
				t.Errorf("reply %q", line)
			}
		}
	}
	c := newCheck(t, nil)
	v := c.CheckData(context.Background(), nil, msgOf(nested(9)))
	if v.Reply == nil || v.Reply.Code != 554 || v.Reply.Enhanced != [3]int{5, 6, 0} {
		t.Errorf("structure limit reply %v", v.Reply)
	}
	if v := c.CheckData(context.Background(), nil, msgOf(message(att("a.pdf", pdf)))); v.Action != policy.Continue || v.Err != nil {
		t.Errorf("clean: %+v", v)
	}
}

type msgOf string

func (m msgOf) Size() int64                  { return int64(len(m)) }
func (m msgOf) Open() (io.ReadCloser, error) { return io.NopCloser(strings.NewReader(string(m))), nil }

// BenchmarkCheckData10K: the per-message cost of the policy on a 10 KB message with a text
// part, a PDF and a small zip (the budget for all built-in checks is 2 ms at the median).
func BenchmarkCheckData10K(b *testing.B) {
	z := zipOf(b, map[string][]byte{"a.txt": bytes.Repeat([]byte("report line\n"), 100), "b.csv": []byte("1,2,3\n")})
	m := message(att("report.pdf", append(pdf, bytes.Repeat([]byte("x"), 4000)...)), att("data.zip", z),
		"Content-Type: text/plain\r\n\r\n"+strings.Repeat("text of the message body\r\n", 100))
	c := newCheck(b, nil)
	b.SetBytes(int64(len(m)))
	for b.Loop() {
		if v := c.CheckData(context.Background(), nil, msgOf(m)); v.Action != policy.Continue {
			b.Fatal(v)
		}
	}
}
