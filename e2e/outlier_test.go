package e2e

import (
	"bufio"
	"context"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/berthhq/berth/internal/loadgen"
	"github.com/berthhq/berth/internal/testrig"
)

// outlierInterval is the test app's health.outlier.interval: the failing
// instance must be ejected within it.
const outlierInterval = 5 * time.Second

// TestOutlierEjection runs Berth whole in dynamic mode with three demo
// instances under health.outlier, and makes one of them answer 500 to 40 %
// of real requests while its /healthz stays 200. lbagent ejects it from its
// nginx within one interval, with no reload; the other two take the
// traffic; a client that never retries sees its error rate fall under 1 %;
// the ejection shows in scheduler status, its events and on lbagent's
// /metrics; and the instance comes back by itself once its ejection ends.
func TestOutlierEjection(t *testing.T) {
	v1 := testrig.DemoImage(t, "v1")
	s := newStackMode(t, "", "dynamic")
	s.startScheduler("sched-a")
	s.leader(10 * time.Second)
	s.startHealthd("hc1")
	// nginx workers run unprivileged: they must reach the access log socket.
	require.NoError(t, os.Chmod(s.dir, 0o755))
	require.NoError(t, os.Chmod(filepath.Dir(s.dir), 0o755))
	lb := s.startLBAgent("--access-log-socket", filepath.Join(s.dir, "access.sock"))
	const outlier = "  outlier: {consecutive_5xx: 5, error_percent: 30, min_requests: 20, interval: 5s, base_ejection: 20s, max_ejected_percent: 50}\n"
	spec := strings.Replace(demoSpec(t, v1, 3, ""), "  unhealthy_threshold: 2\n", "  unhealthy_threshold: 2\n"+outlier, 1)
	require.Contains(t, spec, "outlier:")
	s.apply(spec)
	ins := s.waitServing("demo", demoHost, 3, "v1", 90*time.Second)
	bad := ins[0]
	reloads := s.nginxReloads()

	// One instance fails 40 % of GET / from now on; /healthz stays 200.
	post(t, "http://"+bad.Address+"/admin/fail?percent=40")
	start := time.Now()
	before := loadgen.Start(context.Background(), loadgen.Config{URL: "http://" + s.httpAddr + "/", Host: demoHost, Workers: 4, Rate: 200, NoRetry: true})
	var app struct {
		Ejected []struct{ Node, Instance, Reason string } `json:"ejected"`
	}
	require.Eventually(t, func() bool {
		app.Ejected = nil
		return getJSON(s.api()+"/v1/apps/demo", &app) == nil && len(app.Ejected) > 0
	}, 2*outlierInterval, 50*time.Millisecond, "the failing instance is ejected")
	took := time.Since(start)
	resBefore := before.Stop()
	t.Logf("ejected after %s: %+v", took.Round(10*time.Millisecond), app.Ejected)
	require.Less(t, took, outlierInterval, "ejected within one interval")
	require.Len(t, app.Ejected, 1, "max_ejected_percent 50 of 3: one at most")
	require.Equal(t, bad.ID, app.Ejected[0].Instance)
	require.Equal(t, lbNode, app.Ejected[0].Node)

	// A client that never retries, after the ejection.
	after := loadgen.Start(context.Background(), loadgen.Config{URL: "http://" + s.httpAddr + "/", Host: demoHost, Workers: 4, Rate: 200, NoRetry: true})
	for range 2 {
		served, _, _, _ := s.served(demoHost, 3)
		require.False(t, served[bad.ID], "the ejected instance serves nothing")
		require.Len(t, served, 2, "the other two take the traffic")
	}
	time.Sleep(5 * time.Second) // the measurement's length, not a wait for a condition
	resAfter := after.Stop()
	rate := func(r loadgen.Result) float64 { return 100 * float64(r.Failed()) / float64(max(r.Requests, 1)) }
	t.Logf("error rate before ejection: %.2f %% (%s)", rate(resBefore), resBefore)
	t.Logf("error rate after ejection:  %.2f %% (%s)", rate(resAfter), resAfter)
	require.Positive(t, resBefore.Failed(), "the instance failed real traffic before its ejection")
	require.Greater(t, resAfter.Requests, int64(500))
	require.Less(t, rate(resAfter), 1.0, "under 1 %% errors after the ejection")
	require.Equal(t, reloads, s.nginxReloads(), "an ejection is a push, not a reload")

	require.Eventually(t, func() bool {
		return strings.Contains(s.cli("events", "--app", "demo"), "instance "+bad.ID+" ejected from lbagent "+lbNode+"'s nginx until ")
	}, 10*time.Second, 100*time.Millisecond, "the leader records the ejection as an event")
	status := s.cli("status", "demo")
	require.Contains(t, status, "ejected by lbagent "+lbNode+": instance "+bad.ID)
	m := lbMetrics(t, s.lbMetrics)
	require.Equal(t, "1", m[`berth_lbagent_outlier_ejections_total{app="demo"}`])
	require.Equal(t, "1", m[`berth_lbagent_outlier_ejected{app="demo"}`])

	// It recovers; its ejection ends (base_ejection 20s × 1) and it is back.
	post(t, "http://"+bad.Address+"/admin/fail?percent=0")
	require.Eventually(t, func() bool {
		served, _, failures, _ := s.served(demoHost, 3)
		return served[bad.ID] && failures == 0
	}, 40*time.Second, 200*time.Millisecond, "back in rotation once its ejection ends")
	require.Eventually(t, func() bool {
		return lbMetrics(t, s.lbMetrics)[`berth_lbagent_outlier_ejected{app="demo"}`] == "0"
	}, 10*time.Second, 100*time.Millisecond)
	log, err := os.ReadFile(lb.log)
	require.NoError(t, err)
	require.Contains(t, string(log), "instance ejected from this nginx's rotation for failing real traffic")
	require.Contains(t, string(log), "ejected instance back in this nginx's rotation")
	require.Equal(t, reloads, s.nginxReloads(), "a return is a push, not a reload")
	require.Eventually(t, func() bool {
		return strings.Contains(s.cli("events", "--app", "demo"), "instance "+bad.ID+" back in lbagent "+lbNode+"'s nginx after its ejection 1")
	}, 10*time.Second, 100*time.Millisecond, "and its return")
}

// post sends an empty POST and requires a 2xx.
func post(t *testing.T, url string) {
	t.Helper()
	resp, err := (&http.Client{Timeout: 2 * time.Second}).Post(url, "text/plain", nil)
	require.NoError(t, err)
	resp.Body.Close()
	require.Equal(t, 2, resp.StatusCode/100, "POST %s: %d", url, resp.StatusCode)
}

// lbMetrics reads lbagent's /metrics as series → value.
func lbMetrics(t *testing.T, addr string) map[string]string {
	t.Helper()
	out := map[string]string{}
	resp, err := http.Get("http://" + addr + "/metrics")
	if err != nil {
		return out
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		line := sc.Text()
		if i := strings.LastIndexByte(line, ' '); i > 0 && !strings.HasPrefix(line, "#") {
			out[line[:i]] = line[i+1:]
		}
	}
	return out
}
