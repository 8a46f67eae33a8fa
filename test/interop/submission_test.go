//go:build interop

package interop

import (
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/postamt/postamt/internal/dns/dnstest"
)

// submissionServer is a Postamt with both submission listeners, DKIM keys for example.test
// (RSA and Ed25519, made with `postamt dkim keygen`) and users added with `postamt user add`
// while it runs.
type submissionServer struct {
	*postamtServer
	Port, PortTLS int
	ConfigPath    string
	Records       map[string]string // DNS name → DKIM TXT record, as keygen printed them
}

const (
	bobAddr = "bob@example.test"
	bobPass = "bob's long password"
)

var zoneLineRe = regexp.MustCompile(`(?m)^(\S+)\. IN TXT \( (.*) \)$`)

func startSubmission(t *testing.T, extra ...string) *submissionServer {
	t.Helper()
	bin := postamtBinary(t)
	keyDir := filepath.Join(t.TempDir(), "dkim")
	// keygen needs only data_dir and dkim.key_dir; the server is not running yet.
	kcfg := filepath.Join(t.TempDir(), "keygen.toml")
	writeFile(t, kcfg, fmt.Sprintf("data_dir = %s\n[dkim]\nkey_dir = %s\n", tomlString(t.TempDir()), tomlString(keyDir)))
	records := map[string]string{}
	for _, k := range [][2]string{{"rsa1", "rsa"}, {"ed1", "ed25519"}} {
		res := runCmd(t, "", bin, "dkim", "keygen", "-c", kcfg, testDomain, "--selector", k[0], "--algo", k[1])
		m := zoneLineRe.FindStringSubmatch(res.Output)
		if res.ExitCode != 0 || m == nil {
			t.Fatalf("postamt dkim keygen %s: exit %d", k[0], res.ExitCode)
		}
		records[m[1]] = strings.Join(strings.Split(strings.Trim(m[2], `"`), `" "`), "")
		if fi, err := os.Stat(filepath.Join(keyDir, testDomain, k[0]+".key")); err != nil || fi.Mode().Perm() != 0o600 {
			t.Fatalf("key file: %v %v", err, fi)
		}
	}
	s := &submissionServer{Port: freePort(t), PortTLS: freePort(t), Records: records}
	s.postamtServer = startPostamt(t, postamtConfig{
		Hostname:  "mail.example.test",
		Mailboxes: []string{"alice@example.test", bobAddr, "carol@example.test"},
		Extra: fmt.Sprintf(`[submission]
listen = [%s]
listen_tls = [%s]
auth_failure_delay = "50ms"
auth_failures_per_user = 3
auth_failures_per_ip = 100
auth_lockout = "10m"

[dkim]
key_dir = %s

[dkim.domains."example.test"]
selectors = ["rsa1", "ed1"]
`, tomlString(fmt.Sprintf("127.0.0.1:%d", s.Port)), tomlString(fmt.Sprintf("127.0.0.1:%d", s.PortTLS)), tomlString(keyDir)) +
			strings.Join(extra, "\n"),
	})
	s.ConfigPath = filepath.Join(filepath.Dir(s.DataDir), "postamt.toml")
	waitForPort(t, fmt.Sprintf("127.0.0.1:%d", s.Port))
	waitForPort(t, fmt.Sprintf("127.0.0.1:%d", s.PortTLS))
	// Accounts are added beside the running server (the user database is SQLite in WAL mode).
	s.addUser(t, bobAddr, bobPass)
	s.addUser(t, "carol@example.test", "carol's long password")
	return s
}

func (s *submissionServer) addUser(t *testing.T, name, pass string, extra ...string) {
	t.Helper()
	res := runCmd(t, pass+"\n", postamtBinary(t), append([]string{"user", "add", "-c", s.ConfigPath, name, "--password-stdin"}, extra...)...)
	if res.ExitCode != 0 || !strings.Contains(res.Output, "user "+name+" added") {
		t.Fatalf("postamt user add %s: exit %d", name, res.ExitCode)
	}
	if strings.Contains(s.Logs(), pass) {
		t.Fatalf("the password appears in the server log")
	}
}

