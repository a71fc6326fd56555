package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/berthhq/berth/common/bus"
	"github.com/berthhq/berth/common/msg"
	"github.com/berthhq/berth/internal/testrig"
	"github.com/stretchr/testify/require"
	"go.uber.org/zap/zaptest"
)

// env is one Berth environment for a data-plane test: a migrated database,
// NATS with the contract's buckets, and a scheduler replica managing its
// own prefix (and the run flags given); its containers are removed at
// cleanup.
type env struct {
	t      *testing.T
	prefix string
	names  msg.Names
	conn   *bus.Conn
	kv     *bus.KV // berth_instances
	r      *replica
	// db and natsURL let a test start another replica.
	db, natsURL string
}

func newEnv(t *testing.T, base string, flags ...string) *env {
	t.Helper()
	db, natsURL := testrig.Postgres(t), testrig.NATS(t)
	code, _, _ := cmd(t, "migrate", "--database-url", db)
	require.Equal(t, 0, code)
	prefix := fmt.Sprintf("%s%d", base, time.Now().UnixNano()%1e6)
	testrig.RemoveBerthContainers(t, prefix)
	conn, err := bus.Connect(context.Background(), bus.Options{URL: natsURL}, zaptest.NewLogger(t))
	require.NoError(t, err)
	t.Cleanup(conn.Close)
	names, _ := msg.NewNames(prefix)
	require.NoError(t, conn.EnsureBuckets(context.Background(), bus.ContractBuckets(names)))
	kv, err := conn.KV(context.Background(), names.InstancesBucket())
	require.NoError(t, err)
	e := &env{t: t, prefix: prefix, names: names, conn: conn, kv: kv}
	e.r = startReplica(t, db, natsURL, prefix+"-a", append([]string{"--prefix", prefix}, flags...)...)
	e.db, e.natsURL = db, natsURL
	return e
}

// running lists the app's instances in berth_instances that are running.
func running(t *testing.T, kv *bus.KV, app string) map[string]*msg.Instance {
	t.Helper()
	out := map[string]*msg.Instance{}
	keys, err := kv.Keys(context.Background())
	require.NoError(t, err)
	for _, k := range keys {
		if !strings.HasPrefix(k, app+".") {
			continue
		}
		e, err := kv.Get(context.Background(), k)
		if err != nil {
			continue
		}
		m, err := msg.DecodeAs[*msg.Instance](e.Value)
		if err == nil && m.State == msg.StateRunning {
			out[m.ID] = m
		}
	}
	return out
}

func TestDataPlaneScaleAndRecover(t *testing.T) {
	t.Parallel()
	image := testrig.DemoImage(t, "v1")
	e := newEnv(t, "dp")
	kv := e.kv
	app := "web"
	r := e.r

	specFile := filepath.Join(t.TempDir(), "app.yaml")
	apply := func(replicas int) {
		require.NoError(t, os.WriteFile(specFile, []byte(fmt.Sprintf("name: %s\nimage: %s\nport: 8080\nreplicas: %d\nstop: {grace: 2s, drain: 0s}\nresources: {memory: 32Mi}\n",
			app, image, replicas)), 0o644))
		code, out, errOut := cmd(t, "apply", "-f", specFile, "--server", r.api)
		require.Equal(t, 0, code, out+errOut)
	}
	waitRunning := func(n int) map[string]*msg.Instance {
		var got map[string]*msg.Instance
		require.Eventually(t, func() bool { got = running(t, kv, app); return len(got) == n }, 60*time.Second, 50*time.Millisecond,
			"want %d running instances", n)
		return got
	}

	apply(3)
	insts := waitRunning(3)
	for id, m := range insts {
		var reply struct{ Instance string }
		require.NoError(t, json.Unmarshal([]byte(testrig.WaitHTTP(t, "http://"+m.Address+"/", 20*time.Second)), &reply))
		require.Equal(t, id, reply.Instance, "each instance is reachable on its published address")
		require.True(t, strings.HasPrefix(m.Address, "127.0.0.1:"))
	}

	apply(5)
	waitRunning(5)
	apply(2)
	insts = waitRunning(2)
	require.Eventually(t, func() bool {
		return len(testrig.BerthContainers(t, e.prefix, "berth.app="+app)) == 2
	}, 30*time.Second, 100*time.Millisecond, "scaled-down containers are removed")

	// docker kill one: it leaves berth_instances at once, and is replaced.
	var victim *msg.Instance
	for _, m := range insts {
		victim = m
		break
	}
	killed := time.Now()
	out, err := exec.Command("docker", "kill", victim.ContainerID).CombinedOutput()
	require.NoError(t, err, "%s", out)
	// How fast is a benchmark's figure (bench/scheduler KillToRemoval,
	// against its floor), not a bound here: beside a CPU hog it took 2.8 s.
	require.Eventually(t, func() bool { _, ok := running(t, kv, app)[victim.ID]; return !ok }, 30*time.Second, 5*time.Millisecond)
	t.Logf("killed instance out of berth_instances after %s", time.Since(killed).Round(time.Millisecond))
	insts = waitRunning(2)
	_, still := insts[victim.ID]
	require.False(t, still, "a new instance replaced the killed one")
	code, evOut, _ := cmd(t, "events", "--app", app, "--server", r.api)
	require.Equal(t, 0, code)
	require.Contains(t, evOut, "instance_replaced")
	require.Contains(t, evOut, "instance_started")
	require.Contains(t, evOut, "instance_stopped")
}

