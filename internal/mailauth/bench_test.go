package mailauth

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/base64"
	"fmt"
	"strings"
	"testing"

	"github.com/emersion/go-msgauth/dkim"

	"github.com/postamt/postamt/internal/dns/dnstest"
	"github.com/postamt/postamt/internal/policy"
)

// benchMessage is a typical received message: trace fields, a folded list header, and a body
// of about 4 KB.
func benchMessage() string {
	var b strings.Builder
	b.WriteString("Received: from mail.sender.test (mail.sender.test [192.0.2.10])\r\n\tby mx.example.test (Postamt) with ESMTPS id 00362Q2CHE0T6000\r\n\tfor <alice@example.test>; Sun, 29 Nov 2026 10:00:00 +0000\r\n")
	b.WriteString("Received: from [10.0.0.7] (unknown [198.51.100.4])\r\n\tby mail.sender.test (Postfix) with ESMTPSA id 4Qx7Z01abc\r\n\tfor <alice@example.test>; Sun, 29 Nov 2026 09:59:58 +0000\r\n")
	b.WriteString("From: Sender Name <s@sender.test>\r\nTo: Alice <alice@example.test>\r\nCc: bob@example.test,\r\n carol@example.test, dave@example.test\r\n")
	b.WriteString("Subject: Quarterly figures, with a subject line long enough to be folded by\r\n some mail user agents\r\n")
	b.WriteString("Date: Sun, 29 Nov 2026 10:00:00 +0000\r\nMessage-ID: <20261129100000.1234@sender.test>\r\nMIME-Version: 1.0\r\n")
	b.WriteString("Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\nList-Unsubscribe: <mailto:leave@sender.test>\r\n\r\n")
	for i := 0; b.Len() < 5000; i++ {
		fmt.Fprintf(&b, "Line %d of the body, which says nothing in particular but says it at length.\r\n", i)
	}
	return b.String()
}

func BenchmarkReadHeader(b *testing.B) {
	msg := []byte(benchMessage())
	b.ReportAllocs()
	b.SetBytes(int64(bytes.Index(msg, []byte("\r\n\r\n")) + 4))
	for b.Loop() {
		fields, err := ReadHeader(bytes.NewReader(msg))
		if err != nil || len(fields) != 12 {
			b.Fatalf("%d fields, %v", len(fields), err)
		}
	}
}

// BenchmarkVerifyDKIM verifies one signature (relaxed/relaxed, the common choice) per message;
// the key comes from an in-memory zone, so this is the verification cost without DNS. Postamt
// does not sign yet, so there is no signing benchmark.
func BenchmarkVerifyDKIM(b *testing.B) {
	rsaKey, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		b.Fatal(err)
	}
	rsaPub, _ := x509.MarshalPKIXPublicKey(&rsaKey.PublicKey)
	edPub, edKey, _ := ed25519.GenerateKey(rand.Reader)
	for _, tc := range []struct {
		name   string
		signer crypto.Signer
		record string
	}{
		{"rsa2048", rsaKey, "v=DKIM1; k=rsa; p=" + base64.StdEncoding.EncodeToString(rsaPub)},
		{"ed25519", edKey, "v=DKIM1; k=ed25519; p=" + base64.StdEncoding.EncodeToString(edPub)},
	} {
		b.Run(tc.name, func(b *testing.B) {
			var signed bytes.Buffer
			err := dkim.Sign(&signed, strings.NewReader(benchMessage()), &dkim.SignOptions{Domain: "sender.test", Selector: "sel",
				Signer: tc.signer, HeaderCanonicalization: dkim.CanonicalizationRelaxed, BodyCanonicalization: dkim.CanonicalizationRelaxed})
			if err != nil {
				b.Fatal(err)
			}
			z := &dnstest.Zone{TXT: map[string][]string{"sel._domainkey.sender.test": {tc.record}}}
			msg := signed.Bytes()
			ctx := context.Background()
			b.ReportAllocs()
			b.SetBytes(int64(len(msg)))
			for b.Loop() {
				res, err := VerifyDKIM(ctx, z, bytes.NewReader(msg))
				if err != nil || len(res) != 1 || res[0].Result != "pass" {
					b.Fatalf("%+v %v", res, err)
				}
			}
		})
	}
}

// BenchmarkVerifyARC: a message without ARC (what most mail is: only the header is read) and
// a three-set chain (RSA and Ed25519 seals, keys from an in-memory zone).
func BenchmarkVerifyARC(b *testing.B) {
	z := arcZone(b)
	plainMsg := benchMessage()
	m := seal(b, plainMsg, "list.example", "none")
	m = seal(b, m, "forwarder.example", "pass")
	m = seal(b, m, "relay.example", "pass")
	for _, tc := range []struct{ name, msg, want string }{{"none", plainMsg, "none"}, {"chain3", m, "pass"}} {
		b.Run(tc.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if r := VerifyARC(context.Background(), z, strings.NewReader(tc.msg)); r.Result != tc.want {
					b.Fatalf("%s: %s", r.Result, r.Reason)
				}
			}
		})
	}
}

// BenchmarkSignDKIM is the submission signer on a typical message, as the chain calls it.
func BenchmarkSignDKIM(b *testing.B) {
	rk, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		b.Fatal(err)
	}
	_, ek, _ := ed25519.GenerateKey(rand.Reader)
	msg := strings.Replace(benchMessage(), "s@sender.test", "s@example.test", 1)
	for _, tc := range []struct {
		name string
		key  crypto.Signer
	}{{"rsa2048", rk}, {"ed25519", ek}} {
		b.Run(tc.name, func(b *testing.B) {
			s := &DKIMSigner{Keys: map[string][]*DKIMKey{"example.test": {{Domain: "example.test", Selector: "s", Signer: tc.key}}}}
			tx := &policy.Txn{Conn: &policy.Conn{AuthUser: "s@example.test"}}
			b.ReportAllocs()
			b.SetBytes(int64(len(msg)))
			for b.Loop() {
				if v := s.CheckData(context.Background(), tx, sgMessage(msg)); v.Err != nil || len(v.Headers) != 1 {
					b.Fatalf("sign: %+v", v)
				}
			}
		})
	}
}
