//go:build interop

package interop

import (
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/smtp"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// sandboxServer is a running `postamt sandbox`.
type sandboxServer struct {
	SMTPHost string
	SMTPPort int
	HTTP     string // http://127.0.0.1:PORT
	stderr   *syncBuffer
	cmd      *exec.Cmd
	exited   chan struct{}
}

// startSandbox runs `postamt sandbox --memory` on free ports and waits for msg=ready.
func startSandbox(t *testing.T) *sandboxServer { return startSandboxWith(t, "") }

// startSandboxWith is startSandbox with a configuration file holding config (TOML).
func startSandboxWith(t *testing.T, config string) *sandboxServer {
	t.Helper()
	bin := postamtBinary(t)
	s := &sandboxServer{SMTPHost: "127.0.0.1", SMTPPort: freePort(t), stderr: &syncBuffer{}, exited: make(chan struct{})}
	httpAddr := net.JoinHostPort("127.0.0.1", strconv.Itoa(freePort(t)))
	s.HTTP = "http://" + httpAddr
	args := []string{"sandbox", "--memory", "--smtp", net.JoinHostPort(s.SMTPHost, strconv.Itoa(s.SMTPPort)), "--http", httpAddr}
	dir := t.TempDir()
	if config != "" {
		writeFile(t, filepath.Join(dir, "sandbox.toml"), config)
		args = append(args, "--config", filepath.Join(dir, "sandbox.toml"))
	}
	s.cmd = exec.Command(bin, args...)
	s.cmd.Dir = dir
	s.cmd.Stdout, s.cmd.Stderr = s.stderr, s.stderr
	started := time.Now()
	if err := s.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { s.cmd.Wait(); close(s.exited) }()
	t.Cleanup(func() {
		s.cmd.Process.Signal(os.Interrupt)
		select {
		case <-s.exited:
		case <-time.After(waitTimeout):
			t.Errorf("postamt sandbox did not stop; killing it")
			s.cmd.Process.Kill()
			<-s.exited
		}
		if showLogs(t) {
			t.Logf("postamt sandbox stderr:\n%s", s.stderr.String())
		}
	})
	for deadline := time.Now().Add(waitTimeout); !strings.Contains(s.stderr.String(), "msg=ready"); time.Sleep(20 * time.Millisecond) {
		select {
		case <-s.exited:
			t.Fatalf("postamt sandbox exited: %s", s.stderr.String())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("postamt sandbox not ready after %v", waitTimeout)
		}
	}
	t.Logf("postamt sandbox ready after %v", time.Since(started))
	return s
}

// sbMessage is the API's view of a message (the parts the tests check).
type sbMessage struct {
	ID           string   `json:"id"`
	EnvelopeFrom string   `json:"envelope_from"`
	EnvelopeTo   []string `json:"envelope_to"`
	From         string   `json:"from"`
	Subject      string   `json:"subject"`
	Attachments  int      `json:"attachments"`
	Parsed       struct {
		Text        string `json:"text"`
		HTML        string `json:"html"`
		Attachments []struct {
			Index       int    `json:"index"`
			Filename    string `json:"filename"`
			ContentType string `json:"content_type"`
		} `json:"attachments"`
	} `json:"parsed"`
}

func (s *sandboxServer) get(t *testing.T, path string) (int, []byte) {
	t.Helper()
	resp, err := http.Get(s.HTTP + path)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, b
}

// wait uses the wait API (no sleep loop) and then fetches the full message.
func (s *sandboxServer) wait(t *testing.T, query string) sbMessage {
	t.Helper()
	code, b := s.get(t, "/api/v1/wait?timeout=20s&query="+url.QueryEscape(query))
	if code != 200 {
		t.Fatalf("wait %q: %d %s", query, code, b)
	}
	var m sbMessage
	json.Unmarshal(b, &m)
	code, b = s.get(t, "/api/v1/messages/"+m.ID)
	if code != 200 {
		t.Fatalf("get %s: %d %s", m.ID, code, b)
	}
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatal(err)
	}
	return m
}

