package e2e

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/berthhq/berth/common/bus"
	"github.com/berthhq/berth/common/msg"
	"github.com/berthhq/berth/internal/loadgen"
	"github.com/berthhq/berth/internal/testrig"
	"github.com/stretchr/testify/require"
)

const demoHost = "demo.localhost"

// demoSpec is examples/demo.yaml with the image, the replica count (a spec
// is declarative: applying one sets both) and, for the failing version, the
// health knob of the scenario.
func demoSpec(t testing.TB, image string, replicas int, extra string) string {
	b, err := os.ReadFile(filepath.Join(repoRoot(), "examples", "demo.yaml"))
	require.NoError(t, err)
	spec := strings.Replace(string(b), "image: berth-demo:v1", "image: "+image, 1)
	spec = strings.Replace(spec, "replicas: 3", fmt.Sprintf("replicas: %d", replicas), 1)
	require.Contains(t, spec, "image: "+image)
	return spec + extra
}

// TestFullStackZeroFailedRequests runs Berth whole, lbagent in dynamic
// upstream mode, and under a steady load through nginx from a client that
// never retries takes it through every disruption a deploy or a failure
// brings. Every scenario must answer every request with a 2xx, and those
// that change only endpoints must not reload nginx.
func TestFullStackZeroFailedRequests(t *testing.T) { fullStack(t, "dynamic") }

// TestFullStackReloadMode is the same in reload mode (nginx without Lua):
// every change reloads, and the client retries what a reload closed.
func TestFullStackReloadMode(t *testing.T) { fullStack(t, "reload") }

