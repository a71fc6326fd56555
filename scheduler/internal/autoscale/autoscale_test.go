package autoscale

import (
	"fmt"
	"testing"
	"time"

	"github.com/berthhq/berth/common/msg"
	"github.com/stretchr/testify/require"
)

var t0 = time.Date(2026, 11, 24, 12, 0, 0, 0, time.UTC)

// policy is the defaults of the spec's scaling block (HPA's behaviour).
func policy() Policy {
	return Policy{Min: 1, Max: 20, Tolerance: 0.1, Window: 60 * time.Second,
		UpStabilization: 0, DownStabilization: 300 * time.Second,
		UpPercent: 100, UpPods: 4, UpPeriod: 15 * time.Second}
}

func cpuPolicy(target float64) Policy { p := policy(); p.TargetCPUPercent = target; return p }

// instances makes n ready instances i0…, started long ago.
func instances(n int) []Instance {
	out := make([]Instance, n)
	for i := range out {
		out[i] = Instance{ID: fmt.Sprintf("i%d", i), Ready: true, StartedAt: t0.Add(-time.Hour)}
	}
	return out
}

// cpu gives instance i the value at t0-10s.
func cpu(values ...float64) []Usage {
	out := make([]Usage, len(values))
	for i, v := range values {
		out[i] = Usage{Instance: fmt.Sprintf("i%d", i), At: t0.Add(-10 * time.Second), CPUPercent: v}
	}
	return out
}

func hist(ms float64, n float64) *msg.Histogram {
	h := &msg.Histogram{}
	h.Add(ms, n)
	h.Finish()
	return h
}

// The worked example of docs/autoscaling.md.
func TestWorkedExample(t *testing.T) {
	p := cpuPolicy(50)
	p.Min, p.TargetRPSPerReplica = 2, 100
	s := Samples{Instances: instances(4), Usage: cpu(80, 75, 90, 85), Traffic: []Traffic{
		{Node: "lb-1", At: t0.Add(-5 * time.Second), RPS: 300}, {Node: "lb-2", At: t0.Add(-5 * time.Second), RPS: 260}}}
	d := Decide(p, s, 4, History{}, t0)
	require.Equal(t, 7, d.Desired)
	require.Equal(t, "4 → 7: cpu 82.5/50 (×1.65 → 7); rps 140/100 (×1.40 → 6) 560.0 req/s over 2 lbagent(s), 4 ready", d.String())
}

