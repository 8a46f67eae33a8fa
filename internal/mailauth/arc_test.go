package mailauth

import (
	"bufio"
	"bytes"
	"context"
	"crypto"
	"encoding/base64"
	"fmt"
	"io"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-msgauth/dkim"

	"github.com/postamt/postamt/internal/dns/dnstest"
	"github.com/postamt/postamt/internal/policy"
)

// arcZone publishes the sealers' keys: an RSA one and Ed25519 ones, and one that cannot be
// looked up.
func arcZone(t testing.TB) *dnstest.Zone {
	z := testZone(t)
	z.TXT["arc._domainkey.forwarder.example"] = []string{keyRecord(t, rsaKey)}
	z.TXT["arc._domainkey.list.example"] = []string{keyRecord(t, edKey)}
	z.TXT["arc._domainkey.relay.example"] = []string{keyRecord(t, edKey)}
	z.TXT["arc._domainkey.untrusted.example"] = []string{keyRecord(t, edKey)}
	z.Fail["arc._domainkey.down.example"] = true
	return z
}

func sealer(t testing.TB, domain string) *ARCSealer {
	keys(t)
	var k crypto.Signer = edKey
	if domain == "forwarder.example" {
		k = rsaKey
	}
	return &ARCSealer{Domain: domain, Selector: "arc", Signer: k, Now: func() time.Time { return time.Unix(1795000000, 0) }}
}

// seal puts one ARC set on top of m.
func seal(t testing.TB, m, domain, cv string) string {
	t.Helper()
	h, err := sealer(t, domain).Seal([]byte(m), "mx."+domain, "spf=pass smtp.mailfrom="+domain, cv)
	if err != nil {
		t.Fatal(err)
	}
	return h + m
}

// chain3 is a message signed by its author and sealed three times, as a list and two
// forwarders pass it on (RSA at forwarder.example, Ed25519 elsewhere).
func chain3(t testing.TB) string {
	m := seal(t, sign(t, plain, "example.com", edKey), "list.example", "none")
	m = seal(t, m, "forwarder.example", "pass")
	return seal(t, m, "relay.example", "pass")
}

// setField replaces the value of the first field named name whose value contains marker.
func editField(t testing.TB, m, name, marker string, edit func(string) string) string {
	t.Helper()
	re := regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(name) + `:[^\r]*(\r\n[ \t][^\r]*)*\r\n`)
	for _, loc := range re.FindAllStringIndex(m, -1) {
		f := m[loc[0]:loc[1]]
		if strings.Contains(f, marker) {
			return m[:loc[0]] + edit(f) + m[loc[1]:]
		}
	}
	t.Fatalf("no %s field with %q", name, marker)
	return ""
}