func fullStack(t *testing.T, mode string) {
	v1, v2 := testrig.DemoImage(t, "v1"), testrig.DemoImage(t, "v2")
	s := newStackMode(t, "", mode)
	watch := s.startWatch()
	s.startScheduler("sched-a")
	s.leader(10 * time.Second)
	s.startScheduler("sched-b")
	healthd := s.startHealthd("hc1")
	lb := s.startLBAgent()

	s.apply(demoSpec(t, v1, 3, ""))
	s.waitServing("demo", demoHost, 3, "v1", 60*time.Second)

	var report []scenario
	// run runs one scenario under load; reloads says whether it changes
	// more than endpoints (a route, a template): in dynamic mode every
	// other scenario must not reload nginx.
	run := func(name string, reloads bool, body func()) {
		t.Helper()
		// In dynamic mode the client never retries, reloads included: before
		// each reload lbagent has the old workers close busy keep-alive
		// connections after an answer (--reload-drain), so the reload cuts
		// none that the client is about to use.
		gen := s.load(demoHost)
		before := s.nginxReloads()
		time.Sleep(time.Second) // load before the disruption
		body()
		time.Sleep(time.Second) // and after it
		res := gen.Stop()
		n := s.nginxReloads() - before
		report = append(report, scenario{name, res, n})
		t.Logf("%-32s %s; nginx reloads: %d", name, res, n)
		require.Positive(t, res.OK, name)
		// Not fatal: the scenarios go on, so that the report has them all.
		if err := loadgen.Check(res); err != nil {
			t.Errorf("%s: %v", name, err)
		}
		if mode == "dynamic" && !reloads && n != 0 {
			t.Errorf("%s: nginx reloaded %d times for endpoint changes", name, n)
		}
	}

	run("scale 3 → 8 → 2", false, func() {
		s.cli("scale", "demo", "8")
		s.waitServing("demo", demoHost, 8, "v1", 90*time.Second)
		s.cli("scale", "demo", "2")
		s.waitServing("demo", demoHost, 2, "v1", 90*time.Second)
	})

	run("rolling update v1 → v2", false, func() {
		s.apply(demoSpec(t, v2, 2, ""))
		s.waitServing("demo", demoHost, 2, "v2", 120*time.Second)
	})

	run("docker kill of one instance", false, func() {
		// Slow requests as well, so that requests are in flight on the
		// container when it dies: nginx retries them on another instance
		// (proxy_next_upstream error; GET is idempotent).
		// The rate staggers the 8 workers evenly, so that the requests in
		// flight at the kill are of every age (unpaced, they would run in
		// lockstep and the kill could land just after a batch began).
		slow := loadgen.Start(context.Background(), loadgen.Config{URL: "http://" + s.httpAddr + "/slow?d=500ms", Host: demoHost, Workers: 8, Rate: 15, NoRetry: s.strict()})
		defer func() {
			res := slow.Stop()
			t.Logf("%-32s %s", "  in-flight /slow?d=500ms load", res)
			report = append(report, scenario{"docker kill: 500 ms requests in flight", res, 0})
			if err := loadgen.Check(res); err != nil {
				t.Errorf("slow requests during the kill: %v", err)
			}
			// A request that took longer than its 500 ms was in flight on
			// the killed container and answered by another after nginx's retry.
			require.Greater(t, res.Max, 550*time.Millisecond, "requests were in flight on the killed container")
		}()
		time.Sleep(time.Second)
		ins := s.instances("demo")
		require.NotEmpty(t, ins)
		victim := s.containerOf(ins[0].ID)
		out, err := exec.Command("docker", "kill", victim).CombinedOutput()
		require.NoError(t, err, "%s", out)
		require.Eventually(t, func() bool {
			for _, in := range s.instances("demo") {
				if in.ID == ins[0].ID {
					return false
				}
			}
			return true
		}, 30*time.Second, 50*time.Millisecond, "the killed instance leaves the scheduler's view")
		s.waitServing("demo", demoHost, 2, "v2", 60*time.Second)
	})

	run("50 template-driven reloads", true, func() {
		tmpl := filepath.Join(s.tmplDir, "http.conf.tmpl")
		orig, err := os.ReadFile(tmpl)
		require.NoError(t, err)
		for i := 1; i <= 50; i++ {
			before := s.reloads()
			edited := strings.Replace(string(orig), "    # --- end of Berth http context ---",
				fmt.Sprintf("    # template edit %d\n    # --- end of Berth http context ---", i), 1)
			require.NoError(t, os.WriteFile(tmpl, []byte(edited), 0o644))
			require.Eventually(t, func() bool { return s.reloads() > before }, 15*time.Second, 10*time.Millisecond, "edit %d applied", i)
		}
		require.NoError(t, os.WriteFile(tmpl, orig, 0o644))
	})

	run("10 route changes (a host added)", mode != "dynamic", func() {
		// Routing is not part of what a container is made of: each apply
		// changes nginx's routes and restarts nothing. In reload mode that
		// is a reload; in dynamic mode the Lua router's route table is
		// pushed and nothing reloads (checked by run).
		for i := 1; i <= 11; i++ {
			before := s.reloads()
			spec := demoSpec(t, v2, 2, "")
			host := fmt.Sprintf("route-%d.localhost", i)
			if i <= 10 {
				spec = strings.Replace(spec, "hosts: ["+demoHost+"]", "hosts: ["+demoHost+", "+host+"]", 1)
				require.Contains(t, spec, host)
			}
			s.apply(spec) // the 11th puts the routes back as they were
			if mode != "dynamic" {
				require.Eventually(t, func() bool { return s.reloads() > before }, 15*time.Second, 10*time.Millisecond, "route change %d applied", i)
				if i <= 10 {
					_, _, failures, sample := s.served(host, 4)
					require.Zero(t, failures, "the new host %s answers: %s", host, sample)
				}
				continue
			}
			if i <= 10 {
				require.Eventually(t, func() bool { _, _, failures, _ := s.served(host, 4); return failures == 0 },
					15*time.Second, 10*time.Millisecond, "route change %d: the new host %s answers", i, host)
			} else {
				require.Eventually(t, func() bool {
					code, _ := s.getWithHeader("route-10.localhost", "X-Probe", "1")
					return code == http.StatusNotFound
				},
					15*time.Second, 10*time.Millisecond, "route change %d: the hosts added are gone", i)
			}
		}
	})

	run("healthd join, leave, restart", false, func() {
		// Each step waits until the checkers say they took the targets over,
		// then the next begins, under the same load.
		const all = 2 // the demo's instances
		// A second checker joins: the targets are split, and those handed
		// over keep their published health until the new owner reports.
		hc2 := s.startHealthd("hc2")
		require.Eventually(t, func() bool {
			a, b := s.healthd(healthd), s.healthd(hc2)
			return a.live == 2 && b.live == 2 && a.targets+b.targets == all
		}, 30*time.Second, 50*time.Millisecond, "the two checkers share the targets")
		// The first leaves cleanly: the second takes every target at once.
		healthd.stop(t, syscall.SIGTERM, 15*time.Second)
		require.Eventually(t, func() bool { return s.healthd(hc2).targets == all }, 30*time.Second, 50*time.Millisecond, "hc2 takes every target")
		// A restart with no checker for a moment: the new one carries on
		// from the published health instead of starting from unknown.
		hc2.stop(t, syscall.SIGTERM, 15*time.Second)
		healthd = s.startHealthd("hc3")
		require.Eventually(t, func() bool { h := s.healthd(healthd); return h.targets == all && h.probes >= 2*all },
			30*time.Second, 50*time.Millisecond, "hc3 takes every target and probes each twice")
		s.waitServing("demo", demoHost, 2, "v2", 30*time.Second)
	})

	run("lbagent restart (nginx keeps serving)", false, func() {
		nginxPID := s.nginx.PID()
		lb.stop(t, syscall.SIGTERM, 15*time.Second)
		time.Sleep(time.Second) // nginx serves alone
		lb = s.startLBAgent()
		require.Equal(t, nginxPID, s.nginx.PID(), "nginx kept running")
		s.waitServing("demo", demoHost, 2, "v2", 30*time.Second)
	})

	run("update failing health → rollback", false, func() {
		before := s.instances("demo")
		// The spec's own deadline shortened, from the demo's 30 s: the
		// rollback is the same, sooner.
		bad := strings.Replace(demoSpec(t, v1, 2, "env: {DEMO_HEALTH: fail}\n"), "healthy_deadline: 30s", "healthy_deadline: 8s", 1)
		require.Contains(t, bad, "healthy_deadline: 8s")
		// As a pipeline deploys: apply --wait exits 1 on a version that
		// never becomes healthy, naming its last probe.
		out, code := s.applyWait(bad)
		require.Equal(t, 1, code, "apply --wait of a version that never becomes healthy")
		require.Contains(t, out, "was rolled back")
		require.Contains(t, out, "http_status: status 503")
		line := s.waitEvent(watch, "rolled_back", 90*time.Second)
		require.Contains(t, line, "its last probe: http_status: status 503", "the cause: the late instance's last probe")
		after := s.waitServing("demo", demoHost, 2, "v2", 60*time.Second)
		require.ElementsMatch(t, ids(before), ids(after), "the serving instances were never replaced")
		require.Contains(t, s.cli("events", "--app", "demo", "--last", "20"), "    | demoapp ", "the late instance's log tail, with the rollback")
	})

	if mode == "dynamic" {
		// The generation that serves before the failed deploys: rolled
		// back to by --to at the end, many generations later.
		var good struct {
			Generation int64 `json:"generation"`
		}
		require.NoError(t, getJSON(s.api()+"/v1/apps/demo", &good))
		// Deploys that fail, each rolled back by itself with its cause,
		// while the generation before serves every request; then the fix
		// starts at once (a new generation has a restart budget of its own).
		for _, bad := range []struct{ name, spec, cause, logLine string }{
			{"crash at start (exit 3) → rollback", demoSpec(t, v2, 2, "env: {DEMO_EXIT: \"3\"}\n"), `its container exited with code 3`, "fatal: DEMO_EXIT=3: exiting with code 3"},
			// Docker may miss an OOM kill whose cgroup is gone before containerd
			// reads it (the docker package's test says more): then exit code 137
			// is all there is to say.
			{"OOM-killed at start → rollback", demoSpec(t, v2, 2, "env: {DEMO_ALLOC: \"256\"}\n"), `killed for running out of memory \(OOMKilled\)|exited with code 137`, "allocating 256 MiB"},
			{"missing image → rollback", demoSpec(t, "berth-demo:no-such-tag", 2, ""), `image berth-demo:no-such-tag is not present and pulling it failed`, ""},
		} {
			run(bad.name, false, func() {
				before := s.instances("demo")
				start := time.Now()
				// As a pipeline deploys: apply --wait fails, saying why.
				out, code := s.applyWait(bad.spec)
				require.Equal(t, 1, code, "apply --wait of a version that does not come up")
				require.Regexp(t, bad.cause, out)
				require.Contains(t, out, "was rolled back")
				line := s.waitEvent(watch, "rolled_back", 90*time.Second)
				t.Logf("%s: rolled back %s after the apply", bad.name, time.Since(start).Round(100*time.Millisecond))
				require.Regexp(t, bad.cause, line)
				after := s.waitServing("demo", demoHost, 2, "v2", 60*time.Second)
				require.ElementsMatch(t, ids(before), ids(after), "the serving instances were never replaced")
				status := s.cli("status", "demo")
				require.Regexp(t, `rollout: generation \d+ rolled back generation \d+ `, status)
				require.Contains(t, status, "serving: 2 instance(s) of generation")
				require.Regexp(t, bad.cause, status, "the latest failures, in status")
				if bad.logLine != "" {
					require.Contains(t, s.cli("events", "--app", "demo"), "    | "+"demoapp ", "the log tail, with the event")
					require.Contains(t, s.cli("events", "--app", "demo"), bad.logLine)
				}
			})
		}
		run("the fix starts at once", false, func() {
			before := s.instances("demo")
			start := time.Now()
			out, code := s.applyWait(demoSpec(t, v2, 2, "env: {DEMO_LATENCY: 0s}\n"))
			require.Equal(t, 0, code, "apply --wait of the fix")
			require.Contains(t, out, "2 of 2 instances of generation")
			require.Contains(t, out, "rolled out")
			// The fix is v2 too: wait for its own instances, not the version.
			require.Eventually(t, func() bool {
				ins := s.instances("demo")
				for _, in := range ins {
					if slices.Contains(ids(before), in.ID) || in.State != msg.StateRunning || in.Health != msg.StatusHealthy {
						return false
					}
				}
				return len(ins) == 2
			}, 60*time.Second, 100*time.Millisecond, "the fix's instances replace the old ones")
			after := s.waitServing("demo", demoHost, 2, "v2", 60*time.Second)
			for _, in := range after {
				require.NotContains(t, ids(before), in.ID, "replaced by the fix")
			}
			t.Logf("the fix served on every instance %s after the apply", time.Since(start).Round(100*time.Millisecond))
			require.Regexp(t, `rollout: generation \d+ complete`, s.cli("status", "demo"))
		})
		run("restart (same spec, rolling)", false, func() {
			before := s.instances("demo")
			out := s.cli("restart", "demo", "--wait", "--timeout", "2m") // exit 0: rolled out
			t.Logf("restart --wait:\n%s", out)
			require.Contains(t, out, "rolled out")
			after := s.waitServing("demo", demoHost, 2, "v2", 60*time.Second)
			for _, in := range after {
				require.NotContains(t, ids(before), in.ID, "every instance replaced")
			}
		})
		run("rollback --to a generation many back", false, func() {
			var now struct {
				Generation int64 `json:"generation"`
			}
			require.NoError(t, getJSON(s.api()+"/v1/apps/demo", &now))
			require.GreaterOrEqual(t, now.Generation-good.Generation, int64(3), "three generations back or more")
			before := s.instances("demo")
			out := s.cli("rollback", "demo", "--to", strconv.FormatInt(good.Generation, 10), "--wait", "--timeout", "2m") // exit 0: rolled out
			t.Logf("rollback --to %d (now %d) --wait:\n%s", good.Generation, now.Generation, out)
			require.Contains(t, out, "rolled out")
			after := s.waitServing("demo", demoHost, 2, "v2", 60*time.Second)
			for _, in := range after {
				require.NotContains(t, ids(before), in.ID, "its spec differs (no DEMO_LATENCY): every instance replaced")
			}
			hist := s.cli("history", "demo", strconv.FormatInt(now.Generation+1, 10))
			require.Contains(t, hist, ": back to ", "the history says it went back to an earlier spec")
		})
	}

	run("leader failover (SIGKILL), then scale", false, func() {
		leader := s.leader(5 * time.Second)
		s.proc("scheduler-"+leader).stop(t, syscall.SIGKILL, 5*time.Second)
		s.forget(leader)
		s.leader(10 * time.Second)
		s.cli("scale", "demo", "4")
		s.waitServing("demo", demoHost, 4, "v2", 90*time.Second)
	})

	// The leader's metrics say the app is at strength.
	metrics := s.metricsOf(s.apisOf(s.leader(5*time.Second)) + "/metrics")
	require.Contains(t, metrics, `berth_scheduler_app_desired_replicas{app="demo"} 4`)
	require.Contains(t, metrics, `berth_scheduler_app_ready_replicas{app="demo"} 4`)
	require.Regexp(t, `berth_scheduler_actions_total\{kind="start",result="ok"\} \d+`, metrics)

	// The example subscriber saw the story: lifecycle events and health
	// transitions, in the format docs/nats.md shows.
	out := watch.output()
	require.Regexp(t, `(?m) event  demo  instance_started  [a-z0-9]+  instance `, out)
	require.Regexp(t, `(?m) health demo  [a-z0-9]+  unknown -> healthy`, out)
	require.Regexp(t, `(?m) health demo  [a-z0-9]+  \S+ -> unhealthy  \(.*\)  http_status: `, out)

	if s.seeds != nil {
		s.requireNoPermissionErrors()
	}
	t.Logf("requests and failures per scenario, upstream mode %s (load: 4 keep-alive connections, 200 req/s through nginx; client retries: %v):", mode, !s.strict())
	t.Log("| scenario | requests | non-2xx | errors | of which on a reused keep-alive | connections | retried on a closed keep-alive | nginx reloads |")
	for _, sc := range report {
		r := sc.Result
		t.Logf("| %s | %d | %d | %d | %d | %d | %d | %d |", sc.Name, r.Requests, r.Non2xx, r.Errors, r.ReusedErrors, r.Conns, r.Retried, sc.Reloads)
	}
}

