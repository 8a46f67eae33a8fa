package maildir

import (
	"context"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/postamt/postamt/internal/mail"
)

// BenchmarkDeliver measures one durable Maildir delivery of a 10 KB message (write, fsync,
// rename, directory fsync).
func BenchmarkDeliver(b *testing.B) {
	tr := &Transport{Root: b.TempDir(), Hostname: "h"}
	body := strings.Repeat(strings.Repeat("x", 74)+"\r\n", 10<<10/76)
	m := msg(body)
	m.ReceivedAt = time.Now()
	rc := []mail.Recipient{{Addr: "u@d", Route: mail.Route{NextHop: "u@d"}}}
	b.SetBytes(int64(len(body)))
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		i++
		m.ID = strconv.Itoa(i)
		if res, err := tr.Deliver(context.Background(), m, rc); err != nil || res[0].Reply != nil {
			b.Fatal(err, res)
		}
	}
}
