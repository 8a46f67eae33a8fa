package app

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"github.com/emersion/go-msgauth/dkim"
	"github.com/postamt/postamt/internal/dns/dnstest"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"net/smtp"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/postamt/postamt/internal/config"
	"github.com/postamt/postamt/internal/sandbox"
)

func sandboxQuery(s string) (*sandbox.Query, error) { return sandbox.ParseQuery(s, time.Now()) }

const multipartMsg = "From: App <app@dev.test>\r\nTo: Customer <customer@example.com>\r\nSubject: Your invoice\r\n" +
	"Message-ID: <inv-1@dev.test>\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"m\"\r\n\r\n" +
	"--m\r\nContent-Type: multipart/alternative; boundary=\"a\"\r\n\r\n" +
	"--a\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nThe invoice is attached. https://dev.test/pay\r\n" +
	"--a\r\nContent-Type: text/html; charset=utf-8\r\n\r\n<p>The <b>invoice</b> is attached.<img src=\"cid:logo\"><img src=\"https://tracker.test/p.gif\"><script>alert(1)</script></p>\r\n--a--\r\n" +
	"--m\r\nContent-Type: image/png\r\nContent-ID: <logo>\r\nContent-Transfer-Encoding: base64\r\n\r\niVBORw0KGgo=\r\n" +
	"--m\r\nContent-Type: application/pdf\r\nContent-Disposition: attachment; filename=\"invoice.pdf\"\r\nContent-Transfer-Encoding: base64\r\n\r\nJVBERi0xLjQK\r\n--m--\r\n"

type sandboxEnv struct {
	app  *App
	smtp string
	base string
}

func freeAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

