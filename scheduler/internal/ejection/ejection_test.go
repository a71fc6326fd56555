package ejection

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.uber.org/zap/zaptest"

	"github.com/berthhq/berth/common/msg"
	"github.com/berthhq/berth/scheduler/internal/store"
)

var t0 = time.Date(2026, 12, 6, 12, 0, 0, 0, time.UTC)

func agent(node string, updated time.Time, es ...msg.Ejection) *msg.Agent {
	return &msg.Agent{Node: node, UpdatedAt: updated, Ejected: es}
}

func ej(inst string, since time.Time, times int) msg.Ejection {
	return msg.Ejection{App: "web", Instance: inst, Reason: "5 failed requests in a row (consecutive_5xx 5)", Since: since,
		Until: since.Add(time.Duration(times) * 30 * time.Second), Times: times}
}

func kinds(evs []store.Event) []string {
	var out []string
	for _, e := range evs {
		out = append(out, string(e.Kind)+" "+e.Instance+" "+e.Details["node"])
	}
	return out
}

func TestDiff(t *testing.T) {
	t.Parallel()
	// lb-1 ejects i1; lb-2 ejects i1 too, on its own.
	agents := map[string]*msg.Agent{"lb-1": agent("lb-1", t0, ej("i1", t0, 1)), "lb-2": agent("lb-2", t0, ej("i1", t0, 1))}
	seen, evs := Diff(nil, agents, t0)
	require.ElementsMatch(t, []string{"instance_ejected i1 lb-1", "instance_ejected i1 lb-2"}, kinds(evs))
	require.Contains(t, evs[0].Message, "instance i1 ejected from lbagent lb-")
	require.Contains(t, evs[0].Message, "(ejection 1): 5 failed requests in a row")

	seen, evs = Diff(seen, agents, t0.Add(time.Second))
	require.Empty(t, evs, "each ejection is recorded once")

	// lb-1 reports i1 back; lb-2's ejection ends by the clock before it reports.
	agents["lb-1"] = agent("lb-1", t0.Add(31*time.Second))
	seen, evs = Diff(seen, agents, t0.Add(31*time.Second))
	require.ElementsMatch(t, []string{"instance_returned i1 lb-1"}, kinds(evs), "lb-2 is not live any more: no event for it")
	require.Empty(t, seen)

	// Ejected again: a new ejection, recorded again.
	agents["lb-1"] = agent("lb-1", t0.Add(40*time.Second), ej("i1", t0.Add(40*time.Second), 2))
	_, evs = Diff(seen, agents, t0.Add(40*time.Second))
	require.Equal(t, []string{"instance_ejected i1 lb-1"}, kinds(evs))
	require.Equal(t, "2", evs[0].Details["times"])
}

type events struct {
	mu  sync.Mutex
	got []store.Event
}

func (e *events) Event(_ context.Context, _ store.Lease, evs ...store.Event) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.got = append(e.got, evs...)
	return nil
}

func (e *events) count() int {
	e.mu.Lock()
	defer e.mu.Unlock()
	return len(e.got)
}

func TestRecorderRecordsOnlyWhileLeading(t *testing.T) {
	t.Parallel()
	now := time.Now()
	rows := map[string]*msg.Agent{"lb-1": agent("lb-1", now, ej("i1", now, 1))}
	var mu sync.Mutex
	leading := false
	ev := &events{}
	r := New(func() map[string]*msg.Agent { return rows }, ev, func() (store.Lease, bool) {
		mu.Lock()
		defer mu.Unlock()
		return store.Lease{Term: 1}, leading
	}, zaptest.NewLogger(t))
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- r.Run(ctx) }()
	r.Wake()
	mu.Lock()
	leading = true
	mu.Unlock()
	r.Wake()
	require.Eventually(t, func() bool { return ev.count() == 1 }, 5*time.Second, 10*time.Millisecond)
	r.Wake()
	cancel()
	require.NoError(t, <-done)
	require.Equal(t, 1, ev.count(), "recorded once")
	require.Equal(t, msg.EventInstanceEjected, ev.got[0].Kind)
}
