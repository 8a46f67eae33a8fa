package mailauth

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ed25519"
	"encoding/json"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/emersion/go-msgauth/dkim"

	"github.com/postamt/postamt/internal/dns/dnstest"
	"github.com/postamt/postamt/internal/policy"
)

type sgMessage string

func (m sgMessage) Size() int64 { return int64(len(m)) }
func (m sgMessage) Open() (io.ReadCloser, error) {
	return io.NopCloser(strings.NewReader(string(m))), nil
}

var (
	sgKeysOnce sync.Once
	sgRSA      crypto.Signer
	sgEd       crypto.Signer
)

func sgTestKeys(t *testing.T) (rsaKey, edKey crypto.Signer) {
	t.Helper()
	sgKeysOnce.Do(func() {
		var err error
		if sgRSA, err = GenerateDKIMKey("rsa"); err != nil {
			panic(err)
		}
		if sgEd, err = GenerateDKIMKey("ed25519"); err != nil {
			panic(err)
		}
	})
	return sgRSA, sgEd
}

// sgSigner signs for example.test with an RSA and an Ed25519 key (dual signing).
func sgSigner(t *testing.T) (*DKIMSigner, map[string]string) {
	rk, ek := sgTestKeys(t)
	s := &DKIMSigner{Keys: map[string][]*DKIMKey{"example.test": {
		{Domain: "example.test", Selector: "rsa1", Signer: rk},
		{Domain: "example.test", Selector: "ed1", Signer: ek},
	}}}
	recs := map[string]string{}
	for _, k := range s.Keys["example.test"] {
		r, err := DKIMRecord(k.Signer)
		if err != nil {
			t.Fatal(err)
		}
		recs[k.Selector+"._domainkey.example.test"] = r
	}
	return s, recs
}

// sgSign runs the signer as the submission chain does: added holds the fix-up headers, m the
// received message. It returns the message as it leaves.
func sgSign(t *testing.T, s *DKIMSigner, added []string, m string) (string, policy.Verdict) {
	t.Helper()
	tx := &policy.Txn{Conn: &policy.Conn{AuthUser: "alice@example.test"}, Headers: added}
	v := s.CheckData(context.Background(), tx, sgMessage(m))
	if v.Err != nil {
		t.Fatalf("sign: %v", v.Err)
	}
	var out strings.Builder
	for _, h := range append(append([]string{}, added...), v.Headers...) {
		out.WriteString(h + "\r\n")
	}
	// The Chain puts the DKIM-Signature after the fix-ups; a verifier does not care where.
	return out.String() + m, v
}

func sgVerifyGo(t *testing.T, msg string, recs map[string]string) []*dkim.Verification {
	t.Helper()
	vs, err := dkim.VerifyWithOptions(strings.NewReader(msg), &dkim.VerifyOptions{LookupTXT: func(name string) ([]string, error) {
		if r, ok := recs[strings.TrimSuffix(name, ".")]; ok {
			return []string{r}, nil
		}
		return nil, errors.New("no record")
	}})
	if err != nil {
		t.Fatalf("verify: %v", err)
	}
	return vs
}

type sgPyResult struct {
	Signatures []struct {
		D, S, A, H string
		OK         bool
	}
	Error string
}

// sgVerifyPython asks dkimpy (Debian python3-dkim), an implementation independent of ours and
// of go-msgauth, with the public keys fed through its dnsfunc callback.
func sgVerifyPython(t *testing.T, msg string, recs map[string]string) sgPyResult {
	t.Helper()
	py, err := sgPython()
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("python3 with the dkim module (Debian python3-dkim) is needed: %v", err)
		}
		t.Skipf("python3-dkim not installed: %v", err)
	}
	f := filepath.Join(t.TempDir(), "msg.eml")
	if err := os.WriteFile(f, []byte(msg), 0o600); err != nil {
		t.Fatal(err)
	}
	args := []string{"testdata/dkimverify.py", f}
	for n, r := range recs {
		args = append(args, n+"="+r)
	}
	out, err := exec.Command(py, args...).Output()
	var res sgPyResult
	if jerr := json.Unmarshal(bytes.TrimSpace(out), &res); jerr != nil {
		t.Fatalf("dkimverify.py: %v %v: %s", err, jerr, out)
	}
	if res.Error != "" {
		t.Fatalf("dkimverify.py: %s", res.Error)
	}
	return res
}

const sgReceived = "Received: by mail.example.test (Postamt) with ESMTPSA id 0ABC;\r\n\tSun, 29 Nov 2026 10:00:00 +0000\r\n"

