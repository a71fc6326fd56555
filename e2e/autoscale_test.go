package e2e

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/berthhq/berth/internal/loadgen"
	"github.com/berthhq/berth/internal/testrig"
)

// Test-shortened autoscaler timings: decisions and lbagent windows every
// second, a 2 s sample window, 3 s cooldowns and a 6 s scale-down
// stabilisation (the defaults are 15 s, 5 s, 60 s, 15 s/60 s and 300 s).
var autoscaleFlags = []string{"--autoscale-interval", "1s", "--stats-interval", "1s"}

const (
	// Each request waits 30 ms in the app (its latency knob), so the p95
	// seen through nginx is a real, non-zero figure.
	autoscaleExtra = "env: {DEMO_LATENCY: 30ms}\n"
	autoscaleBlock = "scaling: {min: 2, max: 6, target_rps_per_replica: 45, target_p95_latency_ms: 500, window: 2s,\n" +
		"  scale_up_cooldown: 3s, scale_down_cooldown: 3s, scale_down_stabilization: 6s, scale_up_period: 3s}\n"
	// The load step: with the background load, 160 req/s is 3.6, so 4
	// replicas at 45 per replica (with room for a few % of rate noise).
	stepRate = 150
	// The background load that runs throughout, so that scale-in is also
	// under load: 10 req/s, which alone asks for 1 replica (min is 2).
	baseRate = 10
)

// autoscaledDemo is examples/demo.yaml with the fixed count replaced by
// the scaling block.
func autoscaledDemo(t *testing.T, image string) string {
	spec := demoSpec(t, image, 3, autoscaleExtra)
	require.Contains(t, spec, "replicas: 3\n")
	return strings.Replace(spec, "replicas: 3\n", autoscaleBlock, 1)
}

type eventView struct {
	Kind    string            `json:"kind"`
	Message string            `json:"message"`
	Details map[string]string `json:"details"`
	At      time.Time         `json:"at"`
}

type decisionView struct {
	Current, Desired, Recommendation int
	Reasons                          []struct {
		Metric string  `json:"metric"`
		Value  float64 `json:"value"`
		Target float64 `json:"target"`
		NoData bool    `json:"no_data"`
		Note   string  `json:"note"`
	}
	Limits []string
	At     time.Time
}

type metricsView struct {
	Autoscaled      bool `json:"autoscaled"`
	DesiredReplicas int  `json:"desired_replicas"`
	Traffic         []struct {
		Node  string  `json:"node"`
		RPS   float64 `json:"rps"`
		P95MS float64 `json:"p95_ms"`
	} `json:"traffic"`
	Decisions []decisionView `json:"decisions"`
}

func (s *stack) events(app string) []eventView {
	var out []eventView
	require.NoError(s.t, getJSON(s.api()+"/v1/events?app="+app, &out))
	return out
}

func (s *stack) metrics(app string) metricsView {
	var out metricsView
	require.NoError(s.t, getJSON(s.api()+"/v1/apps/"+app+"/metrics?decisions=50", &out))
	return out
}

// lastEvent returns the time of the last event of kind after since.
func lastEvent(evs []eventView, kind string, since time.Time) (time.Time, bool) {
	var at time.Time
	for _, e := range evs {
		if e.Kind == kind && e.At.After(since) {
			at = e.At
		}
	}
	return at, !at.IsZero()
}

// reaction is one step in load until the new replicas serve, in parts.
type reaction struct {
	Decided, Started, Serving time.Duration // from the step
}

func (r reaction) String() string {
	return fmt.Sprintf("step → decision %s, → last new instance started %s (+%s), → all serving %s (+%s)",
		r.Decided.Round(10*time.Millisecond), r.Started.Round(10*time.Millisecond), (r.Started - r.Decided).Round(10*time.Millisecond),
		r.Serving.Round(10*time.Millisecond), (r.Serving - r.Started).Round(10*time.Millisecond))
}

// stepUp starts the step load and times the scale-out to want replicas.
func (s *stack) stepUp(want int) (*loadgen.Run, reaction) {
	s.t.Helper()
	step := time.Now()
	gen := loadgen.Start(context.Background(), loadgen.Config{URL: "http://" + s.httpAddr + "/", Host: demoHost, Workers: 12, Rate: stepRate})
	s.waitServing("demo", demoHost, want, "v1", 60*time.Second)
	serving := time.Since(step)
	evs := s.events("demo")
	decided, ok := lastEvent(evs, "app_scaled", step)
	require.True(s.t, ok, "an app_scaled event after the step")
	started, ok := lastEvent(evs, "instance_started", step)
	require.True(s.t, ok, "instances started after the step")
	return gen, reaction{Decided: decided.Sub(step), Started: started.Sub(step), Serving: serving}
}

