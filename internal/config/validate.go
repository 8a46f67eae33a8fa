package config

import (
	"fmt"
	"maps"
	"net"
	"net/url"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/postamt/postamt/internal/mail"
	"github.com/postamt/postamt/internal/policy/faults"
	"github.com/postamt/postamt/internal/smtp"
)

// Validate checks every option and returns all problems at once (Errors), not just the first.
func (c *Config) Validate() error {
	v := &validator{c: c}
	c.validateTop(v)
	c.validateSMTP(v)
	c.validateQueue(v)
	c.validateLocal(v)
	c.validateSubmission(v)
	c.validateDKIM(v)
	c.validateChecks(v)
	c.validateContentChecks(v)
	c.validateSandbox(v)
	if c.Outbound.Port < 1 || c.Outbound.Port > 65535 {
		v.addf("outbound.port", "must be a port number from 1 to 65535, got %d", c.Outbound.Port)
	}
	for _, s := range c.Outbound.DNSServers {
		v.hostPort("outbound.dns_servers", s)
	}
	v.atLeast("outbound.destination_limit", c.Outbound.DestinationLimit, 1)
	v.atLeast("outbound.max_connections", c.Outbound.MaxConnections, 1)
	if c.Outbound.RelayHost != "" {
		v.nextHop("outbound.relay_host", c.Outbound.RelayHost)
	}
	switch o := c.Outbound; {
	case (o.RelayUsername == "") != (o.RelayPasswordFile == ""):
		v.addf("outbound.relay_username", "relay_username and relay_password_file go together")
	case o.RelayUsername != "" && o.RelayHost == "":
		v.addf("outbound.relay_username", "is set but relay_host is empty")
	case o.RelayPasswordFile != "":
		if _, err := os.ReadFile(o.RelayPasswordFile); err != nil {
			v.addf("outbound.relay_password_file", "cannot read: %v", err)
		}
	}
	for _, d := range slices.Sorted(maps.Keys(c.Outbound.Transports)) {
		if _, err := mail.ParseTransportMap(c.Outbound.Transports[d]); err != nil {
			v.addf("outbound.transports."+d, "%v", err)
		}
	}
	c.validateOutboundTLS(v)
	if len(v.errs) > 0 {
		return v.errs
	}
	return nil
}

type validator struct {
	c    *Config
	errs Errors
}

func (v *validator) addf(option, format string, args ...any) {
	v.errs = append(v.errs, Error{File: v.c.file, Line: v.c.line(option), Option: option, Msg: fmt.Sprintf(format, args...)})
}

func (v *validator) oneOf(option, value string, allowed ...string) {
	for _, a := range allowed {
		if value == a {
			return
		}
	}
	v.addf(option, "%q is not allowed; use one of: %s", value, strings.Join(allowed, ", "))
}

func (v *validator) atLeast(option string, value, min int) {
	if value < min {
		v.addf(option, "must be at least %d, got %d", min, value)
	}
}

// loopback accepts only a host:port on 127.0.0.0/8, ::1 or localhost: the admin API can delete
// mail, and a bearer token in clear text is no protection on a network.
func (v *validator) loopback(option, addr string) {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		v.addf(option, "%q is not host:port (%v)", addr, err)
		return
	}
	if ip := net.ParseIP(host); host != "localhost" && (ip == nil || !ip.IsLoopback()) {
		v.addf(option, "%q is not a loopback address; the admin API listens only on 127.0.0.1, ::1 or localhost (reach it remotely through SSH)", addr)
		return
	}
	v.hostPort(option, addr)
}

func (v *validator) hostPort(option, addr string) {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		v.addf(option, "%q is not host:port (%v)", addr, err)
		return
	}
	if host != "" && net.ParseIP(host) == nil && host != "localhost" {
		v.addf(option, "%q: host must be an IP address or localhost", addr)
	}
	var p int
	if _, err := fmt.Sscanf(port, "%d", &p); err != nil || p < 0 || p > 65535 {
		v.addf(option, "%q: port must be a number from 0 to 65535", addr)
	}
}

// nextHop accepts "[host]:port" or "[host]" (brackets: no MX lookup, as in Postfix).
func (v *validator) nextHop(option, hop string) {
	host, port, ok := mail.SplitNextHop(hop)
	if !ok || host == "" || port < 1 || port > 65535 {
		v.addf(option, "%q must be [host]:port, e.g. \"[smtp.example.org]:587\"", hop)
	}
}

