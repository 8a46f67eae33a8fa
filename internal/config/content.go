package config

import (
	"fmt"
	"net/url"
	"strings"
	"time"
)

// Rspamd is an rspamd worker asked over HTTP (/checkv2).
type Rspamd struct {
	CheckCommon
	URL string `toml:"url"`
	// Password is sent in the Password header; it is never printed by config dumps.
	Password string `toml:"password"`
	// RejectAction is what rspamd's "reject" becomes: reject, quarantine, tag or tempfail.
	RejectAction string `toml:"reject_action"`
	// MaxSize skips larger messages (0: smtp.max_message_size).
	MaxSize Size `toml:"max_size"`
}

// ClamAV is clamd reached by INSTREAM.
type ClamAV struct {
	CheckCommon
	// Address is "host:port" or a unix socket path ("/run/clamav/clamd.ctl").
	Address string `toml:"address"`
	Action  string `toml:"action"` // reject | quarantine
	// MaxSize must match clamd's StreamMaxLength; larger messages are not scanned and count as
	// a check failure (fail_closed decides).
	MaxSize Size `toml:"max_size"`
}

// Milter is one milter application, called in the order listed. Like every check it only runs
// with enabled = true.
type Milter struct {
	CheckCommon
	Name string `toml:"name"`
	// Address is "host:port", "inet:port@host" or "unix:/path" (Postfix/Sendmail notation).
	Address string `toml:"address"`
}

// Attachments is the built-in attachment policy.
type Attachments struct {
	CheckCommon
	Action            string   `toml:"action"` // reject | quarantine
	MaxDepth          int      `toml:"max_depth"`
	MaxParts          int      `toml:"max_parts"`
	BlockedExtensions []string `toml:"blocked_extensions"`
	// BlockedTypes are content kinds found by sniffing: executable, script, office_macro.
	BlockedTypes []string `toml:"blocked_types"`
	// Archive limits: zip files are opened to these bounds; an archive beyond them is refused.
	ScanArchives      bool `toml:"scan_archives"`
	MaxArchiveEntries int  `toml:"max_archive_entries"`
	MaxArchiveSize    Size `toml:"max_archive_size"`
	MaxArchiveDepth   int  `toml:"max_archive_depth"`
	// BlockEncryptedArchives refuses zip files with password-protected entries.
	BlockEncryptedArchives bool `toml:"block_encrypted_archives"`
}

// Quarantine is where messages a check quarantined wait for an administrator.
type Quarantine struct {
	// Path of the SQLite database, relative to data_dir.
	Path string `toml:"path"`
}

// DefaultBlockedExtensions are file names that run code when opened on common desktops.
var DefaultBlockedExtensions = []string{
	"ade", "adp", "app", "appx", "application", "bas", "bat", "cab", "chm", "cmd", "com", "cpl",
	"dll", "exe", "gadget", "hta", "inf", "ins", "iso", "isp", "jar", "js", "jse", "lnk", "msc",
	"msi", "msix", "msp", "mst", "pif", "ps1", "psc1", "reg", "scf", "scr", "sct", "shb", "sys",
	"vb", "vbe", "vbs", "vhd", "vhdx", "ws", "wsc", "wsf", "wsh", "xll",
}

// defaultContentChecks fills in the content-scanning defaults.
func defaultContentChecks(c *Checks) {
	d := Checks{
		Rspamd: Rspamd{
			CheckCommon:  CheckCommon{Timeout: Duration(15 * time.Second)},
			URL:          "http://127.0.0.1:11333",
			RejectAction: "reject",
		},
		ClamAV: ClamAV{
			// An unscanned message may carry what the scanner exists to stop.
			CheckCommon: CheckCommon{Timeout: Duration(60 * time.Second), FailClosed: true},
			Address:     "127.0.0.1:3310",
			Action:      "reject",
			MaxSize:     25 << 20,
		},
		Attachments: Attachments{
			CheckCommon:       CheckCommon{Enabled: true, Timeout: Duration(10 * time.Second), FailClosed: true},
			Action:            "reject",
			MaxDepth:          20,
			MaxParts:          500,
			BlockedExtensions: append([]string(nil), DefaultBlockedExtensions...),
			BlockedTypes:      []string{"executable", "script", "office_macro"},
			ScanArchives:      true,
			MaxArchiveEntries: 1000,
			MaxArchiveSize:    100 << 20,
			MaxArchiveDepth:   2,
		},
	}
	c.Rspamd, c.ClamAV, c.Attachments = d.Rspamd, d.ClamAV, d.Attachments
}

