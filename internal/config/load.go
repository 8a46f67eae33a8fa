package config

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"regexp"
	"strings"

	"github.com/pelletier/go-toml/v2"
	"github.com/pelletier/go-toml/v2/unstable"
)

// positions maps a dotted option name ("smtp.max_recipients") to the line that sets it.
type positions map[string]int

// Error is one configuration problem. It prints as "file:line: option: message", the form editors
// and people both understand.
type Error struct {
	File   string
	Line   int // 0 when the option was not in the file (a default or environment value)
	Option string
	Msg    string
}

func (e Error) Error() string {
	var b strings.Builder
	if e.File != "" {
		b.WriteString(e.File)
		if e.Line > 0 {
			fmt.Fprintf(&b, ":%d", e.Line)
		}
		b.WriteString(": ")
	}
	if e.Option != "" {
		b.WriteString(e.Option + ": ")
	}
	b.WriteString(e.Msg)
	return b.String()
}

// Errors is every problem found, in file order.
type Errors []Error

func (es Errors) Error() string {
	s := make([]string, len(es))
	for i, e := range es {
		s[i] = e.Error()
	}
	return strings.Join(s, "\n")
}

// Load reads path over the defaults, applies environment overrides and validates the result.
// An empty path means defaults only.
func Load(path string) (*Config, error) {
	return load(path, "")
}

// LoadSandbox is Load with the sandbox preset applied first (postamt sandbox).
func LoadSandbox(path string) (*Config, error) {
	return load(path, "sandbox")
}

func load(path, mode string) (*Config, error) {
	c := Default()
	if mode == "sandbox" {
		c.SandboxPreset()
	}
	if path != "" {
		data, err := os.ReadFile(path)
		if err != nil {
			return nil, fmt.Errorf("config: %w", err)
		}
		if err := c.decode(path, data); err != nil {
			return nil, err
		}
	}
	if err := c.applyEnv(os.LookupEnv); err != nil {
		return nil, err
	}
	if err := c.Validate(); err != nil {
		return nil, err
	}
	return c, nil
}

// Parse is Load for data already in memory; name is used in messages.
func Parse(name string, data []byte) (*Config, error) {
	c := Default()
	if err := c.decode(name, data); err != nil {
		return nil, err
	}
	if err := c.Validate(); err != nil {
		return nil, err
	}
	return c, nil
}

func (c *Config) decode(name string, data []byte) error {
	c.file = name
	pos, err := scanPositions(data)
	if err != nil {
		var pe *unstable.ParserError
		if errors.As(err, &pe) {
			p := unstable.Parser{}
			p.Reset(data)
			line := lineOf(data, pe.Highlight)
			return Errors{{File: name, Line: line, Msg: "TOML syntax: " + pe.Message}}
		}
		return Errors{{File: name, Msg: "TOML syntax: " + err.Error()}}
	}
	c.pos = pos
	// The mode is a preset of defaults, so it must be known before the rest of the file is
	// applied over them.
	var head struct {
		Mode string `toml:"mode"`
	}
	if err := toml.Unmarshal(data, &head); err == nil {
		switch {
		case head.Mode == "sandbox" && c.Mode != "sandbox":
			c.SandboxPreset()
		case head.Mode != "" && head.Mode != "sandbox" && c.Mode == "sandbox":
			return Errors{{File: name, Line: c.line("mode"), Option: "mode", Msg: fmt.Sprintf("%q conflicts with the sandbox command (remove it or set \"sandbox\")", head.Mode)}}
		}
	}
	// A file that names its own local domains replaces the default "localhost" set as a whole;
	// keeping the default mailboxes would leave them pointing at a domain that is no longer local.
	if _, ok := pos["local.domains"]; ok {
		c.Local.Domains, c.Local.Mailboxes = nil, nil
	}
	dec := toml.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(c); err != nil {
		es := decodeErrors(name, err)
		// Unknown options do not stop decoding, so the values that were understood can still
		// be checked: the user then sees every problem in one run.
		var sm *toml.StrictMissingError
		if errors.As(err, &sm) {
			if verr, ok := c.Validate().(Errors); ok {
				es = append(es, verr...)
			}
		}
		return es
	}
	return nil
}

var typeErrRe = regexp.MustCompile(`^(?:toml: )?cannot decode TOML (\w+) into struct field \S+ of type (\S+)$`)

// friendly rewrites go-toml's messages, which name Go types, into the user's vocabulary.
func friendly(msg string) string {
	msg = strings.TrimPrefix(msg, "toml: ")
	if m := typeErrRe.FindStringSubmatch(msg); m != nil {
		want := map[string]string{"int": "a whole number", "string": "a string", "bool": "true or false", "[]string": "a list of strings"}[m[2]]
		if want == "" {
			want = "a " + m[2]
		}
		return "must be " + want + ", not a TOML " + m[1]
	}
	return msg
}

