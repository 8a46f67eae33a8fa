package observe

import (
	"testing"
	"time"
)

func TestIDsUniqueAndOrdered(t *testing.T) {
	fixed := time.Unix(1700000000, 0)
	g := NewIDGen(func() time.Time { return fixed })
	prev := ""
	seen := map[string]bool{}
	for i := 0; i < 200000; i++ {
		id := g.New()
		if len(id) != 16 || seen[id] || id <= prev {
			t.Fatalf("id %d: %q (prev %q, seen %v)", i, id, prev, seen[id])
		}
		seen[id] = true
		prev = id
	}
}