func (c *Config) validateContentChecks(v *validator) {
	k := &c.Checks
	common := func(prefix string, cc CheckCommon) {
		if cc.Timeout <= 0 {
			v.addf(prefix+".timeout", "must be positive")
		}
	}
	if r := k.Rspamd; r.Enabled {
		common("checks.rspamd", r.CheckCommon)
		if u, err := url.Parse(r.URL); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			v.addf("checks.rspamd.url", "%q must be an http:// or https:// URL such as \"http://127.0.0.1:11333\"", r.URL)
		}
		v.oneOf("checks.rspamd.reject_action", r.RejectAction, "reject", "tempfail", "quarantine", "tag")
		if r.MaxSize < 0 {
			v.addf("checks.rspamd.max_size", "must not be negative")
		}
	}
	if a := k.ClamAV; a.Enabled {
		common("checks.clamav", a.CheckCommon)
		v.scannerAddress("checks.clamav.address", a.Address)
		v.oneOf("checks.clamav.action", a.Action, "reject", "quarantine")
		if a.MaxSize < 1024 {
			v.addf("checks.clamav.max_size", "must be at least 1KiB (set it to clamd's StreamMaxLength)")
		}
	}
	names := map[string]bool{}
	for i, m := range k.Milters {
		opt := fmt.Sprintf("checks.milter[%d]", i)
		if !m.Enabled {
			continue
		}
		// A milter's timeout may be left out (0: 30 s each stage).
		if m.Name == "" || strings.ContainsAny(m.Name, " \t=") {
			v.addf(opt+".name", "each milter needs a name without spaces (it appears in logs)")
		} else if names[m.Name] {
			v.addf(opt+".name", "%q is used by two milters", m.Name)
		}
		names[m.Name] = true
		if _, _, err := MilterAddress(m.Address); err != nil {
			v.addf(opt+".address", "%v", err)
		}
	}
	if a := k.Attachments; a.Enabled {
		common("checks.attachments", a.CheckCommon)
		v.oneOf("checks.attachments.action", a.Action, "reject", "quarantine")
		v.atLeast("checks.attachments.max_depth", a.MaxDepth, 1)
		v.atLeast("checks.attachments.max_parts", a.MaxParts, 1)
		for _, e := range a.BlockedExtensions {
			if e == "" || strings.ContainsAny(e, "./\\ ") {
				v.addf("checks.attachments.blocked_extensions", "%q: write extensions without the dot, e.g. \"exe\"", e)
			}
		}
		for _, t := range a.BlockedTypes {
			v.oneOf("checks.attachments.blocked_types", t, "executable", "script", "office_macro")
		}
		if a.ScanArchives {
			v.atLeast("checks.attachments.max_archive_entries", a.MaxArchiveEntries, 1)
			v.atLeast("checks.attachments.max_archive_depth", a.MaxArchiveDepth, 1)
			if a.MaxArchiveSize < 1024 {
				v.addf("checks.attachments.max_archive_size", "must be at least 1KiB")
			}
		}
	}
	if c.Quarantine.Path == "" {
		v.addf("quarantine.path", "must not be empty")
	}
}

// scannerAddress accepts host:port or an absolute unix socket path.
func (v *validator) scannerAddress(option, addr string) {
	if strings.HasPrefix(addr, "/") {
		return
	}
	v.hostPort(option, addr)
}

// MilterAddress turns a milter address into a network and address for net.Dial:
// "unix:/path", "/path", "inet:port@host", "inet6:port@host" or "host:port".
func MilterAddress(s string) (network, addr string, err error) {
	switch {
	case strings.HasPrefix(s, "unix:") || strings.HasPrefix(s, "local:"):
		p := s[strings.IndexByte(s, ':')+1:]
		if !strings.HasPrefix(p, "/") {
			return "", "", fmt.Errorf("%q: a unix socket needs an absolute path", s)
		}
		return "unix", p, nil
	case strings.HasPrefix(s, "/"):
		return "unix", s, nil
	case strings.HasPrefix(s, "inet:") || strings.HasPrefix(s, "inet6:"):
		rest := s[strings.IndexByte(s, ':')+1:]
		port, host, ok := strings.Cut(rest, "@")
		if !ok || port == "" || host == "" {
			return "", "", fmt.Errorf("%q must be inet:PORT@HOST", s)
		}
		return "tcp", strings.Trim(host, "[]") + ":" + port, nil
	}
	if i := strings.LastIndexByte(s, ':'); i > 0 && i < len(s)-1 {
		return "tcp", s, nil
	}
	return "", "", fmt.Errorf("%q is not a milter address (use host:port, inet:PORT@HOST or unix:/path)", s)
}
