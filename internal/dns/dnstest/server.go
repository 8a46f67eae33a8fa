package dnstest

import (
	"context"
	"net"
	"testing"
	"time"

	mdns "github.com/miekg/dns"
)

// Server answers DNS queries from z over UDP and TCP on 127.0.0.1, so that the real binary can be
// pointed at it (`[outbound] dns_servers`) and the wire format is exercised too. It returns the
// "ip:port" address; the server stops at the end of the test.
func Server(t testing.TB, z *Zone) string {
	t.Helper()
	h := mdns.HandlerFunc(func(w mdns.ResponseWriter, req *mdns.Msg) {
		m := new(mdns.Msg)
		m.SetReply(req)
		m.Authoritative = true
		for _, q := range req.Question {
			answer(z, m, q)
		}
		w.WriteMsg(m)
	})
	for attempt := 0; attempt < 20; attempt++ {
		pc, err := net.ListenPacket("udp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		ln, err := net.Listen("tcp", pc.LocalAddr().String())
		if err != nil {
			pc.Close() // the TCP side of this port is taken: try another
			continue
		}
		udp := &mdns.Server{PacketConn: pc, Handler: h}
		tcp := &mdns.Server{Listener: ln, Handler: h}
		go udp.ActivateAndServe()
		go tcp.ActivateAndServe()
		t.Cleanup(func() {
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			defer cancel()
			udp.ShutdownContext(ctx)
			tcp.ShutdownContext(ctx)
		})
		return pc.LocalAddr().String()
	}
	t.Fatal("dnstest: no free port for UDP and TCP")
	return ""
}

func answer(z *Zone, m *mdns.Msg, q mdns.Question) {
	name := norm(q.Name)
	if z.Fail[name] {
		m.Rcode = mdns.RcodeServerFailure
		return
	}
	hdr := func(t uint16) mdns.RR_Header {
		return mdns.RR_Header{Name: q.Name, Rrtype: t, Class: mdns.ClassINET, Ttl: 60}
	}
	known := false
	if mxs, ok := z.MX[name]; ok {
		known = true
		if q.Qtype == mdns.TypeMX {
			for _, mx := range mxs {
				m.Answer = append(m.Answer, &mdns.MX{Hdr: hdr(mdns.TypeMX), Preference: mx.Pref, Mx: mdns.Fqdn(mx.Host)})
			}
		}
	}
	if addrs, ok := z.A[name]; ok {
		known = true
		for _, a := range addrs {
			switch {
			case q.Qtype == mdns.TypeA && a.Is4():
				m.Answer = append(m.Answer, &mdns.A{Hdr: hdr(mdns.TypeA), A: a.AsSlice()})
			case q.Qtype == mdns.TypeAAAA && a.Is6():
				m.Answer = append(m.Answer, &mdns.AAAA{Hdr: hdr(mdns.TypeAAAA), AAAA: a.AsSlice()})
			}
		}
	}
	if txts, ok := z.TXT[name]; ok {
		known = true
		if q.Qtype == mdns.TypeTXT {
			for _, s := range txts {
				m.Answer = append(m.Answer, &mdns.TXT{Hdr: hdr(mdns.TypeTXT), Txt: splitTXT(s)})
			}
		}
	}
	if !known {
		m.Rcode = mdns.RcodeNameError
	}
}

// splitTXT cuts a record into the 255-byte strings a TXT RR is made of (a record that long, such
// as an RSA-2048 DKIM key, cannot be packed as one string); resolvers join them again.
func splitTXT(s string) []string {
	var parts []string
	for len(s) > 255 {
		parts = append(parts, s[:255])
		s = s[255:]
	}
	return append(parts, s)
}
