package dynamic

import (
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/berthhq/berth/internal/testrig"
)

// routerRig is a luaRig with the router of --dynamic-routes on a listener
// of its own, as lbagent renders it in the default server (the "router"
// template: its variables and header filter).
type routerRig struct {
	*luaRig
	Router string
}

func newRouterRig(t testing.TB, apps ...rigApp) *routerRig {
	t.Helper()
	r := &routerRig{luaRig: newLuaRig(t, apps...), Router: fmt.Sprintf("127.0.0.1:%d", testrig.FreePort(t))}
	conf, err := os.ReadFile(r.nginx.Conf)
	require.NoError(t, err)
	router := fmt.Sprintf(`    upstream berth_routed {
        server 0.0.0.1:1;
        balancer_by_lua_block { require("berth.dynamic").balance_routed() }
        keepalive 64;
    }
    server {
        listen %s default_server;
        server_name _;
        set $berth_app "";
        set $berth_closing "";
        location / {
            set $berth_tries 0;
            set $berth_hash_key "";
            access_by_lua_block { require("berth.dynamic").route() }
            header_filter_by_lua_block { require("berth.dynamic").headers() }
            log_by_lua_block { require("berth.dynamic").log(ngx.var.berth_app) }
            proxy_pass http://berth_routed;
            proxy_connect_timeout 75s;
            proxy_read_timeout 24h;
            proxy_next_upstream_tries 0;
        }
    }
    server {
        listen %s;`, r.Router, r.Status)
	r.nginx.WriteConfig(strings.Replace(string(conf), "    server {\n        listen "+r.Status+";", router, 1))
	r.Start()
	return r
}

// get sends GET path with Host host to the router.
func (r *routerRig) get(host, path string) (int, string) {
	r.t.Helper()
	req, err := http.NewRequest(http.MethodGet, "http://"+r.Router+path, nil)
	require.NoError(r.t, err)
	req.Host = host
	resp, err := r.client.Do(req)
	require.NoError(r.t, err)
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	require.NoError(r.t, err)
	return resp.StatusCode, string(b)
}

type routedSet struct {
	Method      string        `json:"method"`
	Servers     []rigServer   `json:"servers"`
	Routes      []routedRoute `json:"routes"`
	ReadTimeout float64       `json:"read_timeout,omitempty"`
	Tries       int           `json:"tries,omitempty"`
}

type routedRoute struct {
	Host     string `json:"host"`
	Location string `json:"location"`
}

func routed(addr string, routes ...string) *routedSet {
	s := &routedSet{Method: "round_robin", Servers: []rigServer{{Address: addr, Weight: 1}}, Routes: []routedRoute{}}
	for _, r := range routes {
		host, loc, _ := strings.Cut(r, " ")
		s.Routes = append(s.Routes, routedRoute{Host: host, Location: loc})
	}
	return s
}

func (r *routerRig) push(version int, full bool, apps map[string]*routedSet) (int, map[string]any) {
	r.t.Helper()
	return r.PushRaw(mustJSON(r.t, map[string]any{"version": version, "full": full, "apps": apps}))
}

