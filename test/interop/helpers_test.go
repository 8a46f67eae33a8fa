//go:build interop

package interop

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/mail"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// waitTimeout bounds every wait in these tests (server start, delivery,
// shutdown of a peer).
const waitTimeout = 20 * time.Second

// testDomain is the local domain every Postamt instance in these tests serves.
const testDomain = "example.test"

// senderAddr is the envelope sender used by the tests. It is a local mailbox,
// so that a bounce (if any) stays on this machine.
const senderAddr = "sender@example.test"

var binDir string // temp dir of the postamt binary built by postamtBinary; TestMain removes it

func TestMain(m *testing.M) {
	code := m.Run()
	if binDir != "" {
		os.RemoveAll(binDir)
	}
	os.Exit(code)
}

// ---------------------------------------------------------------------------
// Environment checks

// inCI reports whether the tests run in CI (CI=true), where a missing peer
// tool is a failure instead of a skip.
func inCI() bool { return os.Getenv("CI") == "true" }

// showLogs reports whether a cleanup should log a server's output: when the
// test failed, or always with INTEROP_LOGS=1.
func showLogs(t *testing.T) bool { return t.Failed() || os.Getenv("INTEROP_LOGS") != "" }

// skipOrFail skips the test with msg, or fails it when CI=true.
func skipOrFail(t *testing.T, msg string) {
	t.Helper()
	if inCI() {
		t.Fatalf("%s (CI=true, so this is a failure; run scripts/install-test-deps.sh)", msg)
	}
	t.Skipf("%s; run scripts/install-test-deps.sh as root to enable this test", msg)
}

// requireTool returns the path of the executable name (looked up in PATH,
// then /usr/sbin and /usr/bin), or skips/fails the test when it is missing.
func requireTool(t *testing.T, name string) string {
	t.Helper()
	if p, err := exec.LookPath(name); err == nil {
		return p
	}
	for _, dir := range []string{"/usr/sbin", "/usr/bin", "/sbin"} {
		p := filepath.Join(dir, name)
		if st, err := os.Stat(p); err == nil && st.Mode().IsRegular() && st.Mode()&0o111 != 0 {
			return p
		}
	}
	skipOrFail(t, fmt.Sprintf("interop: %q not found", name))
	return ""
}

// requireRoot skips/fails the test unless it runs as root (Postfix and
// Dovecot instances must be started by root).
func requireRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		skipOrFail(t, "interop: this test starts Postfix/Dovecot and must run as root")
	}
}

// lookupUser returns the numeric uid and gid of a system user, or
// skips/fails the test when it does not exist.
func lookupUser(t *testing.T, name string) (uid, gid int) {
	t.Helper()
	u, err := user.Lookup(name)
	if err != nil {
		skipOrFail(t, fmt.Sprintf("interop: system user %q missing: %v", name, err))
	}
	uid, _ = strconv.Atoi(u.Uid)
	gid, _ = strconv.Atoi(u.Gid)
	return uid, gid
}

// ---------------------------------------------------------------------------
// Small utilities