func TestARCValidation(t *testing.T) {
	z := arcZone(t)
	one := seal(t, plain, "forwarder.example", "none")
	three := chain3(t)
	// Fifty sets is the most a chain may have.
	fifty := plain
	for i := 1; i <= 50; i++ {
		cv := "pass"
		if i == 1 {
			cv = "none"
		}
		fifty = seal(t, fifty, "relay.example", cv)
	}
	flip := func(f string) string {
		// Change one character in the middle of b= (still valid base64).
		i := strings.Index(f, "b=") + 20
		c := byte('A')
		if f[i] == 'A' {
			c = 'B'
		}
		return f[:i] + string(c) + f[i+1:]
	}
	for _, tc := range []struct {
		name       string
		msg        string
		result     string
		reason     string // must be in Reason
		instances  int
		oldestPass int
		sealers    string
	}{
		{name: "no ARC fields", msg: plain, result: "none"},
		{name: "one set, RSA", msg: one, result: "pass", instances: 1, sealers: "forwarder.example"},
		{name: "three sets, RSA and Ed25519", msg: three, result: "pass", instances: 3, sealers: "list.example forwarder.example relay.example"},
		{name: "fifty sets", msg: fifty, result: "pass", instances: 50},
		{name: "fifty-one sets", msg: seal(t, fifty, "relay.example", "pass"), result: "fail", reason: "more than 50 ARC sets"},
		{name: "body changed after the last seal", msg: strings.Replace(three, "Hello.", "Hallo.", 1),
			result: "fail", reason: "ARC-Message-Signature i=3: body hash does not match"},
		{name: "signed header changed after the last seal", msg: strings.Replace(three, "Subject: hi", "Subject: win", 1),
			result: "fail", reason: "ARC-Message-Signature i=3: signature does not verify"},
		{name: "body changed by the second intermediary", result: "pass", instances: 3, oldestPass: 2,
			msg: func() string {
				m := seal(t, plain, "list.example", "none")
				m = strings.Replace(m, "Hello.\r\n", "Hello.\r\n-- \r\nlist footer\r\n", 1)
				m = seal(t, m, "forwarder.example", "pass")
				return seal(t, m, "relay.example", "pass")
			}()},
		{name: "first seal's b= altered", msg: editField(t, three, "ARC-Seal", "i=1;", flip),
			result: "fail", reason: "ARC-Seal i=1: signature does not verify"},
		{name: "newest seal's b= altered", msg: editField(t, three, "ARC-Seal", "i=3;", flip),
			result: "fail", reason: "ARC-Seal i=3: signature does not verify"},
		{name: "AAR of an old set changed", msg: strings.Replace(three, "spf=pass smtp.mailfrom=list.example", "spf=pass smtp.mailfrom=liszt.example", 1),
			result: "fail", reason: "ARC-Seal i=1: signature does not verify"},
		{name: "instance gap (i=1 and i=3)", result: "fail", reason: "ARC set i=2 is missing",
			msg: func() string {
				m := three
				for _, name := range []string{"ARC-Seal", "ARC-Message-Signature", "ARC-Authentication-Results"} {
					m = editField(t, m, name, "i=2;", func(string) string { return "" })
				}
				return m
			}()},
		{name: "duplicate instance", msg: editField(t, one, "ARC-Authentication-Results", "i=1", func(f string) string { return f + f }),
			result: "fail", reason: "two ARC-Authentication-Results fields with i=1"},
		{name: "duplicate ARC-Seal", msg: editField(t, three, "ARC-Seal", "i=2;", func(f string) string { return f + f }),
			result: "fail", reason: "two ARC-Seal fields with i=2"},
		{name: "cv=none on i=2", msg: seal(t, one, "relay.example", "none"), result: "fail", reason: "ARC-Seal i=2 says cv=none, want pass"},
		{name: "cv=pass on i=1", msg: seal(t, plain, "relay.example", "pass"), result: "fail", reason: "ARC-Seal i=1 says cv=pass, want none"},
		{name: "newest seal says cv=fail", msg: seal(t, one, "relay.example", "fail"), result: "fail", reason: "the newest ARC-Seal (i=2) says cv=fail"},
		{name: "cv=fail in the middle", msg: seal(t, seal(t, one, "list.example", "fail"), "relay.example", "pass"),
			result: "fail", reason: "ARC-Seal i=2 says cv=fail"},
		{name: "missing AAR", msg: editField(t, three, "ARC-Authentication-Results", "i=2", func(string) string { return "" }),
			result: "fail", reason: "ARC set i=2 has no ARC-Authentication-Results"},
		{name: "missing AMS", msg: editField(t, one, "ARC-Message-Signature", "i=1", func(string) string { return "" }),
			result: "fail", reason: "ARC set i=1 has no ARC-Message-Signature"},
		{name: "unparsable i=", msg: strings.Replace(one, "ARC-Seal: i=1;", "ARC-Seal: i=one;", 1),
			result: "fail", reason: `ARC-Seal: invalid i="one"`},
		{name: "duplicate tag", msg: strings.Replace(one, "ARC-Seal: i=1;", "ARC-Seal: i=1; d=evil.example;", 1),
			result: "fail", reason: "ARC-Seal: duplicate tag d="},
		{name: "h= in a seal", msg: strings.Replace(one, "ARC-Seal: i=1;", "ARC-Seal: i=1; h=from;", 1),
			result: "fail", reason: "ARC-Seal i=1 has an h= tag"},
		{name: "no key published", msg: seal(t, plain, "nokey.example", "none"), result: "fail", reason: "no key at arc._domainkey.nokey.example"},
		{name: "key lookup fails", msg: seal(t, plain, "down.example", "none"), result: "temperror", reason: "arc._domainkey.down.example"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := VerifyARC(context.Background(), z, strings.NewReader("Received: from x by mx.test; Sun, 1 Nov 2026 10:00:00 +0000\r\n"+tc.msg))
			if r.Result != tc.result || !strings.Contains(r.Reason, tc.reason) {
				t.Fatalf("got %s (%s), want %s (%s)", r.Result, r.Reason, tc.result, tc.reason)
			}
			if tc.result != "pass" {
				return
			}
			if r.Instances != tc.instances || r.OldestPass != tc.oldestPass {
				t.Errorf("instances %d oldest-pass %d, want %d %d", r.Instances, r.OldestPass, tc.instances, tc.oldestPass)
			}
			if tc.sealers != "" && strings.Join(r.Sealers, " ") != tc.sealers {
				t.Errorf("sealers %v, want %s", r.Sealers, tc.sealers)
			}
		})
	}
}

