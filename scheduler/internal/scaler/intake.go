package scaler

import (
	"sync"
	"time"

	"github.com/berthhq/berth/common/msg"
	"github.com/berthhq/berth/scheduler/internal/autoscale"
)

// maxSamplesPerApp bounds the memory one app's samples can take (a
// thousand instances read every 5 s for a 60 s window is 12,000).
const maxSamplesPerApp = 50000

// maxInterned bounds an app's interned ids.
const maxInterned = 10000

// intake keeps every app's recent load samples: traffic windows from each
// lbagent (berth.v1.metrics.<app>) and CPU and memory readings from the
// leader's Docker stats (berth.v1.usage.<app>). Every replica keeps them,
// so a new leader decides with the window its predecessor had. Safe for
// concurrent use.
type intake struct {
	mu   sync.Mutex
	apps map[string]*appSamples
}

type appSamples struct {
	traffic []autoscale.Traffic
	usage   []autoscale.Usage
	// ids interns instance and node ids: Decide compares them for every
	// sample, and equal strings that share their bytes compare at once.
	ids map[string]string
}

// intern returns the app's one copy of s.
func (a *appSamples) intern(s string) string {
	if v, ok := a.ids[s]; ok {
		return v
	}
	if a.ids == nil {
		a.ids = map[string]string{}
	}
	a.ids[s] = s
	return s
}

func newIntake() *intake { return &intake{apps: map[string]*appSamples{}} }

func (in *intake) app(name string) *appSamples {
	a := in.apps[name]
	if a == nil {
		a = &appSamples{}
		in.apps[name] = a
	}
	return a
}

// addTraffic keeps one lbagent window; its time is the window's end.
func (in *intake) addTraffic(m *msg.Metrics) {
	in.mu.Lock()
	defer in.mu.Unlock()
	a := in.app(m.App)
	a.traffic = capped(append(a.traffic, autoscale.Traffic{Node: a.intern(m.Node), At: m.WindowStart.Add(m.Window.Std()), RPS: m.RPS, Latency: m.LatencyHistogram}))
}

// addUsage keeps one stats round of an app.
func (in *intake) addUsage(m *msg.Usage) {
	in.mu.Lock()
	defer in.mu.Unlock()
	a := in.app(m.App)
	for _, u := range m.Instances {
		a.usage = append(a.usage, autoscale.Usage{Instance: a.intern(u.Instance), At: m.At, CPUPercent: u.CPUPercent, MemoryPercent: u.MemoryPercent})
	}
	a.usage = capped(a.usage)
}

// internID returns the app's interned copy of an instance id, so that the
// instances given to Decide share their bytes with the samples' ids.
func (in *intake) internID(app, id string) string {
	in.mu.Lock()
	defer in.mu.Unlock()
	if a := in.apps[app]; a != nil {
		return a.intern(id)
	}
	return id
}

// samples returns copies of app's samples taken after since.
func (in *intake) samples(app string, since time.Time) (traffic []autoscale.Traffic, usage []autoscale.Usage) {
	in.mu.Lock()
	defer in.mu.Unlock()
	a := in.apps[app]
	if a == nil {
		return nil, nil
	}
	for _, t := range a.traffic {
		if t.At.After(since) {
			traffic = append(traffic, t)
		}
	}
	for _, u := range a.usage {
		if u.At.After(since) {
			usage = append(usage, u)
		}
	}
	return traffic, usage
}

// prune drops samples older than each app's keep horizon, and apps not in
// keep at all (deleted, or not autoscaled).
func (in *intake) prune(now time.Time, keep map[string]time.Duration) {
	in.mu.Lock()
	defer in.mu.Unlock()
	for name, a := range in.apps {
		horizon, ok := keep[name]
		if !ok {
			delete(in.apps, name)
			continue
		}
		cut := now.Add(-horizon)
		if len(a.ids) > maxInterned { // mostly ids of instances long gone: start afresh
			a.ids = nil
		}
		a.traffic = dropBefore(a.traffic, cut, func(t autoscale.Traffic) time.Time { return t.At })
		a.usage = dropBefore(a.usage, cut, func(u autoscale.Usage) time.Time { return u.At })
	}
}

// dropBefore removes the leading samples older than cut (samples arrive
// roughly in time order; a late one is dropped on a later prune).
func dropBefore[T any](s []T, cut time.Time, at func(T) time.Time) []T {
	i := 0
	for i < len(s) && at(s[i]).Before(cut) {
		i++
	}
	if i == 0 {
		return s
	}
	return append(s[:0:0], s[i:]...)
}

func capped[T any](s []T) []T {
	if len(s) > maxSamplesPerApp {
		return append(s[:0:0], s[len(s)-maxSamplesPerApp:]...)
	}
	return s
}
