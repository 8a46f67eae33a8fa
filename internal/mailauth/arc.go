package mailauth

import (
	"bufio"
	"bytes"
	"context"
	"crypto"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"errors"
	"fmt"
	"hash"
	"io"
	"strconv"
	"strings"
	"time"

	"github.com/postamt/postamt/internal/dns"
	"github.com/postamt/postamt/internal/policy"
)

// The ARC header fields of RFC 8617 §4.1.
const (
	aarName  = "ARC-Authentication-Results"
	amsName  = "ARC-Message-Signature"
	sealName = "ARC-Seal"
)

// maxARCSets is RFC 8617 §4.2.1's limit: a chain with more sets fails.
const maxARCSets = 50

// maxBodyHashes bounds how often one message's body is hashed (each distinct c= and l= of
// the chain's signatures needs its own pass).
const maxBodyHashes = 4

// ARCResult is the validation of a message's Authenticated Received Chain (RFC 8617 §5.2).
type ARCResult struct {
	Result string // none, pass, fail, temperror
	Reason string // for fail and temperror, in plain words
	// Instances is the number of ARC sets (N).
	Instances int
	// OldestPass is the lowest instance from which every newer ARC-Message-Signature still
	// verifies (RFC 8617 §5.2 step 5); 0 when all of them do. Set only for pass.
	OldestPass int
	// Sealers are the d= of the ARC-Seals, instance 1 first, for the log.
	Sealers []string
	Err     error // the lookup failure of a temperror
}

// LastSealer is the d= of the newest ARC-Seal: the intermediary that handed us the message.
func (r ARCResult) LastSealer() string {
	if len(r.Sealers) == 0 {
		return ""
	}
	return r.Sealers[len(r.Sealers)-1]
}

// rawField is one header field as received, for canonicalization.
type rawField struct {
	name string
	raw  string // "Name:value" with its folding (CRLF line ends), without the final CRLF
}

// value is the field's value unfolded, as tag lists are parsed from it.
func (f rawField) value() string {
	v := f.raw[len(f.name)+1:]
	return strings.NewReplacer("\r\n", "", "\n", "").Replace(v)
}

// relaxed is RFC 6376 §3.4.2's relaxed header canonicalization, without the final CRLF.
func (f rawField) relaxed() string { return relaxedHeader(f.name, f.raw[len(f.name)+1:]) }

func relaxedHeader(name, value string) string {
	var b strings.Builder
	b.Grow(len(name) + len(value) + 1)
	b.WriteString(strings.ToLower(strings.TrimRight(name, " \t")))
	b.WriteByte(':')
	space, started := false, false
	for i := 0; i < len(value); i++ {
		switch c := value[i]; c {
		case '\r', '\n':
			// Unfolding removes the line break only; the WSP after it stays (and collapses).
		case ' ', '\t':
			space = true
		default:
			if space && started {
				b.WriteByte(' ')
			}
			space, started = false, true
			b.WriteByte(c)
		}
	}
	return b.String()
}

// readRawHeader reads the header section up to the empty line, within ReadHeader's bounds, and
// leaves br at the first byte of the body. A line that is not a field ends the header and is
// returned as the beginning of the body, as ReadHeader treats it.
func readRawHeader(br *bufio.Reader) (fields []rawField, bodyStart []byte, err error) {
	var cur strings.Builder
	total := 0
	flush := func() {
		if cur.Len() > 0 {
			s := cur.String()
			fields = append(fields, rawField{name: s[:strings.IndexByte(s, ':')], raw: s})
			cur.Reset()
		}
	}
	for len(fields) <= maxHeaderFields && total <= maxHeaderBytes {
		line, err := br.ReadSlice('\n')
		if err == bufio.ErrBufferFull {
			flush()
			return fields, append([]byte(nil), line...), nil
		}
		total += len(line)
		body := bytes.TrimRight(line, "\r\n")
		switch {
		case len(body) == 0 && len(line) > 0 && line[len(line)-1] == '\n':
			flush()
			return fields, nil, nil
		case len(body) == 0:
			// The end of input (possibly after a lone CR): no body.
		case body[0] == ' ' || body[0] == '\t':
			if cur.Len() == 0 {
				return fields, append([]byte(nil), line...), nil
			}
			cur.WriteString("\r\n")
			cur.Write(body)
		default:
			colon := bytes.IndexByte(body, ':')
			if colon <= 0 || !isFieldName(body[:colon]) {
				flush()
				return fields, append([]byte(nil), line...), nil
			}
			flush()
			cur.Write(body)
		}
		if err == io.EOF {
			break
		}
		if err != nil {
			return nil, nil, err
		}
	}
	flush()
	return fields, nil, nil
}