// TestLuaRouter: the router matches as nginx's server blocks and locations
// would (a host with routes alone, any other host in the default server's,
// exact before the longest prefix), follows partial and full pushes, and
// refuses a batch that routes one location to two apps, changing nothing.
func TestLuaRouter(t *testing.T) {
	t.Parallel()
	a, b, c := newBackend(t, "a"), newBackend(t, "b"), newBackend(t, "c")
	r := newRouterRig(t)
	status, out := r.push(1, true, map[string]*routedSet{
		"a": routed(a.Addr, "a.test /", " = /x", " /d/"),
		"b": routed(b.Addr, "b.test = /api", "b.test /api/", "b.test /api/v2/"),
		"c": routed(c.Addr, "b.test /api/v2/deep/"),
	})
	require.Equal(t, http.StatusOK, status, "%v", out)
	expect := func(what string, cases map[string]string) {
		t.Helper()
		for hp, want := range cases {
			host, path, _ := strings.Cut(hp, " ")
			code, body := r.get(host, path)
			got := body
			if code != http.StatusOK {
				got = fmt.Sprint(code)
			}
			require.Equal(t, want, got, "%s: %s%s: %d %s", what, host, path, code, body)
		}
	}
	expect("first push", map[string]string{
		"a.test /":                    "a",
		"a.test /anything":            "a",
		"b.test /api":                 "b",
		"b.test /api/x":               "b",
		"b.test /apix":                "404",
		"b.test /api/v2/x":            "b",
		"b.test /api/v2/deep/x":       "c",   // the longest prefix
		"b.test /x":                   "404", // a host with routes is matched there alone
		"other.test /x":               "a",   // any other host: the default server's
		"other.test /x/y":             "404",
		"other.test /d/e":             "a",
		"B.TEST /api":                 "b",
		"b.test /api/%2e%2e/x":        "404", // nginx normalises $uri: /x
		"b.test /x/%2e%2e/api/y":      "b",   // /api/y
		"b.test /api/../api/v2/deep/": "c",
	})

	// A partial push of b alone: its routes change, a's and c's stay.
	status, out = r.push(2, false, map[string]*routedSet{"b": routed(b.Addr, "b.test /")})
	require.Equal(t, http.StatusOK, status, "%v", out)
	expect("b changed", map[string]string{"b.test /x": "b", "b.test /api/v2/deep/x": "c", "a.test /": "a"})

	// Two apps on one location: refused, nothing changes.
	status, out = r.push(3, false, map[string]*routedSet{"c": routed(c.Addr, "a.test /"), "b": nil})
	require.Equal(t, http.StatusBadRequest, status, "%v", out)
	require.Contains(t, out["error"], "location / on host a.test is routed to both app a and app c")
	version, _ := r.Version()
	require.EqualValues(t, 2, version)
	expect("refused", map[string]string{"a.test /": "a", "b.test /x": "b"})

	// b removed: b.test keeps c's route alone; then c's moves away and
	// b.test, with no routes left, is the default server's.
	status, out = r.push(4, false, map[string]*routedSet{"b": nil})
	require.Equal(t, http.StatusOK, status, "%v", out)
	expect("b removed", map[string]string{"b.test /x": "404", "b.test /api/v2/deep/x": "c"})
	status, out = r.push(5, false, map[string]*routedSet{"c": routed(c.Addr, "c.test /")})
	require.Equal(t, http.StatusOK, status, "%v", out)
	expect("c moved", map[string]string{"b.test /x": "a", "b.test /y": "404", "b.test /api/v2/deep/x": "404", "c.test /q": "c"})

	// A full push without a and c: every route of theirs goes.
	status, out = r.push(6, true, map[string]*routedSet{"b": routed(b.Addr, "b.test /")})
	require.Equal(t, http.StatusOK, status, "%v", out)
	expect("full", map[string]string{"a.test /": "404", "other.test /x": "404", "c.test /q": "404", "b.test /api/v2/deep/x": "b"})
	code, body := r.get("a.test", "/")
	require.Equal(t, http.StatusNotFound, code)
	require.JSONEq(t, `{"error":"not_found","message":"no app is routed here"}`, body)

	// An app with no server: 503 no_backend, its route kept.
	status, out = r.push(7, false, map[string]*routedSet{"b": {Method: "round_robin", Servers: []rigServer{}, Routes: []routedRoute{{"b.test", "/"}}}})
	require.Equal(t, http.StatusOK, status, "%v", out)
	code, body = r.get("b.test", "/")
	require.Equal(t, http.StatusServiceUnavailable, code)
	require.Contains(t, body, `"app":"b"`)
}

