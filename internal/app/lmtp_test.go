package app

import (
	"io"
	"net"
	"strings"
	"sync"
	"testing"

	gosmtp "github.com/emersion/go-smtp"
)

// refusingStore is a scripted LMTP peer that accepts every RCPT and then refuses every message
// with 550 5.1.1 after DATA, remembering the DSNs (from <>) it was offered.
type refusingStore struct {
	mu   sync.Mutex
	dsns []string
}

func (s *refusingStore) dsn() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.dsns) == 0 {
		return ""
	}
	return s.dsns[0]
}

type refusingSession struct {
	s     *refusingStore
	from  string
	rcpts []string
}

func (s *refusingStore) NewSession(*gosmtp.Conn) (gosmtp.Session, error) {
	return &refusingSession{s: s}, nil
}
func (r *refusingSession) Mail(from string, _ *gosmtp.MailOptions) error { r.from = from; return nil }
func (r *refusingSession) Rcpt(to string, _ *gosmtp.RcptOptions) error {
	r.rcpts = append(r.rcpts, to)
	return nil
}
func (r *refusingSession) Data(io.Reader) error { return nil }
func (r *refusingSession) LMTPData(rd io.Reader, st gosmtp.StatusCollector) error {
	b, _ := io.ReadAll(rd)
	if r.from == "" && strings.Contains(string(b), "delivery-status") {
		r.s.mu.Lock()
		r.s.dsns = append(r.s.dsns, string(b))
		r.s.mu.Unlock()
	}
	for _, to := range r.rcpts {
		st.SetStatus(to, &gosmtp.SMTPError{Code: 550, EnhancedCode: gosmtp.EnhancedCode{5, 1, 1}, Message: "User unknown"})
	}
	return nil
}
func (r *refusingSession) Reset()        { r.from, r.rcpts = "", nil }
func (r *refusingSession) Logout() error { return nil }

func startRefusingLMTP(t *testing.T) *refusingStoreAddr {
	store := &refusingStore{}
	srv := gosmtp.NewServer(store)
	srv.LMTP = true
	srv.Domain = "store.test"
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return &refusingStoreAddr{refusingStore: store, addr: ln.Addr().String()}
}

type refusingStoreAddr struct {
	*refusingStore
	addr string
}

func (r *refusingStoreAddr) String() string { return r.addr }
