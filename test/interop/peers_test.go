//go:build interop

package interop

// Self-checks of the peer set-up, without Postamt: a Postfix instance relays
// into a throwaway Go SMTP listener, and a Dovecot instance takes an LMTP
// session driven by go-smtp's LMTP client. When these fail, the problem is
// the environment (or the helpers), not Postamt.

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"io"
	"math/big"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/emersion/go-smtp"
)

// sinkMessage is one message received by sinkServer.
type sinkMessage struct {
	From string
	To   []string
	Data string
	TLS  bool
}

// sinkServer is a throwaway SMTP server (go-smtp) that keeps what it gets.
type sinkServer struct {
	mu   sync.Mutex
	msgs []sinkMessage
	Addr string
}

type sinkSession struct {
	s   *sinkServer
	c   *smtp.Conn
	msg sinkMessage
}

func (ss *sinkSession) Reset()        { ss.msg = sinkMessage{} }
func (ss *sinkSession) Logout() error { return nil }
func (ss *sinkSession) Mail(from string, _ *smtp.MailOptions) error {
	ss.msg.From = from
	return nil
}
func (ss *sinkSession) Rcpt(to string, _ *smtp.RcptOptions) error {
	ss.msg.To = append(ss.msg.To, to)
	return nil
}
func (ss *sinkSession) Data(r io.Reader) error {
	b, err := io.ReadAll(r)
	if err != nil {
		return err
	}
	ss.msg.Data = string(b)
	_, ss.msg.TLS = ss.c.TLSConnectionState()
	ss.s.mu.Lock()
	ss.s.msgs = append(ss.s.msgs, ss.msg)
	ss.s.mu.Unlock()
	return nil
}

// startSink starts a go-smtp server with STARTTLS (throwaway self-signed
// certificate) on a free 127.0.0.1 port, closed at cleanup.
func startSink(t *testing.T) *sinkServer {
	t.Helper()
	sink := &sinkServer{}
	srv := smtp.NewServer(smtp.BackendFunc(func(c *smtp.Conn) (smtp.Session, error) {
		return &sinkSession{s: sink, c: c}, nil
	}))
	srv.Domain = "sink.test"
	srv.TLSConfig = &tls.Config{Certificates: []tls.Certificate{selfSigned(t, "sink.test")}}
	srv.ReadTimeout = waitTimeout
	srv.WriteTimeout = waitTimeout
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	sink.Addr = l.Addr().String()
	go srv.Serve(l)
	t.Cleanup(func() { srv.Close() })
	return sink
}

// waitMessages waits for n messages at the sink.
func (s *sinkServer) waitMessages(t *testing.T, n int) []sinkMessage {
	t.Helper()
	deadline := time.Now().Add(waitTimeout)
	for {
		s.mu.Lock()
		msgs := append([]sinkMessage(nil), s.msgs...)
		s.mu.Unlock()
		if len(msgs) >= n {
			return msgs
		}
		if time.Now().After(deadline) {
			t.Fatalf("sink got %d message(s) in %v, want %d", len(msgs), waitTimeout, n)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// selfSigned makes a throwaway ECDSA certificate for name.
func selfSigned(t *testing.T, name string) tls.Certificate {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1),
		Subject:      pkix.Name{CommonName: name},
		DNSNames:     []string{name},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
}

// TestPeerPostfixRelaysToSink checks the Postfix set-up: a message submitted
// to the private Postfix is relayed, over STARTTLS, to the relayhost.
func TestPeerPostfixRelaysToSink(t *testing.T) {
	sink := startSink(t)
	_, port, _ := net.SplitHostPort(sink.Addr)
	pf := startPostfix(t, "relay.postfix.test", "[127.0.0.1]:"+port)

	postfixSubmit(t, pf, "someone@client.test", "bob@example.test",
		"--header", "Subject: postfix self-check", "--body", "relayed by postfix\n")

	msgs := sink.waitMessages(t, 1)
	m := msgs[0]
	if m.From != "someone@client.test" || len(m.To) != 1 || m.To[0] != "bob@example.test" {
		t.Errorf("envelope = %q -> %q, want someone@client.test -> [bob@example.test]", m.From, m.To)
	}
	if !m.TLS {
		t.Errorf("postfix did not use STARTTLS to the sink")
	}
	if !strings.Contains(m.Data, "by relay.postfix.test (Postfix)") || !strings.Contains(m.Data, "relayed by postfix") {
		t.Errorf("relayed message lacks Postfix's Received header or the body:\n%s", m.Data)
	}
	if !strings.Contains(pf.Logs(), "status=sent") {
		t.Errorf("postfix log has no status=sent:\n%s", pf.Logs())
	}
}

// TestPeerDovecotLMTP checks the Dovecot set-up: an LMTP session accepts a
// known user, rejects an unknown one with 550 5.1.1 and stores the message in
// the known user's Maildir.
func TestPeerDovecotLMTP(t *testing.T) {
	dc := startDovecot(t, []string{"alice@example.test"})

	conn, err := net.DialTimeout("tcp", dc.Addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	conn.SetDeadline(time.Now().Add(waitTimeout))
	c := smtp.NewClientLMTP(conn)
	defer c.Close()
	if err := c.Hello("client.test"); err != nil {
		t.Fatalf("LHLO: %v", err)
	}
	if err := c.Mail("sender@remote.test", nil); err != nil {
		t.Fatalf("MAIL: %v", err)
	}
	if err := c.Rcpt("alice@example.test", nil); err != nil {
		t.Fatalf("RCPT alice: %v", err)
	}
	err = c.Rcpt("nobody@example.test", nil)
	var se *smtp.SMTPError
	if !errors.As(err, &se) || se.Code != 550 || se.EnhancedCode != (smtp.EnhancedCode{5, 1, 1}) {
		t.Errorf("RCPT nobody: got %v, want 550 5.1.1", err)
	}
	w, err := c.Data()
	if err != nil {
		t.Fatalf("DATA: %v", err)
	}
	io.WriteString(w, "From: sender@remote.test\r\nTo: alice@example.test\r\nSubject: lmtp self-check\r\n\r\nstored by dovecot\r\n")
	resp, err := w.CloseWithLMTPResponse()
	if err != nil {
		t.Fatalf("end of DATA: %v", err)
	}
	if len(resp) != 1 || resp["alice@example.test"] == nil {
		t.Errorf("LMTP responses = %v, want one for alice@example.test", resp)
	}
	c.Quit()

	files := waitForFiles(t, dc.MaildirNew("alice@example.test"), 1)
	m := readMessage(t, files[0])
	if m.Header.Get("Subject") != "lmtp self-check" || strings.TrimSpace(m.Body) != "stored by dovecot" {
		t.Errorf("stored message wrong:\n%s", m.Raw)
	}
	if got := m.Header.Get("Delivered-To"); got != "alice@example.test" && got != "<alice@example.test>" {
		t.Errorf("Delivered-To = %q", got)
	}
}
