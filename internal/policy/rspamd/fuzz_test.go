package rspamd

import (
	"encoding/json"
	"strings"
	"testing"
)

// FuzzVerdict: any reply rspamd (or something in its place) sends becomes a verdict whose
// headers cannot break the message's header block.
func FuzzVerdict(f *testing.F) {
	f.Add([]byte(`{"action":"add header","score":7.5,"required_score":15,"symbols":{"A":{"name":"A","score":1}}}`))
	f.Add([]byte(`{"is_skipped":true,"action":"reject","symbols":{"GTUBE":{"name":"GTUBE\r\nX: y"}}}`))
	f.Add([]byte(`{"action":"no action","symbols":{"\u2028":{}}}`))
	c, _ := New(Options{URL: "http://127.0.0.1:1"})
	f.Fuzz(func(t *testing.T, data []byte) {
		var rep Reply
		if json.Unmarshal(data, &rep) != nil {
			return
		}
		v := c.verdict(&rep)
		for _, h := range v.Headers {
			for i, line := range strings.Split(h, "\r\n") {
				if strings.ContainsAny(line, "\r\n") || (i > 0 && !strings.HasPrefix(line, "\t")) {
					t.Fatalf("header %q breaks the header block", h)
				}
			}
		}
	})
}
