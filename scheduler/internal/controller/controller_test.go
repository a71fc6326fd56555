package controller

import (
	"context"
	"testing"
	"time"

	"github.com/berthhq/berth/common/bus"
	"github.com/berthhq/berth/common/msg"
	"github.com/berthhq/berth/common/view"
	"github.com/stretchr/testify/require"
	"go.uber.org/zap/zaptest"
)

func TestWaitDrainedFollowsLiveAgents(t *testing.T) {
	t.Parallel()
	agents := view.NewTable(view.NoTerm[*msg.Agent], nil)
	c := New(Config{}, nil, nil, nil, nil, msg.Names{}, nil, nil, agents, zaptest.NewLogger(t))
	put := func(node string, rev uint64, age time.Duration) {
		agents.Handler().Update(bus.Event[*msg.Agent]{Key: node, Op: bus.OpPut, Value: &msg.Agent{Node: node, AppliedRevision: rev, UpdatedAt: time.Now().Add(-age)}})
	}
	agents.Handler().Snapshot(nil, 0)

	// No live agent: nothing to wait for.
	start := time.Now()
	c.waitDrained(context.Background(), 10, time.Second)
	require.Less(t, time.Since(start), 100*time.Millisecond)

	// A live agent behind the revision holds the stop until it catches up; a dead one does not count.
	put("lb-1", 5, 0)
	put("lb-dead", 1, 2*msg.AgentTTL)
	go func() {
		time.Sleep(200 * time.Millisecond)
		put("lb-1", 10, 0)
	}()
	start = time.Now()
	c.waitDrained(context.Background(), 10, 5*time.Second)
	took := time.Since(start)
	require.GreaterOrEqual(t, took, 150*time.Millisecond)
	require.Less(t, took, time.Second, "done as soon as every live agent applied the revision")

	// A stuck agent is waited for at most the drain time.
	put("lb-1", 10, 0)
	start = time.Now()
	c.waitDrained(context.Background(), 11, 300*time.Millisecond)
	require.InDelta(t, 300*time.Millisecond, time.Since(start), float64(150*time.Millisecond))
}

func TestStopTimeoutHonoursGrace(t *testing.T) {
	t.Parallel()
	c := &Controller{cfg: Config{StopTimeout: 2 * time.Minute}}
	require.Equal(t, 2*time.Minute, c.stopTimeout(30*time.Second))
	require.Equal(t, 10*time.Minute+10*time.Second, c.stopTimeout(10*time.Minute), "never cut the spec's grace short")
}