func TestDecideRules(t *testing.T) {
	latencyPolicy := policy()
	latencyPolicy.TargetP95LatencyMS = 250
	latencyPolicy.UpPods = 100
	rpsPolicy := policy()
	rpsPolicy.TargetRPSPerReplica = 50
	both := cpuPolicy(50)
	both.TargetRPSPerReplica = 50
	both.UpPods = 100

	tests := []struct {
		name    string
		p       Policy
		s       Samples
		current int
		h       History
		want    int
		reason  string // a substring of the decision's explanation
	}{
		{name: "ceil(current × ratio): 4 at 90% of a 60% target → 6", p: cpuPolicy(60),
			s: Samples{Instances: instances(4), Usage: cpu(90, 90, 90, 90)}, current: 4, want: 6, reason: "cpu 90/60 (×1.50 → 6)"},
		{name: "within tolerance: 65% of 60% is ×1.08 → no change", p: cpuPolicy(60),
			s: Samples{Instances: instances(4), Usage: cpu(65, 65, 65, 65)}, current: 4, want: 4, reason: "within tolerance"},
		{name: "just outside tolerance: ×1.12 → up", p: cpuPolicy(50),
			s: Samples{Instances: instances(10), Usage: cpu(56, 56, 56, 56, 56, 56, 56, 56, 56, 56)}, current: 10, want: 12},
		{name: "scale down when nothing was higher in the window", p: cpuPolicy(60),
			s: Samples{Instances: instances(4), Usage: cpu(15, 15, 15, 15)}, current: 4, want: 1, reason: "cpu 15/60"},
		{name: "the highest metric wins", p: both,
			s:       Samples{Instances: instances(2), Usage: cpu(50, 50), Traffic: []Traffic{{Node: "lb1", At: t0.Add(-time.Second), RPS: 400}}},
			current: 2, want: 8, reason: "rps 200/50 (×4.00 → 8)"},
		{name: "bounded by max", p: func() Policy { p := cpuPolicy(10); p.Max = 5; p.UpPods = 100; return p }(),
			s: Samples{Instances: instances(2), Usage: cpu(90, 90)}, current: 2, want: 5, reason: "at most max 5"},
		{name: "bounded by min", p: func() Policy { p := cpuPolicy(60); p.Min = 3; return p }(),
			s: Samples{Instances: instances(4), Usage: cpu(1, 1, 1, 1)}, current: 4, want: 3},
		{name: "scale-up rate: max(+100%, +4) of the count 15 s ago", p: cpuPolicy(10),
			s: Samples{Instances: instances(2), Usage: cpu(100, 100)}, current: 2, want: 6, reason: "scale-up rate: at most 6"},
		{name: "scale-up rate counts the changes of the period", p: cpuPolicy(10),
			s: Samples{Instances: instances(6), Usage: cpu(100, 100, 100, 100, 100, 100)}, current: 6,
			h:    History{Changes: []Change{{At: t0.Add(-10 * time.Second), From: 2, To: 6}}},
			want: 6, reason: "at most 6 (max of +100% and +4 of 2 per 15s)"},
		{name: "scale-down stabilisation: the highest recommendation of 300 s wins", p: cpuPolicy(60),
			s: Samples{Instances: instances(6), Usage: cpu(10, 10, 10, 10, 10, 10)}, current: 6,
			h:    History{Recommendations: []Point{{At: t0.Add(-200 * time.Second), Replicas: 5}, {At: t0.Add(-400 * time.Second), Replicas: 9}}},
			want: 5, reason: "highest recommendation of the last 5m0s is 5"},
		{name: "scale-up stabilisation: the lowest recommendation of the window", p: func() Policy { p := cpuPolicy(50); p.UpStabilization = time.Minute; return p }(),
			s: Samples{Instances: instances(4), Usage: cpu(100, 100, 100, 100)}, current: 4,
			h:    History{Recommendations: []Point{{At: t0.Add(-30 * time.Second), Replicas: 5}}},
			want: 5, reason: "lowest recommendation of the last 1m0s is 5"},
		{name: "scale-down cooldown after a change", p: func() Policy { p := cpuPolicy(60); p.DownCooldown = 2 * time.Minute; p.DownStabilization = 0; return p }(),
			s: Samples{Instances: instances(4), Usage: cpu(10, 10, 10, 10)}, current: 4,
			h:    History{Changes: []Change{{At: t0.Add(-time.Minute), From: 2, To: 4}}},
			want: 4, reason: "scale-down cooldown"},
		{name: "scale-up cooldown after a change", p: func() Policy { p := cpuPolicy(60); p.UpCooldown = 30 * time.Second; return p }(),
			s: Samples{Instances: instances(4), Usage: cpu(90, 90, 90, 90)}, current: 4,
			h:    History{Changes: []Change{{At: t0.Add(-10 * time.Second), From: 6, To: 4}}},
			want: 4, reason: "scale-up cooldown"},
		{name: "cooldown over: acts", p: func() Policy { p := cpuPolicy(60); p.UpCooldown = 30 * time.Second; return p }(),
			s: Samples{Instances: instances(4), Usage: cpu(90, 90, 90, 90)}, current: 4,
			h:    History{Changes: []Change{{At: t0.Add(-40 * time.Second), From: 6, To: 4}}},
			want: 6},
		{name: "samples older than the window are discarded", p: cpuPolicy(60),
			s:       Samples{Instances: instances(2), Usage: []Usage{{Instance: "i0", At: t0.Add(-2 * time.Minute), CPUPercent: 100}, {Instance: "i1", At: t0.Add(-2 * time.Minute), CPUPercent: 100}}},
			current: 2, want: 2, reason: "no samples: holds the current count"},
		{name: "scaling down: an instance without samples counts as at target", p: cpuPolicy(50),
			s: Samples{Instances: instances(4), Usage: cpu(10, 10, 10)}, current: 4, want: 2, reason: "1 without samples counted at target"},
		{name: "scaling up: instances without samples or not ready count as 0", p: cpuPolicy(50),
			s:       Samples{Instances: append(instances(3), Instance{ID: "new", Ready: false, StartedAt: t0}), Usage: cpu(100, 100)},
			current: 4, want: 4, reason: "2 without samples or not ready counted as 0, which cancels the change"},
		{name: "scaling up with unready instances still up when the load is high enough", p: cpuPolicy(50),
			s:       Samples{Instances: append(instances(2), Instance{ID: "new", Ready: false, StartedAt: t0}), Usage: cpu(100, 100)},
			current: 3, want: 4, reason: "1 without samples or not ready counted as 0"},
		{name: "instances within initial_delay are not ready", p: func() Policy { p := cpuPolicy(50); p.InitialDelay = time.Minute; return p }(),
			s: Samples{Instances: []Instance{{ID: "i0", Ready: true, StartedAt: t0.Add(-10 * time.Second)}, {ID: "i1", Ready: true, StartedAt: t0.Add(-time.Hour)}},
				Usage: cpu(100, 20)}, current: 2, want: 1, reason: "cpu 20/50"},
		{name: "rps: the sum over lbagents, per replica", p: rpsPolicy,
			s: Samples{Instances: instances(2), Traffic: []Traffic{
				{Node: "lb1", At: t0.Add(-5 * time.Second), RPS: 100}, {Node: "lb1", At: t0.Add(-10 * time.Second), RPS: 80},
				{Node: "lb2", At: t0.Add(-5 * time.Second), RPS: 110}}},
			current: 2, want: 4, reason: "rps 100/50 (×2.00 → 4) 200.0 req/s over 2 lbagent(s)"},
		{name: "rps: zero traffic scales to min", p: rpsPolicy,
			s: Samples{Instances: instances(3), Traffic: []Traffic{{Node: "lb1", At: t0.Add(-5 * time.Second), RPS: 0}}}, current: 3, want: 1},
		{name: "latency: merged p95 of every lbagent", p: latencyPolicy,
			s: Samples{Instances: instances(2), Traffic: []Traffic{
				{Node: "lb1", At: t0.Add(-5 * time.Second), RPS: 10, Latency: hist(100, 900)},
				{Node: "lb2", At: t0.Add(-5 * time.Second), RPS: 10, Latency: hist(1000, 100)}}},
			current: 2, want: 9, reason: "latency 1e+03/250 (×4.01 → 9)"},
		{name: "latency: one node's bad p95 alone is not the app's p95", p: latencyPolicy,
			s: Samples{Instances: instances(2), Traffic: []Traffic{
				{Node: "lb1", At: t0.Add(-5 * time.Second), RPS: 10, Latency: hist(100, 990)},
				{Node: "lb2", At: t0.Add(-5 * time.Second), RPS: 10, Latency: hist(1000, 10)}}},
			current: 2, want: 1, reason: "latency 100/250"},
		{name: "latency: lbagents report windows without a request: idle, scales to min", p: latencyPolicy,
			s:       Samples{Instances: instances(3), Traffic: []Traffic{{Node: "lb1", At: t0.Add(-5 * time.Second)}, {Node: "lb2", At: t0.Add(-5 * time.Second)}}},
			current: 3, want: 1, reason: "no requests in the window: counts as 0"},
		{name: "latency: requests without histograms (an older lbagent) are missing, not idle", p: latencyPolicy,
			s:       Samples{Instances: instances(3), Traffic: []Traffic{{Node: "lb1", At: t0.Add(-5 * time.Second), RPS: 40}}},
			current: 3, want: 3, reason: "no samples: holds the current count"},
		{name: "lost metrics (no lbagent) never scale: neither to min nor to max", p: rpsPolicy,
			s: Samples{Instances: instances(5)}, current: 5, want: 5, reason: "no samples: holds the current count"},
		{name: "lost metrics of one metric do not block another's scale-up", p: both,
			s: Samples{Instances: instances(2), Usage: cpu(100, 100)}, current: 2, want: 4},
		{name: "lost metrics of one metric block another's scale-down", p: both,
			s: Samples{Instances: instances(4), Usage: cpu(5, 5, 5, 5)}, current: 4, want: 4},
		{name: "no metric configured holds", p: policy(), s: Samples{Instances: instances(3)}, current: 3, want: 3},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			d := Decide(tc.p, tc.s, tc.current, tc.h, t0)
			require.Equal(t, tc.want, d.Desired, d.String())
			require.Contains(t, d.String(), tc.reason)
			require.Equal(t, tc.current, d.Current)
		})
	}
}

