package controller

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/berthhq/berth/common/msg"
	"github.com/berthhq/berth/common/spec"
	"github.com/berthhq/berth/scheduler/internal/docker"
	"github.com/berthhq/berth/scheduler/internal/store"
)

// releaseSpec is rolloutSpec with a release task.
func releaseSpec(t *testing.T, version string, auto bool, release string) string {
	t.Helper()
	return rolloutSpec(t, version, auto) + "release: " + release + "\n"
}

const migrate = "{command: [/app/migrate, up], timeout: 1m, env: {MIGRATE: \"1\"}}"

// releaseHarness runs a controller with healthd and an lbagent; the app
// is not applied yet.
func releaseHarness(t *testing.T, f *fake, term uint64) *harness {
	t.Helper()
	h := startAt(t, f, Config{ReleasePoll: time.Hour}, term) // the die event decides, never the poll
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() { h.healthd(ctx, 20*time.Millisecond) })
	wg.Go(func() { h.lbagent(ctx, 20*time.Millisecond) })
	t.Cleanup(func() { cancel(); wg.Wait() })
	return h
}

// releaseContainers are the release containers created so far.
func releaseContainers(f *fake) []docker.CreateOptions {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []docker.CreateOptions
	for _, o := range f.created {
		if o.Release {
			out = append(out, o)
		}
	}
	return out
}

// instancesOf counts the instance containers ever created of image.
func instancesOf(f *fake, image string) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	n := 0
	for _, o := range f.created {
		if !o.Release && o.Image == image {
			n++
		}
	}
	return n
}

// running returns the id of the release container of a generation once
// it runs.
func runningRelease(t *testing.T, f *fake, gen int64) string {
	t.Helper()
	var id string
	require.Eventually(t, func() bool {
		f.mu.Lock()
		defer f.mu.Unlock()
		for _, c := range f.containers {
			if c.Release && c.Generation == gen && c.Running {
				id = c.ID
				return true
			}
		}
		return false
	}, 5*time.Second, 5*time.Millisecond)
	return id
}

// The first deploy and each new version run their release once, before
// any of their instances: while it runs nothing of the version starts and
// the old version serves untouched; exit 0 lets the rollout go. The
// release container has the app's env with the release's over it, the
// release command, the release label, and is removed once it ended.
func TestReleaseRunsOnceBeforeEachVersion(t *testing.T) {
	t.Parallel()
	f := newFake()
	h := releaseHarness(t, f, 1)
	s := load(t, releaseSpec(t, "v1", true, migrate))
	s.Env = map[string]spec.EnvValue{"DATABASE_URL": spec.PlainValue("postgres://db")}
	f.apply(s, 2)
	h.c.Wake()
	id := runningRelease(t, f, 1)
	h.cycles(3)
	require.Zero(t, instancesOf(f, "web:v1"), "no instance before its release succeeded")
	rels := releaseContainers(f)
	require.Len(t, rels, 1)
	require.Equal(t, []string{"/app/migrate", "up"}, rels[0].Command)
	require.Equal(t, "1", rels[0].Env["MIGRATE"])
	require.Equal(t, "postgres://db", rels[0].Env["DATABASE_URL"], "the app's env, secrets opened as for instances")
	require.Equal(t, "release-1", rels[0].Instance)
	f.releaseEnd(id, 0)
	require.Eventually(t, func() bool { return h.converged("web:v1", 2, true) }, 5*time.Second, 10*time.Millisecond)
	require.Len(t, eventsOf(f, msg.EventReleaseSucceeded), 1)
	f.mu.Lock()
	_, kept := f.containers[id]
	f.mu.Unlock()
	require.False(t, kept, "its container is removed")

	f.apply(load(t, releaseSpec(t, "v2", true, migrate)), 2)
	h.c.Wake()
	id = runningRelease(t, f, 2)
	h.cycles(3)
	require.Zero(t, instancesOf(f, "web:v2"), "no instance of v2 while its release runs")
	require.True(t, h.converged("web:v1", 2, true), "v1 serves untouched")
	f.releaseEnd(id, 0)
	require.Eventually(t, func() bool { return h.converged("web:v2", 2, true) }, 5*time.Second, 10*time.Millisecond)
	h.cycles(3)
	require.Len(t, releaseContainers(f), 2, "once per version")
	ok := eventsOf(f, msg.EventReleaseSucceeded)
	require.Len(t, ok, 2)
	require.Equal(t, "0", ok[1].Details["exit_code"])
	require.Equal(t, "release-2", ok[1].Instance)

	// A restart rolls every instance, and releases nothing: the same spec.
	f.mu.Lock()
	a := f.apps["web"]
	a.Generation++
	a.RestartedGeneration = a.Generation
	f.apps["web"] = a
	f.mu.Unlock()
	h.c.Wake()
	require.Eventually(t, func() bool { return instancesOf(f, "web:v2") == 4 && h.converged("web:v2", 2, true) }, 5*time.Second, 10*time.Millisecond)
	require.Len(t, releaseContainers(f), 2, "a restart runs no release")
}

