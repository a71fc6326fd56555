package controller

import (
	"github.com/berthhq/berth/common/msg"
	"github.com/berthhq/berth/scheduler/internal/reconcile"
	"github.com/prometheus/client_golang/prometheus"
)

// metrics are the leader's view of the data plane for Prometheus. A
// follower exports none of the per-app series (they are reset when Run
// returns, or a cycle finds the replica not leading), so summing over
// replicas stays right.
type metrics struct {
	actions  *prometheus.CounterVec
	desired  *prometheus.GaugeVec
	ready    *prometheus.GaugeVec
	cycles   *prometheus.CounterVec
	duration prometheus.Histogram
}

func newMetrics() *metrics {
	return &metrics{
		actions: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "berth_scheduler_actions_total",
			Help: "Container actions the leader took, by kind (start, stop, replace, …) and result (ok, error)."}, []string{"kind", "result"}),
		desired: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "berth_scheduler_app_desired_replicas",
			Help: "Replicas each app should run."}, []string{"app"}),
		ready: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "berth_scheduler_app_ready_replicas",
			Help: "Instances of each app that are running and healthy."}, []string{"app"}),
		cycles: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "berth_scheduler_reconcile_cycles_total",
			Help: "Observe-plan-act cycles of the leader, by result (ok, error)."}, []string{"result"}),
		duration: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "berth_scheduler_reconcile_duration_seconds",
			Help: "Time of one observe-plan-act cycle, actions included.", Buckets: prometheus.ExponentialBuckets(0.001, 4, 9)}),
	}
}

// Collectors returns the controller's metrics for a registry.
func (c *Controller) Collectors() []prometheus.Collector {
	m := c.metrics
	return []prometheus.Collector{m.actions, m.desired, m.ready, m.cycles, m.duration}
}

// observeApps sets the per-app gauges from a cycle's input.
func (m *metrics) observeApps(in reconcile.Input) {
	ready := map[string]int{}
	for _, o := range in.Instances {
		if o.State == msg.StateRunning && !o.ContainerGone && o.Health == msg.StatusHealthy {
			ready[o.App]++
		}
	}
	m.desired.Reset()
	m.ready.Reset()
	for app, d := range in.Apps {
		m.desired.WithLabelValues(app).Set(float64(d.Replicas))
		m.ready.WithLabelValues(app).Set(float64(ready[app]))
	}
}

// following clears the per-app gauges: only the leader exports them.
func (m *metrics) following() {
	m.desired.Reset()
	m.ready.Reset()
}

func (m *metrics) action(kind reconcile.Kind, err error) {
	m.actions.WithLabelValues(string(kind), result(err)).Inc()
}

func result(err error) string {
	if err != nil {
		return "error"
	}
	return "ok"
}
