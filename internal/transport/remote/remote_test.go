package remote

import (
	"context"
	"io"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	gosmtp "github.com/emersion/go-smtp"

	"github.com/postamt/postamt/internal/certs"
	"github.com/postamt/postamt/internal/dns/dnstest"
	"github.com/postamt/postamt/internal/mail"
	"github.com/postamt/postamt/internal/transport"
)

// peer is a scripted receiving MX: it refuses "nobody@" with 550 5.1.1 and "later@" with 450.
type peer struct {
	mu    sync.Mutex
	got   map[string]string
	helo  string
	tls   bool
	from  string
	notif []gosmtp.DSNNotify
	opts  gosmtp.MailOptions
	// sessions counts connections; user is who authenticated (when auth is set).
	sessions int
	conns    map[string]bool
	auth     map[string]string // username → password; nil: no AUTH offered
	user     string
}

type peerSession struct {
	p     *peer
	c     *gosmtp.Conn
	rcpts []string
}

func (p *peer) NewSession(c *gosmtp.Conn) (gosmtp.Session, error) {
	p.mu.Lock()
	// go-smtp starts a new session after STARTTLS: count connections, not sessions.
	if p.conns == nil {
		p.conns = map[string]bool{}
	}
	if a := c.Conn().RemoteAddr().String(); !p.conns[a] {
		p.conns[a] = true
		p.sessions++
	}
	p.mu.Unlock()
	if p.auth != nil {
		return &authSession{peerSession{p: p, c: c}}, nil
	}
	return &peerSession{p: p, c: c}, nil
}
func (s *peerSession) Mail(from string, o *gosmtp.MailOptions) error {
	s.p.mu.Lock()
	defer s.p.mu.Unlock()
	if s.p.auth != nil && s.p.user == "" {
		return &gosmtp.SMTPError{Code: 530, EnhancedCode: gosmtp.EnhancedCode{5, 7, 0}, Message: "Authentication required"}
	}
	s.p.from, s.p.helo = from, s.c.Hostname()
	if o != nil {
		s.p.opts = *o
	}
	_, s.p.tls = s.c.TLSConnectionState()
	return nil
}
func (s *peerSession) Rcpt(to string, o *gosmtp.RcptOptions) error {
	switch {
	case strings.HasPrefix(to, "nobody@"):
		return &gosmtp.SMTPError{Code: 550, EnhancedCode: gosmtp.EnhancedCode{5, 1, 1}, Message: "No such user"}
	case strings.HasPrefix(to, "later@"):
		return &gosmtp.SMTPError{Code: 450, EnhancedCode: gosmtp.EnhancedCode{4, 2, 1}, Message: "Greylisted"}
	}
	s.p.mu.Lock()
	s.p.notif = o.Notify
	s.p.mu.Unlock()
	s.rcpts = append(s.rcpts, to)
	return nil
}
func (s *peerSession) Data(r io.Reader) error {
	b, _ := io.ReadAll(r)
	s.p.mu.Lock()
	defer s.p.mu.Unlock()
	for _, to := range s.rcpts {
		s.p.got[to] = string(b)
	}
	return nil
}
func (s *peerSession) Reset()        { s.rcpts = nil }
func (s *peerSession) Logout() error { return nil }

// startPeer listens on ip:0 (with STARTTLS when withTLS) and returns the port.
func startPeer(t *testing.T, ip string, withTLS bool) (*peer, int) {
	p := &peer{got: map[string]string{}}
	srv := gosmtp.NewServer(p)
	srv.Domain = "mx.remote.test"
	srv.EnableDSN = true
	if withTLS {
		conf, err := certs.ServerConfig("", "", t.TempDir(), "mx.remote.test")
		if err != nil {
			t.Fatal(err)
		}
		srv.TLSConfig = conf
	}
	ln, err := net.Listen("tcp", ip+":0")
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return p, ln.Addr().(*net.TCPAddr).Port
}

func message(body string) *transport.Message {
	return &transport.Message{ID: "Q1", From: "alice@example.test", Size: int64(len(body)), Open: func() (io.ReadCloser, error) {
		return io.NopCloser(strings.NewReader(body)), nil
	}}
}

func rcpts(domain string, addrs ...string) []mail.Recipient {
	var out []mail.Recipient
	for _, a := range addrs {
		out = append(out, mail.Recipient{Addr: a, Route: mail.Route{Transport: "remote", NextHop: domain}, Notify: "FAILURE"})
	}
	return out
}

func ip(s string) []netip.Addr { return []netip.Addr{netip.MustParseAddr(s)} }

