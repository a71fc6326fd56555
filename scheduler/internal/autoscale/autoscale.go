// Package autoscale decides how many replicas an autoscaled app should run,
// as a pure function of its policy, its recent samples, its current
// replica count, its decision history and the time. It follows the
// Kubernetes Horizontal Pod Autoscaler's algorithm and explains every
// decision:
//
//   - per metric, desired = ceil(current × value/target) (for averages over
//     instances, ceil(sum/target)), unless the ratio is within 1 ± tolerance;
//   - the app's recommendation is the highest over its metrics, within
//     [min, max];
//   - scaling down takes the highest recommendation of the down
//     stabilisation window, scaling up the lowest of the up window, so
//     flapping input does not flap replicas;
//   - a scale-up adds at most max(+UpPercent %, +UpPods) per UpPeriod;
//   - after a change, no scale-up for UpCooldown and no scale-down for
//     DownCooldown;
//   - missing metrics: an instance with no sample counts as at target when
//     scaling down and as zero when scaling up; instances not yet healthy,
//     or within their initial delay, count as zero when scaling up and are
//     left out when scaling down; a metric with no sample at all recommends
//     the current count, so lost metrics never scale to zero or to max.
package autoscale

import (
	"fmt"
	"math"
	"strconv"
	"strings"
	"time"

	"github.com/berthhq/berth/common/msg"
)

// Metric names.
const (
	CPU     = "cpu"     // percent of the container's CPU limit, per instance
	Memory  = "memory"  // percent of the container's memory limit, per instance
	RPS     = "rps"     // requests per second per replica, from every lbagent
	Latency = "latency" // p95 upstream latency in milliseconds, merged over lbagents
)

// Policy is an app's scaling block with its defaults applied.
type Policy struct {
	Min, Max int
	// Targets by metric; 0 means not configured.
	TargetCPUPercent, TargetMemoryPercent, TargetRPSPerReplica, TargetP95LatencyMS float64
	// Tolerance is the band around a ratio of 1 inside which a metric
	// recommends no change.
	Tolerance float64
	// Window: samples older than this are discarded.
	Window time.Duration
	// InitialDelay: instances younger than this are treated as not ready.
	InitialDelay time.Duration
	// UpStabilization and DownStabilization are the windows of past
	// recommendations taken into account (lowest when scaling up, highest
	// when scaling down).
	UpStabilization, DownStabilization time.Duration
	// UpPercent and UpPods limit a scale-up to the larger of +UpPercent %
	// and +UpPods of the count UpPeriod ago.
	UpPercent float64
	UpPods    int
	UpPeriod  time.Duration
	// UpCooldown and DownCooldown hold scale-ups and scale-downs after any
	// change.
	UpCooldown, DownCooldown time.Duration
}

// Instance is one instance of the app as the scheduler sees it.
type Instance struct {
	ID string
	// Ready: running and healthy.
	Ready bool
	// StartedAt is when its container started.
	StartedAt time.Time
}

// Usage is one CPU and memory reading of an instance, in percent of its
// limits (Docker stats).
type Usage struct {
	Instance      string
	At            time.Time
	CPUPercent    float64
	MemoryPercent float64
}

// Traffic is one lbagent's window of an app's traffic.
type Traffic struct {
	Node string
	// At is when the window ended.
	At time.Time
	// RPS is the window's request rate through that lbagent.
	RPS float64
	// Latency is the window's upstream latency distribution; nil when the
	// window had no request.
	Latency *msg.Histogram
}

// Samples are everything known about the app's load.
type Samples struct {
	Instances []Instance
	Usage     []Usage
	Traffic   []Traffic
}

// History is what happened before: past recommendations (for the
// stabilisation windows) and past changes (for rate limits and cooldowns).
// The caller appends each Decision's Recommendation, and a Change when the
// replica count changed; Prune drops what no rule looks at any more.
type History struct {
	Recommendations []Point
	Changes         []Change
}