var sgMessages = map[string]string{
	"plain": "From: Alice <alice@example.test>\r\nTo: bob@remote.test\r\nSubject: hello\r\n\r\nHi Bob.\r\n",
	"folded": "From: \"Alice\r\n Example\" <alice@example.test>\r\nTo: bob@remote.test,\r\n\tcarol@remote.test\r\n" +
		"Subject: a subject folded\r\n  over   two lines\r\nX-Not-Signed: x\r\n\r\nBody\r\n",
	"8bit": "From: =?utf-8?q?J=C3=B6rg?= <alice@example.test>\r\nTo: bob@remote.test\r\nSubject: Grüße\r\n" +
		"MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n" +
		"Grüße aus Köln — ünïcödé\r\nLatin-1 byte: \xe9\r\n",
	"trailing-blank-lines": "From: alice@example.test\r\nTo: bob@remote.test\r\nSubject: blank\r\n\r\nText  with   spaces \t\r\n\r\n\r\n\r\n",
	"empty-body":           "From: alice@example.test\r\nTo: bob@remote.test\r\nSubject: nothing\r\n\r\n",
	"two-to":               "From: alice@example.test\r\nTo: bob@remote.test\r\nTo: carol@remote.test\r\nCc: dave@remote.test\r\nSubject: x\r\n\r\nx\r\n",
}

func TestDKIMSignVerifies(t *testing.T) {
	s, recs := sgSigner(t)
	added := []string{"Date: Sun, 29 Nov 2026 10:00:00 +0000", "Message-ID: <1.abc@mail.example.test>"}
	for name, m := range sgMessages {
		t.Run(name, func(t *testing.T) {
			out, v := sgSign(t, s, added, sgReceived+m)
			if len(v.Headers) != 2 || v.Result != "signed:example.test" {
				t.Fatalf("verdict %+v", v)
			}
			for _, h := range v.Headers {
				if !strings.HasPrefix(h, "DKIM-Signature: ") || !strings.Contains(h, "c=relaxed/relaxed") || strings.HasSuffix(h, "\n") {
					t.Errorf("signature field %q", h)
				}
			}
			vs := sgVerifyGo(t, out, recs)
			if len(vs) != 2 {
				t.Fatalf("%d signatures", len(vs))
			}
			for _, x := range vs {
				if x.Err != nil {
					t.Errorf("go-msgauth: %s: %v", x.Domain, x.Err)
				}
				for _, want := range []string{"from", "subject", "to", "date", "message-id"} {
					n := strings.Count(","+strings.Join(x.HeaderKeys, ",")+",", ","+want+",")
					if n == 0 {
						t.Errorf("h= lacks %s: %v", want, x.HeaderKeys)
					}
				}
			}
			py := sgVerifyPython(t, out, recs)
			algos := map[string]bool{}
			for _, sig := range py.Signatures {
				if !sig.OK {
					t.Errorf("dkimpy: signature %s/%s (%s) does not verify", sig.D, sig.S, sig.A)
				}
				algos[sig.A] = true
			}
			if len(py.Signatures) != 2 || !algos["rsa-sha256"] || !algos["ed25519-sha256"] {
				t.Errorf("dkimpy saw %+v", py.Signatures)
			}
		})
	}
}

// Oversigning: a From:, Subject: or To: added above the signed one breaks the signature;
// changing an unsigned field does not.
func TestDKIMSignOversigning(t *testing.T) {
	s, recs := sgSigner(t)
	out, _ := sgSign(t, s, nil, sgReceived+sgMessages["plain"])
	if vs := sgVerifyGo(t, out, recs); vs[0].Err != nil {
		t.Fatal(vs[0].Err)
	}
	for _, extra := range []string{"From: ceo@example.test\r\n", "Subject: wire money\r\n", "To: victim@remote.test\r\n"} {
		i := strings.Index(out, sgReceived)
		forged := out[:i] + extra + out[i:]
		for _, v := range sgVerifyGo(t, forged, recs) {
			if v.Err == nil {
				t.Errorf("signature survives an added %q", strings.TrimSpace(extra))
			}
		}
		py := sgVerifyPython(t, forged, recs)
		for _, sig := range py.Signatures {
			if sig.OK {
				t.Errorf("dkimpy accepts a message with an added %q (%s)", strings.TrimSpace(extra), sig.A)
			}
		}
	}
	tampered := strings.Replace(out, "Hi Bob.", "Hi Bob!", 1)
	for _, v := range sgVerifyGo(t, tampered, recs) {
		if v.Err == nil {
			t.Error("signature survives a changed body")
		}
	}
	unsigned := strings.Replace(out, sgReceived, sgReceived+"X-Spam-Score: 0\r\n", 1)
	for _, v := range sgVerifyGo(t, unsigned, recs) {
		if v.Err != nil {
			t.Errorf("an added unsigned field breaks the signature: %v", v.Err)
		}
	}
}

func TestDKIMSignDomain(t *testing.T) {
	s, _ := sgSigner(t)
	tests := []struct{ from, want string }{
		{"alice@example.test", "signed:example.test"},
		{"alice@Example.TEST", "signed:example.test"},
		{"news@lists.example.test", "signed:example.test"}, // parent domain: DMARC relaxed alignment
		{"alice@other.test", "none"},
		{"alice@test", "none"},
	}
	for _, tt := range tests {
		_, v := sgSign(t, s, nil, "From: "+tt.from+"\r\nSubject: x\r\n\r\nx\r\n")
		if v.Result != tt.want {
			t.Errorf("From %s: %q, want %q", tt.from, v.Result, tt.want)
		}
	}
	_, v := sgSign(t, s, nil, "From: a@example.test\r\nFrom: b@example.test\r\n\r\nx\r\n")
	if len(v.Headers) != 0 {
		t.Errorf("signed a message with two From: fields")
	}
}

