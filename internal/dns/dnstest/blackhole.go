package dnstest

import (
	"net"
	"sync"
	"testing"
)

// Blackhole is a DNS server that never answers: its UDP socket reads and drops every query and
// its TCP listener accepts connections and reads from them without ever replying, as a resolver
// behind a broken firewall or an overloaded one does. It returns the "ip:port" address (the
// same port for UDP and TCP); everything is closed at the end of the test. Queries reports how
// many UDP datagrams and TCP connections arrived, so a test can show the resolver was asked.
func Blackhole(t testing.TB) (addr string, queries func() int) {
	t.Helper()
	var (
		mu    sync.Mutex
		n     int
		conns []net.Conn
	)
	count := func() {
		mu.Lock()
		n++
		mu.Unlock()
	}
	for attempt := 0; attempt < 20; attempt++ {
		pc, err := net.ListenPacket("udp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		ln, err := net.Listen("tcp", pc.LocalAddr().String())
		if err != nil {
			pc.Close()
			continue
		}
		var wg sync.WaitGroup
		wg.Add(2)
		go func() {
			defer wg.Done()
			buf := make([]byte, 65536)
			for {
				if _, _, err := pc.ReadFrom(buf); err != nil {
					return
				}
				count()
			}
		}()
		go func() {
			defer wg.Done()
			for {
				c, err := ln.Accept()
				if err != nil {
					return
				}
				count()
				mu.Lock()
				conns = append(conns, c)
				mu.Unlock()
				wg.Add(1)
				go func() {
					defer wg.Done()
					buf := make([]byte, 4096)
					for {
						if _, err := c.Read(buf); err != nil {
							return
						}
					}
				}()
			}
		}()
		t.Cleanup(func() {
			pc.Close()
			ln.Close()
			mu.Lock()
			for _, c := range conns {
				c.Close()
			}
			mu.Unlock()
			wg.Wait()
		})
		return pc.LocalAddr().String(), func() int {
			mu.Lock()
			defer mu.Unlock()
			return n
		}
	}
	t.Fatal("dnstest: no free port for UDP and TCP")
	return "", nil
}
