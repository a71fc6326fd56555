package render

import (
	"fmt"
	"io/fs"
	"maps"
	mrand "math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/berthhq/berth/common/msg"
	"github.com/berthhq/berth/common/spec"
	"github.com/berthhq/berth/internal/testrig"
	"github.com/berthhq/berth/lbagent/internal/state"
	"github.com/berthhq/berth/templates"
)

var routesOpts = func() Options {
	o := opts
	o.Dynamic = &Dynamic{LuaDir: "/STATE/lua", Snapshot: "/STATE/berth-endpoints.json", Token: "/STATE/berth-control.token", Routes: true}
	return o
}()

// TestRoutedApps: which apps the Lua router routes, and which are rendered
// and why.
func TestRoutedApps(t *testing.T) {
	t.Parallel()
	with := func(name string, change func(*state.App), hosts ...string) state.App {
		a := app(name, 1, hosts...)
		if change != nil {
			change(&a)
		}
		return a
	}
	plain := with("plain", nil, "plain.test")
	for _, c := range []struct {
		name   string
		apps   []state.App
		routed []string
	}{
		{"hosts and paths", []state.App{plain, with("paths", func(a *state.App) { a.Spec.Routing.Paths = []string{"/a", "/b/"} }, "p.test", "q.test")}, []string{"paths", "plain"}},
		{"tls", []state.App{plain, with("tls", func(a *state.App) { a.Spec.Routing.TLS = &spec.TLS{SelfSigned: true} }, "tls.test")}, []string{"plain"}},
		{"rules", []state.App{plain, with("rules", func(a *state.App) {
			a.Spec.Routing.Rules = []spec.Rule{{Path: "/r", ResponseHeaders: map[string]string{"X-R": "1"}}, {Path: "^/x$", Match: spec.MatchRegex, Headers: map[string]string{"X-Canary": "on"}}}
		}, "r.test")}, []string{"plain", "rules"}},
		{"a rate limit", []state.App{plain, with("limited", func(a *state.App) {
			a.Spec.Routing.Rules = []spec.Rule{{Path: "/r", RateLimit: &spec.RateLimit{RPS: 5}}}
		}, "r.test")}, []string{"limited", "plain"}},
		{"a routed split and its target", []state.App{plain, with("owner", func(a *state.App) {
			a.Spec.Routing.Rules = []spec.Rule{{Path: "/s", Split: []spec.Split{{App: "target", Weight: 5}}}}
		}, "o.test"), with("target", nil, "t.test")}, []string{"owner", "plain", "target"}},
		{"hash", []state.App{plain, with("hash", func(a *state.App) { a.Spec.LB.Method, a.Spec.LB.HashKey = spec.LBHash, "$uri" }, "h.test")}, []string{"hash", "plain"}},
		{"no keepalive", []state.App{plain, with("ka", func(a *state.App) { a.Spec.LB.Keepalive = 0 }, "k.test")}, []string{"plain"}},
		{"body size", []state.App{plain, with("body", func(a *state.App) { a.Spec.LB.ClientMaxBodySize = 2 << 20 }, "b.test")}, []string{"body", "plain"}},
		{"wildcard and the hosts it covers", []state.App{plain, with("wild", nil, "*.w.test"), with("sub", nil, "a.b.w.test"), with("apex", nil, "w.test")}, []string{"apex", "plain", "sub", "wild"}},
		{"a rendered wildcard and the hosts it covers", []state.App{plain, with("wild", func(a *state.App) { a.Spec.Routing.TLS = &spec.TLS{SelfSigned: true} }, "*.w.test"),
			with("sub", nil, "a.b.w.test"), with("apex", nil, "w.test")}, []string{"apex", "plain"}},
		{"a rendered split's target", []state.App{plain, with("owner", func(a *state.App) {
			a.Spec.Routing.Rules = []spec.Rule{{Path: "/s", Split: []spec.Split{{App: "target", Weight: 5}}}}
			a.Spec.LB.Keepalive = 0
		}, "o.test"), with("target", nil, "t.test")}, []string{"plain"}},
		{"a host shared with a rendered app", []state.App{plain, with("owner", func(a *state.App) {
			a.Spec.CreatedAt = time.Unix(1, 0)
			a.Spec.Routing.ShareWith = []spec.Share{{App: "member"}}
		}, "s.test", "own.test"), with("member", func(a *state.App) {
			a.Spec.CreatedAt = time.Unix(2, 0)
			a.Spec.Routing.Paths = nil
			a.Spec.Routing.Rules = []spec.Rule{{Path: "/m"}}
			a.Spec.LB.Keepalive = 0
		}, "s.test"), with("elsewhere", nil, "own.test", "else.test")}, []string{"plain"}},
		{"a conflict", []state.App{plain, with("first", func(a *state.App) { a.Spec.CreatedAt = time.Unix(1, 0) }, "c.test"),
			// second gets nothing on c.test, so first routes it alone; second is
			// rendered (its upstream), so that a build reports its conflict.
			with("second", func(a *state.App) { a.Spec.CreatedAt = time.Unix(2, 0) }, "c.test")}, []string{"first", "plain"}},
		{"a location conflict", []state.App{plain, with("first", func(a *state.App) {
			a.Spec.CreatedAt = time.Unix(1, 0)
			a.Spec.Routing.ShareWith = []spec.Share{{App: "second"}}
		}, "c.test"), with("second", func(a *state.App) { a.Spec.CreatedAt = time.Unix(2, 0) }, "c.test")}, []string{"plain"}},
		{"more routes than a push carries", []state.App{plain, with("many", func(a *state.App) {
			a.Spec.Routing.Paths = nil
			for i := range 101 {
				a.Spec.Routing.Paths = append(a.Spec.Routing.Paths, fmt.Sprintf("/p%d", i))
			}
			for i := range 100 {
				a.Spec.Routing.Hosts = append(a.Spec.Routing.Hosts, fmt.Sprintf("h%d.test", i))
			}
		})}, []string{"plain"}},
		{"the default server rendered", []state.App{plain, with("nohost", func(a *state.App) { a.Spec.LB.Keepalive = 0 })}, nil},
		{"the default server routed", []state.App{plain, with("nohost", nil)}, []string{"nohost", "plain"}},
	} {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			got := RoutedApps(state.Snapshot{Apps: c.apps}, routesOpts)
			var names []string
			for n := range got {
				names = append(names, n)
			}
			require.ElementsMatch(t, c.routed, names)
			memo := routesOpts
			memo.Claims = &ClaimsMemo{}
			for range 2 { // computed, then remembered: the same answer
				require.Equal(t, got, RoutedApps(state.Snapshot{Apps: c.apps}, memo))
				dm, _ := Layout(state.Snapshot{Apps: c.apps}, 1, memo)
				dp, _ := Layout(state.Snapshot{Apps: c.apps}, 1, routesOpts)
				require.Equal(t, dp.Comparable(), dm.Comparable())
			}
			d, _ := Layout(state.Snapshot{Apps: c.apps}, 1, routesOpts)
			require.Equal(t, c.routed != nil, d.Router)
			for _, u := range d.Upstreams {
				require.NotContains(t, c.routed, u.App, "a routed app has no upstream of its own")
			}
			for _, s := range d.Servers {
				for _, l := range s.Locations {
					require.NotContains(t, c.routed, l.App, "a routed app has no location")
				}
			}
		})
	}
	got := RoutedApps(state.Snapshot{Apps: []state.App{with("paths", func(a *state.App) { a.Spec.Routing.Paths = []string{"/a", "/"} }, "P.test")}}, routesOpts)
	require.Equal(t, []HostRoute{{Host: "p.test", Location: "= /a"}, {Host: "p.test", Location: "/a/"}, {Host: "p.test", Location: "/"}}, got["paths"], "the route table's locations, by host key")
	got = RoutedApps(state.Snapshot{Apps: []state.App{
		with("owner", func(a *state.App) {
			a.Spec.CreatedAt = time.Unix(1, 0)
			a.Spec.Routing.ShareWith = []spec.Share{{App: "member"}}
		}, "s.test"),
		with("member", func(a *state.App) {
			a.Spec.CreatedAt = time.Unix(2, 0)
			a.Spec.Routing.Paths = nil
			a.Spec.Routing.Rules = []spec.Rule{{Path: "/m", Match: spec.MatchExact, Headers: map[string]string{"X-Canary": "on"}}, {Path: "^/m/[0-9]+$", Match: spec.MatchRegex}}
		}, "s.test"),
	}}, routesOpts)
	require.Equal(t, []HostRoute{{Host: "s.test", Location: "/"}}, got["owner"])
	require.Equal(t, []HostRoute{{Host: "s.test", Location: "= /m", Order: 1, Rule: 1}, {Host: "s.test", Location: "~ ^/m/[0-9]+$", Order: 1, Rule: 2}}, got["member"],
		"a member's routes carry its place on the host and their rule")
	require.Nil(t, RoutedApps(state.Snapshot{Apps: []state.App{plain}}, opts), "off without --dynamic-routes")
}