// A release that exits non-zero fails the rollout: no instance of the
// version ever starts, the old ones serve on, release_failed carries the
// exit code and the log tail, and the rollback's cause names it.
func TestFailedReleaseRollsBack(t *testing.T) {
	t.Parallel()
	for _, auto := range []bool{true, false} {
		t.Run(fmt.Sprintf("auto_rollback %t", auto), func(t *testing.T) {
			t.Parallel()
			f := newFake()
			h := releaseHarness(t, f, 1)
			f.apply(load(t, rolloutSpec(t, "v1", auto)), 2)
			h.c.Wake()
			require.Eventually(t, func() bool { return h.converged("web:v1", 2, true) }, 5*time.Second, 10*time.Millisecond)
			f.mu.Lock()
			f.releaseExit["web:v2"] = 3
			f.mu.Unlock()
			f.apply(load(t, releaseSpec(t, "v2", auto, migrate)), 2)
			h.c.Wake()
			kind := msg.EventRolloutFailed
			if auto {
				kind = msg.EventRolloutRolledBack
			}
			require.Eventually(t, func() bool { return len(eventsOf(f, kind)) == 1 }, 5*time.Second, 10*time.Millisecond)
			h.cycles(5)
			require.Zero(t, instancesOf(f, "web:v2"), "no instance of the failed version")
			require.True(t, h.converged("web:v1", 2, true), "v1 keeps serving")
			failed := eventsOf(f, msg.EventReleaseFailed)
			require.Len(t, failed, 1)
			require.Equal(t, "3", failed[0].Details["exit_code"])
			require.Equal(t, "release task exited with code 3", failed[0].Details["reason"])
			require.Equal(t, []string{"starting web:v2", "fatal: bad config in c003"}, failed[0].LogTail)
			ro := eventsOf(f, kind)[0]
			require.Equal(t, "generation 2 failed: release task exited with code 3", ro.Details["cause"])
			require.Equal(t, failed[0].LogTail, ro.LogTail, "the rollout's event carries the release's tail")
			require.Len(t, releaseContainers(f), 1, "never run again")
			require.Len(t, eventsOf(f, kind), 1, "reported once")
		})
	}
}

// A release past its timeout is killed and fails.
func TestReleaseTimeout(t *testing.T) {
	t.Parallel()
	f := newFake()
	h := releaseHarness(t, f, 1)
	f.apply(load(t, rolloutSpec(t, "v1", true)), 1)
	h.c.Wake()
	require.Eventually(t, func() bool { return h.converged("web:v1", 1, true) }, 5*time.Second, 10*time.Millisecond)
	f.apply(load(t, releaseSpec(t, "v2", true, "{command: [sleep], timeout: 1s}")), 1)
	h.c.Wake()
	require.Eventually(t, func() bool { return len(eventsOf(f, msg.EventRolloutRolledBack)) == 1 }, 10*time.Second, 10*time.Millisecond)
	failed := eventsOf(f, msg.EventReleaseFailed)
	require.Len(t, failed, 1)
	require.Equal(t, "release task timed out after 1s (release.timeout): its container was killed", failed[0].Details["reason"])
	f.mu.Lock()
	stops := len(f.stops)
	f.mu.Unlock()
	require.Equal(t, 1, stops, "killed")
	require.Zero(t, instancesOf(f, "web:v2"))
}