func decodeErrors(name string, err error) Errors {
	var sm *toml.StrictMissingError
	if errors.As(err, &sm) {
		var es Errors
		for _, e := range sm.Errors {
			row, _ := e.Position()
			es = append(es, Error{File: name, Line: row, Option: strings.Join(e.Key(), "."), Msg: "unknown option"})
		}
		return es
	}
	var de *toml.DecodeError
	if errors.As(err, &de) {
		row, _ := de.Position()
		return Errors{{File: name, Line: row, Option: strings.Join(de.Key(), "."), Msg: friendly(de.Error())}}
	}
	return Errors{{File: name, Msg: err.Error()}}
}

// lineOf returns the 1-based line of the sub-slice sub inside data.
func lineOf(data, sub []byte) int {
	if len(sub) == 0 {
		return 0
	}
	off := cap(data) - cap(sub)
	if off < 0 || off > len(data) {
		return 0
	}
	return bytes.Count(data[:off], []byte("\n")) + 1
}

// scanPositions walks the TOML expressions to learn which line sets each option, so semantic
// errors found after decoding can still point at the line (go-toml only positions its own errors).
func scanPositions(data []byte) (positions, error) {
	pos := positions{}
	p := unstable.Parser{}
	p.Reset(data)
	var table []string
	arrays := map[string]int{} // [[array.table]] → how many seen, so options are "name[i].key"
	for p.NextExpression() {
		e := p.Expression()
		switch e.Kind {
		case unstable.Table, unstable.ArrayTable:
			table = keyParts(e.Key())
			if e.Kind == unstable.ArrayTable {
				name := strings.Join(table, ".")
				table = []string{fmt.Sprintf("%s[%d]", name, arrays[name])}
				arrays[name]++
			}
			// A table expression has no Raw range of its own; its key's first part has.
			line := p.Shape(e.Raw).Start.Line
			if kit := e.Key(); kit.Next() {
				line = p.Shape(kit.Node().Raw).Start.Line
			}
			pos[strings.Join(table, ".")] = line
		case unstable.KeyValue:
			k := append(append([]string{}, table...), keyParts(e.Key())...)
			line := 0
			if kit := e.Key(); kit.Next() {
				line = p.Shape(kit.Node().Raw).Start.Line
			}
			pos[strings.Join(k, ".")] = line
		}
	}
	return pos, p.Error()
}

func keyParts(it unstable.Iterator) []string {
	var parts []string
	for it.Next() {
		parts = append(parts, string(it.Node().Data))
	}
	return parts
}

// line returns the line that set option, falling back to its enclosing table.
func (c *Config) line(option string) int {
	for o := option; o != ""; {
		if l, ok := c.pos[o]; ok {
			return l
		}
		// "checks.dnsbl.lists[0]" is set by the line of "checks.dnsbl.lists".
		if j := strings.LastIndexByte(o, '['); j > strings.LastIndexByte(o, '.') {
			o = o[:j]
			continue
		}
		i := strings.LastIndexByte(o, '.')
		if i < 0 {
			break
		}
		o = o[:i]
	}
	return 0
}

func (c *Config) applyEnv(lookup func(string) (string, bool)) error {
	var es Errors
	set := func(name string, apply func(string) error) {
		if v, ok := lookup(name); ok {
			if err := apply(v); err != nil {
				es = append(es, Error{File: "environment", Option: name, Msg: err.Error()})
			}
		}
	}
	set("POSTAMT_HOSTNAME", func(v string) error { c.Hostname = v; return nil })
	set("POSTAMT_DATA_DIR", func(v string) error { c.DataDir = v; return nil })
	set("POSTAMT_SMTP_LISTEN", func(v string) error { c.SMTP.Listen = strings.Split(v, ","); return nil })
	set("POSTAMT_LOG_FORMAT", func(v string) error { c.Log.Format = v; return nil })
	set("POSTAMT_LOG_LEVEL", func(v string) error { c.Log.Level = v; return nil })
	set("POSTAMT_SUBMISSION_LISTEN", func(v string) error { c.Submission.Listen = strings.Split(v, ","); return nil })
	set("POSTAMT_SUBMISSION_LISTEN_TLS", func(v string) error { c.Submission.ListenTLS = strings.Split(v, ","); return nil })
	set("POSTAMT_METRICS_LISTEN", func(v string) error { c.Metrics.Listen = v; return nil })
	set("POSTAMT_ADMIN_LISTEN", func(v string) error { c.Admin.Listen = v; return nil })
	set("POSTAMT_SANDBOX_HTTP_LISTEN", func(v string) error { c.Sandbox.HTTPListen = v; return nil })
	if es != nil {
		return es
	}
	return nil
}

// Dump renders the effective configuration as TOML, for `postamt config check` and the start-up
// log. Secrets (the rspamd password, the sandbox's SMTP passwords) are redacted.
func (c *Config) Dump() string {
	cc := *c
	if cc.Checks.Rspamd.Password != "" {
		cc.Checks.Rspamd.Password = "(redacted)"
	}
	if len(c.Sandbox.Users) > 0 {
		cc.Sandbox.Users = map[string]string{}
		for u := range c.Sandbox.Users {
			cc.Sandbox.Users[u] = "(redacted)"
		}
	}
	b, err := toml.Marshal(&cc)
	if err != nil {
		return "# cannot render configuration: " + err.Error()
	}
	return string(b)
}
