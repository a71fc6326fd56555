package checker

import (
	"fmt"
	"testing"
	"time"

	"github.com/berthhq/berth/common/msg"
	"github.com/berthhq/berth/healthd/internal/probe"
	"github.com/stretchr/testify/require"
)

var (
	pass = probe.Result{OK: true}
	fail = probe.Result{Failure: msg.FailureTimeout}
)

func TestStepThresholds(t *testing.T) {
	t.Parallel()
	t0 := time.Unix(1000, 0)
	tests := []struct {
		name               string
		healthy, unhealthy int
		results            []probe.Result
		want               []string // status after each result
		transitions        int
	}{
		{"one pass is healthy at threshold 1", 1, 3, []probe.Result{pass}, []string{"healthy"}, 1},
		{"two passes needed", 2, 3, []probe.Result{pass, pass, pass}, []string{"unknown", "healthy", "healthy"}, 1},
		{"failures below threshold hold healthy", 1, 3, []probe.Result{pass, fail, fail, pass, fail, fail}, []string{"healthy", "healthy", "healthy", "healthy", "healthy", "healthy"}, 1},
		{"three failures make unhealthy", 1, 3, []probe.Result{pass, fail, fail, fail}, []string{"healthy", "healthy", "healthy", "unhealthy"}, 2},
		{"unknown to unhealthy directly", 1, 2, []probe.Result{fail, fail}, []string{"unknown", "unhealthy"}, 1},
		{"recovery needs the healthy threshold", 3, 1, []probe.Result{fail, pass, pass, fail, pass, pass, pass},
			[]string{"unhealthy", "unhealthy", "unhealthy", "unhealthy", "unhealthy", "unhealthy", "healthy"}, 2},
		{"flapping below both thresholds changes nothing", 2, 2, []probe.Result{pass, fail, pass, fail, pass, fail},
			[]string{"unknown", "unknown", "unknown", "unknown", "unknown", "unknown"}, 0},
		{"zero thresholds act as one", 0, 0, []probe.Result{fail, pass}, []string{"unhealthy", "healthy"}, 2},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			s, transitions := NewState(t0), 0
			for i, r := range tt.results {
				now := t0.Add(time.Duration(i+1) * time.Second)
				var changed bool
				s, changed = Step(s, r, tt.healthy, tt.unhealthy, now)
				require.Equal(t, tt.want[i], s.Status, "after result %d", i)
				if changed {
					transitions++
					require.Equal(t, now, s.Since)
				}
			}
			require.Equal(t, tt.transitions, transitions)
		})
	}
}

func TestStepCounts(t *testing.T) {
	t.Parallel()
	s := NewState(time.Unix(0, 0))
	s, _ = Step(s, fail, 1, 5, time.Unix(1, 0))
	s, _ = Step(s, fail, 1, 5, time.Unix(2, 0))
	require.Equal(t, 2, s.Failures)
	require.Zero(t, s.Successes)
	require.Equal(t, fail, s.Last)
	s, _ = Step(s, pass, 1, 5, time.Unix(3, 0))
	require.Equal(t, 1, s.Successes)
	require.Zero(t, s.Failures)
}

func TestOffsetIsStableAndBounded(t *testing.T) {
	t.Parallel()
	require.Equal(t, Offset("web.a", time.Second), Offset("web.a", time.Second))
	require.NotEqual(t, Offset("web.a", time.Second), Offset("web.b", time.Second))
	for i := range 1000 {
		o := Offset(fmt.Sprintf("app.i%d", i), 5*time.Second)
		require.GreaterOrEqual(t, o, time.Duration(0))
		require.Less(t, o, 5*time.Second)
	}
	require.Zero(t, Offset("x", 0))
}

// For 1000 targets at 1 s, no 100 ms slice of the interval holds more than
// twice its share (100).
func TestSpreadAcrossTheInterval(t *testing.T) {
	t.Parallel()
	const n, slices = 1000, 10
	counts := make([]int, slices)
	now := time.Unix(5000, 0)
	for i := range n {
		due := NextDue(fmt.Sprintf("app-%d.inst-%d", i/10, i), time.Second, now, time.Time{})
		counts[due.Sub(now)/(100*time.Millisecond)]++
	}
	for i, c := range counts {
		require.LessOrEqual(t, c, 2*n/slices, "slice %d holds %d of %d targets: %v", i, c, n, counts)
	}
}

func TestNextDue(t *testing.T) {
	t.Parallel()
	now := time.Unix(10_000, 250_000_000) // x.25 s
	key := "web.a"
	off := Offset(key, time.Second)
	due := NextDue(key, time.Second, now, time.Time{})
	require.True(t, due.After(now))
	require.LessOrEqual(t, due.Sub(now), time.Second)
	require.Equal(t, off, time.Duration(due.UnixNano()%int64(time.Second)), "due on the target's own spot of the grid")
	// Every checker computes the same instant.
	require.Equal(t, due, NextDue(key, time.Second, now, time.Time{}))
	// The next one is one interval later.
	require.Equal(t, due.Add(time.Second), NextDue(key, time.Second, due, time.Time{}))
	// Initial delay pushes the first probe past notBefore, still on the grid.
	later := NextDue(key, time.Second, now, now.Add(3*time.Second))
	require.False(t, later.Before(now.Add(3*time.Second)))
	require.Equal(t, off, time.Duration(later.UnixNano()%int64(time.Second)))
}
