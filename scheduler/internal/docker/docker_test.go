package docker

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os/exec"
	"sync"
	"testing"
	"time"

	"github.com/berthhq/berth/internal/testrig"
	"github.com/stretchr/testify/require"
	"go.uber.org/zap/zaptest"
)

func newClient(t *testing.T) *Client {
	t.Helper()
	testrig.Docker(t)
	c, err := New(Options{Prefix: fmt.Sprintf("dockertest%d", time.Now().UnixNano()%1e9), PublishAddress: "127.0.0.1"}, zaptest.NewLogger(t))
	require.NoError(t, err)
	t.Cleanup(func() { _ = c.Close() })
	return c
}

// create makes a container of the demo image and removes it at cleanup.
func create(t *testing.T, c *Client, instance string, env map[string]string) string {
	t.Helper()
	ctx := context.Background()
	id, err := c.Create(ctx, CreateOptions{App: "dockertest", Instance: instance, Generation: 3, SpecHash: "abc", Term: 7,
		Image: testrig.DemoImage(t, "v1"), Env: env, Port: testrig.DemoPort, CPU: 0.5, Memory: 64 << 20,
		StopSignal: "SIGTERM", StopGrace: 5 * time.Second})
	require.NoError(t, err)
	t.Cleanup(func() { _ = c.Remove(context.Background(), id) })
	return id
}

func TestLifecycle(t *testing.T) {
	t.Parallel()
	c := newClient(t)
	ctx := context.Background()
	v, err := c.Ping(ctx)
	require.NoError(t, err)
	require.NotEmpty(t, v)

	inst := fmt.Sprintf("l%d", time.Now().UnixNano()%1e9)
	id := create(t, c, inst, map[string]string{"DEMO_VERSION": "from-env"})
	require.NoError(t, c.Start(ctx, id))
	ct, err := c.Inspect(ctx, id)
	require.NoError(t, err)
	require.True(t, ct.Running)
	require.Equal(t, Name("dockertest", inst), ct.Name)
	require.Equal(t, "dockertest", ct.App)
	require.Equal(t, inst, ct.Instance)
	require.Equal(t, int64(3), ct.Generation)
	require.Equal(t, uint64(7), ct.Term)
	host, _, err := net.SplitHostPort(ct.Address)
	require.NoError(t, err)
	require.Equal(t, "127.0.0.1", host, "published on 127.0.0.1 only")

	var reply struct{ Instance, Version string }
	require.NoError(t, json.Unmarshal([]byte(testrig.WaitHTTP(t, "http://"+ct.Address+"/", 20*time.Second)), &reply))
	require.Equal(t, inst, reply.Instance, "BERTH_INSTANCE reaches the container")
	require.Equal(t, "from-env", reply.Version)

	list, err := c.List(ctx)
	require.NoError(t, err)
	other, err := New(Options{Prefix: "someone-else"}, zaptest.NewLogger(t))
	require.NoError(t, err)
	theirs, err := other.List(ctx)
	require.NoError(t, err)
	for _, l := range theirs {
		require.NotEqual(t, id, l.ID, "another prefix's client never sees this container")
	}
	found := false
	for _, l := range list {
		if l.ID == id {
			found = true
			require.True(t, l.Running)
			require.Equal(t, inst, l.Instance)
		}
	}
	require.True(t, found, "List finds labelled containers")

	require.NoError(t, c.Stop(ctx, id, "SIGTERM", 5*time.Second))
	ct, err = c.Inspect(ctx, id)
	require.NoError(t, err)
	require.False(t, ct.Running)
	require.Equal(t, 0, ct.ExitCode, "the demo app exits cleanly on SIGTERM")

	require.NoError(t, c.Remove(ctx, id))
	_, err = c.Inspect(ctx, id)
	require.ErrorIs(t, err, ErrNotFound)
	require.ErrorIs(t, c.Start(ctx, id), ErrNotFound)
}