// dkimVerify runs dkimpy (Debian python3-dkim) on a delivered message with the published
// records and returns the algorithms whose signatures verified.
func (s *submissionServer) dkimVerify(t *testing.T, m storedMessage) []string {
	t.Helper()
	py, err := dkimPython()
	if err != nil {
		skipOrFail(t, "python3 with the dkim module (python3-dkim) not available: "+err.Error())
	}
	// The Maildir copy has LF line ends; the message as sent had CRLF.
	f := filepath.Join(t.TempDir(), "msg.eml")
	writeFile(t, f, strings.ReplaceAll(strings.ReplaceAll(m.Raw, "\r\n", "\n"), "\n", "\r\n"))
	args := []string{"../../internal/mailauth/testdata/dkimverify.py", f}
	for n, r := range s.Records {
		args = append(args, n+"="+r)
	}
	res := runCmd(t, "", py, args...)
	var out struct {
		Signatures []struct {
			D, S, A, H string
			OK         bool
		}
		Error string
	}
	lines := strings.Split(strings.TrimSpace(res.Output), "\n")
	if err := json.Unmarshal([]byte(lines[len(lines)-1]), &out); err != nil || out.Error != "" {
		t.Fatalf("dkimverify.py: %v %s", err, out.Error)
	}
	var ok []string
	for _, sig := range out.Signatures {
		if sig.D != testDomain {
			t.Errorf("d=%s", sig.D)
		}
		if sig.OK {
			ok = append(ok, sig.A)
		} else {
			t.Errorf("dkimpy: %s signature (s=%s) does not verify", sig.A, sig.S)
		}
		if !strings.Contains(sig.H, "from:from") || !strings.Contains(sig.H, "subject:subject") {
			t.Errorf("h=%s: From and Subject not oversigned", sig.H)
		}
	}
	return ok
}

func dkimPython() (string, error) {
	cands := []string{"/usr/bin/python3"}
	if p, err := exec.LookPath("python3"); err == nil {
		cands = append(cands, p)
	}
	var last error = errors.New("no python3")
	for _, c := range cands {
		if last = exec.Command(c, "-c", "import dkim").Run(); last == nil {
			return c, nil
		}
	}
	return "", last
}

// checkSubmitted checks what every submitted message must carry when delivered.
func (s *submissionServer) checkSubmitted(t *testing.T, m storedMessage) {
	t.Helper()
	assertDeliveryHeaders(t, m, bobAddr, "alice@example.test", "by mail.example.test")
	if rcv := m.Header["Received"]; len(rcv) == 0 || !regexp.MustCompile(`^by mail\.example\.test \(Postamt\) with (ESMTPSA|UTF8SMTPSA) id `).MatchString(rcv[0]) {
		t.Errorf("Received = %q, want an ESMTPSA trace without a from clause", rcv)
	}
	if strings.Contains(m.Raw, "127.0.0.1") || strings.Contains(m.Raw, "client.test") {
		t.Errorf("the client's address or HELO leaked into the message:\n%s", m.Raw)
	}
	if m.Header.Get("Date") == "" || !regexp.MustCompile(`^<[^@>]+@mail\.example\.test>$|^<[^@>]+@[^>]+>$`).MatchString(m.Header.Get("Message-ID")) {
		t.Errorf("Date %q / Message-ID %q missing", m.Header.Get("Date"), m.Header.Get("Message-ID"))
	}
	algos := strings.Join(s.dkimVerify(t, m), " ")
	if !strings.Contains(algos, "rsa-sha256") || !strings.Contains(algos, "ed25519-sha256") {
		t.Errorf("verified signatures: %q, want rsa-sha256 and ed25519-sha256", algos)
	}
}

