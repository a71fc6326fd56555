package healthcheck

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.uber.org/zap/zaptest"

	"github.com/berthhq/berth/common/msg"
	"github.com/berthhq/berth/common/spec"
	"github.com/berthhq/berth/scheduler/internal/docker"
)

// fakeDocker answers inspects from a health table and execs from a
// per-container exit code, and records the most execs in flight at once.
type fakeDocker struct {
	mu       sync.Mutex
	health   map[string]string
	logs     map[string]docker.HealthLog
	exit     map[string]int
	hold     chan struct{} // when set, each exec waits on it
	inFlight int
	most     int
	execs    int
}

func (f *fakeDocker) Inspect(_ context.Context, id string) (docker.Container, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return docker.Container{ID: id, Health: f.health[id], HealthLog: f.logs[id]}, nil
}

func (f *fakeDocker) Exec(ctx context.Context, id string, _ []string, _ time.Duration) (docker.ExecResult, error) {
	f.mu.Lock()
	f.inFlight++
	f.execs++
	f.most = max(f.most, f.inFlight)
	hold, code := f.hold, f.exit[id]
	f.mu.Unlock()
	if hold != nil {
		select {
		case <-hold:
		case <-ctx.Done():
		}
	}
	f.mu.Lock()
	f.inFlight--
	f.mu.Unlock()
	return docker.ExecResult{ExitCode: code, Output: "exit " + string(rune('0'+code))}, nil
}

// fakeSink keeps the last value of each key.
type fakeSink struct {
	mu     sync.Mutex
	values map[string]*msg.Health
}

func (s *fakeSink) Put(_ context.Context, key string, h *msg.Health) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := h.Validate(); err != nil {
		return err
	}
	s.values[key] = h
	return nil
}

func (s *fakeSink) Delete(_ context.Context, key string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.values, key)
	return nil
}

func (s *fakeSink) get(key string) *msg.Health {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.values[key]
}

// reports records the turns to unhealthy.
type reports struct {
	mu  sync.Mutex
	got []string
}

func (r *reports) Unhealthy(_ context.Context, t Target, s State) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.got = append(r.got, t.Key+" "+s.Failure+": "+s.Message)
}

func (r *reports) list() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]string(nil), r.got...)
}

