package spool

import (
	"bytes"
	"io"
	"strings"
	"testing"
)

func TestOverwrite(t *testing.T) {
	s, err := New(t.TempDir(), nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, size := range []int{100, InlineMax + 5000} {
		w, _ := s.Create("id" + strings.Repeat("x", size%7))
		body := []byte("Name: v\r\n" + strings.Repeat("a", size))
		w.Write(body)
		if err := w.Overwrite(0, []byte("NAME")); err != nil {
			t.Fatal(err)
		}
		if err := w.Overwrite(int64(len(body)-1), []byte("bc")); err == nil {
			t.Errorf("size %d: overwrite past the end accepted", size)
		}
		w.Prepend([]byte("X: 1\r\n"))
		r, err := w.Reader()
		if err != nil {
			t.Fatal(err)
		}
		got, _ := io.ReadAll(r)
		r.Close()
		want := append([]byte("X: 1\r\nNAME: v\r\n"), body[9:]...)
		if !bytes.Equal(got, want) {
			t.Errorf("size %d: read back %q...", size, got[:min(len(got), 40)])
		}
		if _, inline := w.Inline(); inline != (size < InlineMax) {
			t.Errorf("size %d: inline %v", size, inline)
		}
		if err := w.Commit(); err != nil {
			t.Fatal(err)
		}
		w.Abort()
	}
}
