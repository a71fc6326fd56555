package checker

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/berthhq/berth/common/msg"
	"github.com/berthhq/berth/common/spec"
	"github.com/berthhq/berth/healthd/internal/probe"
	"github.com/stretchr/testify/require"
)

// fakeProber answers by key: "hang" waits for the deadline, "fail" fails,
// anything else passes after delay. It records calls and concurrency.
type fakeProber struct {
	delay    time.Duration
	mu       sync.Mutex
	calls    map[string]int
	paths    map[string]string
	first    map[string]time.Time // when each key was first probed
	inFlight atomic.Int32
	maxSeen  atomic.Int32
}

func (f *fakeProber) Probe(ctx context.Context, t probe.Target) probe.Result {
	n := f.inFlight.Add(1)
	defer f.inFlight.Add(-1)
	for {
		m := f.maxSeen.Load()
		if n <= m || f.maxSeen.CompareAndSwap(m, n) {
			break
		}
	}
	f.mu.Lock()
	f.calls[t.Key]++
	f.paths[t.Key] = t.Check.Path
	if _, ok := f.first[t.Key]; !ok && f.first != nil {
		f.first[t.Key] = time.Now()
	}
	f.mu.Unlock()
	switch t.Address {
	case "hang":
		<-ctx.Done()
		return probe.Result{Failure: msg.FailureTimeout}
	case "fail":
		return probe.Result{Failure: msg.FailureConnectionRefused}
	}
	time.Sleep(f.delay) // the behaviour under test: a probe that takes a while
	return probe.Result{OK: true}
}

func (f *fakeProber) count(key string) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.calls[key]
}

type recorder struct {
	mu      sync.Mutex
	changes []Report
	removed []string
}

func (r *recorder) Probed(rep Report) {
	if rep.Changed {
		r.mu.Lock()
		r.changes = append(r.changes, rep)
		r.mu.Unlock()
	}
}

func (r *recorder) Removed(key string) {
	r.mu.Lock()
	r.removed = append(r.removed, key)
	r.mu.Unlock()
}

func target(key, addr string, interval time.Duration) Target {
	return Target{Target: probe.Target{Key: key, Address: addr, Check: spec.Health{Type: spec.HealthHTTP, Path: "/a",
		Interval: spec.Duration(interval), Timeout: spec.Duration(interval / 2), HealthyThreshold: 1, UnhealthyThreshold: 2}}}
}

func start(t *testing.T, r *Runner) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- r.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		require.NoError(t, <-done)
	})
}

func TestRunnerProbesAtIntervalDespiteAHangingTarget(t *testing.T) {
	t.Parallel()
	f := &fakeProber{calls: map[string]int{}, paths: map[string]string{}}
	rec := &recorder{}
	r := NewRunner(f, rec, 8)
	start(t, r)
	began := time.Now()
	r.SetTargets([]Target{target("web.ok", "ok", 100*time.Millisecond), target("web.hang", "hang", 100*time.Millisecond)})
	require.Eventually(t, func() bool { return f.count("web.ok") >= 10 && f.count("web.hang") >= 10 }, 10*time.Second, 5*time.Millisecond,
		"a hanging probe ends at its timeout and the next turn runs; its neighbour's turns go on")
	// Never more often than the interval; a busy machine can only make it
	// less often, so that is not asserted.
	turns := int(time.Since(began)/(100*time.Millisecond)) + 2
	require.LessOrEqual(t, f.count("web.ok"), turns, "a 100 ms target is probed every 100 ms")
	require.LessOrEqual(t, f.count("web.hang"), turns, "a 100 ms target is probed every 100 ms")
	rec.mu.Lock()
	defer rec.mu.Unlock()
	statuses := map[string]string{}
	for _, c := range rec.changes {
		statuses[c.Target.Key] = c.State.Status
	}
	require.Equal(t, map[string]string{"web.ok": msg.StatusHealthy, "web.hang": msg.StatusUnhealthy}, statuses)
	for _, c := range rec.changes {
		require.NotNil(t, c.History, "every report carries the target's history")
		s := c.History.Snapshot()
		require.NotEmpty(t, s.Results)
		if c.Target.Key == "web.hang" {
			require.Positive(t, s.Counts[msg.FailureTimeout], "the hanging target's timeouts are counted")
		}
	}
}

func TestRunnerBoundsConcurrency(t *testing.T) {
	t.Parallel()
	f := &fakeProber{delay: 40 * time.Millisecond, calls: map[string]int{}, paths: map[string]string{}}
	r := NewRunner(f, &recorder{}, 2)
	start(t, r)
	var ts []Target
	for _, k := range []string{"a.1", "a.2", "a.3", "a.4", "a.5", "a.6"} {
		ts = append(ts, target(k, "ok", 100*time.Millisecond))
	}
	r.SetTargets(ts)
	require.Eventually(t, func() bool {
		for _, tg := range ts {
			if f.count(tg.Key) < 2 {
				return false
			}
		}
		return true
	}, 10*time.Second, 5*time.Millisecond, "every target is probed twice")
	require.LessOrEqual(t, f.maxSeen.Load(), int32(2))
}

