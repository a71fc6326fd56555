package main

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/berthhq/berth/common/bus"
	"github.com/berthhq/berth/common/msg"
	"github.com/berthhq/berth/common/spec"
	"github.com/berthhq/berth/internal/testrig"
	"github.com/stretchr/testify/require"
	"go.uber.org/zap/zaptest"
)

func TestCheckConfigExitCodes(t *testing.T) {
	t.Parallel()
	devnull, err := os.OpenFile(os.DevNull, os.O_WRONLY, 0)
	require.NoError(t, err)
	defer devnull.Close()
	require.Equal(t, 0, run([]string{"--check-config"}, devnull, devnull))
	require.Equal(t, 1, run([]string{"--check-config", "--max-concurrency", "0"}, devnull, devnull))
	require.Equal(t, 0, run([]string{"--check-config", "--nats-url", "nats://n1:4222,nats://n2:4222,nats://n3:4222", "--nats-replicas", "3"}, devnull, devnull))
	require.Equal(t, 1, run([]string{"--check-config", "--nats-replicas", "4"}, devnull, devnull))
	require.Equal(t, 1, run([]string{"--check-config", "--nats-url", "nats://n1:4222,n1:4222"}, devnull, devnull))
	require.Equal(t, 2, run([]string{"--bogus"}, devnull, devnull))
}

func TestProbeMode(t *testing.T) {
	t.Parallel()
	devnull, _ := os.OpenFile(os.DevNull, os.O_WRONLY, 0)
	defer devnull.Close()
	ok := testrig.Backend(t, "ok")
	require.Equal(t, 0, run([]string{"--probe", ok, "--probe-path", "/"}, devnull, devnull))
	require.Equal(t, 0, run([]string{"--probe", ok, "--probe-type", "tcp"}, devnull, devnull))
	require.Equal(t, 1, run([]string{"--probe", "127.0.0.1:1", "--probe-timeout", "300ms"}, devnull, devnull))
}

type cluster struct {
	t      *testing.T
	url    string
	names  msg.Names
	conn   *bus.Conn
	apps   *bus.KV
	insts  *bus.KV
	health *bus.KV
}

func newCluster(t *testing.T) *cluster {
	url := testrig.NATS(t)
	conn, err := bus.Connect(context.Background(), bus.Options{URL: url}, zaptest.NewLogger(t))
	require.NoError(t, err)
	t.Cleanup(conn.Close)
	names, _ := msg.NewNames("berth")
	ctx := context.Background()
	require.NoError(t, conn.EnsureBuckets(ctx, bus.ContractBuckets(names)))
	c := &cluster{t: t, url: url, names: names, conn: conn}
	c.apps, _ = conn.KV(ctx, names.AppsBucket())
	c.insts, _ = conn.KV(ctx, names.InstancesBucket())
	c.health, _ = conn.KV(ctx, names.HealthBucket())
	return c
}

func (c *cluster) put(kv *bus.KV, key string, m msg.Message) {
	b, err := msg.Encode(m)
	require.NoError(c.t, err)
	_, err = kv.Put(context.Background(), key, b)
	require.NoError(c.t, err)
}

func (c *cluster) app(name string) {
	yes := true
	st, _ := spec.ParseStatusRanges("200-399")
	c.put(c.apps, name, &msg.App{Name: name, Generation: 1, Term: 1, Port: 8080, UpdatedAt: time.Now(),
		Routing: spec.Routing{Paths: []string{"/"}}, LB: spec.LB{Method: spec.LBRoundRobin, ConnectTimeout: spec.Duration(time.Second), ReadTimeout: spec.Duration(time.Second)},
		Health: &spec.Health{Type: spec.HealthHTTP, Enabled: &yes, Port: 8080, Path: "/healthz", Method: "GET", ExpectedStatus: st,
			Interval: spec.Duration(200 * time.Millisecond), Timeout: spec.Duration(100 * time.Millisecond), HealthyThreshold: 1, UnhealthyThreshold: 2}})
}

func (c *cluster) instance(app, id, addr, state string) {
	c.put(c.insts, msg.InstanceKey(app, id), &msg.Instance{App: app, ID: id, Generation: 1, Term: 1, Address: addr, State: state, Weight: 1, UpdatedAt: time.Now()})
}