// freePort returns a TCP port on 127.0.0.1 that was free a moment ago.
func freePort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("freePort: %v", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// waitForPort waits until something accepts TCP connections on addr.
func waitForPort(t *testing.T, addr string) {
	t.Helper()
	deadline := time.Now().Add(waitTimeout)
	for {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err == nil {
			c.Close()
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("nothing listens on %s after %v: %v", addr, waitTimeout, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// sharedTempDir returns a t.TempDir() that other system users (postfix,
// dovecot, mail) can traverse: the test's temp root is created 0700.
func sharedTempDir(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	for _, d := range []string{filepath.Dir(dir), dir} {
		if err := os.Chmod(d, 0o755); err != nil {
			t.Fatalf("chmod %s: %v", d, err)
		}
	}
	return dir
}

// itoa is strconv.Itoa.
func itoa(i int) string { return strconv.Itoa(i) }

// writeFile writes content to path (mode 0644) or fails the test.
func writeFile(t *testing.T, path, content string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		t.Fatalf("write %s: %v", path, err)
	}
}

// runDaemonCtl runs a daemon's control command (postfix start/stop,
// dovecot, doveadm stop) bounded by waitTimeout. Its output goes to a file,
// not a pipe: a daemon that forks off keeps a pipe open and would block us.
func runDaemonCtl(t *testing.T, name string, args ...string) (string, error) {
	t.Helper()
	f, err := os.CreateTemp("", "interop-ctl-*.out")
	if err != nil {
		t.Fatal(err)
	}
	defer os.Remove(f.Name())
	defer f.Close()
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Stdout = f
	cmd.Stderr = f
	err = cmd.Run()
	if ctx.Err() != nil {
		err = fmt.Errorf("timed out after %v: %w", waitTimeout, err)
	}
	out, _ := os.ReadFile(f.Name())
	return string(out), err
}

// syncBuffer is a goroutine-safe bytes.Buffer for a child process's output.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// cmdResult is the outcome of runCmd.
type cmdResult struct {
	Output   string // stdout and stderr, interleaved
	ExitCode int    // -1 when the command could not run or was killed
}

// runCmd runs name with args (stdin from the given string, may be empty)
// bounded by waitTimeout and returns its combined output and exit status.
// The command line and output are logged.
func runCmd(t *testing.T, stdin string, name string, args ...string) cmdResult {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Stdin = strings.NewReader(stdin)
	var out syncBuffer
	cmd.Stdout = &out
	cmd.Stderr = &out
	cmd.WaitDelay = 2 * time.Second
	err := cmd.Run()
	res := cmdResult{Output: out.String(), ExitCode: -1}
	var ee *exec.ExitError
	switch {
	case err == nil:
		res.ExitCode = 0
	case errors.As(err, &ee):
		res.ExitCode = ee.ExitCode()
	}
	if ctx.Err() != nil {
		t.Errorf("%s timed out after %v", name, waitTimeout)
	}
	t.Logf("$ %s %s\n(exit %d, err %v)\n%s", name, shellJoin(args), res.ExitCode, err, res.Output)
	return res
}

func shellJoin(args []string) string {
	q := make([]string, len(args))
	for i, a := range args {
		if a == "" || strings.ContainsAny(a, " \t\n'\"\\$") {
			q[i] = strconv.Quote(a)
		} else {
			q[i] = a
		}
	}
	return strings.Join(q, " ")
}

// tomlString returns s as a TOML basic string.
func tomlString(s string) string {
	r := strings.NewReplacer(`\`, `\\`, `"`, `\"`, "\n", `\n`, "\t", `\t`)
	return `"` + r.Replace(s) + `"`
}

// tomlList returns ss as a TOML array of basic strings.
func tomlList(ss []string) string {
	q := make([]string, len(ss))
	for i, s := range ss {
		q[i] = tomlString(s)
	}
	return "[" + strings.Join(q, ", ") + "]"
}

// ---------------------------------------------------------------------------
// Maildir helpers

// waitForFiles waits until dir holds at least n regular files (Maildir new/
// or cur/) and returns their paths, sorted. It fails the test after
// waitTimeout; the cleanups then log the servers' output.
func waitForFiles(t *testing.T, dir string, n int) []string {
	t.Helper()
	deadline := time.Now().Add(waitTimeout)
	for {
		files := listFiles(dir)
		if len(files) >= n {
			return files
		}
		if time.Now().After(deadline) {
			t.Fatalf("waited %v for %d file(s) in %s, found %d: %v\ntree of the mail root:\n%s",
				waitTimeout, n, dir, len(files), files, treeOf(filepath.Dir(filepath.Dir(filepath.Dir(dir)))))
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// listFiles returns the regular, non-hidden files in dir, sorted.
func listFiles(dir string) []string {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil
	}
	var out []string
	for _, e := range ents {
		if e.Type().IsRegular() && !strings.HasPrefix(e.Name(), ".") {
			out = append(out, filepath.Join(dir, e.Name()))
		}
	}
	sort.Strings(out)
	return out
}

// treeOf lists every file under root (for failure messages).
func treeOf(root string) string {
	var sb strings.Builder
	filepath.WalkDir(root, func(p string, d os.DirEntry, err error) error {
		if err == nil {
			rel, _ := filepath.Rel(root, p)
			if d.IsDir() {
				rel += "/"
			}
			sb.WriteString("  " + rel + "\n")
		}
		return nil
	})
	return sb.String()
}

// storedMessage is a message file read back from a Maildir.
type storedMessage struct {
	Path   string
	Raw    string
	Header mail.Header
	Body   string // CRLF normalised to LF
}

// readMessage parses the message file at path or fails the test.
func readMessage(t *testing.T, path string) storedMessage {
	t.Helper()
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("read %s: %v", path, err)
	}
	m, err := mail.ReadMessage(bytes.NewReader(raw))
	if err != nil {
		t.Fatalf("parse %s: %v\n%s", path, err, raw)
	}
	body, _ := io.ReadAll(m.Body)
	return storedMessage{
		Path:   path,
		Raw:    string(raw),
		Header: m.Header,
		Body:   strings.ReplaceAll(string(body), "\r\n", "\n"),
	}
}

// findMessage waits until a file in dir contains marker and returns it.
func findMessage(t *testing.T, dir, marker string) storedMessage {
	t.Helper()
	deadline := time.Now().Add(waitTimeout)
	for {
		for _, f := range listFiles(dir) {
			if b, err := os.ReadFile(f); err == nil && strings.Contains(string(b), marker) {
				return readMessage(t, f)
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("waited %v for a message containing %q in %s; files: %v", waitTimeout, marker, dir, listFiles(dir))
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// assertDeliveryHeaders checks the trace headers a final delivery must add:
// Return-Path (the envelope sender), Delivered-To (the envelope recipient)
// and at least one Received header; receivedBy, if not empty, must appear in
// the first (topmost) Received header.
func assertDeliveryHeaders(t *testing.T, m storedMessage, sender, rcpt, receivedBy string) {
	t.Helper()
	if got := m.Header.Get("Return-Path"); !strings.EqualFold(strings.TrimSpace(got), "<"+sender+">") {
		t.Errorf("%s: Return-Path = %q, want %q", m.Path, got, "<"+sender+">")
	}
	if got := m.Header.Get("Delivered-To"); !strings.EqualFold(strings.Trim(strings.TrimSpace(got), "<>"), rcpt) {
		t.Errorf("%s: Delivered-To = %q, want %q", m.Path, got, rcpt)
	}
	rcv := m.Header["Received"]
	if len(rcv) == 0 {
		t.Errorf("%s: no Received header\n%s", m.Path, m.Raw)
		return
	}
	if receivedBy != "" && !strings.Contains(rcv[0], receivedBy) {
		t.Errorf("%s: top Received header %q does not mention %q", m.Path, rcv[0], receivedBy)
	}
	if t.Failed() {
		t.Logf("message file %s:\n%s", m.Path, m.Raw)
	}
}

// ---------------------------------------------------------------------------
// Postamt

var (
	buildOnce sync.Once
	buildPath string
	buildErr  error
	buildOut  string
)

// postamtBinary returns $POSTAMT_BIN, or builds ./cmd/postamt once per test
// binary run into a temp dir.
func postamtBinary(t *testing.T) string {
	t.Helper()
	if p := os.Getenv("POSTAMT_BIN"); p != "" {
		abs, err := filepath.Abs(p)
		if err != nil {
			t.Fatalf("POSTAMT_BIN: %v", err)
		}
		return abs
	}
	buildOnce.Do(func() {
		root, err := moduleRoot()
		if err != nil {
			buildErr = err
			return
		}
		binDir, err = os.MkdirTemp("", "postamt-interop-bin-")
		if err != nil {
			buildErr = err
			return
		}
		buildPath = filepath.Join(binDir, "postamt")
		cmd := exec.Command("go", "build", "-o", buildPath, "./cmd/postamt")
		cmd.Dir = root
		out, err := cmd.CombinedOutput()
		buildOut = string(out)
		buildErr = err
	})
	if buildErr != nil {
		t.Fatalf("go build ./cmd/postamt: %v\n%s", buildErr, buildOut)
	}
	return buildPath
}

// moduleRoot returns the directory holding go.mod.
func moduleRoot() (string, error) {
	out, err := exec.Command("go", "env", "GOMOD").Output()
	if err != nil {
		return "", fmt.Errorf("go env GOMOD: %v", err)
	}
	gomod := strings.TrimSpace(string(out))
	if gomod == "" || gomod == os.DevNull {
		return "", errors.New("not inside the postamt module")
	}
	return filepath.Dir(gomod), nil
}

// postamtConfig is what startPostamt writes into the config file.
type postamtConfig struct {
	Hostname    string   // default mx.postamt.test
	Domains     []string // default [example.test]
	Mailboxes   []string // sender@example.test is always added
	Transport   string   // "" (maildir) or "lmtp"
	LMTPAddress string
	Extra       string // raw TOML appended at the end (its own [tables])
}

// postamtServer is a running bin/postamt.
type postamtServer struct {
	Addr     string // 127.0.0.1:PORT of the SMTP listener
	Host     string
	Port     int
	Hostname string
	DataDir  string
	Config   string // the config file's text
	stderr   *syncBuffer
	cmd      *exec.Cmd
	exited   chan struct{}
}

// Logs returns what Postamt wrote to stderr so far.
func (p *postamtServer) Logs() string { return p.stderr.String() }

// MaildirNew returns <data_dir>/mail/<domain>/<localpart>/new for address.
func (p *postamtServer) MaildirNew(address string) string {
	at := strings.LastIndex(address, "@")
	return filepath.Join(p.DataDir, "mail", address[at+1:], address[:at], "new")
}

// startPostamt writes a config file, starts postamt serve with it, waits for
// the msg=ready log line (or a 220 greeting) and registers cleanups that
// stop it with SIGTERM and, if the test failed, log its stderr.
func startPostamt(t *testing.T, c postamtConfig) *postamtServer {
	t.Helper()
	bin := postamtBinary(t)
	if c.Hostname == "" {
		c.Hostname = "mx.postamt.test"
	}
	if len(c.Domains) == 0 {
		c.Domains = []string{testDomain}
	}
	mailboxes := append([]string{senderAddr}, c.Mailboxes...)
	if c.Transport == "" {
		c.Transport = "maildir"
	}

	dir := t.TempDir()
	dataDir := filepath.Join(dir, "data")
	port := freePort(t)
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))

	var cfg strings.Builder
	fmt.Fprintf(&cfg, "hostname = %s\n", tomlString(c.Hostname))
	fmt.Fprintf(&cfg, "data_dir = %s\n\n", tomlString(dataDir))
	fmt.Fprintf(&cfg, "[log]\nformat = \"text\"\nlevel = \"debug\"\n\n")
	fmt.Fprintf(&cfg, "[smtp]\nlisten = %s\n\n", tomlList([]string{addr}))
	fmt.Fprintf(&cfg, "[local]\ndomains = %s\n", tomlList(c.Domains))
	fmt.Fprintf(&cfg, "mailboxes = %s\n", tomlList(mailboxes))
	fmt.Fprintf(&cfg, "transport = %s\n", tomlString(c.Transport))
	if c.LMTPAddress != "" {
		fmt.Fprintf(&cfg, "lmtp_address = %s\n", tomlString(c.LMTPAddress))
	}
	if c.Extra != "" {
		cfg.WriteString("\n" + c.Extra + "\n")
	}
	cfgPath := filepath.Join(dir, "postamt.toml")
	writeFile(t, cfgPath, cfg.String())

	p := &postamtServer{
		Addr: addr, Host: "127.0.0.1", Port: port, Hostname: c.Hostname,
		DataDir: dataDir, Config: cfg.String(),
		stderr: &syncBuffer{}, exited: make(chan struct{}),
	}
	// Registered first, so it runs last: logs are complete by then.
	t.Cleanup(func() {
		if showLogs(t) {
			t.Logf("postamt config %s:\n%s", cfgPath, p.Config)
			t.Logf("postamt stderr:\n%s", p.Logs())
		}
	})

	p.cmd = exec.Command(bin, "serve", "--config", cfgPath)
	p.cmd.Dir = dir
	p.cmd.Stdout = p.stderr
	p.cmd.Stderr = p.stderr
	if err := p.cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", bin, err)
	}
	go func() { p.cmd.Wait(); close(p.exited) }()
	t.Cleanup(func() { p.stop(t) })

	deadline := time.Now().Add(waitTimeout)
	for {
		logs := p.Logs()
		if strings.Contains(logs, "msg=ready") || strings.Contains(logs, `"msg":"ready"`) {
			return p
		}
		select {
		case <-p.exited:
			t.Fatalf("postamt exited during start-up (%v)", p.cmd.ProcessState)
		default:
		}
		if greets(addr) {
			t.Logf("postamt: no msg=ready line yet, but %s answers with 220; going on", addr)
			return p
		}
		if time.Now().After(deadline) {
			t.Fatalf("postamt not ready after %v (no msg=ready line, no 220 on %s)", waitTimeout, addr)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// greets reports whether an SMTP server at addr sends a 220 greeting.
func greets(addr string) bool {
	c, err := net.DialTimeout("tcp", addr, 200*time.Millisecond)
	if err != nil {
		return false
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(time.Second))
	buf := make([]byte, 4)
	if _, err := io.ReadFull(c, buf); err != nil {
		return false
	}
	c.Write([]byte("QUIT\r\n"))
	return string(buf[:3]) == "220"
}

// stop sends SIGTERM and waits (bounded) for the process to exit; it kills
// the process if the graceful stop takes too long.
func (p *postamtServer) stop(t *testing.T) {
	select {
	case <-p.exited:
		return
	default:
	}
	p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.exited:
	case <-time.After(waitTimeout):
		t.Errorf("postamt did not stop within %v of SIGTERM; killing it", waitTimeout)
		p.cmd.Process.Kill()
		<-p.exited
	}
}

// waitForLog waits until a line of Postamt's log matches every regexp and
// returns that line.
func (p *postamtServer) waitForLog(t *testing.T, res ...*regexp.Regexp) string {
	t.Helper()
	deadline := time.Now().Add(waitTimeout)
	for {
		for _, line := range strings.Split(p.Logs(), "\n") {
			ok := true
			for _, re := range res {
				if !re.MatchString(line) {
					ok = false
					break
				}
			}
			if ok {
				return line
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("waited %v for a postamt log line matching all of %v", waitTimeout, res)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

var (
	idEqRe    = regexp.MustCompile(`id=(\S+)`)
	queueIDRe = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{3,}$`)
)

// queueIDFrom returns the queue ID in the 250 reply to the end of DATA:
// the word after "queued as" (Postfix style) or after "id=", else the last
// word of the reply. "" when the reply is not a 250 or has no such word.
func queueIDFrom(reply string) string {
	reply = strings.TrimSpace(reply)
	if !strings.HasPrefix(reply, "250") {
		return ""
	}
	var id string
	if i := strings.Index(reply, "queued as "); i >= 0 {
		id = strings.Fields(reply[i+len("queued as "):] + " ")[0]
	} else if m := idEqRe.FindStringSubmatch(reply); m != nil {
		id = m[1]
	} else if f := strings.Fields(reply); len(f) > 2 {
		id = f[len(f)-1]
	}
	id = strings.Trim(id, "<>()[].,;")
	if !queueIDRe.MatchString(id) {
		return ""
	}
	return id
}

// ---------------------------------------------------------------------------
// Postfix

// postfixInstance is a private Postfix started from a temp config directory.
type postfixInstance struct {
	Dir     string // root of the instance: conf/, queue/, data/, maillog
	ConfDir string
	Port    int // smtpd port on 127.0.0.1
	Addr    string
	Log     string                           // maillog file
	ctl     func(cmd string) (string, error) // runs postfix -c ConfDir cmd
}

// Logs returns the instance's maillog.
func (p *postfixInstance) Logs() string {
	b, _ := os.ReadFile(p.Log)
	return string(b)
}

// startPostfix starts a Postfix instance (own config, queue and data
// directories) whose smtpd listens on a free 127.0.0.1 port and which relays
// all mail to relayHost (e.g. "[127.0.0.1]:2525") with opportunistic
// STARTTLS. It is stopped at cleanup, also when the test fails; the maillog
// is logged on failure.
func startPostfix(t *testing.T, hostname, relayHost string) *postfixInstance {
	t.Helper()
	return startPostfixWith(t, hostname, relayHost, "", "")
}

// startPostfixWith is startPostfix with extra main.cf and master.cf lines (extraMain may use
// %[1]s for the instance's root directory).
func startPostfixWith(t *testing.T, hostname, relayHost, extraMain, extraMaster string) *postfixInstance {
	t.Helper()
	return startPostfixOpts(t, postfixOptions{Hostname: hostname, RelayHost: relayHost, ExtraMain: extraMain, ExtraMaster: extraMaster})
}

// postfixOptions are startPostfixOpts's settings; see startPostfixWith for the first four.
type postfixOptions struct {
	Hostname, RelayHost, ExtraMain, ExtraMaster string
	// Listen is the smtpd's "ip:port"; "" for a free port on 127.0.0.1.
	Listen string
	// NetNS, when set, runs the instance inside that network namespace (ip netns exec), where
	// Listen's address lives.
	NetNS string
}

// startPostfixOpts starts a private Postfix instance as startPostfixWith describes.
func startPostfixOpts(t *testing.T, o postfixOptions) *postfixInstance {
	t.Helper()
	hostname, relayHost, extraMain, extraMaster := o.Hostname, o.RelayHost, o.ExtraMain, o.ExtraMaster
	requireRoot(t)
	postfix := requireTool(t, "postfix")
	pfUID, _ := lookupUser(t, "postfix")

	dir := sharedTempDir(t)
	p := &postfixInstance{
		Dir:     dir,
		ConfDir: filepath.Join(dir, "conf"),
		Log:     filepath.Join(dir, "maillog"),
	}
	inetInterfaces := "inet_interfaces = 127.0.0.1"
	if o.Listen == "" {
		p.Port = freePort(t)
		p.Addr = net.JoinHostPort("127.0.0.1", strconv.Itoa(p.Port))
	} else {
		host, port, err := net.SplitHostPort(o.Listen)
		if err != nil {
			t.Fatalf("postfix listen %q: %v", o.Listen, err)
		}
		p.Addr = o.Listen
		p.Port, _ = strconv.Atoi(port)
		inetInterfaces = "inet_interfaces = " + host
	}
	queueDir := filepath.Join(dir, "queue")
	dataDir := filepath.Join(dir, "data")
	for _, d := range []string{p.ConfDir, queueDir, dataDir} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	// The master's lock file and the TLS caches live in data_directory,
	// which must belong to mail_owner.
	if err := os.Chown(dataDir, pfUID, -1); err != nil {
		t.Fatalf("chown postfix %s: %v", dataDir, err)
	}

	writeFile(t, filepath.Join(p.ConfDir, "main.cf"), fmt.Sprintf(`# generated by the postamt interop tests
compatibility_level = 3.6
queue_directory = %[1]s
data_directory = %[2]s
mail_owner = postfix
setgid_group = postdrop
myhostname = %[3]s
mydomain = postfix.test
myorigin = $myhostname
mydestination =
%[7]s
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
relay_domains =
relayhost = %[4]s
smtp_tls_security_level = may
smtp_tls_loglevel = 1
smtp_dns_support_level = disabled
smtp_host_lookup = native
smtpd_peername_lookup = no
smtputf8_enable = yes
maillog_file = %[5]s
maillog_file_prefixes = %[6]s
alias_maps =
alias_database =
local_transport = error:local delivery is disabled
biff = no
queue_run_delay = 1s
minimal_backoff_time = 1s
maximal_backoff_time = 2s
smtp_connect_timeout = 5s
`, queueDir, dataDir, hostname, relayHost, p.Log, dir, inetInterfaces)+strings.ReplaceAll(extraMain, "%[1]s", dir))

	// No chroot (the temp dirs are not set up for one); the smtpd listens on
	// the chosen address: a loopback port, or port 25 inside a test namespace.
	writeFile(t, filepath.Join(p.ConfDir, "master.cf"), fmt.Sprintf(`# generated by the postamt interop tests
%s inet n       -       n       -       -       smtpd
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
tlsmgr    unix  -       -       n       1000?   1       tlsmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
proxywrite unix -       -       n       -       1       proxymap
smtp      unix  -       -       n       -       -       smtp
relay     unix  -       -       n       -       -       smtp
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
`, p.Addr)+extraMaster)

	t.Cleanup(func() {
		if showLogs(t) {
			t.Logf("postfix maillog %s:\n%s", p.Log, p.Logs())
		}
	})
	// postfix(1) checks inet_interfaces against the interfaces it sees, so with a namespace
	// both start and stop run inside it; the master and the daemons it forks stay there.
	var prefix []string
	if o.NetNS != "" {
		prefix = []string{requireTool(t, "ip"), "netns", "exec", o.NetNS}
	}
	p.ctl = func(cmd string) (string, error) {
		args := append(append(prefix[:len(prefix):len(prefix)], postfix), "-c", p.ConfDir, cmd)
		return runDaemonCtl(t, args[0], args[1:]...)
	}
	out, err := p.ctl("start")
	// Registered even when start failed: a half-started master is stopped too.
	t.Cleanup(func() { p.stop(t, queueDir) })
	if err != nil {
		t.Fatalf("postfix -c %s start: %v\n%s", p.ConfDir, err, out)
	}
	waitForPort(t, p.Addr)
	return p
}

// stop runs `postfix -c DIR stop` and waits (bounded) for the master to go;
// it kills the master if it is still there.
func (p *postfixInstance) stop(t *testing.T, queueDir string) {
	pid := readPid(filepath.Join(queueDir, "pid", "master.pid"))
	if out, err := p.ctl("stop"); err != nil {
		t.Logf("postfix -c %s stop: %v\n%s", p.ConfDir, err, out)
	}
	waitPidGone(t, "postfix master", pid)
}

// readPid reads a pid file ("  1234\n"); 0 when there is none.
func readPid(path string) int {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0
	}
	pid, _ := strconv.Atoi(strings.TrimSpace(string(b)))
	return pid
}

// waitPidGone waits up to waitTimeout for pid to exit, then SIGKILLs it. It
// also leaves the children a moment to exit, so that the temp dir can go.
func waitPidGone(t *testing.T, what string, pid int) {
	if pid <= 0 {
		return
	}
	deadline := time.Now().Add(waitTimeout)
	for syscall.Kill(pid, 0) == nil {
		if time.Now().After(deadline) {
			t.Errorf("%s (pid %d) still running %v after stop; killing it", what, pid, waitTimeout)
			syscall.Kill(pid, syscall.SIGKILL)
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	time.Sleep(300 * time.Millisecond)
}

// postfixSubmit sends one message to the Postfix instance with swaks and
// asserts that Postfix queued it.
func postfixSubmit(t *testing.T, p *postfixInstance, from, to string, extra ...string) cmdResult {
	t.Helper()
	swaks := requireTool(t, "swaks")
	args := append([]string{"--server", "127.0.0.1", "--port", strconv.Itoa(p.Port),
		"--helo", "client.test", "--from", from, "--to", to}, extra...)
	res := runCmd(t, "", swaks, args...)
	if res.ExitCode != 0 || !strings.Contains(res.Output, "queued as") {
		t.Fatalf("postfix did not accept the message (swaks exit %d)", res.ExitCode)
	}
	return res
}

// ---------------------------------------------------------------------------
// Dovecot

// dovecotInstance is a private Dovecot (LMTP only) started from a generated
// dovecot.conf in a temp dir.
type dovecotInstance struct {
	Dir   string
	Conf  string
	Port  int // LMTP port on 127.0.0.1
	Addr  string
	VMail string // users' Maildirs: VMail/<user>/{new,cur,tmp}
	Log   string
}

// Logs returns Dovecot's log file.
func (d *dovecotInstance) Logs() string {
	b, _ := os.ReadFile(d.Log)
	return string(b)
}

// MaildirNew returns the new/ folder of user's INBOX.
func (d *dovecotInstance) MaildirNew(user string) string {
	return filepath.Join(d.VMail, user, "new")
}

// startDovecot starts Dovecot with protocols = lmtp, an inet LMTP listener
// on a free 127.0.0.1 port and a passwd-file user database holding users
// (full addresses). Mail is stored as the system user "mail" in
// maildir:VMail/%u. Dovecot is stopped at cleanup; its log is logged on
// failure.
func startDovecot(t *testing.T, users []string) *dovecotInstance {
	t.Helper()
	requireRoot(t)
	dovecot := requireTool(t, "dovecot")
	requireTool(t, "doveadm")
	if _, err := os.Stat("/usr/lib/dovecot/lmtp"); err != nil {
		skipOrFail(t, "interop: dovecot LMTP server (package dovecot-lmtpd) not installed")
	}
	uid, gid := lookupUser(t, "mail")
	lookupUser(t, "dovecot")
	lookupUser(t, "dovenull")

	dir := sharedTempDir(t)
	d := &dovecotInstance{
		Dir:   dir,
		Conf:  filepath.Join(dir, "dovecot.conf"),
		Port:  freePort(t),
		VMail: filepath.Join(dir, "vmail"),
		Log:   filepath.Join(dir, "dovecot.log"),
	}
	d.Addr = net.JoinHostPort("127.0.0.1", strconv.Itoa(d.Port))
	if err := os.MkdirAll(d.VMail, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Chown(d.VMail, uid, gid); err != nil {
		t.Fatal(err)
	}
	var pw strings.Builder
	for _, u := range users {
		// user:password:uid:gid:gecos:home:shell:extra
		fmt.Fprintf(&pw, "%s:{PLAIN}secret:%d:%d::%s::\n", u, uid, gid, filepath.Join(d.VMail, u))
	}
	usersFile := filepath.Join(dir, "users")
	writeFile(t, usersFile, pw.String())

	writeFile(t, d.Conf, fmt.Sprintf(`# generated by the postamt interop tests
base_dir = %[1]s/run
state_dir = %[1]s/state
log_path = %[2]s
info_log_path = %[2]s
instance_name = dovecot-interop-%[3]d
protocols = lmtp
listen = 127.0.0.1
ssl = no
first_valid_uid = %[4]d
first_valid_gid = %[5]d
mail_uid = %[4]d
mail_gid = %[5]d
mail_location = maildir:%[6]s/%%u
passdb {
  driver = passwd-file
  args = %[7]s
}
userdb {
  driver = passwd-file
  args = %[7]s
}
service lmtp {
  inet_listener lmtp {
    address = 127.0.0.1
    port = %[3]d
  }
}
`, dir, d.Log, d.Port, uid, gid, d.VMail, usersFile))

	t.Cleanup(func() {
		if showLogs(t) {
			t.Logf("dovecot.conf:\n%s", mustRead(d.Conf))
			t.Logf("dovecot log %s:\n%s", d.Log, d.Logs())
		}
	})
	out, err := runDaemonCtl(t, dovecot, "-c", d.Conf)
	t.Cleanup(func() { d.stop(t) })
	if err != nil {
		t.Fatalf("dovecot -c %s: %v\n%s", d.Conf, err, out)
	}
	waitForPort(t, d.Addr)
	return d
}

// stop runs `doveadm -c FILE stop` and waits (bounded) for the master to go;
// it kills the master if it is still there.
func (d *dovecotInstance) stop(t *testing.T) {
	pid := readPid(filepath.Join(d.Dir, "run", "master.pid"))
	if out, err := runDaemonCtl(t, "doveadm", "-c", d.Conf, "stop"); err != nil {
		t.Logf("doveadm -c %s stop: %v\n%s", d.Conf, err, out)
		if pid > 0 {
			syscall.Kill(pid, syscall.SIGTERM)
		}
	}
	waitPidGone(t, "dovecot master", pid)
}

func mustRead(path string) string {
	b, _ := os.ReadFile(path)
	return string(b)
}

// ---------------------------------------------------------------------------
// swaks

// swaks runs swaks against the given server with the given extra arguments
// (--helo client.test is always set to avoid hostname lookups).
func swaks(t *testing.T, host string, port int, args ...string) cmdResult {
	t.Helper()
	bin := requireTool(t, "swaks")
	all := append([]string{"--server", host, "--port", strconv.Itoa(port), "--helo", "client.test",
		"--timeout", "15"}, args...)
	return runCmd(t, "", bin, all...)
}

// swaksDataReply returns the server's reply to the end of DATA in a swaks
// transcript (the first reply line after the " -> ." line).
func swaksDataReply(out string) string {
	lines := strings.Split(out, "\n")
	for i, l := range lines {
		tl := strings.TrimSpace(l)
		if tl == "-> ." || tl == "~> ." {
			for _, r := range lines[i+1:] {
				r = strings.TrimSpace(r)
				if strings.HasPrefix(r, "<-") || strings.HasPrefix(r, "<~") || strings.HasPrefix(r, "<**") || strings.HasPrefix(r, "<~*") {
					return strings.TrimSpace(strings.TrimLeft(r, "<-~* "))
				}
			}
		}
	}
	return ""
}
