package docker

import (
	"context"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/berthhq/berth/common/spec"
	"github.com/berthhq/berth/internal/testrig"
)

// healthEvents collects the health_status events of one container.
type healthEvents struct {
	mu  sync.Mutex
	got []Event
}

func (h *healthEvents) last(id string) (Event, bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	for i := len(h.got) - 1; i >= 0; i-- {
		if h.got[i].ContainerID == id {
			return h.got[i], true
		}
	}
	return Event{}, false
}

func follow(t *testing.T, c *Client) *healthEvents {
	t.Helper()
	h := &healthEvents{}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = c.Events(ctx, func(e Event) {
			if e.Action == "health_status" {
				h.mu.Lock()
				h.got = append(h.got, e)
				h.mu.Unlock()
			}
		}, func() {})
	}()
	t.Cleanup(func() { cancel(); <-done })
	return h
}

func setHealth(t *testing.T, addr, state string) {
	t.Helper()
	resp, err := http.Post("http://"+addr+"/admin/health?state="+state, "", nil)
	require.NoError(t, err)
	resp.Body.Close()
	require.Less(t, resp.StatusCode, 300)
}

// TestDockerHealthFromImageAndOverride: a container of an image with a
// HEALTHCHECK reports Docker's health on inspect and as health_status
// events, and flips with the app within Docker's interval; one created with
// health.docker's test on an image without one does the same; Image says
// which image declares one.
func TestDockerHealthFromImageAndOverride(t *testing.T) {
	t.Parallel()
	c := newClient(t)
	ctx := context.Background()
	events := follow(t, c)
	plain := testrig.DemoImage(t, "hc1")
	checked := testrig.DemoHealthcheckImage(t, "hc1")
	info, err := c.Image(ctx, checked)
	require.NoError(t, err)
	require.True(t, info.Healthcheck)
	info, err = c.Image(ctx, plain)
	require.NoError(t, err)
	require.False(t, info.Healthcheck, "the demo image declares no HEALTHCHECK")

	override := &spec.DockerHealth{Test: []string{"/demoapp", "check", testrig.DemoHealthcheckURL}, Interval: spec.Duration(time.Second),
		Timeout: spec.Duration(900 * time.Millisecond), Retries: 1}
	for _, tc := range []struct {
		name   string
		image  string
		health *spec.DockerHealth
	}{{"image HEALTHCHECK", checked, nil}, {"health.docker override", plain, override}} {
		inst := fmt.Sprintf("h%d", time.Now().UnixNano()%1e9)
		id, err := c.Create(ctx, CreateOptions{App: "dockertest", Instance: inst, Generation: 1, SpecHash: "abc", Term: 1,
			Image: tc.image, Port: testrig.DemoPort, StopSignal: "SIGTERM", StopGrace: time.Second, Health: tc.health})
		require.NoError(t, err, tc.name)
		t.Cleanup(func() { _ = c.Remove(context.Background(), id) })
		require.NoError(t, c.Start(ctx, id))
		ct, err := c.Inspect(ctx, id)
		require.NoError(t, err)
		require.Contains(t, []string{HealthStarting, HealthHealthy}, ct.Health, tc.name)

		require.Eventually(t, func() bool { e, ok := events.last(id); return ok && e.Health == HealthHealthy }, 20*time.Second, 10*time.Millisecond, tc.name)
		ct, err = c.Inspect(ctx, id)
		require.NoError(t, err)
		require.Equal(t, HealthHealthy, ct.Health)
		require.Contains(t, ct.HealthLog.Output, "200 OK")

		flipped := time.Now()
		setHealth(t, ct.Address, "fail")
		require.Eventually(t, func() bool { e, ok := events.last(id); return ok && e.Health == HealthUnhealthy }, 10*time.Second, 5*time.Millisecond, tc.name)
		took := time.Since(flipped)
		t.Logf("%s: /healthz fails → health_status unhealthy event in %s (interval 1s, retries 1)", tc.name, took.Round(time.Millisecond))
		require.Less(t, took, 2500*time.Millisecond, "within Docker's interval and the test's own time")
		ct, err = c.Inspect(ctx, id)
		require.NoError(t, err)
		require.Equal(t, HealthUnhealthy, ct.Health)
		require.Equal(t, 1, ct.HealthLog.ExitCode)
		require.Contains(t, ct.HealthLog.Output, "503 Service Unavailable", "Docker's last output is the reason")

		setHealth(t, ct.Address, "ok")
		require.Eventually(t, func() bool { e, ok := events.last(id); return ok && e.Health == HealthHealthy }, 10*time.Second, 5*time.Millisecond, tc.name)
	}
}

// TestExec: an exec check runs an argv in the container: its exit code
// and output come back, the output bounded; one past its timeout is
// abandoned and says so.
func TestExec(t *testing.T) {
	t.Parallel()
	c := newClient(t)
	ctx := context.Background()
	inst := fmt.Sprintf("x%d", time.Now().UnixNano()%1e9)
	id, err := c.Create(ctx, CreateOptions{App: "dockertest", Instance: inst, Generation: 1, SpecHash: "abc", Term: 1,
		Image: testrig.DemoImage(t, "hc1"), Port: testrig.DemoPort, StopSignal: "SIGTERM", StopGrace: time.Second})
	require.NoError(t, err)
	t.Cleanup(func() { _ = c.Remove(context.Background(), id) })
	require.NoError(t, c.Start(ctx, id))
	ct, err := c.Inspect(ctx, id)
	require.NoError(t, err)
	testrig.WaitHTTP(t, "http://"+ct.Address+"/healthz", 20*time.Second)

	check := []string{"/demoapp", "check", testrig.DemoHealthcheckURL}
	res, err := c.Exec(ctx, id, check, 3*time.Second)
	require.NoError(t, err)
	require.Equal(t, 0, res.ExitCode)
	require.Contains(t, res.Output, "200 OK")

	setHealth(t, ct.Address, "fail")
	res, err = c.Exec(ctx, id, check, 3*time.Second)
	require.NoError(t, err)
	require.Equal(t, 1, res.ExitCode)
	require.Contains(t, res.Output, "503 Service Unavailable")

	res, err = c.Exec(ctx, id, []string{"/demoapp", "release", "-lines", "1000"}, 5*time.Second)
	require.NoError(t, err)
	require.Equal(t, 0, res.ExitCode)
	require.Len(t, res.Output, MaxExecOutput, "the output is bounded")
	require.True(t, strings.HasPrefix(res.Output, "release: migration step 1 of 1000\n"))

	started := time.Now()
	res, err = c.Exec(ctx, id, []string{"/demoapp", "release", "-lines", "1", "-sleep", "30s"}, 500*time.Millisecond)
	require.NoError(t, err)
	require.True(t, res.TimedOut)
	require.Equal(t, -1, res.ExitCode)
	require.Less(t, time.Since(started), 5*time.Second, "abandoned at its timeout")

	res, err = c.Exec(ctx, id, []string{"/no-such-program"}, 3*time.Second)
	if err == nil {
		require.NotEqual(t, 0, res.ExitCode, "a program that does not exist never passes")
	}
}