// TestSubmissionSwaks: swaks submits with STARTTLS on the 587-style listener (AUTH PLAIN) and
// with implicit TLS on the 465-style one (--tlsc, AUTH LOGIN); the messages arrive signed twice
// (RSA and Ed25519), which dkimpy verifies. Then each misuse gets its reply.
func TestSubmissionSwaks(t *testing.T) {
	s := startSubmission(t)
	base := []string{"--to", "alice@example.test", "--auth-user", bobAddr, "--auth-password", bobPass}
	for _, tc := range []struct {
		name string
		port int
		args []string
	}{
		{"starttls-plain", s.Port, []string{"--tls", "--auth", "PLAIN"}},
		{"implicit-login", s.PortTLS, []string{"--tlsc", "--auth", "LOGIN"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			marker := "swaks submission " + tc.name
			args := append(append(append([]string{}, base...), tc.args...), "--from", bobAddr,
				"--header", "Subject: "+marker, "--header", "From: Bob <bob@example.test>", "--body", marker+"\nGrüße\n\n\n")
			res := swaks(t, s.Host, tc.port, args...)
			if res.ExitCode != 0 || !strings.Contains(res.Output, "235 2.7.0") || !strings.HasPrefix(swaksDataReply(res.Output), "250 2.0.0") {
				t.Fatalf("swaks exit %d, data reply %q", res.ExitCode, swaksDataReply(res.Output))
			}
			s.checkSubmitted(t, findMessage(t, s.MaildirNew("alice@example.test"), marker))
		})
	}

	t.Run("application-password", func(t *testing.T) {
		// A token made with `postamt user token add` while the server runs logs in as bob.
		res := runCmd(t, "", postamtBinary(t), "user", "token", "add", "-c", s.ConfigPath, bobAddr, "script")
		m := regexp.MustCompile(`: (pat_\S+)`).FindStringSubmatch(res.Output)
		if res.ExitCode != 0 || m == nil {
			t.Fatalf("token add: exit %d", res.ExitCode)
		}
		marker := "swaks with an application password"
		res = swaks(t, s.Host, s.PortTLS, "--tlsc", "--auth", "PLAIN", "--auth-user", bobAddr, "--auth-password", m[1],
			"--from", bobAddr, "--to", "alice@example.test", "--header", "Subject: "+marker, "--header", "From: bob@example.test")
		if !strings.Contains(res.Output, "235 2.7.0") || !strings.HasPrefix(swaksDataReply(res.Output), "250 2.0.0") {
			t.Fatalf("swaks with the token: exit %d", res.ExitCode)
		}
		s.checkSubmitted(t, findMessage(t, s.MaildirNew("alice@example.test"), marker))
		runCmd(t, "", postamtBinary(t), "user", "token", "del", "-c", s.ConfigPath, bobAddr, "script")
		res = swaks(t, s.Host, s.PortTLS, "--tlsc", "--quit-after", "AUTH", "--auth", "PLAIN", "--auth-user", bobAddr, "--auth-password", m[1])
		if !strings.Contains(res.Output, "535 5.7.8") {
			t.Errorf("revoked token: want 535 5.7.8")
		}
	})
	t.Run("wrong-password", func(t *testing.T) {
		res := swaks(t, s.Host, s.Port, "--tls", "--auth", "PLAIN", "--auth-user", bobAddr, "--auth-password", "wrong", "--from", bobAddr, "--to", "alice@example.test")
		if res.ExitCode == 0 || !strings.Contains(res.Output, "535 5.7.8") {
			t.Errorf("exit %d, want a 535 5.7.8", res.ExitCode)
		}
	})
	t.Run("foreign-mail-from", func(t *testing.T) {
		res := swaks(t, s.Host, s.Port, append(append([]string{}, base...), "--tls", "--auth", "PLAIN", "--from", "ceo@example.test")...)
		if res.ExitCode == 0 || !regexp.MustCompile(`553 5\.7\.1 Sender address <ceo@example\.test> is not owned by user bob@example\.test`).MatchString(res.Output) {
			t.Errorf("exit %d, want 553 5.7.1 with the reason", res.ExitCode)
		}
	})
	t.Run("foreign-from-header", func(t *testing.T) {
		res := swaks(t, s.Host, s.Port, append(append([]string{}, base...), "--tls", "--auth", "PLAIN", "--from", bobAddr,
			"--header", "From: CEO <ceo@example.test>")...)
		if got := swaksDataReply(res.Output); !strings.HasPrefix(got, "553 5.7.1 Address <ceo@example.test> in From: is not owned by user bob@example.test") {
			t.Errorf("data reply %q, want 553 5.7.1 with the reason", got)
		}
	})
	t.Run("lockout", func(t *testing.T) {
		// Three wrong passwords lock the account: then even the right one gets 421 4.7.0.
		for i := range 3 {
			res := swaks(t, s.Host, s.Port, "--tls", "--quit-after", "AUTH", "--auth", "PLAIN", "--auth-user", "carol@example.test", "--auth-password", "guess"+itoa(i))
			want := "535 5.7.8"
			if i == 2 {
				want = "421 4.7.0"
			}
			if !strings.Contains(res.Output, want) {
				t.Fatalf("attempt %d: want %s", i+1, want)
			}
		}
		res := swaks(t, s.Host, s.Port, "--tls", "--quit-after", "AUTH", "--auth", "PLAIN", "--auth-user", "carol@example.test", "--auth-password", "carol's long password")
		if !strings.Contains(res.Output, "421 4.7.0") || strings.Contains(res.Output, "235 ") {
			t.Errorf("locked account: want 421 4.7.0 for the right password too")
		}
		s.waitForLog(t, regexp.MustCompile(`authentication failed`), regexp.MustCompile(`user=carol@example.test`), regexp.MustCompile(`421 4\.7\.0`))
	})
}

