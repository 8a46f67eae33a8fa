// Package config turns a TOML file into a validated Config: embedded defaults, then the file, then
// POSTAMT_* environment overrides, then Validate, which reports every problem as
// "file:line: option: message". It only describes settings; it opens no sockets and creates no
// directories.
package config

import (
	"os"
	"path/filepath"
	"time"
)

// Config is the whole configuration. Components receive only their own section.
type Config struct {
	// Mode is a preset applied before the file: "server" (the default) or "sandbox" (see
	// SandboxPreset). It only changes defaults; every option can still be set.
	Mode       string     `toml:"mode"`
	Hostname   string     `toml:"hostname"`
	DataDir    string     `toml:"data_dir"`
	Log        Log        `toml:"log"`
	SMTP       SMTP       `toml:"smtp"`
	TLS        TLS        `toml:"tls"`
	Queue      Queue      `toml:"queue"`
	Local      Local      `toml:"local"`
	Outbound   Outbound   `toml:"outbound"`
	Metrics    Metrics    `toml:"metrics"`
	Admin      Admin      `toml:"admin"`
	Checks     Checks     `toml:"checks"`
	Quarantine Quarantine `toml:"quarantine"`
	Sandbox    Sandbox    `toml:"sandbox"`
	// Submission and DKIM: mail from the server's own users and applications.
	Submission Submission `toml:"submission"`
	DKIM       DKIM       `toml:"dkim"`
	file       string     // where the settings came from, for messages
	pos        positions  // option → line, for semantic errors
}

type Log struct {
	Format string `toml:"format"` // text | json
	Level  string `toml:"level"`  // debug | info | warn | error
}

// SMTP is the inbound (MX) listener and the limits it enforces on clients.
type SMTP struct {
	Listen              []string `toml:"listen"`
	MaxMessageSize      Size     `toml:"max_message_size"`
	MaxRecipients       int      `toml:"max_recipients"`
	MaxLineLength       int      `toml:"max_line_length"`
	CommandTimeout      Duration `toml:"command_timeout"`
	DataTimeout         Duration `toml:"data_timeout"`
	MaxConnections      int      `toml:"max_connections"`
	MaxConnectionsPerIP int      `toml:"max_connections_per_ip"`
	MaxErrors           int      `toml:"max_errors"`
}

type TLS struct {
	CertFile string `toml:"cert_file"`
	KeyFile  string `toml:"key_file"`
	// ReloadInterval is how often at most the certificate files are checked for a change (new
	// files are used without a restart).
	ReloadInterval Duration `toml:"reload_interval"`
	// ACME obtains and renews the certificate from an ACME CA (Let's Encrypt by default)
	// instead of cert_file/key_file, answering the HTTP-01 challenge on ACMEHTTPListen.
	ACME           bool     `toml:"acme"`
	ACMEEmail      string   `toml:"acme_email"`
	ACMECA         string   `toml:"acme_ca"`
	ACMEDomains    []string `toml:"acme_domains"` // default: [hostname]
	ACMEHTTPListen string   `toml:"acme_http_listen"`
	ACMECARoot     string   `toml:"acme_ca_root"` // PEM roots for a private CA's HTTPS
}

// Submission is mail from the server's own users and applications: RFC 6409 (port 587,
// STARTTLS) and RFC 8314 (port 465, implicit TLS). Both require AUTH. Off until a listener is
// configured.
type Submission struct {
	Listen    []string `toml:"listen"`     // STARTTLS listeners, 587-style
	ListenTLS []string `toml:"listen_tls"` // implicit-TLS listeners, 465-style
	// RequireTLS offers AUTH only under TLS (530 5.7.0 before STARTTLS). Turn it off only for a
	// listener on loopback.
	RequireTLS bool `toml:"require_tls"`
	// HideClientIP leaves the client's address and HELO name out of the Received header of
	// submitted mail.
	HideClientIP bool `toml:"hide_client_ip"`
	// UsersDB is the account database (relative to data_dir).
	UsersDB string `toml:"users_db"`
	// Per-user sending limits; 0 disables one.
	MaxMessagesPerHour      int `toml:"max_messages_per_hour"`
	MaxRecipientsPerMessage int `toml:"max_recipients_per_message"`
	MaxRecipientsPerHour    int `toml:"max_recipients_per_hour"`
	// Failed AUTH: the first failure waits AuthFailureDelay, each further one twice as long (up
	// to 8 s); AuthFailuresPerIP or AuthFailuresPerUser failures within AuthLockout lock the
	// address or the account out for AuthLockout (421 4.7.0).
	AuthFailureDelay    Duration `toml:"auth_failure_delay"`
	AuthFailuresPerIP   int      `toml:"auth_failures_per_ip"`
	AuthFailuresPerUser int      `toml:"auth_failures_per_user"`
	AuthLockout         Duration `toml:"auth_lockout"`
}

