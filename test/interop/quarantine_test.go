//go:build interop

package interop

import (
	"encoding/json"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestAttachmentPolicyRejects: with the default configuration an executable attachment is
// refused at the end of data with 550 5.7.1 naming the file, and nothing is delivered.
func TestAttachmentPolicyRejects(t *testing.T) {
	p := startPostamt(t, postamtConfig{Mailboxes: []string{"alice@example.test"}})
	f := filepath.Join(t.TempDir(), "invoice.pdf.exe")
	writeFile(t, f, "MZ\x90\x00 not really a program")
	res := swaks(t, p.Host, p.Port, "--from", senderAddr, "--to", "alice@example.test",
		"--header", "Subject: invoice", "--attach-type", "application/pdf", "--attach", "@"+f)
	reply := requireReply(t, res, "550 5.7.1 Message refused: attachment \"invoice.pdf.exe\"")
	if !strings.Contains(reply, ".exe") {
		t.Errorf("reply %q does not name the type", reply)
	}
	p.waitForLog(t, mustRe(`msg="message rejected"`), mustRe(`attachments=blocked`))
}

// TestQuarantineCLI: a message the attachment policy quarantines gets a 250 but is not
// delivered; `postamt quarantine list/show` find it with the reason, `release` (carried out by
// the running server) delivers it, `delete` removes another one for good.
func TestQuarantineCLI(t *testing.T) {
	p := startPostamt(t, postamtConfig{Mailboxes: []string{"alice@example.test"},
		Extra: "[checks.attachments]\naction = \"quarantine\"\n"})
	bin := postamtBinary(t)
	cfg := filepath.Join(filepath.Dir(p.DataDir), "postamt.toml")
	f := filepath.Join(t.TempDir(), "tool.scr")
	writeFile(t, f, "harmless bytes")

	var ids []string
	for _, subj := range []string{"held one", "held two"} {
		res := swaks(t, p.Host, p.Port, "--from", senderAddr, "--to", "alice@example.test",
			"--header", "Subject: "+subj, "--attach-type", "application/octet-stream", "--attach", "@"+f)
		ids = append(ids, queueIDFrom(requireReply(t, res, "250 ")))
	}
	p.waitForLog(t, mustRe(`msg=quarantined`), mustRe(`id=`+ids[1]))
	time.Sleep(300 * time.Millisecond)
	if got := listFiles(p.MaildirNew("alice@example.test")); len(got) != 0 {
		t.Fatalf("quarantined messages were delivered: %v", got)
	}

	out := runCmd(t, "", bin, "quarantine", "list", "-c", cfg, "--json")
	var items []struct {
		ID, Reason string
		Rcpts      []string
	}
	if err := json.Unmarshal([]byte(out.Output), &items); err != nil || len(items) != 2 {
		t.Fatalf("list --json: %v, %d items", err, len(items))
	}
	if items[0].ID != ids[0] || !strings.Contains(items[0].Reason, `"tool.scr": blocked file type .scr`) || items[0].Rcpts[0] != "alice@example.test" {
		t.Errorf("item %+v", items[0])
	}
	out = runCmd(t, "", bin, "quarantine", "list", "-c", cfg)
	if !strings.Contains(out.Output, ids[0]) || !strings.Contains(out.Output, "2 message(s)") {
		t.Errorf("list table:\n%s", out.Output)
	}
	out = runCmd(t, "", bin, "quarantine", "show", "-c", cfg, ids[0])
	if out.ExitCode != 0 || !strings.Contains(out.Output, "Reason: attachment") || !strings.Contains(out.Output, "Subject: held one") {
		t.Errorf("show:\n%s", out.Output)
	}

	out = runCmd(t, "", bin, "quarantine", "release", "-c", cfg, "--wait", "15s", ids[0])
	if out.ExitCode != 0 || !strings.Contains(out.Output, ids[0]+": released") {
		t.Fatalf("release failed:\n%s", out.Output)
	}
	m := findMessage(t, p.MaildirNew("alice@example.test"), "held one")
	if !strings.Contains(m.Raw, "tool.scr") {
		t.Errorf("released message lost its attachment")
	}
	p.waitForLog(t, mustRe(`msg="released from quarantine"`), mustRe(`quarantine_id=`+ids[0]))

	out = runCmd(t, "", bin, "quarantine", "delete", "-c", cfg, ids[1])
	if out.ExitCode != 0 {
		t.Fatalf("delete failed")
	}
	out = runCmd(t, "", bin, "quarantine", "list", "-c", cfg, "--json")
	if strings.TrimSpace(out.Output) != "[]" {
		t.Errorf("after release and delete, list = %s", out.Output)
	}
	if out := runCmd(t, "", bin, "quarantine", "show", "-c", cfg, ids[1]); out.ExitCode == 0 || !strings.Contains(out.Output, "not in quarantine") {
		t.Errorf("show of a deleted message: exit %d\n%s", out.ExitCode, out.Output)
	}
	if got := listFiles(p.MaildirNew("alice@example.test")); len(got) != 1 {
		t.Errorf("%d messages delivered, want only the released one", len(got))
	}
}
