package dynamic

// Tests of the Lua balancer (templates/lua/berth/dynamic.lua) on a real
// nginx with lua-nginx-module: the control endpoint, balancing, keepalive,
// retries and passive failures, and the snapshot loaded at start and kept
// across a reload.

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

func TestLuaControl(t *testing.T) {
	t.Parallel()
	a, b := newBackend(t, "a"), newBackend(t, "b")
	r := newLuaRig(t, rigApp{Name: "web", Tries: 2}, rigApp{Name: "api", Tries: 2}, rigApp{Name: "old", Tries: 2})
	r.Start()

	version, apps := r.Version()
	require.Zero(t, version)
	require.Zero(t, apps)

	r.Push(rigBatch{Version: 5, Apps: map[string]*rigSet{
		"web": rigSetOf("round_robin", a.Addr),
		"api": rigSetOf("least_conn", b.Addr),
		"old": rigSetOf("round_robin", b.Addr),
	}})
	version, apps = r.Version()
	require.EqualValues(t, 5, version)
	require.EqualValues(t, 3, apps)

	t.Run("token", func(t *testing.T) {
		for name, token := range map[string]string{"missing": "", "wrong": "nope", "prefix": r.Token[:len(r.Token)-1]} {
			for _, method := range []string{http.MethodGet, http.MethodPost} {
				status, out := r.control(method, token, mustJSON(t, rigBatch{Version: 99, Apps: map[string]*rigSet{}}))
				require.Equal(t, http.StatusForbidden, status, "%s %s: %v", name, method, out)
			}
		}
	})

	t.Run("not loopback", func(t *testing.T) {
		// A non-loopback address of this host, when it has one, reaches
		// the status listener only if it listens there; the rig listens on
		// 127.0.0.1, so the check is the Lua one through a second listener.
		ip := hostAddr()
		if ip == "" {
			t.Skip("this host has no non-loopback IPv4 address")
		}
		rr := newLuaRig(t)
		conf, err := os.ReadFile(rr.nginx.Conf)
		require.NoError(t, err)
		port := strings.Split(rr.Status, ":")[1]
		rr.nginx.WriteConfig(strings.Replace(string(conf), "listen "+rr.Status+";", "listen "+rr.Status+";\n        listen "+ip+":"+port+";", 1))
		rr.Start()
		rr.Status = ip + ":" + port
		status, out := rr.control(http.MethodGet, rr.Token, nil)
		require.Equal(t, http.StatusForbidden, status, "%v", out)
	})

	// Each hostile batch also carries a valid change that must not be applied.
	hostile := []struct {
		name, app, path string
	}{
		{"name instead of ip", `{"method":"round_robin","servers":[{"address":"localhost:80","weight":1}]}`, "apps.web.servers[0].address"},
		{"ipv6 zone", `{"method":"round_robin","servers":[{"address":"[fe80::1%eth0]:80","weight":1}]}`, "apps.web.servers[0].address"},
		{"ipv6 unbracketed", `{"method":"round_robin","servers":[{"address":"::1:80","weight":1}]}`, "apps.web.servers[0].address"},
		{"ipv6 two double colons", `{"method":"round_robin","servers":[{"address":"[1::2::3]:80","weight":1}]}`, "apps.web.servers[0].address"},
		{"octet 256", `{"method":"round_robin","servers":[{"address":"1.2.3.256:80","weight":1}]}`, "apps.web.servers[0].address"},
		{"port 0", `{"method":"round_robin","servers":[{"address":"1.2.3.4:0","weight":1}]}`, "apps.web.servers[0].address"},
		{"port 70000", `{"method":"round_robin","servers":[{"address":"1.2.3.4:70000","weight":1}]}`, "apps.web.servers[0].address"},
		{"no port", `{"method":"round_robin","servers":[{"address":"1.2.3.4","weight":1}]}`, "apps.web.servers[0].address"},
		{"config injection", `{"method":"round_robin","servers":[{"address":"1.2.3.4:80\n}","weight":1}]}`, "apps.web.servers[0].address"},
		{"space", `{"method":"round_robin","servers":[{"address":" 1.2.3.4:80","weight":1}]}`, "apps.web.servers[0].address"},
		{"address not a string", `{"method":"round_robin","servers":[{"address":16909060,"weight":1}]}`, "apps.web.servers[0].address"},
		{"duplicate address", `{"method":"round_robin","servers":[{"address":"1.2.3.4:80"},{"address":"1.2.3.4:80"}]}`, "apps.web.servers[1].address"},
		{"weight 0", `{"method":"round_robin","servers":[{"address":"1.2.3.4:80","weight":0}]}`, "apps.web.servers[0].weight"},
		{"weight 1001", `{"method":"round_robin","servers":[{"address":"1.2.3.4:80","weight":1001}]}`, "apps.web.servers[0].weight"},
		{"weight fraction", `{"method":"round_robin","servers":[{"address":"1.2.3.4:80","weight":1.5}]}`, "apps.web.servers[0].weight"},
		{"backup not a boolean", `{"method":"round_robin","servers":[{"address":"1.2.3.4:80","backup":"yes"}]}`, "apps.web.servers[0].backup"},
		{"unknown method", `{"method":"fastest","servers":[]}`, "apps.web.method"},
		{"max_fails negative", `{"method":"round_robin","max_fails":-1,"servers":[]}`, "apps.web.max_fails"},
		{"fail_timeout string", `{"method":"round_robin","fail_timeout":"10s","servers":[]}`, "apps.web.fail_timeout"},
		{"unknown field", `{"method":"round_robin","servers":[],"script":"os.exit()"}`, "apps.web.script"},
		{"servers not an array", `{"method":"round_robin","servers":{"address":"1.2.3.4:80"}}`, "apps.web.servers"},
		{"too many servers", tooManyServers(), "apps.web.servers"},
		{"app not an object", `"1.2.3.4:80"`, "apps.web"},
		{"splits not an object", `{"method":"round_robin","servers":[],"splits":[10]}`, "apps.web.splits"},
		{"split rule not an index", `{"method":"round_robin","servers":[],"splits":{"x":[10]}}`, "apps.web.splits.x"},
		{"split weight over 100", `{"method":"round_robin","servers":[],"splits":{"0":[101]}}`, "apps.web.splits.0[0]"},
		{"split weights over 100 together", `{"method":"round_robin","servers":[],"splits":{"0":[60,50]}}`, "apps.web.splits.0"},
		{"split weight a string", `{"method":"round_robin","servers":[],"splits":{"0":["10"]}}`, "apps.web.splits.0[0]"},
		{"too many shares", `{"method":"round_robin","servers":[],"splits":{"0":[1,1,1,1,1]}}`, "apps.web.splits.0"},
		// Routes (--dynamic-routes) are data for the router: anything but a
		// host key and a location in the spec's grammar is refused.
		{"routes not an array", `{"method":"round_robin","servers":[],"routes":{"host":"a.test","location":"/"}}`, "apps.web.routes"},
		{"route unknown field", `{"method":"round_robin","servers":[],"routes":[{"host":"a.test","location":"/","code":"os.exit()"}]}`, "apps.web.routes[0].code"},
		{"route host quote", `{"method":"round_robin","servers":[],"routes":[{"host":"a.test\"]; os.exit() --","location":"/"}]}`, "apps.web.routes[0].host"},
		{"route host upper case", `{"method":"round_robin","servers":[],"routes":[{"host":"A.test","location":"/"}]}`, "apps.web.routes[0].host"},
		{"route host wildcard inside", `{"method":"round_robin","servers":[],"routes":[{"host":"a.*.test","location":"/"}]}`, "apps.web.routes[0].host"},
		{"route host bare wildcard", `{"method":"round_robin","servers":[],"routes":[{"host":"*","location":"/"}]}`, "apps.web.routes[0].host"},
		{"route host double wildcard", `{"method":"round_robin","servers":[],"routes":[{"host":"*.*.a.test","location":"/"}]}`, "apps.web.routes[0].host"},
		{"route host newline", `{"method":"round_robin","servers":[],"routes":[{"host":"a.test\n","location":"/"}]}`, "apps.web.routes[0].host"},
		{"route host not a string", `{"method":"round_robin","servers":[],"routes":[{"host":1,"location":"/"}]}`, "apps.web.routes[0].host"},
		{"route location brace", `{"method":"round_robin","servers":[],"routes":[{"host":"a.test","location":"/x {"}]}`, "apps.web.routes[0].location"},
		{"route location semicolon", `{"method":"round_robin","servers":[],"routes":[{"host":"a.test","location":"/x;"}]}`, "apps.web.routes[0].location"},
		{"route location case-insensitive regex", `{"method":"round_robin","servers":[],"routes":[{"host":"a.test","location":"~* ^/x"}]}`, "apps.web.routes[0].location"},
		{"route location regex brace", `{"method":"round_robin","servers":[],"routes":[{"host":"a.test","location":"~ ^/x{1,2}"}]}`, "apps.web.routes[0].location"},
		{"route location regex does not compile", `{"method":"round_robin","servers":[],"routes":[{"host":"a.test","location":"~ ^/x(("}]}`, "apps.web.routes[0].location"},
		{"route location regex newline", `{"method":"round_robin","servers":[],"routes":[{"host":"a.test","location":"~ ^/x\n"}]}`, "apps.web.routes[0].location"},
		{"route rule out of range", `{"method":"round_robin","servers":[],"routes":[{"host":"a.test","location":"/","rule":1}]}`, "apps.web.routes[0].rule"},
		{"route order negative", `{"method":"round_robin","servers":[],"routes":[{"host":"a.test","location":"/","order":-1}]}`, "apps.web.routes[0].order"},
		{"rules not an array", `{"method":"round_robin","servers":[],"rules":"all"}`, "apps.web.rules"},
		{"rule unknown field", `{"method":"round_robin","servers":[],"rules":[{"rate_limit":1}]}`, "apps.web.rules[0].rate_limit"},
		{"rule header name", `{"method":"round_robin","servers":[],"rules":[{"headers":{"X Y":"1"}}]}`, "apps.web.rules[0].headers"},
		{"rule header value control", `{"method":"round_robin","servers":[],"rules":[{"headers":{"X-Y":"a
b"}}]}`, "apps.web.rules[0].headers.X-Y"},
		{"rule header regex does not compile", `{"method":"round_robin","servers":[],"rules":[{"headers":{"X-Y":"~(("}}]}`, "apps.web.rules[0].headers.X-Y"},
		{"rule split without weights", `{"method":"round_robin","servers":[],"rules":[{"split":["b"]}]}`, "apps.web.rules[0].split"},
		{"rule split bad app", `{"method":"round_robin","servers":[],"splits":{"0":[5]},"rules":[{"split":["B!"]}]}`, "apps.web.rules[0].split[0]"},
		{"rule response header injection", `{"method":"round_robin","servers":[],"rules":[{"response_headers":[["X-A","1
Set-Cookie: x=1"]]}]}`, "apps.web.rules[0].response_headers[0]"},
		{"rule response header name", `{"method":"round_robin","servers":[],"rules":[{"response_headers":[["X:A","1"]]}]}`, "apps.web.rules[0].response_headers[0]"},
		{"route location relative", `{"method":"round_robin","servers":[],"routes":[{"host":"a.test","location":"x"}]}`, "apps.web.routes[0].location"},
		{"route location newline", `{"method":"round_robin","servers":[],"routes":[{"host":"a.test","location":"/x\n"}]}`, "apps.web.routes[0].location"},
		{"route location too long", `{"method":"round_robin","servers":[],"routes":[{"host":"a.test","location":"/` + strings.Repeat("x", 1030) + `"}]}`, "apps.web.routes[0].location"},
		{"duplicate route", `{"method":"round_robin","servers":[],"routes":[{"host":"a.test","location":"/"},{"host":"a.test","location":"/"}]}`, "apps.web.routes[1]"},
		{"connect_timeout 0", `{"method":"round_robin","servers":[],"connect_timeout":0}`, "apps.web.connect_timeout"},
		{"connect_timeout over 75", `{"method":"round_robin","servers":[],"connect_timeout":76}`, "apps.web.connect_timeout"},
		{"read_timeout a string", `{"method":"round_robin","servers":[],"read_timeout":"5s"}`, "apps.web.read_timeout"},
		{"split rule with a newline", `{"method":"round_robin","servers":[],"splits":{"1\n":[10]}}`, "apps.web.splits.1\n"},
		{"tries 101", `{"method":"round_robin","servers":[],"tries":101}`, "apps.web.tries"},
	}
	for _, tc := range hostile {
		t.Run("400 "+tc.name, func(t *testing.T) {
			body := fmt.Sprintf(`{"version":100,"full":false,"apps":{"api":null,"web":%s}}`, tc.app)
			status, out := r.PushRaw([]byte(body))
			require.Equal(t, http.StatusBadRequest, status, "%v", out)
			require.True(t, strings.HasPrefix(out["error"].(string), tc.path+":"), "error %q does not name %s", out["error"], tc.path)
		})
	}
	batchHostile := []struct{ name, body, path string }{
		{"not json", `{"version":100,`, "body"},
		{"array", `[1,2]`, "body"},
		{"version 0", `{"version":0,"apps":{}}`, "version"},
		{"version negative", `{"version":-7,"apps":{}}`, "version"},
		{"version fraction", `{"version":100.5,"apps":{}}`, "version"},
		{"version beyond 2^53", `{"version":18446744073709551615,"apps":{}}`, "version"},
		{"version NaN", `{"version":NaN,"apps":{}}`, "body"},
		{"full not a boolean", `{"version":100,"full":"yes","apps":{}}`, "full"},
		{"apps missing", `{"version":100}`, "apps"},
		{"bad app name", `{"version":100,"apps":{"../x":null}}`, "apps.../x"},
		{"upper-case app name", `{"version":100,"apps":{"Web":null}}`, "apps.Web"},
		{"too many apps", tooManyApps(), "apps"},
		{"deep nesting", `{"version":100,"apps":{"web":` + strings.Repeat("[", 100) + strings.Repeat("]", 100) + `}}`, "body"},
	}
	for _, tc := range batchHostile {
		t.Run("400 "+tc.name, func(t *testing.T) {
			status, out := r.PushRaw([]byte(tc.body))
			require.Equal(t, http.StatusBadRequest, status, "%v", out)
			require.True(t, strings.HasPrefix(out["error"].(string), tc.path+":"), "error %q does not name %s", out["error"], tc.path)
		})
	}
	t.Run("nothing applied", func(t *testing.T) {
		version, apps := r.Version()
		require.EqualValues(t, 5, version)
		require.EqualValues(t, 3, apps)
		_, body, _ := r.Get("api", "", nil)
		require.Equal(t, "b", body)
		_, body, _ = r.Get("web", "", nil)
		require.Equal(t, "a", body)
	})

	t.Run("409 old version", func(t *testing.T) {
		for _, v := range []uint64{5, 4} {
			status, out := r.PushRaw(mustJSON(t, rigBatch{Version: v, Apps: map[string]*rigSet{"web": rigSetOf("round_robin", b.Addr)}}))
			require.Equal(t, http.StatusConflict, status)
			require.EqualValues(t, 5, out["version"])
		}
		_, body, _ := r.Get("web", "", nil)
		require.Equal(t, "a", body)
	})

	t.Run("null removes one app", func(t *testing.T) {
		r.Push(rigBatch{Version: 6, Apps: map[string]*rigSet{"api": nil}})
		version, apps := r.Version()
		require.EqualValues(t, 6, version)
		require.EqualValues(t, 2, apps)
		status, body, _ := r.Get("api", "", nil)
		require.Equal(t, http.StatusServiceUnavailable, status, body)
		_, body, _ = r.Get("old", "", nil)
		require.Equal(t, "b", body)
	})

	t.Run("pushes of one app keep the count of the others", func(t *testing.T) {
		// The count of apps changes only when an app comes or goes; a set
		// change, and the removal of an app that is not there, leave it.
		r.Push(rigBatch{Version: 61, Apps: map[string]*rigSet{"web": rigSetOf("round_robin", b.Addr), "ghost": nil}})
		_, apps := r.Version()
		require.EqualValues(t, 2, apps)
		_, body, _ := r.Get("web", "", nil)
		require.Equal(t, "b", body)
		r.Push(rigBatch{Version: 62, Apps: map[string]*rigSet{"api": rigSetOf("round_robin", a.Addr), "web": rigSetOf("round_robin", a.Addr)}})
		_, apps = r.Version()
		require.EqualValues(t, 3, apps, "an app that comes back is counted again")
		_, body, _ = r.Get("api", "", nil)
		require.Equal(t, "a", body)
		_, body, _ = r.Get("old", "", nil)
		require.Equal(t, "b", body)
	})

	t.Run("full replaces every app", func(t *testing.T) {
		r.Push(rigBatch{Version: 70, Full: true, Apps: map[string]*rigSet{"web": rigSetOf("round_robin", b.Addr)}})
		version, apps := r.Version()
		require.EqualValues(t, 70, version)
		require.EqualValues(t, 1, apps)
		_, body, _ := r.Get("web", "", nil)
		require.Equal(t, "b", body)
		status, _, _ := r.Get("old", "", nil)
		require.Equal(t, http.StatusServiceUnavailable, status)
	})

	t.Run("method not allowed", func(t *testing.T) {
		status, _ := r.control(http.MethodDelete, r.Token, nil)
		require.Equal(t, http.StatusMethodNotAllowed, status)
	})
}

