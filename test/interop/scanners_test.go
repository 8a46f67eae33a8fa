//go:build interop

package interop

import (
	"encoding/hex"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// The content-scanner tests start a real rspamd and a real clamd (Debian packages) from temp
// dirs on loopback ports, with Postamt in front of them, and send mail with swaks.

// gtube is rspamd's spam test pattern (its GTUBE symbol rejects on sight).
const gtube = "XJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X"

// eicar is the anti-virus test file; no real scanner database is used: the test writes a
// one-line .ndb signature for it, so clamd loads in well under a second and nothing is downloaded.
const eicar = `X5O!P%@AP[4\PZX54(P^)7CC)7}$EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*`

// daemon is a scanner process started by a test, in its own process group.
type daemon struct {
	cmd    *exec.Cmd
	out    *syncBuffer
	exited chan struct{}
}

func startDaemon(t *testing.T, what string, name string, args ...string) *daemon {
	t.Helper()
	d := &daemon{out: &syncBuffer{}, exited: make(chan struct{})}
	d.cmd = exec.Command(name, args...)
	d.cmd.Stdout, d.cmd.Stderr = d.out, d.out
	d.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := d.cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", what, err)
	}
	go func() { d.cmd.Wait(); close(d.exited) }()
	t.Cleanup(func() {
		// The group holds rspamd's workers; it is ours alone (Setpgid above).
		syscall.Kill(-d.cmd.Process.Pid, syscall.SIGTERM)
		select {
		case <-d.exited:
		case <-time.After(waitTimeout):
			t.Errorf("%s did not stop within %v; killing it", what, waitTimeout)
			syscall.Kill(-d.cmd.Process.Pid, syscall.SIGKILL)
			<-d.exited
		}
		if showLogs(t) {
			t.Logf("%s output:\n%s", what, d.out.String())
		}
	})
	return d
}

