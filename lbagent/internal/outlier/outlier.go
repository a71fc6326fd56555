// Package outlier owns passive health from real traffic (health.outlier,
// as Envoy's outlier detection): per instance of each app that asks for
// it, the answers and failed connections of the requests this nginx
// passed, counted over a sliding window and in a row; and the decision to
// eject an instance over the limit from this nginx's rotation for
// base_ejection × times ejected, never more than max_ejected_percent of
// the app's instances and never the last one, and to take it back when
// its ejection ends. Every lbagent decides from its own traffic alone.
//
// The Detector is pure in time: Observe and Filter take now, so tests run
// on a fake clock.
package outlier

import (
	"fmt"
	"slices"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/berthhq/berth/common/msg"
	"github.com/berthhq/berth/common/spec"
	"github.com/berthhq/berth/lbagent/internal/accesslog"
	"github.com/berthhq/berth/lbagent/internal/state"
)

// buckets is how many slices the sliding window has: the window slides
// by interval/buckets.
const buckets = 10

// MaxMultiplier caps times ejected in base_ejection × times ejected; an
// instance back in rotation for MaxMultiplier × base_ejection without
// tripping starts again from one.
const MaxMultiplier = 10

// Change is an ejection or a return, for the log, metrics and events.
type Change struct {
	App, Instance, Address string
	// Ejected is true for an ejection, false for a return.
	Ejected bool
	// Reason says which limit was crossed, with the counts.
	Reason string
	// Until is when an ejection ends; Times how many in a row it is.
	Until time.Time
	Times int
}

// Refusal is an instance over the limit that stays in rotation because
// ejecting it would pass max_ejected_percent.
type Refusal struct {
	App, Instance, Reason string
}

// bucket is one slice of the window.
type bucket struct {
	slot            int64 // the window slice it counts, -1 when unused
	total, failures int
}

// instance is one upstream address's counts and ejection.
type instance struct {
	id          string
	window      [buckets]bucket
	consecutive int
	// tripped is the reason it crossed a limit, "" while under.
	tripped string
	// ejected is when its ejection ends; zero while in rotation.
	since, until time.Time
	times        int
	back         time.Time // when it last came back
	refused      bool      // a refusal was reported for this trip
}

// app is one app's limits and instances by address.
type app struct {
	cfg       spec.Outlier
	instances map[string]*instance
}

// Detector counts and decides for every app with health.outlier. Observe
// is safe to call from the access log's goroutine while Filter runs on the
// agent's.
type Detector struct {
	// active says whether any app has health.outlier: while none does,
	// Observe costs one atomic load.
	active atomic.Bool
	mu     sync.Mutex
	apps   map[string]*app
	// kick, when set, is called (outside the lock) when an instance first
	// crosses a limit, so the agent filters again soon.
	kick func()
}

// New returns a detector; kick may be nil.
func New(kick func()) *Detector {
	return &Detector{apps: map[string]*app{}, kick: kick}
}

// Observe counts one upstream attempt of app to addr at now: failed is a
// 5xx answer or a failed connection. Apps without health.outlier and
// addresses not in the app's rotation at the last Filter are ignored, so
// memory stays bounded by the servers nginx has.
func (d *Detector) Observe(appName, addr string, failed bool, now time.Time) {
	if !d.active.Load() {
		return
	}
	d.mu.Lock()
	a := d.apps[appName]
	var in *instance
	if a != nil {
		in = a.instances[addr]
	}
	if in == nil {
		d.mu.Unlock()
		return
	}
	first := in.observe(&a.cfg, failed, now)
	d.mu.Unlock()
	if first && d.kick != nil {
		d.kick()
	}
}

// observe counts one attempt and reports whether it made the instance
// cross a limit for the first time since its last ejection.
func (in *instance) observe(cfg *spec.Outlier, failed bool, now time.Time) bool {
	slot := slotOf(cfg, now)
	b := &in.window[slot%buckets]
	if b.slot != slot {
		*b = bucket{slot: slot}
	}
	b.total++
	if failed {
		b.failures++
		in.consecutive++
	} else {
		in.consecutive = 0
	}
	if in.tripped != "" || !in.until.IsZero() {
		return false
	}
	in.tripped = trip(cfg, in, slot)
	return in.tripped != ""
}

