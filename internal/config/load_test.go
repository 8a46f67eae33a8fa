package config

import (
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

var update = flag.Bool("update", false, "rewrite the golden files")

func TestDefaultsValid(t *testing.T) {
	if err := Default().Validate(); err != nil {
		t.Fatal(err)
	}
}

// TestGolden loads each testdata/config/NAME.toml and compares either the error text or the
// normalized dump with NAME.want.
func TestGolden(t *testing.T) {
	files, _ := filepath.Glob("testdata/config/*.toml")
	if len(files) == 0 {
		t.Fatal("no golden config files")
	}
	for _, f := range files {
		t.Run(filepath.Base(f), func(t *testing.T) {
			data, err := os.ReadFile(f)
			if err != nil {
				t.Fatal(err)
			}
			name := filepath.Base(f)
			c, err := Parse(name, data)
			var got string
			if err != nil {
				got = "error:\n" + err.Error() + "\n"
			} else {
				c.Hostname = "HOSTNAME" // the default depends on the machine
				got = c.Dump()
			}
			want := strings.TrimSuffix(f, ".toml") + ".want"
			if *update {
				os.WriteFile(want, []byte(got), 0o644)
				return
			}
			w, err := os.ReadFile(want)
			if err != nil {
				t.Fatalf("%v (run go test -update)", err)
			}
			if got != string(w) {
				t.Errorf("got:\n%s\nwant:\n%s", got, w)
			}
		})
	}
}

func TestEnvOverride(t *testing.T) {
	c := Default()
	env := map[string]string{"POSTAMT_SMTP_LISTEN": "127.0.0.1:1,127.0.0.1:2", "POSTAMT_DATA_DIR": "/x"}
	if err := c.applyEnv(func(k string) (string, bool) { v, ok := env[k]; return v, ok }); err != nil {
		t.Fatal(err)
	}
	if len(c.SMTP.Listen) != 2 || c.DataDir != "/x" {
		t.Fatalf("%+v", c)
	}
}

func TestUnits(t *testing.T) {
	for in, want := range map[string]int64{"25MiB": 25 << 20, "10MB": 10e6, "512": 512, "1.5KiB": 1536, "2G": 2 << 30} {
		var s Size
		if err := s.UnmarshalText([]byte(in)); err != nil || int64(s) != want {
			t.Errorf("%s: %d %v", in, s, err)
		}
	}
	for in, want := range map[string]time.Duration{"5d": 120 * time.Hour, "90s": 90 * time.Second, "1h30m": 90 * time.Minute} {
		var d Duration
		if err := d.UnmarshalText([]byte(in)); err != nil || d.D() != want {
			t.Errorf("%s: %v %v", in, d, err)
		}
	}
	for _, bad := range []string{"5 parsecs", "-1m", "d"} {
		var d Duration
		if d.UnmarshalText([]byte(bad)) == nil {
			t.Errorf("%q accepted", bad)
		}
	}
	var s Size
	if s.UnmarshalText([]byte("12 furlongs")) == nil {
		t.Error("bad size accepted")
	}
}

func FuzzParse(f *testing.F) {
	files, _ := filepath.Glob("testdata/config/*.toml")
	for _, fn := range files {
		b, _ := os.ReadFile(fn)
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		c, err := Parse("fuzz.toml", data)
		if err == nil && c.Validate() != nil {
			t.Fatal("Parse accepted a config that Validate refuses")
		}
		if err != nil && err.Error() == "" {
			t.Fatal("empty error text")
		}
	})
}

// The sample configuration in the repository root must always be valid.
func TestExampleConfigValid(t *testing.T) {
	if _, err := Load("../../postamt.example.toml"); err != nil {
		t.Fatal(err)
	}
	// The sandbox example, as a file for serve and for the sandbox command, gives the preset.
	for _, load := range []func(string) (*Config, error){Load, LoadSandbox} {
		c, err := load("../../postamt.sandbox.toml")
		if err != nil {
			t.Fatal(err)
		}
		if !c.Sandbox.Enabled || c.Local.AcceptAll != "sandbox" || c.SMTP.Listen[0] != "127.0.0.1:1025" {
			t.Errorf("postamt.sandbox.toml: %+v", c.Sandbox)
		}
	}
}

func TestLoadSandbox(t *testing.T) {
	c, err := LoadSandbox("")
	if err != nil {
		t.Fatal(err)
	}
	if c.Mode != "sandbox" || !c.Sandbox.Enabled || c.Local.AcceptAll != "sandbox" || c.Sandbox.Auth != "any" ||
		c.SMTP.Listen[0] != "127.0.0.1:1025" || c.Sandbox.HTTPListen != "127.0.0.1:8025" || c.DataDir != "postamt-sandbox" {
		t.Errorf("sandbox preset = %+v", c)
	}
	dir := t.TempDir()
	f := filepath.Join(dir, "s.toml")
	os.WriteFile(f, []byte("[smtp]\nlisten = [\"127.0.0.1:0\"]\n[sandbox]\nmax_messages = 5\n"), 0o644)
	c, err = LoadSandbox(f)
	if err != nil {
		t.Fatal(err)
	}
	if c.SMTP.Listen[0] != "127.0.0.1:0" || c.Sandbox.MaxMessages != 5 || c.Local.AcceptAll != "sandbox" {
		t.Errorf("file over the preset: listen %v max %d accept_all %q", c.SMTP.Listen, c.Sandbox.MaxMessages, c.Local.AcceptAll)
	}
	os.WriteFile(f, []byte("mode = \"server\"\n"), 0o644)
	if _, err := LoadSandbox(f); err == nil || !strings.Contains(err.Error(), "s.toml:1: mode:") {
		t.Errorf("mode = server under the sandbox command: %v", err)
	}
	// Without the preset a plain server does not capture.
	if c, err := Load(""); err != nil || c.Sandbox.Enabled || c.Local.AcceptAll != "" {
		t.Errorf("server defaults: %+v %v", c.Sandbox, err)
	}
}