func tooManyServers() string {
	var b strings.Builder
	b.WriteString(`{"method":"round_robin","servers":[`)
	for i := range 1001 {
		if i > 0 {
			b.WriteByte(',')
		}
		fmt.Fprintf(&b, `{"address":"10.0.%d.%d:80","weight":1}`, i/250, i%250+1)
	}
	b.WriteString(`]}`)
	return b.String()
}

func tooManyApps() string {
	var b strings.Builder
	b.WriteString(`{"version":100,"apps":{`)
	for i := range 200_001 { // the Lua side's MAX_APPS + 1
		if i > 0 {
			b.WriteByte(',')
		}
		fmt.Fprintf(&b, `"app%d":null`, i)
	}
	b.WriteString(`}}`)
	return b.String()
}

// hostAddr returns a non-loopback IPv4 address of this host, or "".
func hostAddr() string {
	addrs, err := net.InterfaceAddrs()
	if err != nil {
		return ""
	}
	for _, a := range addrs {
		if n, ok := a.(*net.IPNet); ok && !n.IP.IsLoopback() && n.IP.To4() != nil {
			return n.IP.String()
		}
	}
	return ""
}

func TestLuaEmptyAppThenPushWithoutReload(t *testing.T) {
	t.Parallel()
	a := newBackend(t, "a")
	r := newLuaRig(t, rigApp{Name: "web", Tries: 2})
	r.Start()
	r.Push(rigBatch{Version: 1, Apps: map[string]*rigSet{"web": rigSetOf("round_robin")}})

	status, body, _ := r.Get("web", "", nil)
	require.Equal(t, http.StatusServiceUnavailable, status)
	require.JSONEq(t, `{"error":"no_backend","app":"web","message":"no healthy instance"}`, body)
	// The route is kept: other paths 404, the app's answers 503.
	status, _, _ = r.Get("nope", "", nil)
	require.Equal(t, http.StatusNotFound, status)

	master, workers := r.PIDs()
	require.Len(t, workers, 2)
	confBefore, err := os.Stat(r.nginx.Conf)
	require.NoError(t, err)

	r.Push(rigBatch{Version: 2, Apps: map[string]*rigSet{"web": rigSetOf("round_robin", a.Addr)}})
	// Both workers serve the new set at once (each request may land on either).
	for range 20 {
		status, body, _ = r.Get("web", "", nil)
		require.Equal(t, http.StatusOK, status, body)
		require.Equal(t, "a", body)
	}

	m2, w2 := r.PIDs()
	require.Equal(t, master, m2, "nginx master changed")
	require.Equal(t, workers, w2, "nginx workers changed: a reload happened")
	confAfter, err := os.Stat(r.nginx.Conf)
	require.NoError(t, err)
	require.Equal(t, confBefore.ModTime(), confAfter.ModTime())
	require.NotContains(t, r.ErrorLog(), "reconfiguring")
}

