package sandbox

import (
	"context"
	"testing"
	"time"
)

// FuzzParseQuery: any input either fails to parse or gives a query whose rendering parses to
// the same rendering, and whose SQL the store runs without error.
func FuzzParseQuery(f *testing.F) {
	for _, s := range []string{"from:alice", `subject:"a b" -tag:x`, "has:attachment is:unread", "after:2h", `"x`, "-", "a:b", `""`, "date:2026-01-01 invoice*"} {
		f.Add(s)
	}
	s, err := Open(Options{})
	if err != nil {
		f.Fatal(err)
	}
	defer s.Close()
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	f.Fuzz(func(t *testing.T, in string) {
		q, err := ParseQuery(in, now)
		if err != nil {
			return
		}
		again, err := ParseQuery(q.String(), now)
		if err != nil {
			t.Fatalf("rendering %q of %q does not parse: %v", q.String(), in, err)
		}
		if again.String() != q.String() {
			t.Fatalf("round trip: %q → %q → %q", in, q.String(), again.String())
		}
		if _, err := s.List(context.Background(), q, 1, 0); err != nil {
			t.Fatalf("List(%q): %v", in, err)
		}
	})
}

// FuzzParse: parsing arbitrary bytes never panics and keeps attachment data consistent.
func FuzzParse(f *testing.F) {
	f.Add([]byte(withAttachment))
	f.Add([]byte("Subject: =?utf-8?b?w6k=?=\r\n\r\nbody"))
	f.Fuzz(func(t *testing.T, raw []byte) {
		p := Parse(raw)
		for _, a := range p.Attachments {
			if a.Size != len(a.data) {
				t.Fatalf("part %d size %d, data %d", a.Index, a.Size, len(a.data))
			}
		}
	})
}
