// Package attachments is the built-in attachment policy: it walks a message's MIME tree (bounded
// in depth and part count), and blocks attachments by file name extension and by content —
// executables (PE, ELF, Mach-O), scripts (#!), macro-enabled Office documents — also inside zip
// archives, which are opened within fixed bounds (entries, total uncompressed bytes, nesting)
// so that a zip bomb costs at most those bounds.
package attachments

import (
	"bufio"
	"bytes"
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"mime"
	"mime/multipart"
	"mime/quotedprintable"
	"net/textproto"
	"path"
	"strings"

	"github.com/postamt/postamt/internal/policy"
	"github.com/postamt/postamt/internal/smtp"
)

// Kind is a class of dangerous content found by sniffing.
type Kind string

const (
	Executable  Kind = "executable"
	Script      Kind = "script"
	OfficeMacro Kind = "office_macro"
)

// Options configure the policy. Zero limits get the defaults below.
type Options struct {
	Action            policy.Action // Reject (default) or Quarantine
	MaxDepth          int           // MIME nesting (multipart in multipart, message/rfc822)
	MaxParts          int           // MIME parts in the whole message
	BlockedExtensions []string      // without the dot, case-insensitive
	BlockedTypes      []Kind
	ScanArchives      bool
	MaxArchiveEntries int   // per archive
	MaxArchiveSize    int64 // uncompressed bytes read from all archives of one attachment
	MaxArchiveDepth   int   // zip in zip
	// BlockEncrypted refuses archives with password-protected entries, which no scanner can
	// look into (a common way to slip malware past one).
	BlockEncrypted bool
}

// Check is the attachment DATA check.
type Check struct {
	o     Options
	ext   map[string]bool
	types map[Kind]bool
}

func New(o Options) (*Check, error) {
	if o.Action == policy.Continue {
		o.Action = policy.Reject
	}
	if o.Action != policy.Reject && o.Action != policy.Quarantine {
		return nil, fmt.Errorf("attachments: action %s: use reject or quarantine", o.Action)
	}
	if o.MaxDepth <= 0 {
		o.MaxDepth = 20
	}
	if o.MaxParts <= 0 {
		o.MaxParts = 500
	}
	if o.MaxArchiveEntries <= 0 {
		o.MaxArchiveEntries = 1000
	}
	if o.MaxArchiveSize <= 0 {
		o.MaxArchiveSize = 100 << 20
	}
	if o.MaxArchiveDepth <= 0 {
		o.MaxArchiveDepth = 2
	}
	c := &Check{o: o, ext: map[string]bool{}, types: map[Kind]bool{}}
	for _, e := range o.BlockedExtensions {
		c.ext[strings.ToLower(strings.TrimPrefix(e, "."))] = true
	}
	for _, k := range o.BlockedTypes {
		switch k {
		case Executable, Script, OfficeMacro:
			c.types[k] = true
		default:
			return nil, fmt.Errorf("attachments: unknown type %q (use executable, script or office_macro)", k)
		}
	}
	return c, nil
}

func (c *Check) Name() string { return "attachments" }

// Finding is why a message is refused.
type Finding struct {
	// File is the attachment's name ("" when it has none), with the path inside archives:
	// "docs.zip/setup.exe".
	File string
	// Why in plain words: "blocked file type .exe", "executable content".
	Why string
	// Structure is set for MIME or archive limits rather than a dangerous file.
	Structure bool
}

func (f *Finding) String() string {
	if f.File == "" {
		return f.Why
	}
	return fmt.Sprintf("attachment %q: %s", f.File, f.Why)
}

func (c *Check) CheckData(ctx context.Context, t *policy.Txn, m policy.Message) policy.Verdict {
	r, err := m.Open()
	if err != nil {
		logFailure(t, err)
		return policy.Verdict{Err: err, Result: "error", Reason: err.Error()}
	}
	defer r.Close()
	f, err := c.Inspect(ctx, r)
	if err != nil {
		logFailure(t, err)
		return policy.Verdict{Err: err, Result: "error", Reason: err.Error()}
	}
	if f == nil {
		return policy.Verdict{}
	}
	v := policy.Verdict{Action: c.o.Action, Result: "blocked", Reason: f.String()}
	if c.o.Action == policy.Reject {
		if f.Structure {
			v.Reply = smtp.Replyf(554, smtp.EnhancedCode{5, 6, 0}, "Message refused: %s", safe(f.String()))
		} else {
			v.Reply = smtp.Replyf(550, smtp.EnhancedCode{5, 7, 1}, "Message refused: %s is not allowed", safe(f.String()))
		}
	}
	return v
}

// safe keeps an attacker-chosen file name from breaking or bloating the SMTP reply.
func safe(s string) string {
	var b strings.Builder
	for _, r := range s {
		if b.Len() >= 200 {
			b.WriteString("...")
			break
		}
		if r >= 0x20 && r < 0x7f {
			b.WriteRune(r)
		} else {
			b.WriteByte('?')
		}
	}
	return b.String()
}

// walker holds the state of one message's inspection.
type walker struct {
	c     *Check
	ctx   context.Context
	parts int
}

