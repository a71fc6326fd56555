package docker

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/berthhq/berth/internal/testrig"
)

// A container that exits at start keeps its logs until it is removed: Tail
// reads its last lines, and Inspect its exit code.
func TestTailOfAContainerThatExited(t *testing.T) {
	t.Parallel()
	c := newClient(t)
	ctx := context.Background()
	id := create(t, c, fmt.Sprintf("x%d", time.Now().UnixNano()%1e9), map[string]string{"DEMO_EXIT": "3"})
	require.NoError(t, c.Start(ctx, id))
	var ct Container
	require.Eventually(t, func() bool {
		var err error
		ct, err = c.Inspect(ctx, id)
		return err == nil && !ct.Running && ct.State == "exited"
	}, 20*time.Second, 20*time.Millisecond)
	require.Equal(t, 3, ct.ExitCode)
	lines, err := c.Tail(ctx, id, 20)
	require.NoError(t, err)
	require.Len(t, lines, 2, "%q", lines)
	require.Contains(t, lines[0], "demoapp ")
	require.Contains(t, lines[0], "start instance=")
	require.Contains(t, lines[1], "fatal: DEMO_EXIT=3: exiting with code 3")
	lines, err = c.Tail(ctx, id, 1)
	require.NoError(t, err)
	require.Len(t, lines, 1)
	require.Contains(t, lines[0], "fatal: DEMO_EXIT=3")

	_, err = c.Tail(ctx, "nosuchcontainer", 20)
	require.ErrorIs(t, err, ErrNotFound)
}

// A container over its memory limit is OOM-killed, and Docker says so.
func TestOOMKilledContainer(t *testing.T) {
	t.Parallel()
	c := newClient(t)
	ctx := context.Background()
	id, err := c.Create(ctx, CreateOptions{App: "dockertest", Instance: fmt.Sprintf("m%d", time.Now().UnixNano()%1e9), Generation: 1, SpecHash: "abc", Term: 1,
		Image: testrig.DemoImage(t, "v1"), Env: map[string]string{"DEMO_ALLOC": "256"}, Port: testrig.DemoPort, Memory: 32 << 20,
		StopSignal: "SIGTERM", StopGrace: time.Second})
	require.NoError(t, err)
	t.Cleanup(func() { _ = c.Remove(context.Background(), id) })
	require.NoError(t, c.Start(ctx, id))
	var ct Container
	require.Eventually(t, func() bool {
		ct, err = c.Inspect(ctx, id)
		return err == nil && !ct.Running && ct.State == "exited"
	}, 20*time.Second, 20*time.Millisecond)
	require.Equal(t, 137, ct.ExitCode, "killed")
	// Docker learns of the OOM kill apart from the exit (containerd reads
	// the cgroup's memory.events): its state may say OOMKilled a moment
	// later, and on a loaded machine, if the cgroup is gone first, never
	// (CI saw exited 137 without it once). Berth reads what Docker says.
	for deadline := time.Now().Add(5 * time.Second); !ct.OOMKilled && time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) { // the poll
		ct, err = c.Inspect(ctx, id)
		require.NoError(t, err)
	}
	if !ct.OOMKilled {
		t.Log("Docker did not report this OOM kill: only exit code 137 says it")
	}
}

func TestPrintable(t *testing.T) {
	t.Parallel()
	require.Equal(t, "a\tb\uFFFD[2J\uFFFD]0;pwned\uFFFDc\u00e9", strings.Map(printable, "a\tb\x1b[2J\x1b]0;pwned\x07c\u00e9"))
}