// healthOf returns the health value of key, or nil.
func (c *cluster) healthOf(key string) *msg.Health {
	e, err := c.health.Get(context.Background(), key)
	if err != nil {
		return nil
	}
	h, err := msg.DecodeAs[*msg.Health](e.Value)
	require.NoError(c.t, err)
	return h
}

func startHealthd(t *testing.T, c *cluster, id string) context.CancelFunc {
	return startHealthdMode(t, c, id, false)
}

// startHealthdMode starts a checker with flags added to the test's own;
// with crash, stopping it says no goodbye.
func startHealthdMode(t *testing.T, c *cluster, id string, crash bool, flags ...string) context.CancelFunc {
	t.Helper()
	devnull, _ := os.OpenFile(os.DevNull, os.O_WRONLY, 0)
	t.Cleanup(func() { devnull.Close() })
	cl, _, exited := parse(append([]string{"--nats-url", c.url, "--id", id, "--metrics-listen", ""}, flags...), devnull, devnull)
	require.False(t, exited)
	require.NoError(t, cl.check())
	cl.crash = crash
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- serve(ctx, cl, zaptest.NewLogger(t)) }()
	var once sync.Once
	stop := func() {
		once.Do(func() {
			cancel()
			require.NoError(t, <-done)
		})
	}
	t.Cleanup(stop)
	return stop
}

func healthServer(t *testing.T, code *int) string {
	var mu sync.Mutex
	s := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		mu.Lock()
		defer mu.Unlock()
		w.WriteHeader(*code)
	}))
	t.Cleanup(s.Close)
	return strings.TrimPrefix(s.URL, "http://")
}

func TestHealthReachesNATS(t *testing.T) {
	t.Parallel()
	c := newCluster(t)
	changes := make(chan *msg.HealthChange, 100)
	sub, err := c.conn.Subscribe(c.names.AllHealth(), bus.Decoded(msg.DecodeAs[*msg.HealthChange],
		func(_ string, m *msg.HealthChange) { changes <- m }, func(string, error) {}))
	require.NoError(t, err)
	defer func() { _ = sub.Drain() }()

	good, bad := 200, 503
	c.app("web")
	c.instance("web", "good", healthServer(t, &good), msg.StateRunning)
	c.instance("web", "bad", healthServer(t, &bad), msg.StateStarting)
	c.instance("web", "idle", "127.0.0.1:1", msg.StateStopped) // not probed
	startHealthd(t, c, "hc-a")

	require.Eventually(t, func() bool {
		g, b := c.healthOf("web.good"), c.healthOf("web.bad")
		return g != nil && g.Status == msg.StatusHealthy && b != nil && b.Status == msg.StatusUnhealthy
	}, 10*time.Second, 20*time.Millisecond)
	b := c.healthOf("web.bad")
	require.Equal(t, msg.FailureHTTPStatus, b.Failure)
	require.GreaterOrEqual(t, b.ConsecutiveFailures, 2)
	require.Equal(t, "hc-a", b.Checker)
	require.Equal(t, uint64(1), b.InstanceTerm)
	require.Nil(t, c.healthOf("web.idle"), "a stopped instance is not probed")

	seen := map[string]string{}
	deadline := time.After(5 * time.Second)
	for len(seen) < 2 {
		select {
		case m := <-changes:
			seen[m.Instance] = m.From + ">" + m.To
		case <-deadline:
			t.Fatalf("transitions seen: %v", seen)
		}
	}
	require.Equal(t, map[string]string{"good": "unknown>healthy", "bad": "unknown>unhealthy"}, seen)

	// An instance that stops being probed has its health key deleted.
	c.instance("web", "bad", "127.0.0.1:1", msg.StateStopped)
	require.Eventually(t, func() bool { return c.healthOf("web.bad") == nil }, 10*time.Second, 20*time.Millisecond)
}