func (c *Config) validateTop(v *validator) {
	if c.Hostname == "" || strings.ContainsAny(c.Hostname, " \t\r\n") {
		v.addf("hostname", "must be the server's fully qualified name, without spaces")
	}
	if c.DataDir == "" {
		v.addf("data_dir", "must not be empty")
	}
	v.oneOf("log.format", c.Log.Format, "text", "json")
	v.oneOf("log.level", c.Log.Level, "debug", "info", "warn", "error")
	if (c.TLS.CertFile == "") != (c.TLS.KeyFile == "") {
		v.addf("tls", "cert_file and key_file must be set together (or both left empty for a self-signed certificate)")
	}
	for opt, f := range map[string]string{"tls.cert_file": c.TLS.CertFile, "tls.key_file": c.TLS.KeyFile} {
		if f != "" {
			if _, err := os.Stat(f); err != nil {
				v.addf(opt, "cannot read %s: %v", f, err)
			}
		}
	}
	if c.Metrics.Listen != "" {
		v.hostPort("metrics.listen", c.Metrics.Listen)
	}
	if c.Admin.Listen != "" {
		v.loopback("admin.listen", c.Admin.Listen)
	}
}

func (c *Config) validateSMTP(v *validator) {
	s := c.SMTP
	if len(s.Listen) == 0 {
		v.addf("smtp.listen", "at least one address is needed")
	}
	for _, a := range s.Listen {
		v.hostPort("smtp.listen", a)
	}
	if s.MaxMessageSize < 1024 || s.MaxMessageSize > 1<<31 {
		v.addf("smtp.max_message_size", "must be between 1KiB and 2GiB, got %d bytes", s.MaxMessageSize)
	}
	v.atLeast("smtp.max_recipients", s.MaxRecipients, 1)
	// RFC 5321 §4.5.3.1.4: a command line is at most 512 octets; a server may accept more, never less.
	v.atLeast("smtp.max_line_length", s.MaxLineLength, 512)
	if s.MaxLineLength > 64<<10 {
		v.addf("smtp.max_line_length", "must be at most 65536")
	}
	if s.CommandTimeout <= 0 {
		v.addf("smtp.command_timeout", "must be positive")
	}
	if s.DataTimeout <= 0 {
		v.addf("smtp.data_timeout", "must be positive")
	}
	v.atLeast("smtp.max_connections", s.MaxConnections, 1)
	v.atLeast("smtp.max_connections_per_ip", s.MaxConnectionsPerIP, 1)
	v.atLeast("smtp.max_errors", s.MaxErrors, 1)
}

func (c *Config) validateQueue(v *validator) {
	q := c.Queue
	if len(q.RetryIntervals) == 0 {
		v.addf("queue.retry_intervals", "at least one interval is needed")
	}
	for _, d := range q.RetryIntervals {
		if d <= 0 {
			v.addf("queue.retry_intervals", "intervals must be positive")
			break
		}
	}
	if q.MaxAge <= 0 {
		v.addf("queue.max_age", "must be positive")
	}
	v.atLeast("queue.delivery_workers", q.DeliveryWorkers, 1)
	if q.DeliveryWorkers > 10000 {
		v.addf("queue.delivery_workers", "must be at most 10000")
	}
}

