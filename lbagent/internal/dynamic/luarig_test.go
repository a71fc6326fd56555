package dynamic

// The rig of the Lua balancer tests: a private nginx with the Lua module
// that loads templates/lua/berth/dynamic.lua from this repository and
// follows the directives lbagent renders in dynamic mode, Go backends that
// answer their own name, and a client for the control endpoint.

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/berthhq/berth/internal/testrig"
)

// luaModulesDir is where Debian's libnginx-mod-http-lua puts the modules.
const luaModulesDir = "/usr/lib/nginx/modules"

const luaInstallHint = "apt-get install nginx libnginx-mod-http-lua lua-resty-core lua-cjson"

// requireLua stops the test (skip, or fail in CI) unless nginx, the Lua
// module, lua-resty-core and lua-cjson are installed.
func requireLua(t testing.TB) {
	t.Helper()
	testrig.NginxBin(t)
	for _, f := range []string{"ndk_http_module.so", "ngx_http_lua_module.so"} {
		_, err := os.Stat(filepath.Join(luaModulesDir, f))
		testrig.Require(t, err == nil, "nginx module "+f+" not found in "+luaModulesDir, luaInstallHint)
	}
	_, err := os.Stat("/usr/share/lua/5.1/ngx/balancer.lua")
	testrig.Require(t, err == nil, "lua-resty-core (ngx.balancer) not found", luaInstallHint)
	cjson, _ := filepath.Glob("/usr/lib/*/lua/5.1/cjson.so")
	testrig.Require(t, len(cjson) > 0, "lua-cjson (cjson.so for Lua 5.1) not found", luaInstallHint)
}

// luaDir is this repository's templates/lua, the lua_package_path root.
func luaDir(t testing.TB) string {
	t.Helper()
	_, file, _, ok := runtime.Caller(0)
	require.True(t, ok)
	dir, err := filepath.Abs(filepath.Join(filepath.Dir(file), "..", "..", "..", "templates", "lua"))
	require.NoError(t, err)
	_, err = os.Stat(filepath.Join(dir, "berth", "dynamic.lua"))
	require.NoError(t, err)
	return dir
}

// rigApp is one app of the rig's nginx config.
type rigApp struct {
	Name      string
	Tries     int    // proxy_next_upstream_tries
	Keepalive int    // upstream keepalive, 0: none
	HashKey   string // $berth_hash_key expression, for method hash
}

// luaRig is a private nginx in dynamic upstream mode. Traffic for app X is
// served at http://<Traffic>/X/…; the control endpoint is on Status.
type luaRig struct {
	t       testing.TB
	nginx   *testrig.Nginx
	Traffic string
	Status  string
	Token   string
	// Snapshot and TokenFile are the files init reads.
	Snapshot, TokenFile string
	// Generation is the config generation init is told (1 unless set
	// before Start).
	Generation uint64
	client     *http.Client
}

