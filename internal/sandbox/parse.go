package sandbox

import (
	"bufio"
	"bytes"
	"encoding/base64"
	"io"
	"mime"
	"mime/multipart"
	"mime/quotedprintable"
	"net/mail"
	"net/textproto"
	"strings"
	"time"

	"golang.org/x/net/html/charset"
)

// Limits on what parsing a captured message may cost. A sandbox takes mail from programs under
// test, which produce broken MIME more often than real senders; parsing must never fail the
// capture, only give up on the structure and keep the raw bytes.
const (
	maxParts     = 200
	maxDepth     = 10
	maxTextBytes = 1 << 20 // text or HTML kept per part
)

// Header is one header field as received, decoded for display.
type Header struct {
	Name  string `json:"name"`
	Value string `json:"value"`
}

// Part is a leaf of the MIME tree that is not the message's main text or HTML: an attachment
// or an inline image. Index is its position among all leaves, stable for a given message.
type Part struct {
	Index       int    `json:"index"`
	ContentType string `json:"content_type"`
	Filename    string `json:"filename"`
	ContentID   string `json:"content_id,omitempty"`
	Inline      bool   `json:"inline"`
	Size        int    `json:"size"`
	data        []byte
}

// Parsed is a message taken apart for display and search.
type Parsed struct {
	From        string    `json:"from"`
	To          []string  `json:"to"`
	Cc          []string  `json:"cc"`
	Subject     string    `json:"subject"`
	Date        time.Time `json:"date"`
	MessageID   string    `json:"message_id"`
	Headers     []Header  `json:"headers"`
	Text        string    `json:"text"`
	HTML        string    `json:"html"`
	Attachments []Part    `json:"attachments"`
	// Problems are what the parser had to work around (bad MIME, unknown charset), shown in the
	// UI because a tester wants to know their program produced them.
	Problems []string `json:"problems,omitempty"`
}

var wordDecoder = &mime.WordDecoder{CharsetReader: charset.NewReaderLabel}

func decodeHeader(v string) string {
	if d, err := wordDecoder.DecodeHeader(v); err == nil {
		return d
	}
	return v
}

// Parse takes a message apart. It never fails: what it cannot understand is reported in
// Problems and the rest is kept.
func Parse(raw []byte) *Parsed {
	p := &Parsed{}
	msg, err := mail.ReadMessage(bytes.NewReader(raw))
	if err != nil {
		p.Problems = append(p.Problems, "header: "+err.Error())
		p.Text = string(raw)
		return p
	}
	p.Headers = orderedHeaders(raw)
	h := msg.Header
	p.Subject = decodeHeader(h.Get("Subject"))
	p.From = addrList(h.Get("From"))
	if l := splitAddrs(h.Get("To")); l != nil {
		p.To = l
	}
	if l := splitAddrs(h.Get("Cc")); l != nil {
		p.Cc = l
	}
	p.MessageID = strings.Trim(h.Get("Message-Id"), "<> ")
	if d, err := h.Date(); err == nil {
		p.Date = d
	}
	w := &walker{p: p}
	w.walk(textproto.MIMEHeader(h), msg.Body, 0)
	return p
}

func addrList(v string) string {
	return strings.Join(splitAddrs(v), ", ")
}

// splitAddrs returns display forms ("Name <a@b>") of an address list header, falling back to
// the decoded raw value when it does not parse (a sandbox shows what it got).
func splitAddrs(v string) []string {
	if strings.TrimSpace(v) == "" {
		return nil
	}
	list, err := (&mail.AddressParser{WordDecoder: wordDecoder}).ParseList(v)
	if err != nil {
		return []string{decodeHeader(v)}
	}
	out := make([]string, len(list))
	for i, a := range list {
		if a.Name != "" {
			out[i] = a.Name + " <" + a.Address + ">"
		} else {
			out[i] = a.Address
		}
	}
	return out
}

// orderedHeaders reads the header block again in order (net/mail keeps a map), unfolded.
func orderedHeaders(raw []byte) []Header {
	var out []Header
	r := bufio.NewReader(bytes.NewReader(raw))
	for len(out) < 1000 {
		line, err := r.ReadString('\n')
		t := strings.TrimRight(line, "\r\n")
		if t == "" {
			break
		}
		if (t[0] == ' ' || t[0] == '\t') && len(out) > 0 {
			out[len(out)-1].Value += " " + strings.TrimSpace(t)
		} else if name, val, ok := strings.Cut(t, ":"); ok {
			out = append(out, Header{Name: name, Value: strings.TrimSpace(val)})
		}
		if err != nil {
			break
		}
	}
	for i := range out {
		out[i].Value = decodeHeader(out[i].Value)
	}
	return out
}