// parseTags reads an RFC 6376 §3.2 tag-value list. Duplicate tags make the list invalid.
func parseTags(v string) (map[string]string, error) {
	tags := map[string]string{}
	parts := strings.Split(v, ";")
	for i, p := range parts {
		p = strings.Trim(p, " \t\r\n")
		if p == "" {
			if i == len(parts)-1 {
				break // a trailing ';' is allowed
			}
			return nil, errors.New("empty tag")
		}
		eq := strings.IndexByte(p, '=')
		if eq < 0 {
			return nil, fmt.Errorf("tag %q has no value", p)
		}
		name := strings.TrimRight(p[:eq], " \t\r\n")
		if !isTagName(name) {
			return nil, fmt.Errorf("invalid tag name %q", name)
		}
		if _, dup := tags[name]; dup {
			return nil, fmt.Errorf("duplicate tag %s=", name)
		}
		tags[name] = strings.TrimLeft(p[eq+1:], " \t\r\n")
	}
	return tags, nil
}

func isTagName(s string) bool {
	if s == "" || !isAlpha(s[0]) {
		return false
	}
	for i := 1; i < len(s); i++ {
		if c := s[i]; !isAlpha(c) && !(c >= '0' && c <= '9') && c != '_' {
			return false
		}
	}
	return true
}

