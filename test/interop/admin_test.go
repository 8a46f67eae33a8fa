//go:build interop

package interop

import (
	"encoding/json"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"
)

// queueEntry is the part of `postamt queue list --json` rows this test reads.
type queueEntry struct {
	ID    string `json:"id"`
	From  string `json:"from"`
	Rcpt  string `json:"rcpt"`
	State string `json:"state"`
	Held  bool   `json:"held"`
}

// TestQueueAdminCLI: the postamt binary administers the queue of a separate running `postamt
// serve` through its admin socket and token, with a message from swaks that cannot be delivered
// (the LMTP store is down): list, show, hold, release, bounce (whose DSN joins the queue) and
// delete; after the server stops, the socket is gone and changes are refused.
func TestQueueAdminCLI(t *testing.T) {
	requireTool(t, "swaks")
	down := freePort(t) // nothing listens there: every LMTP attempt is deferred
	p := startPostamt(t, postamtConfig{Mailboxes: []string{"alice@example.test"}, Transport: "lmtp",
		LMTPAddress: "127.0.0.1:" + strconv.Itoa(down)})
	bin := postamtBinary(t)
	q := func(args ...string) cmdResult {
		return runCmd(t, "", bin, append(append([]string{"queue"}, args...), "--data-dir", p.DataDir)...)
	}
	list := func() []queueEntry {
		res := q("list", "--json")
		var es []queueEntry
		if res.ExitCode != 0 || json.Unmarshal([]byte(res.Output), &es) != nil {
			t.Fatalf("queue list --json: exit %d\n%s", res.ExitCode, res.Output)
		}
		return es
	}

	for _, name := range []string{"admin.sock", "admin.token"} {
		fi, err := os.Stat(filepath.Join(p.DataDir, name))
		if err != nil || fi.Mode().Perm() != 0o600 {
			t.Fatalf("%s: %v %v, want mode 0600", name, fi, err)
		}
	}

	res := swaks(t, p.Host, p.Port, "--from", senderAddr, "--to", "alice@example.test", "--header", "Subject: admin interop")
	id := queueIDFrom(swaksDataReply(res.Output))
	if id == "" {
		t.Fatalf("no queue ID in the reply to DATA:\n%s", res.Output)
	}
	p.waitForLog(t, regexp.MustCompile(`msg=delivery`), regexp.MustCompile(`id=`+id), regexp.MustCompile(`status=deferred`))

	if res := q("list"); res.ExitCode != 0 || !strings.Contains(res.Output, id) || strings.Contains(res.Output, "not running") {
		t.Fatalf("queue list: exit %d\n%s", res.ExitCode, res.Output)
	}
	if res := q("show", id); res.ExitCode != 0 || !strings.Contains(res.Output, "alice@example.test: pending, 1 attempt(s), route lmtp") ||
		!regexp.MustCompile(`last reply: 4\d\d 4\.`).MatchString(res.Output) || !strings.Contains(res.Output, "next attempt: ") {
		t.Fatalf("queue show: exit %d\n%s", res.ExitCode, res.Output)
	}
	if res := q("hold", id); res.ExitCode != 0 {
		t.Fatalf("queue hold: exit %d", res.ExitCode)
	}
	if es := list(); len(es) != 1 || !es[0].Held {
		t.Fatalf("after hold: %+v", es)
	}
	if res := q("release", id); res.ExitCode != 0 {
		t.Fatalf("queue release: exit %d", res.ExitCode)
	}
	if res := q("bounce", id, "--reason", "interop test says no"); res.ExitCode != 0 || !strings.Contains(res.Output, "1 recipient(s) failed") {
		t.Fatalf("queue bounce: exit %d\n%s", res.ExitCode, res.Output)
	}
	// The DSN to the (local) sender is queued from <> and, with the store down, waits too.
	var dsn queueEntry
	for end := time.Now().Add(waitTimeout); time.Now().Before(end) && dsn.ID == ""; time.Sleep(100 * time.Millisecond) {
		for _, e := range list() {
			if e.ID == id {
				continue
			}
			if e.From == "" && e.Rcpt == senderAddr {
				dsn = e
			}
		}
	}
	if dsn.ID == "" {
		t.Fatalf("no DSN in the queue after the bounce: %+v", list())
	}
	if es := list(); len(es) != 1 || es[0].ID != dsn.ID {
		t.Fatalf("the bounced message is still queued: %+v", es)
	}
	if res := q("delete", dsn.ID); res.ExitCode != 0 || !strings.Contains(res.Output, "deleted") {
		t.Fatalf("queue delete: exit %d\n%s", res.ExitCode, res.Output)
	}
	if es := list(); len(es) != 0 {
		t.Fatalf("queue not empty: %+v", es)
	}

	p.stop(t)
	if _, err := os.Stat(filepath.Join(p.DataDir, "admin.sock")); !os.IsNotExist(err) {
		t.Fatalf("socket left after shutdown: %v", err)
	}
	if res := q("hold", id); res.ExitCode == 0 || !strings.Contains(res.Output, "the server is not running") {
		t.Fatalf("hold without a server: exit %d\n%s", res.ExitCode, res.Output)
	}
	if res := q("list"); res.ExitCode != 0 || !strings.Contains(res.Output, "the server is not running; read ") {
		t.Fatalf("list without a server: exit %d\n%s", res.ExitCode, res.Output)
	}
}