// TestLuaRouterTimeoutsPerApp: the router sets each app's read timeout
// per request (ngx.balancer.set_timeouts), under the location's 24h.
func TestLuaRouterTimeoutsPerApp(t *testing.T) {
	t.Parallel()
	slow, fast := newBackend(t, "slow"), newBackend(t, "fast")
	slow.Hold()
	r := newRouterRig(t)
	s := routed(slow.Addr, "slow.test /")
	s.ReadTimeout = 0.2
	f := routed(fast.Addr, "fast.test /")
	f.ReadTimeout = 30
	status, out := r.push(1, true, map[string]*routedSet{"slow": s, "fast": f})
	require.Equal(t, http.StatusOK, status, "%v", out)
	start := time.Now()
	code, _ := r.get("slow.test", "/")
	took := time.Since(start)
	require.Equal(t, http.StatusGatewayTimeout, code, "the held request times out at the app's read_timeout")
	require.Less(t, took, 10*time.Second, "0.2 s, not the location's 24h")
	code, body := r.get("fast.test", "/")
	require.Equal(t, http.StatusOK, code)
	require.Equal(t, "fast", body)
}

// BenchmarkLuaRouterVsRenderedLocation is the cost per request of the
// router against a rendered location, in the same nginx (two workers),
// to the same backend, with 1,000 routed apps in the dict: wrk on each,
// alternately, three rounds of 3 s. It reports requests per second and
// p99 of each, and their ratio. Needs wrk.
//
//	go test -run '^$' -bench LuaRouterVsRenderedLocation -benchtime 1x ./lbagent/internal/dynamic
func BenchmarkLuaRouterVsRenderedLocation(b *testing.B) {
	wrk, err := exec.LookPath("wrk")
	if err != nil {
		b.Skip("wrk not found")
	}
	be := newBackend(b, "web")
	r := newRouterRig(b, rigApp{Name: "web", Tries: 2, Keepalive: 64})
	apps := map[string]any{"web": routed(be.Addr)}
	for i := range 1000 {
		name := fmt.Sprintf("app-%04d", i)
		apps[name] = routed(be.Addr, name+".test /", name+".test = /x", name+".test /api/")
	}
	status, out := r.PushRaw(mustJSON(b, map[string]any{"version": 1, "full": true, "apps": apps}))
	require.Equal(b, http.StatusOK, status, "%v", out)
	code, body := r.get("app-0500.test", "/")
	require.Equal(b, http.StatusOK, code, body)
	code, body, _ = r.Get("web", "", nil)
	require.Equal(b, http.StatusOK, code, body)

	run := func(url, host string) (float64, time.Duration) {
		cmd := exec.Command(wrk, "-t1", "-c8", "-d3s", "--latency", "-H", "Host: "+host, url)
		outb, err := cmd.CombinedOutput()
		require.NoError(b, err, "%s", outb)
		var rps float64
		var p99 time.Duration
		for _, line := range strings.Split(string(outb), "\n") {
			f := strings.Fields(line)
			switch {
			case len(f) == 2 && f[0] == "Requests/sec:":
				_, _ = fmt.Sscan(f[1], &rps)
			case len(f) == 2 && f[0] == "99%":
				p99, _ = time.ParseDuration(strings.Replace(f[1], "us", "µs", 1))
			}
		}
		require.NotZero(b, rps, "%s", outb)
		return rps, p99
	}
	var loc, rt [2]float64 // rps, p99 ms: sums over rounds
	for range 3 {
		rps, p99 := run("http://"+r.Traffic+"/web/", "web.test")
		loc[0], loc[1] = loc[0]+rps, loc[1]+float64(p99)/1e6
		rps, p99 = run("http://"+r.Router+"/", "app-0500.test")
		rt[0], rt[1] = rt[0]+rps, rt[1]+float64(p99)/1e6
	}
	b.ReportMetric(loc[0]/3, "location_req/s")
	b.ReportMetric(rt[0]/3, "router_req/s")
	b.ReportMetric(loc[1]/3, "location_p99_ms")
	b.ReportMetric(rt[1]/3, "router_p99_ms")
	b.ReportMetric(100*(1-rt[0]/loc[0]), "router_slower_%")
}