// l= limits what an AMS covers; a chain that needs more than maxBodyHashes body hashes has
// its oldest signatures counted as not verifying, which only lowers oldest-pass.
func TestARCBodyLength(t *testing.T) {
	z := arcZone(t)
	sealL := func(m, domain, cv string, l int64) string {
		s := sealer(t, domain)
		s.bodyLength = l
		h, err := s.Seal([]byte(m), "mx."+domain, "arc=none", cv)
		if err != nil {
			t.Fatal(err)
		}
		return h + m
	}
	check := func(name, m, result string, oldestPass int, reason string) {
		t.Helper()
		r := VerifyARC(context.Background(), z, strings.NewReader(m))
		if r.Result != result || r.OldestPass != oldestPass || !strings.Contains(r.Reason, reason) {
			t.Errorf("%s: %s oldest-pass=%d (%s), want %s %d (%s)", name, r.Result, r.OldestPass, r.Reason, result, oldestPass, reason)
		}
	}
	one := sealL(plain, "relay.example", "none", 4) // "Hell"
	check("l=4", one, "pass", 0, "")
	check("l=4, body appended", one+"appended\r\n", "pass", 0, "")
	check("l=4, covered part changed", strings.Replace(one, "Hello.", "Jello.", 1), "fail", 0, "body hash does not match")
	check("l= past the body", sealL(plain, "relay.example", "none", 100), "fail", 0, "l= is longer than the body")
	check("invalid l=", strings.Replace(one, "l=4;", "l=-4;", 1), "fail", 0, "invalid l=")
	m := plain
	for i := int64(1); i <= 6; i++ {
		cv := "pass"
		if i == 1 {
			cv = "none"
		}
		m = sealL(m, "relay.example", cv, i)
	}
	check("six different l=", m, "pass", 3, "")
}

// The AMS is a DKIM signature under another name, so go-msgauth's DKIM signer, an independent
// implementation, checks our canonicalization and hashing: every signature it makes, in all
// four c= combinations, must verify with our code, and one changed byte must not.
func TestARCCanonicalizationAgainstDKIM(t *testing.T) {
	z := arcZone(t)
	tricky := "From: Joe <joe@example.com>\r\n" +
		"To:   <you@mx.test>  ,\r\n\t  <other@mx.test>\t\r\n" +
		"Subject:\tlots   of \t space  \r\n" +
		"subject: second subject\r\n" +
		"Date: Fri, 11 Jul 2003 21:00:37 -0700\r\n" +
		"\r\n" +
		"  leading and trailing  \t \r\n" +
		"tabs\tin\t\tthe middle\r\n" +
		"\r\n" +
		" \t \r\n" +
		"\r\n"
	for _, body := range []string{tricky, strings.TrimSuffix(tricky, "\r\n \t \r\n\r\n") + "no final newline", strings.SplitAfter(tricky, "\r\n\r\n")[0]} {
		for _, hc := range []dkim.Canonicalization{dkim.CanonicalizationSimple, dkim.CanonicalizationRelaxed} {
			for _, bc := range []dkim.Canonicalization{dkim.CanonicalizationSimple, dkim.CanonicalizationRelaxed} {
				var b bytes.Buffer
				err := dkim.Sign(&b, strings.NewReader(body), &dkim.SignOptions{Domain: "example.com", Selector: "sel", Signer: edKey,
					HeaderCanonicalization: hc, BodyCanonicalization: bc, HeaderKeys: []string{"From", "To", "Subject", "Subject", "Subject", "Date"}})
				if err != nil {
					t.Fatal(err)
				}
				if err := verifyDKIMStyle(z, b.String()); err != nil {
					t.Errorf("c=%s/%s %q: %v", hc, bc, body, err)
				}
				bad := strings.Replace(b.String(), "lots   of", "lots   off", 1)
				if err := verifyDKIMStyle(z, bad); err == nil {
					t.Errorf("c=%s/%s: a changed header still verifies", hc, bc)
				}
			}
		}
	}
}

