package controller

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/berthhq/berth/common/msg"
	"github.com/berthhq/berth/common/spec"
	"github.com/berthhq/berth/scheduler/internal/docker"
	"github.com/berthhq/berth/scheduler/internal/healthcheck"
	"github.com/berthhq/berth/scheduler/internal/store"
)

// TestCheckTargets: the scheduler checks the starting and running
// instances of docker and exec apps whose container runs, and nothing of
// http, tcp, disabled or unchecked apps.
func TestCheckTargets(t *testing.T) {
	t.Parallel()
	off := false
	started := time.Unix(100, 0)
	apps := map[string]store.App{
		"dock": {Name: "dock", Spec: &spec.App{Name: "dock", Port: 8080, Health: &spec.Health{Type: spec.HealthDocker}}},
		"exec": {Name: "exec", Spec: &spec.App{Name: "exec", Port: 8080, Health: &spec.Health{Type: spec.HealthExec, Exec: &spec.ExecHealth{Command: []string{"/c"}}}}},
		"web":  {Name: "web", Spec: &spec.App{Name: "web", Port: 8080, Health: &spec.Health{Type: spec.HealthHTTP}}},
		"off":  {Name: "off", Spec: &spec.App{Name: "off", Port: 8080, Health: &spec.Health{Type: spec.HealthDocker, Enabled: &off}}},
		"none": {Name: "none", Spec: &spec.App{Name: "none", Port: 8080}},
	}
	rec := func(app, id, state, cid string) store.Instance {
		return store.Instance{ID: id, App: app, State: state, ContainerID: cid, Host: "h1", Generation: 4, Term: 2}
	}
	records := []store.Instance{
		rec("dock", "d1", msg.StateRunning, "c1"), rec("dock", "d2", msg.StateStarting, "c2"), rec("dock", "d3", msg.StateDraining, "c3"),
		rec("dock", "d4", msg.StateRunning, "c4"), // its container is not running
		rec("dock", "d5", msg.StateRunning, "gone"),
		rec("exec", "e1", msg.StateRunning, "c6"),
		rec("web", "w1", msg.StateRunning, "c7"), rec("off", "o1", msg.StateRunning, "c8"), rec("none", "n1", msg.StateRunning, "c9"),
	}
	containers := map[string]docker.Container{}
	for _, id := range []string{"c1", "c2", "c3", "c6", "c7", "c8", "c9"} {
		containers[id] = docker.Container{ID: id, Running: true, StartedAt: started}
	}
	containers["c4"] = docker.Container{ID: "c4"}
	got := checkTargets(records, apps, containers)
	var keys []string
	for _, tg := range got {
		keys = append(keys, tg.Key)
	}
	require.ElementsMatch(t, []string{"dock.d1", "dock.d2", "exec.e1"}, keys)
	for _, tg := range got {
		require.Equal(t, "h1", tg.Host)
		require.Equal(t, int64(4), tg.Generation)
		require.Equal(t, uint64(2), tg.Term)
		require.Equal(t, started, tg.StartedAt)
		require.True(t, tg.Check.Scheduled())
	}
}

// recordingChecks records what the controller hands the checks.
type recordingChecks struct {
	mu     sync.Mutex
	events []string
}

func (r *recordingChecks) SetTargets([]healthcheck.Target) {}
func (r *recordingChecks) DockerHealth(id, status string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.events = append(r.events, id+"="+status)
}

// TestHealthStatusEventsReachTheChecks: a container's health_status event
// goes to the checks at once, and is no death: nothing is failed.
func TestHealthStatusEventsReachTheChecks(t *testing.T) {
	t.Parallel()
	checks := &recordingChecks{}
	c := &Controller{deps: Deps{Checks: checks}, wake: make(chan struct{}, 1)}
	c.onDockerEvent(context.Background(), docker.Event{Action: "health_status", Health: docker.HealthUnhealthy, ContainerID: "c1", App: "dock", Instance: "d1"})
	c.onDockerEvent(context.Background(), docker.Event{Action: "health_status", Health: docker.HealthHealthy, ContainerID: "r1", App: "dock", Instance: "r", Release: true})
	require.Equal(t, []string{"c1=unhealthy"}, checks.events, "a release container has no health of interest")
	require.Empty(t, c.wake, "a health event wakes no cycle: the checks publish it")
}

func TestUnhealthyGraceOfADockerCheck(t *testing.T) {
	t.Parallel()
	h := func(health *spec.Health) *spec.App { return &spec.App{Health: health} }
	require.Equal(t, 15*time.Second, unhealthyGrace(h(&spec.Health{Type: spec.HealthHTTP, Interval: spec.Duration(5 * time.Second)})))
	require.Equal(t, 15*time.Second, unhealthyGrace(h(&spec.Health{Type: spec.HealthDocker, Interval: spec.Duration(5 * time.Second)})), "the image's interval is not known: health.interval")
	require.Equal(t, 30*time.Second, unhealthyGrace(h(&spec.Health{Type: spec.HealthDocker, Interval: spec.Duration(5 * time.Second),
		Docker: &spec.DockerHealth{Interval: spec.Duration(10 * time.Second)}})), "Docker's interval when the spec sets it")
	require.Equal(t, 5*time.Second, unhealthyGrace(h(&spec.Health{Type: spec.HealthExec, Interval: spec.Duration(time.Second)})))
}
