//go:build interop

package interop

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"net/smtp"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/chromedp/cdproto/browser"
	"github.com/chromedp/chromedp"
	"github.com/chromedp/chromedp/kb"
)

// TestSandboxWebUI drives the sandbox's web UI in real headless Chromium: a message sent over
// SMTP appears in the open page without a reload (server-sent events), opens, shows its HTML
// (scripts never run, remote images load only when asked), text, source and headers, its
// attachment downloads, search narrows the list, and delete removes it. On failure a
// screenshot is saved and its path logged.
func TestSandboxWebUI(t *testing.T) {
	chromium := requireTool(t, "chromium")
	s := startSandbox(t)

	// A remote image server: the test counts requests to prove blocking and unblocking.
	var pixelHits atomic.Int64
	pixel := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		pixelHits.Add(1)
		w.Header().Set("Content-Type", "image/gif")
		w.Write([]byte("GIF89a\x01\x00\x01\x00\x80\x00\x00\x00\x00\x00\xff\xff\xff!\xf9\x04\x01\x00\x00\x00\x00,\x00\x00\x00\x00\x01\x00\x01\x00\x00\x02\x02D\x01\x00;"))
	}))
	defer pixel.Close()

	downloads := t.TempDir()
	opts := []chromedp.ExecAllocatorOption{
		chromedp.ExecPath(chromium), chromedp.Headless, chromedp.NoSandbox, chromedp.DisableGPU, chromedp.NoFirstRun,
		chromedp.NoDefaultBrowserCheck, chromedp.UserDataDir(t.TempDir()), chromedp.WindowSize(1280, 900),
		chromedp.Flag("disable-background-networking", true), chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-sync", true), chromedp.Flag("disable-quic", true),
	}
	actx, cancelA := chromedp.NewExecAllocator(context.Background(), opts...)
	defer cancelA()
	ctx, cancelC := chromedp.NewContext(actx)
	defer cancelC()
	ctx, cancelT := context.WithTimeout(ctx, 60*time.Second)
	defer cancelT()
	step := "start"
	defer func() {
		if !t.Failed() {
			return
		}
		sctx, c := context.WithTimeout(ctx, 10*time.Second)
		defer c()
		if png, err := chromedp.Run(sctx, chromedp.FullScreenshot(100)); err == nil {
			f := filepath.Join(os.TempDir(), fmt.Sprintf("postamt-sandbox-ui-%d.png", time.Now().UnixNano()))
			os.WriteFile(f, png, 0o644)
			t.Logf("failed at step %q; screenshot: %s", step, f)
		} else {
			t.Logf("failed at step %q; no screenshot: %v", step, err)
		}
	}()
	do := func(name string, actions ...chromedp.Action[chromedp.Void]) {
		t.Helper()
		step = name
		if err := chromedp.Do(ctx, actions...); err != nil {
			t.Fatalf("%s: %v", name, err)
		}
	}
	// until waits for a JavaScript condition in the page.
	until := func(name, cond string) {
		t.Helper()
		step = name
		if _, err := chromedp.Run(ctx, chromedp.Poll[bool](cond, chromedp.WithPollingTimeout(10*time.Second))); err != nil {
			t.Fatalf("%s: waiting for %s: %v", name, cond, err)
		}
	}
	text := func(sel string) string {
		t.Helper()
		v, err := chromedp.Run(ctx, chromedp.Text(chromedp.CSS(sel)))
		if err != nil {
			t.Fatalf("%s: text of %s: %v", step, sel, err)
		}
		return v
	}

	do("open the UI",
		chromedp.Func(func(ctx context.Context, _ *chromedp.Target) error {
			_, err := chromedp.Call(ctx, browser.SetDownloadBehavior, browser.SetDownloadBehaviorParams{
				Behavior: browser.SetDownloadBehaviorBehaviorAllow, DownloadPath: downloads,
			})
			return err
		}),
		chromedp.Navigate(s.HTTP+"/"),
		chromedp.WaitVisible(chromedp.CSS("#live")))
	until("empty list", `document.querySelector("#count").textContent === "No messages"`)

	subject := "UI test " + strconv.FormatInt(time.Now().UnixNano(), 36)
	body := "From: Shop <shop@dev.test>\r\nTo: buyer@customer.example\r\nSubject: " + subject + "\r\n" +
		"Message-ID: <ui@dev.test>\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"m\"\r\n\r\n" +
		"--m\r\nContent-Type: multipart/alternative; boundary=\"a\"\r\n\r\n" +
		"--a\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nPlain words for the text tab.\r\n" +
		"--a\r\nContent-Type: text/html; charset=utf-8\r\n\r\n<html><body><h1 id=\"greet\">Hello HTML</h1>" +
		"<img id=\"remote\" alt=\"pixel\" src=\"" + pixel.URL + "/p.gif\">" +
		"<script>document.body.setAttribute('data-ran', 'yes')</script></body></html>\r\n--a--\r\n" +
		"--m\r\nContent-Type: text/csv\r\nContent-Disposition: attachment; filename=\"numbers.csv\"\r\n\r\na,b\r\n1,2\r\n--m--\r\n"
	step = "send over SMTP"
	sendPlain(t, s, "shop@dev.test", "buyer@customer.example", body)

	// No reload: the open page learns of the message from the event stream.
	until("message appears live", `document.querySelectorAll("#list li.msg-row.unread").length === 1`)
	if row := text("#list li.msg-row"); !strings.Contains(row, subject) || !strings.Contains(row, "Shop <shop@dev.test>") {
		t.Fatalf("row = %q", row)
	}

	do("open it", chromedp.Click(chromedp.CSS("#list li.msg-row")), chromedp.WaitVisible(chromedp.CSS("#view")))
	if got := text("#v-subject"); got != subject {
		t.Errorf("subject shown = %q", got)
	}
	until("marked read", `!document.querySelector("#list li.msg-row").classList.contains("unread")`)

	// HTML tab (the default): the frame is sandboxed, shows the content, its script did not
	// run, and the remote image was not fetched.
	until("HTML frame loaded", `document.querySelector("#html-frame").getAttribute("src") !== null`)
	attr, err := chromedp.Run(ctx, chromedp.AttributeValue(chromedp.CSS("#html-frame"), "sandbox"))
	if err != nil || !attr.Exists || strings.Contains(attr.Value, "allow-scripts") || strings.Contains(attr.Value, "allow-same-origin") {
		t.Errorf("iframe sandbox = %+v, %v", attr, err)
	}
	greet, ran := frameContent(t, ctx)
	if greet != "Hello HTML" {
		t.Errorf("HTML frame shows %q", greet)
	}
	if ran {
		t.Error("a script in the message ran")
	}
	if n := pixelHits.Load(); n != 0 {
		t.Errorf("remote image fetched %d times before the user asked", n)
	}
	do("phone width", chromedp.Click(chromedp.CSS("#w-phone")))
	if wd, err := chromedp.Run(ctx, chromedp.Evaluate[float64](`document.querySelector("#html-frame").getBoundingClientRect().width`)); err != nil || wd < 360 || wd > 390 {
		t.Errorf("phone preview width = %v (%v), want about 375", wd, err)
	}
	do("load remote images", chromedp.Click(chromedp.CSS("#w-desktop")), chromedp.Click(chromedp.CSS("#images-btn")))
	for end := time.Now().Add(10 * time.Second); pixelHits.Load() == 0 && time.Now().Before(end); time.Sleep(50 * time.Millisecond) {
	}
	if pixelHits.Load() == 0 {
		t.Error("remote image not fetched after Load remote images")
	}

	do("text tab", chromedp.Click(chromedp.CSS("#tab-text")), chromedp.WaitVisible(chromedp.CSS("#view-text pre")))
	if got := text("#view-text pre"); !strings.Contains(got, "Plain words for the text tab.") {
		t.Errorf("text tab = %q", got)
	}
	until("preview tools hidden outside the HTML tab", `document.querySelector("#html-tools").offsetParent === null`)
	do("source tab", chromedp.Click(chromedp.CSS("#tab-source")), chromedp.WaitVisible(chromedp.CSS("#view-source pre")))
	until("source loaded", `document.querySelector("#view-source pre").textContent.includes("Content-Disposition")`)
	if got := text("#view-source pre"); !strings.Contains(got, "Subject: "+subject) || !strings.Contains(got, "<script>") {
		t.Errorf("source tab lacks the raw message")
	}
	// The keyboard: 3 is the headers tab.
	do("headers tab", chromedp.KeyEvent("3"), chromedp.WaitVisible(chromedp.CSS("#view-headers table")))
	if got := text("#view-headers table"); !strings.Contains(got, "Message-ID") || !strings.Contains(got, "Received") {
		t.Errorf("headers tab = %q", got)
	}

	do("download the attachment", chromedp.Click(chromedp.CSS("#attachments a.attachment")))
	var got []byte
	for end := time.Now().Add(15 * time.Second); time.Now().Before(end); time.Sleep(100 * time.Millisecond) {
		if b, err := os.ReadFile(filepath.Join(downloads, "numbers.csv")); err == nil && len(b) > 0 {
			got = b
			break
		}
	}
	if string(got) != "a,b\r\n1,2" {
		t.Errorf("downloaded attachment = %q (files: %v)", got, listFiles(downloads))
	}

	search := func(q string) {
		step = "search " + q
		if _, err := chromedp.Run(ctx, chromedp.Evaluate[string](`document.querySelector("#search").value = ""`)); err != nil {
			t.Fatalf("clear search: %v", err)
		}
		// Typed for real, Enter submits.
		do("search "+q, chromedp.SendKeys(chromedp.CSS("#search"), q+"\r"))
	}
	search("subject:nothing-like-this")
	until("no match", `document.querySelector("#count").textContent === "No matches"`)
	search("from:shop has:attachment")
	until("one match", `document.querySelectorAll("#list li.msg-row").length === 1 && document.querySelector("#count").textContent.startsWith("1–1 of 1")`)

	do("delete", chromedp.Click(chromedp.CSS("#delete-btn")))
	until("deleted", `document.querySelectorAll("#list li.msg-row").length === 0 && document.querySelector("#view").hidden`)
	if code, b := s.get(t, "/api/v1/stats"); code != 200 || !strings.Contains(string(b), `"messages":0`) {
		t.Errorf("after delete in the UI the store has: %s", b)
	}

	// The keyboard alone: Escape clears the search, j/k move, u toggles read, # deletes.
	for _, subj := range []string{"kbd first", "kbd second"} {
		step = "send " + subj
		sendPlain(t, s, "kb@dev.test", "k@example.com", "From: kb@dev.test\r\nTo: k@example.com\r\nSubject: "+subj+"\r\n\r\nkeys\r\n")
	}
	do("clear the search with Escape", chromedp.Click(chromedp.CSS("#search")), chromedp.KeyEvent(kb.Escape))
	until("both messages listed", `document.querySelectorAll("#list li.msg-row").length === 2`)
	do("j opens the newest", chromedp.Click(chromedp.CSS(".list-head")), chromedp.KeyEvent("j"))
	until("newest open", `document.querySelector("#v-subject").textContent === "kbd second"`)
	do("j moves down", chromedp.KeyEvent("j"))
	until("older open", `document.querySelector("#v-subject").textContent === "kbd first" && document.querySelectorAll("#list li.selected").length === 1`)
	do("k moves up", chromedp.KeyEvent("k"))
	until("newest again", `document.querySelector("#v-subject").textContent === "kbd second"`)
	until("opened means read", `!document.querySelector("#list li.selected").classList.contains("unread")`)
	do("u marks it unread", chromedp.KeyEvent("u"))
	until("unread again", `document.querySelector("#list li.selected") && document.querySelector("#list li.selected").classList.contains("unread")`)
	do("# deletes it", chromedp.KeyEvent("#"))
	until("one left, the other opened", `document.querySelectorAll("#list li.msg-row").length === 1 && document.querySelector("#v-subject").textContent === "kbd first"`)
}

