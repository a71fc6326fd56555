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
		require.Eventually(t, func() bool { return s.waitingOf(app) == n }, 5*time.Second, time.Millisecond, "%d of %s waiting", n, app)
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
	require.Zero(t, s.waitingOf("gone"))
	s.mu.Lock()
	require.NotContains(t, s.apps, "gone", "an app that holds and waits for nothing is forgotten")
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

// wait queues a waiter of app without a goroutine (the caller holds no
// slot for it); the caller must hold no lock.
func (s *fairSlots) wait(app string) chan struct{} {
	s.mu.Lock()
	defer s.mu.Unlock()
	ch := make(chan struct{})
	a := s.app(app)
	a.waiting = append(a.waiting, ch)
	s.changed(a)
	return ch
}

func TestFairSlotsOrderAmongManyWaitingApps(t *testing.T) {
	t.Parallel()
	s := newFairSlots(6)
	ctx := context.Background()
	// Held: b 3, c 2, d 1; every slot taken.
	for app, n := range map[string]int{"b": 3, "c": 2, "d": 1} {
		for range n {
			require.True(t, s.acquire(ctx, app))
		}
	}
	b1, c1, d1, d2, e1 := s.wait("b"), s.wait("c"), s.wait("d"), s.wait("d"), s.wait("e")
	granted := func(want chan struct{}, why string) {
		t.Helper()
		select {
		case <-want:
		default:
			t.Fatal(why)
		}
	}
	s.release("b") // b 2, c 2, d 1, e 0 → e
	granted(e1, "e holds none")
	s.release("b") // b 1, c 2, d 1, e 1 → b (ties by name: b < d < e)
	granted(b1, "b, d and e hold 1: b first by name")
	s.release("c") // b 2, c 1, d 1, e 1 → c
	granted(c1, "c, d and e hold 1: c first")
	s.release("e") // b 2, c 2, d 1, e 0; e waits no more → d, its oldest waiter first
	granted(d1, "d holds fewest of those waiting")
	s.release("b")
	granted(d2, "d's second waiter")
	require.Zero(t, s.queue.Len())
	s.release("b")
	s.mu.Lock()
	defer s.mu.Unlock()
	require.Equal(t, 1, s.free, "a release with nobody waiting frees the slot")
	require.NotContains(t, s.apps, "e", "an app that holds and waits for nothing is forgotten")
}

// BenchmarkFairSlotsRelease times one release while 1,000 or 10,000 apps
// wait (issue 30: 10,000 apps of 3 at 30,000 targets): with the waiting
// apps in a heap it grows with the log of them. The scan of every
// waiting app it replaced cost 10x from one size to the other, and at
// 30,000 targets more CPU than the probes.
func BenchmarkFairSlotsRelease(b *testing.B) {
	for _, apps := range []int{1000, 10000} {
		b.Run(fmt.Sprintf("waiting=%d", apps), func(b *testing.B) {
			s := newFairSlots(1)
			require.True(b, s.acquire(context.Background(), "holder"))
			names := make([]string, apps)
			for i := range names {
				names[i] = fmt.Sprintf("app%05d", i)
				s.wait(names[i])
			}
			b.ReportAllocs()
			for b.Loop() {
				s.release("holder") // to names[0]: it holds none, and is first by name
				// names[0] hands the slot back to the holder outside the
				// queue and waits anew: as many apps wait at every release.
				s.mu.Lock()
				first := s.apps[names[0]]
				first.inUse--
				s.changed(first)
				s.app("holder").inUse++
				s.mu.Unlock()
				s.wait(names[0])
			}
		})
	}
}
