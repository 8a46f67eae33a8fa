package queue

import (
	"context"
	"strings"
	"sync"
	"testing"

	"github.com/postamt/postamt/internal/mail"
	"github.com/postamt/postamt/internal/transport"
	"github.com/postamt/postamt/internal/transport/transporttest"
)

// BenchmarkAccept measures durable acceptance of 10 KB messages from 50 concurrent writers
// (body fsync, group commit) without delivery: the transport name matches no route.
func BenchmarkAccept(b *testing.B) {
	q, err := Open(Options{Dir: b.TempDir(), Transports: []transport.Transport{&transporttest.Recorder{TransportName: "none"}}})
	if err != nil {
		b.Fatal(err)
	}
	defer q.Close(context.Background())
	body := strings.Repeat("x", 74) + "\r\n"
	body = strings.Repeat(body, 10<<10/len(body))
	b.SetBytes(int64(len(body)))
	b.ReportAllocs()
	var wg sync.WaitGroup
	jobs := make(chan struct{})
	for i := 0; i < 50; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range jobs {
				w, err := q.Create()
				if err != nil {
					b.Error(err)
					return
				}
				w.WriteString(body)
				env := &mail.Envelope{From: "a@b.test", Rcpts: []mail.Recipient{{Addr: "u@x.test", Orig: "u@x.test", Route: mail.Route{Transport: "unrouted", NextHop: "u@x.test"}}}}
				if err := q.Accept(context.Background(), env, w); err != nil {
					b.Error(err)
					return
				}
			}
		}()
	}
	for b.Loop() {
		jobs <- struct{}{}
	}
	close(jobs)
	wg.Wait()
}
