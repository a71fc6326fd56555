package controller

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.uber.org/zap"

	"github.com/berthhq/berth/common/lifecycle"
	"github.com/berthhq/berth/common/msg"
	"github.com/berthhq/berth/common/spec"
	"github.com/berthhq/berth/scheduler/internal/docker"
	"github.com/berthhq/berth/scheduler/internal/store"
)

const webSpec = `
name: web
image: web:%s
port: 8080
health: {type: http, path: /healthz, interval: 1s, timeout: 500ms}
update: {max_surge: 1, max_unavailable: 0, min_healthy_time: 300ms, healthy_deadline: 1m}
stop: {grace: 1s, drain: 5s}
`

func webApp(t *testing.T, version string) string {
	t.Helper()
	return fmt.Sprintf(webSpec, version)
}

// desiredHash is the spec hash the controller gives instances of s.
func desiredHash(s *spec.App) string {
	d := *s
	d.Default()
	return New(Config{}, Deps{}, zap.NewNop()).desired(store.App{Name: s.Name, Spec: s}, &d).SpecHash
}

// healthd marks every running instance healthy after delay, as healthd
// would, until ctx ends.
func (h *harness) healthd(ctx context.Context, delay time.Duration) {
	var wg sync.WaitGroup
	seen := map[string]bool{}
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	defer wg.Wait()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		records, _ := h.f.snapshot()
		for _, r := range records {
			if r.State == msg.StateRunning && !seen[r.ID] {
				seen[r.ID] = true
				wg.Go(func() {
					select {
					case <-time.After(delay):
						h.setHealth(r, msg.StatusHealthy)
					case <-ctx.Done():
					}
				})
			}
		}
	}
}

// lbagent applies every revision after delay, as a live lbagent would.
func (h *harness) lbagent(ctx context.Context, delay time.Duration) {
	lifecycle.Every(ctx, delay, func() {
		h.f.mu.Lock()
		rev := h.f.rev
		h.f.mu.Unlock()
		h.setAgent("lb-1", rev, 0)
	})
}

// converged reports whether the app runs n instances of image, all
// running (and healthy, with healthy set) and none other.
func (h *harness) converged(image string, n int, healthy bool) bool {
	records, _ := h.f.snapshot()
	health, _ := h.health.Rows()
	count := 0
	for _, r := range records {
		if r.State == msg.StateFailed {
			continue // lost with its host: kept only to be counted
		}
		if r.State != msg.StateRunning || h.f.image(r) != image {
			return false
		}
		if hh := health[msg.InstanceKey(r.App, r.ID)]; healthy && (hh == nil || hh.Status != msg.StatusHealthy) {
			return false
		}
		count++
	}
	return count == n
}

// A rolling update moves at the speed of health: each step follows the
// moment the new instance has been healthy for min_healthy_time and the
// moment the old one's drain is confirmed, with a resync of an hour.
func TestRolloutIsPacedByHealthNotByResync(t *testing.T) {
	t.Parallel()
	f := newFake()
	f.apply(load(t, webApp(t, "v1")), 3)
	h := start(t, f, Config{})
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() { h.healthd(ctx, 50*time.Millisecond) })
	wg.Go(func() { h.lbagent(ctx, 30*time.Millisecond) })
	t.Cleanup(func() { cancel(); wg.Wait() })

	require.Eventually(t, func() bool { return h.converged("web:v1", 3, true) }, 5*time.Second, 10*time.Millisecond)
	began := time.Now()
	f.apply(load(t, webApp(t, "v2")), 3)
	h.c.Wake()
	require.Eventually(t, func() bool { return h.converged("web:v2", 3, true) }, 10*time.Second, 10*time.Millisecond)
	took := time.Since(began)
	// Three steps of health (50 ms) + min_healthy_time (300 ms) + a confirmed drain.
	require.Less(t, took, 3*time.Second, "the rollout waited for something other than health")
	require.GreaterOrEqual(t, took, 3*300*time.Millisecond, "each step waits min_healthy_time")
	_, events := f.snapshot()
	require.Equal(t, 3, count(events, msg.EventInstanceDraining))
	require.Equal(t, 3, count(events, msg.EventInstanceStopped))
	require.Equal(t, 6, count(events, msg.EventInstanceStarted))
	t.Logf("rollout of 3 took %s", took)
}

