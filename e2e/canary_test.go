package e2e

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/berthhq/berth/common/msg"
	"github.com/berthhq/berth/internal/loadgen"
	"github.com/berthhq/berth/internal/testrig"
)

// TestCanary shifts a canary by weight, 0 → 10 → 50 → 100 %, each step a
// `scheduler apply` of the stable app's split, under a steady load, in
// both upstream modes with default flags: in dynamic mode from a client
// that never retries; in reload mode, where a reload closes idle
// keep-alive connections and no drain exists without Lua, from one that
// resends only a request a closed keep-alive connection lost, as browsers
// do (stack.strict).
// Every request is answered; at each weight 10,000 requests split within
// ±3 % of it; and a tester's header reaches the canary whatever the
// weight. In dynamic mode the Lua router routes both apps: the canary's
// header rule, the split and every weight change reload nothing.
func TestCanary(t *testing.T) {
	for _, mode := range []string{"dynamic", "reload"} {
		t.Run(mode, func(t *testing.T) { testCanary(t, mode) })
	}
}

func testCanary(t *testing.T, mode string) {
	v1, v2 := testrig.DemoImage(t, "v1"), testrig.DemoImage(t, "v2")
	s := newStackMode(t, "", mode)
	s.startScheduler("sched-a")
	s.leader(10 * time.Second)
	s.startHealthd("hc1")
	s.startLBAgent()
	// demo owns its host, and lets the canary's header rule take its /.
	const share = "  share_with: [{app: demo-canary, paths: [/]}]\n"
	s.apply(demoSpec(t, v1, 2, share))
	s.waitServing("demo", demoHost, 2, "v1", 60*time.Second)
	reloads := s.nginxReloads()

	// The canary: v2 under its own name, on demo's host for testers only.
	canary := strings.Replace(demoSpec(t, v2, 2, "  rules: [{path: /, headers: {X-Canary: \"1\"}}]\n"), "name: demo\n", "name: demo-canary\n", 1)
	require.Contains(t, canary, "name: demo-canary")
	s.apply(canary)
	require.Eventually(t, func() bool {
		ins := s.instances("demo-canary")
		healthy := 0
		for _, in := range ins {
			if in.State == msg.StateRunning && in.Health == msg.StatusHealthy {
				healthy++
			}
		}
		return healthy == 2
	}, 90*time.Second, 200*time.Millisecond, "the canary's instances are healthy")

	load := s.load(demoHost)
	measure := func(n int64) loadgen.Result {
		t.Helper()
		var sum loadgen.Result
		sum.Versions = map[string]int64{}
		for sum.Requests < n {
			run := loadgen.Start(context.Background(), loadgen.Config{URL: "http://" + s.httpAddr + "/", Host: demoHost, Workers: 4, NoRetry: s.strict()})
			time.Sleep(time.Second)
			res := run.Stop()
			require.NoError(t, loadgen.Check(res))
			sum.Requests += res.Requests
			sum.OK += res.OK
			for v, c := range res.Versions {
				sum.Versions[v] += c
			}
		}
		return sum
	}
	for _, weight := range []int{0, 10, 50, 100} {
		s.apply(demoSpec(t, v1, 2, share+fmt.Sprintf("  rules: [{path: /, split: [{app: demo-canary, weight: %d}]}]\n", weight)))
		// The new split is served once a burst shows the canary's share
		// (or, at 0, once the stable app has its rule).
		require.Eventually(t, func() bool {
			res := measure(500)
			share := float64(res.Versions["v2"]) / float64(res.OK) * 100
			return share > float64(weight)-10 && share < float64(weight)+10
		}, 60*time.Second, 100*time.Millisecond, "weight %d served", weight)
		res := measure(10_000)
		share := float64(res.Versions["v2"]) / float64(res.OK) * 100
		t.Logf("weight %3d %%: canary %.2f %% of %d requests (%v)", weight, share, res.OK, res.Versions)
		require.InDelta(t, float64(weight), share, 3, "weight %d", weight)
	}
	if mode == "dynamic" {
		// The router routes both apps: the canary, its header rule, the
		// split and the weights 0 → 10 → 50 → 100 reloaded nothing.
		require.Equal(t, reloads, s.nginxReloads(), "a route change reloads nginx")
	}
	res := load.Stop()
	t.Logf("steady load through every shift: %s", res)
	require.NoError(t, loadgen.Check(res), "no request failed while the weights moved")

	// A tester's header reaches the canary whatever the weight: back to 0.
	s.apply(demoSpec(t, v1, 2, share+"  rules: [{path: /, split: [{app: demo-canary, weight: 0}]}]\n"))
	require.Eventually(t, func() bool {
		return measure(200).Versions["v2"] == 0
	}, 60*time.Second, 100*time.Millisecond)
	require.Eventually(t, func() bool {
		code, body := s.getWithHeader(demoHost, "X-Canary", "1")
		return code == 200 && strings.Contains(body, `"version":"v2"`)
	}, 30*time.Second, 100*time.Millisecond, "the header routes to the canary")
}

// getWithHeader sends one GET for host with one request header, and
// returns the status and the body.
func (s *stack) getWithHeader(host, name, value string) (int, string) {
	req, _ := http.NewRequest(http.MethodGet, "http://"+s.httpAddr+"/", nil)
	req.Host = host
	req.Header.Set(name, value)
	resp, err := (&http.Client{Timeout: 2 * time.Second}).Do(req)
	if err != nil {
		return 0, err.Error()
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
	return resp.StatusCode, string(b)
}