// TestSandboxSwaks: swaks sends a message with an attachment to an address in a domain no one
// configured; the sandbox accepts it, and the API returns the attachment byte for byte.
func TestSandboxSwaks(t *testing.T) {
	requireTool(t, "swaks")
	s := startSandbox(t)
	att := filepath.Join(t.TempDir(), "report.csv")
	writeFile(t, att, "id,amount\n1,42\n")
	res := swaks(t, s.SMTPHost, s.SMTPPort, "--from", "app@dev.test", "--to", "someone@anywhere.example,other@else.example",
		"--header", "Subject: swaks sandbox", "--body", "swaks body text", "--attach-type", "text/csv", "--attach", "@"+att)
	if res.ExitCode != 0 {
		t.Fatalf("swaks exit %d:\n%s", res.ExitCode, res.Output)
	}
	m := s.wait(t, "subject:\"swaks sandbox\" has:attachment")
	if m.EnvelopeFrom != "app@dev.test" || strings.Join(m.EnvelopeTo, ",") != "someone@anywhere.example,other@else.example" {
		t.Errorf("envelope = %s → %v", m.EnvelopeFrom, m.EnvelopeTo)
	}
	if !strings.Contains(m.Parsed.Text, "swaks body text") || len(m.Parsed.Attachments) != 1 || m.Parsed.Attachments[0].Filename != "report.csv" {
		t.Fatalf("parsed = %+v", m.Parsed)
	}
	code, b := s.get(t, fmt.Sprintf("/api/v1/messages/%s/parts/%d", m.ID, m.Parsed.Attachments[0].Index))
	if code != 200 || string(b) != "id,amount\n1,42\n" {
		t.Errorf("attachment = %d %q", code, b)
	}
}

// TestSandboxSmtplib: Python's smtplib sends a multipart/alternative message with an
// attachment (EmailMessage); text, HTML and attachment come back through the API.
func TestSandboxSmtplib(t *testing.T) {
	py := requireTool(t, "python3")
	s := startSandbox(t)
	script := `
import smtplib, sys
from email.message import EmailMessage
m = EmailMessage()
m["From"] = "Shop <shop@dev.test>"
m["To"] = "buyer@customer.example"
m["Subject"] = "Order confirmed ✓"
m.set_content("Plain order text")
m.add_alternative("<p>HTML <b>order</b></p>", subtype="html")
m.add_attachment(b"\x00\x01binary", maintype="application", subtype="octet-stream", filename="blob.bin")
with smtplib.SMTP(sys.argv[1], int(sys.argv[2]), local_hostname="client.test", timeout=15) as s:
    s.send_message(m)
print("sent")
`
	res := runCmd(t, "", py, "-c", script, s.SMTPHost, strconv.Itoa(s.SMTPPort))
	if res.ExitCode != 0 || !strings.Contains(res.Output, "sent") {
		t.Fatalf("smtplib: exit %d\n%s", res.ExitCode, res.Output)
	}
	m := s.wait(t, "from:shop@dev.test subject:order")
	if m.Subject != "Order confirmed ✓" || !strings.Contains(m.Parsed.Text, "Plain order text") || !strings.Contains(m.Parsed.HTML, "<b>order</b>") {
		t.Errorf("message = %q text %q html %q", m.Subject, m.Parsed.Text, m.Parsed.HTML)
	}
	if len(m.Parsed.Attachments) != 1 || m.Parsed.Attachments[0].Filename != "blob.bin" {
		t.Fatalf("attachments = %+v", m.Parsed.Attachments)
	}
	if code, b := s.get(t, fmt.Sprintf("/api/v1/messages/%s/parts/%d", m.ID, m.Parsed.Attachments[0].Index)); code != 200 || string(b) != "\x00\x01binary" {
		t.Errorf("attachment = %d %q", code, b)
	}
	// The same client with STARTTLS (testdata/smtplib_client.py): the sandbox offers TLS with a
	// generated certificate, and AUTH inside it.
	r, res2 := runSmtplib(t, "send", s.SMTPHost, strconv.Itoa(s.SMTPPort), "tls@dev.test", "smtplib over TLS", "x@example.com")
	if res2.ExitCode != 0 || r.Error != "" || r.StartTLSCode != 220 || r.TLSVersion == "" {
		t.Fatalf("smtplib STARTTLS into the sandbox: exit %d, %+v", res2.ExitCode, r)
	}
	if _, ok := r.EHLOTLSFeatures["AUTH"]; !ok {
		t.Errorf("AUTH not offered after STARTTLS: %v", r.EHLOTLSFeatures)
	}
	s.wait(t, "subject:\"smtplib over TLS\"")
}