// Inspect walks the message read from r and returns the first finding, or nil. err is only
// for I/O failures of r and the end of ctx. A multipart body whose part headers cannot be
// parsed is a finding; a missing final boundary, a bad Content-Type or undecodable base64 are
// not (the part is inspected as far as it goes).
func (c *Check) Inspect(ctx context.Context, r io.Reader) (*Finding, error) {
	w := &walker{c: c, ctx: ctx}
	br := bufio.NewReader(r)
	h, err := textproto.NewReader(br).ReadMIMEHeader()
	if err != nil && len(h) == 0 {
		// No header block at all: nothing to walk.
		if _, ioErr := br.Peek(1); ioErr != nil && !errors.Is(ioErr, io.EOF) {
			return nil, ioErr
		}
		return nil, nil
	}
	f, err := w.entity(h, br, 0)
	if errors.Is(err, errStop) {
		err = nil
	}
	return f, err
}

// errStop ends the walk quietly (malformed input or the context ended).
var errStop = errors.New("stop")

// entity inspects one MIME entity whose header is h and body is body.
func (w *walker) entity(h textproto.MIMEHeader, body io.Reader, depth int) (*Finding, error) {
	if err := w.ctx.Err(); err != nil {
		return nil, err
	}
	w.parts++
	if w.parts > w.c.o.MaxParts {
		return &Finding{Why: fmt.Sprintf("more than %d MIME parts", w.c.o.MaxParts), Structure: true}, nil
	}
	if depth > w.c.o.MaxDepth {
		return &Finding{Why: fmt.Sprintf("MIME parts nested deeper than %d levels", w.c.o.MaxDepth), Structure: true}, nil
	}
	ctype, params, err := mime.ParseMediaType(h.Get("Content-Type"))
	if err != nil {
		ctype, params = "text/plain", nil
	}
	switch {
	case strings.HasPrefix(ctype, "multipart/"):
		boundary := params["boundary"]
		if boundary == "" {
			return nil, nil
		}
		mr := multipart.NewReader(body, boundary)
		for {
			p, err := mr.NextRawPart()
			if err == io.EOF || errors.Is(err, io.ErrUnexpectedEOF) {
				// A missing final boundary is common in truncated but harmless mail.
				return nil, nil
			}
			if err != nil {
				// What we cannot parse we cannot inspect, and a lenient mail client might
				// still show an attachment hidden behind it.
				return &Finding{Why: "MIME structure that cannot be parsed", Structure: true}, nil
			}
			f, err := w.entity(p.Header, p, depth+1)
			if f != nil || err != nil {
				return f, err
			}
		}
	case ctype == "message/rfc822" || ctype == "message/global":
		br := bufio.NewReader(decode(h, body))
		mh, err := textproto.NewReader(br).ReadMIMEHeader()
		if err != nil && len(mh) == 0 {
			return nil, nil
		}
		return w.entity(mh, br, depth+1)
	}
	return w.leaf(h, ctype, params, decode(h, body))
}

// decode undoes the Content-Transfer-Encoding.
func decode(h textproto.MIMEHeader, body io.Reader) io.Reader {
	switch strings.ToLower(strings.TrimSpace(h.Get("Content-Transfer-Encoding"))) {
	case "base64":
		return base64.NewDecoder(base64.StdEncoding, &base64Filter{r: body})
	case "quoted-printable":
		return quotedprintable.NewReader(body)
	}
	return body
}

// base64Filter drops what base64.NewDecoder does not skip by itself (spaces, tabs) and stops
// at padding garbage, so sloppy encoders do not hide an attachment from us.
type base64Filter struct{ r io.Reader }

func (f *base64Filter) Read(p []byte) (int, error) {
	for {
		n, err := f.r.Read(p)
		j := 0
		for _, b := range p[:n] {
			if b >= 'A' && b <= 'Z' || b >= 'a' && b <= 'z' || b >= '0' && b <= '9' || b == '+' || b == '/' || b == '=' {
				p[j] = b
				j++
			}
		}
		if j > 0 || err != nil {
			return j, err
		}
	}
}

// fileName is the attachment's name from Content-Disposition or Content-Type (RFC 2231
// decoded by mime.ParseMediaType).
func fileName(h textproto.MIMEHeader, ctParams map[string]string) string {
	if _, p, err := mime.ParseMediaType(h.Get("Content-Disposition")); err == nil && p["filename"] != "" {
		return p["filename"]
	}
	if ctParams["name"] != "" {
		return ctParams["name"]
	}
	// A malformed header that ParseMediaType refuses still names a file for the MUA.
	for _, v := range []string{h.Get("Content-Disposition"), h.Get("Content-Type")} {
		// ASCII-only lowering keeps byte offsets (strings.ToLower may change lengths).
		if i := strings.Index(asciiLower(v), "name="); i >= 0 {
			return strings.Trim(strings.TrimSpace(strings.SplitN(v[i+5:], ";", 2)[0]), `"'`)
		}
	}
	return ""
}

