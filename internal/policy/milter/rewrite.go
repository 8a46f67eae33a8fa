package milter

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"strings"

	gomilter "github.com/d--j/go-milter"

	"github.com/postamt/postamt/internal/policy"
)

// rewriteMessage applies a milter's header changes (smfi_chgheader: change or, with an empty
// value, delete the n-th field of a name; a field that does not exist is added) and body
// replacement (smfi_replacebody, possibly in several chunks) to the message the milter saw, and
// makes the result the message that later checks read and that is stored.
func rewriteMessage(msg policy.Message, mods []gomilter.ModifyAction) error {
	rp, ok := msg.(policy.Replacer)
	if !ok {
		return errors.New("the message cannot be rewritten here")
	}
	r, err := msg.Open()
	if err != nil {
		return err
	}
	raw, err := io.ReadAll(r)
	r.Close()
	if err != nil {
		return err
	}
	fields, body := splitFields(raw)
	var newBody []byte
	replaced := false
	for _, m := range mods {
		switch m.Type {
		case gomilter.ActionChangeHeader:
			fields, err = changeField(fields, m.HeaderName, int(m.HeaderIndex), m.HeaderValue)
			if err != nil {
				return err
			}
		case gomilter.ActionReplaceBody:
			newBody = append(newBody, m.Body...)
			replaced = true
		}
	}
	if replaced {
		body = crlf(newBody)
	}
	var out bytes.Buffer
	for _, f := range fields {
		out.Write(f)
	}
	out.WriteString("\r\n")
	out.Write(body)
	return rp.Replace(out.Bytes())
}

// splitFields cuts the header into whole fields (continuation lines included, each ending in
// CRLF) and returns the body after the empty line.
func splitFields(raw []byte) (fields [][]byte, body []byte) {
	rest := raw
	for len(rest) > 0 {
		if bytes.HasPrefix(rest, []byte("\r\n")) {
			return fields, rest[2:]
		}
		end := 0
		for {
			i := bytes.Index(rest[end:], []byte("\r\n"))
			if i < 0 {
				end = len(rest)
				break
			}
			end += i + 2
			if end >= len(rest) || (rest[end] != ' ' && rest[end] != '\t') {
				break
			}
		}
		line := rest[:end]
		if bytes.IndexByte(line, ':') <= 0 {
			return fields, rest // no empty line: the header ended, this is body
		}
		fields = append(fields, line)
		rest = rest[end:]
	}
	return fields, nil
}

func fieldName(f []byte) string {
	n, _, _ := bytes.Cut(f, []byte(":"))
	return strings.TrimSpace(string(n))
}

// changeField changes (value != "") or deletes (value == "") the index-th (1-based) field
// named name; past the last one, a non-empty value is added at the end.
func changeField(fields [][]byte, name string, index int, value string) ([][]byte, error) {
	var nf []byte
	if value != "" {
		h, ok := headerField(name, strings.TrimLeft(value, " \t"))
		if !ok {
			return fields, fmt.Errorf("header %q from the milter is malformed", name)
		}
		nf = []byte(h + "\r\n")
	}
	if index < 1 {
		index = 1
	}
	seen := 0
	for i, f := range fields {
		if !strings.EqualFold(fieldName(f), name) {
			continue
		}
		if seen++; seen == index {
			if nf == nil {
				return append(fields[:i:i], fields[i+1:]...), nil
			}
			out := append(fields[:i:i], nf)
			return append(out, fields[i+1:]...), nil
		}
	}
	if nf != nil {
		fields = append(fields, nf)
	}
	return fields, nil
}

// crlf makes every line end in CRLF, as the rest of the mail path expects.
func crlf(b []byte) []byte {
	b = bytes.ReplaceAll(b, []byte("\r\n"), []byte("\n"))
	return bytes.ReplaceAll(b, []byte("\n"), []byte("\r\n"))
}
