// Package lmtptest provides Store, a scripted LMTP server (go-smtp in LMTP mode) for tests of
// the LMTP transport and of everything that delivers through it: per-recipient refusals at RCPT
// and after DATA, and a record of what was stored.
package lmtptest

import (
	"io"
	"net"
	"sync"
	"testing"

	gosmtp "github.com/emersion/go-smtp"
)

// Message is one stored copy.
type Message struct {
	From, To, Body string
}

// Store is the scripted mail store. Its reply functions may be nil (accept everything).
type Store struct {
	// RcptReply refuses a recipient at RCPT when it returns an error.
	RcptReply func(to string) *gosmtp.SMTPError
	// DataReply refuses a recipient after DATA (LMTP's per-recipient answer) when it returns one.
	DataReply func(to string) *gosmtp.SMTPError
	// UTF8 makes the store offer SMTPUTF8.
	UTF8 bool

	mu       sync.Mutex
	messages []Message // stored
	offered  []Message // every copy that reached the end of DATA, stored or refused
}

// Start serves the store on 127.0.0.1:0 until the test ends and returns its address.
func (s *Store) Start(t testing.TB) string {
	t.Helper()
	srv := gosmtp.NewServer(s)
	srv.LMTP = true
	srv.Domain = "store.test"
	srv.EnableSMTPUTF8 = s.UTF8
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return ln.Addr().String()
}

// Offered returns every copy that reached the end of DATA, including refused ones.
func (s *Store) Offered() []Message {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]Message(nil), s.offered...)
}

// Messages returns what was stored so far.
func (s *Store) Messages() []Message {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]Message(nil), s.messages...)
}

// NewSession implements gosmtp.Backend.
func (s *Store) NewSession(*gosmtp.Conn) (gosmtp.Session, error) { return &session{s: s}, nil }

type session struct {
	s     *Store
	from  string
	rcpts []string
}

func (x *session) Mail(from string, _ *gosmtp.MailOptions) error { x.from = from; return nil }

func (x *session) Rcpt(to string, _ *gosmtp.RcptOptions) error {
	if x.s.RcptReply != nil {
		if e := x.s.RcptReply(to); e != nil {
			return e
		}
	}
	x.rcpts = append(x.rcpts, to)
	return nil
}

func (x *session) Data(io.Reader) error { return nil } // LMTP uses LMTPData

func (x *session) LMTPData(r io.Reader, st gosmtp.StatusCollector) error {
	b, err := io.ReadAll(r)
	if err != nil {
		return err
	}
	for _, to := range x.rcpts {
		m := Message{From: x.from, To: to, Body: string(b)}
		x.s.mu.Lock()
		x.s.offered = append(x.s.offered, m)
		x.s.mu.Unlock()
		if x.s.DataReply != nil {
			if e := x.s.DataReply(to); e != nil {
				st.SetStatus(to, e)
				continue
			}
		}
		x.s.mu.Lock()
		x.s.messages = append(x.s.messages, m)
		x.s.mu.Unlock()
		st.SetStatus(to, nil)
	}
	return nil
}

func (x *session) Reset()        { x.from, x.rcpts = "", nil }
func (x *session) Logout() error { return nil }
