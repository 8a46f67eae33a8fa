package app

import (
	"testing"

	"github.com/postamt/postamt/internal/config"
)

// TestContentChecks: enabled checks become chain entries in the documented order with their
// timeout and fail mode; disabled ones are left out.
func TestContentChecks(t *testing.T) {
	cfg := config.Default()
	es, err := contentChecks(cfg)
	if err != nil || len(es) != 1 || es[0].Check.Name() != "attachments" || !es[0].FailClosed {
		t.Fatalf("defaults: %v %+v", err, es)
	}
	k := &cfg.Checks
	k.Rspamd.Enabled = true
	k.ClamAV.Enabled = true
	k.ClamAV.Address = "/run/clamav/clamd.ctl"
	k.Milters = []config.Milter{
		{CheckCommon: config.CheckCommon{Enabled: true}, Name: "opendkim", Address: "inet:8891@127.0.0.1"},
		{Name: "off", Address: "127.0.0.1:1"},
	}
	es, err = contentChecks(cfg)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range es {
		names = append(names, e.Check.Name())
	}
	if got := len(names); got != 4 || names[0] != "attachments" || names[1] != "opendkim" || names[2] != "clamav" || names[3] != "rspamd" {
		t.Errorf("order %v", names)
	}
	if es[2].Timeout != cfg.Checks.ClamAV.Timeout.D() || !es[2].FailClosed || es[3].FailClosed {
		t.Errorf("entries %+v", es)
	}
	k.Rspamd.RejectAction = "explode"
	if _, err := contentChecks(cfg); err == nil {
		t.Error("bad reject_action accepted")
	}
}
