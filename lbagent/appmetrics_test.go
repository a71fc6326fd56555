package main

import (
	"bufio"
	"context"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/berthhq/berth/common/msg"
	"github.com/berthhq/berth/internal/loadgen"
	"github.com/berthhq/berth/internal/testrig"
	"github.com/berthhq/berth/lbagent/internal/accesslog"
)

// scrape reads a /metrics page into its samples, by series as written
// (name{labels}); nil when the page cannot be read.
func scrape(url string) map[string]float64 {
	code, body := get(url)
	if code != 200 {
		return nil
	}
	out := map[string]float64{}
	sc := bufio.NewScanner(strings.NewReader(body))
	for sc.Scan() {
		line := sc.Text()
		if line == "" || line[0] == '#' {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		if v, err := strconv.ParseFloat(line[i+1:], 64); err == nil {
			out[line[:i]] = v
		}
	}
	return out
}

// appRequests sums app's requests over every status class.
func appRequests(samples map[string]float64, app string) float64 {
	n := 0.0
	for _, class := range []string{"1xx", "2xx", "3xx", "4xx", "5xx"} {
		n += samples[fmt.Sprintf(`berth_lbagent_requests_total{app=%q,code_class=%q}`, app, class)]
	}
	return n
}

// TestAppMetricsCountWhatLoadgenSent: requests driven through a real nginx
// by the load generator (no retries) are exported on lbagent's /metrics,
// per app: the count equals the generator's own once the access log has
// been read, the duration histogram counts them too, and an app whose only
// instance refuses connections counts a connect error per request. In both
// upstream modes: nginx's Lua balancer (auto picks it when nginx has the
// module) and nginx's own upstreams log a failed connect alike.
func TestAppMetricsCountWhatLoadgenSent(t *testing.T) {
	t.Parallel()
	for _, mode := range []string{"auto", "reload"} {
		t.Run(mode, func(t *testing.T) {
			t.Parallel()
			testAppMetrics(t, mode)
		})
	}
}

func testAppMetrics(t *testing.T, mode string) {
	testrig.NginxBin(t)
	// Every line counted needs a socket queue that holds the lines sent
	// while lbagent's reader waits for a CPU: at the kernel's default of
	// 10, a loaded machine drops some (seen: 31 of 2,019 with six test
	// runs on two cores), which lbagent warns of at start.
	if qlen, err := accesslog.QueueLimit(); err != nil || qlen < accesslog.WantQueue {
		msg := fmt.Sprintf("net.unix.max_dgram_qlen is %d (%v), below %d: nginx drops access log lines under load; sysctl -w net.unix.max_dgram_qlen=4096 (.ci/run does)", qlen, err, accesslog.WantQueue)
		if testrig.InCI() {
			t.Fatal(msg)
		}
		t.Skip(msg)
	}
	cl := newCluster(t)
	dir := t.TempDir()
	require.NoError(t, os.Chmod(dir, 0o755)) // nginx workers run unprivileged: they must reach the socket
	require.NoError(t, os.Chmod(filepath.Dir(dir), 0o755))
	httpAddr := fmt.Sprintf("127.0.0.1:%d", testrig.FreePort(t))
	metricsURL := fmt.Sprintf("http://127.0.0.1:%d/metrics", testrig.FreePort(t))
	sock := filepath.Join(dir, "access.sock")
	cancel, done := startLBAgent(t, "--nats-url", cl.url, "--node", "lb-metrics", "--manage-nginx",
		"--access-log-socket", sock, "--metrics-window", "200ms",
		"--nginx-conf", filepath.Join(dir, "conf", "nginx.conf"), "--nginx-prefix", dir, "--state-dir", filepath.Join(dir, "state"),
		"--listen-http", httpAddr, "--listen-https", fmt.Sprintf("127.0.0.1:%d", testrig.FreePort(t)),
		"--status-listen", fmt.Sprintf("127.0.0.1:%d", testrig.FreePort(t)), "--metrics-listen", strings.TrimSuffix(strings.TrimPrefix(metricsURL, "http://"), "/metrics"),
		"--templates", filepath.Join(dir, "none"), "--debounce", "10ms:100ms", "--upstream-mode", mode)

	// Every line nginx logs for the app reaches lbagent: the socket listens
	// before the app exists, so no request is served while nobody reads.
	require.Eventually(t, func() bool { _, err := os.Stat(sock); return err == nil }, 15*time.Second, 10*time.Millisecond)
	cl.app("demo")
	cl.instance("demo", "a", testrig.Backend(t, "A"), msg.StateRunning)
	warmup := 0.0 // requests routed to demo: a 503 before its instance, then one 200
	require.Eventually(t, func() bool {
		code, _ := get("http://" + httpAddr + "/")
		if code != 0 && code != 404 { // 404: the default server, before demo is routed
			warmup++
		}
		return code == 200
	}, 15*time.Second, 20*time.Millisecond, "nginx serves demo")
	// The app's series exist from the state, at zero, before its requests.
	waitSamples(t, metricsURL, func(s map[string]float64) bool { return appRequests(s, "demo") == warmup })

	run := loadgen.Start(context.Background(), loadgen.Config{URL: "http://" + httpAddr + "/", Workers: 4, Rate: 400, NoRetry: true})
	require.Eventually(t, func() bool { return run.Snapshot().Requests >= 2000 }, 60*time.Second, 10*time.Millisecond)
	res := run.Stop()
	t.Log(res)
	want := warmup + float64(res.Requests)
	var last map[string]float64
	if !waitSamplesFor(metricsURL, 10*time.Second, func(s map[string]float64) bool { last = s; return appRequests(s, "demo") == want }) {
		got := appRequests(last, "demo")
		t.Logf("exported %v requests, loadgen sent %v (+%v warm-up)", got, res.Requests, warmup)
		require.LessOrEqual(t, math.Abs(got-want), want/100, "within 1%%")
	}
	require.InDelta(t, float64(res.OK)+1, last[`berth_lbagent_requests_total{app="demo",code_class="2xx"}`], want/100, "every 2xx, the warm-up's one included")
	require.Equal(t, appRequests(last, "demo"), last[`berth_lbagent_request_duration_seconds_count{app="demo"}`], "every request timed")
	require.Zero(t, last[`berth_lbagent_upstream_connect_errors_total{app="demo"}`])

	// An instance that refuses connections: one connect error per request
	// (the first refused, then "no live upstreams" while it is marked down).
	cl.appAt("dead", "/dead")
	cl.instance("dead", "a", fmt.Sprintf("127.0.0.1:%d", testrig.FreePort(t)), msg.StateRunning)
	waitSamples(t, metricsURL, func(s map[string]float64) bool {
		_, ok := s[`berth_lbagent_upstream_connect_errors_total{app="dead"}`]
		return ok
	})
	refused, noBackend := 0.0, 0.0 // 502s; 503s while dead had no instance yet
	require.Eventually(t, func() bool {
		switch code, _ := get("http://" + httpAddr + "/dead/"); code {
		case 502:
			refused++
		case 503:
			noBackend++
		}
		return refused >= 5
	}, 15*time.Second, 20*time.Millisecond, "nginx answers 502 for dead")
	waitSamples(t, metricsURL, func(s map[string]float64) bool {
		return s[`berth_lbagent_upstream_connect_errors_total{app="dead"}`] == refused && s[`berth_lbagent_requests_total{app="dead",code_class="5xx"}`] == refused+noBackend
	})

	// A deleted app's series go.
	require.NoError(t, cl.kv[cl.names.AppsBucket()].Delete(context.Background(), "dead"))
	waitSamples(t, metricsURL, func(s map[string]float64) bool {
		for k := range s {
			if strings.Contains(k, `app="dead"`) {
				return false
			}
		}
		return appRequests(s, "demo") > 0
	})
	cancel()
	require.NoError(t, <-done)
}

// waitSamples waits up to 15 s for the scraped samples to satisfy ok.
func waitSamples(t *testing.T, url string, ok func(map[string]float64) bool) {
	t.Helper()
	require.True(t, waitSamplesFor(url, 15*time.Second, ok), "metrics at %s never satisfied the condition", url)
}

func waitSamplesFor(url string, d time.Duration, ok func(map[string]float64) bool) bool {
	deadline := time.Now().Add(d)
	for {
		if s := scrape(url); s != nil && ok(s) {
			return true
		}
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(20 * time.Millisecond)
	}
}