func TestDataPlaneRolloutMissingImageAndCrashLoop(t *testing.T) {
	t.Parallel()
	v1, v2 := testrig.DemoImage(t, "v1"), testrig.DemoImage(t, "v2")
	e := newEnv(t, "ro")
	kv := e.kv
	r := e.r

	dir := t.TempDir()
	apply := func(name, body string) {
		f := filepath.Join(dir, name+".yaml")
		require.NoError(t, os.WriteFile(f, []byte("name: "+name+"\nport: 8080\nresources: {memory: 32Mi}\nstop: {grace: 2s, drain: 0s}\nrouting: {hosts: ["+name+".test]}\n"+body), 0o644))
		code, out, errOut := cmd(t, "apply", "-f", f, "--server", r.api)
		require.Equal(t, 0, code, out+errOut)
	}
	versions := func(app string) map[string]int {
		out := map[string]int{}
		for _, m := range running(t, kv, app) {
			body, ok := answer("http://" + m.Address + "/")
			if !ok {
				continue // stopped since it was listed
			}
			var reply struct{ Version string }
			if json.Unmarshal([]byte(body), &reply) == nil {
				out[reply.Version]++
			}
		}
		return out
	}
	events := func(app string) string {
		_, out, _ := cmd(t, "events", "--app", app, "--server", r.api)
		return out
	}

	// A rolling update to the second tag completes and removes the old instances.
	apply("roll", "image: "+v1+"\nreplicas: 2\nupdate: {min_healthy_time: 0s}\n")
	require.Eventually(t, func() bool { return versions("roll")["v1"] == 2 }, 60*time.Second, 100*time.Millisecond)
	apply("roll", "image: "+v2+"\nreplicas: 2\nupdate: {min_healthy_time: 0s}\n")
	require.Eventually(t, func() bool {
		v := versions("roll")
		return v["v2"] == 2 && v["v1"] == 0
	}, 60*time.Second, 100*time.Millisecond, "rollout to v2: %v", versions("roll"))
	require.Eventually(t, func() bool {
		return len(testrig.BerthContainers(t, e.prefix, "berth.app=roll")) == 2
	}, 30*time.Second, 100*time.Millisecond, "old containers removed")

	// A missing image is a clear event; the other app is not disturbed.
	apply("ghost", "image: 127.0.0.1:1/berth/none:v1\nreplicas: 1\n")
	require.Eventually(t, func() bool { return strings.Contains(events("ghost"), "image_pull_failed") }, 30*time.Second, 100*time.Millisecond)
	require.Contains(t, events("ghost"), "127.0.0.1:1/berth/none:v1", "the event names the image")
	require.Equal(t, map[string]int{"v2": 2}, versions("roll"))

	// A crash-looping app trips the breaker instead of restarting forever.
	apply("crash", "image: "+v1+"\nreplicas: 1\nenv: {DEMO_MODE: crash}\nrestart: {max_attempts: 2, window: 10m, backoff_initial: 100ms, backoff_max: 1m}\n")
	require.Eventually(t, func() bool { return strings.Contains(events("crash"), "app_failed") }, 60*time.Second, 100*time.Millisecond)
	// No restart storm once the breaker is open: two changes to another
	// app wake the loop, and the cycles they run replace nothing.
	replaced := strings.Count(events("crash"), "instance_replaced")
	for _, n := range []string{"2", "1"} {
		before := cycles(t, r.api)
		code, out, errOut := cmd(t, "scale", "ghost", n, "--server", r.api)
		require.Equal(t, 0, code, out+errOut)
		require.Eventually(t, func() bool { return cycles(t, r.api) > before }, 30*time.Second, 20*time.Millisecond, "a cycle runs")
	}
	require.Equal(t, replaced, strings.Count(events("crash"), "instance_replaced"), "no restart storm once the breaker is open")
}