// within requires got/total to be want within tol (absolute fraction).
func within(t *testing.T, got, total int, want, tol float64, what string) {
	t.Helper()
	f := float64(got) / float64(total)
	require.InDelta(t, want, f, tol, "%s: %d of %d (%.3f), want %.3f±%.3f", what, got, total, f, want, tol)
}

// busy holds slow and sends requests until one is held there, counted
// by the balancer as active; the held ones never time out, so slow stays
// busy however long the test takes. It returns once every other request
// it sent has been answered.
func busy(t *testing.T, r *luaRig, slow *backend) {
	t.Helper()
	slow.Hold()
	var wg sync.WaitGroup
	t.Cleanup(wg.Wait)
	t.Cleanup(slow.Release)
	patient := &http.Client{Transport: r.client.Transport}
	var sent, answered atomic.Int64
	for deadline := time.Now().Add(10 * time.Second); slow.InFlight.Load() < 1; {
		require.True(t, time.Now().Before(deadline), "requests never reached the held server")
		sent.Add(1)
		wg.Go(func() {
			_, _, _, _ = r.get(patient, "web", "", nil)
			answered.Add(1)
		})
		time.Sleep(20 * time.Millisecond) // the poll interval
	}
	require.Eventually(t, func() bool { return answered.Load()+slow.InFlight.Load() == sent.Load() }, 10*time.Second, time.Millisecond,
		"the requests not held are answered")
}

