package dynamic

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"math/rand/v2"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"testing/fstest"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/berthhq/berth/common/msg"
	"github.com/berthhq/berth/common/spec"
	"github.com/berthhq/berth/lbagent/internal/render"
	"github.com/berthhq/berth/lbagent/internal/state"
)

func snapOf(servers map[string][]state.Server) state.Snapshot {
	var s state.Snapshot
	for name, ss := range servers {
		s.Apps = append(s.Apps, state.App{Spec: &msg.App{Name: name, LB: spec.LB{Method: spec.LBLeastConn, MaxFails: 2, FailTimeout: spec.Duration(1500 * time.Millisecond)}}, Servers: ss})
	}
	return s
}

func TestOfAndDiff(t *testing.T) {
	t.Parallel()
	a := Of(snapOf(map[string][]state.Server{
		"web": {{Address: "127.0.0.1:1", Weight: 3}, {Address: "127.0.0.1:2", Weight: 0, Backup: true}},
		"api": nil,
	}))
	require.Equal(t, &Endpoints{Method: spec.LBLeastConn, MaxFails: 2, FailTimeout: 1.5,
		Servers: []Server{{Address: "127.0.0.1:1", Weight: 3}, {Address: "127.0.0.1:2", Weight: 1, Backup: true}}}, a["web"])
	require.Equal(t, []Server{}, a["api"].Servers, "no servers is an empty set, not a missing app")

	b := Of(snapOf(map[string][]state.Server{
		"web": {{Address: "127.0.0.1:1", Weight: 3}, {Address: "127.0.0.1:2", Weight: 0, Backup: true}},
		"new": {{Address: "127.0.0.1:3", Weight: 1}},
	}))
	require.Nil(t, Diff(a, a), "nothing changed")
	d := Diff(a, b)
	require.Len(t, d, 2)
	require.Nil(t, d["api"], "gone")
	require.Contains(t, d, "api")
	require.Equal(t, b["new"], d["new"])
	require.NotContains(t, d, "web", "unchanged apps are not pushed")
}

// control is a fake control endpoint that keeps a version and checks the token.
type control struct {
	mu       sync.Mutex
	version  uint64
	readback uint64 // when set, GET and POST report this instead
	batches  []Batch
}

func (c *control) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if r.Header.Get("X-Berth-Token") != strings.Repeat("a", 64) {
		w.WriteHeader(http.StatusForbidden)
		_, _ = io.WriteString(w, `{"error":"forbidden"}`)
		return
	}
	if r.Method == http.MethodGet {
		v := c.version
		if c.readback != 0 {
			v = c.readback
		}
		_ = json.NewEncoder(w).Encode(map[string]uint64{"version": v})
		return
	}
	var b Batch
	if err := json.NewDecoder(r.Body).Decode(&b); err != nil {
		w.WriteHeader(http.StatusBadRequest)
		_, _ = io.WriteString(w, `{"error":"bad json"}`)
		return
	}
	if b.Version <= c.version {
		w.WriteHeader(http.StatusConflict)
		_ = json.NewEncoder(w).Encode(map[string]uint64{"version": c.version})
		return
	}
	c.version = b.Version
	c.batches = append(c.batches, b)
	v := b.Version
	if c.readback != 0 {
		v = c.readback
	}
	_ = json.NewEncoder(w).Encode(map[string]uint64{"version": v})
}

func TestClientPushReadsBack(t *testing.T) {
	t.Parallel()
	ctl := &control{version: 5}
	srv := httptest.NewServer(ctl)
	t.Cleanup(srv.Close)
	c := NewClient(strings.TrimPrefix(srv.URL, "http://"), strings.Repeat("a", 64))
	ctx := context.Background()

	v, err := c.Version(ctx)
	require.NoError(t, err)
	require.Equal(t, uint64(5), v)

	got, err := c.Push(ctx, Batch{Version: 6, Apps: map[string]*Endpoints{"web": {Method: "round_robin", Servers: []Server{}}}})
	require.NoError(t, err)
	require.Equal(t, uint64(6), got)

	_, err = c.Push(ctx, Batch{Version: 6})
	var stale *StaleError
	require.ErrorAs(t, err, &stale)
	require.ErrorIs(t, err, ErrStale)
	require.Equal(t, uint64(6), stale.Installed)

	ctl.mu.Lock()
	ctl.readback = 3
	ctl.mu.Unlock()
	_, err = c.Push(ctx, Batch{Version: 7})
	require.ErrorContains(t, err, "nginx reports 3", "a push is only done once nginx reports it installed")

	bad := NewClient(strings.TrimPrefix(srv.URL, "http://"), "wrong")
	_, err = bad.Version(ctx)
	require.ErrorContains(t, err, "403")
}