// cycles is how many reconcile cycles the replica serving api has finished
// as leader, from its /metrics.
func cycles(t *testing.T, api string) float64 {
	t.Helper()
	body := testrig.WaitHTTP(t, api+"/metrics", 5*time.Second)
	var sum float64
	for line := range strings.Lines(body) {
		if !strings.HasPrefix(line, "berth_scheduler_reconcile_cycles_total{") {
			continue
		}
		var v float64
		_, err := fmt.Sscan(line[strings.LastIndexByte(line, ' ')+1:], &v)
		require.NoError(t, err, line)
		sum += v
	}
	return sum
}

// answer returns the body of a 200 answer to GET url, trying for 10 s
// while the instance may still be starting; false when it never answers
// (it stopped since it was listed). Unlike testrig.WaitHTTP it does not
// fail the test, so that it may run inside require.Eventually.
func answer(url string) (string, bool) {
	client := &http.Client{Timeout: 2 * time.Second}
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) { // the poll interval
		resp, err := client.Get(url)
		if err != nil {
			continue
		}
		body, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err == nil && resp.StatusCode == http.StatusOK {
			return string(body), true
		}
	}
	return "", false
}

// stubHealth writes healthd's verdict for every running instance of app:
// healthy for instances of image version want, unhealthy otherwise, as a
// healthd probing the demo app would.
func stubHealth(t *testing.T, conn *bus.Conn, names msg.Names, kv *bus.KV, app, healthyVersion string) {
	t.Helper()
	hkv, err := conn.KV(context.Background(), names.HealthBucket())
	require.NoError(t, err)
	for _, m := range running(t, kv, app) {
		status := msg.StatusUnhealthy
		if body, ok := answer("http://" + m.Address + "/"); ok && strings.Contains(body, `"version":"`+healthyVersion+`"`) {
			status = msg.StatusHealthy
		}
		b, err := msg.Encode(&msg.Health{App: app, Instance: m.ID, Status: status, Checker: "stub", CheckedAt: time.Now()})
		require.NoError(t, err)
		_, err = hkv.Put(context.Background(), msg.InstanceKey(app, m.ID), b)
		require.NoError(t, err)
	}
}

