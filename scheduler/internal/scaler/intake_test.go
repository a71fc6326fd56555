package scaler

import (
	"testing"
	"time"
	"unsafe"

	"github.com/stretchr/testify/require"

	"github.com/berthhq/berth/common/msg"
	"github.com/berthhq/berth/common/spec"
)

func TestIntakeWindowsAndPrune(t *testing.T) {
	t.Parallel()
	in := newIntake()
	now := time.Now()
	for i := range 10 {
		at := now.Add(time.Duration(i-9) * 10 * time.Second) // -90 s … 0
		require.NoError(t, in.addTraffic(&msg.Metrics{Node: "lb-1", App: "web", WindowStart: at.Add(-5 * time.Second), Window: spec.Duration(5 * time.Second), RPS: float64(i)}, now))
		require.NoError(t, in.addUsage(&msg.Usage{App: "web", At: at, Instances: []msg.InstanceUsage{{Instance: "a1", CPUPercent: float64(i)}, {Instance: "b2", CPUPercent: 1}}}, now))
	}
	require.NoError(t, in.addTraffic(&msg.Metrics{Node: "lb-1", App: "other", WindowStart: now, Window: spec.Duration(time.Second)}, now))

	traffic, usage := in.samples("web", now.Add(-25*time.Second))
	require.Len(t, traffic, 3, "windows ending after since: -20 s, -10 s, 0")
	require.Equal(t, 9.0, traffic[2].RPS)
	require.True(t, traffic[2].At.Equal(now), "a window's time is its end")
	require.Len(t, usage, 6)

	in.prune(now, map[string]time.Duration{"web": 30 * time.Second})
	traffic, usage = in.samples("web", time.Time{})
	require.Len(t, traffic, 4, "-30 s … 0 kept")
	require.Len(t, usage, 8)
	// Ids are interned: the instances given to Decide share their bytes
	// with the samples' ids, so comparing them is a pointer check.
	id := in.internID("web", string([]byte("a1")))
	require.Equal(t, unsafe.StringData(usage[len(usage)-2].Instance), unsafe.StringData(id))

	tr, us := in.samples("other", time.Time{})
	require.Empty(t, tr, "an app that is not autoscaled is dropped")
	require.Empty(t, us)
}

// TestIntakeRefusesHostileSamples: a sample from the future, a window that
// overlaps the node's previous one, and a flood of the largest histograms
// the contract allows are refused or bounded; honest samples still count.
func TestIntakeRefusesHostileSamples(t *testing.T) {
	t.Parallel()
	in := newIntake()
	now := time.Now()
	win := spec.Duration(5 * time.Second)

	future := &msg.Metrics{Node: "lb-1", App: "web", WindowStart: now.Add(time.Hour), Window: win, RPS: 1e9}
	require.ErrorContains(t, in.addTraffic(future, now), "after this replica's clock")
	require.ErrorContains(t, in.addUsage(&msg.Usage{App: "web", At: now.Add(time.Minute), Instances: []msg.InstanceUsage{{Instance: "a1", CPUPercent: 99}}}, now), "after this replica's clock")
	require.NoError(t, in.addTraffic(&msg.Metrics{Node: "lb-1", App: "web", WindowStart: now.Add(-5 * time.Second), Window: win, RPS: 10}, now.Add(-2*time.Second)),
		"a window ending within the allowed skew of the clock is kept")

	// The node's next window starts where the last ended; a replay, or a
	// window that overlaps it, is refused.
	require.ErrorContains(t, in.addTraffic(&msg.Metrics{Node: "lb-1", App: "web", WindowStart: now.Add(-5 * time.Second), Window: win, RPS: 1e6}, now), "overlaps")
	require.ErrorContains(t, in.addTraffic(&msg.Metrics{Node: "lb-1", App: "web", WindowStart: now.Add(-time.Second), Window: win, RPS: 1e6}, now), "overlaps")
	require.NoError(t, in.addTraffic(&msg.Metrics{Node: "lb-1", App: "web", WindowStart: now.Add(-time.Millisecond), Window: win, RPS: 11}, now),
		"the next window may start a hair early: wall-clock start plus monotonic length")
	require.NoError(t, in.addTraffic(&msg.Metrics{Node: "lb-2", App: "web", WindowStart: now.Add(-5 * time.Second), Window: win, RPS: 12}, now), "another node has its own windows")
	traffic, _ := in.samples("web", time.Time{})
	require.Len(t, traffic, 3)
	for _, tr := range traffic {
		require.Less(t, tr.RPS, 100.0, "no refused sample was kept")
	}

	// A flood of the largest histograms stays within maxBytesPerApp.
	big := &msg.Histogram{RelativeAccuracy: msg.HistogramAccuracy}
	for i := range 4096 { // the most bins the contract allows
		big.Bins = append(big.Bins, [2]float64{float64(i), 1})
	}
	start := now.Add(-time.Hour)
	for i := range 2000 {
		ws := start.Add(time.Duration(i) * time.Second)
		require.NoError(t, in.addTraffic(&msg.Metrics{Node: "flood", App: "web", WindowStart: ws, Window: spec.Duration(time.Second), LatencyHistogram: big}, now))
	}
	in.mu.Lock()
	a := in.apps["web"]
	require.LessOrEqual(t, a.bytes, maxBytesPerApp)
	kept := len(a.traffic)
	in.mu.Unlock()
	require.Less(t, kept, 2000, "the oldest samples were pushed out")
	require.Greater(t, kept, 100)

	// Prune forgets nodes gone quiet, so node ids cannot grow the map.
	in.prune(now.Add(time.Hour), map[string]time.Duration{"web": time.Minute})
	in.mu.Lock()
	require.Empty(t, in.apps["web"].windowEnd)
	require.Zero(t, in.apps["web"].bytes)
	in.mu.Unlock()
}

func TestPolicyOfAppliesDefaultsAndInitialDelay(t *testing.T) {
	t.Parallel()
	a, err := spec.Load([]byte("name: web\nimage: web:1\nport: 80\nhealth: {initial_delay: 7s}\nscaling: {min: 2, max: 9, target_cpu_percent: 60, window: 30s}\n"))
	require.NoError(t, err)
	a.Default()
	p := PolicyOf(a)
	require.Equal(t, 2, p.Min)
	require.Equal(t, 9, p.Max)
	require.Equal(t, 60.0, p.TargetCPUPercent)
	require.Equal(t, 30*time.Second, p.Window)
	require.Equal(t, 7*time.Second, p.InitialDelay)
	require.Equal(t, 300*time.Second, p.DownStabilization)
	require.Equal(t, 15*time.Second, p.UpCooldown)
	require.Equal(t, 100.0, p.UpPercent)
	require.Equal(t, 4, p.UpPods)
	require.Equal(t, 15*time.Second, p.UpPeriod)
}
