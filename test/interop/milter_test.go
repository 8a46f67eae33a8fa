//go:build interop

package interop

import (
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/base64"
	"encoding/pem"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	gomilter "github.com/d--j/go-milter"

	"github.com/postamt/postamt/internal/dns/dnstest"
)

// startOpenDKIM runs Debian's OpenDKIM milter from a temp dir on a loopback port and returns
// its address. mode is "s" (sign as example.test with selector "test") or "v" (verify, looking
// keys up through the in-process DNS server at dnsAddr via an unbound configuration).
func startOpenDKIM(t *testing.T, mode string, keyPEM []byte, dnsAddr string) string {
	t.Helper()
	bin := requireTool(t, "opendkim")
	dir := t.TempDir()
	port := freePort(t)
	conf := []string{
		"Syslog no",
		fmt.Sprintf("Socket inet:%d@127.0.0.1", port),
		"PidFile " + filepath.Join(dir, "opendkim.pid"),
		"Mode " + mode,
		"AuthservID mx.postamt.test",
		"Canonicalization relaxed/simple",
		// The key sits under /tmp, which is world-writable: OpenDKIM would refuse it.
		"RequireSafeKeys false",
	}
	switch mode {
	case "s":
		key := filepath.Join(dir, "test.private")
		if err := os.WriteFile(key, keyPEM, 0o600); err != nil {
			t.Fatal(err)
		}
		conf = append(conf, "Domain example.test", "Selector test", "KeyFile "+key, "InternalHosts 127.0.0.1")
	case "v":
		host, p, _ := strings.Cut(dnsAddr, ":")
		// unbound answers .test (RFC 6761) itself unless told not to.
		unbound := filepath.Join(dir, "unbound.conf")
		writeFile(t, unbound, fmt.Sprintf("server:\n\tdo-not-query-localhost: no\n\tverbosity: 0\n\tlocal-zone: \"test.\" nodefault\nforward-zone:\n\tname: \".\"\n\tforward-addr: %s@%s\n", host, p))
		// No host is internal: 127.0.0.1 (Postamt's client in these tests) gets verified.
		conf = append(conf, "ResolverConfiguration "+unbound, "InternalHosts 192.0.2.254", "On-DNSError accept")
	}
	path := filepath.Join(dir, "opendkim.conf")
	writeFile(t, path, strings.Join(conf, "\n")+"\n")
	d := startDaemon(t, "opendkim -"+mode, bin, "-f", "-x", path)
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	d.waitForPort(t, addr, 30*time.Second)
	return addr
}

func dkimKey(t *testing.T) (privPEM []byte, txt string) {
	t.Helper()
	// 1024 bits keeps the public key in one TXT string (255 bytes) for the test DNS server.
	k, err := rsa.GenerateKey(rand.Reader, 1024)
	if err != nil {
		t.Fatal(err)
	}
	pub, err := x509.MarshalPKIXPublicKey(&k.PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	privPEM = pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(k)})
	return privPEM, "v=DKIM1; k=rsa; p=" + base64.StdEncoding.EncodeToString(pub)
}

func milterConf(name, addr string, failClosed bool) string {
	return fmt.Sprintf("[[checks.milter]]\nenabled = true\nname = %s\naddress = %s\nfail_closed = %v\n", tomlString(name), tomlString(addr), failClosed)
}

// TestOpenDKIMMilter puts Debian's OpenDKIM in Postamt's path twice. A signing OpenDKIM signs
// the message as it passes (the DKIM-Signature it adds comes back through the milter protocol
// and is in the delivered message); a verifying OpenDKIM, fed that delivered message, finds the
// signature valid (dkim=pass) — which needs the header fields and body to have reached both
// milters byte for byte — and a copy with a changed body fails (dkim=fail).
func TestOpenDKIMMilter(t *testing.T) {
	priv, txt := dkimKey(t)
	dnsAddr := dnstest.Server(t, &dnstest.Zone{TXT: map[string][]string{"test._domainkey.example.test": {txt}}})
	signer := startOpenDKIM(t, "s", priv, "")
	verifier := startOpenDKIM(t, "v", nil, dnsAddr)

	a := startPostamt(t, postamtConfig{Mailboxes: []string{"alice@example.test"}, Extra: milterConf("opendkim-sign", signer, true)})
	res := swaks(t, a.Host, a.Port, "--from", senderAddr, "--to", "alice@example.test",
		"--header", "From: Sender <sender@example.test>", "--header", "Subject: dkim via milter",
		"--body", "Signed body.\n\nSecond paragraph with a trailing space \nend\n")
	requireReply(t, res, "250 ")
	signed := findMessage(t, a.MaildirNew("alice@example.test"), "dkim via milter")
	sig := signed.Header.Get("DKIM-Signature")
	if !strings.Contains(sig, "d=example.test") || !strings.Contains(sig, "s=test") {
		t.Fatalf("no DKIM-Signature from OpenDKIM in the delivered message:\n%s", signed.Raw)
	}
	a.waitForLog(t, mustRe(`msg=queued`), mustRe(`opendkim-sign=`))

	b := startPostamt(t, postamtConfig{Mailboxes: []string{"bob@example.test"}, Extra: milterConf("opendkim-verify", verifier, true)})
	dir := t.TempDir()
	for _, tc := range []struct{ name, result string }{
		{"intact", "dkim=pass"},
		{"tampered", "dkim=fail"},
	} {
		raw := signed.Raw
		if tc.name == "tampered" {
			raw = strings.Replace(raw, "Second paragraph", "Changed paragraph", 1)
		}
		f := filepath.Join(dir, tc.name+".eml")
		writeFile(t, f, raw)
		res := swaks(t, b.Host, b.Port, "--from", senderAddr, "--to", "bob@example.test", "--data", "@"+f)
		requireReply(t, res, "250 ")
		qid := queueIDFrom(swaksDataReply(res.Output))
		m := findMessage(t, b.MaildirNew("bob@example.test"), qid)
		ar := strings.Join(m.Header["Authentication-Results"], "\n")
		if !strings.Contains(ar, "mx.postamt.test") || !strings.Contains(ar, tc.result) || !strings.Contains(ar, "header.d=example.test") {
			t.Errorf("%s: Authentication-Results = %q, want %s for example.test", tc.name, ar, tc.result)
		}
	}
}

