package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest"

	"github.com/berthhq/berth/common/bus"
	"github.com/berthhq/berth/common/msg"
	"github.com/berthhq/berth/internal/testrig"
)

// scheduledHealthSpec is the demo app with a health check the scheduler
// runs (health.type docker or exec), health being the health block.
func scheduledHealthSpec(image, health string) string {
	return fmt.Sprintf(`name: demo
image: %s
port: 8080
replicas: 2
resources: {cpu: 0.25, memory: 64Mi}
health: %s
update: {max_surge: 1, max_unavailable: 0, min_healthy_time: 1s, healthy_deadline: 30s, auto_rollback: true}
stop: {signal: SIGTERM, grace: 5s, drain: 2s}
lb: {method: round_robin, keepalive: 16, connect_timeout: 1s, read_timeout: 30s, next_upstream_tries: 3}
routing: {hosts: [demo.localhost]}
`, image, health)
}

// TestDockerAndExecHealthLeaveRotation runs Berth whole with an app whose
// health is Docker's own HEALTHCHECK (health.type docker), then an exec
// check (health.type exec). In each, one instance's health flips to
// failing under a steady load from a client that never retries: it leaves
// nginx's rotation within the check's interval and a second, its health
// on NATS is sealed by the scheduler and says why, it comes back when it passes again, and no request fails.
// healthd runs beside and probes none of it; NATS refuses nothing.
func TestDockerAndExecHealthLeaveRotation(t *testing.T) {
	checked, plain := testrig.DemoHealthcheckImage(t, "hc1"), testrig.DemoImage(t, "hc1")
	s := newStack(t)
	s.startScheduler("sched-a")
	s.leader(10 * time.Second)
	s.startHealthd("hc1")
	s.startLBAgent()
	// A reader that checks seals, as any tool acting on health should.
	keys, err := bus.LoadKeys(s.seeds[bus.RoleReader])
	require.NoError(t, err)
	reader, err := bus.Connect(context.Background(), bus.Options{URL: s.nats, NKeyFile: s.seeds[bus.RoleReader], Keys: keys, Names: s.names},
		zaptest.NewLogger(t, zaptest.Level(zapcore.WarnLevel)).Named("reader"))
	require.NoError(t, err)
	t.Cleanup(reader.Close)
	for _, tc := range []struct{ name, spec, reason string }{
		{"docker", scheduledHealthSpec(checked, "{type: docker}"), "HEALTHCHECK exited 1: check: GET http://127.0.0.1:8080/healthz: 503"},
		{"exec", scheduledHealthSpec(plain, `{type: exec, exec: {command: [/demoapp, check, "`+testrig.DemoHealthcheckURL+`"]}, interval: 1s, timeout: 900ms, healthy_threshold: 1, unhealthy_threshold: 1}`),
			"exited 1: check: GET http://127.0.0.1:8080/healthz: 503"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			// Both versions are hc1: wait for the rollout itself, or the
			// victim could be an old instance that the rollout drains.
			_, code := s.applyWait(tc.spec)
			require.Equal(t, 0, code, "apply --wait")
			ins := s.waitServing("demo", demoHost, 2, "hc1", 90*time.Second)
			gen := s.load(demoHost)
			victim := ins[0]
			flipped := time.Now()
			setDemoHealth(t, victim.Address, "fail")
			require.Eventually(t, func() bool { got, _, _, _ := s.served(demoHost, 2); return !got[victim.ID] }, 20*time.Second, 10*time.Millisecond,
				"the failing instance leaves rotation")
			out := time.Since(flipped)
			t.Logf("%s: /healthz fails → out of nginx's rotation in %s (check interval 1s)", tc.name, out.Round(time.Millisecond))
			require.Less(t, out, 3*time.Second, "within the interval and a second, with room for a loaded machine")
			var why, sealer, seen string
			require.Eventually(t, func() bool {
				// The health value on NATS, as any reader sees it: sealed
				// by the scheduler, with Docker's or the exec's output.
				kv, err := reader.KV(context.Background(), s.names.HealthBucket())
				if err != nil {
					return false
				}
				e, err := kv.Get(context.Background(), msg.InstanceKey("demo", victim.ID))
				if err != nil {
					return false
				}
				var h msg.Health
				if json.Unmarshal(e.Value, &h) != nil || h.Status != msg.StatusUnhealthy {
					return false
				}
				why, sealer = h.Failure+": "+h.Message, e.Sealer
				// A check may first fail otherwise on a loaded machine (an
				// exec past its 900 ms timeout, seen once in CI): the value
				// changes with the next check's reason, which must come.
				if !strings.Contains(why, tc.reason) {
					if why != seen {
						t.Logf("%s: published unhealthy as %q; waiting for the check's own output", tc.name, why)
						seen = why
					}
					return false
				}
				return true
			}, 20*time.Second, 50*time.Millisecond, "the scheduler publishes it unhealthy with the check's output")
			require.Equal(t, bus.RoleScheduler, sealer)
			t.Logf("%s: published as %q", tc.name, why)
			require.Contains(t, why, tc.reason)
			require.Eventually(t, func() bool {
				out := s.cli("events", "--app", "demo", "--last", "50")
				return strings.Contains(out, "instance_unhealthy") && strings.Contains(out, victim.ID)
			}, 10*time.Second, 100*time.Millisecond, "an instance_unhealthy event says so")
			setDemoHealth(t, victim.Address, "ok")
			s.waitServing("demo", demoHost, 2, "hc1", 60*time.Second)
			res := gen.Stop()
			t.Logf("%s: load %s", tc.name, res)
			require.Zero(t, res.Failed(), "a client that never retries sees no failure: %s", res)
		})
	}
	s.requireNoPermissionErrors()
}

func setDemoHealth(t *testing.T, addr, state string) {
	t.Helper()
	resp, err := http.Post("http://"+addr+"/admin/health?state="+state, "", nil)
	require.NoError(t, err)
	resp.Body.Close()
	require.Less(t, resp.StatusCode, 300)
}
