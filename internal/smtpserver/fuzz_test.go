package smtpserver

import (
	"bufio"
	"context"
	"errors"
	"io"
	"net"
	"net/netip"
	"regexp"
	"testing"
	"time"

	"github.com/postamt/postamt/internal/mail"
	"github.com/postamt/postamt/internal/smtp"
	"github.com/postamt/postamt/internal/spool"
)

type fuzzRouter struct{}

func (fuzzRouter) Resolve(p smtp.Path, _ bool) ([]mail.Recipient, *smtp.Reply) {
	if p.Addr.Local == "bad" {
		return nil, smtp.NewReply(550, smtp.CodeBadDestMailbox, "No such user here")
	}
	return []mail.Recipient{{Addr: p.Addr.String(), Route: mail.Route{Transport: "x"}}}, nil
}

type fuzzIntake struct{ sp *spool.Spool }

func (f fuzzIntake) Create() (*spool.Writer, error) { return f.sp.Create("FUZZ") }
func (f fuzzIntake) Accept(_ context.Context, env *mail.Envelope, w *spool.Writer) error {
	w.Abort()
	env.ID = "FUZZ"
	return nil
}

var (
	replyLine = regexp.MustCompile(`^[2-5][0-9][0-9][ -]`)
	errorLine = regexp.MustCompile(`^([45])[0-9][0-9][ -]([45])\.[0-9]{1,3}\.[0-9]{1,3} `)
)

// FuzzSession feeds arbitrary client input to a whole session (command parser, parameter and
// path parsing, DATA and BDAT readers) and checks that the server neither panics nor writes a
// malformed reply line, and that every 4xx/5xx reply carries an enhanced status code of the same
// class.
func FuzzSession(f *testing.F) {
	for _, s := range []string{
		"EHLO x\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<c@d.test>\r\nDATA\r\nSubject: x\r\n\r\nhi\r\n.\r\nQUIT\r\n",
		"EHLO x\r\nMAIL FROM:<> SIZE=10 BODY=8BITMIME\r\nRCPT TO:<bad@d.test>\r\nRCPT TO:<c@d.test> NOTIFY=NEVER\r\nBDAT 3 LAST\r\nabcRSET\r\n",
		"HELO x\r\nMAIL FROM:<a@b.test> SMTPUTF8\r\nVRFY x\r\nEXPN y\r\nNOOP\r\nHELP\r\nRSET\r\nQUIT\r\n",
		"EHLO x\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<c@d.test>\r\nDATA\r\na\n.\nb\r\n.\r\n",
		"GET / HTTP/1.0\r\n\r\n",
	} {
		f.Add([]byte(s))
	}
	sp, err := spool.New(f.TempDir(), nil)
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, in []byte) {
		srv := New(Options{Hostname: "mx.test", Router: fuzzRouter{}, Intake: fuzzIntake{sp},
			Limits: Limits{MaxMessageSize: 4096, MaxErrors: 1000, CommandTimeout: 2 * time.Second, DataTimeout: 2 * time.Second}})
		client, server := net.Pipe()
		done := make(chan struct{})
		srv.wg.Add(1)
		go func() {
			srv.serveConn(server, netipLoopback)
			close(done)
		}()
		go func() {
			client.Write(in)
			client.Write([]byte("\r\n.\r\nQUIT\r\n"))
		}()
		r := bufio.NewReader(client)
		client.SetReadDeadline(time.Now().Add(10 * time.Second))
		first := true
		for {
			line, err := r.ReadString('\n')
			if err != nil {
				if err != io.EOF && !isClosedPipe(err) {
					t.Fatalf("reading replies: %v", err)
				}
				break
			}
			if !replyLine.MatchString(line) || line[len(line)-2:] != "\r\n" {
				t.Fatalf("malformed reply line %q", line)
			}
			if line[0] == '4' || line[0] == '5' {
				if m := errorLine.FindStringSubmatch(line); m == nil || m[1] != m[2] {
					t.Fatalf("error reply without a matching enhanced status code: %q", line)
				}
			}
			if first && line[:4] != "220 " {
				t.Fatalf("greeting %q", line)
			}
			first = false
		}
		client.Close()
		<-done
	})
}

var netipLoopback = netip.MustParseAddr("127.0.0.1")

func isClosedPipe(err error) bool { return errors.Is(err, io.ErrClosedPipe) }
