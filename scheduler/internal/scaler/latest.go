package scaler

import (
	"sync"
	"time"

	"github.com/berthhq/berth/common/msg"
)

// latestExpiry is how long a node's last window counts after it ended, at
// least: lbagent publishes one each --metrics-window, so a window three
// lengths old means that lbagent has stopped.
const (
	latestExpiry      = 15 * time.Second
	latestExpiryRatio = 3
)

// maxLatest bounds the windows kept, every app's and node's together:
// senders with made-up app or node names cannot grow it further.
const maxLatest = 100000

// latestPruneEvery is how often, at most, add drops expired windows.
const latestPruneEvery = 10 * time.Second

// nodeWindow is one lbagent's last window of an app.
type nodeWindow struct {
	end      time.Time
	length   time.Duration
	rps      float64
	requests int64
	errors   int64 // 5xx
	latency  *msg.Histogram
}

// expired reports whether w no longer counts at now.
func (w nodeWindow) expired(now time.Time) bool {
	return now.Sub(w.end) > max(latestExpiry, latestExpiryRatio*w.length)
}

// latest keeps every app's last traffic window from each lbagent, for
// every app, autoscaled or not: what the API shows as an app's traffic.
// Its memory is bounded by maxLatest windows. Safe for concurrent use.
type latest struct {
	mu     sync.Mutex
	apps   map[string]map[string]nodeWindow // by app, by node
	n      int
	pruned time.Time
}

func newLatest() *latest { return &latest{apps: map[string]map[string]nodeWindow{}} }

// add keeps m as its node's last window of its app, unless a later one is
// kept already; false when it is refused because maxLatest windows are kept.
func (l *latest) add(m *msg.Metrics, now time.Time) bool {
	w := nodeWindow{end: m.WindowStart.Add(m.Window.Std()), length: m.Window.Std(), rps: m.RPS, requests: m.Requests,
		errors: m.Status.S5xx, latency: m.LatencyHistogram}
	l.mu.Lock()
	defer l.mu.Unlock()
	if now.Sub(l.pruned) >= latestPruneEvery {
		l.prune(now)
	}
	nodes := l.apps[m.App]
	if prev, ok := nodes[m.Node]; ok {
		if !w.end.After(prev.end) {
			return true // a replay or an older window
		}
		nodes[m.Node] = w
		return true
	}
	if l.n >= maxLatest {
		return false
	}
	if nodes == nil {
		nodes = map[string]nodeWindow{}
		l.apps[m.App] = nodes
	}
	nodes[m.Node] = w
	l.n++
	return true
}

// prune drops expired windows; under mu.
func (l *latest) prune(now time.Time) {
	l.pruned = now
	for app, nodes := range l.apps {
		for node, w := range nodes {
			if w.expired(now) {
				delete(nodes, node)
				l.n--
			}
		}
		if len(nodes) == 0 {
			delete(l.apps, app)
		}
	}
}

// Traffic is an app's traffic over the last window of every lbagent that
// serves it, merged.
type Traffic struct {
	// RPS sums the nodes' request rates.
	RPS float64
	// Requests and Errors (5xx) sum the nodes' windows.
	Requests, Errors int64
	// P95MS is the 95th percentile of the upstream response time over every
	// node's window (their histograms merged); 0 without a request that
	// reached an upstream.
	P95MS float64
	// Nodes is the lbagents whose window counts.
	Nodes int
	// Window is the longest of their windows; At, when the latest ended.
	Window time.Duration
	At     time.Time
}

// ErrorRate is the share of 5xx answers; 0 without requests.
func (t Traffic) ErrorRate() float64 {
	if t.Requests == 0 {
		return 0
	}
	return float64(t.Errors) / float64(t.Requests)
}

// traffic merges app's windows that count at now; ok is false when none does.
func (l *latest) traffic(app string, now time.Time) (Traffic, bool) {
	var t Traffic
	var hs []*msg.Histogram
	l.mu.Lock()
	for _, w := range l.apps[app] {
		if w.expired(now) {
			continue
		}
		t.Nodes++
		t.RPS += w.rps
		t.Requests += w.requests
		t.Errors += w.errors
		t.Window = max(t.Window, w.length)
		if w.end.After(t.At) {
			t.At = w.end
		}
		if w.latency != nil && w.latency.Count() > 0 {
			hs = append(hs, w.latency)
		}
	}
	l.mu.Unlock()
	if t.Nodes == 0 {
		return Traffic{}, false
	}
	if len(hs) > 0 {
		t.P95MS, _ = msg.MergedQuantile(0.95, hs)
	}
	return t, true
}