// verifyDKIMStyle checks the message's DKIM-Signature with the code that checks an AMS.
func verifyDKIMStyle(z *dnstest.Zone, m string) error {
	br := bufio.NewReader(strings.NewReader(m))
	fields, start, err := readRawHeader(br)
	if err != nil {
		return err
	}
	var sig *rawField
	for k := range fields {
		if fields[k].name == "DKIM-Signature" {
			sig = &fields[k]
		}
	}
	tags, err := parseTags(sig.value())
	if err != nil {
		return err
	}
	rh, rb, err := canon(tags["c"])
	if err != nil {
		return err
	}
	h := newBodyHasher(bodyKey{relaxed: rb, limit: -1})
	h.Write(start)
	io.Copy(h, br)
	sum, _ := h.sum()
	if base64.StdEncoding.EncodeToString(sum) != stripWS(tags["bh"]) {
		return fmt.Errorf("body hash %s, signer said %s", base64.StdEncoding.EncodeToString(sum), tags["bh"])
	}
	kc := &keyCache{ctx: context.Background(), r: z, keys: map[string]crypto.PublicKey{}, errs: map[string]error{}}
	return verifySig(kc, tags, signedHeaderData(fields, tags["h"], sig, rh))
}

// runARC drives SPF, DKIM, ARC, DMARC and the header through a Chain, as buildChecks wires
// them, for a client at strangeIP (so SPF for example.com fails).
func runARC(t *testing.T, z *dnstest.Zone, trusted []string, failClosed bool, body string) (policy.Result, *policy.Txn) {
	t.Helper()
	chain := &policy.Chain{Entries: []policy.Entry{
		{Check: &SPFCheck{Resolver: z}},
		{Check: &DKIMCheck{Resolver: z}},
		{Check: &ARCCheck{Resolver: z, TrustedSealers: trusted}, FailClosed: failClosed},
		{Check: &DMARCCheck{Resolver: z, OnReject: policy.Reject, OnQuarantine: policy.Quarantine}},
		{Check: &AuthResultsCheck{AuthServID: "mx.test"}},
	}}
	conn := &policy.Conn{RemoteIP: strangeIP, Helo: "mail.forwarder.example", Values: map[string]any{}, Now: time.Now}
	ctx := context.Background()
	chain.Helo(ctx, conn)
	tx := &policy.Txn{Conn: conn, From: "bounces@forwarder.example"}
	if res := chain.Mail(ctx, tx); res.Refused() {
		t.Fatalf("MAIL refused: %+v", res)
	}
	return chain.Data(ctx, tx, msg("Received: from x by mx.test; Sun, 1 Nov 2026 10:00:00 +0000\r\n"+body)), tx
}