func TestLuaBalancing(t *testing.T) {
	t.Parallel()

	t.Run("weights", func(t *testing.T) {
		t.Parallel()
		a, b := newBackend(t, "a"), newBackend(t, "b")
		r := newLuaRig(t, rigApp{Name: "web", Tries: 2, Keepalive: 16})
		r.Start()
		for i, method := range []string{"round_robin", "least_conn", "random_two_least_conn"} {
			s := rigSetOf(method, a.Addr, b.Addr)
			s.Servers[1].Weight = 3
			r.Push(rigBatch{Version: uint64(i + 1), Apps: map[string]*rigSet{"web": s}})
			const n = 10000
			// Sequential requests: least_conn and random_two_least_conn
			// then see no active request and fall back to their weights.
			counts := r.Spread("web", n, 1)
			within(t, counts["b"], n, 0.75, 0.05, method+" weight 3 of 4")
		}
	})

	t.Run("round_robin is smooth", func(t *testing.T) {
		t.Parallel()
		a, b, c := newBackend(t, "a"), newBackend(t, "b"), newBackend(t, "c")
		r := newLuaRig(t, rigApp{Name: "web", Tries: 2})
		r.Start()
		s := rigSetOf("round_robin", a.Addr, b.Addr, c.Addr)
		s.Servers[0].Weight = 5
		r.Push(rigBatch{Version: 1, Apps: map[string]*rigSet{"web": s}})
		// nginx's smooth weighted round robin for 5,1,1 is a a b a c a a
		// per worker: 700 requests on one connection (one worker) are
		// exactly 100 such cycles.
		counts := r.Spread("web", 700, 1)
		require.Equal(t, map[string]int{"a": 500, "b": 100, "c": 100}, counts)
	})

	t.Run("least_conn prefers the idle server", func(t *testing.T) {
		t.Parallel()
		slow, idle := newBackend(t, "slow"), newBackend(t, "idle")
		r := newLuaRig(t, rigApp{Name: "web", Tries: 2})
		r.Start()
		r.Push(rigBatch{Version: 1, Apps: map[string]*rigSet{"web": rigSetOf("least_conn", slow.Addr, idle.Addr)}})
		busy(t, r, slow)
		before := slow.Hits.Load()
		counts := r.Spread("web", 1000, 1)
		require.Equal(t, 1000, counts["idle"], "least_conn sent requests to the busy server")
		require.Equal(t, before, slow.Hits.Load())
	})

	t.Run("random_two_least_conn prefers the idle server and spreads", func(t *testing.T) {
		t.Parallel()
		slow, x, y := newBackend(t, "slow"), newBackend(t, "x"), newBackend(t, "y")
		r := newLuaRig(t, rigApp{Name: "web", Tries: 2})
		r.Start()
		r.Push(rigBatch{Version: 1, Apps: map[string]*rigSet{"web": rigSetOf("random_two_least_conn", slow.Addr, x.Addr, y.Addr)}})
		counts := r.Spread("web", 6000, 1)
		for _, name := range []string{"slow", "x", "y"} {
			within(t, counts[name], 6000, 1.0/3, 0.05, name)
		}
		busy(t, r, slow)
		// slow is picked only when both random picks are slow itself,
		// which two distinct picks never are.
		counts = r.Spread("web", 2000, 1)
		require.Zero(t, counts["slow"])
		within(t, counts["x"], 2000, 0.5, 0.05, "x")
	})

	t.Run("hash moves few keys when a server is added", func(t *testing.T) {
		t.Parallel()
		var bs []*backend
		var addrs []string
		for i := range 5 {
			b := newBackend(t, fmt.Sprintf("b%d", i))
			bs = append(bs, b)
			addrs = append(addrs, b.Addr)
		}
		r := newLuaRig(t, rigApp{Name: "web", Tries: 2, HashKey: "$http_x_key"})
		r.Start()
		r.Push(rigBatch{Version: 1, Apps: map[string]*rigSet{"web": rigSetOf("hash", addrs[:4]...)}})
		const keys = 2000
		route := func() map[string]string {
			out := map[string]string{}
			for k := range keys {
				key := fmt.Sprintf("user-%d", k)
				status, body, _ := r.Get("web", "", http.Header{"X-Key": {key}})
				require.Equal(t, http.StatusOK, status)
				out[key] = body
			}
			return out
		}
		before := route()
		used := map[string]int{}
		for _, b := range before {
			used[b]++
		}
		for _, b := range bs[:4] {
			within(t, used[b.Name], keys, 0.25, 0.08, "share of "+b.Name)
		}
		require.Equal(t, before, route(), "hash is not stable")

		r.Push(rigBatch{Version: 2, Apps: map[string]*rigSet{"web": rigSetOf("hash", addrs...)}})
		after := route()
		moved := 0
		for k, b := range before {
			if after[k] != b {
				moved++
				require.Equal(t, "b4", after[k], "key %s moved between old servers", k)
			}
		}
		t.Logf("adding a fifth server moved %d of %d keys (%.3f)", moved, keys, float64(moved)/keys)
		require.LessOrEqual(t, float64(moved)/keys, 1.0/5+0.05, "moved %d of %d keys", moved, keys)
		require.Positive(t, moved)
	})

	t.Run("ip_hash is stable per client address", func(t *testing.T) {
		t.Parallel()
		var addrs []string
		for i := range 3 {
			addrs = append(addrs, newBackend(t, fmt.Sprintf("b%d", i)).Addr)
		}
		r := newLuaRig(t, rigApp{Name: "web", Tries: 2})
		r.Start()
		r.Push(rigBatch{Version: 1, Apps: map[string]*rigSet{"web": rigSetOf("ip_hash", addrs...)}})
		route := func() map[string]string {
			out := map[string]string{}
			for i := 2; i < 42; i++ {
				src := fmt.Sprintf("127.0.0.%d", i)
				c := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{
					DialContext: (&net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}}).DialContext,
				}}
				for range 5 {
					status, body, _, err := r.get(c, "web", "", nil)
					require.NoError(t, err)
					require.Equal(t, http.StatusOK, status)
					if prev, ok := out[src]; ok {
						require.Equal(t, prev, body, "client %s moved", src)
					}
					out[src] = body
				}
				c.CloseIdleConnections()
			}
			return out
		}
		first := route()
		used := map[string]bool{}
		for _, b := range first {
			used[b] = true
		}
		require.Len(t, used, 3, "40 client addresses all hashed to %v", used)
		// The same set pushed again (a new version) keeps every client.
		r.Push(rigBatch{Version: 2, Apps: map[string]*rigSet{"web": rigSetOf("ip_hash", addrs...)}})
		require.Equal(t, first, route())
	})

	t.Run("backup only when no primary is usable", func(t *testing.T) {
		t.Parallel()
		p, bk := newBackend(t, "primary"), newBackend(t, "backup")
		r := newLuaRig(t, rigApp{Name: "web", Tries: 3})
		r.Start()
		s := rigSetOf("round_robin", p.Addr, bk.Addr)
		s.Servers[1].Backup = true
		r.Push(rigBatch{Version: 1, Apps: map[string]*rigSet{"web": s}})
		require.Equal(t, map[string]int{"primary": 200}, r.Spread("web", 200, 2))
		s.Servers[0].Address = deadAddr(t)
		r.Push(rigBatch{Version: 2, Apps: map[string]*rigSet{"web": s}})
		require.Equal(t, map[string]int{"backup": 200}, r.Spread("web", 200, 2))
	})
}