func slotOf(cfg *spec.Outlier, now time.Time) int64 {
	width := max(cfg.Interval.Std()/buckets, time.Millisecond)
	return now.UnixNano() / int64(width)
}

// trip returns why the instance is over a limit at slot, or "".
func trip(cfg *spec.Outlier, in *instance, slot int64) string {
	if cfg.Consecutive5xx > 0 && in.consecutive >= cfg.Consecutive5xx {
		return fmt.Sprintf("%d failed requests in a row (consecutive_5xx %d)", in.consecutive, cfg.Consecutive5xx)
	}
	if cfg.ErrorPercent == 0 {
		return ""
	}
	total, failures := 0, 0
	for _, b := range in.window {
		if b.slot > slot-buckets && b.slot <= slot {
			total += b.total
			failures += b.failures
		}
	}
	if total >= cfg.MinRequests && failures*100 >= cfg.ErrorPercent*total {
		return fmt.Sprintf("%d of %d requests failed in %s (error_percent %d)", failures, total, cfg.Interval, cfg.ErrorPercent)
	}
	return ""
}

// Filter takes snap as the agent built it and returns it with the
// instances ejected at now left out, the ejections and returns made, the
// instances over the limit kept in by max_ejected_percent (reported once
// per trip), and when the next ejection ends (zero: none). It also learns
// each app's limits and rotation for Observe.
func (d *Detector) Filter(snap state.Snapshot, now time.Time) (state.Snapshot, []Change, []Refusal, time.Time) {
	d.mu.Lock()
	defer d.mu.Unlock()
	var changes []Change
	var refusals []Refusal
	var wake time.Time
	seen := map[string]bool{} // grows with the apps that detect outliers: no map of every app on each sync
	out := snap
	out.Apps = nil
	for i, sa := range snap.Apps {
		h := sa.Spec.Health
		if h == nil || h.Outlier == nil {
			continue
		}
		name := sa.Spec.Name
		seen[name] = true
		a := d.apps[name]
		if a == nil {
			a = &app{instances: map[string]*instance{}}
			d.apps[name] = a
		}
		if a.cfg != *h.Outlier {
			a.cfg = *h.Outlier
			for _, in := range a.instances {
				in.window = emptyWindow()
			}
		}
		servers, ch, ref, next := a.decide(name, sa.Servers, now)
		changes, refusals = append(changes, ch...), append(refusals, ref...)
		if !next.IsZero() && (wake.IsZero() || next.Before(wake)) {
			wake = next
		}
		if len(servers) != len(sa.Servers) {
			if out.Apps == nil {
				out.Apps = slices.Clone(snap.Apps)
			}
			out.Apps[i].Servers = servers
		}
	}
	for name := range d.apps {
		if !seen[name] {
			delete(d.apps, name)
		}
	}
	d.active.Store(len(d.apps) > 0)
	if out.Apps == nil {
		out.Apps = snap.Apps
	}
	return out, changes, refusals, wake
}