func TestDeliverPerRecipientWithTLS(t *testing.T) {
	p, port := startPeer(t, "127.0.0.1", true)
	zone := &dnstest.Zone{
		MX: map[string][]*net.MX{"remote.test": {{Host: "mx1.remote.test.", Pref: 10}}},
		A:  map[string][]netip.Addr{"mx1.remote.test": ip("127.0.0.1")},
	}
	tr := &Transport{Resolver: zone, Hostname: "mx.example.test", Port: port}
	body := "Subject: hi\r\n\r\nhello\r\n.dot\r\n"
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	res, err := tr.Deliver(ctx, message(body), rcpts("remote.test", "bob@remote.test", "nobody@remote.test", "later@remote.test"))
	if err != nil {
		t.Fatal(err)
	}
	if res[0].Reply != nil || res[0].RemoteMTA != "mx1.remote.test" || !strings.HasPrefix(res[0].TLS, "TLS 1.") {
		t.Fatalf("bob: %+v", res[0])
	}
	if r := res[1].Reply; r == nil || r.Code != 550 || !r.Permanent() || !strings.Contains(r.Text, "No such user") {
		t.Fatalf("nobody: %v", r)
	}
	if r := res[2].Reply; r == nil || r.Code != 450 || !r.Temporary() {
		t.Fatalf("later: %v", r)
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.got["bob@remote.test"] != body || p.from != "alice@example.test" || p.helo != "mx.example.test" || !p.tls {
		t.Fatalf("peer saw from=%q helo=%q tls=%v body=%q", p.from, p.helo, p.tls, p.got["bob@remote.test"])
	}
	if len(p.notif) != 1 || p.notif[0] != gosmtp.DSNNotifyFailure {
		t.Errorf("NOTIFY not passed on: %v", p.notif)
	}
}

func TestNextMXAndImplicitMX(t *testing.T) {
	_, port := startPeer(t, "127.0.0.1", false)
	// mx1 (preferred) has nothing listening on 127.0.0.2:port; mx2 works. Without TLS offered,
	// the delivery goes in plain text.
	zone := &dnstest.Zone{
		MX: map[string][]*net.MX{"remote.test": {{Host: "mx2.remote.test.", Pref: 20}, {Host: "mx1.remote.test.", Pref: 10}}},
		A: map[string][]netip.Addr{"mx1.remote.test": ip("127.0.0.2"), "mx2.remote.test": ip("127.0.0.1"),
			"nomx.test": ip("127.0.0.1")},
	}
	tr := &Transport{Resolver: zone, Hostname: "mx.example.test", Port: port}
	res, err := tr.Deliver(context.Background(), message("Subject: x\r\n\r\ny\r\n"), rcpts("remote.test", "bob@remote.test"))
	if err != nil || res[0].Reply != nil || res[0].RemoteMTA != "mx2.remote.test" || res[0].TLS != "none" {
		t.Fatalf("%v %+v", err, res)
	}
	// No MX record: the domain's own address is the implicit MX (RFC 5321 §5.1).
	res, err = tr.Deliver(context.Background(), message("Subject: x\r\n\r\ny\r\n"), rcpts("nomx.test", "bob@nomx.test"))
	if err != nil || res[0].Reply != nil || res[0].RemoteMTA != "nomx.test" {
		t.Fatalf("implicit MX: %v %+v", err, res)
	}
}

func TestDestinationErrors(t *testing.T) {
	zone := &dnstest.Zone{
		MX:   map[string][]*net.MX{"null.test": {{Host: ".", Pref: 0}}, "down.test": {{Host: "mx.down.test.", Pref: 10}}},
		A:    map[string][]netip.Addr{"mx.down.test": ip("127.0.0.2")},
		Fail: map[string]bool{"servfail.test": true},
	}
	tr := &Transport{Resolver: zone, Hostname: "mx.example.test", Port: 1}
	for _, tt := range []struct {
		domain string
		code   int
		enh    string
	}{
		{"null.test", 556, "5.1.10"},    // RFC 7505 null MX: bounce at once
		{"nxdomain.test", 550, "5.1.2"}, // no MX, no address
		{"servfail.test", 451, "4.4.3"}, // DNS trouble: retry later
		{"down.test", 451, "4.4.1"},     // nobody answers: retry later
	} {
		_, err := tr.Deliver(context.Background(), message("x\r\n"), rcpts(tt.domain, "a@"+tt.domain))
		r, ok := err.(interface{ Error() string })
		if !ok || err == nil {
			t.Fatalf("%s: no error", tt.domain)
		}
		if got := r.Error(); !strings.HasPrefix(got, strings.Join([]string{itoa(tt.code), tt.enh}, " ")) {
			t.Errorf("%s: got %q, want %d %s", tt.domain, got, tt.code, tt.enh)
		}
	}
}

func itoa(n int) string { return strconv.Itoa(n) }

// TestRelayHostNextHop: a bracketed next hop (relay host or transport map) skips MX lookup.
func TestRelayHostNextHop(t *testing.T) {
	p, port := startPeer(t, "127.0.0.1", false)
	tr := &Transport{Resolver: &dnstest.Zone{}, Hostname: "mx.example.test", Port: 1}
	rc := []mail.Recipient{{Addr: "x@anywhere.test", Route: mail.Route{Transport: "remote", NextHop: "[127.0.0.1]:" + strconv.Itoa(port)}}}
	res, err := tr.Deliver(context.Background(), message("Subject: x\r\n\r\ny\r\n"), rc)
	if err != nil || res[0].Reply != nil || res[0].RemoteMTA != "127.0.0.1" {
		t.Fatalf("%v %+v", err, res)
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if _, ok := p.got["x@anywhere.test"]; !ok {
		t.Fatal("relay host did not get the message")
	}
}