func TestRunnerAppliesChangesAndRemovals(t *testing.T) {
	t.Parallel()
	f := &fakeProber{calls: map[string]int{}, paths: map[string]string{}}
	rec := &recorder{}
	r := NewRunner(f, rec, 4)
	start(t, r)
	a, b := target("web.a", "ok", 50*time.Millisecond), target("web.b", "ok", 50*time.Millisecond)
	r.SetTargets([]Target{a, b})
	require.Eventually(t, func() bool { return f.count("web.b") > 0 }, 2*time.Second, 5*time.Millisecond)
	require.Equal(t, 2, r.Targets())

	// A spec change applies to the next probe, without a restart.
	a.Check.Path = "/b"
	r.SetTargets([]Target{a})
	require.Eventually(t, func() bool { f.mu.Lock(); defer f.mu.Unlock(); return f.paths["web.a"] == "/b" }, 2*time.Second, 5*time.Millisecond)

	// A removed target is reported and no longer probed.
	rec.mu.Lock()
	require.Equal(t, []string{"web.b"}, rec.removed)
	rec.mu.Unlock()
	n, turns := f.count("web.b"), f.count("web.a")
	require.Eventually(t, func() bool { return f.count("web.a") >= turns+4 }, 5*time.Second, 5*time.Millisecond, "the remaining target's turns go on")
	require.LessOrEqual(t, f.count("web.b"), n+1, "at most a probe already in flight")
	require.Equal(t, 1, r.Targets())
}

func TestRunnerHonoursInitialDelay(t *testing.T) {
	t.Parallel()
	f := &fakeProber{calls: map[string]int{}, paths: map[string]string{}, first: map[string]time.Time{}}
	r := NewRunner(f, &recorder{}, 4)
	start(t, r)
	tg := target("web.new", "ok", 50*time.Millisecond)
	tg.NotBefore = time.Now().Add(400 * time.Millisecond)
	r.SetTargets([]Target{tg})
	require.Eventually(t, func() bool { return f.count("web.new") > 0 }, 5*time.Second, 5*time.Millisecond)
	f.mu.Lock()
	defer f.mu.Unlock()
	require.False(t, f.first["web.new"].Before(tg.NotBefore), "no probe within the initial delay")
}

// A target seeded from its published health carries on from it: a seeded
// healthy target with unhealthy_threshold 3 stays healthy through two
// failures and turns unhealthy on the third, reported from "healthy"; a
// target with no seed starts unknown.
func TestRunnerSeedsNewTargetsFromPublishedHealth(t *testing.T) {
	t.Parallel()
	f := &fakeProber{calls: map[string]int{}, paths: map[string]string{}}
	rec := &recorder{}
	r := NewRunner(f, rec, 4)
	r.Seed = func(tg Target) (State, bool) {
		if tg.Key != "web.seeded" {
			return State{}, false
		}
		return State{Status: msg.StatusHealthy, Successes: 7}, true
	}
	start(t, r)
	seeded, fresh := target("web.seeded", "fail", 100*time.Millisecond), target("web.fresh", "ok", 100*time.Millisecond)
	seeded.Check.UnhealthyThreshold = 3
	r.SetTargets([]Target{seeded, fresh})
	require.Eventually(t, func() bool { return f.count("web.seeded") >= 4 && f.count("web.fresh") >= 1 }, 3*time.Second, 10*time.Millisecond)
	rec.mu.Lock()
	defer rec.mu.Unlock()
	var got []string
	for _, c := range rec.changes {
		got = append(got, c.Target.Key+":"+c.From+"->"+c.State.Status)
	}
	require.ElementsMatch(t, []string{"web.seeded:healthy->unhealthy", "web.fresh:unknown->healthy"}, got)
}

// BenchmarkRunnerTakeover is a checker taking over a peer's half of 30,000
// targets (SetTargets from 15,000 to 30,000, each new one seeded), the
// runner's part of a takeover (issue 30).
func BenchmarkRunnerTakeover(b *testing.B) {
	st, _ := spec.ParseStatusRanges("200-399")
	all := make([]Target, 30000)
	for i := range all {
		all[i] = target(fmt.Sprintf("app%05d.t%d", i/3, i), "127.0.0.1:80", 10*time.Second)
		all[i].Check.ExpectedStatus = st
	}
	var half []Target
	for i, t := range all {
		if i%2 == 0 {
			half = append(half, t)
		}
	}
	for b.Loop() {
		b.StopTimer()
		r := NewRunner(nil, &recorder{}, 10)
		r.Seed = func(Target) (State, bool) { return State{Status: msg.StatusHealthy}, true }
		r.SetTargets(half)
		b.StartTimer()
		r.SetTargets(all)
	}
}
