package main

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.uber.org/zap/zaptest"

	"github.com/berthhq/berth/common/bus"
	"github.com/berthhq/berth/common/msg"
	"github.com/berthhq/berth/common/spec"
	"github.com/berthhq/berth/internal/testrig"
	"github.com/berthhq/berth/scheduler/internal/api"
)

func TestTrafficLine(t *testing.T) {
	t.Parallel()
	require.Equal(t, "traffic: no lbagent reported this app lately", trafficLine(nil))
	line := trafficLine(&api.TrafficView{RPS: 42.46, ErrorRate: 0.0213, P95MS: 87.34, Requests: 425, Nodes: 2, Window: spec.Duration(5 * time.Second), At: time.Now()})
	require.Contains(t, line, "traffic: 42.5 req/s, 2.13% 5xx, p95 87.3 ms (2 lbagents, last 5s window ")
}

// TestStatusShowsTraffic: the windows lbagents publish for an app that is
// not autoscaled reach the API's traffic object and scheduler status.
func TestStatusShowsTraffic(t *testing.T) {
	t.Parallel()
	db, natsURL := testrig.Postgres(t), testrig.NATS(t)
	code, _, _ := cmd(t, "migrate", "--database-url", db)
	require.Equal(t, 0, code)
	r := startReplica(t, db, natsURL, "sched-a")
	code, _, errOut := cmd(t, "apply", "-f", writeSpec(t, "name: web\nimage: web:1\nport: 8080\nreplicas: 1\nrouting: {hosts: [web.test]}\n"), "--server", r.api)
	require.Equal(t, 0, code, errOut)
	code, out, _ := cmd(t, "status", "web", "--server", r.api)
	require.Equal(t, 0, code)
	require.Contains(t, out, "traffic: no lbagent reported this app lately")

	conn, err := bus.Connect(context.Background(), bus.Options{URL: natsURL}, zaptest.NewLogger(t))
	require.NoError(t, err)
	t.Cleanup(conn.Close)
	names, _ := msg.NewNames("berth")
	h := &msg.Histogram{RelativeAccuracy: msg.HistogramAccuracy}
	h.Add(40, 100)
	h.Finish()
	require.Eventually(t, func() bool {
		// Each round is every lbagent's next window: published until the
		// scheduler's subscription takes them.
		end := time.Now().UTC()
		for i, node := range []string{"lb-1", "lb-2"} {
			b, err := msg.Encode(&msg.Metrics{Node: node, App: "web", WindowStart: end.Add(-5 * time.Second), Window: spec.Duration(5 * time.Second),
				Requests: 100, RPS: 20, Status: msg.StatusCounts{S2xx: int64(100 - 10*i), S5xx: int64(10 * i)}, P95MS: 40, LatencyHistogram: h})
			require.NoError(t, err)
			require.NoError(t, conn.Publish(context.Background(), names.MetricsSubject("web"), b))
		}
		_, out, _ = cmd(t, "status", "web", "--server", r.api)
		return strings.Contains(out, "(2 lbagents")
	}, 15*time.Second, 200*time.Millisecond)
	require.Contains(t, out, "traffic: 40.0 req/s, 5.00% 5xx, p95 ")
	code, out, _ = cmd(t, "status", "web", "--server", r.api, "-o", "json")
	require.Equal(t, 0, code)
	require.Contains(t, out, `"nodes": 2`)
}

func TestEjectedLines(t *testing.T) {
	t.Parallel()
	now := time.Date(2026, 12, 6, 12, 0, 0, 0, time.UTC)
	require.Empty(t, ejectedLines(nil, now))
	require.Equal(t, []string{"ejected by lbagent lb-1: instance web-3 for 25s more (ejection 2): 9 of 20 requests failed in 10s (error_percent 40)"},
		ejectedLines([]api.EjectionView{{Node: "lb-1", Instance: "web-3", Reason: "9 of 20 requests failed in 10s (error_percent 40)",
			Since: now.Add(-35 * time.Second), Until: now.Add(25 * time.Second), Times: 2}}, now))
}

// TestStatusShowsEjected: the instances an lbagent's record lists as
// ejected (health.outlier) appear in scheduler status, per lbagent.
func TestStatusShowsEjected(t *testing.T) {
	t.Parallel()
	db, natsURL := testrig.Postgres(t), testrig.NATS(t)
	code, _, _ := cmd(t, "migrate", "--database-url", db)
	require.Equal(t, 0, code)
	r := startReplica(t, db, natsURL, "sched-a")
	code, _, errOut := cmd(t, "apply", "-f", writeSpec(t, "name: web\nimage: web:1\nport: 8080\nreplicas: 1\nrouting: {hosts: [web.test]}\n"), "--server", r.api)
	require.Equal(t, 0, code, errOut)

	conn, err := bus.Connect(context.Background(), bus.Options{URL: natsURL}, zaptest.NewLogger(t))
	require.NoError(t, err)
	t.Cleanup(conn.Close)
	names, _ := msg.NewNames("berth")
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	var out string
	require.Eventually(t, func() bool {
		kv, err := conn.KV(ctx, names.AgentsBucket())
		if err != nil {
			return false // the scheduler makes the bucket
		}
		now := time.Now().UTC()
		b, err := msg.Encode(&msg.Agent{Node: "lb-1", Apps: map[string]int64{"web": 1}, UpdatedAt: now, Ejected: []msg.Ejection{
			{App: "web", Instance: "web-abc", Reason: "5 failed requests in a row (consecutive_5xx 5)", Since: now, Until: now.Add(30 * time.Second), Times: 1},
			{App: "other", Instance: "other-x", Reason: "r", Since: now, Until: now.Add(30 * time.Second), Times: 1},
		}})
		require.NoError(t, err)
		if _, err := kv.Put(ctx, "lb-1", b); err != nil {
			return false
		}
		_, out, _ = cmd(t, "status", "web", "--server", r.api)
		return strings.Contains(out, "ejected by lbagent lb-1: instance web-abc for ")
	}, 15*time.Second, 200*time.Millisecond)
	require.Contains(t, out, "(ejection 1): 5 failed requests in a row (consecutive_5xx 5)")
	require.NotContains(t, out, "other-x", "another app's ejection is not this app's")
}