// simulate feeds Decide a load curve every 15 s, as the controller does,
// and returns the replica counts.
func simulate(p Policy, load func(step int) float64, steps int) []int {
	current := 2
	var h History
	var out []int
	for i := range steps {
		now := t0.Add(time.Duration(i) * 15 * time.Second)
		// Total CPU demand load(i) in "percent of one instance", spread
		// over the current instances.
		per := load(i) / float64(current)
		s := Samples{}
		for j := range current {
			id := fmt.Sprintf("i%d", j)
			s.Instances = append(s.Instances, Instance{ID: id, Ready: true, StartedAt: t0.Add(-time.Hour)})
			s.Usage = append(s.Usage, Usage{Instance: id, At: now.Add(-time.Second), CPUPercent: per})
		}
		d := Decide(p, s, current, h, now)
		h.Recommendations = append(h.Recommendations, Point{At: now, Replicas: d.Recommendation})
		if d.Desired != current {
			h.Changes = append(h.Changes, Change{At: now, From: current, To: d.Desired})
			current = d.Desired
		}
		h = Prune(p, h, now)
		out = append(out, current)
	}
	return out
}

func TestFlappingLoadDoesNotFlapReplicas(t *testing.T) {
	p := cpuPolicy(50)
	// Demand alternates between 400 % and 100 % of one instance every 15 s.
	counts := simulate(p, func(i int) float64 {
		if i%2 == 0 {
			return 400
		}
		return 100
	}, 40)
	changes := 0
	for i := 1; i < len(counts); i++ {
		if counts[i] != counts[i-1] {
			changes++
		}
	}
	require.LessOrEqual(t, changes, 2, "replicas: %v", counts)
	require.Equal(t, 8, counts[len(counts)-1], "held at what the peaks need: %v", counts)
}

