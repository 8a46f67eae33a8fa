package sandbox

import (
	"fmt"
	"strings"
	"time"
	"unicode"
)

// Term is one condition of a search. Field is "" for free text.
type Term struct {
	Field string
	Value string
	Neg   bool
	at    time.Time // for after/before/date
}

// Query is a parsed search: all terms must hold.
type Query struct {
	Terms []Term
}

// fields are the search prefixes the language knows, with what they take, for error messages.
var fields = map[string]string{
	"from": "address or name", "to": "address or name (To, Cc and envelope recipients)",
	"subject": "words", "has": "attachment", "is": "read or unread", "tag": "tag name",
	"after": "date", "before": "date", "date": "day (YYYY-MM-DD)",
}

// ParseQuery reads the search language:
//
//	from:alice to:bob@example.test subject:"weekly report" has:attachment is:unread tag:ci
//	after:2026-01-02 before:2026-01-31T12:00:00Z date:2026-01-05 after:2h  invoice -tag:seen
//
// Words without a prefix search subject and body; "-" negates a term; double quotes group
// words. Dates are YYYY-MM-DD (UTC days), RFC 3339 times, or a duration meaning "that long
// ago". now anchors the durations.
func ParseQuery(s string, now time.Time) (*Query, error) {
	q := &Query{}
	// Control characters (NUL above all) end strings early in SQLite's FTS5 query parser; no
	// one searches for them.
	s = strings.Map(func(r rune) rune {
		if unicode.IsControl(r) && !unicode.IsSpace(r) {
			return -1
		}
		return r
	}, strings.ToValidUTF8(s, ""))
	toks, err := tokenize(s)
	if err != nil {
		return nil, err
	}
	for _, tok := range toks {
		t := Term{}
		raw := tok.text
		if !tok.quotedWhole && strings.HasPrefix(raw, "-") && len(raw) > 1 {
			t.Neg = true
			raw = raw[1:]
		}
		if name, val, ok := strings.Cut(raw, ":"); ok && !tok.quotedWhole && isFieldName(name) {
			name = strings.ToLower(name)
			if _, known := fields[name]; !known {
				if name != "http" && name != "https" && name != "mailto" {
					return nil, fmt.Errorf("unknown search field %q (use from:, to:, subject:, has:attachment, is:read, is:unread, tag:, after:, before:, date:)", name+":")
				}
			} else {
				t.Field = name
				raw = val
			}
		}
		t.Value = raw
		if t.Field != "" && t.Value == "" {
			return nil, fmt.Errorf("%s: needs a value (%s)", t.Field, fields[t.Field])
		}
		switch t.Field {
		case "has":
			if v := strings.ToLower(t.Value); v != "attachment" && v != "attachments" {
				return nil, fmt.Errorf("has:%s: only has:attachment is known", t.Value)
			}
			t.Value = "attachment"
		case "is":
			v := strings.ToLower(t.Value)
			if v != "read" && v != "unread" {
				return nil, fmt.Errorf("is:%s: use is:read or is:unread", t.Value)
			}
			t.Value = v
		case "after", "before", "date":
			at, err := parseWhen(t.Value, now)
			if err != nil {
				return nil, fmt.Errorf("%s:%s: %v", t.Field, t.Value, err)
			}
			if t.Field == "date" && len(t.Value) != len("2006-01-02") {
				return nil, fmt.Errorf("date:%s: use a day, YYYY-MM-DD", t.Value)
			}
			t.at = at
		}
		if t.Field == "" && t.Value == "" {
			continue
		}
		q.Terms = append(q.Terms, t)
	}
	return q, nil
}

func isFieldName(s string) bool {
	if s == "" {
		return false
	}
	for _, r := range s {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z') {
			return false
		}
	}
	return true
}

func parseWhen(v string, now time.Time) (time.Time, error) {
	if t, err := time.Parse("2006-01-02", v); err == nil {
		return t, nil
	}
	if t, err := time.Parse(time.RFC3339, v); err == nil {
		return t, nil
	}
	if d, err := time.ParseDuration(v); err == nil && d >= 0 {
		return now.Add(-d), nil
	}
	if strings.HasSuffix(v, "d") {
		var n int
		if _, err := fmt.Sscanf(v, "%dd", &n); err == nil && n >= 0 && fmt.Sprintf("%dd", n) == v {
			return now.Add(-time.Duration(n) * 24 * time.Hour), nil
		}
	}
	return time.Time{}, fmt.Errorf("not a date: use YYYY-MM-DD, an RFC 3339 time, or a duration such as 2h or 7d")
}

