//go:build interop

package interop

import (
	"context"
	"crypto"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/postamt/postamt/internal/dns/dnstest"
	"github.com/postamt/postamt/internal/mailauth"
)

// dkimpy is Debian's python3-dkim under the system Python (a pyenv python3 earlier in PATH
// does not have it); its ARC signing also needs python3-authres.
const dkimpyPython = "/usr/bin/python3"

func requireDkimpy(t *testing.T) {
	t.Helper()
	if err := exec.Command(dkimpyPython, "-c", "import dkim, authres").Run(); err != nil {
		skipOrFail(t, "python3-dkim or python3-authres is not installed")
	}
}

func dkimRecord(t *testing.T, k crypto.Signer) string {
	switch k := k.(type) {
	case *rsa.PrivateKey:
		der, err := x509.MarshalPKIXPublicKey(&k.PublicKey)
		if err != nil {
			t.Fatal(err)
		}
		return "v=DKIM1; k=rsa; p=" + base64.StdEncoding.EncodeToString(der)
	}
	t.Fatalf("key type %T", k)
	return ""
}

// TestARCInteropDkimpy checks Postamt's ARC code against dkimpy both ways: chains that
// mailauth.ARCSealer builds (two RSA sets) validate as pass in dkimpy, and chains dkimpy
// seals (two sets) validate as pass in mailauth.VerifyARC; in both directions a body changed
// after sealing fails, so agreement on pass is not agreement on anything. dkimpy 1.1.4's
// ARC knows only rsa-sha256 (an Ed25519 seal is "unknown signature algorithm" there), so
// Ed25519 seals are covered by the unit tests only.
func TestARCInteropDkimpy(t *testing.T) {
	requireDkimpy(t)
	dir := t.TempDir()
	rsaKey, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	zone := map[string]string{
		"arc._domainkey.lists.test":   dkimRecord(t, rsaKey),
		"arc._domainkey.fwd.test":     dkimRecord(t, rsaKey),
		"arc._domainkey.postamt.test": dkimRecord(t, rsaKey),
	}
	zb, _ := json.Marshal(zone)
	zoneFile := filepath.Join(dir, "zone.json")
	os.WriteFile(zoneFile, zb, 0o600)
	keyFile := filepath.Join(dir, "key.pem")
	os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(rsaKey)}), 0o600)
	z := &dnstest.Zone{TXT: map[string][]string{}}
	for k, v := range zone {
		z.TXT[k] = []string{v}
	}

	plain := "From: Sender <s@sender.test>\r\nTo: <list@lists.test>\r\nSubject: interop\r\n" +
		"Date: Sun, 29 Nov 2026 10:00:00 +0000\r\nMessage-ID: <arc-interop@sender.test>\r\n" +
		"MIME-Version: 1.0\r\nContent-Type: text/plain\r\n\r\nHello  list,\t with  spaces.\r\n\r\n\r\n"
	tamper := func(m string) string { return strings.Replace(m, "Hello", "Jello", 1) }

	dkimpyVerify := func(m string) (cv, reason string) {
		t.Helper()
		f := filepath.Join(dir, "verify.eml")
		os.WriteFile(f, []byte(m), 0o600)
		res := runCmd(t, "", dkimpyPython, "testdata/arc_dkimpy.py", "verify", f, zoneFile)
		var out struct{ CV, Reason string }
		lines := strings.Split(strings.TrimSpace(res.Output), "\n")
		if res.ExitCode != 0 || json.Unmarshal([]byte(lines[len(lines)-1]), &out) != nil {
			t.Fatalf("dkimpy verify failed (exit %d): %s", res.ExitCode, res.Output)
		}
		return out.CV, out.Reason
	}
	dkimpySign := func(m, domain string) string {
		t.Helper()
		f := filepath.Join(dir, "sign.eml")
		os.WriteFile(f, []byte(m), 0o600)
		res := runCmd(t, "", dkimpyPython, "testdata/arc_dkimpy.py", "sign", f, keyFile, "arc", domain, "mx."+domain)
		if res.ExitCode != 0 {
			t.Fatalf("dkimpy sign failed (exit %d): %s", res.ExitCode, res.Output)
		}
		return res.Output
	}

	t.Run("postamt seals, dkimpy validates", func(t *testing.T) {
		m := plain
		for i, s := range []*mailauth.ARCSealer{
			{Domain: "postamt.test", Selector: "arc", Signer: rsaKey},
			{Domain: "fwd.test", Selector: "arc", Signer: rsaKey},
		} {
			cv := "none"
			if i > 0 {
				cv = "pass"
			}
			h, err := s.Seal([]byte(m), "mx."+s.Domain, "spf=pass smtp.mailfrom=sender.test", cv)
			if err != nil {
				t.Fatal(err)
			}
			m = h + m
			if got, reason := dkimpyVerify(m); got != "pass" {
				t.Fatalf("dkimpy says cv=%s (%s) for our %d-set chain:\n%s", got, reason, i+1, m)
			}
		}
		if got, _ := dkimpyVerify(tamper(m)); got != "fail" {
			t.Errorf("dkimpy says cv=%s for a tampered chain", got)
		}
	})

	t.Run("dkimpy seals, postamt validates", func(t *testing.T) {
		m := dkimpySign("Authentication-Results: mx.lists.test; dkim=pass header.d=sender.test\r\n"+plain, "lists.test")
		m = dkimpySign("Authentication-Results: mx.fwd.test; arc=pass\r\n"+m, "fwd.test")
		r := mailauth.VerifyARC(context.Background(), z, strings.NewReader(m))
		if r.Result != "pass" || r.Instances != 2 || strings.Join(r.Sealers, " ") != "lists.test fwd.test" {
			t.Fatalf("VerifyARC: %+v for dkimpy's chain:\n%s", r, m)
		}
		if got, _ := dkimpyVerify(m); got != "pass" {
			t.Errorf("dkimpy does not validate its own chain: %s", got)
		}
		if r := mailauth.VerifyARC(context.Background(), z, strings.NewReader(tamper(m))); r.Result != "fail" {
			t.Errorf("tampered dkimpy chain: %+v", r)
		}
	})
}
