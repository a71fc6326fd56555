package controller

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/berthhq/berth/common/msg"
	"github.com/berthhq/berth/scheduler/internal/docker"
	"github.com/berthhq/berth/scheduler/internal/reconcile"
)

// rolloutSpec is webSpec with a fast restart backoff, and auto_rollback
// as given.
func rolloutSpec(t *testing.T, version string, auto bool) string {
	t.Helper()
	return fmt.Sprintf(`
name: web
image: web:%s
port: 8080
health: {type: http, path: /healthz, interval: 1s, timeout: 500ms}
update: {max_surge: 1, max_unavailable: 0, min_healthy_time: 50ms, healthy_deadline: 1m, auto_rollback: %t}
restart: {max_attempts: 5, window: 10m, backoff_initial: 10ms, backoff_max: 1h}
stop: {grace: 1s, drain: 200ms}
`, version, auto)
}

// rolloutHarness runs a controller with healthd and an lbagent, with v1 of
// web converged on three healthy instances.
func rolloutHarness(t *testing.T, auto bool) (*fake, *harness) {
	t.Helper()
	f := newFake()
	f.apply(load(t, rolloutSpec(t, "v1", auto)), 3)
	h := start(t, f, Config{})
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() { h.healthd(ctx, 20*time.Millisecond) })
	wg.Go(func() { h.lbagent(ctx, 20*time.Millisecond) })
	t.Cleanup(func() { cancel(); wg.Wait() })
	require.Eventually(t, func() bool { return h.converged("web:v1", 3, true) }, 5*time.Second, 10*time.Millisecond)
	return f, h
}

// A version that crashes at start rolls back by itself at its third
// failure: the event names the exit code and carries the log tail, each
// exit has its own event, and the fix applied next starts at once, with a
// budget of its own.
func TestCrashAtStartRollsBack(t *testing.T) {
	t.Parallel()
	f, h := rolloutHarness(t, true)
	f.mu.Lock()
	f.crash["web:v2"] = 3
	f.mu.Unlock()
	f.apply(load(t, rolloutSpec(t, "v2", true)), 3)
	h.c.Wake()
	require.Eventually(t, func() bool { return len(eventsOf(f, msg.EventRolloutRolledBack)) == 1 }, 5*time.Second, 10*time.Millisecond)
	rb := eventsOf(f, msg.EventRolloutRolledBack)[0]
	require.Equal(t, "generation 2 failed: 3 of its instances failed within 10m0s, the last because its container exited with code 3: rolled back to generation 1's spec as generation 3 (image web:v1)", rb.Message)
	require.Equal(t, map[string]string{"from_generation": "2", "to_generation": "1", "generation": "3", "image": "web:v1", "healthy_deadline": "1m0s",
		"cause": "generation 2 failed: 3 of its instances failed within 10m0s, the last because its container exited with code 3"}, rb.Details)
	require.Len(t, rb.LogTail, 2)
	require.Equal(t, "starting web:v2", rb.LogTail[0])

	exits := eventsOf(f, msg.EventInstanceExited)
	require.Len(t, exits, 3)
	for _, e := range exits {
		require.Equal(t, "3", e.Details["exit_code"])
		require.Equal(t, "2", e.Details["generation"])
		require.Equal(t, "its container exited with code 3", e.Details["reason"])
		require.Len(t, e.LogTail, 2)
	}
	for _, e := range eventsOf(f, msg.EventInstanceReplaced) {
		if e.Details["generation"] == "2" {
			require.Equal(t, "3", e.Details["exit_code"], "instance_replaced carries the exit code too")
		}
	}
	require.Eventually(t, func() bool { return h.converged("web:v1", 3, true) }, 5*time.Second, 10*time.Millisecond, "v1 serves throughout")

	// The fix starts at once: generation 2's three failures are not its own.
	f.apply(load(t, rolloutSpec(t, "v3", true)), 3)
	h.c.Wake()
	require.Eventually(t, func() bool { return h.converged("web:v3", 3, true) }, 5*time.Second, 10*time.Millisecond)
	require.Empty(t, eventsOf(f, msg.EventAppFailed), "no breaker tripped")
}

// A version whose image cannot be pulled rolls back as well, naming the
// pull error.
func TestMissingImageRollsBack(t *testing.T) {
	t.Parallel()
	f, h := rolloutHarness(t, true)
	f.mu.Lock()
	f.missing["web:v2"] = errors.New("manifest unknown: web:v2")
	f.mu.Unlock()
	f.apply(load(t, rolloutSpec(t, "v2", true)), 3)
	h.c.Wake()
	require.Eventually(t, func() bool { return len(eventsOf(f, msg.EventRolloutRolledBack)) == 1 }, 5*time.Second, 10*time.Millisecond)
	rb := eventsOf(f, msg.EventRolloutRolledBack)[0]
	require.Contains(t, rb.Message, "generation 2 failed: 3 of its instances failed within 10m0s, the last because cannot start web: image web:v2 is not present and pulling it failed: manifest unknown: web:v2")
	require.Len(t, eventsOf(f, msg.EventImagePullFailed), 3)
	require.Eventually(t, func() bool { return h.converged("web:v1", 3, true) }, 5*time.Second, 10*time.Millisecond)
}

