package smtp

import "testing"

func BenchmarkParsePathAndParams(b *testing.B) {
	b.ReportAllocs()
	for b.Loop() {
		p, rest, err := ParsePath("<someone.long+tag@sub.example.org> SIZE=10240 BODY=8BITMIME", false)
		if err != nil || p.Null {
			b.Fatal(err)
		}
		if _, r := ParseMailParams(rest, 1<<20); r != nil {
			b.Fatal(r)
		}
	}
}