type token struct {
	text        string
	quotedWhole bool // the whole token was one quoted string: never a field
}

// tokenize splits on white space outside double quotes; quotes are removed.
func tokenize(s string) ([]token, error) {
	var out []token
	var b strings.Builder
	inQuote, started, whole := false, false, false
	flush := func() {
		if started {
			out = append(out, token{text: b.String(), quotedWhole: whole})
		}
		b.Reset()
		started, whole = false, false
	}
	for _, r := range s {
		switch {
		case r == '"':
			if !started {
				whole = true
			}
			started = true
			inQuote = !inQuote
		case unicode.IsSpace(r) && !inQuote:
			flush()
		default:
			if !started {
				whole = false
			}
			started = true
			b.WriteRune(r)
		}
		if len(out) > 50 {
			return nil, fmt.Errorf("too many search terms (at most 50)")
		}
	}
	if inQuote {
		return nil, fmt.Errorf("unterminated quote")
	}
	flush()
	return out, nil
}

// String renders the query back in the search language.
func (q *Query) String() string {
	parts := make([]string, len(q.Terms))
	for i, t := range q.Terms {
		s := ""
		if t.Neg {
			s = "-"
		}
		if t.Field != "" {
			s += t.Field + ":"
		}
		v := t.Value
		if strings.IndexFunc(v, unicode.IsSpace) >= 0 || strings.Contains(v, "\"") || v == "" || (t.Field == "" && (strings.Contains(v, ":") || strings.HasPrefix(v, "-"))) {
			v = `"` + strings.ReplaceAll(v, `"`, "") + `"`
		}
		parts[i] = s + v
	}
	return strings.Join(parts, " ")
}

// ftsPhrase quotes a value as an FTS5 prefix phrase; ok is false when it holds no word
// characters (the tokenizer would see nothing, and the term then matches everything).
func ftsPhrase(v string) (string, bool) {
	if strings.IndexFunc(v, func(r rune) bool { return unicode.IsLetter(r) || unicode.IsDigit(r) }) < 0 {
		return "", false
	}
	return `"` + strings.ReplaceAll(v, `"`, `""`) + `"*`, true
}

// where builds the SQL condition over table msg (alias m) for the query, with its arguments.
func (q *Query) where() (string, []any) {
	var conds, fts []string
	var args []any
	addFTS := func(expr string, neg bool) {
		if neg {
			conds = append(conds, "m.id NOT IN (SELECT rowid FROM msg_fts WHERE msg_fts MATCH ?)")
			args = append(args, expr)
			return
		}
		fts = append(fts, expr)
	}
	for _, t := range q.Terms {
		not := ""
		if t.Neg {
			not = "NOT "
		}
		switch t.Field {
		case "", "from", "to", "subject":
			col := map[string]string{"": "{subject body}", "from": "from_addr", "to": "to_addr", "subject": "subject"}[t.Field]
			if p, ok := ftsPhrase(t.Value); ok {
				addFTS(col+" : "+p, t.Neg)
			}
		case "has":
			conds = append(conds, not+"(m.attachments > 0)")
		case "is":
			conds = append(conds, not+"(m.seen = ?)")
			args = append(args, map[string]int{"read": 1, "unread": 0}[t.Value])
		case "tag":
			conds = append(conds, not+"(m.tags LIKE ? ESCAPE '\\')")
			args = append(args, "%,"+likeEscape(strings.ToLower(t.Value))+",%")
		case "after":
			conds = append(conds, not+"(m.received >= ?)")
			args = append(args, t.at.UnixMicro())
		case "before":
			conds = append(conds, not+"(m.received < ?)")
			args = append(args, t.at.UnixMicro())
		case "date":
			conds = append(conds, not+"(m.received >= ? AND m.received < ?)")
			args = append(args, t.at.UnixMicro(), t.at.Add(24*time.Hour).UnixMicro())
		}
	}
	if len(fts) > 0 {
		conds = append([]string{"m.id IN (SELECT rowid FROM msg_fts WHERE msg_fts MATCH ?)"}, conds...)
		args = append([]any{strings.Join(fts, " AND ")}, args...)
	}
	if len(conds) == 0 {
		return "1", nil
	}
	return strings.Join(conds, " AND "), args
}

func likeEscape(s string) string {
	r := strings.NewReplacer(`\`, `\\`, `%`, `\%`, `_`, `\_`)
	return r.Replace(s)
}