// Point is a recommendation at a time.
type Point struct {
	At       time.Time
	Replicas int
}

// Change is a replica count change.
type Change struct {
	At       time.Time
	From, To int
}

// Reason explains one metric's part in a decision.
type Reason struct {
	Metric string `json:"metric"`
	// Value is the current value (mean percent, rate per replica, p95 ms);
	// Target the policy's; Ratio Value/Target as used.
	Value  float64 `json:"value"`
	Target float64 `json:"target"`
	Ratio  float64 `json:"ratio"`
	// Replicas is what this metric alone recommends.
	Replicas int `json:"replicas"`
	// NoData: the metric had no sample in the window (Value means nothing).
	NoData bool `json:"no_data,omitempty"`
	// Note says how missing or not-ready data was treated, or why the
	// metric recommends no change.
	Note string `json:"note,omitempty"`
}

// Decision is Decide's answer.
type Decision struct {
	// Desired is the replica count to run now.
	Desired int `json:"desired"`
	// Current is the count the decision started from.
	Current int `json:"current"`
	// Recommendation is the highest metric's recommendation within [min,
	// max], before stabilisation, limits and cooldowns: append it to
	// History.Recommendations.
	Recommendation int `json:"recommendation"`
	// Reasons are per metric, in a fixed order.
	Reasons []Reason `json:"reasons"`
	// Limits say what held the recommendation back (stabilisation, rate
	// limit, cooldown, bounds).
	Limits []string `json:"limits,omitempty"`
}

// String is the one-line summary used in events and logs.
func (d Decision) String() string {
	parts := make([]string, 0, len(d.Reasons))
	for _, r := range d.Reasons {
		s := fmt.Sprintf("%s %.3g/%.3g (×%.2f → %d)", r.Metric, r.Value, r.Target, r.Ratio, r.Replicas)
		if r.Note != "" {
			s += " " + r.Note
		}
		parts = append(parts, s)
	}
	s := fmt.Sprintf("%d → %d: %s", d.Current, d.Desired, strings.Join(parts, "; "))
	if len(d.Limits) > 0 {
		s += "; " + strings.Join(d.Limits, "; ")
	}
	return s
}