// Without auto_rollback the rollout stops, says so once, and stays
// stopped: no instance of the failed version starts again, and the old
// ones serve.
func TestFailedRolloutStopsWithoutAutoRollback(t *testing.T) {
	t.Parallel()
	f, h := rolloutHarness(t, false)
	f.mu.Lock()
	f.crash["web:v2"] = 3
	f.mu.Unlock()
	f.apply(load(t, rolloutSpec(t, "v2", false)), 3)
	h.c.Wake()
	require.Eventually(t, func() bool { return len(eventsOf(f, msg.EventRolloutFailed)) == 1 }, 5*time.Second, 10*time.Millisecond)
	failed := eventsOf(f, msg.EventRolloutFailed)[0]
	require.Contains(t, failed.Message, "the last because its container exited with code 3: the rollout stops")
	require.Equal(t, "2", failed.Details["generation"])
	require.Len(t, failed.LogTail, 2)
	require.Eventually(t, func() bool {
		records, _ := f.snapshot()
		return len(records) == 3 && h.converged("web:v1", 3, true)
	}, 5*time.Second, 10*time.Millisecond, "the dead instance of v2 is gone; v1 serves")
	started := len(eventsOf(f, msg.EventInstanceStarted))
	h.cycles(5)
	require.Len(t, eventsOf(f, msg.EventInstanceStarted), started, "nothing of v2 starts again")
	require.Len(t, eventsOf(f, msg.EventRolloutFailed), 1, "said once")
	require.True(t, h.converged("web:v1", 3, true))
}

// An instance whose container is dead serves nothing, whatever healthd
// said, also in an app without a check: while the breaker holds its
// replacement, its record says unhealthy (status shows it; it serves
// nothing).
func TestDeadInstanceHeldByTheBreakerIsUnhealthy(t *testing.T) {
	t.Parallel()
	f := newFake()
	f.onStart = func(docker.CreateOptions) bool { return false } // exits at once
	f.apply(load(t, "name: web\nimage: web:v1\nport: 8080\nrestart: {max_attempts: 1, window: 10m, backoff_initial: 10ms, backoff_max: 1h}\n"), 2)
	start(t, f, Config{})
	require.Eventually(t, func() bool { return len(eventsOf(f, msg.EventAppFailed)) == 1 }, 5*time.Second, 10*time.Millisecond)
	require.Eventually(t, func() bool {
		records, _ := f.snapshot()
		for _, r := range records {
			if r.State == msg.StateRunning && r.Health != msg.StatusUnhealthy {
				return false
			}
		}
		return len(records) > 0
	}, 5*time.Second, 10*time.Millisecond)
}

// A version OOM-killed at start: Docker's die event says 137, its state
// OOMKilled; the exit, the rollback and status name the OOM kill.
func TestOOMKilledVersionRollsBack(t *testing.T) {
	t.Parallel()
	f, h := rolloutHarness(t, true)
	f.mu.Lock()
	f.crash["web:v2"], f.oom["web:v2"] = 137, true
	f.mu.Unlock()
	f.apply(load(t, rolloutSpec(t, "v2", true)), 3)
	h.c.Wake()
	require.Eventually(t, func() bool { return len(eventsOf(f, msg.EventRolloutRolledBack)) == 1 }, 5*time.Second, 10*time.Millisecond)
	require.Contains(t, eventsOf(f, msg.EventRolloutRolledBack)[0].Message, "the last because "+reconcile.OOMReason)
	for _, e := range eventsOf(f, msg.EventInstanceExited) {
		require.Equal(t, "true", e.Details["oom_killed"])
		require.Equal(t, "137", e.Details["exit_code"])
		require.Equal(t, reconcile.OOMReason, e.Details["reason"])
	}
}

// scheduler restart: a new generation of the same spec replaces every
// instance by a rolling update; the app serves throughout.
func TestRestartReplacesEveryInstance(t *testing.T) {
	t.Parallel()
	f, h := rolloutHarness(t, true)
	before, _ := f.snapshot()
	old := map[string]bool{}
	for _, r := range before {
		old[r.ID] = true
	}
	f.mu.Lock()
	a := f.apps["web"]
	a.Generation++
	a.RestartedGeneration = a.Generation
	f.history["web"][a.Generation] = a.Spec
	f.apps["web"] = a
	f.mu.Unlock()
	h.c.Wake()
	require.Eventually(t, func() bool {
		records, _ := f.snapshot()
		for _, r := range records {
			if old[r.ID] {
				return false
			}
		}
		return h.converged("web:v1", 3, true)
	}, 10*time.Second, 10*time.Millisecond, "three new instances of the same image, none of the old")
	require.Empty(t, eventsOf(f, msg.EventRolloutRolledBack))
}