// TestMilterDownFailModes: with the milter's address dead, a fail-closed milter defers at the
// first stage that needs it (connect: 421 4.7.1 naming it) and a fail-open one lets the mail through.
func TestMilterDownFailModes(t *testing.T) {
	dead := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	closed := startPostamt(t, postamtConfig{Mailboxes: []string{"alice@example.test"}, Extra: milterConf("gone", dead, true)})
	res := swaks(t, closed.Host, closed.Port, "--from", senderAddr, "--to", "alice@example.test", "--body", "x\n")
	if !strings.Contains(res.Output, "421 4.7.1") || !strings.Contains(res.Output, "gone unavailable") {
		t.Errorf("fail-closed milter down: no 421 4.7.1 naming it")
	}
	open := startPostamt(t, postamtConfig{Mailboxes: []string{"alice@example.test"}, Extra: milterConf("gone", dead, false)})
	res = swaks(t, open.Host, open.Port, "--from", senderAddr, "--to", "alice@example.test", "--header", "Subject: milter gone", "--body", "x\n")
	requireReply(t, res, "250 ")
	findMessage(t, open.MaildirNew("alice@example.test"), "milter gone")
}

// gatekeeper is a milter built with the go-milter library's server side: it refuses the
// recipient trap@ at RCPT and any message whose body says "forbidden" at the end of data.
type gatekeeper struct {
	gomilter.NoOpMilter
	body strings.Builder
}

func (g *gatekeeper) RcptTo(rcpt, _ string, _ gomilter.Modifier) (*gomilter.Response, error) {
	if strings.HasPrefix(rcpt, "trap@") {
		return gomilter.RejectWithCodeAndReason(550, "5.1.1 This address takes no mail")
	}
	return gomilter.RespContinue, nil
}

func (g *gatekeeper) BodyChunk(chunk []byte, _ gomilter.Modifier) (*gomilter.Response, error) {
	g.body.Write(chunk)
	return gomilter.RespContinue, nil
}

func (g *gatekeeper) EndOfMessage(m gomilter.Modifier) (*gomilter.Response, error) {
	defer g.body.Reset()
	if strings.Contains(g.body.String(), "forbidden") {
		return gomilter.RejectWithCodeAndReason(554, "5.7.1 Content not allowed here")
	}
	m.AddHeader("X-Gatekeeper", "passed")
	return gomilter.RespAccept, nil
}

func (g *gatekeeper) Abort(gomilter.Modifier) error { g.body.Reset(); return nil }

// TestMilterStagesThroughServer: through the real binary, a milter's RCPT refusal reaches the
// client on that RCPT (the other recipient still gets the message), its end-of-data refusal
// with its own code and text refuses the message, and its added header is delivered.
func TestMilterStagesThroughServer(t *testing.T) {
	srv := gomilter.NewServer(gomilter.WithMilter(func() gomilter.Milter { return &gatekeeper{} }), gomilter.WithAction(gomilter.OptAddHeader))
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	p := startPostamt(t, postamtConfig{Mailboxes: []string{"alice@example.test", "trap@example.test"},
		Extra: milterConf("gatekeeper", ln.Addr().String(), true)})

	res := swaks(t, p.Host, p.Port, "--from", senderAddr, "--to", "trap@example.test,alice@example.test",
		"--header", "Subject: through the gate", "--body", "fine\n")
	if !strings.Contains(res.Output, "<** 550 5.1.1 This address takes no mail") {
		t.Errorf("RCPT trap@ not refused with the milter's reply")
	}
	requireReply(t, res, "250 ")
	m := findMessage(t, p.MaildirNew("alice@example.test"), "through the gate")
	if m.Header.Get("X-Gatekeeper") != "passed" {
		t.Errorf("milter header missing:\n%s", m.Raw)
	}
	if got := listFiles(p.MaildirNew("trap@example.test")); len(got) != 0 {
		t.Errorf("the refused recipient got mail: %v", got)
	}

	res = swaks(t, p.Host, p.Port, "--from", senderAddr, "--to", "alice@example.test",
		"--header", "Subject: not through", "--body", "this is forbidden\n")
	requireReply(t, res, "554 5.7.1 Content not allowed here")
	p.waitForLog(t, mustRe(`msg="message rejected"`), mustRe(`gatekeeper=reject`))
}