// TestAutoscaling runs the demo app autoscaled on request rate and p95
// latency behind nginx: a step in load scales it out, losing lbagent's
// metrics changes nothing, and the end of the step scales it back in after
// the stabilisation window, with no failed request throughout.
func TestAutoscaling(t *testing.T) {
	v1 := testrig.DemoImage(t, "v1")
	s := newStack(t)
	leaderID := "sched-a"
	s.startScheduler(leaderID, autoscaleFlags...)
	s.leader(10 * time.Second)
	s.startHealthd("hc1")
	// nginx workers run unprivileged: they must reach the access log socket.
	require.NoError(t, os.Chmod(s.dir, 0o755))
	require.NoError(t, os.Chmod(filepath.Dir(s.dir), 0o755))
	lbArgs := []string{"--access-log-socket", filepath.Join(s.dir, "access.sock"), "--metrics-window", "1s"}
	lb := s.startLBAgent(lbArgs...)

	s.apply(autoscaledDemo(t, v1))
	s.waitServing("demo", demoHost, 2, "v1", 60*time.Second)
	base := loadgen.Start(context.Background(), loadgen.Config{URL: "http://" + s.httpAddr + "/", Host: demoHost, Workers: 2, Rate: baseRate})
	defer base.Stop()

	// Steady at min: 10 req/s asks for 1, the floor is 2.
	time.Sleep(6 * time.Second)
	m := s.metrics("demo")
	require.True(t, m.Autoscaled)
	require.Equal(t, 2, m.DesiredReplicas)
	require.NotEmpty(t, m.Traffic, "lbagent's windows reach the scheduler")
	require.NotEmpty(t, m.Decisions)

	// Step up: 160 req/s at 45 per replica is 4 replicas.
	gen, r := s.stepUp(4)
	t.Logf("scale-out 2 → 4: %s", r)
	m = s.metrics("demo")
	last := m.Decisions[len(m.Decisions)-1]
	metrics := map[string]float64{}
	for _, rs := range last.Reasons {
		metrics[rs.Metric] = rs.Value
	}
	t.Logf("last decision: %+v", last)
	require.Greater(t, metrics["rps"], 30.0, "rps per replica")
	require.Greater(t, metrics["latency"], 25.0, "the p95 through nginx includes the app's 30 ms")
	require.Less(t, metrics["latency"], 400.0)
	status := s.cli("status", "demo")
	t.Logf("scheduler status demo:\n%s", status)
	require.Contains(t, status, "autoscaling: 2–6 replicas")
	require.Contains(t, status, "latency")
	require.Contains(t, s.scrape(leaderID), `berth_scheduler_autoscale_metric_value{app="demo",metric="rps"}`)

	// lbagent gone: no metric arrives; the app stays where it is, neither
	// scaled in to min nor out to max, while nginx keeps serving.
	lb.stop(t, syscall.SIGKILL, 10*time.Second)
	gone := time.Now()
	for time.Since(gone) < 10*time.Second {
		require.Equal(t, 4, s.metrics("demo").DesiredReplicas, "lost metrics never scale")
		time.Sleep(250 * time.Millisecond)
	}
	m = s.metrics("demo")
	last = m.Decisions[len(m.Decisions)-1]
	for _, rs := range last.Reasons {
		require.True(t, rs.NoData, "%s has no sample without lbagent: %+v", rs.Metric, rs)
	}
	s.startLBAgent(lbArgs...)

	// The step ends: back to 2 after the 6 s stabilisation, under the
	// background load, draining the instances it stops.
	res := gen.Stop()
	t.Logf("step load: %s", res)
	require.NoError(t, loadgen.Check(res), "step load")
	stop := time.Now()
	s.waitServing("demo", demoHost, 2, "v1", 60*time.Second)
	evs := s.events("demo")
	down, ok := lastEvent(evs, "app_scaled", stop)
	require.True(t, ok)
	t.Logf("scale-in 4 → 2: decided %s after the step ended, serving from 2 after %s", down.Sub(stop).Round(10*time.Millisecond), time.Since(stop).Round(10*time.Millisecond))
	require.GreaterOrEqual(t, down.Sub(stop), 6*time.Second, "not before the scale-down stabilisation")

	res = base.Stop()
	t.Logf("background load: %s", res)
	require.NoError(t, loadgen.Check(res), "background load")
	for _, e := range evs {
		if e.Kind == "app_scaled" || e.Kind == "scale_held" {
			t.Logf("event %s %s: %s", e.At.Format("15:04:05.000"), e.Kind, e.Message)
		}
	}
}

// scrape returns a scheduler replica's /metrics.
func (s *stack) scrape(id string) string {
	s.mu.Lock()
	api := s.apis[id]
	s.mu.Unlock()
	resp, err := http.Get(api + "/metrics")
	require.NoError(s.t, err)
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	require.NoError(s.t, err)
	return string(b)
}
