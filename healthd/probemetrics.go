package main

import (
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"

	"github.com/berthhq/berth/healthd/internal/checker"
)

// OtherApps is the app label of the probes of apps beyond
// --metrics-max-apps: no app is named so (a name is a DNS label), and the
// sum over every app stays the checker's total.
const OtherApps = "_other"

// maxMetricsApps bounds --metrics-max-apps: each app has 17 series (14
// buckets, +Inf, sum and count).
const maxMetricsApps = 100000

// probeDurations exports berth_healthd_probe_duration_seconds{app}: at
// most max apps have series of their own, the first to be probed, and the
// others are observed under app OtherApps and counted in
// berth_healthd_metrics_apps_dropped. An app that is no longer a target
// loses its series (retain). Safe for concurrent use.
type probeDurations struct {
	vec     *prometheus.HistogramVec
	dropped prometheus.Gauge
	max     int
	logger  *zap.Logger
	now     func() time.Time

	mu      sync.RWMutex
	apps    map[string]prometheus.Observer
	other   prometheus.Observer
	refused map[string]struct{}
	logged  time.Time
}

func newProbeDurations(maxApps int, logger *zap.Logger) *probeDurations {
	vec := prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "berth_healthd_probe_duration_seconds",
		Help:    "Probe duration, retries included, by app (apps beyond --metrics-max-apps together under app=\"_other\").",
		Buckets: prometheus.ExponentialBuckets(0.0005, 2, 14)}, []string{"app"})
	return &probeDurations{vec: vec, max: maxApps, logger: logger, now: time.Now,
		dropped: prometheus.NewGauge(prometheus.GaugeOpts{Name: "berth_healthd_metrics_apps_dropped",
			Help: "Apps whose probe durations have no series of their own because --metrics-max-apps apps have them: they are observed under app=\"_other\"."}),
		apps: map[string]prometheus.Observer{}, refused: map[string]struct{}{}}
}

func (d *probeDurations) collectors() []prometheus.Collector {
	return []prometheus.Collector{d.vec, d.dropped}
}

// observe records one probe of key ("<app>.<instance>").
func (d *probeDurations) observe(key string, seconds float64) {
	app, _, _ := strings.Cut(key, ".")
	d.mu.RLock()
	o, ok := d.apps[app]
	d.mu.RUnlock()
	if !ok {
		o = d.admit(app)
	}
	o.Observe(seconds)
}

// admit gives app its series while the cap allows, else the others'.
func (d *probeDurations) admit(app string) prometheus.Observer {
	d.mu.Lock()
	defer d.mu.Unlock()
	if o, ok := d.apps[app]; ok {
		return o
	}
	if len(d.apps) < d.max {
		o := d.vec.WithLabelValues(app)
		d.apps[app] = o
		return o
	}
	if d.other == nil {
		d.other = d.vec.WithLabelValues(OtherApps)
	}
	if _, ok := d.refused[app]; !ok {
		d.refused[app] = struct{}{}
		d.dropped.Set(float64(len(d.refused)))
		if now := d.now(); now.Sub(d.logged) >= time.Minute {
			d.logged = now
			d.logger.Warn("apps beyond --metrics-max-apps have no probe duration series of their own: raise it, or read them under app=\""+OtherApps+"\"",
				zap.Int("max_apps", d.max), zap.Int("apps_refused", len(d.refused)), zap.String("app", app))
		}
	}
	return d.other
}

// retain deletes the series of every app not in apps (the apps this
// checker probes), and forgets the refused apps gone too, so that a slot
// freed goes to the next app probed.
func (d *probeDurations) retain(apps map[string]bool) {
	d.mu.Lock()
	defer d.mu.Unlock()
	for app := range d.apps {
		if !apps[app] {
			d.vec.DeleteLabelValues(app)
			delete(d.apps, app)
		}
	}
	for app := range d.refused {
		if !apps[app] || len(d.apps) < d.max {
			delete(d.refused, app) // gone, or admitted at its next probe
		}
	}
	if len(d.refused) == 0 && d.other != nil {
		d.vec.DeleteLabelValues(OtherApps)
		d.other = nil
	}
	d.dropped.Set(float64(len(d.refused)))
}

// appsOf returns the apps of targets.
func appsOf(targets []checker.Target) map[string]bool {
	out := map[string]bool{}
	for _, t := range targets {
		app, _, _ := strings.Cut(t.Key, ".")
		out[app] = true
	}
	return out
}
