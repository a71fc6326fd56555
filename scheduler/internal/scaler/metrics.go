package scaler

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/berthhq/berth/scheduler/internal/autoscale"
)

// metrics are the autoscaler's for Prometheus. A follower exports none of
// the per-app gauges (they are reset when a round finds the replica not
// leading), so summing over replicas stays right.
type metrics struct {
	value, target  *prometheus.GaugeVec
	recommended    *prometheus.GaugeVec
	maxReplicas    *prometheus.GaugeVec
	changes        *prometheus.CounterVec
	samplesDropped prometheus.Counter
	scaleDuration  prometheus.Histogram
}

func newMetrics() *metrics {
	return &metrics{
		value: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "berth_scheduler_autoscale_metric_value",
			Help: "Current value of each configured scaling metric per app (cpu and memory: mean percent of the limit; rps: per replica; latency: p95 ms), as the last decision saw it."}, []string{"app", "metric"}),
		target: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "berth_scheduler_autoscale_metric_target",
			Help: "Target of each configured scaling metric per app."}, []string{"app", "metric"}),
		recommended: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "berth_scheduler_autoscale_recommended_replicas",
			Help: "Replicas the metrics recommend per app, before stabilisation, rate limits and cooldowns."}, []string{"app"}),
		maxReplicas: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "berth_scheduler_autoscale_max_replicas",
			Help: "scaling.max of each autoscaled app (alert when desired replicas stay at it)."}, []string{"app"}),
		changes: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "berth_scheduler_autoscale_changes_total",
			Help: "Replica count changes the autoscaler made, by direction (up, down)."}, []string{"direction"}),
		samplesDropped: prometheus.NewCounter(prometheus.CounterOpts{Name: "berth_scheduler_autoscale_samples_dropped_total",
			Help: "Metrics and usage messages refused by the autoscaler's intake (malformed, invalid, or for another app than their subject)."}),
		scaleDuration: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "berth_scheduler_autoscale_round_duration_seconds",
			Help: "Time of one autoscaler round over every autoscaled app, writes included.", Buckets: prometheus.ExponentialBuckets(0.001, 4, 9)}),
	}
}

// Collectors returns the autoscaler's metrics for a registry.
func (s *Scaler) Collectors() []prometheus.Collector {
	m := s.metrics
	return []prometheus.Collector{m.value, m.target, m.recommended, m.maxReplicas, m.changes, m.samplesDropped, m.scaleDuration}
}

// resetScaling clears the per-app autoscaler gauges (each round sets them
// again; a follower exports none).
func (m *metrics) resetScaling() {
	m.value.Reset()
	m.target.Reset()
	m.recommended.Reset()
	m.maxReplicas.Reset()
}

// observeDecision sets an app's autoscaler gauges from its decision.
func (m *metrics) observeDecision(app string, p autoscale.Policy, d autoscale.Decision) {
	m.maxReplicas.WithLabelValues(app).Set(float64(p.Max))
	for _, r := range d.Reasons {
		if !r.NoData {
			m.value.WithLabelValues(app, r.Metric).Set(r.Value)
		}
		m.target.WithLabelValues(app, r.Metric).Set(r.Target)
	}
	m.recommended.WithLabelValues(app).Set(float64(d.Recommendation))
}

func (m *metrics) scaleChange(from, to int) {
	dir := "up"
	if to < from {
		dir = "down"
	}
	m.changes.WithLabelValues(dir).Inc()
}
