package supervisor

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/sluice-io/sluice/source"
)

// Metrics are the supervisor's Prometheus metrics. Per-source series carry
// the labels project_id, source_id and broker, never anything unbounded.
type Metrics struct {
	received     *prometheus.CounterVec
	dispatched   *prometheus.CounterVec
	duplicates   *prometheus.CounterVec
	deadLettered *prometheus.CounterVec
	failures     *prometheus.CounterVec
	batchSize    *prometheus.HistogramVec
	latency      *prometheus.HistogramVec
	inFlight     *prometheus.GaugeVec
	workers      *prometheus.GaugeVec
	reconcile    prometheus.Histogram
	reconcileErr prometheus.Counter
	lag          *prometheus.Desc
	sup          *Supervisor
}

var sourceLabelNames = []string{"project_id", "source_id", "broker"}

// NewMetrics creates the supervisor's metrics and registers them with reg.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	counter := func(name, help string, extra ...string) *prometheus.CounterVec {
		return prometheus.NewCounterVec(prometheus.CounterOpts{Name: name, Help: help}, append(sourceLabelNames[:3:3], extra...))
	}
	m := &Metrics{
		received:     counter("sluice_messages_received_total", "Messages received and settled: dispatched + duplicate + dead-lettered."),
		dispatched:   counter("sluice_messages_dispatched_total", "Messages written to the dispatch stream."),
		duplicates:   counter("sluice_messages_duplicate_total", "Redelivered messages skipped because the dispatch stream already holds them."),
		deadLettered: counter("sluice_messages_dead_lettered_total", "Malformed messages dead-lettered, by reason class.", "reason"),
		failures:     counter("sluice_transient_failures_total", "Batches that failed transiently (not acked, retried)."),
		batchSize: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "sluice_batch_size",
			Help:    "Messages per batch handed to the dispatch queue.",
			Buckets: []float64{1, 2, 5, 10, 20, 50, 100, 200, 500},
		}, sourceLabelNames),
		latency: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "sluice_dispatch_latency_seconds",
			Help:    "Time from the broker accepting a message to its dispatch entry being written.",
			Buckets: prometheus.ExponentialBuckets(0.001, 2.5, 12),
		}, sourceLabelNames),
		inFlight: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "sluice_messages_in_flight",
			Help: "Messages handed over and not yet settled.",
		}, sourceLabelNames),
		workers: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "sluice_workers",
			Help: "Workers by state.",
		}, append(sourceLabelNames[:3:3], "state")),
		reconcile: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "sluice_reconcile_duration_seconds",
			Help:    "Duration of the supervisor's reconciles of desired and running sources.",
			Buckets: prometheus.ExponentialBuckets(0.001, 4, 8),
		}),
		reconcileErr: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "sluice_reconcile_failures_total",
			Help: "Reconciles that could not read the source definitions.",
		}),
		lag: prometheus.NewDesc("sluice_consumer_lag",
			"Messages waiting on the broker (Kafka lag, SQS backlog, AMQP queue depth), where the broker reports it.",
			sourceLabelNames, nil),
	}
	if reg != nil {
		reg.MustRegister(m.received, m.dispatched, m.duplicates, m.deadLettered, m.failures,
			m.batchSize, m.latency, m.inFlight, m.workers, m.reconcile, m.reconcileErr, lagCollector{m})
	}
	return m
}

// lagCollector reports the consumers' lag at scrape time.
type lagCollector struct{ m *Metrics }

func (c lagCollector) Describe(ch chan<- *prometheus.Desc) { ch <- c.m.lag }

func (c lagCollector) Collect(ch chan<- prometheus.Metric) {
	s := c.m.sup
	if s == nil {
		return
	}
	s.mu.Lock()
	runners := make([]*runner, 0, len(s.running))
	for _, r := range s.running {
		runners = append(runners, r)
	}
	s.mu.Unlock()
	for _, r := range runners {
		var total int64
		var known bool
		for _, w := range r.workers {
			if st := w.snapshot(); st.Lag != nil {
				total += *st.Lag
				known = true
			}
		}
		if known {
			ch <- prometheus.MustNewConstMetric(c.m.lag, prometheus.GaugeValue, float64(total),
				r.src.ProjectID, r.src.UID, r.src.PubSub.Type)
		}
	}
}

// sourceMetrics are the metrics of one source, labels bound.
type sourceMetrics struct {
	m            *Metrics
	values       []string
	received     prometheus.Counter
	dispatched   prometheus.Counter
	duplicates   prometheus.Counter
	deadLettered *prometheus.CounterVec
	failures     prometheus.Counter
	batchSize    prometheus.Observer
	latency      prometheus.Observer
	inFlight     prometheus.Gauge
}

func (m *Metrics) sourceLabels(src source.Source) *sourceMetrics {
	v := []string{src.ProjectID, src.UID, src.PubSub.Type}
	l := prometheus.Labels{"project_id": v[0], "source_id": v[1], "broker": v[2]}
	return &sourceMetrics{
		m:            m,
		values:       v,
		received:     m.received.WithLabelValues(v...),
		dispatched:   m.dispatched.WithLabelValues(v...),
		duplicates:   m.duplicates.WithLabelValues(v...),
		deadLettered: m.deadLettered.MustCurryWith(l),
		failures:     m.failures.WithLabelValues(v...),
		batchSize:    m.batchSize.WithLabelValues(v...),
		latency:      m.latency.WithLabelValues(v...),
		inFlight:     m.inFlight.WithLabelValues(v...),
	}
}

// setState moves one worker from the old state's gauge to the new one's.
func (sm *sourceMetrics) setState(old, st State) {
	if old != "" {
		sm.m.workers.WithLabelValues(append(sm.values[:3:3], string(old))...).Dec()
	}
	sm.m.workers.WithLabelValues(append(sm.values[:3:3], string(st))...).Inc()
}

// forget removes the series of a source that is no longer consumed.
func (m *Metrics) forget(src source.Source) {
	l := prometheus.Labels{"project_id": src.ProjectID, "source_id": src.UID}
	for _, v := range []interface{ DeletePartialMatch(prometheus.Labels) int }{
		m.received, m.dispatched, m.duplicates, m.deadLettered, m.failures,
		m.batchSize, m.latency, m.inFlight, m.workers,
	} {
		v.DeletePartialMatch(l)
	}
}

func (m *Metrics) reconciled(start time.Time, err error) {
	m.reconcile.Observe(time.Since(start).Seconds())
	if err != nil {
		m.reconcileErr.Inc()
	}
}
