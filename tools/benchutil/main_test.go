package main

import (
	"os"
	"testing"
)

func TestMedian(t *testing.T) {
	cases := []struct {
		in   []float64
		want float64
	}{
		{nil, 0}, {[]float64{3}, 3}, {[]float64{5, 1, 3}, 3}, {[]float64{4, 1, 3, 2}, 2.5},
	}
	for _, c := range cases {
		if got := median(c.in); got != c.want {
			t.Errorf("median(%v) = %v, want %v", c.in, got, c.want)
		}
	}
}

func TestReadStatOfSelf(t *testing.T) {
	s, err := readStat(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	if s.ppid != os.Getppid() || s.rssPages <= 0 || s.kthread {
		t.Errorf("unexpected stat for self: %+v", s)
	}
	ps := tree(os.Getpid(), allStats())
	if len(ps) == 0 || ps[0].pid != os.Getpid() {
		t.Errorf("tree of self does not start with self: %+v", ps)
	}
	if kb := treeRSSKB(ps); kb <= 0 {
		t.Errorf("rss of self = %d KiB", kb)
	}
}