type submitResult struct {
	AuthOfferedPlain bool              `json:"auth_offered_plain"`
	AuthBeforeTLS    [2]any            `json:"auth_before_tls"`
	MailBeforeTLS    [2]any            `json:"mail_before_tls"`
	MailBeforeAuth   [2]any            `json:"mail_before_auth"`
	TLSVersion       string            `json:"tls_version"`
	AuthOffered      string            `json:"auth_offered"`
	Login            [2]any            `json:"login"`
	Refused          map[string][2]any `json:"refused"`
	Error            string            `json:"error"`
	Code             int               `json:"code"`
	Reply            string            `json:"reply"`
}

func runSubmitClient(t *testing.T, args ...string) submitResult {
	t.Helper()
	py := requireTool(t, "python3")
	res := runCmd(t, "", py, append([]string{"testdata/submit_client.py"}, args...)...)
	lines := strings.Split(strings.TrimSpace(res.Output), "\n")
	for i := len(lines) - 1; i >= 0; i-- {
		if strings.HasPrefix(lines[i], "{") {
			var r submitResult
			if err := json.Unmarshal([]byte(lines[i]), &r); err != nil {
				t.Fatalf("decode: %v", err)
			}
			return r
		}
	}
	t.Fatalf("submit_client printed no JSON (exit %d)", res.ExitCode)
	return submitResult{}
}

