package scaler

import (
	"fmt"
	"sync"
	"time"
	"unsafe"

	"github.com/berthhq/berth/common/msg"
	"github.com/berthhq/berth/scheduler/internal/autoscale"
)

// maxSamplesPerApp bounds the memory one app's samples can take (a
// thousand instances read every 5 s for a 60 s window is 12,000).
const maxSamplesPerApp = 50000

// maxInterned bounds an app's interned ids.
const maxInterned = 10000

// maxBytesPerApp bounds the memory of one app's samples, histograms
// included: a sender that floods an app with samples of 4,096 bins each
// pushes its own oldest samples out instead of growing the heap.
const maxBytesPerApp = 16 << 20

// window is where a node's last traffic window ended, and its length.
type window struct {
	end    time.Time
	length time.Duration
}

// overlapSlack is the most a node's window may start before its previous
// one ended (a quarter of that window at most) and still count as the next.
const overlapSlack = 500 * time.Millisecond

// maxFutureSkew is how far past this replica's clock a sample's time may
// be: a sample from the future would outlive every prune (they cut by
// time) and weigh in every decision until then.
const maxFutureSkew = 5 * time.Second

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
	// bytes estimates the memory of traffic and usage (sizeOf).
	bytes int
	// windowEnd is, by node, where its last traffic window ended: a node
	// has one sample per window, so a window that starts before it (a
	// replay, a duplicate, a second sender with the same node id) is refused.
	windowEnd map[string]window
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

// addTraffic keeps one lbagent window; its time is the window's end. It
// refuses a window that ends in the future (beyond maxFutureSkew) or that
// overlaps the node's previous one.
func (in *intake) addTraffic(m *msg.Metrics, now time.Time) error {
	end := m.WindowStart.Add(m.Window.Std())
	if end.After(now.Add(maxFutureSkew)) {
		return fmt.Errorf("window ends %s after this replica's clock (at most %s)", end.Sub(now).Round(time.Millisecond), maxFutureSkew)
	}
	in.mu.Lock()
	defer in.mu.Unlock()
	a := in.app(m.App)
	node := a.intern(m.Node)
	// lbagent's windows are contiguous, but a window's end is its wall-clock
	// start plus a monotonic length, so the next may start a hair before it.
	if last, ok := a.windowEnd[node]; ok && m.WindowStart.Before(last.end.Add(-min(overlapSlack, last.length/4))) {
		return fmt.Errorf("node %s: window starting %s overlaps its previous one, which ended %s",
			node, m.WindowStart.UTC().Format(time.RFC3339Nano), last.end.UTC().Format(time.RFC3339Nano))
	}
	if a.windowEnd == nil {
		a.windowEnd = map[string]window{}
	}
	a.windowEnd[node] = window{end: end, length: m.Window.Std()}
	t := autoscale.Traffic{Node: node, At: end, RPS: m.RPS, Latency: m.LatencyHistogram}
	a.traffic = append(a.traffic, t)
	a.bytes += sizeOf(t)
	a.bound()
	return nil
}

// addUsage keeps one stats round of an app; a round from the future
// (beyond maxFutureSkew) is refused.
func (in *intake) addUsage(m *msg.Usage, now time.Time) error {
	if m.At.After(now.Add(maxFutureSkew)) {
		return fmt.Errorf("reading taken %s after this replica's clock (at most %s)", m.At.Sub(now).Round(time.Millisecond), maxFutureSkew)
	}
	in.mu.Lock()
	defer in.mu.Unlock()
	a := in.app(m.App)
	for _, u := range m.Instances {
		a.usage = append(a.usage, autoscale.Usage{Instance: a.intern(u.Instance), At: m.At, CPUPercent: u.CPUPercent, MemoryPercent: u.MemoryPercent})
		a.bytes += usageSize
	}
	a.bound()
	return nil
}

// bound drops the oldest samples, traffic first, while the app holds more
// than maxSamplesPerApp of a kind or maxBytesPerApp in all.
func (a *appSamples) bound() {
	t, u := 0, 0
	for t < len(a.traffic) && (a.bytes > maxBytesPerApp || len(a.traffic)-t > maxSamplesPerApp) {
		a.bytes -= sizeOf(a.traffic[t])
		t++
	}
	for u < len(a.usage) && (a.bytes > maxBytesPerApp || len(a.usage)-u > maxSamplesPerApp) {
		a.bytes -= usageSize
		u++
	}
	if t > 0 {
		a.traffic = append(a.traffic[:0:0], a.traffic[t:]...)
	}
	if u > 0 {
		a.usage = append(a.usage[:0:0], a.usage[u:]...)
	}
}

// usageSize estimates one usage sample's memory.
const usageSize = int(unsafe.Sizeof(autoscale.Usage{}))

// sizeOf estimates one traffic sample's memory, its histogram's bins included.
func sizeOf(t autoscale.Traffic) int {
	n := int(unsafe.Sizeof(t))
	if t.Latency != nil {
		n += int(unsafe.Sizeof(*t.Latency)) + len(t.Latency.Bins)*int(unsafe.Sizeof([2]float64{}))
	}
	return n
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
		a.bytes = len(a.usage) * usageSize
		for _, t := range a.traffic {
			a.bytes += sizeOf(t)
		}
		for node, w := range a.windowEnd {
			if w.end.Before(cut) { // a node gone quiet: forget it, bounding the map
				delete(a.windowEnd, node)
			}
		}
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
