package observe

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Counter is a value read at scrape time. Components keep plain atomic counters on their hot
// paths; the metrics endpoint reads them, so nothing on the mail path touches Prometheus.
type Counter struct {
	Name, Help string
	Labels     prometheus.Labels
	Gauge      bool
	Value      func() float64
}

// Histograms are the latency distributions the components report into.
type Histograms struct {
	commit  prometheus.Histogram
	attempt *prometheus.HistogramVec
}

// NewHistograms creates the latency histograms.
func NewHistograms() *Histograms {
	return &Histograms{
		commit: prometheus.NewHistogram(prometheus.HistogramOpts{Namespace: "postamt", Name: "smtp_commit_seconds",
			Help:    "End of message data to durable queue commit (the wait before the 250 reply).",
			Buckets: []float64{.0005, .001, .002, .005, .01, .02, .05, .1, .2, .5, 1, 2}}),
		attempt: prometheus.NewHistogramVec(prometheus.HistogramOpts{Namespace: "postamt", Name: "delivery_attempt_seconds",
			Help:    "Duration of one delivery attempt, by transport.",
			Buckets: []float64{.001, .005, .01, .05, .1, .5, 1, 5, 10, 30, 60}}, []string{"transport"}),
	}
}

// Commit records one commit latency.
func (h *Histograms) Commit(d time.Duration) { h.commit.Observe(d.Seconds()) }

// Attempt records one delivery attempt's duration.
func (h *Histograms) Attempt(transport string, d time.Duration) {
	h.attempt.WithLabelValues(transport).Observe(d.Seconds())
}

// MetricsServer serves /metrics, /healthz and /readyz.
type MetricsServer struct {
	srv   *http.Server
	ln    net.Listener
	ready func() error
}

// NewMetricsServer registers the counters and listens on addr.
// extra are further collectors, such as Destinations.
func NewMetricsServer(addr string, counters []Counter, hist *Histograms, ready func() error, log *slog.Logger, extra ...prometheus.Collector) (*MetricsServer, error) {
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	reg.MustRegister(extra...)
	if hist != nil {
		reg.MustRegister(hist.commit, hist.attempt)
	}
	for _, c := range counters {
		opts := prometheus.Opts{Namespace: "postamt", Name: c.Name, Help: c.Help, ConstLabels: c.Labels}
		if c.Gauge {
			reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts(opts), c.Value))
		} else {
			reg.MustRegister(prometheus.NewCounterFunc(prometheus.CounterOpts(opts), c.Value))
		}
	}
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) { w.Write([]byte("ok\n")) })
	mux.HandleFunc("/readyz", func(w http.ResponseWriter, _ *http.Request) {
		if err := ready(); err != nil {
			http.Error(w, "not ready: "+err.Error(), http.StatusServiceUnavailable)
			return
		}
		w.Write([]byte("ready\n"))
	})
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, err
	}
	m := &MetricsServer{srv: &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}, ln: ln, ready: ready}
	go func() {
		if err := m.srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Error("metrics server", "err", err)
		}
	}()
	log.Info("listening", "addr", ln.Addr().String(), "service", "metrics")
	return m, nil
}

// Addr is the bound address.
func (m *MetricsServer) Addr() net.Addr { return m.ln.Addr() }

// Close stops the server.
func (m *MetricsServer) Close(ctx context.Context) error { return m.srv.Shutdown(ctx) }
