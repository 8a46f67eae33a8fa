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
	Mode     string    `toml:"mode"`
	Hostname string    `toml:"hostname"`
	DataDir  string    `toml:"data_dir"`
	Log      Log       `toml:"log"`
	SMTP     SMTP      `toml:"smtp"`
	TLS      TLS       `toml:"tls"`
	Queue    Queue     `toml:"queue"`
	Local    Local     `toml:"local"`
	Outbound Outbound  `toml:"outbound"`
	Metrics  Metrics   `toml:"metrics"`
	Sandbox  Sandbox   `toml:"sandbox"`
	file     string    // where the settings came from, for messages
	pos      positions // option → line, for semantic errors
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
	// Transports maps a domain to the server that takes its mail ("[host]:port").
	Transports map[string]string `toml:"transports"`
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
		Outbound: Outbound{Port: 25, DestinationLimit: 20},
		Metrics:  Metrics{Listen: ""},
		Mode:     "server",
		Sandbox:  Sandbox{HTTPListen: "127.0.0.1:8025", MaxMessages: 10000},
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