func TestLuaKeepalive(t *testing.T) {
	t.Parallel()
	a := newBackend(t, "a")
	r := newLuaRig(t, rigApp{Name: "web", Tries: 2, Keepalive: 8})
	r.Start()
	r.Push(rigBatch{Version: 1, Apps: map[string]*rigSet{"web": rigSetOf("round_robin", a.Addr)}})
	counts := r.Spread("web", 2000, 1)
	require.Equal(t, 2000, counts["a"])
	t.Logf("2000 sequential requests, %d upstream connections", a.Conns.Load())
	// One connection per worker would do; allow a few.
	require.LessOrEqual(t, a.Conns.Load(), int64(4), "2000 sequential requests opened %d upstream connections", a.Conns.Load())
}

func TestLuaRetriesAndPassiveFailure(t *testing.T) {
	t.Parallel()
	a := newBackend(t, "a")
	dead := deadAddr(t)
	r := newLuaRig(t, rigApp{Name: "web", Tries: 3})
	r.Start()
	s := rigSetOf("round_robin", dead, a.Addr)
	s.MaxFails, s.FailTimeout = 1, 30
	r.Push(rigBatch{Version: 1, Apps: map[string]*rigSet{"web": s}})

	counts := r.Spread("web", 1000, 4)
	require.Equal(t, map[string]int{"a": 1000}, counts)
	log := r.ErrorLog()
	require.Contains(t, log, "peer "+dead+" marked failed for 30s")
	// Marked failed in the shared dict: at most one try per worker hit
	// the dead endpoint before it was marked.
	tries := 0
	for range 200 {
		_, body, up := r.Get("web", "", nil)
		require.Equal(t, "a", body)
		tries += strings.Count(up, ",") + 1
	}
	require.Equal(t, 200, tries, "requests still try the failed endpoint")
}