// TestGoldenDynamicRoutes: routed apps leave the config; the default
// server has the router's location (and its closer); rendered apps are
// as before; nginx accepts it.
func TestGoldenDynamicRoutes(t *testing.T) {
	t.Parallel()
	if _, err := os.Stat(filepath.Join(luaModules, "ngx_http_lua_module.so")); err != nil {
		if testrig.InCI() {
			t.Fatalf("nginx's Lua module is missing from %s", luaModules)
		}
		t.Skipf("nginx's Lua module is missing: apt-get install libnginx-mod-http-lua lua-resty-core lua-cjson")
	}
	r, err := Load(templates.FS)
	require.NoError(t, err)
	stateDir := t.TempDir()
	lua := filepath.Join(stateDir, "lua")
	src, err := fs.ReadFile(templates.FS, "lua/berth/dynamic.lua")
	require.NoError(t, err)
	require.NoError(t, os.MkdirAll(filepath.Join(lua, "berth"), 0o755))
	require.NoError(t, os.WriteFile(filepath.Join(lua, "berth", "dynamic.lua"), src, 0o644))
	o := opts
	o.Dynamic = &Dynamic{LuaDir: lua, Snapshot: filepath.Join(stateDir, "berth-endpoints.json"), Token: filepath.Join(stateDir, "berth-control.token"),
		ModulesDir: luaModules, Drain: true, Routes: true}
	all := scenarios(t, certDir(t))
	snap := all["rules"]
	snap.Apps = append(snap.Apps, app("web", 2, "web.example.com"), app("api", 0))
	// shop's lb.keepalive 0 keeps it rendered, and with it its host's
	// member (legacy-api) and its split's target (shop-beta): the mix of
	// both kinds.
	for i := range snap.Apps {
		if a := &snap.Apps[i]; a.Spec.Name == "shop" {
			spec := *a.Spec
			spec.LB.Keepalive = 0
			a.Spec = &spec
		}
	}
	d, conflicts := Layout(snap, 5, o)
	require.Empty(t, conflicts)
	out, err := r.Render(d, true)
	require.NoError(t, err)
	shown := strings.ReplaceAll(string(out), stateDir, "/STATE")
	golden := filepath.Join("testdata", "dynamic-routes.conf")
	if *update {
		require.NoError(t, os.WriteFile(golden, []byte(shown), 0o644))
	}
	want, err := os.ReadFile(golden)
	require.NoError(t, err)
	require.Equal(t, string(want), shown)
	require.NotContains(t, shown, "web.example.com")
	require.NotContains(t, shown, "berth_api")
	require.Contains(t, shown, "berth_shop")
	requireNginxAccepts(t, testrig.NginxBin(t), out)

	// Without the drain: no closer; nginx accepts it.
	nd := *o.Dynamic
	nd.Drain = false
	o.Dynamic = &nd
	d, _ = Layout(snap, 5, o)
	out, err = r.Render(d, true)
	require.NoError(t, err)
	require.NotContains(t, string(out), "berth_routed_close")
	requireNginxAccepts(t, testrig.NginxBin(t), out)
}