func (c *Config) validateLocal(v *validator) {
	l := &c.Local
	local := map[string]bool{}
	for i, d := range l.Domains {
		a, err := smtp.ParseAddress("x@"+d, true)
		if err != nil || strings.HasPrefix(d, "[") {
			v.addf("local.domains", "%q is not a valid domain name", d)
			continue
		}
		l.Domains[i] = a.ASCIIDomain()
		local[a.ASCIIDomain()] = true
	}
	addr := func(option, s string, mustBeLocal bool) {
		a, err := smtp.ParseAddress(s, true)
		if err != nil {
			v.addf(option, "%q is not a valid address (%v)", s, err)
			return
		}
		if mustBeLocal && !local[a.ASCIIDomain()] {
			v.addf(option, "%q is not in a local domain (add %q to local.domains)", s, a.ASCIIDomain())
		}
	}
	for _, m := range l.Mailboxes {
		addr("local.mailboxes", m, true)
	}
	for _, from := range slices.Sorted(maps.Keys(l.Aliases)) {
		targets := l.Aliases[from]
		opt := "local.aliases." + from
		addr(opt, from, true)
		if len(targets) == 0 {
			v.addf(opt, "an alias needs at least one target")
		}
		for _, t := range targets {
			addr(opt, t, false)
		}
	}
	for _, d := range slices.Sorted(maps.Keys(l.CatchAll)) {
		target := l.CatchAll[d]
		opt := "local.catch_all." + d
		if !local[strings.ToLower(d)] {
			v.addf(opt, "%q is not in local.domains", d)
		}
		addr(opt, target, false)
	}
	if len(l.PlusSeparator) > 1 || (l.PlusSeparator != "" && strings.ContainsAny(l.PlusSeparator, ".@\" ")) {
		v.addf("local.plus_separator", "%q must be empty or one character such as + or -", l.PlusSeparator)
	}
	v.oneOf("local.transport", l.Transport, "maildir", "lmtp")
	if l.AcceptAll != "" && l.AcceptAll != "sandbox" {
		v.addf("local.accept_all", "%q is not allowed; use \"sandbox\" or leave it empty", l.AcceptAll)
	}
	if l.MaildirRoot == "" {
		v.addf("local.maildir_root", "must not be empty")
	}
	if l.Transport == "lmtp" {
		if p, ok := strings.CutPrefix(l.LMTPAddress, "unix:"); ok {
			if p == "" {
				v.addf("local.lmtp_address", "unix: needs a socket path")
			}
		} else {
			v.hostPort("local.lmtp_address", l.LMTPAddress)
		}
	}
}

func (c *Config) validateSubmission(v *validator) {
	s := c.Submission
	for _, a := range s.Listen {
		v.hostPort("submission.listen", a)
	}
	for _, a := range s.ListenTLS {
		v.hostPort("submission.listen_tls", a)
	}
	if s.UsersDB == "" {
		v.addf("submission.users_db", "must not be empty")
	}
	v.atLeast("submission.max_messages_per_hour", s.MaxMessagesPerHour, 0)
	v.atLeast("submission.max_recipients_per_message", s.MaxRecipientsPerMessage, 0)
	v.atLeast("submission.max_recipients_per_hour", s.MaxRecipientsPerHour, 0)
	v.atLeast("submission.auth_failures_per_ip", s.AuthFailuresPerIP, 1)
	v.atLeast("submission.auth_failures_per_user", s.AuthFailuresPerUser, 1)
	if s.AuthFailureDelay < 0 || s.AuthFailureDelay.D() > 10*time.Second {
		v.addf("submission.auth_failure_delay", "must be between 0s and 10s, got %v", s.AuthFailureDelay.D())
	}
	if s.AuthLockout <= 0 {
		v.addf("submission.auth_lockout", "must be positive")
	}
	if c.TLS.ReloadInterval < 0 {
		v.addf("tls.reload_interval", "must not be negative")
	}
	t := c.TLS
	if t.ACME {
		if t.CertFile != "" {
			v.addf("tls.acme", "cannot be combined with cert_file/key_file: choose one source of certificates")
		}
		if u, err := url.Parse(t.ACMECA); err != nil || u.Scheme != "https" || u.Host == "" {
			v.addf("tls.acme_ca", "%q must be the https:// URL of the CA's ACME directory", t.ACMECA)
		}
		v.hostPort("tls.acme_http_listen", t.ACMEHTTPListen)
		for _, d := range t.ACMEDomains {
			if a, err := smtp.ParseAddress("x@"+d, false); err != nil || strings.HasPrefix(d, "[") || !strings.Contains(d, ".") || a.ASCIIDomain() != strings.ToLower(d) {
				v.addf("tls.acme_domains", "%q is not a valid (ASCII) host name", d)
			}
		}
		if t.ACMECARoot != "" {
			if _, err := os.Stat(t.ACMECARoot); err != nil {
				v.addf("tls.acme_ca_root", "cannot read %s: %v", t.ACMECARoot, err)
			}
		}
	}
}