// TestSandboxGoNetSMTP: an application-style sender, Go's net/smtp client, makes the calls
// smtp.SendMail makes (EHLO, MAIL, two RCPTs, DATA) without its STARTTLS step, which would
// verify the sandbox's self-signed certificate; the message is stored once for both.
func TestSandboxGoNetSMTP(t *testing.T) {
	s := startSandbox(t)
	c, err := smtp.Dial(net.JoinHostPort(s.SMTPHost, strconv.Itoa(s.SMTPPort)))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := c.Hello("app.test"); err != nil {
		t.Fatal(err)
	}
	if ok, _ := c.Extension("STARTTLS"); !ok {
		t.Error("STARTTLS not offered")
	}
	if err := c.Mail("noreply@app.test"); err != nil {
		t.Fatal(err)
	}
	for _, r := range []string{"user1@example.net", "user2@example.net"} {
		if err := c.Rcpt(r); err != nil {
			t.Fatal(err)
		}
	}
	w, err := c.Data()
	if err != nil {
		t.Fatal(err)
	}
	fmt.Fprint(w, "From: noreply@app.test\r\nTo: user1@example.net, user2@example.net\r\nSubject: Welcome from net/smtp\r\n\r\nHello from Go.\r\n")
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	c.Quit()
	m := s.wait(t, "to:user2@example.net subject:welcome")
	if len(m.EnvelopeTo) != 2 || !strings.Contains(m.Parsed.Text, "Hello from Go.") {
		t.Errorf("message = %+v", m)
	}
	code, b := s.get(t, "/api/v1/messages?query="+url.QueryEscape("to:example.net"))
	var pg struct{ Total int }
	json.Unmarshal(b, &pg)
	if code != 200 || pg.Total != 1 {
		t.Errorf("one message for two recipients expected, got %d (%s)", pg.Total, b)
	}
}

// TestSandboxAuthClients: with AUTH required, swaks (AUTH LOGIN) and Python smtplib (login(),
// which picks PLAIN) log in over plain text on loopback and their mail is captured; a wrong
// password is refused.
func TestSandboxAuthClients(t *testing.T) {
	requireTool(t, "swaks")
	py := requireTool(t, "python3")
	s := startSandboxWith(t, "[sandbox]\nauth = \"users\"\nrequire_auth = true\n[sandbox.users]\ndev = \"secret\"\n")
	res := swaks(t, s.SMTPHost, s.SMTPPort, "--from", "app@dev.test", "--to", "u@example.com", "--auth", "LOGIN",
		"--auth-user", "dev", "--auth-password", "secret", "--header", "Subject: swaks auth")
	if res.ExitCode != 0 || !strings.Contains(res.Output, "235 2.7.0") {
		t.Fatalf("swaks --auth LOGIN: exit %d\n%s", res.ExitCode, res.Output)
	}
	s.wait(t, "subject:\"swaks auth\"")
	res = swaks(t, s.SMTPHost, s.SMTPPort, "--from", "app@dev.test", "--to", "u@example.com", "--auth", "PLAIN",
		"--auth-user", "dev", "--auth-password", "wrong")
	if res.ExitCode == 0 || !strings.Contains(res.Output, "535 5.7.8") {
		t.Errorf("wrong password accepted or not answered 535:\n%s", res.Output)
	}
	script := `
import smtplib, sys
with smtplib.SMTP(sys.argv[1], int(sys.argv[2]), local_hostname="client.test", timeout=15) as s:
    s.login("dev", "secret")
    s.sendmail("py@dev.test", ["u@example.com"], "Subject: smtplib auth\r\n\r\nx\r\n")
print("sent")
`
	out := runCmd(t, "", py, "-c", script, s.SMTPHost, strconv.Itoa(s.SMTPPort))
	if out.ExitCode != 0 || !strings.Contains(out.Output, "sent") {
		t.Fatalf("smtplib login: exit %d\n%s", out.ExitCode, out.Output)
	}
	s.wait(t, "subject:\"smtplib auth\"")
}
