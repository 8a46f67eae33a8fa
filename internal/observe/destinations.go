package observe

import (
	"sync"
	"sync/atomic"

	"github.com/prometheus/client_golang/prometheus"
)

// OtherDestination labels the attempts of destinations past the cardinality bound.
const OtherDestination = "_other"

// Destinations counts delivery attempt outcomes per destination with bounded cardinality: the
// first Max destinations seen get their own label, all later ones share OtherDestination.
// A top-N that evicts would make a series drop and come back, which Prometheus reads as a
// counter reset; first-come keeps every series monotonic, and on a real server the busy
// destinations show up within minutes of start. The label set is therefore at most
// (Max+1) × results, whatever a spammer's recipient list looks like.
type Destinations struct {
	Max int

	mu     sync.Mutex
	counts map[destKey]*atomic.Int64
	names  map[string]bool
	desc   *prometheus.Desc
}

type destKey struct{ dest, result string }

// NewDestinations makes a collector for at most max named destinations.
func NewDestinations(max int) *Destinations {
	return &Destinations{
		Max:    max,
		counts: map[destKey]*atomic.Int64{},
		names:  map[string]bool{},
		desc: prometheus.NewDesc("postamt_delivery_attempts_by_destination_total",
			"Delivery attempt outcomes per recipient, by destination (remote domain or relay host; the transport name for local delivery). "+
				"Destinations past the first few are counted as "+OtherDestination+".",
			[]string{"destination", "result"}, nil),
	}
}

// Count records one outcome (sent, deferred, failed) for dest.
func (d *Destinations) Count(dest, result string) {
	d.mu.Lock()
	if !d.names[dest] {
		if len(d.names) < d.Max {
			d.names[dest] = true
		} else {
			dest = OtherDestination
		}
	}
	k := destKey{dest, result}
	c := d.counts[k]
	if c == nil {
		c = &atomic.Int64{}
		d.counts[k] = c
	}
	d.mu.Unlock()
	c.Add(1)
}

// Value reads one counter, for tests.
func (d *Destinations) Value(dest, result string) int64 {
	d.mu.Lock()
	defer d.mu.Unlock()
	if c := d.counts[destKey{dest, result}]; c != nil {
		return c.Load()
	}
	return 0
}

// Describe implements prometheus.Collector.
func (d *Destinations) Describe(ch chan<- *prometheus.Desc) { ch <- d.desc }

// Collect implements prometheus.Collector.
func (d *Destinations) Collect(ch chan<- prometheus.Metric) {
	d.mu.Lock()
	defer d.mu.Unlock()
	for k, c := range d.counts {
		ch <- prometheus.MustNewConstMetric(d.desc, prometheus.CounterValue, float64(c.Load()), k.dest, k.result)
	}
}