func TestLuaAllDeadAnswers502(t *testing.T) {
	t.Parallel()
	r := newLuaRig(t, rigApp{Name: "web", Tries: 0})
	r.Start()
	s := rigSetOf("round_robin", deadAddr(t), deadAddr(t))
	r.Push(rigBatch{Version: 1, Apps: map[string]*rigSet{"web": s}})
	for range 3 {
		// Every endpoint is marked failed after the first request; nginx
		// still tries them (never an empty choice), once each.
		status, _, up := r.Get("web", "", nil)
		require.Equal(t, http.StatusBadGateway, status)
		require.Equal(t, 2, strings.Count(up, ",")+1, "upstream_addr %q", up)
	}
}

func TestLuaSnapshotAtStartAndAcrossReload(t *testing.T) {
	t.Parallel()
	a, b := newBackend(t, "a"), newBackend(t, "b")
	r := newLuaRig(t, rigApp{Name: "web", Tries: 2})
	require.NoError(t, os.WriteFile(r.Snapshot, mustJSON(t, rigBatch{Version: 5, Full: true, Apps: map[string]*rigSet{
		"web": rigSetOf("round_robin", a.Addr),
	}}), 0o644))
	r.Start()

	status, body, _ := r.Get("web", "", nil)
	require.Equal(t, http.StatusOK, status, body)
	require.Equal(t, "a", body)
	version, apps := r.Version()
	require.EqualValues(t, 5, version)
	require.EqualValues(t, 1, apps)

	// A push after the snapshot was written; the file stays at version 5.
	r.Push(rigBatch{Version: 6, Apps: map[string]*rigSet{"web": rigSetOf("round_robin", b.Addr)}})
	_, workers := r.PIDs()

	require.NoError(t, syscall.Kill(r.nginx.PID(), syscall.SIGHUP))
	require.Eventually(t, func() bool {
		_, w := r.PIDs()
		return len(w) == 2 && w[0] != workers[0] && w[1] != workers[0] && w[0] != workers[1] && w[1] != workers[1]
	}, 10*time.Second, 10*time.Millisecond, "nginx did not replace its workers after SIGHUP")

	version, apps = r.Version()
	require.EqualValues(t, 6, version, "a reload must keep the shared dict, not reload the older snapshot")
	require.EqualValues(t, 1, apps)
	for range 20 {
		_, body, _ = r.Get("web", "", nil)
		require.Equal(t, "b", body)
	}
	require.Contains(t, r.ErrorLog(), "is not older than snapshot version 5")

	// A newer snapshot (nginx restarted with an empty dict would see the
	// same) is loaded on the next reload.
	require.NoError(t, os.WriteFile(r.Snapshot, mustJSON(t, rigBatch{Version: 9, Full: true, Apps: map[string]*rigSet{
		"web": rigSetOf("round_robin", a.Addr),
	}}), 0o644))
	require.NoError(t, syscall.Kill(r.nginx.PID(), syscall.SIGHUP))
	require.Eventually(t, func() bool { v, _ := r.Version(); return v == 9 }, 10*time.Second, 10*time.Millisecond)
	require.Eventually(t, func() bool { _, body, _ := r.Get("web", "", nil); return body == "a" }, 10*time.Second, 10*time.Millisecond)
}

