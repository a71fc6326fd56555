package docker

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

func TestUsage(t *testing.T) {
	t.Parallel()
	t0 := time.Unix(1000, 0)
	prev := Reading{ContainerID: "c", At: t0, CPUNanos: 1e9, MemoryBytes: 10 << 20, MemoryLimit: 64 << 20}
	cur := Reading{ContainerID: "c", At: t0.Add(2 * time.Second), CPUNanos: 1e9 + 5e8, MemoryBytes: 32 << 20, MemoryLimit: 64 << 20}
	cpu, mem, ok := Usage(prev, cur, 0.5)
	require.True(t, ok)
	require.InDelta(t, 50, cpu, 1e-9, "0.25 cores of a 0.5-core limit")
	require.InDelta(t, 50, mem, 1e-9)
	cpu, _, ok = Usage(prev, cur, 0)
	require.True(t, ok)
	require.InDelta(t, 25, cpu, 1e-9, "no limit: percent of one core")
	for name, bad := range map[string]Reading{
		"other container": {ContainerID: "d", At: cur.At, CPUNanos: cur.CPUNanos},
		"not later":       {ContainerID: "c", At: t0, CPUNanos: cur.CPUNanos},
		"counter reset":   {ContainerID: "c", At: cur.At, CPUNanos: 1},
	} {
		_, _, ok := Usage(prev, bad, 1)
		require.False(t, ok, name)
	}
}

// Stats reads a running container through the engine: its CPU time grows
// and its memory limit is the one it was created with.
func TestStatsOfARunningContainer(t *testing.T) {
	t.Parallel()
	c := newClient(t)
	ctx := context.Background()
	id := create(t, c, fmt.Sprintf("s%d", time.Now().UnixNano()%1e9), nil)
	require.NoError(t, c.Start(ctx, id))
	first, err := c.Stats(ctx, []string{id}, 4)
	require.NoError(t, err)
	// Read again until the engine has a later reading than the first.
	a := first[id]
	var b Reading
	var cpu, mem float64
	ok := false
	for deadline := time.Now().Add(10 * time.Second); !ok; {
		require.True(t, time.Now().Before(deadline), "no later reading than %+v: %+v", a, b)
		second, err := c.Stats(ctx, []string{id, "no-such-container"}, 4)
		require.ErrorContains(t, err, "1 of 2 containers failed")
		b = second[id]
		cpu, mem, ok = Usage(a, b, 0.5)
	}
	require.Equal(t, uint64(64<<20), b.MemoryLimit)
	require.Positive(t, b.MemoryBytes)
	require.Less(t, b.MemoryBytes, b.MemoryLimit)
	require.GreaterOrEqual(t, cpu, 0.0)
	require.Less(t, cpu, 100.0, "an idle demo app")
	require.Greater(t, mem, 0.0)
}
