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
		in.addTraffic(&msg.Metrics{Node: "lb-1", App: "web", WindowStart: at.Add(-5 * time.Second), Window: spec.Duration(5 * time.Second), RPS: float64(i)})
		in.addUsage(&msg.Usage{App: "web", At: at, Instances: []msg.InstanceUsage{{Instance: "a1", CPUPercent: float64(i)}, {Instance: "b2", CPUPercent: 1}}})
	}
	in.addTraffic(&msg.Metrics{Node: "lb-1", App: "other", WindowStart: now, Window: spec.Duration(time.Second)})

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
