package remote

import (
	"bytes"
	"io"
	"mime"
	"mime/multipart"
	"mime/quotedprintable"
	"net/mail"
	"strings"
	"testing"
)

func TestDowngradePlain(t *testing.T) {
	in := "From: a@b.test\r\nSubject: hi\r\nContent-Transfer-Encoding: 8bit\r\n\r\nGrüße aus Köln\r\n.\r\nzweite Zeile\r\n"
	out := downgrade8bit([]byte(in))
	if has8bit(out) {
		t.Fatalf("8-bit octets left:\n%s", out)
	}
	m, err := mail.ReadMessage(bytes.NewReader(out))
	if err != nil {
		t.Fatal(err)
	}
	if m.Header.Get("Content-Transfer-Encoding") != "quoted-printable" || m.Header.Get("MIME-Version") != "1.0" ||
		m.Header.Get("Content-Type") != "text/plain; charset=utf-8" {
		t.Errorf("header %v", m.Header)
	}
	if strings.Count(string(out), "Content-Transfer-Encoding") != 1 {
		t.Errorf("old encoding field kept:\n%s", out)
	}
	body, _ := io.ReadAll(quotedprintable.NewReader(m.Body))
	if string(body) != "Grüße aus Köln\r\n.\r\nzweite Zeile\r\n" {
		t.Errorf("decoded body %q", body)
	}
}

func TestDowngradeMultipart(t *testing.T) {
	in := "From: a@b.test\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed;\r\n\tboundary=\"XX\"\r\n\r\n" +
		"preamble\r\n--XX\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\nÄpfel\r\n" +
		"--XX\r\nContent-Type: application/octet-stream\r\nContent-Transfer-Encoding: base64\r\n\r\nAAEC\r\n" +
		"--XX\r\nContent-Type: message/rfc822\r\n\r\nSubject: inner\r\nContent-Type: text/plain; charset=latin1\r\n\r\nK\xf6ln\r\n" +
		"--XX--\r\nepilogue\r\n"
	out := downgrade8bit([]byte(in))
	if has8bit(out) {
		t.Fatalf("8-bit octets left:\n%s", out)
	}
	m, err := mail.ReadMessage(bytes.NewReader(out))
	if err != nil {
		t.Fatal(err)
	}
	_, params, _ := mime.ParseMediaType(m.Header.Get("Content-Type"))
	r := multipart.NewReader(m.Body, params["boundary"])
	p, err := r.NextRawPart()
	if err != nil {
		t.Fatal(err)
	}
	if p.Header.Get("Content-Transfer-Encoding") != "quoted-printable" {
		t.Errorf("text part header %v", p.Header)
	}
	b, _ := io.ReadAll(quotedprintable.NewReader(p))
	if string(b) != "Äpfel" {
		t.Errorf("text part %q", b)
	}
	p, _ = r.NextRawPart()
	if b, _ := io.ReadAll(p); string(b) != "AAEC" || p.Header.Get("Content-Transfer-Encoding") != "base64" {
		t.Errorf("7-bit part changed: %q %v", b, p.Header)
	}
	p, _ = r.NextRawPart()
	inner, err := mail.ReadMessage(p)
	if err != nil {
		t.Fatal(err)
	}
	if inner.Header.Get("Content-Transfer-Encoding") != "quoted-printable" {
		t.Errorf("inner message header %v", inner.Header)
	}
	if !strings.HasPrefix(string(out), "From: a@b.test\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed;\r\n\tboundary=\"XX\"\r\n\r\npreamble\r\n--XX\r\n") ||
		!strings.HasSuffix(string(out), "\r\n--XX--\r\nepilogue\r\n") {
		t.Errorf("structure not kept:\n%s", out)
	}
}

func TestDowngradeSevenBitUntouched(t *testing.T) {
	for _, in := range []string{
		"Subject: a\r\n\r\nplain\r\n",
		"Subject: a\r\nContent-Type: multipart/mixed; boundary=q\r\n\r\n--q\r\n\r\nx\r\n--q--\r\n",
		"no header separator at all",
	} {
		if out := downgrade8bit([]byte(in)); string(out) != in {
			t.Errorf("%q changed to %q", in, out)
		}
	}
}

func FuzzDowngrade(f *testing.F) {
	f.Add([]byte("Subject: a\r\n\r\nK\xc3\xb6ln\r\n"))
	f.Add([]byte("Content-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\n\r\n\xff\r\n--b--\r\n"))
	f.Add([]byte("Content-Type: message/rfc822\r\n\r\nContent-Type: multipart/alternative; boundary=c\r\n\r\n--c\r\n\r\n\xe4\r\n--c--\r\n"))
	f.Fuzz(func(t *testing.T, in []byte) {
		out := downgrade8bit(in)
		if !has8bit(in) && !bytes.Equal(in, out) {
			t.Fatalf("7-bit input changed")
		}
		head, _, ok := splitHeader(in)
		lower := bytes.ToLower(in)
		if ok && !has8bit(head) && !bytes.Contains(lower, []byte("multipart")) && !bytes.Contains(lower, []byte("message/")) && has8bit(out) {
			t.Fatalf("8-bit octets left in a single-part message: %q", out)
		}
	})
}