// TestClaimsMemo: the table is computed again only for other records.
func TestClaimsMemo(t *testing.T) {
	t.Parallel()
	m := &ClaimsMemo{}
	a, b := app("a", 1, "a.test"), app("b", 1, "b.test")
	t1, r1 := m.of(state.Snapshot{Apps: []state.App{a, b}}, true)
	t2, r2 := m.of(state.Snapshot{Apps: []state.App{a, b}}, true)
	require.Same(t, t1, t2, "the same records: remembered")
	require.Equal(t, r1, r2)
	t3, r3 := m.of(state.Snapshot{Apps: []state.App{a}}, true)
	require.NotSame(t, t1, t3, "other records: computed again")
	require.Equal(t, map[string]bool{"a": true}, r3)
	b2 := b
	spec2 := *b.Spec
	b2.Spec = &spec2
	t4, _ := m.of(state.Snapshot{Apps: []state.App{a, b2}}, true)
	require.NotSame(t, t1, t4, "a new record of b: computed again")
	_, off := m.of(state.Snapshot{Apps: []state.App{a, b2}}, false)
	require.Nil(t, off, "without routes: none routed")
}

// TestClaimsMemoUpdatesAsClaims: the memo updates its table with the
// records created, changed and removed since the last one
// (spec.RouteTable.Update) and gets what claimsOf gets, with the apps
// the router routes, through random runs; an unsorted snapshot or more
// changes than maxUpdate compute it again.
func TestClaimsMemoUpdatesAsClaims(t *testing.T) {
	t.Parallel()
	rng := mrand.New(mrand.NewPCG(5, 6))
	hosts := []string{"a.test", "b.test", "c.test", "*.c.test", "x.c.test"}
	specs := map[string]*msg.App{}
	record := func(name string) *msg.App {
		var hs []string
		for range rng.IntN(3) {
			if h := hosts[rng.IntN(len(hosts))]; !slices.Contains(hs, h) {
				hs = append(hs, h)
			}
		}
		a := app(name, 0, hs...).Spec
		a.Routing.Paths = [][]string{{"/"}, {"/x"}, {"/", "/y"}}[rng.IntN(3)]
		if rng.IntN(3) == 0 {
			a.Routing.ShareWith = []spec.Share{{App: fmt.Sprintf("app-%d", rng.IntN(12))}}
		}
		a.CreatedAt = time.Date(2026, 1, 1, 0, rng.IntN(3), 0, 0, time.UTC)
		return a
	}
	m := &ClaimsMemo{}
	for step := range 300 {
		n := 1 + rng.IntN(3)
		if rng.IntN(30) == 0 {
			n = maxUpdate + 5
		}
		for range n {
			name := fmt.Sprintf("app-%d", rng.IntN(12+maxUpdate))
			if rng.IntN(4) == 0 {
				delete(specs, name)
			} else {
				specs[name] = record(name)
			}
		}
		var snap state.Snapshot
		for _, name := range slices.Sorted(maps.Keys(specs)) {
			snap.Apps = append(snap.Apps, state.App{Spec: specs[name]})
		}
		if rng.IntN(20) == 0 && len(snap.Apps) > 1 {
			snap.Apps[0], snap.Apps[1] = snap.Apps[1], snap.Apps[0]
		}
		got, routed := m.of(snap, true)
		want := claimsOf(snap)
		require.Equal(t, want.Hosts(), got.Hosts(), "step %d", step)
		for _, a := range snap.Apps {
			require.Equal(t, want.Conflicts(a.Spec.Name), got.Conflicts(a.Spec.Name), "step %d, app %s", step, a.Spec.Name)
		}
		require.Equal(t, want.Conflicted(), got.Conflicted(), "step %d", step)
		require.Equal(t, routedApps(snap, want), routed, "step %d", step)
	}
}