// newLuaRig writes the config and token of a rig for apps; nginx starts
// with Start, so a test can write the snapshot first.
func newLuaRig(t testing.TB, apps ...rigApp) *luaRig {
	t.Helper()
	requireLua(t)
	n := testrig.NewNginx(t)
	r := &luaRig{
		t: t, nginx: n,
		Traffic:    fmt.Sprintf("127.0.0.1:%d", testrig.FreePort(t)),
		Status:     fmt.Sprintf("127.0.0.1:%d", testrig.FreePort(t)),
		Token:      "tok-" + strconv.FormatInt(time.Now().UnixNano(), 36),
		Snapshot:   filepath.Join(n.Prefix, "conf", "berth-endpoints.json"),
		TokenFile:  filepath.Join(n.Prefix, "conf", "berth-control.token"),
		Generation: 1,
		client: &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
			MaxIdleConnsPerHost: 64, DisableCompression: true,
		}},
	}
	require.NoError(t, os.WriteFile(r.TokenFile, []byte(r.Token+"\n"), 0o600))

	var b strings.Builder
	fmt.Fprintf(&b, `    lua_package_path "%s/?.lua;;";
    lua_shared_dict berth_endpoints 32m;
    init_by_lua_block { require("berth.dynamic").init(%q, %q, %d) }
    proxy_http_version 1.1;
    proxy_set_header Connection "";
    proxy_next_upstream error timeout http_502 http_503;
    proxy_connect_timeout 2s;
    proxy_read_timeout 30s;
`, luaDir(t), r.Snapshot, r.TokenFile, r.Generation)
	for _, a := range apps {
		fmt.Fprintf(&b, `    upstream app_%s {
        server 0.0.0.1:1;
        balancer_by_lua_block { require("berth.dynamic").balance(%q, %d) }
`, a.Name, a.Name, a.Tries)
		if a.Keepalive > 0 {
			fmt.Fprintf(&b, "        keepalive %d;\n", a.Keepalive)
		}
		b.WriteString("    }\n")
	}
	fmt.Fprintf(&b, "    server {\n        listen %s;\n        add_header X-Upstream $upstream_addr always;\n        set $berth_closing \"\";\n", r.Traffic)
	// route is an app's location, or its closer (as lbagent renders it:
	// the same, with keepalive_timeout 0).
	route := func(a rigApp, location, extra string) {
		fmt.Fprintf(&b, "        location %s {\n%s            set $berth_app %q;\n            set $berth_tries %d;\n", location, extra, a.Name, a.Tries)
		if a.HashKey != "" {
			fmt.Fprintf(&b, "            set $berth_hash_key %s;\n", a.HashKey)
		}
		fmt.Fprintf(&b, `            access_by_lua_block { require("berth.dynamic").access(%q, "@close_%s") }
            log_by_lua_block { require("berth.dynamic").log(%q) }
            proxy_pass http://app_%s;
            proxy_next_upstream_tries %d;
        }
`, a.Name, a.Name, a.Name, a.Name, a.Tries)
	}
	for _, a := range apps {
		route(a, "/"+a.Name+"/", "")
		route(a, "@close_"+a.Name, "            keepalive_timeout 0;\n            set $berth_closing 1;\n")
	}
	fmt.Fprintf(&b, `        location / { return 404; }
    }
    server {
        listen %s;
        access_log off;
        location = /berth/endpoints {
            client_max_body_size 64m;
            client_body_buffer_size 64m;
            content_by_lua_block { require("berth.dynamic").control() }
        }
        location = /berth/keepalive {
            client_max_body_size 4k;
            content_by_lua_block { require("berth.dynamic").keepalive() }
        }
        location / { return 404; }
    }
`, r.Status)
	conf := "load_module " + luaModulesDir + "/ndk_http_module.so;\n" +
		"load_module " + luaModulesDir + "/ngx_http_lua_module.so;\n" +
		strings.Replace(testrig.MainConfig(b.String()), fmt.Sprintf("worker_processes %d;", testrig.MainConfigWorkers), fmt.Sprintf("worker_processes %d;", rigWorkers), 1)
	n.WriteConfig(conf)
	return r
}

// rigWorkers is the rig's nginx worker_processes: two, so that a push
// must reach every worker's copy of the dict.
const rigWorkers = 2

// Start starts nginx and waits until the status listener answers and
// every worker runs: the master forks them one by one, and beside a busy
// CPU the second can come well after the first answers (a test that read
// the workers' pids then saw one).
func (r *luaRig) Start() {
	r.t.Helper()
	r.nginx.Start()
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		if c, err := net.Dial("tcp", r.Status); err == nil {
			_ = c.Close()
			break
		}
		time.Sleep(5 * time.Millisecond) // the poll interval
	}
	for time.Now().Before(deadline) {
		if r.nginx.AcceptingWorkers() == rigWorkers {
			return
		}
		time.Sleep(5 * time.Millisecond) // the poll interval
	}
	r.t.Fatalf("nginx status listener %s and %d workers not up within 10s: %s", r.Status, rigWorkers, r.nginx.Log())
}

// Log returns nginx's logs, for failure messages.
func (r *luaRig) Log() string { return r.nginx.Log() }

// ErrorLog returns nginx's error log.
func (r *luaRig) ErrorLog() string {
	data, _ := os.ReadFile(filepath.Join(r.nginx.Prefix, "logs", "error.log"))
	return string(data)
}

// PIDs returns the master's pid and its workers' pids, sorted as the
// kernel lists them.
func (r *luaRig) PIDs() (master int, workers []string) {
	r.t.Helper()
	master = r.nginx.PID()
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%d/children", master, master))
	require.NoError(r.t, err)
	return master, strings.Fields(string(data))
}

// rigServer is one server of a pushed app set; rigSet one app; rigBatch a
// push. They follow the contract's JSON, not lbagent's Go types, so these
// tests check the Lua side on its own.
type rigServer struct {
	Address string `json:"address"`
	Weight  int    `json:"weight,omitempty"`
	Backup  bool   `json:"backup,omitempty"`
}

type rigSet struct {
	Method      string      `json:"method"`
	MaxFails    int         `json:"max_fails"`
	FailTimeout float64     `json:"fail_timeout"`
	Servers     []rigServer `json:"servers"`
}

type rigBatch struct {
	Version uint64             `json:"version"`
	Full    bool               `json:"full"`
	Apps    map[string]*rigSet `json:"apps"`
}

// rigSetOf returns an app set of method over addrs, weight 1 each.
func rigSetOf(method string, addrs ...string) *rigSet {
	s := &rigSet{Method: method, MaxFails: 1, FailTimeout: 10, Servers: []rigServer{}}
	for _, a := range addrs {
		s.Servers = append(s.Servers, rigServer{Address: a, Weight: 1})
	}
	return s
}