// decide ends the ejections due, ejects the tripped instances
// max_ejected_percent allows, and returns the servers left in rotation.
func (a *app) decide(name string, servers []state.Server, now time.Time) ([]state.Server, []Change, []Refusal, time.Time) {
	present := make(map[string]bool, len(servers))
	var changes []Change
	for _, s := range servers {
		present[s.Address] = true
		in := a.instances[s.Address]
		if in == nil || in.id != s.Instance {
			in = &instance{id: s.Instance}
			in.window = emptyWindow()
			a.instances[s.Address] = in
		}
		if !in.until.IsZero() && !now.Before(in.until) {
			changes = append(changes, Change{App: name, Instance: in.id, Address: s.Address, Reason: "ejection ended", Times: in.times})
			in.until, in.since, in.back, in.tripped, in.consecutive, in.refused = time.Time{}, time.Time{}, now, "", 0, false
			in.window = emptyWindow()
		}
	}
	for addr := range a.instances {
		if !present[addr] {
			delete(a.instances, addr)
		}
	}
	ejected := 0
	for _, in := range a.instances {
		if !in.until.IsZero() {
			ejected++
		}
	}
	allowed := min(len(servers)*a.cfg.MaxEjectedPercent/100, len(servers)-1)
	var refusals []Refusal
	// Addresses in order, so which of several tripped instances goes first
	// does not depend on map order.
	addrs := make([]string, 0, len(a.instances))
	for addr := range a.instances {
		addrs = append(addrs, addr)
	}
	sort.Strings(addrs)
	for _, addr := range addrs {
		in := a.instances[addr]
		if in.tripped == "" || !in.until.IsZero() {
			continue
		}
		if trip(&a.cfg, in, slotOf(&a.cfg, now)) == "" {
			in.tripped, in.refused = "", false // recovered before there was room
			continue
		}
		if ejected >= allowed {
			if !in.refused {
				in.refused = true
				refusals = append(refusals, Refusal{App: name, Instance: in.id, Reason: in.tripped})
			}
			continue
		}
		base := a.cfg.BaseEjection.Std()
		if !in.back.IsZero() && now.Sub(in.back) >= MaxMultiplier*base {
			in.times = 0
		}
		in.times = min(in.times+1, MaxMultiplier)
		in.since, in.until = now, now.Add(time.Duration(in.times)*base)
		ejected++
		changes = append(changes, Change{App: name, Instance: in.id, Address: addr, Ejected: true, Reason: in.tripped, Until: in.until, Times: in.times})
	}
	var wake time.Time
	kept := make([]state.Server, 0, len(servers))
	for _, s := range servers {
		in := a.instances[s.Address]
		if in.until.IsZero() {
			kept = append(kept, s)
			continue
		}
		if wake.IsZero() || in.until.Before(wake) {
			wake = in.until
		}
	}
	return kept, changes, refusals, wake
}

func emptyWindow() [buckets]bucket {
	var w [buckets]bucket
	for i := range w {
		w[i].slot = -1
	}
	return w
}

// Ejected returns the instances ejected now, sorted by app and instance,
// at most msg.MaxEjected.
func (d *Detector) Ejected() []msg.Ejection {
	d.mu.Lock()
	defer d.mu.Unlock()
	var out []msg.Ejection
	for name, a := range d.apps {
		for _, in := range a.instances {
			if !in.until.IsZero() {
				out = append(out, msg.Ejection{App: name, Instance: in.id, Reason: msg.Truncate(in.tripped, msg.MaxTextLen),
					Since: in.since.UTC(), Until: in.until.UTC(), Times: in.times})
			}
		}
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].App != out[j].App {
			return out[i].App < out[j].App
		}
		return out[i].Instance < out[j].Instance
	})
	if len(out) > msg.MaxEjected {
		out = out[:msg.MaxEjected]
	}
	return out
}

// EjectedByApp counts the instances ejected now per app (the gauge).
func (d *Detector) EjectedByApp() map[string]int {
	d.mu.Lock()
	defer d.mu.Unlock()
	out := map[string]int{}
	for name, a := range d.apps {
		for _, in := range a.instances {
			if !in.until.IsZero() {
				out[name]++
			}
		}
	}
	return out
}

// Sink feeds a Detector from the access log, stamping each entry with
// Now (time.Now when nil).
type Sink struct {
	Detector *Detector
	Now      func() time.Time
}

var _ accesslog.Sink = Sink{}

// Add counts every upstream attempt of e.
func (s Sink) Add(e accesslog.Entry) {
	if e.App == "" || e.Upstreams == "" || !s.Detector.active.Load() {
		return
	}
	now := time.Now
	if s.Now != nil {
		now = s.Now
	}
	t := now()
	e.Attempts(func(addr string, failed bool) { s.Detector.Observe(e.App, addr, failed, t) })
}