// A draining instance is stopped only once every live lbagent applied
// the revision that took it out; an lbagent that stopped reporting does
// not hold it.
func TestDrainWaitsForLiveAgents(t *testing.T) {
	t.Parallel()
	f := newFake()
	s := load(t, webApp(t, "v1"))
	f.apply(s, 1)
	h := start(t, f, Config{})
	h.setAgent("lb-dead", 0, 2*msg.AgentTTL)
	require.Eventually(t, func() bool { return h.converged("web:v1", 1, false) }, 5*time.Second, 10*time.Millisecond)

	h.setAgent("lb-1", 0, 0) // live, behind
	f.apply(s, 0)
	h.c.Wake()
	require.Eventually(t, func() bool {
		records, _ := f.snapshot()
		return len(records) == 1 && records[0].State == msg.StateDraining
	}, 5*time.Second, 10*time.Millisecond)
	h.cycles(3)
	records, _ := f.snapshot()
	require.Len(t, records, 1, "not stopped before the live lbagent confirmed")
	require.Empty(t, f.stops)

	began := time.Now()
	h.setAgent("lb-1", f.Revision("web", records[0].ID), 0)
	require.Eventually(t, func() bool { r, _ := f.snapshot(); return len(r) == 0 }, 2*time.Second, 5*time.Millisecond)
	require.Less(t, time.Since(began), time.Second, "stopped as soon as it was confirmed")
	require.Len(t, f.stops, 1)
}

// A drain nobody confirms ends with stop.drain; the planner's wake, not
// the resync, ends it.
func TestDrainEndsAtTheDrainTime(t *testing.T) {
	t.Parallel()
	f := newFake()
	s := load(t, webApp(t, "v1"))
	s.Stop.Drain = spec.Duration(400 * time.Millisecond)
	f.apply(s, 1)
	h := start(t, f, Config{})
	require.Eventually(t, func() bool { return h.converged("web:v1", 1, false) }, 5*time.Second, 10*time.Millisecond)
	h.setAgent("lb-stuck", 0, 0)
	f.apply(s, 0)
	began := time.Now()
	h.c.Wake()
	require.Eventually(t, func() bool { r, _ := f.snapshot(); return len(r) == 0 }, 3*time.Second, 5*time.Millisecond)
	require.InDelta(t, 400*time.Millisecond, time.Since(began), float64(300*time.Millisecond))
}

// A slow stop (a long grace) happens beside the loop: the next start does
// not wait for it, and Run returns only after it ends.
func TestRemovalRunsBesideTheLoopAndIsJoined(t *testing.T) {
	t.Parallel()
	f := newFake()
	f.stopBlock = make(chan struct{})
	f.apply(load(t, webApp(t, "v1")), 1)
	h := start(t, f, Config{})
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() { h.healthd(ctx, 20*time.Millisecond) })
	wg.Go(func() { h.lbagent(ctx, 20*time.Millisecond) })
	t.Cleanup(func() { cancel(); wg.Wait() })
	require.Eventually(t, func() bool { return h.converged("web:v1", 1, true) }, 5*time.Second, 10*time.Millisecond)

	f.apply(load(t, webApp(t, "v2")), 1)
	h.c.Wake()
	// The old instance's stop hangs; the new one serves meanwhile.
	require.Eventually(t, func() bool {
		records, _ := f.snapshot()
		for _, r := range records {
			if r.State == msg.StateRunning && f.image(r) == "web:v2" {
				return true
			}
		}
		return false
	}, 5*time.Second, 10*time.Millisecond)
	require.Eventually(t, func() bool {
		h.c.mu.Lock()
		defer h.c.mu.Unlock()
		return len(h.c.removing) == 1
	}, 5*time.Second, 10*time.Millisecond, "the old instance's removal is in flight")
	// The loop goes on meanwhile: a scale-up is served while the stop hangs.
	f.mu.Lock()
	a := f.apps["web"]
	a.DesiredReplicas = 2
	f.apps["web"] = a
	f.mu.Unlock()
	h.c.Wake()
	require.Eventually(t, func() bool { return runningOf(f, "web:v2") == 2 }, 5*time.Second, 10*time.Millisecond)

	stopped := make(chan struct{})
	go func() { h.stop(); close(stopped) }()
	select {
	case <-stopped:
	case <-time.After(5 * time.Second):
		t.Fatal("Run did not join its removal")
	}
}

// A crash-looping app trips the breaker: a few replacements, then
// app_failed once, and no more starts.
func TestBreakerStopsACrashLoop(t *testing.T) {
	t.Parallel()
	f := newFake()
	f.onStart = func(docker.CreateOptions) bool { return false } // exits at once
	s := load(t, fmt.Sprintf(webSpec+"restart: {max_attempts: 3, window: 10m, backoff_initial: 10ms, backoff_max: 1h}\n", "v1"))
	f.apply(s, 1)
	h := start(t, f, Config{})
	require.Eventually(t, func() bool { _, e := f.snapshot(); return slices.Contains(e, "app_failed") }, 5*time.Second, 10*time.Millisecond)
	// Cycles run until past the backoff a closed breaker would wait
	// before the next start (10, 20, 40, then 80 ms), and a few more.
	for failed := time.Now(); time.Since(failed) < 200*time.Millisecond; {
		h.cycles(1)
	}
	h.cycles(3)
	_, events := f.snapshot()
	require.Equal(t, 3, count(events, msg.EventInstanceReplaced), "%v", events)
	require.Equal(t, 1, count(events, msg.EventAppFailed), "reported once per backoff_max")
	starts := count(events, msg.EventInstanceStarted)
	h.cycles(3)
	_, events = f.snapshot()
	require.Equal(t, starts, count(events, msg.EventInstanceStarted), "no start while the breaker is open")
}