// startRspamd runs rspamd with the packaged rules (/etc/rspamd) but its own local config dir:
// only the normal worker, on a free port; no controller, proxy or fuzzy worker; DNS pointed at a
// dead loopback port so no query leaves the machine; no local_addrs (our client is 127.0.0.1,
// and rspamd ignores GTUBE from "local" senders). It returns the worker's URL.
func startRspamd(t *testing.T) string {
	t.Helper()
	bin := requireTool(t, "rspamd")
	if _, err := os.Stat("/etc/rspamd/rspamd.conf"); err != nil {
		skipOrFail(t, "interop: /etc/rspamd/rspamd.conf missing (Debian rspamd package)")
	}
	dir := t.TempDir()
	port := freePort(t)
	for _, d := range []string{"local/override.d", "local/local.d", "db", "run", "log"} {
		if err := os.MkdirAll(filepath.Join(dir, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	writeFile(t, filepath.Join(dir, "local/override.d/worker-normal.inc"),
		fmt.Sprintf("bind_socket = \"127.0.0.1:%d\";\ncount = 1;\n", port))
	writeFile(t, filepath.Join(dir, "local/override.d/worker-controller.inc"), "enabled = false;\n")
	writeFile(t, filepath.Join(dir, "local/override.d/worker-proxy.inc"), "enabled = false;\n")
	writeFile(t, filepath.Join(dir, "local/override.d/logging.inc"), "type = \"console\";\nlevel = \"notice\";\n")
	// Offline, DNS-based rules fail and add a few points to every message: enough for rspamd's
	// greylist action (score 4), which would make the "normal message" cases flaky.
	writeFile(t, filepath.Join(dir, "local/local.d/actions.conf"), "greylist = null;\n")
	writeFile(t, filepath.Join(dir, "local/local.d/options.inc"),
		"local_addrs = [];\ndns { nameserver = [\"127.0.0.1:1\"]; timeout = 0.5s; retransmits = 1; }\n")
	args := []string{"-f", "-c", "/etc/rspamd/rspamd.conf",
		"--var", "LOCAL_CONFDIR=" + filepath.Join(dir, "local"), "--var", "DBDIR=" + filepath.Join(dir, "db"),
		"--var", "RUNDIR=" + filepath.Join(dir, "run"), "--var", "LOGDIR=" + filepath.Join(dir, "log")}
	if os.Geteuid() == 0 {
		args = append(args, "-i", "-u", "root", "-g", "root")
	}
	d := startDaemon(t, "rspamd", bin, args...)
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	// rspamd loads a few hundred Lua rules before it binds: seconds on an idle machine, much
	// longer on a loaded CI runner.
	d.waitForPort(t, addr, 2*time.Minute)
	return "http://" + addr
}

// startClamd runs clamd with a database holding one signature (EICAR, by its bytes) and
// returns its TCP address and unix socket path.
func startClamd(t *testing.T) (tcpAddr, sock string) {
	t.Helper()
	bin := requireTool(t, "clamd")
	dir := t.TempDir()
	db := filepath.Join(dir, "db")
	if err := os.Mkdir(db, 0o755); err != nil {
		t.Fatal(err)
	}
	writeFile(t, filepath.Join(db, "postamt-test.ndb"), "Eicar-Test-Signature:0:*:"+hex.EncodeToString([]byte(eicar))+"\n")
	port := freePort(t)
	sock = filepath.Join(dir, "clamd.sock")
	conf := filepath.Join(dir, "clamd.conf")
	writeFile(t, conf, fmt.Sprintf(`Foreground yes
DatabaseDirectory %s
TCPSocket %d
TCPAddr 127.0.0.1
LocalSocket %s
PidFile %s
TemporaryDirectory %s
StreamMaxLength 1M
Bytecode no
LogTime yes
`, db, port, sock, filepath.Join(dir, "clamd.pid"), dir))
	d := startDaemon(t, "clamd", bin, "-c", conf)
	tcpAddr = fmt.Sprintf("127.0.0.1:%d", port)
	d.waitForPort(t, tcpAddr, time.Minute)
	return tcpAddr, sock
}

// waitForPort waits until addr accepts connections, failing early if the daemon exits.
func (d *daemon) waitForPort(t *testing.T, addr string, limit time.Duration) {
	t.Helper()
	deadline := time.Now().Add(limit)
	for {
		if c, err := net.DialTimeout("tcp", addr, time.Second); err == nil {
			c.Close()
			return
		}
		select {
		case <-d.exited:
			t.Fatalf("%s exited before listening on %s (%v):\n%s", d.cmd.Path, addr, d.cmd.ProcessState, d.out.String())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s does not listen on %s after %v", d.cmd.Path, addr, limit)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func requireReply(t *testing.T, res cmdResult, prefix string) string {
	t.Helper()
	reply := swaksDataReply(res.Output)
	if !strings.HasPrefix(reply, prefix) {
		t.Fatalf("reply to end of DATA = %q, want %q...", reply, prefix)
	}
	return reply
}

// TestRspamdGTUBERejected: with the default reject_action, rspamd's GTUBE verdict becomes a
// 550 5.7.1 with a plain reason, and a normal message is delivered with rspamd's X-Spam
// headers (the score rspamd gave it).
func TestRspamdGTUBERejected(t *testing.T) {
	url := startRspamd(t)
	p := startPostamt(t, postamtConfig{Mailboxes: []string{"alice@example.test"},
		Extra: "[checks.rspamd]\nenabled = true\nurl = " + tomlString(url) + "\n"})

	res := swaks(t, p.Host, p.Port, "--from", senderAddr, "--to", "alice@example.test",
		"--header", "Subject: gtube", "--body", "Buy now\n"+gtube+"\n")
	reply := requireReply(t, res, "550 5.7.1")
	if !strings.Contains(reply, "spam") {
		t.Errorf("reply %q does not say why", reply)
	}
	p.waitForLog(t, mustRe(`msg="message rejected"`), mustRe(`rspamd=reject`))

	res = swaks(t, p.Host, p.Port, "--from", senderAddr, "--to", "alice@example.test",
		"--header", "Subject: hello rspamd", "--body", "A perfectly normal note about lunch.\n")
	requireReply(t, res, "250 ")
	m := findMessage(t, p.MaildirNew("alice@example.test"), "hello rspamd")
	if m.Header.Get("X-Spam-Score") == "" || m.Header.Get("X-Spam-Status") == "" {
		t.Errorf("delivered message lacks rspamd's X-Spam headers:\n%s", m.Raw)
	}
}

// TestRspamdGTUBETagged: with reject_action = "tag" the same GTUBE message is accepted and
// delivered with X-Spam: Yes.
func TestRspamdGTUBETagged(t *testing.T) {
	url := startRspamd(t)
	p := startPostamt(t, postamtConfig{Mailboxes: []string{"alice@example.test"},
		Extra: "[checks.rspamd]\nenabled = true\nreject_action = \"tag\"\nurl = " + tomlString(url) + "\n"})
	res := swaks(t, p.Host, p.Port, "--from", senderAddr, "--to", "alice@example.test",
		"--header", "Subject: gtube tagged", "--body", gtube+"\n")
	requireReply(t, res, "250 ")
	m := findMessage(t, p.MaildirNew("alice@example.test"), "gtube tagged")
	if got := m.Header.Get("X-Spam"); got != "Yes" {
		t.Errorf("X-Spam = %q, want Yes:\n%s", got, m.Raw)
	}
	if !strings.Contains(m.Header.Get("X-Spam-Status"), "GTUBE") {
		t.Errorf("X-Spam-Status = %q, want the GTUBE symbol", m.Header.Get("X-Spam-Status"))
	}
}

// TestRspamdDownFailOpenAndClosed: with nothing listening at the URL, fail-open delivers
// (and logs the error), fail-closed answers 451 4.7.1.
func TestRspamdDownFailOpenAndClosed(t *testing.T) {
	dead := fmt.Sprintf("http://127.0.0.1:%d", freePort(t))
	for _, closed := range []bool{false, true} {
		t.Run(fmt.Sprintf("fail_closed=%v", closed), func(t *testing.T) {
			p := startPostamt(t, postamtConfig{Mailboxes: []string{"alice@example.test"},
				Extra: fmt.Sprintf("[checks.rspamd]\nenabled = true\nfail_closed = %v\nurl = %s\n", closed, tomlString(dead))})
			res := swaks(t, p.Host, p.Port, "--from", senderAddr, "--to", "alice@example.test",
				"--header", "Subject: rspamd down", "--body", "hello\n")
			if closed {
				requireReply(t, res, "451 4.7.1")
				return
			}
			requireReply(t, res, "250 ")
			findMessage(t, p.MaildirNew("alice@example.test"), "rspamd down")
			p.waitForLog(t, mustRe(`msg=queued`), mustRe(`rspamd=error`))
		})
	}
}

// TestClamdEICAR: the EICAR file attached to a message is refused with 554 5.7.1 naming the
// signature, over TCP and over clamd's unix socket; a clean attachment passes and is delivered.
func TestClamdEICAR(t *testing.T) {
	tcpAddr, sock := startClamd(t)
	dir := t.TempDir()
	bad := filepath.Join(dir, "eicar.txt")
	writeFile(t, bad, eicar)
	good := filepath.Join(dir, "report.txt")
	writeFile(t, good, "quarterly numbers: 1 2 3\n")
	for name, addr := range map[string]string{"tcp": tcpAddr, "unix": sock} {
		t.Run(name, func(t *testing.T) {
			p := startPostamt(t, postamtConfig{Mailboxes: []string{"alice@example.test"},
				Extra: "[checks.clamav]\nenabled = true\nmax_size = \"1MiB\"\naddress = " + tomlString(addr) + "\n"})
			res := swaks(t, p.Host, p.Port, "--from", senderAddr, "--to", "alice@example.test",
				"--header", "Subject: virus", "--attach-type", "text/plain", "--attach", "@"+bad)
			reply := requireReply(t, res, "554 5.7.1 Message refused: virus found (Eicar-Test-Signature)")
			t.Logf("reply: %s", reply)
			p.waitForLog(t, mustRe(`msg="message rejected"`), mustRe(`clamav=virus`))

			res = swaks(t, p.Host, p.Port, "--from", senderAddr, "--to", "alice@example.test",
				"--header", "Subject: clean attachment", "--attach-type", "text/plain", "--attach", "@"+good)
			requireReply(t, res, "250 ")
			m := findMessage(t, p.MaildirNew("alice@example.test"), "clean attachment")
			if !strings.Contains(m.Raw, "report.txt") {
				t.Errorf("delivered message lost its attachment:\n%s", m.Raw)
			}
		})
	}
}

// TestClamdStreamLimit: a message over clamd's StreamMaxLength (1 MiB here) while our max_size
// is larger: clamd answers "size limit exceeded", and the fail-closed default answers 451.
func TestClamdStreamLimit(t *testing.T) {
	tcpAddr, _ := startClamd(t)
	p := startPostamt(t, postamtConfig{Mailboxes: []string{"alice@example.test"},
		Extra: "[checks.clamav]\nenabled = true\nmax_size = \"10MiB\"\naddress = " + tomlString(tcpAddr) + "\n"})
	big := strings.Repeat("0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcde\n", 40000) // 2.5 MB
	dir := t.TempDir()
	f := filepath.Join(dir, "big.txt")
	writeFile(t, f, big)
	res := swaks(t, p.Host, p.Port, "--from", senderAddr, "--to", "alice@example.test",
		"--header", "Subject: big", "--attach-type", "text/plain", "--attach", "@"+f)
	requireReply(t, res, "451 4.7.1")
	p.waitForLog(t, mustRe(`clamav=error`))
}

// TestClamdQuarantine: with action = "quarantine" the EICAR message is accepted, not
// delivered, and listed in the quarantine with clamd's finding as the reason.
func TestClamdQuarantine(t *testing.T) {
	tcpAddr, _ := startClamd(t)
	p := startPostamt(t, postamtConfig{Mailboxes: []string{"alice@example.test"},
		Extra: "[checks.clamav]\nenabled = true\naction = \"quarantine\"\nmax_size = \"1MiB\"\naddress = " + tomlString(tcpAddr) + "\n"})
	bad := filepath.Join(t.TempDir(), "eicar.txt")
	writeFile(t, bad, eicar)
	res := swaks(t, p.Host, p.Port, "--from", senderAddr, "--to", "alice@example.test",
		"--header", "Subject: virus held", "--attach-type", "text/plain", "--attach", "@"+bad)
	id := queueIDFrom(requireReply(t, res, "250 "))
	p.waitForLog(t, mustRe(`msg=quarantined`), mustRe(`id=`+id), mustRe(`clamav=virus`))
	out := runCmd(t, "", postamtBinary(t), "quarantine", "list", "-c", filepath.Join(filepath.Dir(p.DataDir), "postamt.toml"))
	if !strings.Contains(out.Output, id) || !strings.Contains(out.Output, "virus found: Eicar-Test-Signature") {
		t.Errorf("quarantine list does not show %s with the virus:\n%s", id, out.Output)
	}
	if got := listFiles(p.MaildirNew("alice@example.test")); len(got) != 0 {
		t.Errorf("the infected message was delivered: %v", got)
	}
}