// DKIM signs submitted mail. Keys live in KeyDir/<domain>/<selector>.key, where
// `postamt dkim keygen` writes them.
type DKIM struct {
	KeyDir  string                `toml:"key_dir"` // relative to data_dir
	Domains map[string]DKIMDomain `toml:"domains"`
}

// DKIMDomain lists a signing domain's selectors; each makes one signature (an RSA and an
// Ed25519 selector give dual signing).
type DKIMDomain struct {
	Selectors []string `toml:"selectors"`
}

type Queue struct {
	RetryIntervals  []Duration `toml:"retry_intervals"`
	MaxAge          Duration   `toml:"max_age"`
	DelayWarning    Duration   `toml:"delay_warning"`
	DeliveryWorkers int        `toml:"delivery_workers"`
}

// Local describes the domains Postamt is the final destination for.
type Local struct {
	Domains       []string            `toml:"domains"`
	Mailboxes     []string            `toml:"mailboxes"`
	Aliases       map[string][]string `toml:"aliases"`
	CatchAll      map[string]string   `toml:"catch_all"`
	PlusSeparator string              `toml:"plus_separator"`
	Transport     string              `toml:"transport"` // maildir | lmtp
	MaildirRoot   string              `toml:"maildir_root"`
	LMTPAddress   string              `toml:"lmtp_address"`
	// AcceptAll names a transport that takes every recipient of every domain, with no relay
	// control: "sandbox" (set by mode = "sandbox"), or "" for normal routing.
	AcceptAll string `toml:"accept_all"`
}

// Outbound is delivery to other domains' mail exchangers.
type Outbound struct {
	Port       int      `toml:"port"`        // destination port; 25 except in tests
	DNSServers []string `toml:"dns_servers"` // "ip:port" resolvers; empty: the system's
	// RelayHost sends all mail for other domains to one server ("[host]:port", no MX lookup).
	RelayHost string `toml:"relay_host"`
	// DestinationLimit caps simultaneous deliveries to one domain or relay host.
	DestinationLimit int `toml:"destination_limit"`
	// MaxConnections caps simultaneous deliveries to all remote destinations together.
	MaxConnections int `toml:"max_connections"`
	// ConnectionReuse is how long a connection stays open for the next message to the same
	// destination; 0 closes it after each message.
	ConnectionReuse Duration `toml:"connection_reuse"`
	// RelayUsername and RelayPasswordFile authenticate to relay_host (over TLS only).
	RelayUsername     string `toml:"relay_username"`
	RelayPasswordFile string `toml:"relay_password_file"`
	// Transports maps a domain to the server that takes its mail ("[host]:port").
	Transports map[string]string `toml:"transports"`
	TLS        OutboundTLS       `toml:"tls"`
}

// OutboundTLS decides how much TLS outbound SMTP needs: discovery of MTA-STS and DANE, and
// per-domain overrides that take precedence over both.
type OutboundTLS struct {
	MTASTS bool `toml:"mta_sts"` // fetch and enforce MTA-STS policies (RFC 8461); cache in data_dir/mta-sts
	// DANE uses TLSA records (RFC 7672); needs DANEResolver, a validating resolver we trust.
	DANE         bool   `toml:"dane"`
	DANEResolver string `toml:"dane_resolver"`
	// Policy maps a domain (or relay host name) to none | may | encrypt | verify | dane.
	Policy map[string]string `toml:"policy"`
}

// Sandbox is the capture store and its web UI and API (mode = "sandbox").
type Sandbox struct {
	// Enabled opens the store, the "sandbox" transport and the HTTP listener.
	Enabled    bool   `toml:"enabled"`
	HTTPListen string `toml:"http_listen"` // web UI and REST API
	// MemoryOnly keeps captured mail in memory and the queue in a temporary directory removed
	// at exit: nothing is left on disk.
	MemoryOnly  bool     `toml:"memory_only"`
	MaxMessages int      `toml:"max_messages"` // 0: no limit
	MaxAge      Duration `toml:"max_age"`      // 0: no limit
	// Webhook is POSTed a JSON summary of every captured message ("" disables).
	Webhook string `toml:"webhook"`
	// Auth offers SMTP AUTH PLAIN and LOGIN, also without TLS (the sandbox listens on
	// loopback): "" not offered, "any" accepts every user name and password, "users" only
	// those in Users. RequireAuth refuses MAIL before AUTH.
	Auth        string            `toml:"auth"`
	Users       map[string]string `toml:"users"`
	RequireAuth bool              `toml:"require_auth"`
	Chaos       []ChaosRule       `toml:"chaos"`
}

// ChaosRule makes the sandbox answer an error (see internal/policy/faults).
type ChaosRule struct {
	Stage       string  `toml:"stage"`       // connect, helo, mail, rcpt, data, delivery
	Reply       string  `toml:"reply"`       // "451 4.3.0 Try again later"
	Probability float64 `toml:"probability"` // 0..1
	Match       string  `toml:"match"`       // address substring, "" for all
	MinSize     Size    `toml:"min_size"`    // only messages at least this big
}

