package maildir

import (
	"context"
	"runtime"
	"strconv"
	"strings"
	"sync/atomic"
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

// BenchmarkDeliverParallel delivers 10 KB messages to one mailbox from 64 goroutines at once, as
// the queue's delivery workers do when a backlog drains into one mailbox: it measures the mailbox
// writers' throughput with batching and the file system's concurrency, not one message's latency.
// The sub-benchmarks vary the number of writers per mailbox and unnamed files (O_TMPFILE) against
// tmp/ and rename.
func BenchmarkDeliverParallel(b *testing.B) {
	for _, writers := range []int{1, 4} {
		for _, tmpfile := range []bool{true, false} {
			name := "writers=" + strconv.Itoa(writers) + "/tmpfile"
			if !tmpfile {
				name = "writers=" + strconv.Itoa(writers) + "/rename"
			}
			b.Run(name, func(b *testing.B) {
				tr := &Transport{Root: b.TempDir(), Hostname: "h", writers: writers}
				tr.tmpfileOff.Store(!tmpfile)
				benchParallel(b, tr)
			})
		}
	}
}

func benchParallel(b *testing.B, tr *Transport) {
	body := strings.Repeat(strings.Repeat("x", 74)+"\r\n", 10<<10/76)
	rc := []mail.Recipient{{Addr: "u@d", Route: mail.Route{NextHop: "u@d"}}}
	at := time.Now()
	b.SetBytes(int64(len(body)))
	b.ReportAllocs()
	var id atomic.Int64
	b.SetParallelism(64 / runtime.GOMAXPROCS(0))
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			m := msg(body)
			m.ReceivedAt = at
			m.ID = strconv.FormatInt(id.Add(1), 10)
			if res, err := tr.Deliver(context.Background(), m, rc); err != nil || res[0].Reply != nil {
				b.Error(err, res)
				return
			}
		}
	})
}