// TestSubmissionSmtplib: Python smtplib with starttls() and with SMTP_SSL. Before TLS no AUTH
// is offered and AUTH and MAIL get 530 5.7.0; after TLS, MAIL before AUTH gets 530 5.7.0
// "Authentication required". The message (folded Subject, 8-bit body, trailing blank lines, no
// Date or Message-ID) arrives with Date and Message-ID added and two signatures dkimpy verifies.
func TestSubmissionSmtplib(t *testing.T) {
	s := startSubmission(t)
	subject := "smtplib submission with a subject long enough to be folded by the client"
	for _, mode := range []string{"starttls", "ssl"} {
		t.Run(mode, func(t *testing.T) {
			port := s.Port
			if mode == "ssl" {
				port = s.PortTLS
			}
			r := runSubmitClient(t, mode, s.Host, itoa(port), bobAddr, bobPass, "Bob <bob@example.test>", "alice@example.test", subject+" "+mode)
			if r.Error != "" {
				t.Fatalf("client error: %s", r.Error)
			}
			if mode == "starttls" {
				if r.AuthOfferedPlain {
					t.Errorf("AUTH offered before TLS")
				}
				if fmt.Sprint(r.AuthBeforeTLS[0]) != "530" || !strings.HasPrefix(fmt.Sprint(r.AuthBeforeTLS[1]), "5.7.0") {
					t.Errorf("AUTH before TLS: %v, want 530 5.7.0", r.AuthBeforeTLS)
				}
				if fmt.Sprint(r.MailBeforeTLS[0]) != "530" {
					t.Errorf("MAIL before TLS: %v, want 530", r.MailBeforeTLS)
				}
				if fmt.Sprint(r.MailBeforeAuth[0]) != "530" || fmt.Sprint(r.MailBeforeAuth[1]) != "5.7.0 Authentication required" {
					t.Errorf("MAIL before AUTH: %v", r.MailBeforeAuth)
				}
			}
			if !strings.Contains(r.AuthOffered, "PLAIN") || fmt.Sprint(r.Login[0]) != "235" || !strings.HasPrefix(r.TLSVersion, "TLSv1.") || r.TLSVersion < "TLSv1.2" {
				t.Errorf("auth offered %q, login %v, TLS %q", r.AuthOffered, r.Login, r.TLSVersion)
			}
			m := findMessage(t, s.MaildirNew("alice@example.test"), mode+"\n") // the folded subject's end
			s.checkSubmitted(t, m)
			if !strings.Contains(m.Body, "Grüße aus Python über Submission ✓") {
				t.Errorf("8-bit body changed: %q", m.Body)
			}
		})
	}
	t.Run("foreign-from", func(t *testing.T) {
		r := runSubmitClient(t, "ssl", s.Host, itoa(s.PortTLS), bobAddr, bobPass, "ceo@example.test", "alice@example.test", "forged")
		if r.Code != 553 || !strings.Contains(r.Reply, "5.7.1 Address <ceo@example.test> in From: is not owned by user bob@example.test") {
			t.Errorf("got %d %q, want 553 5.7.1", r.Code, r.Reply)
		}
	})
	t.Run("wrong-password", func(t *testing.T) {
		r := runSubmitClient(t, "ssl", s.Host, itoa(s.PortTLS), bobAddr, "not bob's password", "bob@example.test", "alice@example.test", "x")
		if r.Code != 535 || !strings.HasPrefix(r.Reply, "5.7.8") {
			t.Errorf("got %d %q, want 535 5.7.8", r.Code, r.Reply)
		}
	})
}

// TestSubmissionMsmtp: msmtp (GnuTLS) authenticates and sends with STARTTLS and with implicit
// TLS (--tls-starttls=off).
func TestSubmissionMsmtp(t *testing.T) {
	bin := requireTool(t, "msmtp")
	s := startSubmission(t)
	rc := filepath.Join(t.TempDir(), "msmtprc")
	writeFile(t, rc, "")
	os.Chmod(rc, 0o600)
	for _, tc := range []struct {
		name, auth string
		port       int
		tls        string
	}{
		{"starttls", "plain", s.Port, "--tls-starttls=on"},
		{"implicit", "plain", s.PortTLS, "--tls-starttls=off"},
		// SCRAM-SHA-256 (RFC 7677) with GNU SASL's client: the password never crosses the wire.
		{"scram-starttls", "scram-sha-256", s.Port, "--tls-starttls=on"},
		{"scram-implicit", "scram-sha-256", s.PortTLS, "--tls-starttls=off"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			marker := "msmtp submission " + tc.name
			msg := "From: bob@example.test\nTo: alice@example.test\nSubject: " + marker + "\n\n" + marker + "\n"
			res := runCmd(t, msg, bin, "--file="+rc, "--host=127.0.0.1", "--port="+itoa(tc.port), "--from="+bobAddr,
				"--auth="+tc.auth, "--user="+bobAddr, "--passwordeval=echo \""+bobPass+"\"", "--tls=on", tc.tls,
				"--tls-certcheck=off", "--domain=client.test", "--timeout=15", "--debug", "--", "alice@example.test")
			if res.ExitCode != 0 || !strings.Contains(res.Output, "235 2.7.0") {
				t.Fatalf("msmtp exit %d", res.ExitCode)
			}
			if tc.auth == "scram-sha-256" && (!strings.Contains(res.Output, "--> AUTH SCRAM-SHA-256") || !strings.Contains(res.Output, "<-- 334 dj")) {
				t.Errorf("no SCRAM exchange ending in the server's signature (334 v=...)")
			}
			s.checkSubmitted(t, findMessage(t, s.MaildirNew("alice@example.test"), marker))
		})
	}
	t.Run("scram-wrong-password", func(t *testing.T) {
		res := runCmd(t, "From: bob@example.test\n\nx\n", bin, "--file="+rc, "--host=127.0.0.1", "--port="+itoa(s.PortTLS),
			"--from="+bobAddr, "--auth=scram-sha-256", "--user="+bobAddr, "--passwordeval=echo wrong-password",
			"--tls=on", "--tls-starttls=off", "--tls-certcheck=off", "--domain=client.test", "--timeout=15", "--debug", "--", "alice@example.test")
		if res.ExitCode == 0 || !strings.Contains(res.Output, "535 5.7.8") {
			t.Errorf("exit %d, want a 535 5.7.8", res.ExitCode)
		}
	})
}

