// Package metric owns the lbagent's Prometheus metrics: reloads and their
// durations, the applied revision and generation, what nginx serves, held
// snapshots, the counters other components keep (dropped NATS values,
// fenced writes, unparsable access log lines), read when scraped, and each
// app's traffic from the access log (AppTraffic), with bounded labels.
package metric

import (
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/berthhq/berth/common/msg"
	"github.com/berthhq/berth/lbagent/internal/report"
)

// Sources are values other components own, read at each scrape. A nil
// function reads as zero. They are called from the scraping goroutine, so
// they must be safe for concurrent use.
type Sources struct {
	// Generation is the config generation nginx serves.
	Generation func() uint64
	// Dropped counts NATS values that failed to decode or validate.
	Dropped func() uint64
	// Unsealed counts NATS values and messages dropped because their owner
	// had not sealed them (forgeries).
	Unsealed func() uint64
	// Fenced counts writes dropped for a lower leader term.
	Fenced func() uint64
	// AccessInvalid counts access log datagrams that failed to parse.
	AccessInvalid func() uint64
}

// Set is the lbagent's metrics in their own registry. It is safe for
// concurrent use.
type Set struct {
	reg         *prometheus.Registry
	reloads     *prometheus.CounterVec
	duration    prometheus.Histogram
	revision    prometheus.Gauge
	lastSuccess prometheus.Gauge
	appErrors   *prometheus.CounterVec
	apps        prometheus.Gauge
	servers     prometheus.Gauge
	render      prometheus.Histogram
	held        prometheus.Gauge
	mode        *prometheus.GaugeVec
	pushes      *prometheus.CounterVec
	pushTime    prometheus.Histogram
	confirmWait prometheus.Gauge
	served      prometheus.Histogram
}

var _ report.Observer = (*Set)(nil)

// New registers the metrics, reading src at each scrape.
func New(src Sources) *Set {
	m := &Set{
		reg:         prometheus.NewRegistry(),
		reloads:     prometheus.NewCounterVec(prometheus.CounterOpts{Name: "berth_lbagent_reloads_total", Help: "Config changes by result: applied, skipped, rejected, failed."}, []string{"result"}),
		duration:    prometheus.NewHistogram(prometheus.HistogramOpts{Name: "berth_lbagent_reload_duration_seconds", Help: "Render to confirmed-served time of applied changes.", Buckets: prometheus.ExponentialBuckets(0.005, 2, 12)}),
		revision:    prometheus.NewGauge(prometheus.GaugeOpts{Name: "berth_lbagent_applied_revision", Help: "Instances bucket revision nginx's config reflects."}),
		lastSuccess: prometheus.NewGauge(prometheus.GaugeOpts{Name: "berth_lbagent_last_success_timestamp_seconds", Help: "When a config was last applied."}),
		appErrors:   prometheus.NewCounterVec(prometheus.CounterOpts{Name: "berth_lbagent_nginx_test_failures_total", Help: "Apps whose config nginx -t refused."}, []string{"app"}),
		apps:        prometheus.NewGauge(prometheus.GaugeOpts{Name: "berth_lbagent_apps", Help: "Apps in the applied config."}),
		servers:     prometheus.NewGauge(prometheus.GaugeOpts{Name: "berth_lbagent_servers", Help: "Upstream servers in the applied config."}),
		render:      prometheus.NewHistogram(prometheus.HistogramOpts{Name: "berth_lbagent_render_duration_seconds", Help: "Time to render the whole config.", Buckets: prometheus.ExponentialBuckets(0.0005, 2, 14)}),
		held:        prometheus.NewGauge(prometheus.GaugeOpts{Name: "berth_lbagent_snapshot_held", Help: "1 while a snapshot that removes every server is held back."}),
		mode:        prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "berth_lbagent_upstream_mode", Help: "1 for the upstream mode in use: dynamic (endpoint changes pushed to nginx's Lua balancer, no reload) or reload."}, []string{"mode"}),
		pushes:      prometheus.NewCounterVec(prometheus.CounterOpts{Name: "berth_lbagent_endpoint_pushes_total", Help: "Endpoint batches pushed to nginx in dynamic mode, by result (ok, error)."}, []string{"result"}),
		pushTime:    prometheus.NewHistogram(prometheus.HistogramOpts{Name: "berth_lbagent_endpoint_push_duration_seconds", Help: "Time of one endpoint push, read-back included.", Buckets: prometheus.ExponentialBuckets(0.0001, 2, 14)}),
		confirmWait: prometheus.NewGauge(prometheus.GaugeOpts{Name: "berth_lbagent_confirm_wait_seconds", Help: "How long the last reload is expected to take at most: --confirm-timeout, or 3x the config's nginx -t time or the last reload's time to serve when longer (at most 10 min). Past it the reload is waited for while nginx's master still works on it, then counts as failed."}),
		served:      prometheus.NewHistogram(prometheus.HistogramOpts{Name: "berth_lbagent_reload_served_seconds", Help: "Time from signalling nginx to reload to nginx serving the new generation, of confirmed reloads.", Buckets: prometheus.ExponentialBuckets(0.01, 2, 15)}),
	}
	m.reg.MustRegister(m.reloads, m.duration, m.revision,
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "berth_lbagent_applied_generation", Help: "Config generation nginx serves."}, read(src.Generation)),
		m.lastSuccess, m.appErrors, m.apps, m.servers, m.render, m.held, m.mode, m.pushes, m.pushTime, m.confirmWait, m.served,
		prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "berth_lbagent_invalid_messages_total", Help: "NATS values dropped because they failed to decode or validate."}, read(src.Dropped)),
		prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "berth_lbagent_unsealed_messages_total", Help: "NATS values and messages dropped because their owner had not sealed them: forgeries (docs/nats.md, Sealed records)."}, read(src.Unsealed)),
		prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "berth_lbagent_access_log_invalid_total", Help: "Access log datagrams that failed to parse."}, read(src.AccessInvalid)),
		prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "berth_lbagent_fenced_writes_total", Help: "Writes dropped because they came from a lower leader term."}, read(src.Fenced)),
	)
	return m
}

