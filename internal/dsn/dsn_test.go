package dsn

import (
	"bytes"
	"flag"
	"mime"
	"mime/multipart"
	"net/mail"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

var update = flag.Bool("update", false, "rewrite golden files")

const original = "Received: from client.example ([192.0.2.7])\r\n\tby mx.example.test (Postamt) with ESMTP id Q1;\r\n\tSun, 29 Nov 2026 08:00:00 +0000\r\n" +
	"From: <sender@example.test>\r\nTo: <ghost@example.test>\r\nSubject: hello\r\n\r\nHi there.\r\n"

func baseReport() Report {
	at := time.Date(2026, 11, 29, 8, 0, 0, 0, time.UTC)
	return Report{
		ReportingMTA: "mx.example.test", QueueID: "Q1", Sender: "sender@example.test",
		Arrival: at, Date: at.Add(time.Hour), MessageID: "Q1.dsn@mx.example.test",
		Recipients: []Recipient{{
			Final: "ghost@example.test", Original: "rfc822;ghost@example.test", Action: "failed", Status: "5.1.1",
			Diagnostic: "550 5.1.1 LMTP server said after RCPT TO: User doesn't exist", RemoteMTA: "lmtp:127.0.0.1:24",
			LastAttempt: at.Add(time.Second),
		}},
	}
}

func TestGolden(t *testing.T) {
	big := original + strings.Repeat("x", MaxOriginal) + "\r\n"
	cases := map[string]struct {
		r    func() Report
		orig string
	}{
		"failed":    {baseReport, original},
		"hdrs":      {func() Report { r := baseReport(); r.Ret = "HDRS"; r.EnvID = "QQ314159"; return r }, original},
		"truncated": {baseReport, big},
		"utf8":      {func() Report { r := baseReport(); r.SMTPUTF8 = true; return r }, original},
		"delayed": {func() Report {
			r := baseReport()
			r.Recipients[0].Action, r.Recipients[0].Status = "delayed", "4.4.1"
			r.Recipients[0].Diagnostic = "451 4.4.1 LMTP server not reachable"
			return r
		}, original},
		"success": {func() Report {
			r := baseReport()
			r.Recipients = []Recipient{
				{Final: "bob@example.test", Action: "delivered", Status: "2.0.0"},
				{Final: "carol@far.test", Original: "rfc822;carol@far.test", Action: "relayed", Status: "2.0.0", RemoteMTA: "mx.far.test"},
			}
			return r
		}, original},
		"mixed": {func() Report {
			r := baseReport()
			r.Recipients = append(r.Recipients, Recipient{Final: "bob@example.test", Action: "delivered", Status: "2.0.0"})
			return r
		}, original},
	}
	for name, c := range cases {
		t.Run(name, func(t *testing.T) {
			got, err := Build(c.r(), strings.NewReader(c.orig))
			if err != nil {
				t.Fatal(err)
			}
			checkStructure(t, got)
			file := filepath.Join("testdata", name+".eml")
			if *update {
				os.WriteFile(file, got, 0o644)
				return
			}
			want, err := os.ReadFile(file)
			if err != nil {
				t.Fatalf("%v (run with -update)", err)
			}
			if !bytes.Equal(got, want) {
				t.Errorf("DSN differs from %s:\n%s", file, got)
			}
		})
	}
}

// checkStructure parses the DSN with the standard library: a valid message and MIME multipart
// whose second part is a delivery-status report.
func checkStructure(t *testing.T, raw []byte) {
	t.Helper()
	m, err := mail.ReadMessage(bytes.NewReader(raw))
	if err != nil {
		t.Fatal(err)
	}
	if m.Header.Get("Auto-Submitted") != "auto-replied" {
		t.Error("no Auto-Submitted")
	}
	mt, params, err := mime.ParseMediaType(m.Header.Get("Content-Type"))
	if err != nil || mt != "multipart/report" || params["report-type"] != "delivery-status" {
		t.Fatalf("%s %v %v", mt, params, err)
	}
	mr := multipart.NewReader(m.Body, params["boundary"])
	var types []string
	for {
		p, err := mr.NextPart()
		if err != nil {
			break
		}
		types = append(types, p.Header.Get("Content-Type"))
	}
	if len(types) != 3 || !strings.Contains(types[1], "delivery-status") {
		t.Fatalf("parts: %q", types)
	}
}

func TestWanted(t *testing.T) {
	for _, tt := range []struct {
		notify, kind string
		want         bool
	}{
		{"", "FAILURE", true}, {"", "DELAY", true}, {"", "SUCCESS", false},
		{"NEVER", "FAILURE", false}, {"SUCCESS", "FAILURE", false}, {"SUCCESS,FAILURE", "FAILURE", true},
	} {
		if got := Wanted(tt.notify, tt.kind); got != tt.want {
			t.Errorf("Wanted(%q,%q)=%v", tt.notify, tt.kind, got)
		}
	}
}