// TestLeftoverHealthIsSwept: health left in the bucket for an instance
// that no longer exists (its checker died before deleting it, or a copy
// was stashed there) is deleted by the checker that owns its shard, two
// refreshes later; the health of a probed instance stays.
func TestLeftoverHealthIsSwept(t *testing.T) {
	t.Parallel()
	c := newCluster(t)
	good := 200
	c.app("web")
	c.instance("web", "good", healthServer(t, &good), msg.StateRunning)
	c.put(c.health, "web.ghost", &msg.Health{App: "web", Instance: "ghost", Status: msg.StatusHealthy, Checker: "hc-dead", Generation: 1, CheckedAt: time.Now()})
	startHealthdMode(t, c, "hc-a", false, "--refresh", "1s")
	require.Eventually(t, func() bool { h := c.healthOf("web.good"); return h != nil && h.Status == msg.StatusHealthy }, 10*time.Second, 20*time.Millisecond)
	require.Eventually(t, func() bool { return c.healthOf("web.ghost") == nil }, 10*time.Second, 20*time.Millisecond)
	require.NotNil(t, c.healthOf("web.good"))
}

func TestTwoCheckersShareAndTakeOver(t *testing.T) {
	t.Parallel()
	c := newCluster(t)
	code := 200
	addr := healthServer(t, &code)
	c.app("web")
	const n = 30
	for i := range n {
		c.instance("web", fmt.Sprintf("i%d", i), addr, msg.StateRunning)
	}
	startHealthd(t, c, "hc-a")
	stopB := startHealthdMode(t, c, "hc-b", true)

	owners := func() map[string]int {
		out := map[string]int{}
		for i := range n {
			if h := c.healthOf(fmt.Sprintf("web.i%d", i)); h != nil {
				out[h.Checker]++
			}
		}
		return out
	}
	// Both share the targets; each target's health comes from one checker.
	require.Eventually(t, func() bool {
		o := owners()
		return o["hc-a"] > 0 && o["hc-b"] > 0 && o["hc-a"]+o["hc-b"] == n
	}, 15*time.Second, 100*time.Millisecond, "owners: %v", owners())

	// hc-b dies without a goodbye; hc-a takes over its targets within the checkers TTL.
	stopB()
	start := time.Now()
	require.Eventually(t, func() bool {
		// hc-a writes each target it takes over on its first probe of it.
		for i := range n {
			if h := c.healthOf(fmt.Sprintf("web.i%d", i)); h == nil || h.Checker != "hc-a" {
				return false
			}
		}
		return true
	}, msg.CheckerTTL+10*time.Second, 200*time.Millisecond, "owners: %v", owners())
	require.Less(t, time.Since(start), msg.CheckerTTL, "within the TTL")
	t.Logf("takeover after a crash: %s (checkers TTL %s)", time.Since(start).Round(100*time.Millisecond), msg.CheckerTTL)
}

func TestCleanStopHandsOverAtOnce(t *testing.T) {
	t.Parallel()
	c := newCluster(t)
	code := 200
	addr := healthServer(t, &code)
	c.app("web")
	const n = 20
	for i := range n {
		c.instance("web", fmt.Sprintf("i%d", i), addr, msg.StateRunning)
	}
	startHealthd(t, c, "hc-a")
	stopB := startHealthd(t, c, "hc-b")
	allBy := func(id string) bool {
		for i := range n {
			if h := c.healthOf(fmt.Sprintf("web.i%d", i)); h == nil || h.Checker != id {
				return false
			}
		}
		return true
	}
	require.Eventually(t, func() bool { return !allBy("hc-a") && c.healthOf("web.i0") != nil }, 15*time.Second, 50*time.Millisecond)
	stopB()
	start := time.Now()
	require.Eventually(t, func() bool { return allBy("hc-a") }, 5*time.Second, 20*time.Millisecond)
	t.Logf("takeover after a clean stop: %s", time.Since(start).Round(10*time.Millisecond))
}

