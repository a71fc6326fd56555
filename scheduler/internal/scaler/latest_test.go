package scaler

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.uber.org/zap/zaptest"

	"github.com/berthhq/berth/common/msg"
	"github.com/berthhq/berth/common/spec"
	"github.com/berthhq/berth/scheduler/internal/store"
)

// hist is a finished histogram of n values of v ms each.
func hist(v float64, n int) *msg.Histogram {
	h := &msg.Histogram{RelativeAccuracy: msg.HistogramAccuracy}
	h.Add(v, float64(n))
	h.Finish()
	return h
}

func TestLatestMergesEveryNodesLastWindow(t *testing.T) {
	t.Parallel()
	l := newLatest()
	now := time.Unix(10000, 0)
	win := spec.Duration(5 * time.Second)
	window := func(node string, end time.Time, rps float64, req, s5xx int64, h *msg.Histogram) *msg.Metrics {
		return &msg.Metrics{Node: node, App: "web", WindowStart: end.Add(-5 * time.Second), Window: win, RPS: rps, Requests: req,
			Status: msg.StatusCounts{S2xx: req - s5xx, S5xx: s5xx}, LatencyHistogram: h}
	}
	_, ok := l.traffic("web", now)
	require.False(t, ok, "no window yet")

	require.True(t, l.add(window("lb-1", now.Add(-5*time.Second), 99, 495, 0, hist(1, 495)), now))
	require.True(t, l.add(window("lb-1", now, 10, 50, 5, hist(10, 50)), now), "lb-1's next window replaces its last")
	require.True(t, l.add(window("lb-1", now.Add(-5*time.Second), 99, 495, 0, nil), now), "a replay is ignored")
	require.True(t, l.add(window("lb-2", now.Add(-time.Second), 30, 150, 10, hist(100, 150)), now))
	require.True(t, l.add(window("lb-3", now.Add(-time.Minute), 1000, 5000, 5000, hist(1000, 5000)), now), "an lbagent gone quiet")
	require.True(t, l.add(&msg.Metrics{Node: "lb-1", App: "idle", WindowStart: now.Add(-5 * time.Second), Window: win}, now))

	tr, ok := l.traffic("web", now)
	require.True(t, ok)
	require.Equal(t, 2, tr.Nodes, "lb-3's window expired")
	require.InDelta(t, 40, tr.RPS, 1e-9)
	require.Equal(t, int64(200), tr.Requests)
	require.InDelta(t, 15.0/200, tr.ErrorRate(), 1e-9)
	require.InDelta(t, 100, tr.P95MS, 2, "the merged p95 is lb-2's 100 ms: 150 of 200 values")
	require.Equal(t, 5*time.Second, tr.Window)
	require.True(t, tr.At.Equal(now))

	idle, ok := l.traffic("idle", now)
	require.True(t, ok, "an app without requests still has its window")
	require.Zero(t, idle.RPS)
	require.Zero(t, idle.ErrorRate())
	require.Zero(t, idle.P95MS)

	// Later every window has expired; add prunes them.
	later := now.Add(time.Minute)
	_, ok = l.traffic("web", later)
	require.False(t, ok)
	require.True(t, l.add(&msg.Metrics{Node: "lb-1", App: "other", WindowStart: later.Add(-5 * time.Second), Window: win}, later))
	require.Equal(t, 1, l.n)
	require.Len(t, l.apps, 1)
}

func TestLatestIsBounded(t *testing.T) {
	t.Parallel()
	l := newLatest()
	now := time.Unix(10000, 0)
	l.n = maxLatest - 1
	m := &msg.Metrics{Node: "lb-1", App: "web", WindowStart: now.Add(-5 * time.Second), Window: spec.Duration(5 * time.Second)}
	require.True(t, l.add(m, now))
	m2 := *m
	m2.Node = "forged"
	require.False(t, l.add(&m2, now), "refused past maxLatest")
	m3 := *m
	m3.WindowStart = now
	require.True(t, l.add(&m3, now.Add(5*time.Second)), "a known node's next window still replaces its last")
}

// TestTrafficOfAnAppNotAutoscaled: an lbagent's window of an app without
// a scaling block reaches Traffic over NATS, as the API shows it.
func TestTrafficOfAnAppNotAutoscaled(t *testing.T) {
	t.Parallel()
	names, err := msg.NewNames("berth")
	require.NoError(t, err)
	conn := connect(t)
	plain := autoscaledApp(t, "name: web\nimage: web:1\nport: 80\n", 2)
	s := New(Config{Interval: 20 * time.Millisecond}, &fakeStore{apps: []store.App{plain}}, nil, conn, &fakeWriter{}, names,
		func() (store.Lease, bool) { return store.Lease{}, false }, func() {}, zaptest.NewLogger(t))
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	defer func() { cancel(); require.NoError(t, <-done) }()

	end := time.Now().UTC()
	b, err := msg.Encode(&msg.Metrics{Node: "lb-1", App: "web", WindowStart: end.Add(-5 * time.Second), Window: spec.Duration(5 * time.Second),
		Requests: 100, RPS: 20, Status: msg.StatusCounts{S2xx: 90, S5xx: 10}, P95MS: 40, LatencyHistogram: hist(40, 100)})
	require.NoError(t, err)
	var tr Traffic
	require.Eventually(t, func() bool {
		// Published until the subscription (made as Run starts) takes one.
		require.NoError(t, conn.Publish(ctx, names.MetricsSubject("web"), b))
		var ok bool
		tr, ok = s.Traffic("web", time.Now())
		return ok
	}, 10*time.Second, 20*time.Millisecond)
	require.Equal(t, 1, tr.Nodes)
	require.InDelta(t, 20, tr.RPS, 1e-9)
	require.InDelta(t, 0.1, tr.ErrorRate(), 1e-9)
	require.InDelta(t, 40, tr.P95MS, 1)
}