func TestSnapshotTokenAndLua(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	path := filepath.Join(dir, "berth-endpoints.json")
	require.Zero(t, ReadSnapshotVersion(path))
	require.NoError(t, WriteSnapshot(path, Batch{Version: 9, Apps: map[string]*Endpoints{"web": {Method: "hash", Servers: []Server{}}}}))
	require.Equal(t, uint64(9), ReadSnapshotVersion(path))
	var b Batch
	raw, err := os.ReadFile(path)
	require.NoError(t, err)
	require.NoError(t, json.Unmarshal(raw, &b))
	require.True(t, b.Full, "a snapshot is a full batch")

	tokenPath := filepath.Join(dir, "token")
	tok, err := EnsureToken(tokenPath)
	require.NoError(t, err)
	require.Len(t, tok, 64)
	st, err := os.Stat(tokenPath)
	require.NoError(t, err)
	require.Equal(t, os.FileMode(0o600), st.Mode().Perm())
	again, err := EnsureToken(tokenPath)
	require.NoError(t, err)
	require.Equal(t, tok, again, "kept across restarts")

	lua := filepath.Join(dir, "lua")
	require.NoError(t, InstallLua(fstest.MapFS{LuaFile: {Data: []byte("return {}")}}, lua))
	got, err := os.ReadFile(filepath.Join(lua, "berth", "dynamic.lua"))
	require.NoError(t, err)
	require.Equal(t, "return {}", string(got))
	require.Error(t, InstallLua(fstest.MapFS{}, lua))
}

type tester struct{ err error }

func (t tester) Test(context.Context, string, string) error { return t.err }

func TestChoose(t *testing.T) {
	t.Parallel()
	mods := t.TempDir()
	for _, m := range []string{"ndk_http_module.so", "ngx_http_lua_module.so"} {
		require.NoError(t, os.WriteFile(filepath.Join(mods, m), nil, 0o644))
	}
	ctx := context.Background()
	tests := []struct {
		name     string
		mode     string
		main     bool
		modules  string
		probe    error
		want     bool
		contains string
	}{
		{"given dynamic", ModeDynamic, false, "/nowhere", nil, true, "--upstream-mode dynamic"},
		{"given reload", ModeReload, true, mods, nil, false, "--upstream-mode reload"},
		{"auto with the module", ModeAuto, true, mods, nil, true, "Lua module"},
		{"auto in include mode", ModeAuto, false, mods, nil, false, "--conf-dir"},
		{"auto without the module", ModeAuto, true, t.TempDir(), nil, false, "libnginx-mod-http-lua"},
		{"auto when nginx refuses it", ModeAuto, true, mods, errors.New("module is not binary compatible"), false, "not binary compatible"},
		{"auto with the module compiled in (OpenResty)", ModeAuto, true, "", nil, true, "Lua module"},
		{"auto, compiled in but nginx has no Lua", ModeAuto, true, "", errors.New(`unknown directive "lua_shared_dict"`), false, "lua_shared_dict"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			got, why := Choose(ctx, tt.mode, tt.main, tt.modules, tester{tt.probe}, t.TempDir())
			require.Equal(t, tt.want, got, why)
			require.Contains(t, why, tt.contains)
		})
	}
}

func TestSnapshotWriterKeepsTheNewest(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "berth-endpoints.json")
	w := NewSnapshotWriter(path)
	w.Put(Batch{Version: 4})
	w.Put(Batch{Version: 3}) // older than what is queued: dropped
	require.Zero(t, ReadSnapshotVersion(path), "Put alone writes nothing: Run does")
	require.NoError(t, w.Write(Batch{Version: 2}), "a newer batch queued or on disk satisfies Write")
	require.Equal(t, uint64(4), ReadSnapshotVersion(path))

	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); w.Run(ctx, func(err error) { t.Error(err) }) }()
	for v := uint64(5); v <= 50; v++ {
		w.Put(Batch{Version: v, Apps: map[string]*Endpoints{"web": {Method: "round_robin", Servers: []Server{}}}})
	}
	cancel()
	<-done
	require.Equal(t, uint64(50), ReadSnapshotVersion(path), "the last batch is on disk when Run returns")

	bad := NewSnapshotWriter(filepath.Join(t.TempDir(), "missing", "berth-endpoints.json"))
	require.Error(t, bad.Write(Batch{Version: 1}))
}

