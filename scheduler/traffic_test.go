package main

import (
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/berthhq/berth/common/spec"
	"github.com/berthhq/berth/scheduler/internal/api"
)

func TestTrafficLine(t *testing.T) {
	t.Parallel()
	require.Equal(t, "traffic: no lbagent reported this app lately", trafficLine(nil))
	line := trafficLine(&api.TrafficView{RPS: 42.46, ErrorRate: 0.0213, P95MS: 87.34, Requests: 425, Nodes: 2, Window: spec.Duration(5 * time.Second), At: time.Now()})
	require.Contains(t, line, "traffic: 42.5 req/s, 2.13% 5xx, p95 87.3 ms (2 lbagents, last 5s window ")
}