func ids(ins []instanceView) []string {
	out := make([]string, len(ins))
	for i, in := range ins {
		out[i] = in.ID
	}
	return out
}

// containerOf returns the container id of an instance.
func (s *stack) containerOf(instance string) string {
	s.t.Helper()
	ids := testrig.BerthContainers(s.t, s.prefix, "berth.instance="+instance)
	require.Len(s.t, ids, 1, "container of %s", instance)
	return ids[0]
}

func (s *stack) proc(name string) *proc {
	s.mu.Lock()
	defer s.mu.Unlock()
	for i := len(s.procs) - 1; i >= 0; i-- {
		if s.procs[i].name == name {
			return s.procs[i]
		}
	}
	s.t.Fatalf("no process %s", name)
	return nil
}

func (s *stack) forget(schedulerID string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.apis, schedulerID)
}

// watcher is the example subscriber (examples/berth-watch) running against
// the stack, its output collected.
type watcher struct {
	mu    sync.Mutex
	lines []string
	ch    chan string
}

func (s *stack) startWatch() *watcher {
	s.t.Helper()
	cmd := exec.Command(filepath.Join(binDir, "berth-watch"), "--nats-url", s.nats, "--prefix", s.prefix, "--nats-nkey", s.seeds[bus.RoleReader])
	stdout, err := cmd.StdoutPipe()
	require.NoError(s.t, err)
	stderr, err := cmd.StderrPipe()
	require.NoError(s.t, err)
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	require.NoError(s.t, cmd.Start())
	w := &watcher{ch: make(chan string, 4096)}
	ready := make(chan struct{})
	go func() {
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			if strings.Contains(sc.Text(), "watching") {
				close(ready)
			}
		}
	}()
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			w.mu.Lock()
			w.lines = append(w.lines, sc.Text())
			w.mu.Unlock()
			select {
			case w.ch <- sc.Text():
			default:
			}
		}
	}()
	s.t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		_ = cmd.Wait()
	})
	select {
	case <-ready:
	case <-time.After(10 * time.Second):
		s.t.Fatal("berth-watch did not subscribe")
	}
	return w
}