func (c *Config) validateDKIM(v *validator) {
	d := c.DKIM
	if d.KeyDir == "" {
		v.addf("dkim.key_dir", "must not be empty")
	}
	for _, dom := range slices.Sorted(maps.Keys(d.Domains)) {
		opt := "dkim.domains." + dom
		a, err := smtp.ParseAddress("x@"+dom, true)
		if err != nil || strings.HasPrefix(dom, "[") || !strings.Contains(dom, ".") {
			v.addf(opt, "%q is not a valid domain name", dom)
		} else if a.ASCIIDomain() != dom {
			v.addf(opt, "write the domain as %q (lower case, ASCII)", a.ASCIIDomain())
		}
		sels := d.Domains[dom].Selectors
		if len(sels) == 0 {
			v.addf(opt+".selectors", "at least one selector is needed")
		}
		for _, s := range sels {
			if !validSelector(s) {
				v.addf(opt+".selectors", "%q is not a valid selector (letters, digits, hyphens; dots between labels)", s)
			}
		}
	}
}

// validSelector: a selector is one or more DNS labels (RFC 6376 §3.1); it also names a file.
func validSelector(s string) bool {
	if s == "" || len(s) > 63 {
		return false
	}
	for _, l := range strings.Split(s, ".") {
		if l == "" || l[0] == '-' || l[len(l)-1] == '-' {
			return false
		}
		for _, r := range l {
			if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '_') {
				return false
			}
		}
	}
	return true
}

func (c *Config) validateOutboundTLS(v *validator) {
	o := &c.Outbound.TLS
	if o.DANEResolver != "" {
		v.hostPort("outbound.tls.dane_resolver", o.DANEResolver)
	}
	if o.DANE && o.DANEResolver == "" {
		v.addf("outbound.tls.dane", "needs outbound.tls.dane_resolver: a DNSSEC-validating resolver you trust, e.g. a local unbound at \"127.0.0.1:53\"")
	}
	norm := map[string]string{}
	for _, d := range slices.Sorted(maps.Keys(o.Policy)) {
		opt := "outbound.tls.policy." + d
		mode := o.Policy[d]
		a, err := smtp.ParseAddress("x@"+d, true)
		if err != nil || strings.HasPrefix(d, "[") {
			v.addf(opt, "%q is not a valid domain name", d)
			continue
		}
		switch mode {
		case "none", "may", "encrypt", "verify":
		case "dane":
			if !o.DANE {
				v.addf(opt, "\"dane\" needs outbound.tls.dane = true (and a dane_resolver)")
			}
		default:
			v.addf(opt, "%q is not allowed; use one of: none, may, encrypt, verify, dane", mode)
		}
		norm[a.ASCIIDomain()] = mode
	}
	if len(o.Policy) > 0 {
		o.Policy = norm
	}
}
func (c *Config) validateSandbox(v *validator) {
	s := c.Sandbox
	v.oneOf("mode", c.Mode, "server", "sandbox")
	if c.Local.AcceptAll == "sandbox" && !s.Enabled {
		v.addf("local.accept_all", "routes mail to the sandbox, which is not enabled (set sandbox.enabled = true or mode = \"sandbox\")")
	}
	if !s.Enabled {
		return
	}
	if s.HTTPListen == "" {
		v.addf("sandbox.http_listen", "the sandbox needs an address for its web UI and API")
	} else {
		v.hostPort("sandbox.http_listen", s.HTTPListen)
	}
	v.atLeast("sandbox.max_messages", s.MaxMessages, 0)
	if s.Webhook != "" {
		if u, err := url.Parse(s.Webhook); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			v.addf("sandbox.webhook", "%q must be an http:// or https:// URL", s.Webhook)
		}
	}
	if s.Auth != "" && s.Auth != "any" && s.Auth != "users" {
		v.addf("sandbox.auth", "%q is not allowed; use \"any\", \"users\" or leave it empty", s.Auth)
	}
	if s.Auth == "users" && len(s.Users) == 0 {
		v.addf("sandbox.users", "auth = \"users\" needs at least one user = \"password\" entry")
	}
	for _, u := range slices.Sorted(maps.Keys(s.Users)) {
		if u == "" || s.Users[u] == "" {
			v.addf("sandbox.users", "user names and passwords must not be empty")
			break
		}
	}
	if s.RequireAuth && s.Auth == "" {
		v.addf("sandbox.require_auth", "needs sandbox.auth = \"any\" or \"users\"")
	}
	for i, r := range s.Chaos {
		opt := fmt.Sprintf("sandbox.chaos[%d]", i)
		rule := faults.Rule{Stage: r.Stage, Reply: r.Reply, Probability: r.Probability, Match: r.Match, MinSize: int64(r.MinSize)}
		if err := rule.Validate(); err != nil {
			v.addf(opt, "%v", err)
		}
	}
}