func TestSurvivesNATSReset(t *testing.T) {
	t.Parallel()
	// A NATS server on a fixed port, so a new one can take its place.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	port := ln.Addr().(*net.TCPAddr).Port
	ln.Close()
	start := func() *bus.EmbeddedServer {
		s, err := bus.Embedded(bus.EmbeddedOptions{Port: port, StoreDir: t.TempDir()}, zaptest.NewLogger(t))
		require.NoError(t, err)
		return s
	}
	first := start()
	c := &cluster{t: t, url: first.URL()}
	conn, err := bus.Connect(context.Background(), bus.Options{URL: c.url, ReconnectWait: 20 * time.Millisecond, ReconnectMax: 200 * time.Millisecond}, zaptest.NewLogger(t))
	require.NoError(t, err)
	t.Cleanup(conn.Close)
	c.conn, c.names = conn, func() msg.Names { n, _ := msg.NewNames("berth"); return n }()
	open := func() {
		ctx := context.Background()
		require.NoError(t, conn.EnsureBuckets(ctx, bus.ContractBuckets(c.names)))
		c.apps, _ = conn.KV(ctx, c.names.AppsBucket())
		c.insts, _ = conn.KV(ctx, c.names.InstancesBucket())
		c.health, _ = conn.KV(ctx, c.names.HealthBucket())
	}
	open()
	ok := 200
	addr := healthServer(t, &ok)
	c.app("web")
	c.instance("web", "a", addr, msg.StateRunning)
	startHealthd(t, c, "hc-reset")
	require.Eventually(t, func() bool { h := c.healthOf("web.a"); return h != nil && h.Status == msg.StatusHealthy }, 10*time.Second, 20*time.Millisecond)

	// The server comes back empty: no buckets, no data.
	first.Shutdown()
	second := start()
	t.Cleanup(second.Shutdown)
	require.Eventually(t, conn.Connected, 10*time.Second, 20*time.Millisecond)
	// healthd recreates the buckets; the scheduler republishes its state, as it does on reconnect.
	require.Eventually(t, func() bool { _, err := conn.KV(context.Background(), c.names.HealthBucket()); return err == nil }, 10*time.Second, 20*time.Millisecond)
	open()
	c.app("web")
	c.instance("web", "a", addr, msg.StateRunning)
	require.Eventually(t, func() bool { h := c.healthOf("web.a"); return h != nil && h.Status == msg.StatusHealthy }, 15*time.Second, 50*time.Millisecond,
		"health flows again after a NATS reset")
}

// TestSlowInstanceGoesUnhealthyWithItsHistory: through the whole daemon,
// an instance that answers 200 later than its app's max_response_time
// turns unhealthy with failure slow, and its health value carries the
// history of its slow answers and their count.
func TestSlowInstanceGoesUnhealthyWithItsHistory(t *testing.T) {
	t.Parallel()
	c := newCluster(t)
	yes := true
	st, _ := spec.ParseStatusRanges("200-399")
	c.put(c.apps, "slow", &msg.App{Name: "slow", Generation: 1, Term: 1, Port: 8080, UpdatedAt: time.Now(),
		Routing: spec.Routing{Paths: []string{"/"}}, LB: spec.LB{Method: spec.LBRoundRobin, ConnectTimeout: spec.Duration(time.Second), ReadTimeout: spec.Duration(time.Second)},
		Health: &spec.Health{Type: spec.HealthHTTP, Enabled: &yes, Port: 8080, Path: "/healthz", Method: "GET", ExpectedStatus: st,
			Interval: spec.Duration(300 * time.Millisecond), Timeout: spec.Duration(250 * time.Millisecond), MaxResponseTime: spec.Duration(20 * time.Millisecond),
			HealthyThreshold: 1, UnhealthyThreshold: 2}})
	s := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		time.Sleep(50 * time.Millisecond) // the instance's deliberate slowness
		w.WriteHeader(http.StatusOK)
	}))
	t.Cleanup(s.Close)
	c.instance("slow", "a1", strings.TrimPrefix(s.URL, "http://"), msg.StateRunning)
	startHealthd(t, c, "hc-a")

	require.Eventually(t, func() bool {
		h := c.healthOf("slow.a1")
		return h != nil && h.Status == msg.StatusUnhealthy && h.FailureCounts[msg.FailureSlow] >= 2
	}, 10*time.Second, 20*time.Millisecond)
	h := c.healthOf("slow.a1")
	require.Equal(t, msg.FailureSlow, h.Failure)
	require.Regexp(t, `^slow: answered in \d+ms, max_response_time 20ms$`, h.Message)
	require.NotEmpty(t, h.History)
	require.Equal(t, msg.FailureSlow, h.History[0].Failure, "newest first")
	require.GreaterOrEqual(t, h.History[0].LatencyMS, 50.0)
	require.Equal(t, h.Probes, int64(len(h.History)), "every probe since the checker took it is in the history (fewer than 20)")
	require.False(t, h.HistorySince.IsZero())
}