func TestLuaBadSnapshotLeavesDict(t *testing.T) {
	t.Parallel()
	for name, content := range map[string]string{
		"missing":  "",
		"not json": "{",
		"hostile":  `{"version":3,"full":true,"apps":{"web":{"method":"round_robin","servers":[{"address":"evil.example:80"}]}}}`,
	} {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			r := newLuaRig(t, rigApp{Name: "web", Tries: 2})
			if content != "" {
				require.NoError(t, os.WriteFile(r.Snapshot, []byte(content), 0o644))
			}
			r.Start()
			version, apps := r.Version()
			require.Zero(t, version)
			require.Zero(t, apps)
			status, _, _ := r.Get("web", "", nil)
			require.Equal(t, http.StatusServiceUnavailable, status)
		})
	}
}

func TestLuaMissingTokenRefusesEverything(t *testing.T) {
	t.Parallel()
	r := newLuaRig(t)
	require.NoError(t, os.Remove(r.TokenFile))
	r.Start()
	for _, token := range []string{"", r.Token} {
		status, _ := r.control(http.MethodGet, token, nil)
		require.Equal(t, http.StatusForbidden, status)
	}
}

// percentile returns the p-th percentile of sorted durations.
func percentile(sorted []time.Duration, p float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	i := int(math.Ceil(p/100*float64(len(sorted)))) - 1
	return sorted[max(i, 0)]
}

func TestLuaValidAddresses(t *testing.T) {
	t.Parallel()
	r := newLuaRig(t, rigApp{Name: "web", Tries: 2})
	r.Start()
	for i, addr := range []string{
		"0.0.0.0:65535", "255.255.255.255:1", "10.1.2.3:8080",
		"[::1]:80", "[::]:80", "[2001:db8::1]:443", "[1:2:3:4:5:6:7:8]:1", "[FE80::A:b]:80",
		"[::ffff:10.0.0.1]:80", "[1:2:3:4:5:6:1.2.3.4]:80", "[1::]:80",
	} {
		status, out := r.PushRaw(mustJSON(t, rigBatch{Version: uint64(i + 1), Apps: map[string]*rigSet{"web": rigSetOf("round_robin", addr)}}))
		require.Equal(t, http.StatusOK, status, "%s: %v", addr, out)
	}
	for _, addr := range []string{
		"[1:2:3:4:5:6:7:8:9]:80", "[1:2:3:4:5:6:7]:80", "[12345::]:80", "[:1]:80", "[1:]:80", "[::1.2.3]:80",
		"[1:2:3:4:5:6:7:1.2.3.4]:80", "[::g]:80", "01.2.3.4:80", "1.2.3.4:080", "1.2.3:80", "[::1]", "[::1]:", "[]:80",
	} {
		status, out := r.PushRaw(mustJSON(t, rigBatch{Version: 100, Apps: map[string]*rigSet{"web": rigSetOf("round_robin", addr)}}))
		require.Equal(t, http.StatusBadRequest, status, "%s: %v", addr, out)
	}

	// A backend on the IPv6 loopback, where the host has one.
	ln, err := net.Listen("tcp", "[::1]:0")
	if err != nil {
		t.Skipf("no IPv6 loopback: %v", err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { _, _ = w.Write([]byte("v6")) })}
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() { _ = srv.Close() })
	r.Push(rigBatch{Version: 50, Apps: map[string]*rigSet{"web": rigSetOf("round_robin", ln.Addr().String())}})
	status, body, _ := r.Get("web", "", nil)
	require.Equal(t, http.StatusOK, status)
	require.Equal(t, "v6", body)
}