func TestLoadDropScalesDownOnlyAfterStabilisation(t *testing.T) {
	p := cpuPolicy(50)
	counts := simulate(p, func(i int) float64 {
		if i < 8 {
			return 400
		}
		return 50
	}, 40)
	require.Equal(t, 8, counts[7], "scaled out for the load: %v", counts)
	// The drop is at step 8 (120 s); the down window is 300 s = 20 steps.
	for i := 8; i < 27; i++ {
		require.Equal(t, 8, counts[i], "held during the 300 s window (step %d): %v", i, counts)
	}
	require.Equal(t, 1, counts[len(counts)-1], "down once the window has passed: %v", counts)
}

func TestScaleUpRampIsRateLimited(t *testing.T) {
	p := cpuPolicy(10)
	p.Max = 100
	counts := simulate(p, func(int) float64 { return 5000 }, 6)
	// 2 → 6 (+4) → 12 (+100%) → 24 → 48 → 96 → 100.
	require.Equal(t, []int{6, 12, 24, 48, 96, 100}, counts)
}

func TestPruneKeepsWhatRulesNeed(t *testing.T) {
	p := policy()
	h := History{
		Recommendations: []Point{{At: t0.Add(-time.Hour), Replicas: 9}, {At: t0.Add(-time.Minute), Replicas: 3}},
		Changes:         []Change{{At: t0.Add(-2 * time.Hour), From: 1, To: 2}, {At: t0.Add(-time.Hour), From: 2, To: 3}},
	}
	got := Prune(p, h, t0)
	require.Equal(t, []Point{{At: t0.Add(-time.Minute), Replicas: 3}}, got.Recommendations)
	require.Equal(t, []Change{{At: t0.Add(-time.Hour), From: 2, To: 3}}, got.Changes, "the last change is kept for the cooldowns")
}

func BenchmarkDecide1000Apps(b *testing.B) {
	p := cpuPolicy(60)
	p.TargetRPSPerReplica = 50
	p.TargetP95LatencyMS = 250
	apps := make([]Samples, 1000)
	hists := make([]History, 1000)
	for a := range apps {
		// Ids shared by the instances and their samples, as the
		// scheduler's intake interns them.
		s := Samples{Instances: instances(10)}
		nodes := []string{"lb0", "lb1"}
		for k := range 12 { // a minute of 5 s samples, round by round as they arrive
			for i := range 10 {
				s.Usage = append(s.Usage, Usage{Instance: s.Instances[i].ID, At: t0.Add(-time.Duration(k) * 5 * time.Second), CPUPercent: float64(40 + a%40)})
			}
		}
		for n := range 2 {
			for k := range 12 {
				h := &msg.Histogram{}
				for v := 1.0; v < 500; v *= 1.3 {
					h.Add(v, 10)
				}
				h.Finish() // as decoded from the wire
				s.Traffic = append(s.Traffic, Traffic{Node: nodes[n], At: t0.Add(-time.Duration(k) * 5 * time.Second), RPS: 200, Latency: h})
			}
		}
		apps[a] = s
		for k := range 20 {
			hists[a].Recommendations = append(hists[a].Recommendations, Point{At: t0.Add(-time.Duration(k) * 15 * time.Second), Replicas: 10})
		}
	}
	b.ResetTimer()
	for b.Loop() {
		for a := range apps {
			Decide(p, apps[a], 10, hists[a], t0)
		}
	}
}