type Metrics struct {
	Listen string `toml:"listen"` // "" disables the HTTP endpoint
}

// Admin is the queue administration API. It always listens on <data_dir>/admin.sock; Listen adds
// a loopback TCP listener (same bearer token) for tools that cannot reach the socket.
type Admin struct {
	Listen string `toml:"listen"` // "" for the unix socket only
}

// Default returns the embedded defaults: a server that runs from an empty directory with no file.
func Default() *Config {
	host, err := os.Hostname()
	if err != nil || host == "" {
		host = "localhost"
	}
	return &Config{
		Hostname: host,
		DataDir:  "postamt-data",
		Log:      Log{Format: "text", Level: "info"},
		SMTP: SMTP{
			Listen:              []string{"127.0.0.1:2525"},
			MaxMessageSize:      25 << 20,
			MaxRecipients:       100,
			MaxLineLength:       512,
			CommandTimeout:      Duration(5 * time.Minute),
			DataTimeout:         Duration(10 * time.Minute),
			MaxConnections:      1000,
			MaxConnectionsPerIP: 50,
			MaxErrors:           10,
		},
		Queue: Queue{
			RetryIntervals: []Duration{
				Duration(time.Minute), Duration(5 * time.Minute), Duration(15 * time.Minute),
				Duration(30 * time.Minute), Duration(time.Hour), Duration(2 * time.Hour), Duration(4 * time.Hour),
			},
			MaxAge:          Duration(5 * 24 * time.Hour),
			DelayWarning:    Duration(4 * time.Hour),
			DeliveryWorkers: 64,
		},
		Local: Local{
			Domains:       []string{"localhost"},
			Mailboxes:     []string{"you@localhost", "postmaster@localhost"},
			PlusSeparator: "+",
			Transport:     "maildir",
			MaildirRoot:   "mail",
			LMTPAddress:   "127.0.0.1:24",
		},
		Outbound: Outbound{Port: 25, DestinationLimit: 20, MaxConnections: 100, ConnectionReuse: Duration(5 * time.Second),
			TLS: OutboundTLS{MTASTS: true}},
		Metrics:    Metrics{Listen: ""},
		Checks:     defaultChecks(),
		Quarantine: Quarantine{Path: "quarantine.db"},
		TLS: TLS{ReloadInterval: Duration(5 * time.Second),
			ACMECA: "https://acme-v02.api.letsencrypt.org/directory", ACMEHTTPListen: ":80"},
		Submission: Submission{
			RequireTLS: true, HideClientIP: true, UsersDB: "users.db",
			MaxMessagesPerHour: 500, MaxRecipientsPerMessage: 100, MaxRecipientsPerHour: 1000,
			AuthFailureDelay: Duration(500 * time.Millisecond), AuthFailuresPerIP: 10, AuthFailuresPerUser: 5,
			AuthLockout: Duration(15 * time.Minute),
		},
		DKIM:    DKIM{KeyDir: "dkim"},
		Mode:    "server",
		Sandbox: Sandbox{HTTPListen: "127.0.0.1:8025", MaxMessages: 10000},
	}
}

// SandboxPreset turns the defaults into a fake SMTP server for testing mail: SMTP on
// 127.0.0.1:1025, web UI and API on 127.0.0.1:8025, every recipient of every domain accepted
// and captured, nothing delivered, its own data directory. Checks that another part of the
// configuration enables still run; each setting here can be overridden by the file.
func (c *Config) SandboxPreset() {
	c.Mode = "sandbox"
	c.DataDir = "postamt-sandbox"
	c.SMTP.Listen = []string{"127.0.0.1:1025"}
	// Load tests and test suites connect from one address, often with many connections.
	c.SMTP.MaxConnectionsPerIP = 1000
	c.Local.AcceptAll = "sandbox"
	c.Sandbox.Enabled = true
	// Programs configured with credentials for their real provider work unchanged; programs
	// without them never use AUTH.
	c.Sandbox.Auth = "any"
	// Capture cannot fail for a remote reason; a retry is only for a store error, and a DSN
	// for a captured message would only confuse.
	c.Queue.RetryIntervals = []Duration{Duration(time.Second), Duration(10 * time.Second)}
	c.Queue.MaxAge = Duration(time.Hour)
	c.Queue.DelayWarning = 0
	// Checks annotate instead of refusing (DESIGN.md §3): a tester wants to see the verdicts a
	// receiver would reach (Authentication-Results, the UI's checks) on every message, not a 550.
	c.Checks.DMARC.OnReject, c.Checks.DMARC.OnQuarantine = "continue", "continue"
	c.Checks.Helo.Action = "continue"
	c.Checks.RateLimit.Enabled = false
	c.Checks.Attachments.Enabled = false
}

// File names the file the configuration was read from ("" for pure defaults).
func (c *Config) File() string { return c.file }

// Path resolves p against the data directory unless it is absolute.
func (c *Config) Path(p string) string {
	if filepath.IsAbs(p) {
		return p
	}
	return filepath.Join(c.DataDir, p)
}