func TestCacheReusesUnchangedSets(t *testing.T) {
	t.Parallel()
	web := &msg.App{Name: "web", LB: spec.LB{Method: "round_robin"}}
	api := &msg.App{Name: "api", LB: spec.LB{Method: "least_conn"}}
	snap := state.Snapshot{Apps: []state.App{
		{Spec: api, Servers: []state.Server{{Instance: "a", Address: "127.0.0.1:1", Weight: 1}}},
		{Spec: web, Servers: []state.Server{{Instance: "b", Address: "127.0.0.1:2", Weight: 2}}},
	}}
	var c Cache
	first := c.Of(snap)
	require.Equal(t, Of(snap), first)

	moved := state.Snapshot{Apps: []state.App{snap.Apps[0], {Spec: web, Servers: []state.Server{{Instance: "c", Address: "127.0.0.1:3", Weight: 2}}}}}
	second := c.Of(moved)
	require.Same(t, first["api"], second["api"], "an untouched app keeps its set, so Diff skips it by identity")
	require.Equal(t, map[string]*Endpoints{"web": second["web"]}, Diff(first, second))
	require.Equal(t, "127.0.0.1:3", second["web"].Servers[0].Address)

	web2 := *web
	web2.LB.Method = "hash"
	third := c.Of(state.Snapshot{Apps: []state.App{moved.Apps[0], {Spec: &web2, Servers: moved.Apps[1].Servers}}})
	require.Equal(t, "hash", third["web"].Method, "a new app record makes a new set")
}

// TestClientReplaysOnAConnectionCutByAReload: a reload closes the old
// workers' idle keep-alive connections; a push sent on one as it closes
// is sent again on a new connection instead of failing.
func TestClientReplaysOnAConnectionCutByAReload(t *testing.T) {
	t.Parallel()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	t.Cleanup(func() { ln.Close() })
	var conns atomic.Int32
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			n := conns.Add(1)
			go func() {
				defer c.Close()
				r := bufio.NewReader(c)
				for i := 0; ; i++ {
					req, err := http.ReadRequest(r)
					if err != nil {
						return
					}
					_, _ = io.Copy(io.Discard, req.Body)
					if n == 1 && i == 1 {
						// The reload: the connection is cut as the request arrives.
						c.(*net.TCPConn).SetLinger(0)
						return
					}
					body := `{"version":9}`
					fmt.Fprintf(c, "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s", len(body), body)
				}
			}()
		}
	}()
	c := NewClient(ln.Addr().String(), strings.Repeat("a", 64))
	ctx := context.Background()
	_, err = c.Push(ctx, Batch{Version: 8, Apps: map[string]*Endpoints{}})
	require.NoError(t, err)
	_, err = c.Push(ctx, Batch{Version: 9, Apps: map[string]*Endpoints{}})
	require.NoError(t, err, "sent again on a new connection")
	require.Equal(t, int32(2), conns.Load())
}

// TestSnapshotEncoderIsJSONMarshal: the snapshot file made from the
// encodings of the last write is byte for byte what json.Marshal makes,
// through a random run of changed, added and removed sets.
func TestSnapshotEncoderIsJSONMarshal(t *testing.T) {
	t.Parallel()
	rng := rand.New(rand.NewPCG(1, 2))
	var enc snapshotEncoder
	apps := map[string]*Endpoints{}
	set := func() *Endpoints {
		e := &Endpoints{Method: "round_robin", MaxFails: rng.IntN(3), FailTimeout: 1.5, Servers: []Server{}}
		for range rng.IntN(3) {
			e.Servers = append(e.Servers, Server{Address: fmt.Sprintf("127.0.0.%d:%d", rng.IntN(9), rng.IntN(9000)), Weight: 1 + rng.IntN(3)})
		}
		if rng.IntN(4) == 0 {
			e.Routes = []render.HostRoute{{Host: "<h&>.test", Location: "/"}}
		}
		return e
	}
	for v := range 300 {
		changes := 1 + rng.IntN(4)
		if rng.IntN(20) == 0 {
			changes = 100 // a burst: more new apps than are put in one by one
		}
		for range changes {
			name := fmt.Sprintf("app-%d", rng.IntN(200))
			switch rng.IntN(3) {
			case 0:
				delete(apps, name)
			default:
				apps[name] = set()
			}
		}
		next := maps.Clone(apps)
		b := Batch{Version: uint64(v + 1), Apps: next}
		got, err := enc.encode(b)
		require.NoError(t, err)
		b.Full = true
		want, err := json.Marshal(b)
		require.NoError(t, err)
		require.Equal(t, string(want), string(got), "version %d", v+1)
	}
}

