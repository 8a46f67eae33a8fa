package dnstest

import (
	"context"
	"encoding/hex"
	"net"
	"net/netip"
	"strings"
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
		if z.silent.Load() {
			return // no reply at all: the client's timeout is what is under test
		}
		m := new(mdns.Msg)
		m.SetReply(req)
		m.Authoritative = true
		for _, q := range req.Question {
			answer(z, m, q)
			// Like a validating resolver: AD only for secure data, and only to a client that
			// shows it understands DNSSEC (RFC 6840 §5.7).
			opt := req.IsEdns0()
			if z.Secure[norm(q.Name)] && m.Rcode != mdns.RcodeServerFailure && (req.AuthenticatedData || opt != nil && opt.Do()) {
				m.AuthenticatedData = true
			}
		}
		if opt := req.IsEdns0(); opt != nil {
			m.SetEdns0(opt.UDPSize(), opt.Do())
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
				m.Answer = append(m.Answer, &mdns.TXT{Hdr: hdr(mdns.TypeTXT), Txt: chunks(s)})
			}
		}
	}
	if q.Qtype == mdns.TypePTR {
		// Zone.PTR is keyed by address, as LookupAddr is called; the wire asks for the
		// in-addr.arpa or ip6.arpa name.
		if addr, ok := fromReverse(name); ok {
			if names, ok := z.PTR[addr]; ok {
				known = true
				for _, n := range names {
					m.Answer = append(m.Answer, &mdns.PTR{Hdr: hdr(mdns.TypePTR), Ptr: mdns.Fqdn(n)})
				}
			}
		}
	}
	if recs, ok := z.TLSA[name]; ok {
		known = true
		if q.Qtype == mdns.TypeTLSA {
			for _, r := range recs {
				m.Answer = append(m.Answer, &mdns.TLSA{Hdr: hdr(mdns.TypeTLSA), Usage: r.Usage, Selector: r.Selector,
					MatchingType: r.MatchingType, Certificate: hex.EncodeToString(r.Data)})
			}
		}
	}
	if !known {
		m.Rcode = mdns.RcodeNameError
	}
}

// fromReverse turns "4.3.2.1.in-addr.arpa" into "1.2.3.4" (and nibbles under ip6.arpa into
// the IPv6 address).
func fromReverse(name string) (string, bool) {
	if v4, ok := strings.CutSuffix(name, ".in-addr.arpa"); ok {
		p := strings.Split(v4, ".")
		if len(p) != 4 {
			return "", false
		}
		a, err := netip.ParseAddr(p[3] + "." + p[2] + "." + p[1] + "." + p[0])
		return a.String(), err == nil
	}
	if v6, ok := strings.CutSuffix(name, ".ip6.arpa"); ok {
		p := strings.Split(v6, ".")
		if len(p) != 32 {
			return "", false
		}
		var b strings.Builder
		for i := 31; i >= 0; i-- {
			b.WriteString(p[i])
			if i%4 == 0 && i > 0 {
				b.WriteByte(':')
			}
		}
		a, err := netip.ParseAddr(b.String())
		return a.String(), err == nil
	}
	return "", false
}

// chunks splits a TXT value into the 255-octet character-strings of RFC 1035 §3.3.14; a DKIM
// RSA key does not fit in one. Resolvers join them again.
func chunks(s string) []string {
	var out []string
	for len(s) > 255 {
		out = append(out, s[:255])
		s = s[255:]
	}
	return append(out, s)
}