// BenchmarkLuaPushToFirstAnswer measures the time from a push to the first
// answer from the new endpoint, polled in a tight loop, with 1000 apps in
// the dict: a one-app push (what lbagent sends for a scale or a rollout
// step) and a full 1000-app push (after a reconnect). The floor is a GET of
// the version on the same control endpoint; ratio_p50 is push/floor.
func BenchmarkLuaPushToFirstAnswer(b *testing.B) {
	for _, full := range []bool{false, true} {
		name := "one_app"
		if full {
			name = "full_1000_apps"
		}
		b.Run(name, func(b *testing.B) {
			ba, bb := newBackend(b, "a"), newBackend(b, "b")
			r := newLuaRig(b, rigApp{Name: "web", Tries: 2, Keepalive: 16})
			r.Start()
			apps := map[string]*rigSet{}
			for i := range 999 {
				apps[fmt.Sprintf("app%d", i)] = rigSetOf("round_robin", fmt.Sprintf("10.0.%d.%d:8080", i/200, i%200+1), fmt.Sprintf("10.1.%d.%d:8080", i/200, i%200+1))
			}
			apps["web"] = rigSetOf("round_robin", ba.Addr)
			version := uint64(1)
			r.Push(rigBatch{Version: version, Full: true, Apps: apps})

			floor := make([]time.Duration, 0, b.N)
			lat := make([]time.Duration, 0, b.N)
			post := make([]time.Duration, 0, b.N)
			b.ResetTimer()
			for i := range b.N {
				start := time.Now()
				r.Version()
				floor = append(floor, time.Since(start))

				want, addr := "b", bb.Addr
				if i%2 == 1 {
					want, addr = "a", ba.Addr
				}
				version++
				batch := rigBatch{Version: version, Apps: map[string]*rigSet{"web": rigSetOf("round_robin", addr)}}
				if full {
					apps["web"] = batch.Apps["web"]
					batch.Full, batch.Apps = true, apps
				}
				body := mustJSON(b, batch)
				start = time.Now()
				status, out := r.PushRaw(body)
				if status != http.StatusOK {
					b.Fatalf("push: %d %v", status, out)
				}
				post = append(post, time.Since(start))
				for {
					_, got, _, err := r.get(r.client, "web", "", nil)
					if err != nil {
						b.Fatal(err)
					}
					if got == want {
						break
					}
				}
				lat = append(lat, time.Since(start))
			}
			b.StopTimer()
			sortDurations(lat)
			sortDurations(floor)
			sortDurations(post)
			ms := func(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
			b.ReportMetric(ms(percentile(lat, 50)), "p50_ms")
			b.ReportMetric(ms(percentile(lat, 99)), "p99_ms")
			b.ReportMetric(ms(percentile(post, 50)), "post_p50_ms")
			b.ReportMetric(ms(percentile(post, 99)), "post_p99_ms")
			b.ReportMetric(ms(percentile(floor, 50)), "floor_p50_ms")
			b.ReportMetric(float64(percentile(lat, 50))/float64(percentile(floor, 50)), "ratio_p50")
		})
	}
}

func sortDurations(d []time.Duration) {
	slices.Sort(d)
}

// BenchmarkPushOneApp is the control endpoint's cost of one endpoint change
// with 1000 apps × 10 servers in the dict: lbagent's Client pushing one
// app's set, through nginx and back with the version read from the dict.
func BenchmarkPushOneApp(b *testing.B) {
	r := newLuaRig(b, rigApp{Name: "web"})
	r.Start()
	c := NewClient(r.Status, r.Token)
	all := map[string]*Endpoints{}
	for a := range 1000 {
		e := &Endpoints{Method: "round_robin", MaxFails: 1, FailTimeout: 10}
		for i := range 10 {
			e.Servers = append(e.Servers, Server{Address: fmt.Sprintf("10.0.%d.%d:8080", a/25, a%25*10+i), Weight: 1})
		}
		all[fmt.Sprintf("app-%04d", a)] = e
	}
	ctx := context.Background()
	v, err := c.Push(ctx, Batch{Version: 1, Full: true, Apps: all})
	require.NoError(b, err)
	for b.Loop() {
		v++
		e := *all["app-0000"]
		e.Servers = append([]Server(nil), e.Servers...)
		e.Servers[0].Address = fmt.Sprintf("10.9.%d.%d:8080", v/250%250, v%250)
		if _, err := c.Push(ctx, Batch{Version: v, Apps: map[string]*Endpoints{"app-0000": &e}}); err != nil {
			b.Fatal(err)
		}
	}
}

// TestLuaKeepaliveDrain: while lbagent's request lives, the workers of a
// generation below the one named answer as usual but close the connection
// after the answer (the closer location); others keep it; hostile or
// unauthenticated requests change nothing.
func TestLuaKeepaliveDrain(t *testing.T) {
	t.Parallel()
	a := newBackend(t, "a")
	r := newLuaRig(t, rigApp{Name: "web", Tries: 2}, rigApp{Name: "empty", Tries: 2})
	r.Start()
	r.Push(rigBatch{Version: 1, Apps: map[string]*rigSet{"web": rigSetOf("round_robin", a.Addr), "empty": rigSetOf("round_robin")}})

	// closes reports whether nginx answered app with Connection: close.
	closes := func(app string, want int) bool {
		t.Helper()
		resp, err := r.client.Get("http://" + r.Traffic + "/" + app + "/")
		require.NoError(t, err)
		defer resp.Body.Close()
		_, _ = io.ReadAll(resp.Body)
		require.Equal(t, want, resp.StatusCode)
		return resp.Close
	}
	keepalive := func(token, body string) (int, map[string]any) {
		t.Helper()
		req, err := http.NewRequest(http.MethodPost, "http://"+r.Status+"/berth/keepalive", strings.NewReader(body))
		require.NoError(t, err)
		req.Header.Set("X-Berth-Token", token)
		resp, err := r.client.Do(req)
		require.NoError(t, err)
		defer resp.Body.Close()
		var out map[string]any
		require.NoError(t, json.NewDecoder(resp.Body).Decode(&out))
		return resp.StatusCode, out
	}

	require.False(t, closes("web", 200), "keep-alive as usual")
	status, out := keepalive(r.Token, `{"below":2,"seconds":5}`)
	require.Equal(t, http.StatusOK, status, "%v", out)
	require.EqualValues(t, 2, out["below"])
	require.True(t, closes("web", 200), "generation 1 is below 2: the answer closes the connection")
	require.True(t, closes("empty", 503), "an app with no server still answers its 503, and closes")

	status, _ = keepalive(r.Token, `{"below":1,"seconds":5}`)
	require.Equal(t, http.StatusOK, status)
	require.False(t, closes("web", 200), "the generation named (the new config's) keeps its connections")

	for _, tc := range []struct{ token, body, want string }{
		{"wrong", `{"below":9,"seconds":5}`, "forbidden"},
		{r.Token, `{"below":0,"seconds":5}`, "below:"},
		{r.Token, `{"below":9.5,"seconds":5}`, "below:"},
		{r.Token, `{"below":9,"seconds":-1}`, "seconds:"},
		{r.Token, `{"below":9,"seconds":601}`, "seconds:"},
		{r.Token, `{"below":9,"seconds":"5"}`, "seconds:"},
		{r.Token, `{"below":9,"seconds":5,"hosts":1}`, "hosts:"},
		{r.Token, `[9]`, "body:"},
		{r.Token, `not json`, "body:"},
	} {
		status, out := keepalive(tc.token, tc.body)
		require.NotEqual(t, http.StatusOK, status, tc.body)
		require.Contains(t, out["error"], tc.want, tc.body)
	}
	require.False(t, closes("web", 200), "a refused request changes nothing")

	status, _ = keepalive(r.Token, `{"below":2,"seconds":5}`)
	require.Equal(t, http.StatusOK, status)
	require.True(t, closes("web", 200))
	status, out = keepalive(r.Token, `{"below":2,"seconds":0}`)
	require.Equal(t, http.StatusOK, status)
	require.EqualValues(t, 0, out["below"])
	require.False(t, closes("web", 200), "seconds 0 ends it")
}