func isAlpha(c byte) bool { return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' }

// stripWS removes the folding whitespace that base64 tag values (b=, bh=, p=) may contain.
func stripWS(s string) string {
	return strings.Map(func(r rune) rune {
		if r == ' ' || r == '\t' || r == '\r' || r == '\n' {
			return -1
		}
		return r
	}, s)
}

// blankB empties the value of the b= tag, as the signature's own field is hashed (RFC 6376
// §3.7: "with the value of the b= tag ... deleted").
func blankB(s string) string {
	parts := strings.Split(s, ";")
	for i, p := range parts {
		eq := strings.IndexByte(p, '=')
		if eq >= 0 && strings.Trim(p[:eq], " \t\r\n") == "b" {
			parts[i] = p[:eq+1]
		}
	}
	return strings.Join(parts, ";")
}

// instance parses an i= value: 1 to 50 in decimal.
func instance(s string) (int, error) {
	s = strings.Trim(s, " \t\r\n")
	if s == "" || len(s) > 3 || strings.TrimLeft(s, "0123456789") != "" {
		return 0, fmt.Errorf("invalid i=%q", s)
	}
	n, _ := strconv.Atoi(s)
	if n < 1 {
		return 0, fmt.Errorf("invalid i=%q", s)
	}
	return n, nil
}

// aarInstance reads the i= that starts an ARC-Authentication-Results value (RFC 8617 §4.1.1:
// "i=" instance ";" then the Authentication-Results payload).
func aarInstance(v string) (int, error) {
	semi := strings.IndexByte(v, ';')
	if semi < 0 {
		return 0, errors.New("no i= tag")
	}
	head := strings.Trim(v[:semi], " \t\r\n")
	eq := strings.IndexByte(head, '=')
	if eq < 0 || strings.TrimRight(head[:eq], " \t") != "i" {
		return 0, errors.New("does not start with i=")
	}
	return instance(head[eq+1:])
}

// arcSet is one instance's three fields.
type arcSet struct {
	aar, ams, seal *rawField
	amsTags        map[string]string
	sealTags       map[string]string
}

// ParseARCSets collects and checks the form of the ARC sets in a header (RFC 8617 §4.2 and
// §5.2 steps 1 to 3): instances 1..N without gaps, N at most 50, exactly one field of each
// kind per instance, valid tag lists, cv=none only at i=1, cv=pass on every later seal. It
// returns the number of sets, 0 and no error for a message without ARC fields. VerifyARC is
// what the check calls; this is the parser alone, for the fuzz target and for tools.
func ParseARCSets(fields []Field) (int, error) {
	raw := make([]rawField, len(fields))
	for i, f := range fields {
		raw[i] = rawField{name: f.Name, raw: f.Name + ":" + f.Value}
	}
	sets, err := parseARCSets(raw)
	return len(sets), err
}

func parseARCSets(fields []rawField) ([]arcSet, error) {
	var sets []arcSet // sets[i-1] is instance i
	get := func(i int) *arcSet {
		for len(sets) < i {
			sets = append(sets, arcSet{})
		}
		return &sets[i-1]
	}
	for k := range fields {
		f := &fields[k]
		var kind string
		switch {
		case strings.EqualFold(f.name, aarName):
			kind = aarName
		case strings.EqualFold(f.name, amsName):
			kind = amsName
		case strings.EqualFold(f.name, sealName):
			kind = sealName
		default:
			continue
		}
		var i int
		var tags map[string]string
		var err error
		if kind == aarName {
			i, err = aarInstance(f.value())
		} else {
			tags, err = parseTags(f.value())
			if err == nil {
				i, err = instance(tags["i"])
			}
		}
		if err != nil {
			return nil, fmt.Errorf("%s: %v", kind, err)
		}
		if i > maxARCSets {
			return nil, fmt.Errorf("%s with i=%d: more than %d ARC sets", kind, i, maxARCSets)
		}
		s := get(i)
		var slot **rawField
		switch kind {
		case aarName:
			slot = &s.aar
		case amsName:
			slot, s.amsTags = &s.ams, tags
		case sealName:
			slot, s.sealTags = &s.seal, tags
		}
		if *slot != nil {
			return nil, fmt.Errorf("two %s fields with i=%d", kind, i)
		}
		*slot = f
	}
	if len(sets) == 0 {
		return nil, nil
	}
	for n := range sets {
		s, i := &sets[n], n+1
		switch {
		case s.aar == nil && s.ams == nil && s.seal == nil:
			return nil, fmt.Errorf("ARC set i=%d is missing (the chain has %d)", i, len(sets))
		case s.aar == nil:
			return nil, fmt.Errorf("ARC set i=%d has no %s", i, aarName)
		case s.ams == nil:
			return nil, fmt.Errorf("ARC set i=%d has no %s", i, amsName)
		case s.seal == nil:
			return nil, fmt.Errorf("ARC set i=%d has no %s", i, sealName)
		}
	}
	// §5.2 step 2: a chain its newest sealer declared failed is over.
	if cv := strings.ToLower(sets[len(sets)-1].sealTags["cv"]); cv == "fail" {
		return sets, fmt.Errorf("the newest ARC-Seal (i=%d) says cv=fail", len(sets))
	}
	for n := range sets {
		s, i := &sets[n], n+1
		for _, t := range []string{"a", "b", "d", "s", "cv"} {
			if s.sealTags[t] == "" {
				return nil, fmt.Errorf("ARC-Seal i=%d has no %s= tag", i, t)
			}
		}
		if _, ok := s.sealTags["h"]; ok {
			return nil, fmt.Errorf("ARC-Seal i=%d has an h= tag", i) // §4.1.3: not allowed
		}
		for _, t := range []string{"a", "b", "bh", "d", "s", "h"} {
			if s.amsTags[t] == "" {
				return nil, fmt.Errorf("ARC-Message-Signature i=%d has no %s= tag", i, t)
			}
		}
		switch cv := strings.ToLower(s.sealTags["cv"]); {
		case cv == "fail":
			return nil, fmt.Errorf("ARC-Seal i=%d says cv=fail", i)
		case i == 1 && cv != "none":
			return nil, fmt.Errorf("ARC-Seal i=1 says cv=%s, want none", cv)
		case i > 1 && cv != "pass":
			return nil, fmt.Errorf("ARC-Seal i=%d says cv=%s, want pass", i, cv)
		}
	}
	return sets, nil
}

// errTemp marks a key lookup that failed temporarily.
type errTemp struct{ err error }

func (e errTemp) Error() string { return e.err.Error() }
func (e errTemp) Unwrap() error { return e.err }

// keyCache keeps the keys one validation looked up: the sets of a chain often share them.
type keyCache struct {
	ctx  context.Context
	r    dns.Resolver
	keys map[string]crypto.PublicKey
	errs map[string]error
}

func (kc *keyCache) get(selector, domain string) (crypto.PublicKey, error) {
	if !isDNSLabelSeq(selector) || !isDNSLabelSeq(domain) {
		return nil, fmt.Errorf("invalid s=%q or d=%q", selector, domain)
	}
	name := strings.ToLower(selector + "._domainkey." + domain)
	if k, ok := kc.keys[name]; ok {
		return k, nil
	}
	if err, ok := kc.errs[name]; ok {
		return nil, err
	}
	k, err := lookupKey(kc.ctx, kc.r, name)
	if err != nil {
		kc.errs[name] = err
		return nil, err
	}
	kc.keys[name] = k
	return k, nil
}

// isDNSLabelSeq accepts what may go into a key query name: letters, digits, '-', '_' and
// dots between non-empty labels, at most 253 octets.
func isDNSLabelSeq(s string) bool {
	if s == "" || len(s) > 253 {
		return false
	}
	for _, l := range strings.Split(s, ".") {
		if l == "" || len(l) > 63 {
			return false
		}
		for i := 0; i < len(l); i++ {
			if c := l[i]; !isAlpha(c) && !(c >= '0' && c <= '9') && c != '-' && c != '_' {
				return false
			}
		}
	}
	return true
}

// lookupKey fetches and parses a DKIM key record (RFC 6376 §3.6.1), which ARC uses as is.
func lookupKey(ctx context.Context, r dns.Resolver, name string) (crypto.PublicKey, error) {
	txts, err := r.LookupTXT(ctx, name)
	switch {
	case dns.IsNotFound(err):
		return nil, fmt.Errorf("no key at %s", name)
	case err != nil:
		return nil, errTemp{fmt.Errorf("key lookup at %s: %w", name, err)}
	case len(txts) == 0:
		return nil, fmt.Errorf("no key at %s", name)
	}
	tags, err := parseTags(txts[0])
	if err != nil {
		return nil, fmt.Errorf("key record at %s: %v", name, err)
	}
	if v, ok := tags["v"]; ok && v != "DKIM1" {
		return nil, fmt.Errorf("key record at %s has v=%s", name, v)
	}
	if h, ok := tags["h"]; ok && !listHas(h, "sha256") {
		return nil, fmt.Errorf("key at %s is not for sha256", name)
	}
	if s, ok := tags["s"]; ok && !listHas(s, "*") && !listHas(s, "email") {
		return nil, fmt.Errorf("key at %s is not for email", name)
	}
	p := stripWS(tags["p"])
	if p == "" {
		return nil, fmt.Errorf("key at %s is revoked", name)
	}
	der, err := base64.StdEncoding.DecodeString(p)
	if err != nil {
		return nil, fmt.Errorf("key at %s: p= is not base64", name)
	}
	switch k := strings.ToLower(strings.TrimSpace(tags["k"])); k {
	case "", "rsa":
		var pub *rsa.PublicKey
		if k, err := x509.ParsePKIXPublicKey(der); err == nil {
			pub, _ = k.(*rsa.PublicKey)
		} else if pk, err := x509.ParsePKCS1PublicKey(der); err == nil {
			pub = pk
		}
		if pub == nil {
			return nil, fmt.Errorf("key at %s is not an RSA public key", name)
		}
		if pub.N.BitLen() < 1024 { // RFC 8301 §3.2
			return nil, fmt.Errorf("RSA key at %s has only %d bits", name, pub.N.BitLen())
		}
		return pub, nil
	case "ed25519":
		if len(der) != ed25519.PublicKeySize {
			return nil, fmt.Errorf("ed25519 key at %s has %d bytes", name, len(der))
		}
		return ed25519.PublicKey(der), nil
	default:
		return nil, fmt.Errorf("key at %s has unknown type k=%s", name, k)
	}
}

func listHas(list, want string) bool {
	for _, x := range strings.Split(list, ":") {
		if strings.EqualFold(strings.TrimSpace(x), want) {
			return true
		}
	}
	return false
}

// verifySig checks the signature b= of sig over data with the key of s= and d=, for a= of
// rsa-sha256 or ed25519-sha256 (RFC 8463, which signs the SHA-256 digest).
func verifySig(kc *keyCache, tags map[string]string, data []byte) error {
	algo := strings.ToLower(strings.TrimSpace(tags["a"]))
	if algo != "rsa-sha256" && algo != "ed25519-sha256" {
		return fmt.Errorf("unsupported algorithm a=%s", algo)
	}
	sig, err := base64.StdEncoding.DecodeString(stripWS(tags["b"]))
	if err != nil {
		return errors.New("b= is not base64")
	}
	key, err := kc.get(strings.TrimSpace(tags["s"]), strings.TrimSpace(tags["d"]))
	if err != nil {
		return err
	}
	sum := sha256.Sum256(data)
	switch k := key.(type) {
	case *rsa.PublicKey:
		if algo != "rsa-sha256" {
			return fmt.Errorf("a=%s with an RSA key", algo)
		}
		if rsa.VerifyPKCS1v15(k, crypto.SHA256, sum[:], sig) != nil {
			return errors.New("signature does not verify")
		}
	case ed25519.PublicKey:
		if algo != "ed25519-sha256" {
			return fmt.Errorf("a=%s with an Ed25519 key", algo)
		}
		if !ed25519.Verify(k, sum[:], sig) {
			return errors.New("signature does not verify")
		}
	}
	return nil
}

// canon is a c= value split into its header and body parts (RFC 6376 §3.5, default simple).
func canon(c string) (headerRelaxed, bodyRelaxed bool, err error) {
	c = strings.ToLower(strings.TrimSpace(c))
	h, b, _ := strings.Cut(c, "/")
	switch h {
	case "", "simple":
	case "relaxed":
		headerRelaxed = true
	default:
		return false, false, fmt.Errorf("unknown canonicalization c=%s", c)
	}
	switch b {
	case "", "simple":
	case "relaxed":
		bodyRelaxed = true
	default:
		return false, false, fmt.Errorf("unknown canonicalization c=%s", c)
	}
	return headerRelaxed, bodyRelaxed, nil
}

// signedHeaderData is what a DKIM-style signature (an AMS) signs: the fields its h= names,
// each taken from the bottom up (RFC 6376 §5.4.2), then the signature field itself with b=
// emptied and without its final CRLF.
func signedHeaderData(fields []rawField, h string, sig *rawField, relaxed bool) []byte {
	used := make(map[int]bool)
	var b bytes.Buffer
	write := func(f rawField, last bool) {
		if relaxed {
			b.WriteString(f.relaxed())
		} else {
			b.WriteString(f.raw)
		}
		if !last {
			b.WriteString("\r\n")
		}
	}
	for _, name := range strings.Split(h, ":") {
		name = strings.Trim(name, " \t\r\n")
		for k := len(fields) - 1; k >= 0; k-- {
			if !used[k] && strings.EqualFold(fields[k].name, name) && &fields[k] != sig {
				used[k] = true
				write(fields[k], false)
				break
			}
		}
	}
	write(rawField{name: sig.name, raw: blankB(sig.raw)}, true)
	return b.Bytes()
}

// bodyKey identifies one body hash: canonicalization and l= (-1: whole body).
type bodyKey struct {
	relaxed bool
	limit   int64
}

// bodyHasher canonicalizes a body (RFC 6376 §3.4.3 simple, §3.4.4 relaxed) into a SHA-256,
// stopping at limit octets of canonical body when the signature has l=.
type bodyHasher struct {
	key     bodyKey
	h       hash.Hash
	partial []byte
	empties int   // empty lines held back: trailing ones do not count
	n       int64 // canonical octets produced
}

func newBodyHasher(k bodyKey) *bodyHasher { return &bodyHasher{key: k, h: sha256.New()} }

func (b *bodyHasher) emit(p []byte) {
	b.n += int64(len(p))
	if b.key.limit >= 0 {
		room := b.key.limit - (b.n - int64(len(p)))
		if room <= 0 {
			return
		}
		if int64(len(p)) > room {
			p = p[:room]
		}
	}
	b.h.Write(p)
}

var crlf = []byte("\r\n")

func (b *bodyHasher) line(l []byte) {
	if b.key.relaxed {
		out := make([]byte, 0, len(l))
		space := false
		for _, c := range l {
			if c == ' ' || c == '\t' {
				space = true
				continue
			}
			if space {
				out = append(out, ' ')
				space = false
			}
			out = append(out, c)
		}
		l = out
	}
	if len(l) == 0 {
		b.empties++
		return
	}
	for ; b.empties > 0; b.empties-- {
		b.emit(crlf)
	}
	b.emit(l)
	b.emit(crlf)
}

func (b *bodyHasher) Write(p []byte) (int, error) {
	n := len(p)
	for len(p) > 0 {
		nl := bytes.IndexByte(p, '\n')
		if nl < 0 {
			b.partial = append(b.partial, p...)
			break
		}
		l := p[:nl]
		if len(b.partial) > 0 {
			b.partial = append(b.partial, l...)
			l = b.partial
		}
		b.line(bytes.TrimSuffix(l, []byte("\r")))
		b.partial = b.partial[:0]
		p = p[nl+1:]
	}
	return n, nil
}

// sum finishes the body: an unterminated last line gets its CRLF, and an empty simple body
// is one CRLF. ok is false when l= asks for more than the body has.
func (b *bodyHasher) sum() (sum []byte, ok bool) {
	if len(b.partial) > 0 {
		b.line(b.partial)
		b.partial = nil
	}
	if b.n == 0 && !b.key.relaxed {
		b.emit(crlf)
	}
	return b.h.Sum(nil), b.key.limit < 0 || b.n >= b.key.limit
}

// VerifyARC validates the ARC chain of a message (RFC 8617 §5.2): the form of the sets, the
// newest ARC-Message-Signature, every ARC-Seal, and the older signatures for oldest-pass. Key
// lookups go through r; a lookup that fails temporarily gives temperror.
func VerifyARC(ctx context.Context, r dns.Resolver, msg io.Reader) ARCResult {
	br := bufio.NewReaderSize(msg, 16<<10)
	fields, bodyStart, err := readRawHeader(br)
	if err != nil {
		return ARCResult{Result: "temperror", Reason: "reading the message: " + err.Error(), Err: err}
	}
	sets, err := parseARCSets(fields)
	res := ARCResult{Instances: len(sets)}
	for _, s := range sets {
		if s.seal != nil {
			res.Sealers = append(res.Sealers, strings.ToLower(strings.TrimSpace(s.sealTags["d"])))
		}
	}
	if err != nil {
		res.Result, res.Reason = "fail", err.Error()
		return res
	}
	if len(sets) == 0 {
		res.Result = "none"
		return res
	}
	// One pass over the body computes the body hashes the signatures need, newest first; a
	// chain that asks for more distinct ones than maxBodyHashes (c= and l= combinations) gets
	// its older signatures counted as not verifying rather than the body hashed once for each.
	hashers := map[bodyKey]*bodyHasher{}
	keys := make([]bodyKey, len(sets))
	badL := make([]bool, len(sets))
	for n := len(sets) - 1; n >= 0; n-- {
		s := sets[n]
		_, rb, err := canon(s.amsTags["c"])
		if err != nil {
			rb = true // reported when that signature is checked
		}
		k := bodyKey{relaxed: rb, limit: -1}
		if l, ok := s.amsTags["l"]; ok {
			v, err := strconv.ParseInt(strings.TrimSpace(l), 10, 64)
			if err != nil || v < 0 {
				badL[n] = true
				continue
			}
			k.limit = v
		}
		keys[n] = k
		if hashers[k] == nil && len(hashers) < maxBodyHashes {
			hashers[k] = newBodyHasher(k)
		}
	}
	ws := make([]io.Writer, 0, len(hashers))
	for _, h := range hashers {
		ws = append(ws, h)
	}
	w := io.MultiWriter(ws...)
	w.Write(bodyStart)
	if _, err := io.Copy(w, br); err != nil {
		return ARCResult{Result: "temperror", Reason: "reading the message: " + err.Error(), Err: err}
	}
	sums := map[bodyKey][]byte{}
	short := map[bodyKey]bool{}
	for k, h := range hashers {
		s, ok := h.sum()
		sums[k], short[k] = s, !ok
	}
	kc := &keyCache{ctx: ctx, r: r, keys: map[string]crypto.PublicKey{}, errs: map[string]error{}}
	checkAMS := func(n int) error {
		s := sets[n]
		rh, _, err := canon(s.amsTags["c"])
		if err != nil {
			return err
		}
		for _, name := range strings.Split(s.amsTags["h"], ":") {
			if strings.EqualFold(strings.TrimSpace(name), sealName) {
				return errors.New("it signs ARC-Seal fields") // §4.1.2: MUST NOT
			}
		}
		sum, hashed := sums[keys[n]]
		switch {
		case badL[n]:
			return errors.New("invalid l=")
		case !hashed:
			return errors.New("not checked: too many different body canonicalizations in the chain")
		case short[keys[n]]:
			return errors.New("l= is longer than the body")
		}
		bh, err := base64.StdEncoding.DecodeString(stripWS(s.amsTags["bh"]))
		if err != nil || !bytes.Equal(bh, sum) {
			return errors.New("body hash does not match (the body changed)")
		}
		return verifySig(kc, s.amsTags, signedHeaderData(fields, s.amsTags["h"], s.ams, rh))
	}
	verdict := func(what string, err error) ARCResult {
		var te errTemp
		if errors.As(err, &te) {
			res.Result, res.Reason, res.Err = "temperror", what+": "+err.Error(), err
			return res
		}
		return fail(res, what+": "+err.Error())
	}
	N := len(sets)
	if err := checkAMS(N - 1); err != nil {
		return verdict(fmt.Sprintf("ARC-Message-Signature i=%d", N), err)
	}
	// §5.1.1: seal i signs the ARC fields of instances 1..i in order, itself last with b=
	// emptied; always relaxed header canonicalization.
	var sealed bytes.Buffer
	for n := range sets {
		s := sets[n]
		sealed.WriteString(s.aar.relaxed() + "\r\n")
		sealed.WriteString(s.ams.relaxed() + "\r\n")
		data := append(sealed.Bytes()[:sealed.Len():sealed.Len()], rawField{name: s.seal.name, raw: blankB(s.seal.raw)}.relaxed()...)
		sealed.WriteString(s.seal.relaxed() + "\r\n")
		if err := verifySig(kc, s.sealTags, data); err != nil {
			return verdict(fmt.Sprintf("ARC-Seal i=%d", n+1), err)
		}
	}
	// §5.2 step 5: the older message signatures only tell where the message last changed.
	for n := N - 2; n >= 0; n-- {
		if err := checkAMS(n); err != nil {
			var te errTemp
			if errors.As(err, &te) {
				return verdict(fmt.Sprintf("ARC-Message-Signature i=%d", n+1), err)
			}
			res.OldestPass = n + 2
			break
		}
	}
	res.Result = "pass"
	return res
}

func fail(r ARCResult, reason string) ARCResult {
	r.Result, r.Reason = "fail", reason
	return r
}

// ARCCheck validates the ARC chain at the end of data, after DKIMCheck and before DMARCCheck.
// Its result alone refuses nothing (RFC 8617 §7.2: ARC informs the receiver's local policy);
// it is reported in the Authentication-Results field, and when the chain passes and its newest
// sealer is in TrustedSealers, DMARCCheck does not apply the author domain's reject or
// quarantine policy (RFC 7489 §6.7 local policy): mailing lists and forwarders that change a
// message break DKIM, and a trusted intermediary's seal vouches for what it received.
type ARCCheck struct {
	Resolver       dns.Resolver
	TrustedSealers []string // domains, matched exactly (case-insensitive)
}

func (*ARCCheck) Name() string { return "arc" }

func (c *ARCCheck) CheckData(ctx context.Context, t *policy.Txn, m policy.Message) policy.Verdict {
	if skip(t.Conn) {
		return policy.Verdict{}
	}
	st := stateFor(t.Conn, t)
	rc, err := m.Open()
	if err != nil {
		return policy.Verdict{Err: err}
	}
	r := VerifyARC(ctx, c.Resolver, rc)
	rc.Close()
	st.arc = &r
	v := policy.Verdict{Result: r.Result}
	switch r.Result {
	case "pass":
		v.Reason = fmt.Sprintf("ARC chain of %d sets sealed by %s", r.Instances, strings.Join(r.Sealers, ", "))
		if r.OldestPass > 0 {
			v.Reason += fmt.Sprintf(", oldest-pass=%d", r.OldestPass)
		}
		last := r.LastSealer()
		for _, d := range c.TrustedSealers {
			if strings.EqualFold(d, last) {
				st.arcTrusted = last
				v.Reason += " (trusted)"
				break
			}
		}
	case "fail":
		v.Reason = "ARC: " + r.Reason
	case "temperror":
		v.Err = fmt.Errorf("arc temperror: %s", r.Reason)
	}
	if r.Result != "none" && t.Conn.Logger != nil {
		// The per-message line has only "arc=pass"; who sealed, and why a chain failed, is
		// what an operator deciding on trusted_sealers needs.
		t.Conn.Logger.Info("arc chain", "session", t.Conn.SessionID, "id", t.ID, "result", r.Result,
			"sets", r.Instances, "sealers", strings.Join(r.Sealers, ","), "oldest_pass", r.OldestPass,
			"trusted", st.arcTrusted != "", "reason", r.Reason)
	}
	return v
}

// ARCSealer adds an ARC set to a message as an intermediary does (RFC 8617 §5.1): the
// ARC-Authentication-Results of what it checked, an ARC-Message-Signature over the message
// (relaxed/relaxed) and an ARC-Seal over the chain. Postamt does not seal what it relays yet;
// the tests build their chains with it, and a forwarding feature can use it as is.
type ARCSealer struct {
	Domain   string        // d=
	Selector string        // s=
	Signer   crypto.Signer // *rsa.PrivateKey (rsa-sha256) or ed25519.PrivateKey (ed25519-sha256)
	// Headers is the AMS h= list; nil means the usual author and content fields.
	Headers []string
	Now     func() time.Time // t=; nil: no t= tag

	bodyLength int64 // l= when > 0; only tests use it (l= lets anyone append to the body)
}

var defaultSealHeaders = []string{"from", "to", "cc", "subject", "date", "message-id", "reply-to",
	"mime-version", "content-type", "content-transfer-encoding", "dkim-signature"}

// Seal returns the new set's three fields, newest first and each ending in CRLF, to put on top
// of msg. authservID and results make the ARC-Authentication-Results ("spf=pass
// smtp.mailfrom=example.com"); cv is the sealer's validation of the chain it received (none
// for the first set, pass or fail).
func (s *ARCSealer) Seal(msg []byte, authservID, results, cv string) (string, error) {
	br := bufio.NewReader(bytes.NewReader(msg))
	fields, bodyStart, err := readRawHeader(br)
	if err != nil {
		return "", err
	}
	// The sets already there, by instance; a broken chain is sealed with cv=fail all the same.
	prev := map[int][3]*rawField{}
	n := 0
	for k := range fields {
		f := &fields[k]
		var i, slot int
		var err error
		switch {
		case strings.EqualFold(f.name, aarName):
			i, err = aarInstance(f.value())
		case strings.EqualFold(f.name, amsName):
			slot = 1
			var tags map[string]string
			if tags, err = parseTags(f.value()); err == nil {
				i, err = instance(tags["i"])
			}
		case strings.EqualFold(f.name, sealName):
			slot = 2
			var tags map[string]string
			if tags, err = parseTags(f.value()); err == nil {
				i, err = instance(tags["i"])
			}
		default:
			continue
		}
		if err != nil {
			continue
		}
		set := prev[i]
		set[slot] = f
		prev[i] = set
		n = max(n, i)
	}
	n++
	algo := ""
	switch s.Signer.(type) {
	case *rsa.PrivateKey:
		algo = "rsa-sha256"
	case ed25519.PrivateKey:
		algo = "ed25519-sha256"
	default:
		return "", fmt.Errorf("unsupported key type %T", s.Signer)
	}
	limit, ltag := int64(-1), ""
	if s.bodyLength > 0 {
		limit, ltag = s.bodyLength, fmt.Sprintf(" l=%d;", s.bodyLength)
	}
	bhash := newBodyHasher(bodyKey{relaxed: true, limit: limit})
	bhash.Write(bodyStart)
	if _, err := io.Copy(bhash, br); err != nil {
		return "", err
	}
	bh, _ := bhash.sum()
	sign := func(data []byte) (string, error) {
		sum := sha256.Sum256(data)
		var sig []byte
		var err error
		if algo == "rsa-sha256" {
			sig, err = s.Signer.Sign(rand.Reader, sum[:], crypto.SHA256)
		} else {
			sig, err = s.Signer.Sign(rand.Reader, sum[:], crypto.Hash(0))
		}
		return base64.StdEncoding.EncodeToString(sig), err
	}
	ts := ""
	if s.Now != nil {
		ts = fmt.Sprintf(" t=%d;", s.Now().Unix())
	}
	hdrs := s.Headers
	if hdrs == nil {
		hdrs = defaultSealHeaders
	}
	aar := rawField{name: aarName, raw: fmt.Sprintf("%s: i=%d; %s;\r\n\t%s", aarName, n, authservID, results)}
	amsRaw := fmt.Sprintf("%s: i=%d; a=%s; c=relaxed/relaxed; d=%s; s=%s;%s%s\r\n\th=%s;\r\n\tbh=%s;\r\n\tb=",
		amsName, n, algo, s.Domain, s.Selector, ts, ltag, strings.Join(hdrs, ":"), base64.StdEncoding.EncodeToString(bh))
	ams := rawField{name: amsName, raw: amsRaw}
	b, err := sign(signedHeaderData(fields, strings.Join(hdrs, ":"), &ams, true))
	if err != nil {
		return "", err
	}
	ams.raw += b
	var data bytes.Buffer
	for i := 1; i < n; i++ {
		for _, f := range prev[i] {
			if f != nil {
				data.WriteString(f.relaxed() + "\r\n")
			}
		}
	}
	data.WriteString(aar.relaxed() + "\r\n" + ams.relaxed() + "\r\n")
	seal := rawField{name: sealName, raw: fmt.Sprintf("%s: i=%d; a=%s; cv=%s; d=%s; s=%s;%s\r\n\tb=", sealName, n, algo, cv, s.Domain, s.Selector, ts)}
	data.WriteString(seal.relaxed())
	b, err = sign(data.Bytes())
	if err != nil {
		return "", err
	}
	seal.raw += b
	return seal.raw + "\r\n" + ams.raw + "\r\n" + aar.raw + "\r\n", nil
}