// A container of the desired spec that no record owns (left by a leader
// that died mid-start) is adopted, not replaced by a new one.
func TestOrphanOfTheDesiredSpecIsAdopted(t *testing.T) {
	t.Parallel()
	f := newFake()
	s := load(t, webApp(t, "v1"))
	f.apply(s, 1)
	hash := desiredHash(s)
	f.containers["orphan"] = &docker.Container{ID: "orphan", App: "web", Instance: "adoptme", SpecHash: hash, Running: true,
		Address: "127.0.0.1:30000", Name: "web:v1", Generation: 1}
	f.containers["stale"] = &docker.Container{ID: "stale", App: "web", Instance: "old", SpecHash: "other", Running: true, Name: "web:v0"}
	h := start(t, f, Config{})
	require.Eventually(t, func() bool {
		records, events := f.snapshot()
		return len(records) == 1 && records[0].ID == "adoptme" && slices.Contains(events, "instance_adopted")
	}, 5*time.Second, 10*time.Millisecond)
	require.Eventually(t, func() bool { _, err := f.Inspect(context.Background(), "stale"); return err != nil }, 5*time.Second, 10*time.Millisecond,
		"an orphan of another spec is removed")
	_, events := f.snapshot()
	require.Zero(t, count(events, msg.EventInstanceStarted))
	require.NotNil(t, h)
}

// A container that dies leaves berth_instances at once, and is replaced.
func TestDeadContainerIsFailedAtOnceAndReplaced(t *testing.T) {
	t.Parallel()
	f := newFake()
	f.apply(load(t, webApp(t, "v1")+"restart: {backoff_initial: 10ms}\n"), 1)
	h := start(t, f, Config{})
	require.Eventually(t, func() bool { return h.converged("web:v1", 1, false) }, 5*time.Second, 10*time.Millisecond)
	records, _ := f.snapshot()
	f.kill(records[0].ContainerID)
	f.mu.Lock()
	failed := f.failed[records[0].ID]
	f.mu.Unlock()
	require.True(t, failed, "failed in berth_instances from the event alone")
	require.Eventually(t, func() bool {
		r, e := f.snapshot()
		return len(r) == 1 && r[0].ID != records[0].ID && slices.Contains(e, "instance_replaced")
	}, 5*time.Second, 10*time.Millisecond)
}

func TestStopTimeoutHonoursGrace(t *testing.T) {
	t.Parallel()
	c := &Controller{cfg: Config{StopTimeout: 2 * time.Minute}}
	require.Equal(t, 2*time.Minute, c.stopTimeout(30*time.Second))
	require.Equal(t, 10*time.Minute+10*time.Second, c.stopTimeout(10*time.Minute), "never cut the spec's grace short")
}

// runningOf counts the running instances of image.
func runningOf(f *fake, image string) int {
	records, _ := f.snapshot()
	n := 0
	for _, r := range records {
		if r.State == msg.StateRunning && f.image(r) == image {
			n++
		}
	}
	return n
}

func count(kinds []msg.EventKind, kind msg.EventKind) int {
	n := 0
	for _, k := range kinds {
		if k == kind {
			n++
		}
	}
	return n
}

// What the controller remembers of instances and apps goes with them.
func TestMemoryForgetsWhatIsGone(t *testing.T) {
	t.Parallel()
	m := newMemory()
	now := time.Now()
	m.since("web.a", msg.StatusHealthy, now)
	m.since("web.b", msg.StatusUnhealthy, now)
	require.True(t, m.report("web", time.Minute, now))
	require.True(t, m.report("gone", time.Minute, now))
	m.forget(map[string]bool{"web.a": true}, map[string]store.App{"web": {Name: "web"}})
	require.Len(t, m.healthySince, 1)
	require.Empty(t, m.unhealthySince)
	require.Contains(t, m.tripped, "web")
	require.NotContains(t, m.tripped, "gone")
	require.False(t, m.report("web", time.Minute, now.Add(time.Second)), "reported once per period")
}

// A container gets the spec's limits: resources.pids raised by the spec
// reaches Docker.
func TestStartPassesTheSpecLimits(t *testing.T) {
	t.Parallel()
	f := newFake()
	f.apply(load(t, webApp(t, "v1")+"resources: {pids: 4096, cpu: 0.5, memory: 64Mi}\n"), 1)
	h := start(t, f, Config{})
	require.Eventually(t, func() bool { return h.converged("web:v1", 1, false) }, 5*time.Second, 10*time.Millisecond)
	f.mu.Lock()
	defer f.mu.Unlock()
	require.Len(t, f.created, 1)
	require.Equal(t, 4096, f.created[0].Pids)
	require.Equal(t, 0.5, f.created[0].CPU)
	require.Equal(t, int64(64<<20), f.created[0].Memory)
}
