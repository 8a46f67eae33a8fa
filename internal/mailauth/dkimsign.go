package mailauth

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net/mail"
	"strings"

	"github.com/emersion/go-msgauth/dkim"

	"github.com/postamt/postamt/internal/policy"
	"github.com/postamt/postamt/internal/smtp"
)

// signedHeaders are the fields signed when present: RFC 6376 §5.4.1's recommendation plus the
// MIME fields and Message-ID and Sender, whose change alters what a reader sees.
var signedHeaders = []string{
	"From", "Sender", "Reply-To", "Subject", "Date", "To", "Cc", "Message-ID",
	"In-Reply-To", "References", "MIME-Version", "Content-Type", "Content-Transfer-Encoding",
	"Resent-Date", "Resent-From", "Resent-To", "Resent-Cc",
	"List-Id", "List-Help", "List-Unsubscribe", "List-Unsubscribe-Post", "List-Subscribe", "List-Post", "List-Owner", "List-Archive",
}

// overSigned fields are listed once more than they occur (RFC 6376 §8.15), so that a field of
// that name added later — a second From: or Subject: shown instead of the signed one — breaks
// the signature.
var overSigned = map[string]bool{"from": true, "subject": true, "to": true}

// DKIMSigner signs submitted mail (RFC 6376; Ed25519 per RFC 8463) with relaxed/relaxed
// canonicalisation and SHA-256. It is a DATA check for the submission chain and must run last:
// it signs the message as it will leave, i.e. the header fields earlier checks added
// (Txn.AddedHeaders) followed by the received message, and signs nothing a later check adds.
// The domain is the From: address's (so that DMARC aligns), or the nearest parent domain that
// has keys; mail from a domain without keys leaves unsigned.
type DKIMSigner struct {
	// Keys lists the keys per signing domain (lower case); each key makes one signature, so an
	// RSA and an Ed25519 key for a domain give the dual signature RFC 8463 §1 recommends.
	Keys map[string][]*DKIMKey
}

func (*DKIMSigner) Name() string { return "dkim-sign" }

// maxSignHeader bounds the header section held in memory.
const maxSignHeader = 1 << 20

func (s *DKIMSigner) CheckData(ctx context.Context, t *policy.Txn, m policy.Message) policy.Verdict {
	rc, err := m.Open()
	if err != nil {
		return policy.Verdict{Err: err}
	}
	defer rc.Close()
	var added strings.Builder
	for _, h := range t.AddedHeaders() {
		added.WriteString(h + "\r\n")
	}
	br := bufio.NewReader(io.MultiReader(strings.NewReader(added.String()), rc))
	header, err := readSignHeader(br)
	if err != nil {
		return policy.Verdict{Err: err}
	}
	domain, keys := s.keysFor(header)
	if len(keys) == 0 {
		return policy.Verdict{Result: "none"}
	}
	names := signHeaderNames(header)
	signers := make([]*dkim.Signer, 0, len(keys))
	ws := make([]io.Writer, 0, len(keys))
	for _, k := range keys {
		sg, err := dkim.NewSigner(&dkim.SignOptions{
			Domain: domain, Selector: k.Selector, Signer: k.Signer,
			HeaderCanonicalization: dkim.CanonicalizationRelaxed, BodyCanonicalization: dkim.CanonicalizationRelaxed,
			HeaderKeys: names,
		})
		if err != nil {
			for _, x := range signers {
				x.Close()
			}
			return policy.Verdict{Err: fmt.Errorf("dkim %s/%s: %w", domain, k.Selector, err)}
		}
		signers = append(signers, sg)
		ws = append(ws, sg)
	}
	w := io.MultiWriter(ws...)
	_, err = io.WriteString(w, header)
	if err == nil {
		_, err = io.Copy(w, br)
	}
	var sigs []string
	for i, sg := range signers {
		if cerr := sg.Close(); cerr != nil && err == nil {
			err = fmt.Errorf("dkim %s/%s: %w", domain, keys[i].Selector, cerr)
		}
		if err == nil {
			sigs = append(sigs, strings.TrimRight(sg.Signature(), "\r\n"))
		}
	}
	if err != nil {
		return policy.Verdict{Err: err}
	}
	return policy.Verdict{Headers: sigs, Result: "signed:" + domain}
}

// keysFor picks the signing domain from the From: address.
func (s *DKIMSigner) keysFor(header string) (string, []*DKIMKey) {
	from := signFieldValues(header, "From")
	if len(from) != 1 {
		return "", nil
	}
	list, err := mail.ParseAddressList(from[0])
	if err != nil || len(list) == 0 {
		return "", nil
	}
	a, err := smtp.ParseAddress(list[0].Address, true)
	if err != nil {
		return "", nil
	}
	for d := a.ASCIIDomain(); strings.Contains(d, "."); {
		if ks := s.Keys[d]; len(ks) > 0 {
			return d, ks
		}
		_, d, _ = strings.Cut(d, ".")
	}
	return "", nil
}

// readSignHeader returns the header section including the empty line that ends it (or all of
// a message that has no body).
func readSignHeader(br *bufio.Reader) (string, error) {
	var b strings.Builder
	for {
		line, err := br.ReadString('\n')
		b.WriteString(line)
		if b.Len() > maxSignHeader {
			return "", errors.New("header section larger than 1 MiB")
		}
		if line == "\r\n" || line == "\n" || err == io.EOF {
			return b.String(), nil
		}
		if err != nil {
			return "", err
		}
	}
}

// signFieldNames returns the field names in header, top to bottom.
func signFieldNames(header string) []string {
	var names []string
	for _, line := range strings.SplitAfter(header, "\n") {
		if line == "" || line[0] == ' ' || line[0] == '\t' {
			continue
		}
		if n, _, ok := strings.Cut(line, ":"); ok {
			names = append(names, strings.TrimSpace(n))
		}
	}
	return names
}

func signFieldValues(header, name string) []string {
	var out []string
	lines := strings.SplitAfter(header, "\n")
	for i := 0; i < len(lines); i++ {
		n, v, ok := strings.Cut(lines[i], ":")
		if !ok || lines[i][0] == ' ' || lines[i][0] == '\t' || !strings.EqualFold(strings.TrimSpace(n), name) {
			continue
		}
		for i+1 < len(lines) && lines[i+1] != "" && (lines[i+1][0] == ' ' || lines[i+1][0] == '\t') {
			i++
			v += lines[i]
		}
		out = append(out, strings.TrimSpace(strings.NewReplacer("\r\n", "", "\n", "").Replace(v)))
	}
	return out
}

// signHeaderNames is the h= list: each recommended field as often as it occurs, the
// over-signed ones once more.
func signHeaderNames(header string) []string {
	count := map[string]int{}
	for _, n := range signFieldNames(header) {
		count[strings.ToLower(n)]++
	}
	var names []string
	for _, h := range signedHeaders {
		n := count[strings.ToLower(h)]
		if overSigned[strings.ToLower(h)] {
			n++
		}
		for range n {
			names = append(names, strings.ToLower(h))
		}
	}
	return names
}
