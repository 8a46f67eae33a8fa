package router

import (
	"fmt"
	"sort"
	"strings"
	"testing"

	"github.com/postamt/postamt/internal/config"
	"github.com/postamt/postamt/internal/mail"
	"github.com/postamt/postamt/internal/smtp"
)

func testRouter() *Router {
	return New(config.Local{
		Domains:       []string{"example.test", "xn--bcher-kva.example", "catch.test"},
		Mailboxes:     []string{"alice@example.test", "Bob@example.test", "jörg@xn--bcher-kva.example"},
		PlusSeparator: "+",
		Transport:     "maildir",
		Aliases: map[string][]string{
			"sales@example.test": {"alice@example.test", "bob@example.test", "carol@remote.test"},
			"loop1@example.test": {"loop2@example.test"},
			"loop2@example.test": {"loop1@example.test"},
			"ghost@example.test": {"nobody@example.test"},
		},
		CatchAll: map[string]string{"catch.test": "alice@example.test"},
	}, config.Outbound{Transports: map[string]string{"corp.test": "[10.0.0.5]:2525"}})
}

func TestResolve(t *testing.T) {
	r := testRouter()
	tests := []struct {
		path  string
		auth  bool
		code  int
		enh   smtp.EnhancedCode
		addrs string // sorted "addr>transport:nexthop" list
	}{
		{path: "<alice@example.test>", addrs: "alice@example.test>maildir:alice@example.test"},
		{path: "<ALICE@Example.TEST>", addrs: "alice@example.test>maildir:alice@example.test"},
		{path: `<"alice"@example.test>`, addrs: "alice@example.test>maildir:alice@example.test"},
		{path: "<bob@example.test>", addrs: "bob@example.test>maildir:bob@example.test"},
		{path: "<alice+news@example.test>", addrs: "alice+news@example.test>maildir:alice@example.test"},
		{path: "<sales@example.test>", addrs: "alice@example.test>maildir:alice@example.test bob@example.test>maildir:bob@example.test carol@remote.test>remote:remote.test"},
		{path: "<sales+x@example.test>", addrs: "alice@example.test>maildir:alice@example.test bob@example.test>maildir:bob@example.test carol@remote.test>remote:remote.test"},
		{path: "<jörg@bücher.example>", addrs: "jörg@xn--bcher-kva.example>maildir:jörg@xn--bcher-kva.example"},
		{path: "<postmaster@example.test>", addrs: "postmaster@example.test>maildir:postmaster@example.test"},
		{path: "<PostMaster@catch.test>", addrs: "postmaster@catch.test>maildir:postmaster@catch.test"},
		{path: "<Postmaster>", addrs: "postmaster@example.test>maildir:postmaster@example.test"},
		{path: "<anything@catch.test>", addrs: "alice@example.test>maildir:alice@example.test"},
		{path: "<nobody@example.test>", code: 550, enh: smtp.EnhancedCode{5, 1, 1}},
		{path: "<ghost@example.test>", code: 550, enh: smtp.EnhancedCode{5, 1, 1}},
		{path: "<loop1@example.test>", code: 554, enh: smtp.EnhancedCode{5, 4, 6}},
		{path: "<x@remote.test>", code: 554, enh: smtp.EnhancedCode{5, 7, 1}},
		{path: "<x@remote.test>", auth: true, addrs: "x@remote.test>remote:remote.test"},
		{path: "<x@corp.test>", auth: true, addrs: "x@corp.test>remote:[10.0.0.5]:2525"},
		// Open-relay tricks.
		{path: "<x%remote.test@example.test>", code: 554, enh: smtp.EnhancedCode{5, 7, 1}},
		{path: "<remote.test!x@example.test>", code: 554, enh: smtp.EnhancedCode{5, 7, 1}},
		{path: `<"x@remote.test"@example.test>`, code: 554, enh: smtp.EnhancedCode{5, 7, 1}},
		{path: "<@example.test:x@remote.test>", code: 554, enh: smtp.EnhancedCode{5, 7, 1}},
		{path: "<@remote.test:alice@example.test>", code: 554, enh: smtp.EnhancedCode{5, 7, 1}},
		{path: "<x@[127.0.0.1]>", code: 554, enh: smtp.EnhancedCode{5, 7, 1}},
		{path: "<alice@example.test.>", code: -1},
	}
	for _, tt := range tests {
		t.Run(tt.path, func(t *testing.T) {
			p, _, err := smtp.ParsePath(tt.path, true)
			if tt.code == -1 {
				if err == nil {
					t.Fatalf("syntax accepted: %+v", p)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			rcpts, reply := r.Resolve(p, tt.auth)
			if tt.code != 0 {
				if reply == nil || reply.Code != tt.code || reply.Enhanced != tt.enh {
					t.Fatalf("want %d %v, got %v %+v", tt.code, tt.enh, reply, rcpts)
				}
				return
			}
			if reply != nil {
				t.Fatal(reply)
			}
			var got []string
			for _, rc := range rcpts {
				got = append(got, fmt.Sprintf("%s>%s:%s", rc.Addr, rc.Route.Transport, rc.Route.NextHop))
			}
			sort.Strings(got)
			if strings.Join(got, " ") != tt.addrs {
				t.Fatalf("got %s\nwant %s", strings.Join(got, " "), tt.addrs)
			}
		})
	}
}

func TestRelayHost(t *testing.T) {
	r := New(config.Local{Domains: []string{"example.test"}, Transport: "maildir",
		Aliases: map[string][]string{"fwd@example.test": {"a@one.test", "b@corp.test"}}},
		config.Outbound{RelayHost: "[smarthost.test]:587", Transports: map[string]string{"corp.test": "[10.0.0.5]"}})
	p, _, _ := smtp.ParsePath("<fwd@example.test>", false)
	rcpts, reply := r.Resolve(p, false)
	if reply != nil || len(rcpts) != 2 || rcpts[0].Route.NextHop != "[smarthost.test]:587" || rcpts[1].Route.NextHop != "[10.0.0.5]" {
		t.Fatalf("%v %+v", reply, rcpts)
	}
}

// The transport map says how a domain's mail leaves; for a local domain, which addresses exist
// is still the mailboxes' and aliases' business.
func TestTransportMapForLocalDomains(t *testing.T) {
	r := New(config.Local{Domains: []string{"example.test", "example.org", "corp.test"}, Transport: "maildir",
		Mailboxes: []string{"a@example.test", "b@example.org", "c@corp.test"},
		Aliases:   map[string][]string{"team@example.test": {"b@example.org", "c@corp.test", "d@far.test"}}},
		config.Outbound{Transports: map[string]string{
			"example.org": "lmtp:unix:/run/dovecot/lmtp", "corp.test": "smtp:[10.0.0.5]:25", "far.test": "lmtp:10.0.0.9:24"}})
	for _, tc := range []struct {
		path, want string
		auth       bool
		code       int
	}{
		{path: "<a@example.test>", want: "a@example.test>maildir:a@example.test"},
		{path: "<b@example.org>", want: "b@example.org>lmtp:unix:/run/dovecot/lmtp:b@example.org"},
		{path: "<c@corp.test>", want: "c@corp.test>remote:[10.0.0.5]:25"},
		{path: "<nobody@example.org>", code: 550},
		{path: "<x@far.test>", code: 554},                                                  // the map does not open a relay
		{path: "<x@far.test>", auth: true, want: "x@far.test>lmtp:10.0.0.9:24:x@far.test"}, // but authenticated users use it
		{path: "<team@example.test>", want: "b@example.org>lmtp:unix:/run/dovecot/lmtp:b@example.org c@corp.test>remote:[10.0.0.5]:25 d@far.test>lmtp:10.0.0.9:24:d@far.test"},
	} {
		p, _, err := smtp.ParsePath(tc.path, false)
		if err != nil {
			t.Fatal(err)
		}
		rcpts, reply := r.Resolve(p, tc.auth)
		if tc.code != 0 {
			if reply == nil || reply.Code != tc.code {
				t.Errorf("%s: reply %v, want %d", tc.path, reply, tc.code)
			}
			continue
		}
		var got []string
		for _, rc := range rcpts {
			got = append(got, rc.Addr+">"+rc.Route.Transport+":"+rc.Route.NextHop)
		}
		if reply != nil || strings.Join(got, " ") != tc.want {
			t.Errorf("%s: %v %q, want %q", tc.path, reply, strings.Join(got, " "), tc.want)
		}
	}
}

func TestAcceptAll(t *testing.T) {
	r := New(config.Local{Domains: []string{"example.test"}, Transport: "maildir", AcceptAll: "sandbox"},
		config.Outbound{RelayHost: "[relay.test]:2525"})
	for _, in := range []string{"<anyone@anywhere.test>", "<alice@example.test>", "<user%other@example.test>", "<Postmaster>"} {
		p, _, err := smtp.ParsePath(in, true)
		if err != nil {
			t.Fatal(err)
		}
		rcpts, reply := r.Resolve(p, false)
		if reply != nil || len(rcpts) != 1 || rcpts[0].Route != (mail.Route{Transport: "sandbox", NextHop: "sandbox"}) {
			t.Errorf("Resolve(%s) = %+v, %v; want one sandbox recipient", in, rcpts, reply)
		}
	}
	null, _, _ := smtp.ParsePath("<>", true)
	if _, reply := r.Resolve(null, false); reply == nil {
		t.Error("the null path was accepted as a recipient")
	}
	if got := r.RemoteRoute("Other.TEST", "x@other.test"); got != (mail.Route{Transport: "remote", NextHop: "[relay.test]:2525"}) {
		t.Errorf("RemoteRoute = %+v, want the relay host", got)
	}
}