func TestEventsSeeAKill(t *testing.T) {
	t.Parallel()
	c := newClient(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var mu sync.Mutex
	var seen []Event
	go func() {
		_ = c.Events(ctx, func(e Event) {
			mu.Lock()
			seen = append(seen, e)
			mu.Unlock()
		}, func() {})
	}()
	// The stream is open once it delivers the create event of a probe
	// container: one created before it opened is never seen, so each try
	// creates another.
	probes := map[string]bool{}
	probed := func() bool {
		mu.Lock()
		defer mu.Unlock()
		for _, e := range seen {
			if probes[e.ContainerID] {
				return true
			}
		}
		return false
	}
	for deadline := time.Now().Add(10 * time.Second); !probed(); time.Sleep(50 * time.Millisecond) { // the poll interval
		require.True(t, time.Now().Before(deadline), "the event stream never delivered a probe's create event")
		probes[create(t, c, fmt.Sprintf("p%d", time.Now().UnixNano()%1e9), nil)] = true
	}
	inst := fmt.Sprintf("k%d", time.Now().UnixNano()%1e9)
	id := create(t, c, inst, nil)
	require.NoError(t, c.Start(context.Background(), id))
	out, err := exec.Command("docker", "kill", id).CombinedOutput()
	require.NoError(t, err, "%s", out)
	require.Eventually(t, func() bool {
		mu.Lock()
		defer mu.Unlock()
		var started, died bool
		for _, e := range seen {
			if e.ContainerID == id && e.Instance == inst && e.App == "dockertest" {
				started = started || e.Action == "start"
				died = died || e.Action == "die" && e.ExitCode == 137
			}
		}
		return started && died
	}, 10*time.Second, 10*time.Millisecond, "start and die (exit 137) events of the killed container")
}

func TestMissingImage(t *testing.T) {
	t.Parallel()
	c := newClient(t)
	ctx := context.Background()
	// A registry on a closed loopback port: the pull fails at once and no
	// traffic leaves the machine.
	ref := "127.0.0.1:1/berth/nonexistent:v9"
	present, err := c.ImagePresent(ctx, ref)
	require.NoError(t, err)
	require.False(t, present)
	err = c.Pull(ctx, ref, 10*time.Second)
	require.Error(t, err)
	require.Contains(t, err.Error(), ref)
	_, err = c.Create(ctx, CreateOptions{App: "dockertest", Instance: "missing", Image: ref, Port: 8080})
	require.ErrorIs(t, err, ErrImageNotFound)
	present, err = c.ImagePresent(ctx, testrig.DemoImage(t, "v1"))
	require.NoError(t, err)
	require.True(t, present)
	_, err = c.Image(ctx, ref)
	require.ErrorIs(t, err, ErrImageNotFound)
	info, err := c.Image(ctx, testrig.DemoImage(t, "v1"))
	require.NoError(t, err)
	require.Regexp(t, `^sha256:[0-9a-f]{64}$`, info.ID, "built here: its ID")
	byID, err := c.Image(ctx, info.ID)
	require.NoError(t, err, "an ID names the image too: what a pinned local image is created from")
	require.Equal(t, info.ID, byID.ID)
}

func TestNewRefusesBadPublishAddress(t *testing.T) {
	t.Parallel()
	_, err := New(Options{Prefix: "x", PublishAddress: "localhost"}, zaptest.NewLogger(t))
	require.ErrorContains(t, err, "must be an IP address")
	_, err = New(Options{}, zaptest.NewLogger(t))
	require.ErrorContains(t, err, "a prefix (environment) is required")
}

// TestReleaseContainer: a release container publishes no port, carries the
// release label (listed and inspected as one), runs its command to its
// exit code, and its engine refuses a second of the same generation.
func TestReleaseContainer(t *testing.T) {
	t.Parallel()
	c := newClient(t)
	ctx := context.Background()
	opts := CreateOptions{App: "dockertest", Instance: ReleaseInstance(4), Generation: 4, SpecHash: "abc", Term: 7,
		Image: testrig.DemoImage(t, "v1"), Command: []string{"release", "-lines", "2", "-exit", "3"}, Port: testrig.DemoPort,
		StopSignal: "SIGTERM", StopGrace: time.Second, Release: true}
	id, err := c.Create(ctx, opts)
	require.NoError(t, err)
	t.Cleanup(func() { _ = c.Remove(context.Background(), id) })
	_, err = c.Create(ctx, opts)
	require.Error(t, err, "one release container per generation and engine")
	require.NoError(t, c.Start(ctx, id))
	var ct Container
	require.Eventually(t, func() bool {
		ct, err = c.Inspect(ctx, id)
		require.NoError(t, err, "a release container has no address to refuse")
		return !ct.Running && ct.State == "exited"
	}, 20*time.Second, 50*time.Millisecond)
	require.True(t, ct.Release)
	require.Equal(t, 3, ct.ExitCode)
	require.Empty(t, ct.Address, "nothing reaches it")
	require.Equal(t, Name("dockertest", "release-4"), ct.Name)
	lines, err := c.Tail(ctx, id, 20)
	require.NoError(t, err)
	require.Equal(t, []string{"release: migration step 1 of 2", "release: migration step 2 of 2", "release: failed, exiting with code 3"}, lines)
	list, err := c.List(ctx)
	require.NoError(t, err)
	found := false
	for _, l := range list {
		if l.ID == id {
			found = l.Release && l.Generation == 4
		}
	}
	require.True(t, found, "listed as a release container")
}