// A leader that stops while its release runs leaves it running; the next
// leader adopts its container, never starts another, and records how it
// ended. A container gone meanwhile is recorded lost.
func TestReleaseAcrossFailover(t *testing.T) {
	t.Parallel()
	t.Run("adopted", func(t *testing.T) {
		t.Parallel()
		f := newFake()
		a := releaseHarness(t, f, 1)
		f.apply(load(t, releaseSpec(t, "v1", true, migrate)), 2)
		a.c.Wake()
		id := runningRelease(t, f, 1)
		a.stop()
		f.mu.Lock()
		require.Equal(t, store.ReleaseRunning, f.releases["web/1"].State, "a stopping leader records nothing")
		f.mu.Unlock()

		b := releaseHarness(t, f, 2)
		require.Eventually(t, func() bool {
			f.mu.Lock()
			defer f.mu.Unlock()
			return f.releases["web/1"].Term == 2
		}, 5*time.Second, 5*time.Millisecond, "the new leader watches it")
		b.cycles(3)
		require.Zero(t, instancesOf(f, "web:v1"))
		f.releaseEnd(id, 0)
		require.Eventually(t, func() bool { return b.converged("web:v1", 2, true) }, 5*time.Second, 10*time.Millisecond)
		require.Len(t, releaseContainers(f), 1, "never started twice")
		require.Len(t, eventsOf(f, msg.EventReleaseStarted), 1)
		require.Len(t, eventsOf(f, msg.EventReleaseSucceeded), 1)
	})
	t.Run("lost", func(t *testing.T) {
		t.Parallel()
		f := newFake()
		a := releaseHarness(t, f, 1)
		f.apply(load(t, releaseSpec(t, "v1", true, migrate)), 2)
		a.c.Wake()
		id := runningRelease(t, f, 1)
		a.stop()
		f.mu.Lock()
		delete(f.containers, id)
		f.mu.Unlock()

		b := releaseHarness(t, f, 2)
		require.Eventually(t, func() bool { return len(eventsOf(f, msg.EventRolloutFailed)) == 1 }, 5*time.Second, 10*time.Millisecond)
		b.cycles(3)
		failed := eventsOf(f, msg.EventReleaseFailed)
		require.Len(t, failed, 1)
		require.Equal(t, "release container lost: its host answers without it", failed[0].Details["reason"])
		require.Len(t, releaseContainers(f), 1, "never started again")
		require.Zero(t, instancesOf(f, "web:v1"))
	})
}

// A leader that died between creating the release container and starting
// it (no id recorded): the next one finds it by its labels and records the
// release lost, without starting it.
func TestReleaseCreatedNeverStarted(t *testing.T) {
	t.Parallel()
	f := newFake()
	f.apply(load(t, releaseSpec(t, "v1", true, migrate)), 1)
	f.releases["web/1"] = store.Release{App: "web", Generation: 1, SpecHash: "x", State: store.ReleaseRunning, Term: 1}
	f.containers["r1"] = &docker.Container{ID: "r1", App: "web", Instance: "release-1", Generation: 1, Release: true, State: "created", Name: "web:v1"}
	h := releaseHarness(t, f, 2)
	require.Eventually(t, func() bool { return len(eventsOf(f, msg.EventReleaseFailed)) == 1 }, 5*time.Second, 10*time.Millisecond)
	h.cycles(3)
	require.Contains(t, eventsOf(f, msg.EventReleaseFailed)[0].Details["reason"], "release container lost: it was created and never started")
	f.mu.Lock()
	defer f.mu.Unlock()
	require.Empty(t, f.created, "nothing started, nothing created")
	_, kept := f.containers["r1"]
	require.False(t, kept, "its container is removed")
}

// A release whose image cannot be pulled fails before it runs, naming
// the pull error; no instance starts.
func TestReleaseImageMissing(t *testing.T) {
	t.Parallel()
	f := newFake()
	f.missing["web:v1"] = fmt.Errorf("manifest unknown")
	h := releaseHarness(t, f, 1)
	f.apply(load(t, releaseSpec(t, "v1", false, migrate)), 1)
	h.c.Wake()
	require.Eventually(t, func() bool { return len(eventsOf(f, msg.EventRolloutFailed)) == 1 }, 5*time.Second, 10*time.Millisecond)
	h.cycles(3)
	failed := eventsOf(f, msg.EventReleaseFailed)
	require.Len(t, failed, 1)
	require.Equal(t, "release task not started: image web:v1 is not present and pulling it failed: manifest unknown", failed[0].Details["reason"])
	require.Empty(t, releaseContainers(f))
	require.Zero(t, instancesOf(f, "web:v1"))
}
