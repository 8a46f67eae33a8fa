// Package check answers "does my SMTP server work?": it connects, shows the greeting and the EHLO
// extensions, upgrades with STARTTLS and describes the certificate and protocol, and can send a
// test message. It only talks to the server; it changes nothing.
package check

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"net/textproto"
	"os"
	"strings"
	"time"
)

// Options for Run.
type Options struct {
	Addr     string // host or host:port (default port 25)
	Helo     string
	From, To string // when To is set, a test message is sent
	NoTLS    bool
	Timeout  time.Duration
}

// Run performs the check and writes a report to out. It returns an error when the server is not
// usable (no greeting, a refused test message), so scripts can rely on the exit status.
func Run(ctx context.Context, out io.Writer, o Options) error {
	if o.Timeout == 0 {
		o.Timeout = 30 * time.Second
	}
	if _, _, err := net.SplitHostPort(o.Addr); err != nil {
		o.Addr = net.JoinHostPort(o.Addr, "25")
	}
	if o.Helo == "" {
		o.Helo, _ = os.Hostname()
		if o.Helo == "" {
			o.Helo = "localhost"
		}
	}
	host, _, _ := net.SplitHostPort(o.Addr)
	p := func(format string, a ...any) { fmt.Fprintf(out, format+"\n", a...) }

	p("Connecting to %s ...", o.Addr)
	start := time.Now()
	d := net.Dialer{Timeout: o.Timeout}
	conn, err := d.DialContext(ctx, "tcp", o.Addr)
	if err != nil {
		return fmt.Errorf("connect %s: %w", o.Addr, err)
	}
	defer conn.Close()
	p("Connected to %s in %s", conn.RemoteAddr(), time.Since(start).Round(time.Millisecond))
	c := &client{conn: conn, tp: textproto.NewConn(conn), timeout: o.Timeout, out: out}

	code, msg, err := c.read()
	if err != nil {
		return fmt.Errorf("greeting: %w", err)
	}
	p("Greeting: %d %s", code, msg)
	if code != 220 {
		return fmt.Errorf("server refused the connection: %d %s", code, msg)
	}
	ext, err := c.ehlo(o.Helo)
	if err != nil {
		return err
	}
	p("EHLO extensions:")
	for _, e := range ext {
		p("  %s", e)
	}
	if !o.NoTLS {
		if !has(ext, "STARTTLS") {
			p("STARTTLS: not offered (mail to and from this server travels unencrypted)")
		} else if err := c.startTLS(host, p); err != nil {
			return err
		} else if ext, err = c.ehlo(o.Helo); err != nil {
			return err
		} else {
			p("EHLO extensions after STARTTLS: %s", strings.Join(ext[1:], ", "))
		}
	}
	if o.To != "" {
		if err := c.send(o, p); err != nil {
			return err
		}
	}
	c.cmd("QUIT")
	p("OK: %s answers SMTP", o.Addr)
	return nil
}

type client struct {
	conn    net.Conn
	tp      *textproto.Conn
	timeout time.Duration
	out     io.Writer
}

func (c *client) read() (int, string, error) {
	c.conn.SetDeadline(time.Now().Add(c.timeout))
	return c.tp.ReadResponse(0)
}

func (c *client) cmd(format string, a ...any) (int, string, error) {
	c.conn.SetDeadline(time.Now().Add(c.timeout))
	if err := c.tp.PrintfLine(format, a...); err != nil {
		return 0, "", err
	}
	code, msg, err := c.read()
	var pe textproto.ProtocolError
	if errors.As(err, &pe) {
		return code, msg, err
	}
	var te *textproto.Error
	if errors.As(err, &te) {
		return te.Code, te.Msg, nil
	}
	return code, msg, err
}

func (c *client) ehlo(helo string) ([]string, error) {
	code, msg, err := c.cmd("EHLO %s", helo)
	if err != nil {
		return nil, fmt.Errorf("EHLO: %w", err)
	}
	if code != 250 {
		return nil, fmt.Errorf("EHLO refused: %d %s", code, msg)
	}
	return strings.Split(msg, "\n"), nil
}

func has(ext []string, name string) bool {
	for _, e := range ext {
		if strings.EqualFold(strings.Fields(e + " ")[0], name) {
			return true
		}
	}
	return false
}

func (c *client) startTLS(host string, p func(string, ...any)) error {
	code, msg, err := c.cmd("STARTTLS")
	if err != nil || code != 220 {
		return fmt.Errorf("STARTTLS refused: %d %s %v", code, msg, err)
	}
	// Verify separately so that a self-signed certificate is reported, not fatal: MTAs use TLS
	// opportunistically without verification (RFC 7435), so it still protects against eavesdroppers.
	tc := tls.Client(c.conn, &tls.Config{ServerName: host, InsecureSkipVerify: true})
	c.conn.SetDeadline(time.Now().Add(c.timeout))
	if err := tc.Handshake(); err != nil {
		return fmt.Errorf("TLS handshake: %w", err)
	}
	st := tc.ConnectionState()
	p("TLS: %s, cipher %s", tls.VersionName(st.Version), tls.CipherSuiteName(st.CipherSuite))
	if len(st.PeerCertificates) > 0 {
		cert := st.PeerCertificates[0]
		p("Certificate: subject %q, issuer %q", cert.Subject.CommonName, cert.Issuer.String())
		p("  names: %s", strings.Join(cert.DNSNames, ", "))
		p("  valid %s to %s", cert.NotBefore.Format(time.DateOnly), cert.NotAfter.Format(time.DateOnly))
		inter := x509.NewCertPool()
		for _, ic := range st.PeerCertificates[1:] {
			inter.AddCert(ic)
		}
		if _, err := cert.Verify(x509.VerifyOptions{DNSName: host, Intermediates: inter}); err != nil {
			p("  verification: FAILED (%v)", err)
		} else {
			p("  verification: OK for %s", host)
		}
	}
	c.conn = tc
	c.tp = textproto.NewConn(tc)
	return nil
}

func (c *client) send(o Options, p func(string, ...any)) error {
	from := o.From
	if from == "" {
		from = "postamt-check@" + o.Helo
	}
	steps := []struct {
		cmd  string
		want int
	}{{"MAIL FROM:<" + from + ">", 250}, {"RCPT TO:<" + o.To + ">", 250}, {"DATA", 354}}
	for _, s := range steps {
		code, msg, err := c.cmd("%s", s.cmd)
		if err != nil {
			return fmt.Errorf("%s: %w", s.cmd, err)
		}
		p("%s -> %d %s", s.cmd, code, msg)
		if code != s.want {
			return fmt.Errorf("test message refused at %s: %d %s", strings.Fields(s.cmd)[0], code, msg)
		}
	}
	w := c.tp.DotWriter()
	fmt.Fprintf(w, "From: <%s>\r\nTo: <%s>\r\nSubject: postamt check test message\r\nDate: %s\r\nMessage-ID: <%d.check@%s>\r\n\r\nThis is a test message sent by postamt check.\r\n",
		from, o.To, time.Now().Format(time.RFC1123Z), time.Now().UnixNano(), o.Helo)
	if err := w.Close(); err != nil {
		return err
	}
	code, msg, err := c.read()
	if err != nil {
		var te *textproto.Error
		if errors.As(err, &te) {
			code, msg = te.Code, te.Msg
		} else {
			return fmt.Errorf("end of data: %w", err)
		}
	}
	p("end of data -> %d %s", code, msg)
	if code != 250 {
		return fmt.Errorf("test message refused: %d %s", code, msg)
	}
	return nil
}