func startSandbox(t *testing.T, extra string) *sandboxEnv {
	t.Helper()
	dir := t.TempDir()
	path := dir + "/sandbox.toml"
	smtpAddr := freeAddr(t)
	os.WriteFile(path, []byte(fmt.Sprintf("data_dir = %q\n[smtp]\nlisten = [%q]\n[sandbox]\nhttp_listen = \"127.0.0.1:0\"\n%s\n",
		dir, smtpAddr, strings.ReplaceAll(extra, "SMTPPORT", smtpAddr[strings.LastIndexByte(smtpAddr, ':')+1:]))), 0o600)
	cfg, err := config.LoadSandbox(path)
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	a, err := Start(cfg, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	// The issue promises start-up in under a second; on this shared machine allow some slack
	// but catch a regression by an order of magnitude.
	if took := time.Since(start); took > 2*time.Second {
		t.Errorf("sandbox start took %v", took)
	}
	t.Cleanup(func() { a.Shutdown(context.Background()) })
	return &sandboxEnv{app: a, smtp: a.Addrs()[0].String(), base: "http://" + a.Sandbox.HTTPAddr().String() + "/api/v1"}
}

func (e *sandboxEnv) do(t *testing.T, method, path string, body any) (int, []byte, http.Header) {
	t.Helper()
	var rd io.Reader
	if body != nil {
		b, _ := json.Marshal(body)
		rd = bytes.NewReader(b)
	}
	req, _ := http.NewRequest(method, e.base+path, rd)
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, b, resp.Header
}

func (e *sandboxEnv) getJSON(t *testing.T, path string, v any) {
	t.Helper()
	code, b, _ := e.do(t, "GET", path, nil)
	if code != 200 {
		t.Fatalf("GET %s: %d %s", path, code, b)
	}
	if err := json.Unmarshal(b, v); err != nil {
		t.Fatalf("GET %s: %v: %s", path, err, b)
	}
}

type summary struct {
	ID           string   `json:"id"`
	EnvelopeFrom string   `json:"envelope_from"`
	EnvelopeTo   []string `json:"envelope_to"`
	Subject      string   `json:"subject"`
	Attachments  int      `json:"attachments"`
	Read         bool     `json:"read"`
	Tags         []string `json:"tags"`
}

// TestSandboxCaptureAndAPI: a message sent over SMTP to any address is captured (not
// delivered), found by the wait API, and every API view of it is right.
func TestSandboxCaptureAndAPI(t *testing.T) {
	e := startSandbox(t, "")
	// Wait first, then send: the long poll must return when the message arrives.
	got := make(chan summary, 1)
	go func() {
		var s summary
		code, b, _ := e.do(t, "GET", "/wait?query="+urlq("subject:invoice has:attachment to:customer@example.com")+"&timeout=10s", nil)
		if code == 200 {
			json.Unmarshal(b, &s)
		} else {
			t.Errorf("wait: %d %s", code, b)
		}
		got <- s
	}()
	time.Sleep(100 * time.Millisecond)
	if err := send(e.smtp, "app@dev.test", "customer@example.com", multipartMsg); err != nil {
		t.Fatal(err)
	}
	var s summary
	select {
	case s = <-got:
	case <-time.After(15 * time.Second):
		t.Fatal("wait did not return")
	}
	if s.ID == "" || s.EnvelopeFrom != "app@dev.test" || len(s.EnvelopeTo) != 1 || s.EnvelopeTo[0] != "customer@example.com" || s.Attachments != 2 {
		t.Fatalf("captured = %+v", s)
	}
	var m struct {
		summary
		Parsed struct {
			Text        string `json:"text"`
			HTML        string `json:"html"`
			Attachments []struct {
				Index    int    `json:"index"`
				Filename string `json:"filename"`
			} `json:"attachments"`
			Headers []struct{ Name, Value string } `json:"headers"`
		} `json:"parsed"`
	}
	e.getJSON(t, "/messages/"+s.ID, &m)
	if !strings.Contains(m.Parsed.Text, "The invoice is attached.") || !strings.Contains(m.Parsed.HTML, "<b>invoice</b>") || m.Parsed.Headers[0].Name != "Received" {
		t.Errorf("parsed = %+v", m.Parsed)
	}
	code, raw, h := e.do(t, "GET", "/messages/"+s.ID+"/raw?download=1", nil)
	if code != 200 || !strings.HasSuffix(string(raw), multipartMsg) || h.Get("Content-Type") != "message/rfc822" || !strings.Contains(h.Get("Content-Disposition"), s.ID+".eml") {
		t.Errorf("raw: %d %q %v", code, h.Get("Content-Disposition"), h.Get("Content-Type"))
	}
	pdf := m.Parsed.Attachments[1]
	code, data, h := e.do(t, "GET", fmt.Sprintf("/messages/%s/parts/%d", s.ID, pdf.Index), nil)
	if code != 200 || string(data) != "%PDF-1.4\n" || !strings.Contains(h.Get("Content-Disposition"), `attachment; filename=invoice.pdf`) {
		t.Errorf("attachment: %d %q %q", code, data, h.Get("Content-Disposition"))
	}
	// The HTML preview: inline image as data:, remote loads and scripts forbidden by CSP.
	code, doc, h := e.do(t, "GET", "/messages/"+s.ID+"/html", nil)
	csp := h.Get("Content-Security-Policy")
	if code != 200 || !strings.Contains(string(doc), `src="data:image/png;base64,iVBORw0KGgo="`) ||
		!strings.Contains(csp, "sandbox") || !strings.Contains(csp, "img-src data:;") || !strings.Contains(csp, "default-src 'none'") {
		t.Errorf("html: %d csp %q\n%s", code, csp, doc)
	}
	_, _, h = e.do(t, "GET", "/messages/"+s.ID+"/html?images=1", nil)
	if csp := h.Get("Content-Security-Policy"); !strings.Contains(csp, "img-src data: https:") {
		t.Errorf("images=1 csp %q", csp)
	}
	// Tags and read state, then search by them.
	if code, b, _ := e.do(t, "PATCH", "/messages/"+s.ID, map[string]any{"read": true, "tags": []string{"Billing"}}); code != 200 {
		t.Fatalf("patch: %d %s", code, b)
	}
	var pg struct {
		Total    int       `json:"total"`
		Messages []summary `json:"messages"`
	}
	e.getJSON(t, "/messages?query="+urlq("tag:billing is:read"), &pg)
	if pg.Total != 1 || pg.Messages[0].ID != s.ID {
		t.Errorf("search by tag: %+v", pg)
	}
	if code, b, _ := e.do(t, "GET", "/messages?query="+urlq("form:x"), nil); code != 400 || !strings.Contains(string(b), "unknown search field") {
		t.Errorf("bad query: %d %s", code, b)
	}
	// Checks name the real problems of this message.
	var rep struct {
		Problems []struct{ Text string } `json:"problems"`
		Links    []struct{ URL string }  `json:"links"`
		AuthNote string                  `json:"auth_note"` // empty: verification is wired in
	}
	e.getJSON(t, "/messages/"+s.ID+"/check", &rep)
	all := fmt.Sprint(rep.Problems)
	if !strings.Contains(all, "without alt text") || !strings.Contains(all, "<script>") || len(rep.Links) != 1 || rep.Links[0].URL != "https://dev.test/pay" || rep.AuthNote != "" {
		t.Errorf("check: %+v", rep)
	}
	// A cross-site form post and a foreign Host are refused.
	req, _ := http.NewRequest("DELETE", e.base+"/messages", nil)
	req.Header.Set("Sec-Fetch-Site", "cross-site")
	if resp, err := http.DefaultClient.Do(req); err != nil || resp.StatusCode != 403 {
		t.Errorf("cross-site delete: %v %v", resp.StatusCode, err)
	}
	req, _ = http.NewRequest("GET", e.base+"/messages", nil)
	req.Host = "evil.example"
	if resp, err := http.DefaultClient.Do(req); err != nil || resp.StatusCode != http.StatusMisdirectedRequest {
		t.Errorf("rebinding host: %v %v", resp.StatusCode, err)
	}
	// Delete one, then the store is empty.
	if code, _, _ := e.do(t, "DELETE", "/messages/"+s.ID, nil); code != 204 {
		t.Errorf("delete: %d", code)
	}
	if code, _, _ := e.do(t, "GET", "/messages/"+s.ID, nil); code != 404 {
		t.Errorf("get after delete: %d", code)
	}
	var st struct{ Messages int }
	e.getJSON(t, "/stats", &st)
	if st.Messages != 0 {
		t.Errorf("stats after delete: %+v", st)
	}
	// Nothing was delivered anywhere: the queue is empty and no Maildir exists.
	if _, err := os.Stat(e.app.Config.Path("mail")); !os.IsNotExist(err) {
		t.Errorf("a Maildir was created: %v", err)
	}
	// The UI and the OpenAPI document are served by the binary.
	code, b, _ := e.do(t, "GET", "/openapi.json", nil)
	var oa map[string]any
	if code != 200 || json.Unmarshal(b, &oa) != nil || oa["openapi"] != "3.0.3" {
		t.Errorf("openapi: %d", code)
	}
	resp, err := http.Get(strings.TrimSuffix(e.base, "/api/v1") + "/")
	if err != nil {
		t.Fatal(err)
	}
	page, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if !strings.Contains(string(page), `<script src="/app.js">`) {
		t.Errorf("UI index not served")
	}
}

func urlq(s string) string {
	return strings.NewReplacer(" ", "+", ":", "%3A", "@", "%40", "\"", "%22").Replace(s)
}

// TestSandboxChaos: a chaos rule from the config refuses at RCPT; the API replaces it at run
// time and the next transaction gets the new behaviour.
func TestSandboxChaos(t *testing.T) {
	e := startSandbox(t, "[[sandbox.chaos]]\nstage = \"rcpt\"\nreply = \"451 4.3.0 Chaos says later\"\nprobability = 1.0\nmatch = \"flaky\"\n")
	msg := "Subject: chaos\r\n\r\nx\r\n"
	err := send(e.smtp, "a@dev.test", "flaky@example.com", msg)
	if err == nil || !strings.Contains(err.Error(), "451 Chaos says later") && !strings.Contains(err.Error(), "451") {
		t.Fatalf("flaky recipient: err = %v, want 451", err)
	}
	if err := send(e.smtp, "a@dev.test", "solid@example.com", msg); err != nil {
		t.Fatalf("other recipient refused: %v", err)
	}
	rules := map[string]any{"rules": []map[string]any{{"stage": "data", "reply": "552 5.3.4 Too big for chaos", "probability": 1, "min_size": 10}}}
	if code, b, _ := e.do(t, "PUT", "/chaos", rules); code != 200 {
		t.Fatalf("put chaos: %d %s", code, b)
	}
	if err := send(e.smtp, "a@dev.test", "flaky@example.com", msg); err == nil || !strings.Contains(err.Error(), "552") {
		t.Errorf("after replacing the rules: err = %v, want 552 at DATA", err)
	}
	if code, b, _ := e.do(t, "PUT", "/chaos", map[string]any{"rules": []map[string]any{{"stage": "quit", "reply": "421"}}}); code != 400 || !strings.Contains(string(b), "stage") {
		t.Errorf("invalid rule: %d %s", code, b)
	}
	// A delivery fault: the queue returns the message to its sender in a DSN, which the
	// sandbox captures like any other mail (the sender's address routes to it too).
	rules = map[string]any{"rules": []map[string]any{{"stage": "delivery", "reply": "550 5.1.1 Mailbox does not exist", "probability": 1, "match": "gone"}}}
	if code, b, _ := e.do(t, "PUT", "/chaos", rules); code != 200 {
		t.Fatalf("put chaos: %d %s", code, b)
	}
	if err := send(e.smtp, "app@dev.test", "gone@example.com", "Subject: doomed\r\n\r\nx\r\n"); err != nil {
		t.Fatalf("delivery faults must not refuse in the session: %v", err)
	}
	var dsn summary
	e.getJSON(t, "/wait?query="+urlq("to:app@dev.test subject:undelivered")+"&timeout=10s", &dsn)
	if dsn.EnvelopeFrom != "" || dsn.EnvelopeTo[0] != "app@dev.test" {
		t.Errorf("DSN = %+v", dsn)
	}
	code, raw, _ := e.do(t, "GET", "/messages/"+dsn.ID+"/raw", nil)
	if code != 200 || !strings.Contains(string(raw), "550 5.1.1 Mailbox does not exist") || !strings.Contains(string(raw), "Final-Recipient: rfc822; gone@example.com") {
		t.Errorf("DSN lacks the injected reply or the recipient:\n%s", raw)
	}
	// Without the JSON content type the request is refused (a cross-site form cannot send it).
	req, _ := http.NewRequest("PUT", e.base+"/chaos", strings.NewReader(`{"rules":[]}`))
	req.Header.Set("Content-Type", "text/plain")
	if resp, err := http.DefaultClient.Do(req); err != nil || resp.StatusCode != 415 {
		t.Errorf("text/plain body: %v", resp.StatusCode)
	}
}

// TestSandboxRelease: a captured message released to an address goes out through the remote
// transport to the configured relay host (here the sandbox's own SMTP port, so the released
// copy is captured a second time with the chosen envelope).
func TestSandboxRelease(t *testing.T) {
	e := startSandbox(t, "[outbound]\nrelay_host = \"[127.0.0.1]:SMTPPORT\"\n")
	if err := send(e.smtp, "app@dev.test", "customer@example.com", multipartMsg); err != nil {
		t.Fatal(err)
	}
	var s summary
	e.getJSON(t, "/wait?query="+urlq("subject:invoice")+"&timeout=10s", &s)
	code, b, _ := e.do(t, "POST", "/messages/"+s.ID+"/release", map[string]any{"from": "qa@dev.test", "to": []string{"real.person@example.org"}})
	if code != 202 {
		t.Fatalf("release: %d %s", code, b)
	}
	var again summary
	e.getJSON(t, "/wait?query="+urlq("to:real.person@example.org")+"&timeout=10s", &again)
	if again.ID == s.ID || again.EnvelopeFrom != "qa@dev.test" || again.EnvelopeTo[0] != "real.person@example.org" || again.Subject != "Your invoice" {
		t.Errorf("released copy = %+v", again)
	}
	code, raw, _ := e.do(t, "GET", "/messages/"+again.ID+"/raw", nil)
	if code != 200 || !strings.Contains(string(raw), "(Postamt sandbox release)") || !strings.HasSuffix(string(raw), multipartMsg) {
		t.Errorf("released raw lacks the release Received header or the original:\n%s", raw)
	}
	if code, b, _ := e.do(t, "POST", "/messages/"+s.ID+"/release", map[string]any{"to": []string{"not an address"}}); code != 400 {
		t.Errorf("bad recipient: %d %s", code, b)
	}
}

// TestSandboxMemoryOnly: memory_only leaves nothing on disk after shutdown.
func TestSandboxMemoryOnly(t *testing.T) {
	cfg, err := config.LoadSandbox("")
	if err != nil {
		t.Fatal(err)
	}
	cfg.SMTP.Listen = []string{"127.0.0.1:0"}
	cfg.Sandbox.HTTPListen = "127.0.0.1:0"
	cfg.Sandbox.MemoryOnly = true
	cfg.DataDir = t.TempDir() + "/unused"
	a, err := Start(cfg, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	tmp := a.Config.DataDir
	if err := send(a.Addrs()[0].String(), "a@dev.test", "b@example.com", "Subject: mem\r\n\r\nx\r\n"); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	q, _ := sandboxQuery("subject:mem")
	if _, err := a.Sandbox.Store.Wait(ctx, q, time.Time{}); err != nil {
		t.Fatal(err)
	}
	if !a.Sandbox.Store.MemoryOnly() {
		t.Error("store is not memory-only")
	}
	a.Shutdown(context.Background())
	if _, err := os.Stat(tmp); !os.IsNotExist(err) {
		t.Errorf("temporary queue dir %s left behind: %v", tmp, err)
	}
	if _, err := os.Stat(cfg.DataDir); !os.IsNotExist(err) {
		t.Errorf("data_dir %s was created", cfg.DataDir)
	}
}

// TestSandboxRestart: captured mail survives a restart on disk, is not captured twice, and the
// restarted sandbox starts quickly.
func TestSandboxRestart(t *testing.T) {
	dir := t.TempDir()
	start := func() *App {
		cfg, err := config.LoadSandbox("")
		if err != nil {
			t.Fatal(err)
		}
		cfg.DataDir = dir
		cfg.SMTP.Listen = []string{"127.0.0.1:0"}
		cfg.Sandbox.HTTPListen = "127.0.0.1:0"
		t0 := time.Now()
		a, err := Start(cfg, slog.New(slog.DiscardHandler))
		if err != nil {
			t.Fatal(err)
		}
		if took := time.Since(t0); took > 2*time.Second {
			t.Errorf("start took %v", took)
		}
		return a
	}
	a := start()
	for i := range 3 {
		if err := send(a.Addrs()[0].String(), "a@dev.test", "b@example.com", fmt.Sprintf("Subject: keep %d\r\n\r\nx\r\n", i)); err != nil {
			t.Fatal(err)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for i := range 3 {
		q, _ := sandboxQuery(fmt.Sprintf("subject:\"keep %d\"", i))
		if _, err := a.Sandbox.Store.Wait(ctx, q, time.Time{}); err != nil {
			t.Fatal(err)
		}
	}
	a.Shutdown(context.Background())

	b := start()
	defer b.Shutdown(context.Background())
	pg, err := b.Sandbox.Store.List(ctx, nil, 10, 0)
	if err != nil || pg.Total != 3 {
		t.Fatalf("after restart: %d messages (%v), want 3", pg.Total, err)
	}
	if _, err := os.Stat(dir + "/sandbox.db"); err != nil {
		t.Errorf("no sandbox.db in data_dir: %v", err)
	}
}

// TestSandboxAuth: with auth = "users" and require_auth, a client must log in (AUTH PLAIN over
// plain text on loopback, as Go's net/smtp allows for 127.0.0.1); wrong passwords get 535.
func TestSandboxAuth(t *testing.T) {
	e := startSandbox(t, "auth = \"users\"\nrequire_auth = true\n[sandbox.users]\nalice = \"wonderland\"\n")
	dial := func() *smtp.Client {
		c, err := smtp.Dial(e.smtp)
		if err != nil {
			t.Fatal(err)
		}
		if err := c.Hello("app.test"); err != nil {
			t.Fatal(err)
		}
		return c
	}
	c := dial()
	if ok, mechs := c.Extension("AUTH"); !ok || mechs != "PLAIN LOGIN" {
		t.Errorf("AUTH extension = %v %q", ok, mechs)
	}
	if err := c.Mail("a@dev.test"); err == nil || !strings.Contains(err.Error(), "530") {
		t.Errorf("MAIL without AUTH: %v, want 530", err)
	}
	if err := c.Auth(smtp.PlainAuth("", "alice", "rabbit", "127.0.0.1")); err == nil || !strings.Contains(err.Error(), "535") {
		t.Errorf("wrong password: %v, want 535", err)
	}
	c.Close()
	c = dial()
	defer c.Close()
	if err := c.Auth(smtp.PlainAuth("", "alice", "wonderland", "127.0.0.1")); err != nil {
		t.Fatalf("AUTH: %v", err)
	}
	if err := c.Mail("a@dev.test"); err != nil {
		t.Fatal(err)
	}
	if err := c.Rcpt("b@example.com"); err != nil {
		t.Fatal(err)
	}
	w, _ := c.Data()
	w.Write([]byte("Subject: logged in\r\n\r\nx\r\n"))
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	var s summary
	e.getJSON(t, "/wait?query="+urlq("subject:\"logged in\"")+"&timeout=10s", &s)
	if s.ID == "" {
		t.Error("authenticated message not captured")
	}
}

// TestSandboxAuthVerdicts: the pre-send check reports DKIM and DMARC as a receiver would (the
// same mailauth code as the MX listener), and the sender's SPF record.
func TestSandboxAuthVerdicts(t *testing.T) {
	_, key, _ := ed25519.GenerateKey(rand.Reader)
	zone := &dnstest.Zone{TXT: map[string][]string{
		"dev.test":               {"v=spf1 ip4:192.0.2.0/24 -all"},
		"_dmarc.dev.test":        {"v=DMARC1; p=reject"},
		"s1._domainkey.dev.test": {"v=DKIM1; k=ed25519; p=" + base64.StdEncoding.EncodeToString(key.Public().(ed25519.PublicKey))},
		"_dmarc.unsigned.test":   {"v=DMARC1; p=quarantine"},
	}}
	e := startSandbox(t, fmt.Sprintf("[outbound]\ndns_servers = [%q]\n", dnstest.Server(t, zone)))
	var signed bytes.Buffer
	if err := dkim.Sign(&signed, strings.NewReader(multipartMsg), &dkim.SignOptions{Domain: "dev.test", Selector: "s1", Signer: key}); err != nil {
		t.Fatal(err)
	}
	unsigned := strings.Replace(multipartMsg, "From: App <app@dev.test>", "From: App <app@unsigned.test>", 1)
	unsigned = strings.Replace(unsigned, "Subject: Your invoice", "Subject: Unsigned", 1)
	for _, m := range []string{signed.String(), unsigned} {
		if err := send(e.smtp, "app@dev.test", "customer@example.com", m); err != nil {
			t.Fatal(err)
		}
	}
	type verdict struct{ Method, Result, Detail string }
	check := func(query string) map[string]verdict {
		var s summary
		e.getJSON(t, "/wait?query="+urlq(query)+"&timeout=10s", &s)
		var rep struct{ Auth []verdict }
		e.getJSON(t, "/messages/"+s.ID+"/check", &rep)
		out := map[string]verdict{}
		for _, v := range rep.Auth {
			out[v.Method] = v
		}
		return out
	}
	got := check("subject:invoice")
	if got["dkim"].Result != "pass" || got["dmarc"].Result != "pass" || got["spf"].Result != "policy" || !strings.Contains(got["spf"].Detail, "v=spf1 ip4:192.0.2.0/24") {
		t.Errorf("signed message: %+v", got)
	}
	got = check("subject:unsigned")
	if got["dkim"].Result != "none" || got["dmarc"].Result != "fail" || !strings.Contains(got["dmarc"].Detail, "p=quarantine") {
		t.Errorf("unsigned message: %+v", got)
	}
}

// With rspamd on, the pre-send check shows its score (here from a fake rspamd: the real one is
// exercised in the interop tests); with it off, a score field the sender wrote is not shown.
func TestSandboxSpamScore(t *testing.T) {
	rs := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		w.Header().Set("Content-Type", "application/json")
		io.WriteString(w, `{"action":"add header","score":7.5,"required_score":15,"symbols":{}}`)
	}))
	defer rs.Close()
	for _, on := range []bool{true, false} {
		extra := ""
		if on {
			extra = fmt.Sprintf("[checks.rspamd]\nenabled = true\nurl = %q\n", rs.URL)
		}
		e := startSandbox(t, extra)
		msg := strings.Replace(multipartMsg, "Subject: Your invoice", "X-Spam-Score: 0.00 / 15.00\r\nX-Spam: No\r\nSubject: Your invoice", 1)
		if err := send(e.smtp, "app@dev.test", "customer@example.com", msg); err != nil {
			t.Fatal(err)
		}
		var s summary
		e.getJSON(t, "/wait?query="+urlq("subject:invoice")+"&timeout=10s", &s)
		var rep struct {
			Auth []struct{ Method, Result, Detail string }
		}
		e.getJSON(t, "/messages/"+s.ID+"/check", &rep)
		var spam string
		for _, v := range rep.Auth {
			if v.Method == "rspamd" {
				spam = v.Result + " " + v.Detail
			}
		}
		if on && spam != "yes score 7.50 / 15.00" || !on && spam != "" {
			t.Errorf("rspamd on=%v: reported %q", on, spam)
		}
	}
}