// Decide returns the replicas the app should run now and why.
func Decide(p Policy, s Samples, current int, h History, now time.Time) Decision {
	d := Decision{Current: current, Reasons: make([]Reason, 0, 4)}
	since := now.Add(-p.Window)
	ready, notReady := splitInstances(p, s.Instances, now)
	usage := meanUsage(s.Usage, since)

	type metric struct {
		name   string
		target float64
		reason func() Reason
	}
	metrics := []metric{
		{CPU, p.TargetCPUPercent, func() Reason {
			return perInstance(CPU, p.TargetCPUPercent, p.Tolerance, ready, notReady, &usage, (*usageMean).cpu, current)
		}},
		{Memory, p.TargetMemoryPercent, func() Reason {
			return perInstance(Memory, p.TargetMemoryPercent, p.Tolerance, ready, notReady, &usage, (*usageMean).mem, current)
		}},
		{RPS, p.TargetRPSPerReplica, func() Reason { return rps(p, s.Traffic, since, len(ready), current) }},
		{Latency, p.TargetP95LatencyMS, func() Reason { return latency(p, s.Traffic, since, len(ready), current) }},
	}
	rec := math.MinInt
	for _, m := range metrics {
		if m.target <= 0 {
			continue
		}
		r := m.reason()
		r.Target = m.target
		d.Reasons = append(d.Reasons, r)
		rec = max(rec, r.Replicas)
	}
	if rec == math.MinInt { // no metric configured: hold
		rec = current
	}
	d.Recommendation = clamp(rec, p.Min, p.Max, &d.Limits)

	// Stabilisation over past recommendations, this one included.
	upRec, downRec := d.Recommendation, d.Recommendation
	for _, pt := range h.Recommendations {
		if !pt.At.Before(now.Add(-p.UpStabilization)) && pt.At.Before(now) {
			upRec = min(upRec, pt.Replicas)
		}
		if !pt.At.Before(now.Add(-p.DownStabilization)) && pt.At.Before(now) {
			downRec = max(downRec, pt.Replicas)
		}
	}
	desired := current
	switch {
	case upRec > current:
		desired = upRec
	case downRec < current:
		desired = downRec
	}
	if d.Recommendation > current && desired < d.Recommendation {
		d.Limits = append(d.Limits, fmt.Sprintf("scale-up stabilisation: lowest recommendation of the last %s is %d", p.UpStabilization, upRec))
	}
	if d.Recommendation < current && desired > d.Recommendation {
		d.Limits = append(d.Limits, fmt.Sprintf("scale-down stabilisation: highest recommendation of the last %s is %d", p.DownStabilization, downRec))
	}

	// Rate limit on scale-up: relative to the count UpPeriod ago.
	if desired > current && p.UpPeriod > 0 {
		base := current
		for _, c := range h.Changes {
			if c.At.After(now.Add(-p.UpPeriod)) && c.To > c.From {
				base -= c.To - c.From
			}
		}
		base = max(base, 1)
		limit := max(int(math.Ceil(float64(base)*(1+p.UpPercent/100))), base+p.UpPods)
		if desired > limit {
			d.Limits = append(d.Limits, fmt.Sprintf("scale-up rate: at most %d (max of +%.0f%% and +%d of %d per %s)", limit, p.UpPercent, p.UpPods, base, p.UpPeriod))
			desired = max(limit, current)
		}
	}

	// Cooldowns after the last change.
	if n := len(h.Changes); n > 0 {
		last := h.Changes[n-1].At
		if desired > current && now.Sub(last) < p.UpCooldown {
			d.Limits = append(d.Limits, fmt.Sprintf("scale-up cooldown: %s after the change at %s", p.UpCooldown, last.UTC().Format(time.RFC3339)))
			desired = current
		}
		if desired < current && now.Sub(last) < p.DownCooldown {
			d.Limits = append(d.Limits, fmt.Sprintf("scale-down cooldown: %s after the change at %s", p.DownCooldown, last.UTC().Format(time.RFC3339)))
			desired = current
		}
	}
	d.Desired = clamp(desired, p.Min, p.Max, &d.Limits)
	return d
}

// Prune drops history no rule of p looks at any more.
func Prune(p Policy, h History, now time.Time) History {
	keep := max(p.UpStabilization, p.DownStabilization, p.UpPeriod, p.UpCooldown, p.DownCooldown)
	cut := now.Add(-keep)
	var out History
	for _, r := range h.Recommendations {
		if !r.At.Before(cut) {
			out.Recommendations = append(out.Recommendations, r)
		}
	}
	for i, c := range h.Changes {
		if !c.At.Before(cut) || i == len(h.Changes)-1 {
			out.Changes = append(out.Changes, c)
		}
	}
	return out
}

func clamp(n, lo, hi int, limits *[]string) int {
	switch {
	case n < lo:
		if limits != nil {
			*limits = append(*limits, fmt.Sprintf("at least min %d", lo))
		}
		return lo
	case n > hi:
		if limits != nil {
			*limits = append(*limits, fmt.Sprintf("at most max %d", hi))
		}
		return hi
	}
	return n
}

// splitInstances separates ready instances from those not ready yet
// (unhealthy, starting, or within the initial delay).
func splitInstances(p Policy, ins []Instance, now time.Time) (ready, notReady []string) {
	ready = make([]string, 0, len(ins))
	for _, in := range ins {
		if in.Ready && (p.InitialDelay <= 0 || now.Sub(in.StartedAt) >= p.InitialDelay) {
			ready = append(ready, in.ID)
		} else {
			notReady = append(notReady, in.ID)
		}
	}
	return ready, notReady
}

