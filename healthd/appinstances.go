package main

import (
	"strings"
	"sync/atomic"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/berthhq/berth/common/msg"
	"github.com/berthhq/berth/healthd/internal/checker"
)

// instanceStatuses are the status label values of berth_healthd_app_instances.
var instanceStatuses = [3]string{msg.StatusHealthy, msg.StatusUnhealthy, msg.StatusUnknown}

// statusCounts are one app's probed instances by instanceStatuses.
type statusCounts [3]int

// countInstances counts each app's instances that are probed (targets:
// starting or running, with an address, of an app with a health check) by
// the status the health bucket holds for them: the record of the
// instance's generation, else unknown. Every app with a health check is
// counted, at zero when it has no target.
func countInstances(apps map[string]*msg.App, targets []checker.Target, health map[string]*msg.Health) map[string]statusCounts {
	out := make(map[string]statusCounts, len(apps))
	for name, a := range apps {
		if a.Health.IsEnabled() && !a.Health.Scheduled() {
			out[name] = statusCounts{}
		}
	}
	for _, t := range targets {
		app, _, _ := strings.Cut(t.Key, ".")
		c := out[app]
		i := 2 // unknown
		if h, ok := health[t.Key]; ok && h.Generation == t.Generation {
			switch h.Status {
			case msg.StatusHealthy:
				i = 0
			case msg.StatusUnhealthy:
				i = 1
			}
		}
		c[i]++
		out[app] = c
	}
	return out
}

// appInstances exports berth_healthd_app_instances{app,status} from the
// counts last set, at scrape time: an app gone from the counts has no
// series any more. One checker exports them at a time (set nil on the
// others), so that summing over checkers gives the fleet's counts. Safe
// for concurrent use.
type appInstances struct {
	desc   *prometheus.Desc
	counts atomic.Pointer[map[string]statusCounts]
}

var _ prometheus.Collector = (*appInstances)(nil)

func newAppInstances() *appInstances {
	return &appInstances{desc: prometheus.NewDesc("berth_healthd_app_instances",
		"Instances of each app with a health check, by health status (healthy, unhealthy, unknown: not probed yet in its generation); "+
			"exported by one checker at a time, the one that sweeps the health bucket.",
		[]string{"app", "status"}, nil)}
}

// set replaces the counts; nil exports none.
func (a *appInstances) set(counts map[string]statusCounts) {
	if counts == nil {
		a.counts.Store(nil)
		return
	}
	a.counts.Store(&counts)
}

// Describe implements prometheus.Collector.
func (a *appInstances) Describe(ch chan<- *prometheus.Desc) { ch <- a.desc }

// Collect implements prometheus.Collector.
func (a *appInstances) Collect(ch chan<- prometheus.Metric) {
	p := a.counts.Load()
	if p == nil {
		return
	}
	for app, c := range *p {
		for i, status := range instanceStatuses {
			ch <- prometheus.MustNewConstMetric(a.desc, prometheus.GaugeValue, float64(c[i]), app, status)
		}
	}
}
