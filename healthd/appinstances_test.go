package main

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/stretchr/testify/require"
	"go.uber.org/zap"

	"github.com/berthhq/berth/common/msg"
	"github.com/berthhq/berth/common/spec"
	"github.com/berthhq/berth/healthd/internal/checker"
	"github.com/berthhq/berth/healthd/internal/probe"
	"github.com/berthhq/berth/internal/testrig"
)

func TestAppInstancesGauge(t *testing.T) {
	t.Parallel()
	checked := &spec.Health{Type: spec.HealthHTTP, Path: "/healthz"}
	apps := map[string]*msg.App{"web": {Name: "web", Health: checked}, "api": {Name: "api", Health: checked},
		"idle": {Name: "idle", Health: checked}, "plain": {Name: "plain"}}
	target := func(key string, gen int64) checker.Target {
		return checker.Target{Target: probe.Target{Key: key}, Generation: gen}
	}
	targets := []checker.Target{target("web.a", 1), target("web.b", 1), target("web.c", 2), target("web.d", 1), target("api.a", 3)}
	health := map[string]*msg.Health{
		"web.a":  {Generation: 1, Status: msg.StatusHealthy},
		"web.b":  {Generation: 1, Status: msg.StatusUnhealthy},
		"web.c":  {Generation: 1, Status: msg.StatusHealthy}, // an older generation's: unknown
		"api.a":  {Generation: 3, Status: msg.StatusHealthy},
		"gone.a": {Generation: 1, Status: msg.StatusHealthy}, // no target: not counted
	}
	m := newMetrics(newProbeDurations(10, zap.NewNop()))
	m.instances.set(countInstances(apps, targets, health))
	want := `
# HELP berth_healthd_app_instances Instances of each app with a health check, by health status (healthy, unhealthy, unknown: not probed yet in its generation); exported by one checker at a time, the one that sweeps the health bucket.
# TYPE berth_healthd_app_instances gauge
berth_healthd_app_instances{app="api",status="healthy"} 1
berth_healthd_app_instances{app="api",status="unhealthy"} 0
berth_healthd_app_instances{app="api",status="unknown"} 0
berth_healthd_app_instances{app="idle",status="healthy"} 0
berth_healthd_app_instances{app="idle",status="unhealthy"} 0
berth_healthd_app_instances{app="idle",status="unknown"} 0
berth_healthd_app_instances{app="web",status="healthy"} 1
berth_healthd_app_instances{app="web",status="unhealthy"} 1
berth_healthd_app_instances{app="web",status="unknown"} 2
`
	require.NoError(t, testutil.GatherAndCompare(m.reg, strings.NewReader(want), "berth_healthd_app_instances"))

	// A deleted app's series go with its last count.
	delete(apps, "web")
	m.instances.set(countInstances(apps, targets[4:], health))
	n, err := testutil.GatherAndCount(m.reg, "berth_healthd_app_instances")
	require.NoError(t, err)
	require.Equal(t, 6, n, "api and idle")

	// A checker that does not sweep exports none.
	m.instances.set(nil)
	n, err = testutil.GatherAndCount(m.reg, "berth_healthd_app_instances")
	require.NoError(t, err)
	require.Zero(t, n)
}

// TestAppInstancesOnMetrics: a running checker exports each app's
// instances by health on /metrics, and drops a deleted app's series.
func TestAppInstancesOnMetrics(t *testing.T) {
	t.Parallel()
	c := newCluster(t)
	good, bad := 200, 503
	c.app("web")
	c.instance("web", "good", healthServer(t, &good), msg.StateRunning)
	c.instance("web", "bad", healthServer(t, &bad), msg.StateRunning)
	addr := fmt.Sprintf("127.0.0.1:%d", testrig.FreePort(t))
	startHealthdMode(t, c, "hc-a", false, "--metrics-listen", addr)

	scrape := func() string {
		resp, err := http.Get("http://" + addr + "/metrics")
		if err != nil {
			return ""
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return string(b)
	}
	require.Eventually(t, func() bool {
		s := scrape()
		return strings.Contains(s, `berth_healthd_app_instances{app="web",status="healthy"} 1`) &&
			strings.Contains(s, `berth_healthd_app_instances{app="web",status="unhealthy"} 1`) &&
			strings.Contains(s, `berth_healthd_app_instances{app="web",status="unknown"} 0`)
	}, 10*time.Second, 20*time.Millisecond)

	require.NoError(t, c.apps.Delete(context.Background(), "web"))
	require.Eventually(t, func() bool {
		s := scrape()
		return strings.Contains(s, "berth_healthd_targets") && !strings.Contains(s, `berth_healthd_app_instances{app="web"`)
	}, 10*time.Second, 20*time.Millisecond)
}