// usageMean is one instance's usage over the window: sums and count.
type usageMean struct {
	id             string
	cpuSum, memSum float64
	n              int
}

func (u *usageMean) cpu() float64 { return u.cpuSum / float64(u.n) }
func (u *usageMean) mem() float64 { return u.memSum / float64(u.n) }

// usageTable holds each instance's usageMean, in first-seen order, with an
// index built only when there are many (a short scan beats hashing).
type usageTable struct {
	accs  []usageMean
	index map[string]int
}

const usageScan = 16

// find returns the position of id, or -1.
func (t *usageTable) find(id string) int {
	if t.index == nil && len(t.accs) > usageScan {
		t.index = make(map[string]int, len(t.accs)*2)
		for i := range t.accs {
			t.index[t.accs[i].id] = i
		}
	}
	if t.index != nil {
		if i, ok := t.index[id]; ok {
			return i
		}
		return -1
	}
	for i := range t.accs {
		if t.accs[i].id == id {
			return i
		}
	}
	return -1
}

// get returns id's usageMean, nil when it has none.
func (t *usageTable) get(id string) *usageMean {
	if i := t.find(id); i >= 0 {
		return &t.accs[i]
	}
	return nil
}

// meanUsage sums each instance's usage samples inside the window. Samples
// come grouped by instance or round by round (every instance, then every
// instance again): the same or the next position is tried before a lookup.
func meanUsage(us []Usage, since time.Time) usageTable {
	t := usageTable{accs: make([]usageMean, 0, 16)}
	last := -1
	for k := range us {
		u := &us[k] // by pointer: no copy of each sample
		if u.At.Before(since) {
			continue
		}
		i := -1
		switch {
		case last < 0:
		case t.accs[last].id == u.Instance:
			i = last
		case last+1 < len(t.accs) && t.accs[last+1].id == u.Instance:
			i = last + 1
		case t.accs[0].id == u.Instance:
			i = 0
		}
		if i < 0 {
			if i = t.find(u.Instance); i < 0 {
				t.accs = append(t.accs, usageMean{id: u.Instance})
				i = len(t.accs) - 1
				if t.index != nil {
					t.index[u.Instance] = i
				}
			}
		}
		a := &t.accs[i]
		a.cpuSum += u.CPUPercent
		a.memSum += u.MemoryPercent
		a.n++
		last = i
	}
	return t
}

// perInstance is the HPA's resource-utilisation rule over ready
// instances' mean usage, with its treatment of missing and not-ready ones.
func perInstance(name string, target, tolerance float64, ready, notReady []string, usage *usageTable, pick func(*usageMean) float64, current int) Reason {
	var sum float64
	var have, missing int
	for _, id := range ready {
		if u := usage.get(id); u != nil {
			sum += pick(u)
			have++
		} else {
			missing++
		}
	}
	r := Reason{Metric: name}
	if have == 0 {
		r.Replicas, r.Ratio, r.NoData, r.Note = current, 1, true, "no samples: holds the current count"
		return r
	}
	r.Value = sum / float64(have)
	r.Ratio = r.Value / target
	if math.Abs(r.Ratio-1) <= tolerance {
		r.Replicas, r.Note = current, "within tolerance"
		return r
	}
	var notes []string
	if r.Ratio < 1 {
		// Scaling down: instances with no sample count as at target.
		if missing > 0 {
			sum += float64(missing) * target
			notes = append(notes, fmt.Sprintf("%d without samples counted at target", missing))
		}
		have += missing
	} else {
		// Scaling up: instances with no sample, and those not ready yet,
		// count as zero.
		if missing+len(notReady) > 0 {
			notes = append(notes, fmt.Sprintf("%d without samples or not ready counted as 0", missing+len(notReady)))
		}
		have += missing + len(notReady)
	}
	newRatio := sum / float64(have) / target
	if len(notes) > 0 && (math.Abs(newRatio-1) <= tolerance || (newRatio-1)*(r.Ratio-1) < 0) {
		// The adjustment would reverse the direction or land within the
		// tolerance: no change (as the HPA).
		r.Replicas, r.Note = current, strings.Join(append(notes, "which cancels the change"), ", ")
		return r
	}
	r.Replicas = int(math.Ceil(sum/target - 1e-9))
	r.Note = strings.Join(notes, ", ")
	return r
}