func start(t *testing.T, d *fakeDocker, cfg Config) (*Checker, *fakeSink) {
	t.Helper()
	sink := &fakeSink{values: map[string]*msg.Health{}}
	c := New(cfg, d, sink, zaptest.NewLogger(t))
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { _ = c.Run(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	return c, sink
}

func status(s *fakeSink, key string) string {
	if h := s.get(key); h != nil {
		return h.Status
	}
	return ""
}

func TestCheckerFollowsDockerHealth(t *testing.T) {
	t.Parallel()
	d := &fakeDocker{health: map[string]string{"c1": docker.HealthStarting}, logs: map[string]docker.HealthLog{}}
	rep := &reports{}
	c, sink := start(t, d, Config{Refresh: time.Hour, Report: rep})
	c.SetTargets([]Target{{Key: "web.a1b2c3d4", App: "web", Instance: "a1b2c3d4", ContainerID: "c1", Generation: 2, Term: 5,
		Check: spec.Health{Type: spec.HealthDocker}}})
	require.Eventually(t, func() bool { return status(sink, "web.a1b2c3d4") == msg.StatusUnknown }, 5*time.Second, time.Millisecond, "starting is published as unknown")

	d.mu.Lock()
	d.health["c1"] = docker.HealthHealthy
	d.mu.Unlock()
	c.DockerHealth("c1", docker.HealthHealthy)
	require.Eventually(t, func() bool { return status(sink, "web.a1b2c3d4") == msg.StatusHealthy }, 5*time.Second, time.Millisecond)

	d.mu.Lock()
	d.health["c1"] = docker.HealthUnhealthy
	d.logs["c1"] = docker.HealthLog{ExitCode: 1, Output: "health: fail\n", FailingStreak: 2}
	d.mu.Unlock()
	c.DockerHealth("c1", docker.HealthUnhealthy)
	require.Eventually(t, func() bool { return status(sink, "web.a1b2c3d4") == msg.StatusUnhealthy }, 5*time.Second, time.Millisecond)
	h := sink.get("web.a1b2c3d4")
	require.Equal(t, msg.FailureExitCode, h.Failure)
	require.Equal(t, "HEALTHCHECK exited 1: health: fail", h.Message, "Docker's own output is the reason")
	require.Equal(t, int64(2), h.Generation)
	require.Equal(t, CheckerName, h.Checker)
	require.Equal(t, []string{"web.a1b2c3d4 exit_code: HEALTHCHECK exited 1: health: fail"}, rep.list(), "the turn to unhealthy is reported once")

	c.DockerHealth("unknown-container", docker.HealthHealthy) // not a target: ignored
	c.SetTargets(nil)
	require.Eventually(t, func() bool { return sink.get("web.a1b2c3d4") == nil }, 5*time.Second, time.Millisecond, "a gone instance's health is deleted")
}

func TestCheckerRunsExecChecksUnderThresholdsAndAHostLimit(t *testing.T) {
	t.Parallel()
	hold := make(chan struct{})
	d := &fakeDocker{exit: map[string]int{"c1": 0, "c2": 0, "c3": 0, "c4": 1}, hold: hold}
	c, sink := start(t, d, Config{ExecsPerHost: 2, Refresh: time.Hour})
	check := spec.Health{Type: spec.HealthExec, Interval: spec.Duration(20 * time.Millisecond), Timeout: spec.Duration(10 * time.Millisecond),
		HealthyThreshold: 1, UnhealthyThreshold: 2, Exec: &spec.ExecHealth{Command: []string{"/check"}}}
	var ts []Target
	for i, id := range []string{"c1", "c2", "c3", "c4"} {
		inst := "a1b2c3d" + string(rune('0'+i))
		ts = append(ts, Target{Key: "web." + inst, App: "web", Instance: inst, Host: "h1", ContainerID: id, Generation: 1, Term: 1, Check: check})
	}
	c.SetTargets(ts)
	require.Eventually(t, func() bool { d.mu.Lock(); defer d.mu.Unlock(); return d.inFlight == 2 }, 5*time.Second, time.Millisecond)
	d.mu.Lock()
	require.Equal(t, 2, d.most, "at most ExecsPerHost execs at once on one host")
	d.hold = nil
	d.mu.Unlock()
	close(hold)
	require.Eventually(t, func() bool {
		return status(sink, "web.a1b2c3d0") == msg.StatusHealthy && status(sink, "web.a1b2c3d3") == msg.StatusUnhealthy
	}, 5*time.Second, time.Millisecond)
	h := sink.get("web.a1b2c3d3")
	require.Equal(t, msg.FailureExitCode, h.Failure)
	require.Equal(t, "exited 1: exit 1", h.Message)
	require.GreaterOrEqual(t, h.ConsecutiveFailures, 2)
	d.mu.Lock()
	require.LessOrEqual(t, d.most, 2)
	d.mu.Unlock()
}

// TestCheckerStartsAfreshEachTerm: a checker stopped with an exec in
// flight (its leadership lost) checks and publishes everything again when
// it runs again.
func TestCheckerStartsAfreshEachTerm(t *testing.T) {
	t.Parallel()
	hold := make(chan struct{})
	d := &fakeDocker{exit: map[string]int{"c1": 1}, hold: hold}
	sink := &fakeSink{values: map[string]*msg.Health{}}
	c := New(Config{Refresh: time.Hour}, d, sink, zaptest.NewLogger(t))
	check := spec.Health{Type: spec.HealthExec, Interval: spec.Duration(20 * time.Millisecond), Timeout: spec.Duration(10 * time.Millisecond),
		HealthyThreshold: 1, UnhealthyThreshold: 1, Exec: &spec.ExecHealth{Command: []string{"/check"}}}
	c.SetTargets([]Target{{Key: "web.a1b2c3d4", App: "web", Instance: "a1b2c3d4", ContainerID: "c1", Generation: 1, Term: 1, Check: check}})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { _ = c.Run(ctx); close(done) }()
	require.Eventually(t, func() bool { d.mu.Lock(); defer d.mu.Unlock(); return d.inFlight == 1 }, 5*time.Second, time.Millisecond)
	cancel() // the term ends with the exec in flight
	<-done
	require.Nil(t, sink.get("web.a1b2c3d4"))

	d.mu.Lock()
	d.hold = nil
	d.mu.Unlock()
	close(hold)
	ctx, cancel = context.WithCancel(context.Background())
	done = make(chan struct{})
	go func() { _ = c.Run(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	require.Eventually(t, func() bool { return status(sink, "web.a1b2c3d4") == msg.StatusUnhealthy }, 5*time.Second, time.Millisecond,
		"the next term checks it again")
}