// TestCacheIsOfAndDiff: through a random run of endpoint changes, record
// changes, new and removed apps, Cache.Of is Of, Cache.Diff is Diff, from
// the last result as from an older one (a push that failed), and no map
// it returned changes afterwards.
func TestCacheIsOfAndDiff(t *testing.T) {
	t.Parallel()
	t.Run("endpoints", func(t *testing.T) { t.Parallel(); testCacheIsOfAndDiff(t, false) })
	t.Run("routes", func(t *testing.T) { t.Parallel(); testCacheIsOfAndDiff(t, true) })
}

// testCacheIsOfAndDiff is TestCacheIsOfAndDiff; with routes, the apps
// are routed by the Lua router (--dynamic-routes) on a few shared hosts,
// so that a new record of one app changes the routes of others, and the
// oracle is a new cache.
func testCacheIsOfAndDiff(t *testing.T, routes bool) {
	rng := rand.New(rand.NewPCG(3, 4))
	specs := map[string]*msg.App{}
	servers := map[string][]state.Server{}
	record := func(name string) *msg.App {
		if routes {
			a := routedApp(name, int64(rng.IntN(3)), []string{"a.test", "b.test", "c.test"}[rng.IntN(3)]).Spec
			a.Routing.Paths = [][]string{{"/"}, {"/x"}, {"/", "/y"}}[rng.IntN(3)]
			if rng.IntN(3) == 0 {
				a.Routing.ShareWith = []spec.Share{{App: fmt.Sprintf("app-%02d", rng.IntN(34))}}
			}
			return a
		}
		return &msg.App{Name: name, LB: spec.LB{Method: []string{"round_robin", "least_conn"}[rng.IntN(2)], MaxFails: 1}}
	}
	o := render.Options{Dynamic: &render.Dynamic{Routes: true}}
	fresh := func(snap state.Snapshot) map[string]*Endpoints {
		if routes {
			return (&Cache{Render: &o}).Of(snap)
		}
		return Of(snap)
	}
	for i := range 30 {
		name := fmt.Sprintf("app-%02d", i)
		specs[name] = record(name)
	}
	snapshot := func() state.Snapshot {
		var s state.Snapshot
		for _, name := range slices.Sorted(maps.Keys(specs)) {
			s.Apps = append(s.Apps, state.App{Spec: specs[name], Servers: servers[name]})
		}
		return s
	}
	var c Cache
	if routes {
		c.Render = &o
	}
	type result struct {
		m    map[string]*Endpoints
		copy map[string]Endpoints
	}
	var results []result
	for step := range 400 {
		for range 1 + rng.IntN(3) {
			name := fmt.Sprintf("app-%02d", rng.IntN(34))
			switch k := rng.IntN(10); {
			case k == 0:
				delete(specs, name)
			case k == 1:
				specs[name] = record(name)
			case k == 2 && specs[name] != nil:
				same := *specs[name] // a new record, equal: the same set
				specs[name] = &same
			default:
				ss := []state.Server{}
				for j := range rng.IntN(3) {
					ss = append(ss, state.Server{Instance: fmt.Sprint(j), Address: fmt.Sprintf("127.0.0.1:%d", rng.IntN(5)), Weight: 1})
				}
				servers[name] = ss
			}
		}
		snap := snapshot()
		if rng.IntN(15) == 0 && len(snap.Apps) > 2 {
			// Out of order (no store makes one): computed again, and the
			// next one in order too.
			snap.Apps[0], snap.Apps[2] = snap.Apps[2], snap.Apps[0]
		}
		got := c.Of(snap)
		require.Equal(t, fresh(snap), got, "step %d", step)
		for _, back := range []int{1, 2, 5} {
			if len(results) >= back {
				old := results[len(results)-back].m
				require.Equal(t, Diff(old, got), c.Diff(old, got), "step %d, from %d back", step, back)
			}
		}
		require.Nil(t, c.Diff(got, got))
		cp := map[string]Endpoints{}
		for k, v := range got {
			cp[k] = *v
		}
		results = append(results, result{got, cp})
	}
	for i, r := range results {
		require.Len(t, r.m, len(r.copy), "result %d", i)
		for k, v := range r.m {
			require.Equal(t, r.copy[k], *v, "result %d, app %s", i, k)
		}
	}
}