func TestDataPlaneAutoRollbackAndAdoption(t *testing.T) {
	t.Parallel()
	v1, v2 := testrig.DemoImage(t, "v1"), testrig.DemoImage(t, "v2")
	e := newEnv(t, "ar")
	conn, names, kv := e.conn, e.names, e.kv
	a := e.r

	f := filepath.Join(t.TempDir(), "web.yaml")
	apply := func(r *replica, image string) {
		require.NoError(t, os.WriteFile(f, []byte("name: web\nport: 8080\nreplicas: 2\nimage: "+image+
			"\nresources: {memory: 32Mi}\nstop: {grace: 2s, drain: 0s}\nhealth: {path: /healthz}\nupdate: {min_healthy_time: 0s, healthy_deadline: 3s}\n"), 0o644))
		code, out, errOut := cmd(t, "apply", "-f", f, "--server", r.api)
		require.Equal(t, 0, code, out+errOut)
	}
	apply(a, v1)
	require.Eventually(t, func() bool { return len(running(t, kv, "web")) == 2 }, 60*time.Second, 100*time.Millisecond)
	stubHealth(t, conn, names, kv, "web", "v1")

	// v2 "fails its health check": the new instance never turns healthy, old ones keep serving.
	apply(a, v2)
	require.Eventually(t, func() bool {
		stubHealth(t, conn, names, kv, "web", "v1")
		_, out, _ := cmd(t, "events", "--app", "web", "--server", a.api)
		return strings.Contains(out, "rollout_rolled_back")
	}, 60*time.Second, 200*time.Millisecond)
	code, out, _ := cmd(t, "status", "web", "--server", a.api)
	require.Equal(t, 0, code)
	require.Contains(t, out, "image "+v1, "the app's spec is back on v1")
	require.Eventually(t, func() bool {
		stubHealth(t, conn, names, kv, "web", "v1")
		ms := running(t, kv, "web")
		if len(ms) != 2 {
			return false
		}
		for _, m := range ms {
			if body, ok := answer("http://" + m.Address + "/"); !ok || !strings.Contains(body, `"version":"v1"`) {
				return false
			}
		}
		return true
	}, 60*time.Second, 200*time.Millisecond, "the v2 instance is retired, two v1 instances serve")

	// A scheduler restart keeps the containers: nothing is recreated.
	before := map[string]string{}
	var oldTerm uint64
	for id, m := range running(t, kv, "web") {
		before[id] = m.ContainerID
		oldTerm = max(oldTerm, m.Term)
	}
	a.stop()
	b := startReplica(t, e.db, e.natsURL, e.prefix+"-b", "--prefix", e.prefix)
	require.Eventually(t, func() bool { return readyRole(t, b.api) == "leader" }, 10*time.Second, 20*time.Millisecond)
	// The new leader's first cycle has run (and acted, had it recreated
	// anything), and it has published every instance under its term: a
	// listing while it puts them may miss a key.
	require.Eventually(t, func() bool { return cycles(t, b.api) >= 1 }, 10*time.Second, 20*time.Millisecond)
	require.Eventually(t, func() bool {
		ms := running(t, kv, "web")
		for _, m := range ms {
			if m.Term <= oldTerm {
				return false
			}
		}
		return len(ms) == len(before)
	}, 10*time.Second, 20*time.Millisecond, "the new leader publishes every instance")
	after := map[string]string{}
	for id, m := range running(t, kv, "web") {
		after[id] = m.ContainerID
	}
	require.Equal(t, before, after, "the new leader keeps every instance and container")
}

func TestDataPlaneReplacesUnhealthy(t *testing.T) {
	t.Parallel()
	v1 := testrig.DemoImage(t, "v1")
	e := newEnv(t, "uh")
	conn, names, kv := e.conn, e.names, e.kv
	hkv, err := conn.KV(context.Background(), names.HealthBucket())
	require.NoError(t, err)
	r := e.r
	f := filepath.Join(t.TempDir(), "web.yaml")
	require.NoError(t, os.WriteFile(f, []byte("name: web\nport: 8080\nreplicas: 2\nimage: "+v1+
		"\nresources: {memory: 32Mi}\nstop: {grace: 2s, drain: 0s}\nhealth: {path: /healthz, interval: 1s, timeout: 500ms}\n"), 0o644))
	code, out, errOut := cmd(t, "apply", "-f", f, "--server", r.api)
	require.Equal(t, 0, code, out+errOut)
	var sick string
	require.Eventually(t, func() bool { return len(running(t, kv, "web")) == 2 }, 60*time.Second, 100*time.Millisecond)
	put := func(id, status string) {
		b, err := msg.Encode(&msg.Health{App: "web", Instance: id, Status: status, Checker: "stub", CheckedAt: time.Now()})
		require.NoError(t, err)
		_, err = hkv.Put(context.Background(), msg.InstanceKey("web", id), b)
		require.NoError(t, err)
	}
	for id := range running(t, kv, "web") {
		if sick == "" {
			sick = id
			put(id, msg.StatusUnhealthy)
		} else {
			put(id, msg.StatusHealthy)
		}
	}
	start := time.Now()
	require.Eventually(t, func() bool { _, ok := running(t, kv, "web")[sick]; return !ok }, 30*time.Second, 100*time.Millisecond)
	t.Logf("unhealthy instance replaced after %s (grace 5s)", time.Since(start).Round(100*time.Millisecond))
	require.GreaterOrEqual(t, time.Since(start), 4*time.Second, "not before the grace")
	require.Eventually(t, func() bool {
		_, evs, _ := cmd(t, "events", "--app", "web", "--server", r.api)
		return strings.Contains(evs, "unhealthy for")
	}, 10*time.Second, 50*time.Millisecond, "the replacement is an event with its reason")
	require.Eventually(t, func() bool { return len(running(t, kv, "web")) == 2 }, 30*time.Second, 100*time.Millisecond, "and a new one runs")
}
