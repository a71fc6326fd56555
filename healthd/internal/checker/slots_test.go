package checker

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

func TestFairSlotsGoToTheAppHoldingFewest(t *testing.T) {
	t.Parallel()
	s := newFairSlots(2)
	ctx := context.Background()
	require.True(t, s.acquire(ctx, "hog"))
	require.True(t, s.acquire(ctx, "hog"))
	got := make(chan string, 8)
	wait := func(app string) {
		go func() {
			if s.acquire(ctx, app) {
				got <- app
			}
		}()
	}
	queued := func(app string, n int) {
		t.Helper()
		require.Eventually(t, func() bool {
			s.mu.Lock()
			defer s.mu.Unlock()
			return len(s.waiting[app]) == n
		}, 5*time.Second, time.Millisecond, "%d of %s waiting", n, app)
	}
	for range 3 {
		wait("hog")
	}
	queued("hog", 3) // the hog's probes queue first
	wait("small")
	queued("small", 1)
	s.release("hog")
	require.Equal(t, "small", <-got, "the freed slot goes to the app holding none, though the hog waited longer")
	s.release("hog")
	require.Equal(t, "hog", <-got)

	// A waiter whose context ends leaves the queue; one granted as it ends
	// hands the slot on.
	cctx, cancel := context.WithCancel(ctx)
	done := make(chan bool)
	go func() { done <- s.acquire(cctx, "gone") }()
	queued("gone", 1)
	cancel()
	require.False(t, <-done)
	s.release("small")
	require.Equal(t, "hog", <-got, "the cancelled waiter took nothing")
	s.mu.Lock()
	require.Empty(t, s.waiting["gone"])
	s.mu.Unlock()
}

// TestRunnerSharesSlotsFairly: an app whose 40 instances all hang cannot
// keep another app's instance from being probed on time, and no probe
// holds a slot past MaxTimeout whatever its spec says.
func TestRunnerSharesSlotsFairly(t *testing.T) {
	t.Parallel()
	f := &fakeProber{calls: map[string]int{}, paths: map[string]string{}}
	r := NewRunner(f, &recorder{}, 4)
	r.MaxTimeout = 150 * time.Millisecond
	start(t, r)
	var ts []Target
	for i := range 40 {
		h := target(fmt.Sprintf("hog.i%d", i), "hang", 100*time.Millisecond)
		h.Check.Interval, h.Check.Timeout = 2000000000, 1900000000 // 2 s, 1.9 s: capped to 150 ms
		ts = append(ts, h)
	}
	ts = append(ts, target("small.i0", "ok", 100*time.Millisecond))
	r.SetTargets(ts)
	time.Sleep(1050 * time.Millisecond) // the behaviour under test: turns taken in a second of real time
	require.GreaterOrEqual(t, f.count("small.i0"), 6, "about ten turns a second, each waiting at most one slot's release")
	require.LessOrEqual(t, f.maxSeen.Load(), int32(4))
	probed := 0
	for i := range 40 {
		if f.count(fmt.Sprintf("hog.i%d", i)) > 0 {
			probed++
		}
	}
	require.Greater(t, probed, 12, "the 150 ms cap, not the 1.9 s timeout, frees the hog's slots")
}
