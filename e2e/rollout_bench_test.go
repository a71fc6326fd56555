package e2e

import (
	"context"
	"fmt"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"sigs.k8s.io/yaml"

	"github.com/berthhq/berth/internal/loadgen"
	"github.com/berthhq/berth/internal/testrig"
)

// demoTimings are the timings of examples/demo.yaml a rollout waits for.
type demoTimings struct {
	Health struct {
		Interval         duration `json:"interval"`
		HealthyThreshold int      `json:"healthy_threshold"`
	} `json:"health"`
	Update struct {
		MaxSurge       int      `json:"max_surge"`
		MinHealthyTime duration `json:"min_healthy_time"`
	} `json:"update"`
	Stop struct {
		Drain duration `json:"drain"`
	} `json:"stop"`
}

type duration struct{ time.Duration }

func (d *duration) UnmarshalJSON(b []byte) error {
	v, err := time.ParseDuration(strings.Trim(string(b), `"`))
	d.Duration = v
	return err
}

func readDemoTimings(t testing.TB) demoTimings {
	b, err := os.ReadFile(filepath.Join(repoRoot(), "examples", "demo.yaml"))
	require.NoError(t, err)
	var d demoTimings
	require.NoError(t, yaml.Unmarshal(b, &d))
	require.Positive(t, d.Update.MaxSurge)
	require.Positive(t, d.Health.HealthyThreshold)
	return d
}

// rolloutFigures is one measured rolling update.
type rolloutFigures struct {
	Replicas, Batches int
	Measured, Floor   time.Duration
	Start             time.Duration // mean container start, Docker's own timing
	Load              loadgen.Result
}

func (r rolloutFigures) Ratio() float64 { return r.Measured.Seconds() / r.Floor.Seconds() }

// BenchmarkRollout runs a rolling update v1 → v2 of the demo app with 3
// and with 10 replicas, with the scheduler's default --resync and the
// demo spec's timings, under load through nginx, and reports the time from
// `apply` until every new instance serves and every old one is gone (in the
// scheduler's view, in Docker and in nginx's answers) against its floor,
// measured in the same run:
//
//	floor = batches × (container start + healthy_threshold × interval + min_healthy_time) + drain + 2 s
//
// with batches = ceil(replicas / max_surge) and the container start Docker's
// own (created → started) mean over the new containers. Every request of
// the load must get a 2xx.
//
//	go test -run '^$' -bench Rollout -benchtime 1x -timeout 30m ./e2e/
func BenchmarkRollout(b *testing.B) {
	v1, v2 := testrig.DemoImage(b, "v1"), testrig.DemoImage(b, "v2")
	d := readDemoTimings(b)
	s := newStack(b)
	s.startScheduler("sched-a")
	s.leader(10 * time.Second)
	s.startHealthd("hc1")
	s.startLBAgent()
	for range b.N {
		for _, n := range []int{3, 10} {
			r := s.rollout(v1, v2, n, d)
			fmt.Printf("rollout v1 → v2, %2d replicas: %s from apply to all new serving and all old gone; floor %s (%d batches × (start %s + %d × %s + %s) + drain %s + 2s) → ratio %.2f\n",
				n, r.Measured.Round(10*time.Millisecond), r.Floor.Round(10*time.Millisecond), r.Batches, r.Start.Round(time.Millisecond),
				d.Health.HealthyThreshold, d.Health.Interval.Duration, d.Update.MinHealthyTime.Duration, d.Stop.Drain.Duration, r.Ratio())
			fmt.Printf("    load: %s\n", r.Load)
			b.ReportMetric(r.Measured.Seconds(), fmt.Sprintf("s-rollout-%d", n))
			b.ReportMetric(r.Ratio(), fmt.Sprintf("x-floor-%d", n))
			b.ReportMetric(float64(r.Load.Failed()), fmt.Sprintf("failed-requests-%d", n))
			if err := loadgen.Check(r.Load); err != nil {
				b.Errorf("rollout of %d replicas: %v", n, err)
			}
		}
	}
}

// rollout deploys app roll<n> at v1 with n replicas, then times its update
// to v2 under load.
func (s *stack) rollout(v1, v2 string, n int, d demoTimings) rolloutFigures {
	s.t.Helper()
	app, host := fmt.Sprintf("roll%d", n), fmt.Sprintf("roll%d.localhost", n)
	spec := func(image string) string {
		sp := demoSpec(s.t, image, n, "")
		sp = strings.Replace(sp, "name: demo\n", "name: "+app+"\n", 1)
		sp = strings.Replace(sp, "hosts: [demo.localhost]", "hosts: ["+host+"]", 1)
		require.Contains(s.t, sp, "hosts: ["+host+"]")
		return sp
	}
	s.apply(spec(v1))
	s.waitServing(app, host, n, "v1", 120*time.Second)
	time.Sleep(2 * time.Second) // past min_healthy_time of the first instances

	gen := loadgen.Start(context.Background(), loadgen.Config{URL: "http://" + s.httpAddr + "/", Host: host, Workers: 4, Rate: 100, NoRetry: s.strict()})
	time.Sleep(time.Second)
	t0 := time.Now()
	s.apply(spec(v2))
	// Before the planner paced rollouts, every step waited for the 30 s
	// resync: leave room for that.
	s.waitServing(app, host, n, "v2", time.Duration(n)*45*time.Second+60*time.Second)
	r := rolloutFigures{Replicas: n, Measured: time.Since(t0)}
	time.Sleep(time.Second)
	r.Load = gen.Stop()

	for _, e := range s.events(app) {
		if e.At.After(t0) {
			fmt.Printf("    %+7.2fs %-18s %s\n", e.At.Sub(t0).Seconds(), e.Kind, e.Message)
		}
	}
	var total time.Duration
	containers := s.containers(app)
	for _, c := range containers {
		total += dockerStartTime(s.t, c)
	}
	r.Start = total / time.Duration(len(containers))
	r.Batches = int(math.Ceil(float64(n) / float64(d.Update.MaxSurge)))
	per := r.Start + time.Duration(d.Health.HealthyThreshold)*d.Health.Interval.Duration + d.Update.MinHealthyTime.Duration
	r.Floor = time.Duration(r.Batches)*per + d.Stop.Drain.Duration + 2*time.Second
	return r
}

// dockerStartTime is Docker's own time from a container's creation to its
// process running.
func dockerStartTime(t testing.TB, container string) time.Duration {
	out, err := exec.Command("docker", "inspect", "--format", "{{.Created}} {{.State.StartedAt}}", container).CombinedOutput()
	require.NoError(t, err, "docker inspect %s: %s", container, out)
	f := strings.Fields(string(out))
	require.Len(t, f, 2, "docker inspect %s: %s", container, out)
	created, err := time.Parse(time.RFC3339Nano, f[0])
	require.NoError(t, err)
	started, err := time.Parse(time.RFC3339Nano, f[1])
	require.NoError(t, err)
	return started.Sub(created)
}