// frameContent reads the preview frame: the text of #greet and whether its script ran. A
// sandboxed frame has an opaque origin, so Chrome may run it as a separate target; then the
// test attaches to that target.
func frameContent(t *testing.T, ctx context.Context) (greet string, ran bool) {
	t.Helper()
	for end := time.Now().Add(10 * time.Second); time.Now().Before(end); time.Sleep(100 * time.Millisecond) {
		// Detached (own-process) frame first: cancelling its context must not close it.
		frames, err := chromedp.Run(ctx, chromedp.Nodes(chromedp.CSS("#html-frame")))
		if err == nil && len(frames) == 1 && frames[0].ContentDocument != nil {
			g, err := chromedp.Run(ctx, chromedp.Text(chromedp.CSS("#greet"), chromedp.FromNode(frames[0].ContentDocument)))
			if err == nil && g != "" {
				a, _ := chromedp.Run(ctx, chromedp.AttributeValue(chromedp.CSS("body"), "data-ran", chromedp.FromNode(frames[0].ContentDocument)))
				return g, a.Exists
			}
		}
		infos, err := chromedp.Targets(ctx)
		if err != nil {
			continue
		}
		for _, info := range infos {
			if info.Type != "iframe" || !strings.Contains(info.URL, "/html") {
				continue
			}
			fctx, cancel := chromedp.NewContext(ctx, chromedp.WithTargetID(info.TargetID), chromedp.WithDetachOnCancel())
			g, err := chromedp.Run(fctx, chromedp.Text(chromedp.CSS("#greet")))
			a, _ := chromedp.Run(fctx, chromedp.AttributeValue(chromedp.CSS("body"), "data-ran"))
			cancel()
			if err == nil && g != "" {
				return g, a.Exists
			}
		}
	}
	t.Error("could not read the preview frame's document")
	return "", false
}

// sendPlain sends one message over SMTP without STARTTLS (net/smtp's SendMail would insist on
// verifying the sandbox's self-signed certificate).
func sendPlain(t *testing.T, s *sandboxServer, from, to, msg string) {
	t.Helper()
	c, err := smtp.Dial(net.JoinHostPort(s.SMTPHost, strconv.Itoa(s.SMTPPort)))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := c.Mail(from); err != nil {
		t.Fatal(err)
	}
	if err := c.Rcpt(to); err != nil {
		t.Fatal(err)
	}
	w, err := c.Data()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := w.Write([]byte(msg)); err != nil {
		t.Fatal(err)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	c.Quit()
}
