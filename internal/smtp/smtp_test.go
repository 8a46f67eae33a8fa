package smtp

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"strings"
	"testing"
)

func TestParsePath(t *testing.T) {
	tests := []struct {
		in       string
		utf8     bool
		wantErr  bool
		local    string
		domain   string
		null     bool
		srcRoute bool
		rest     string
	}{
		{in: "<a@example.org>", local: "a", domain: "example.org"},
		{in: " <a@example.org> SIZE=10", local: "a", domain: "example.org", rest: "SIZE=10"},
		{in: "<>", null: true},
		{in: "<> BODY=8BITMIME", null: true, rest: "BODY=8BITMIME"},
		{in: "<Postmaster>", local: "postmaster"},
		{in: "<@relay.example:user@example.org>", local: "user", domain: "example.org", srcRoute: true},
		{in: "<@a.example,@b.example:user@example.org>", local: "user", domain: "example.org", srcRoute: true},
		{in: `<"john doe"@example.org>`, local: "john doe", domain: "example.org"},
		{in: `<"a>b"@example.org>`, local: "a>b", domain: "example.org"},
		{in: `<"user@other"@example.org>`, local: "user@other", domain: "example.org"},
		{in: "<user%other@example.org>", local: "user%other", domain: "example.org"},
		{in: "<other!user@example.org>", local: "other!user", domain: "example.org"},
		{in: "<a@[192.0.2.1]>", local: "a", domain: "[192.0.2.1]"},
		{in: "<a@[IPv6:2001:db8::1]>", local: "a", domain: "[IPv6:2001:db8::1]"},
		{in: "<jörg@bücher.example>", utf8: true, local: "jörg", domain: "bücher.example"},
		{in: "<jörg@bücher.example>", wantErr: true},
		{in: "<a@bücher.example>", wantErr: true},
		{in: "a@example.org", wantErr: true},
		{in: "<a@example.org", wantErr: true},
		{in: "<a@example.org>x", wantErr: true},
		{in: "<a@>", wantErr: true},
		{in: "<@example.org>", wantErr: true},
		{in: "<a..b@example.org>", wantErr: true},
		{in: "<.a@example.org>", wantErr: true},
		{in: "<a@-bad.example>", wantErr: true},
		{in: "<a@exa_mple.org>", wantErr: true},
		{in: "<a b@example.org>", wantErr: true},
		{in: "<a\rb@example.org>", wantErr: true},
		{in: "<a\nb@example.org>", wantErr: true},
		{in: "<a\x00b@example.org>", wantErr: true},
		{in: "<\"a\rb\"@example.org>", wantErr: true},
		{in: "<a@[300.1.1.1]>", wantErr: true},
		{in: "<a@[tag:xyz]>", wantErr: true},
		{in: "<" + strings.Repeat("a", 65) + "@example.org>", wantErr: true},
		{in: "<a@" + strings.Repeat("b", 64) + ".org>", wantErr: true},
		{in: "<\xff@example.org>", utf8: true, wantErr: true},
		{in: "<postmaster@>", wantErr: true},
	}
	for _, tt := range tests {
		t.Run(fmt.Sprintf("%q", tt.in), func(t *testing.T) {
			p, rest, err := ParsePath(tt.in, tt.utf8)
			if tt.wantErr {
				if err == nil {
					t.Fatalf("want error, got %+v", p)
				}
				if !errors.Is(err, ErrSyntax) {
					t.Fatalf("error %v does not wrap ErrSyntax", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if p.Addr.Local != tt.local || p.Addr.Domain != tt.domain || p.Null != tt.null || p.SourceRoute != tt.srcRoute || rest != tt.rest {
				t.Fatalf("got %+v rest %q", p, rest)
			}
		})
	}
}

func TestAddressString(t *testing.T) {
	for _, tt := range []struct{ in, want string }{
		{"<a@example.org>", "a@example.org"},
		{`<"john doe"@example.org>`, `"john doe"@example.org`},
		{`<"alice"@example.org>`, `alice@example.org`},
		{`<"a\"b"@example.org>`, `"a\"b"@example.org`},
	} {
		p, _, err := ParsePath(tt.in, false)
		if err != nil {
			t.Fatal(err)
		}
		if got := p.Addr.String(); got != tt.want {
			t.Errorf("%s: got %s want %s", tt.in, got, tt.want)
		}
	}
}

func TestASCIIDomain(t *testing.T) {
	a := Address{Local: "x", Domain: "Bücher.Example"}
	if got := a.ASCIIDomain(); got != "xn--bcher-kva.example" {
		t.Fatal(got)
	}
	a = Address{Local: "x", Domain: "EXAMPLE.org"}
	if got := a.ASCIIDomain(); got != "example.org" {
		t.Fatal(got)
	}
}

func TestParseMailParams(t *testing.T) {
	tests := []struct {
		in   string
		code int
		want MailParams
	}{
		{in: "", want: MailParams{}},
		{in: "SIZE=1000 BODY=8BITMIME", want: MailParams{Size: 1000, Body: "8BITMIME"}},
		{in: "size=5 body=7bit smtputf8", want: MailParams{Size: 5, Body: "7BIT", SMTPUTF8: true}},
		{in: "RET=HDRS ENVID=QQ314159+2Bx", want: MailParams{Ret: "HDRS", EnvID: "QQ314159+x"}},
		{in: "SIZE=2000", code: 552},
		{in: "SIZE=abc", code: 501},
		{in: "SIZE=-1", code: 501},
		{in: "BODY=BINARYMIME", code: 555},
		{in: "FOO=bar", code: 555},
		{in: "XYZ", code: 555},
		{in: "SIZE=1 SIZE=2", code: 501},
		{in: "RET=ALL", code: 501},
		{in: "ENVID=a+0Db", code: 501},
		{in: "ENVID=a+0", code: 501},
		{in: "SMTPUTF8=yes", code: 501},
		{in: "SIZE=", code: 501},
		{in: "AUTH=<>", want: MailParams{Auth: "<>"}},
	}
	for _, tt := range tests {
		got, r := ParseMailParams(tt.in, 1500)
		if tt.code != 0 {
			if r == nil || r.Code != tt.code {
				t.Errorf("%q: want %d, got %v", tt.in, tt.code, r)
			}
			continue
		}
		if r != nil {
			t.Errorf("%q: %v", tt.in, r)
			continue
		}
		if got != tt.want {
			t.Errorf("%q: got %+v want %+v", tt.in, got, tt.want)
		}
	}
}

func TestParseRcptParams(t *testing.T) {
	p, r := ParseRcptParams("NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;a+2Bb@example.org")
	if r != nil || strings.Join(p.Notify, ",") != "SUCCESS,FAILURE" || p.ORCPT != "rfc822;a+b@example.org" {
		t.Fatalf("%+v %v", p, r)
	}
	for _, bad := range []string{"NOTIFY=NEVER,SUCCESS", "NOTIFY=SOMETIMES", "ORCPT=noseparator", "ORCPT=rfc822;a+0Ab", "X=1"} {
		if _, r := ParseRcptParams(bad); r == nil {
			t.Errorf("%q accepted", bad)
		}
	}
	if _, r := ParseRcptParams("X=1"); r.Code != 555 || r.Enhanced != CodeBadParams {
		t.Errorf("unknown RCPT param: %v", r)
	}
}

func TestXtextRoundTrip(t *testing.T) {
	for _, s := range []string{"plain", "a+b=c", "with space", "x~y"} {
		if d, ok := DecodeXtext(EncodeXtext(s)); !ok || d != s {
			t.Errorf("%q -> %q -> %q %v", s, EncodeXtext(s), d, ok)
		}
	}
}

func TestReplyWire(t *testing.T) {
	tests := []struct {
		r    *Reply
		want string
	}{
		{NewReply(250, CodeOK, "OK"), "250 2.0.0 OK\r\n"},
		{NewReply(250, CodeOK, "a\nb"), "250-2.0.0 a\r\n250 2.0.0 b\r\n"},
		{NewReply(354, EnhancedCode{}, "Go ahead"), "354 Go ahead\r\n"},
		// A mismatched class is corrected so that a 4xx never carries a 5.x.x code.
		{NewReply(451, EnhancedCode{5, 3, 0}, "x"), "451 4.3.0 x\r\n"},
		{NewReply(550, EnhancedCode{4, 1, 1}, "x"), "550 5.1.1 x\r\n"},
	}
	for _, tt := range tests {
		var b bytes.Buffer
		w := bufio.NewWriter(&b)
		tt.r.WriteTo(w)
		w.Flush()
		if b.String() != tt.want {
			t.Errorf("got %q want %q", b.String(), tt.want)
		}
	}
}

func TestReplyFor(t *testing.T) {
	rcpt := NewReply(550, CodeBadDestMailbox, "No such user")
	tests := []struct {
		err  error
		code int
		enh  EnhancedCode
		text string
	}{
		{rcpt, 550, CodeBadDestMailbox, "No such user"},
		{fmt.Errorf("router: %w", rcpt), 550, CodeBadDestMailbox, "No such user"},
		{errors.New("open /var/spool/x: permission denied"), 451, EnhancedCode{4, 3, 0}, "Internal error, please try again later (ref S123)"},
	}
	for _, tt := range tests {
		r := ReplyFor(tt.err, "S123")
		if r.Code != tt.code || r.Enhanced != tt.enh || r.Text != tt.text {
			t.Errorf("%v: got %+v", tt.err, r)
		}
		if strings.Contains(r.Text, "/var/spool") {
			t.Errorf("internal detail leaked: %q", r.Text)
		}
	}
	if ReplyFor(nil, "") != nil {
		t.Error("nil error must give nil reply")
	}
}