// TestSubmissionLeavesSigned: what a user submits for another domain leaves Postamt signed and
// arrives so at that domain's MX — a real Postfix found through the test's DNS — where dkimpy
// verifies both signatures on Postfix's stored copy.
func TestSubmissionLeavesSigned(t *testing.T) {
	requireTool(t, "swaks")
	uid, gid := lookupUser(t, "nobody")
	pf := startPostfixWith(t, "mx.remote.test", "", fmt.Sprintf(`
virtual_mailbox_domains = remote.test
virtual_mailbox_maps = inline:{ dora@remote.test=remote.test/dora/ }
virtual_mailbox_base = %%[1]s/vmail
virtual_uid_maps = static:%[1]d
virtual_gid_maps = static:%[2]d
virtual_minimum_uid = 1
`, uid, gid), "virtual   unix  -       n       n       -       -       virtual\n")
	vmail := filepath.Join(pf.Dir, "vmail")
	if err := os.MkdirAll(vmail, 0o755); err != nil {
		t.Fatal(err)
	}
	os.Chown(vmail, uid, gid)
	dnsAddr := dnstest.Server(t, &dnstest.Zone{
		MX: map[string][]*net.MX{"remote.test": {{Host: "mx.remote.test.", Pref: 10}}},
		A:  map[string][]netip.Addr{"mx.remote.test": {netip.MustParseAddr("127.0.0.1")}},
	})
	s := startSubmission(t, fmt.Sprintf("\n[outbound]\nport = %d\ndns_servers = [%q]\n", pf.Port, dnsAddr))
	marker := "signed on the way out"
	res := swaks(t, s.Host, s.Port, "--tls", "--auth", "PLAIN", "--auth-user", bobAddr, "--auth-password", bobPass,
		"--from", bobAddr, "--to", "dora@remote.test", "--header", "Subject: "+marker, "--header", "From: Bob <bob@example.test>",
		"--body", marker+"\nÄrger mit Umlauten\n\n\n")
	if !strings.HasPrefix(swaksDataReply(res.Output), "250 2.0.0") {
		t.Fatalf("swaks: %q", swaksDataReply(res.Output))
	}
	m := findMessage(t, filepath.Join(vmail, "remote.test", "dora", "new"), marker)
	if !strings.Contains(m.Raw, "by mail.example.test (Postamt) with ESMTPSA id") {
		t.Errorf("Postfix's copy lacks Postamt's submission Received header:\n%s", m.Raw)
	}
	algos := strings.Join(s.dkimVerify(t, m), " ")
	if !strings.Contains(algos, "rsa-sha256") || !strings.Contains(algos, "ed25519-sha256") {
		t.Errorf("verified at the receiving MX: %q, want rsa-sha256 and ed25519-sha256", algos)
	}
	s.waitForLog(t, mustRe(`msg=delivery `), mustRe(`\bto=dora@remote\.test\b`), mustRe(`\bstatus=sent\b`))
}