func (w *watcher) output() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return strings.Join(w.lines, "\n")
}

// waitEvent waits for an event line whose kind contains kind.
func (s *stack) waitEvent(w *watcher, kind string, timeout time.Duration) string {
	s.t.Helper()
	deadline := time.After(timeout)
	for {
		select {
		case line := <-w.ch:
			if f := strings.Fields(line); len(f) > 3 && f[1] == "event" && strings.Contains(f[3], kind) {
				s.t.Logf("event: %s", line)
				return line
			}
		case <-deadline:
			s.t.Fatalf("no %s event within %s", kind, timeout)
		}
	}
}

func (s *stack) apisOf(id string) string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.apis[id]
}

// healthdView is what a healthd's /metrics says of its share of the work.
type healthdView struct {
	live, targets, probes int
}

// healthd reads p's metrics (p started by startHealthd).
func (s *stack) healthd(p *proc) healthdView {
	s.t.Helper()
	var v healthdView
	for _, line := range strings.Split(s.metricsOf("http://"+p.metrics+"/metrics"), "\n") {
		name, value, ok := strings.Cut(line, " ")
		if !ok {
			continue
		}
		n, _ := strconv.ParseFloat(value, 64)
		switch {
		case name == "berth_healthd_live_checkers":
			v.live = int(n)
		case name == "berth_healthd_targets":
			v.targets = int(n)
		case strings.HasPrefix(name, "berth_healthd_probes_total{"):
			v.probes += int(n)
		}
	}
	return v
}

func (s *stack) metricsOf(url string) string {
	s.t.Helper()
	resp, err := http.Get(url)
	require.NoError(s.t, err)
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	require.NoError(s.t, err)
	return string(b)
}