func TestARCDMARCOverride(t *testing.T) {
	z := arcZone(t)
	// example.com signs, the list adds a footer (breaking DKIM) and seals; the list's
	// server (forwarder.example, no SPF record) sends it: DMARC for example.com (p=reject)
	// fails.
	listed := strings.Replace(sign(t, plain, "example.com", edKey), "Hello.\r\n", "Hello.\r\n-- \r\nlist footer\r\n", 1)
	listed = seal(t, listed, "list.example", "none")
	for _, tc := range []struct {
		name       string
		trusted    []string
		body       string
		failClosed bool
		action     policy.Action
		summary    string
		reply      string
		ar         []string
	}{
		{name: "trusted sealer: DMARC reject not applied", trusted: []string{"other.example", "LIST.example"}, body: listed,
			summary: "spf=none dkim=fail arc=pass dmarc=fail (arc override by d=list.example)",
			ar:      []string{"arc=pass smtp.remote-ip=198.51.100.7", `dmarc=fail reason="arc override by d=list.example" header.from=example.com`}},
		{name: "untrusted sealer: DMARC applied", trusted: []string{"forwarder.example"}, body: listed,
			action: policy.Reject, summary: "spf=none dkim=fail arc=pass dmarc=fail",
			reply: "550 5.7.26 DMARC policy of example.com is reject: SPF none and no valid DKIM signature"},
		{name: "trusted only as an older sealer", trusted: []string{"list.example"}, body: seal(t, listed, "untrusted.example", "pass"),
			action: policy.Reject, summary: "spf=none dkim=fail arc=pass dmarc=fail"},
		{name: "trusted sealer, broken chain", trusted: []string{"list.example"}, body: strings.Replace(listed, "list footer", "evil footer", 1),
			action: policy.Reject, summary: "spf=none dkim=fail arc=fail dmarc=fail"},
		{name: "no ARC", trusted: []string{"list.example"}, body: plain,
			action: policy.Reject, summary: "spf=none dkim=none arc=none dmarc=fail"},
		{name: "key lookup temperror, fail-open", trusted: []string{"down.example"}, body: seal(t, plain, "down.example", "none"),
			action: policy.Reject, summary: "spf=none dkim=none arc=temperror(error) dmarc=fail"},
		{name: "key lookup temperror, fail-closed", trusted: []string{"down.example"}, body: seal(t, plain, "down.example", "none"), failClosed: true,
			action: policy.Tempfail, summary: "spf=none dkim=none arc=temperror(error)", reply: "451 4.7.1 Cannot check the message right now (arc unavailable)"},
		{name: "passing chain reported", body: seal(t, strings.Replace(plain, "example.com", "other.example", 1), "relay.example", "none"),
			summary: "spf=none dkim=none arc=pass dmarc=none", ar: []string{"arc=pass smtp.remote-ip=198.51.100.7"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			res, tx := runARC(t, z, tc.trusted, tc.failClosed, tc.body)
			if res.Action != tc.action {
				t.Errorf("action %s (%s), want %s", res.Action, res.Reason, tc.action)
			}
			if got := policy.Summary(tx.Outcomes); got != tc.summary {
				t.Errorf("outcomes %q, want %q", got, tc.summary)
			}
			if tc.reply != "" && (res.Reply == nil || !strings.Contains(res.Reply.Line(), tc.reply)) {
				t.Errorf("reply %v, want %q", res.Reply, tc.reply)
			}
			h := strings.Join(tx.Headers, "\n")
			for _, want := range tc.ar {
				if !strings.Contains(strings.ReplaceAll(h, ";\r\n\t", "; "), want) {
					t.Errorf("Authentication-Results %q lacks %q", h, want)
				}
			}
		})
	}
}

func TestARCSealInstances(t *testing.T) {
	m := chain3(t)
	for i, want := range []string{"ARC-Seal: i=3;", "ARC-Message-Signature: i=3;", "ARC-Authentication-Results: i=3;"} {
		if !strings.Contains(m, want) {
			t.Errorf("field %d: %q missing", i, want)
		}
	}
	if _, err := (&ARCSealer{Domain: "x", Selector: "y", Signer: nil}).Seal([]byte(plain), "mx", "none", "none"); err == nil {
		t.Error("a sealer without key sealed")
	}
}

func TestParseTags(t *testing.T) {
	for in, want := range map[string]string{
		"a=1; b = 2 ;c=":         "map[a:1 b:2 c:]",
		" i=1;\r\n\tb=ab\r\n cd": "map[b:ab\r\n cd i:1]",
		"a=1;;b=2":               "error",
		"a=1; a=2":               "error",
		"1a=x":                   "error",
		"novalue":                "error",
		"a=1;":                   "map[a:1]",
	} {
		tags, err := parseTags(in)
		got := fmt.Sprint(tags)
		if err != nil {
			got = "error"
		}
		if got != want {
			t.Errorf("parseTags(%q) = %s, want %s", in, got, want)
		}
	}
}
