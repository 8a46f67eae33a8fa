package observe

import (
	"testing"

	"github.com/prometheus/client_golang/prometheus"
)

func TestDestinationsBounded(t *testing.T) {
	d := NewDestinations(2)
	for _, c := range []struct{ dest, result string }{
		{"a.test", "sent"}, {"a.test", "sent"}, {"b.test", "deferred"},
		{"c.test", "sent"}, {"d.test", "failed"}, {"a.test", "failed"},
	} {
		d.Count(c.dest, c.result)
	}
	for _, c := range []struct {
		dest, result string
		want         int64
	}{
		{"a.test", "sent", 2}, {"a.test", "failed", 1}, {"b.test", "deferred", 1},
		{"c.test", "sent", 0}, {OtherDestination, "sent", 1}, {OtherDestination, "failed", 1},
	} {
		if got := d.Value(c.dest, c.result); got != c.want {
			t.Errorf("%s %s: %d, want %d", c.dest, c.result, got, c.want)
		}
	}
	reg := prometheus.NewRegistry()
	reg.MustRegister(d)
	mfs, err := reg.Gather()
	if err != nil || len(mfs) != 1 || len(mfs[0].Metric) != 5 {
		t.Fatalf("gather: %v %v", err, mfs)
	}
	if mfs[0].GetName() != "postamt_delivery_attempts_by_destination_total" {
		t.Fatal(mfs[0].GetName())
	}
}