func asciiLower(s string) string {
	b := []byte(s)
	for i, c := range b {
		if c >= 'A' && c <= 'Z' {
			b[i] = c + 32
		}
	}
	return string(b)
}

func (w *walker) leaf(h textproto.MIMEHeader, ctype string, params map[string]string, body io.Reader) (*Finding, error) {
	name := fileName(h, params)
	if dec, err := new(mime.WordDecoder).DecodeHeader(name); err == nil {
		name = dec
	}
	if f := w.c.byName(name); f != nil {
		return f, nil
	}
	return w.c.content(w.ctx, name, body, &budget{left: w.c.o.MaxArchiveSize}, 0)
}

// byName checks a file name's extension (the last one: "invoice.pdf.exe" is an .exe).
func (c *Check) byName(name string) *Finding {
	base := path.Base(strings.ReplaceAll(name, `\`, "/"))
	// Trailing dots and spaces are dropped by Windows when it opens the file.
	base = strings.TrimRight(base, ". ")
	ext := strings.ToLower(strings.TrimPrefix(path.Ext(base), "."))
	if ext == "" {
		return nil
	}
	if c.ext[ext] {
		return &Finding{File: name, Why: "blocked file type ." + ext}
	}
	if c.types[OfficeMacro] && macroExt[ext] {
		return &Finding{File: name, Why: "macro-enabled Office document (." + ext + ")"}
	}
	return nil
}

var macroExt = map[string]bool{
	"docm": true, "dotm": true, "xlsm": true, "xltm": true, "xlam": true, "xlsb": true,
	"pptm": true, "potm": true, "ppsm": true, "ppam": true, "sldm": true,
}

// budget is the uncompressed bytes still allowed for one attachment's archives.
type budget struct{ left int64 }

const sniffLen = 512

// content sniffs body; zip archives (and OOXML, which is zip) and OLE2 documents are read
// whole, within the budget, to look inside. Every byte read here is charged to the budget.
func (c *Check) content(ctx context.Context, name string, body io.Reader, b *budget, zipDepth int) (*Finding, error) {
	br := bufio.NewReaderSize(&charged{r: body, b: b}, sniffLen)
	head, err := br.Peek(sniffLen)
	if errors.Is(err, errOverBudget) {
		return &Finding{File: name, Why: fmt.Sprintf("archive expands to more than %d bytes", c.o.MaxArchiveSize), Structure: true}, nil
	}
	if k := sniff(head); k != "" && c.types[k] {
		return &Finding{File: name, Why: string(k) + " content"}, nil
	}
	isZip := bytes.HasPrefix(head, []byte("PK\x03\x04"))
	isOLE := bytes.HasPrefix(head, oleMagic)
	if !(isZip && (c.o.ScanArchives || c.types[OfficeMacro])) && !(isOLE && c.types[OfficeMacro]) {
		return nil, nil
	}
	data, err := io.ReadAll(br)
	if errors.Is(err, errOverBudget) {
		return &Finding{File: name, Why: fmt.Sprintf("archive larger than %d bytes", c.o.MaxArchiveSize), Structure: true}, nil
	}
	if err != nil {
		return nil, nil // undecodable (bad base64, broken deflate): nothing more to see
	}
	if isOLE {
		if hasVBA(data) {
			return &Finding{File: name, Why: "Office document with macros"}, nil
		}
		return nil, nil
	}
	return c.zip(ctx, name, data, b, zipDepth)
}

var oleMagic = []byte{0xD0, 0xCF, 0x11, 0xE0, 0xA1, 0xB1, 0x1A, 0xE1}

// sniff recognises executable and script content by its first bytes.
func sniff(h []byte) Kind {
	switch {
	case bytes.HasPrefix(h, []byte("MZ")), bytes.HasPrefix(h, []byte("\x7fELF")):
		return Executable
	case len(h) >= 4:
		switch string(h[:4]) {
		case "\xfe\xed\xfa\xce", "\xfe\xed\xfa\xcf", "\xce\xfa\xed\xfe", "\xcf\xfa\xed\xfe", "\xca\xfe\xba\xbe":
			return Executable
		}
	}
	if bytes.HasPrefix(h, []byte("#!")) {
		return Script
	}
	return ""
}

// hasVBA finds a VBA project in an OLE2 compound file by its directory entry names (stored as
// UTF-16LE), which is where Word and Excel keep macros in .doc/.xls.
func hasVBA(data []byte) bool {
	return bytes.Contains(data, utf16("_VBA_PROJECT")) || bytes.Contains(data, utf16("VBA\x00"))
}

func utf16(s string) []byte {
	b := make([]byte, 0, 2*len(s))
	for i := 0; i < len(s); i++ {
		b = append(b, s[i], 0)
	}
	return b
}

// logFailure says what went wrong; the chain then applies the fail-open or fail-closed rule
// and its log line only names the check.
func logFailure(t *policy.Txn, err error) {
	if t != nil && t.Conn != nil && t.Conn.Logger != nil {
		t.Conn.Logger.Warn("attachments check failed", "session", t.Conn.SessionID, "id", t.ID, "err", err)
	}
}