func TestDKIMKeyFiles(t *testing.T) {
	dir := t.TempDir()
	for _, algo := range []string{"rsa", "ed25519"} {
		k, err := GenerateDKIMKey(algo)
		if err != nil {
			t.Fatal(err)
		}
		p := DKIMKeyPath(dir, "Example.test", "s-"+algo)
		if err := WriteDKIMKey(p, k); err != nil {
			t.Fatal(err)
		}
		if fi, _ := os.Stat(p); fi.Mode().Perm() != 0o600 {
			t.Errorf("%s: mode %v", p, fi.Mode().Perm())
		}
		if err := WriteDKIMKey(p, k); err == nil {
			t.Errorf("existing key overwritten")
		}
		back, err := LoadDKIMKey(p)
		if err != nil {
			t.Fatal(err)
		}
		a, _ := DKIMPublicValue(k.Public())
		b, _ := DKIMPublicValue(back.Public())
		if a != b {
			t.Errorf("%s: loaded key differs", algo)
		}
		rec, _ := DKIMRecord(k)
		if !strings.HasPrefix(rec, "v=DKIM1; k="+algo+"; p=") {
			t.Errorf("record %q", rec)
		}
		line := DKIMZoneLine("example.test", "s-"+algo, rec)
		if !strings.HasPrefix(line, "s-"+algo+"._domainkey.example.test. IN TXT ( \"v=DKIM1; k="+algo) {
			t.Errorf("zone line %q", line)
		}
		// Every quoted string is at most 255 bytes, and together they are the record.
		parts := strings.Split(strings.TrimSuffix(line[strings.Index(line, "( \"")+3:], "\" )"), "\" \"")
		for _, p := range parts {
			if len(p) > 255 {
				t.Errorf("string of %d bytes", len(p))
			}
		}
		if strings.Join(parts, "") != rec {
			t.Errorf("zone line does not reassemble the record")
		}
	}
	if _, ok := sgEdOrNil(t).(ed25519.PrivateKey); !ok {
		t.Errorf("ed25519 key type")
	}
}

func sgEdOrNil(t *testing.T) crypto.Signer { _, e := sgTestKeys(t); return e }

func TestCheckDKIMRecord(t *testing.T) {
	rk, ek := sgTestKeys(t)
	good, _ := DKIMRecord(ek)
	other, _ := GenerateDKIMKey("ed25519")
	otherRec, _ := DKIMRecord(other)
	rsaRec, _ := DKIMRecord(rk)
	z := &dnstest.Zone{TXT: map[string][]string{
		"good._domainkey.example.test":    {"some other text", good},
		"old._domainkey.example.test":     {otherRec},
		"revoked._domainkey.example.test": {"v=DKIM1; k=ed25519; p="},
		"rsa._domainkey.example.test":     {rsaRec},
	}, Fail: map[string]bool{"broken._domainkey.example.test": true}}
	tests := []struct {
		sel     string
		key     crypto.Signer
		ok      bool
		problem string
	}{
		{"good", ek, true, ""},
		{"rsa", rk, true, ""},
		{"rsa", ek, false, "k=rsa but the key is ed25519"},
		{"old", ek, false, "does not match"},
		{"revoked", ek, false, "revoked"},
		{"missing", ek, false, "no TXT record"},
		{"broken", ek, false, "lookup failed"},
	}
	for _, tt := range tests {
		st := CheckDKIMRecord(context.Background(), z, "example.test", tt.sel, tt.key)
		if st.OK != tt.ok || !strings.Contains(st.Problem, tt.problem) {
			t.Errorf("%s: %+v", tt.sel, st)
		}
	}
}

func FuzzParseDKIMTags(f *testing.F) {
	f.Add("v=DKIM1; k=ed25519; p=abc")
	f.Add(";;=;a")
	f.Fuzz(func(t *testing.T, s string) {
		tags, err := parseDKIMTags(s)
		if err != nil {
			return
		}
		for k, v := range tags {
			if strings.ContainsRune(k, ';') || strings.ContainsRune(v, ';') {
				t.Fatalf("tag %q=%q holds a separator", k, v)
			}
		}
	})
}

// sgPython finds a python3 that has the dkim module: Debian's /usr/bin/python3 first, since a
// python3 earlier in PATH (pyenv, a virtualenv) does not see Debian's packages.
func sgPython() (string, error) {
	cands := []string{"/usr/bin/python3"}
	if p, err := exec.LookPath("python3"); err == nil {
		cands = append(cands, p)
	}
	var last error = errors.New("no python3")
	for _, c := range cands {
		if last = exec.Command(c, "-c", "import dkim").Run(); last == nil {
			return c, nil
		}
	}
	return "", last
}