type walker struct {
	p     *Parsed
	parts int
}

func (w *walker) problem(s string) {
	if len(w.p.Problems) < 20 {
		w.p.Problems = append(w.p.Problems, s)
	}
}

func (w *walker) walk(h textproto.MIMEHeader, body io.Reader, depth int) {
	if depth > maxDepth {
		w.problem("MIME nesting deeper than 10 levels; the rest is not shown")
		return
	}
	ct := h.Get("Content-Type")
	mt, params, err := mime.ParseMediaType(ct)
	if ct == "" || err != nil {
		if ct != "" {
			w.problem("bad Content-Type " + quoteShort(ct) + ": treated as text/plain")
		}
		mt, params = "text/plain", map[string]string{}
	}
	if strings.HasPrefix(mt, "multipart/") {
		boundary := params["boundary"]
		if boundary == "" {
			w.problem(mt + " without a boundary")
			return
		}
		mr := multipart.NewReader(body, boundary)
		for {
			part, err := mr.NextRawPart()
			if err == io.EOF {
				return
			}
			if err != nil {
				w.problem("multipart: " + err.Error())
				return
			}
			if w.parts >= maxParts {
				w.problem("more than 200 MIME parts; the rest is not shown")
				return
			}
			w.walk(part.Header, part, depth+1)
		}
	}
	w.parts++
	data, err := io.ReadAll(decodeTransfer(h.Get("Content-Transfer-Encoding"), body))
	if err != nil {
		w.problem("content transfer encoding: " + err.Error())
	}
	disp, dparams, _ := mime.ParseMediaType(h.Get("Content-Disposition"))
	filename := decodeHeader(dparams["filename"])
	if filename == "" {
		filename = decodeHeader(params["name"])
	}
	isAttachment := disp == "attachment" || filename != ""
	switch {
	case mt == "text/plain" && !isAttachment && w.p.Text == "":
		w.p.Text = w.toUTF8(data, params["charset"])
	case mt == "text/html" && !isAttachment && w.p.HTML == "":
		w.p.HTML = w.toUTF8(data, params["charset"])
	default:
		cid := strings.Trim(h.Get("Content-Id"), "<> ")
		w.p.Attachments = append(w.p.Attachments, Part{
			Index: w.parts - 1, ContentType: mt, Filename: filename, ContentID: cid,
			Inline: disp == "inline" || (disp == "" && cid != ""), Size: len(data), data: data,
		})
	}
}

func (w *walker) toUTF8(data []byte, cs string) string {
	if len(data) > maxTextBytes {
		data = data[:maxTextBytes]
	}
	cs = strings.ToLower(cs)
	if cs == "" || cs == "utf-8" || cs == "us-ascii" || cs == "utf8" {
		return strings.ToValidUTF8(string(data), "\uFFFD")
	}
	r, err := charset.NewReaderLabel(cs, bytes.NewReader(data))
	if err != nil {
		w.problem("unknown charset " + quoteShort(cs))
		return strings.ToValidUTF8(string(data), "\uFFFD")
	}
	out, _ := io.ReadAll(io.LimitReader(r, 4*maxTextBytes))
	return strings.ToValidUTF8(string(out), "\uFFFD")
}

func decodeTransfer(cte string, r io.Reader) io.Reader {
	switch strings.ToLower(strings.TrimSpace(cte)) {
	case "base64":
		return base64.NewDecoder(base64.StdEncoding, &base64Cleaner{r: r})
	case "quoted-printable":
		return quotedprintable.NewReader(r)
	}
	return r
}

// base64Cleaner drops line breaks and anything else outside the base64 alphabet, which
// encoders put in and strict decoders choke on.
type base64Cleaner struct{ r io.Reader }

func (c *base64Cleaner) Read(p []byte) (int, error) {
	for {
		n, err := c.r.Read(p)
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

func quoteShort(s string) string {
	if len(s) > 60 {
		s = s[:60] + "…"
	}
	return `"` + s + `"`
}

// PartData returns the decoded content of the leaf with the given index.
func (p *Parsed) PartData(index int) (*Part, []byte, bool) {
	for i := range p.Attachments {
		if p.Attachments[i].Index == index {
			return &p.Attachments[i], p.Attachments[i].data, true
		}
	}
	return nil, nil, false
}

// PartByCID finds an inline part by its Content-ID (for cid: URLs in HTML).
func (p *Parsed) PartByCID(cid string) (*Part, []byte, bool) {
	for i := range p.Attachments {
		if p.Attachments[i].ContentID != "" && p.Attachments[i].ContentID == cid {
			return &p.Attachments[i], p.Attachments[i].data, true
		}
	}
	return nil, nil, false
}