// nodeRate is one lbagent's mean request rate over the window.
type nodeRate struct {
	node string
	sum  float64
	n    int
}

// ratesPerNode averages each lbagent's rate samples inside the window
// (a handful of nodes: a slice beats a map).
func ratesPerNode(ts []Traffic, since time.Time) []nodeRate {
	out := make([]nodeRate, 0, 4)
next:
	for k := range ts {
		t := &ts[k]
		if t.At.Before(since) {
			continue
		}
		for i := range out {
			if out[i].node == t.Node {
				out[i].sum += t.RPS
				out[i].n++
				continue next
			}
		}
		out = append(out, nodeRate{node: t.Node, sum: t.RPS, n: 1})
	}
	return out
}

// rps: the app's rate is the sum over lbagents of each one's mean rate in
// the window; desired = ceil(rate / target per replica).
func rps(p Policy, ts []Traffic, since time.Time, ready, current int) Reason {
	r := Reason{Metric: RPS}
	nodes := ratesPerNode(ts, since)
	if len(nodes) == 0 {
		r.Replicas, r.Ratio, r.NoData, r.Note = current, 1, true, "no samples: holds the current count"
		return r
	}
	var total float64
	for _, nr := range nodes {
		total += nr.sum / float64(nr.n)
	}
	r.Value = total / float64(max(current, 1))
	r.Ratio = r.Value / p.TargetRPSPerReplica
	if math.Abs(r.Ratio-1) <= p.Tolerance {
		r.Replicas, r.Note = current, "within tolerance"
		return r
	}
	r.Replicas = int(math.Ceil(total/p.TargetRPSPerReplica - 1e-9))
	// Built without fmt: Decide runs for every app every interval.
	b := make([]byte, 0, 48)
	b = strconv.AppendFloat(b, total, 'f', 1, 64)
	b = append(b, " req/s over "...)
	b = strconv.AppendInt(b, int64(len(nodes)), 10)
	b = append(b, " lbagent(s), "...)
	b = strconv.AppendInt(b, int64(ready), 10)
	r.Note = string(append(b, " ready"...))
	return r
}

// latency: the p95 of every lbagent's latency histograms in the window,
// merged; desired = ceil(ready × p95/target).
func latency(p Policy, ts []Traffic, since time.Time, ready, current int) Reason {
	r := Reason{Metric: Latency}
	hs := make([]*msg.Histogram, 0, len(ts))
	windows, busy := 0, 0
	for k := range ts {
		t := &ts[k]
		if t.At.Before(since) {
			continue
		}
		windows++
		if t.RPS > 0 {
			busy++
		}
		if t.Latency != nil {
			hs = append(hs, t.Latency)
		}
	}
	p95, n := msg.MergedQuantile(0.95, hs)
	if n == 0 {
		if windows > 0 && busy == 0 {
			// lbagents report, and no request came: no latency to fix.
			r.Replicas, r.Note = 0, "no requests in the window: counts as 0"
			return r
		}
		r.Replicas, r.Ratio, r.NoData, r.Note = current, 1, true, "no samples: holds the current count"
		return r
	}
	r.Value = p95
	r.Ratio = r.Value / p.TargetP95LatencyMS
	if math.Abs(r.Ratio-1) <= p.Tolerance {
		r.Replicas, r.Note = current, "within tolerance"
		return r
	}
	base := ready
	if base == 0 {
		base = current
	}
	r.Replicas = int(math.Ceil(float64(base)*r.Ratio - 1e-9))
	r.Note = "p95 of " + strconv.FormatInt(int64(n), 10) + " requests"
	return r
}