func read(f func() uint64) func() float64 {
	return func() float64 {
		if f == nil {
			return 0
		}
		return float64(f())
	}
}

// Register adds c (the per-app traffic, AppTraffic) to the metrics.
func (m *Set) Register(c prometheus.Collector) error { return m.reg.Register(c) }

// Handler serves the metrics in the Prometheus text format.
func (m *Set) Handler() http.Handler { return promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{}) }

// Reload counts a config change by result and the apps nginx -t refused;
// an applied or rejected change also sets its duration and the last
// success time.
func (m *Set) Reload(r *msg.Reload) {
	m.reloads.WithLabelValues(r.Result).Inc()
	for app := range r.FailedApps {
		m.appErrors.WithLabelValues(app).Inc()
	}
	if r.Result == msg.ReloadApplied || r.Result == msg.ReloadRejected {
		m.duration.Observe(r.DurationMS / 1000)
		m.lastSuccess.Set(float64(r.At.Unix()))
	}
}

// Applied sets the applied revision.
func (m *Set) Applied(a *msg.Agent) { m.revision.Set(float64(a.AppliedRevision)) }

// Rendered observes one full render's duration.
func (m *Set) Rendered(d time.Duration) { m.render.Observe(d.Seconds()) }

// Held sets whether a snapshot is being held back.
func (m *Set) Held(held bool) {
	if held {
		m.held.Set(1)
	} else {
		m.held.Set(0)
	}
}

// ConfirmWait sets how long the reload just signalled is waited for at most.
func (m *Set) ConfirmWait(d time.Duration) { m.confirmWait.Set(d.Seconds()) }

// ReloadServed observes a confirmed reload's time from the signal to nginx
// serving it.
func (m *Set) ReloadServed(d time.Duration) { m.served.Observe(d.Seconds()) }

// Served sets the apps and servers of the applied config.
func (m *Set) Served(apps, servers int) {
	m.apps.Set(float64(apps))
	m.servers.Set(float64(servers))
}

// Mode sets the upstream mode in use.
func (m *Set) Mode(dynamic bool) {
	m.mode.Reset()
	if dynamic {
		m.mode.WithLabelValues("dynamic").Set(1)
	} else {
		m.mode.WithLabelValues("reload").Set(1)
	}
}

// Pushed counts one endpoint push and observes its duration.
func (m *Set) Pushed(d time.Duration, err error) {
	result := "ok"
	if err != nil {
		result = "error"
	}
	m.pushes.WithLabelValues(result).Inc()
	m.pushTime.Observe(d.Seconds())
}