// control sends a request to the control endpoint with token and returns
// the status and the decoded JSON body.
func (r *luaRig) control(method, token string, body []byte) (int, map[string]any) {
	r.t.Helper()
	req, err := http.NewRequest(method, "http://"+r.Status+"/berth/endpoints", bytes.NewReader(body))
	require.NoError(r.t, err)
	if token != "" {
		req.Header.Set("X-Berth-Token", token)
	}
	resp, err := r.client.Do(req)
	require.NoError(r.t, err)
	defer resp.Body.Close()
	data, err := io.ReadAll(resp.Body)
	require.NoError(r.t, err)
	var out map[string]any
	require.NoError(r.t, json.Unmarshal(data, &out), "control answered %d %q", resp.StatusCode, data)
	return resp.StatusCode, out
}

// Push posts b and requires a 200.
func (r *luaRig) Push(b rigBatch) {
	r.t.Helper()
	status, out := r.PushRaw(mustJSON(r.t, b))
	require.Equal(r.t, http.StatusOK, status, "push version %d: %v\n%s", b.Version, out, r.Log())
	require.EqualValues(r.t, b.Version, out["version"])
}

// PushRaw posts body with the right token.
func (r *luaRig) PushRaw(body []byte) (int, map[string]any) {
	r.t.Helper()
	return r.control(http.MethodPost, r.Token, body)
}

// Version returns the installed version and app count.
func (r *luaRig) Version() (version, apps uint64) {
	r.t.Helper()
	status, out := r.control(http.MethodGet, r.Token, nil)
	require.Equal(r.t, http.StatusOK, status, "%v", out)
	return uint64(out["version"].(float64)), uint64(out["apps"].(float64))
}

// Get sends GET /<app>/<path> and returns the status, body and the
// $upstream_addr nginx tried.
func (r *luaRig) Get(app, path string, header http.Header) (int, string, string) {
	r.t.Helper()
	status, body, up, err := r.get(r.client, app, path, header)
	require.NoError(r.t, err)
	return status, body, up
}

func (r *luaRig) get(c *http.Client, app, path string, header http.Header) (int, string, string, error) {
	req, err := http.NewRequest(http.MethodGet, "http://"+r.Traffic+"/"+app+"/"+path, nil)
	if err != nil {
		return 0, "", "", err
	}
	for k, v := range header {
		req.Header[k] = v
	}
	resp, err := c.Do(req)
	if err != nil {
		return 0, "", "", err
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(resp.Body)
	return resp.StatusCode, string(data), resp.Header.Get("X-Upstream"), err
}

// Spread sends n GETs to app from workers goroutines and counts the
// answers by body; any error or non-200 fails the test.
func (r *luaRig) Spread(app string, n, workers int) map[string]int {
	r.t.Helper()
	var (
		mu     sync.Mutex
		counts = map[string]int{}
		next   atomic.Int64
		wg     sync.WaitGroup
		errs   = make(chan error, workers)
	)
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for next.Add(1) <= int64(n) {
				status, body, _, err := r.get(r.client, app, "", nil)
				if err == nil && status != http.StatusOK {
					err = fmt.Errorf("status %d: %s", status, body)
				}
				if err != nil {
					errs <- err
					return
				}
				mu.Lock()
				counts[body]++
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		require.NoError(r.t, err, r.Log())
	}
	return counts
}

func mustJSON(t testing.TB, v any) []byte {
	t.Helper()
	b, err := json.Marshal(v)
	require.NoError(t, err)
	return b
}

// backend is a Go HTTP server on 127.0.0.1 that answers its name, counts
// the requests and connections it accepted, and may hold requests until
// released.
type backend struct {
	Name  string
	Addr  string
	Hits  atomic.Int64
	Conns atomic.Int64
	// InFlight is the requests being served now.
	InFlight atomic.Int64
	hold     atomic.Pointer[chan struct{}]
}

func newBackend(t testing.TB, name string) *backend {
	t.Helper()
	b := &backend{Name: name}
	s := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		b.Hits.Add(1)
		b.InFlight.Add(1)
		defer b.InFlight.Add(-1)
		if ch := b.hold.Load(); ch != nil {
			<-*ch
		}
		_, _ = io.WriteString(w, b.Name)
	}))
	s.Config.ConnState = func(_ net.Conn, st http.ConnState) {
		if st == http.StateNew {
			b.Conns.Add(1)
		}
	}
	s.Start()
	t.Cleanup(func() {
		b.Release()
		s.Close()
	})
	b.Addr = strings.TrimPrefix(s.URL, "http://")
	return b
}

// Hold makes requests wait until Release.
func (b *backend) Hold() {
	ch := make(chan struct{})
	b.hold.Store(&ch)
}

// Release lets held requests finish.
func (b *backend) Release() {
	if ch := b.hold.Swap(nil); ch != nil {
		close(*ch)
	}
}

// deadAddr returns a 127.0.0.1 address where nothing listens.
func deadAddr(t testing.TB) string {
	t.Helper()
	return fmt.Sprintf("127.0.0.1:%d", testrig.FreePort(t))
}
