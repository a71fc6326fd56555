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
