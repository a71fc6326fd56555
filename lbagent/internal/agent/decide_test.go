package agent

import (
	"fmt"
	"maps"
	"math/rand/v2"
	"slices"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/berthhq/berth/common/msg"
	"github.com/berthhq/berth/common/spec"
	"github.com/berthhq/berth/lbagent/internal/dynamic"
	"github.com/berthhq/berth/lbagent/internal/render"
	"github.com/berthhq/berth/lbagent/internal/state"
	"github.com/berthhq/berth/templates"
)

// renderOptions are the rigs' listeners; dyn adds dynamic mode's files.
func renderOptions(dyn bool) render.Options {
	o := render.Options{Node: "lb-test", HTTPListen: "127.0.0.1:18080", HTTPSListen: "127.0.0.1:18443", StatusListen: "127.0.0.1:18081", Main: true}
	if dyn {
		o.Dynamic = &render.Dynamic{LuaDir: "/berth/lua", Snapshot: "/berth/conf/berth-endpoints.json", Token: "/berth/conf/berth-control.token",
			ModulesDir: "/usr/lib/nginx/modules", Drain: true}
	}
	return o
}

func loadRenderer(t *testing.T) *render.Renderer {
	t.Helper()
	r, err := render.Load(templates.FS)
	require.NoError(t, err)
	return r
}

// withServers is app with a server at each address.
func withServers(app *msg.App, addrs ...string) state.App {
	a := state.App{Spec: app}
	for i, addr := range addrs {
		a.Servers = append(a.Servers, state.Server{Instance: string(rune('a' + i)), Address: addr, Weight: 1})
	}
	return a
}

// snapOf is a snapshot at rev with one instance record per server.
func snapOf(rev uint64, apps ...state.App) state.Snapshot {
	s := state.Snapshot{Apps: apps, Revision: rev}
	s.Instances = s.Servers()
	return s
}

// renderAt is snap's config at gen, as nginx would be found serving it.
func renderAt(t *testing.T, r *render.Renderer, o render.Options, snap state.Snapshot, gen uint64) []byte {
	t.Helper()
	d, _ := render.Layout(snap, gen, o)
	out, err := r.Render(d, o.Main)
	require.NoError(t, err)
	return out
}

// TestDecide: every outcome of a decision, and its reason, without nginx.
func TestDecide(t *testing.T) {
	t.Parallel()
	t0 := time.Date(2026, 1, 1, 12, 0, 0, 0, time.UTC)
	r, other := loadRenderer(t), loadRenderer(t)
	web, shop := appMsg("web", "web.test"), appMsg("shop", "shop.test")
	one := snapOf(5, withServers(web, "127.0.0.1:8001"))
	two := snapOf(6, withServers(web, "127.0.0.1:8001", "127.0.0.1:8002"))
	emptied := snapOf(7, state.App{Spec: web})
	stopped := emptied
	stopped.Instances = 1 // a record says why: the scheduler stopped it

	// bad was served at generation 1, then refused at 2: its last good
	// record stands in. fixed is a generation 3 that renders as that in
	// dynamic mode.
	bad, broken, fixed := appMsg("bad", "bad.test"), appMsg("bad", "bad.test"), appMsg("bad", "bad.test")
	broken.Generation, fixed.Generation = 2, 3
	broken.Routing.TLS = &spec.TLS{Certificate: "/nonexistent/bad.crt", Key: "/nonexistent/bad.key"}
	refused := map[string]Refusal{"bad": {Generation: 2, Why: "nginx -t: no certificate", At: t0.Add(-10 * time.Minute), Spec: bad}}
	standing := snapOf(8, withServers(bad, "127.0.0.1:9001"), withServers(web, "127.0.0.1:8001"))
	refusedSnap := snapOf(9, withServers(broken, "127.0.0.1:9001"), withServers(web, "127.0.0.1:8001"))

	served := func(o render.Options, dyn bool, snap state.Snapshot) Served {
		var eps map[string]*dynamic.Endpoints
		if dyn {
			eps = dynamic.Of(snap)
		}
		return newServed(3, r, snap, snap, eps, o)
	}
	tests := []struct {
		name   string
		dyn    bool
		in     func(in *Input, o render.Options)
		want   Action
		reason string
		check  func(t *testing.T, d Decision)
	}{
		{name: "nothing served, and nginx reports no generation", in: func(in *Input, _ render.Options) {
			in.Snapshot = one
		}, want: Reload, reason: "no generation to adopt", check: func(t *testing.T, d Decision) {
			require.Equal(t, uint64(1), d.Generation)
		}},
		{name: "nothing served, and nginx serves this state's config", in: func(in *Input, o render.Options) {
			in.Snapshot, in.Found = one, &Found{Generation: 7, Config: renderAt(t, r, o, one, 7)}
		}, want: Adopt, reason: "generation 7", check: func(t *testing.T, d Decision) {
			require.Equal(t, uint64(7), d.Generation)
			require.Nil(t, d.Changed, "reload mode pushes nothing")
		}},
		{name: "nothing served, and nginx serves this state's config, dynamic mode", dyn: true, in: func(in *Input, o render.Options) {
			in.Snapshot, in.Found = one, &Found{Generation: 7, Config: renderAt(t, r, o, one, 7)}
		}, want: Adopt, check: func(t *testing.T, d Decision) {
			require.True(t, d.Full, "every app's endpoints are pushed")
			require.Equal(t, dynamic.Of(one), d.Changed)
			require.Equal(t, d.Endpoints, d.Changed)
		}},
		{name: "nothing served, and nginx serves another config", in: func(in *Input, o render.Options) {
			in.Snapshot, in.Found = one, &Found{Generation: 7, Config: renderAt(t, r, o, two, 7)}
		}, want: Reload, reason: "another config", check: func(t *testing.T, d Decision) {
			require.Equal(t, uint64(1), d.Generation)
		}},
		{name: "nothing served, and route conflicts to report", in: func(in *Input, o render.Options) {
			dup := appMsg("dup", "web.test")
			dup.CreatedAt = time.Unix(2, 0)
			web := *web
			web.CreatedAt = time.Unix(1, 0)
			in.Snapshot = snapOf(5, withServers(dup, "127.0.0.1:8003"), withServers(&web, "127.0.0.1:8001"))
			in.Found = &Found{Generation: 7, Config: renderAt(t, r, o, in.Snapshot, 7)}
		}, want: Reload, reason: "route conflicts"},
		{name: "a state that removes every server is held", in: func(in *Input, o render.Options) {
			in.Served, in.Snapshot = served(o, false, one), emptied
		}, want: Hold, reason: "held back: the new state removes all 1 servers of every app; it is applied if it persists for 30s",
			check: func(t *testing.T, d Decision) {
				require.Equal(t, t0, d.EmptySince)
				require.Equal(t, t0.Add(30*time.Second+time.Millisecond), d.Wake, "decide again once the hold is over")
			}},
		{name: "held while --empty-hold has not passed", in: func(in *Input, o render.Options) {
			in.Served, in.Snapshot, in.EmptySince = served(o, false, one), emptied, t0.Add(-29*time.Second)
		}, want: Hold, check: func(t *testing.T, d Decision) {
			require.Equal(t, t0.Add(-29*time.Second), d.EmptySince, "the hold counts from the first sighting")
			require.Equal(t, t0.Add(time.Second+time.Millisecond), d.Wake)
		}},
		{name: "an emptying state that persisted past --empty-hold is applied", in: func(in *Input, o render.Options) {
			in.Served, in.Snapshot, in.EmptySince = served(o, false, one), emptied, t0.Add(-30*time.Second)
		}, want: Reload, reason: "layout changed", check: func(t *testing.T, d Decision) {
			require.True(t, d.EmptySince.IsZero())
			require.Equal(t, uint64(4), d.Generation)
		}},
		{name: "instances the scheduler stopped are intent, not a reset", in: func(in *Input, o render.Options) {
			in.Served, in.Snapshot = served(o, false, one), stopped
		}, want: Reload},
		{name: "the same layout, reload mode: skip", in: func(in *Input, o render.Options) {
			in.Served, in.Snapshot = served(o, false, one), one
			in.Snapshot.Revision++
		}, want: Skip, reason: "nginx serves this state's config", check: func(t *testing.T, d Decision) {
			require.Nil(t, d.Changed)
			require.Empty(t, d.Settled)
		}},
		{name: "a server more, reload mode: reload", in: func(in *Input, o render.Options) {
			in.Served, in.Snapshot = served(o, false, one), two
		}, want: Reload, reason: "the layout changed (apps, routes, hosts, TLS, lb settings or servers)", check: func(t *testing.T, d Decision) {
			require.Equal(t, uint64(4), d.Generation)
			require.Equal(t, two, d.Snapshot)
		}},
		{name: "a server more, dynamic mode: push", dyn: true, in: func(in *Input, o render.Options) {
			in.Served, in.Snapshot = served(o, true, one), two
		}, want: Push, reason: "the endpoints of 1 apps changed: pushed, no reload", check: func(t *testing.T, d Decision) {
			require.False(t, d.Full)
			require.Equal(t, dynamic.Of(two), d.Changed)
			require.Zero(t, d.Generation)
		}},
		{name: "a new record with the same routing, dynamic mode: push", dyn: true, in: func(in *Input, o render.Options) {
			again := *web
			again.Generation++ // a scale
			in.Served, in.Snapshot = served(o, true, one), snapOf(6, withServers(&again, "127.0.0.1:8001", "127.0.0.1:8002"))
		}, want: Push},
		{name: "nothing changed, dynamic mode: skip", dyn: true, in: func(in *Input, o render.Options) {
			in.Served, in.Snapshot = served(o, true, one), one
		}, want: Skip, reason: "endpoints too"},
		{name: "nginx's endpoints unknown, dynamic mode: a full push", dyn: true, in: func(in *Input, o render.Options) {
			in.Served, in.Snapshot = served(o, false, one), one
		}, want: Push, check: func(t *testing.T, d Decision) {
			require.True(t, d.Full)
			require.Equal(t, d.Endpoints, d.Changed)
		}},
		{name: "a new app, dynamic mode: reload", dyn: true, in: func(in *Input, o render.Options) {
			in.Served, in.Snapshot = served(o, true, one), snapOf(6, withServers(shop), withServers(web, "127.0.0.1:8001"))
		}, want: Reload, reason: "the layout changed (apps, routes, hosts, TLS or lb settings)"},
		{name: "the templates changed", in: func(in *Input, o render.Options) {
			in.Served, in.Snapshot, in.Renderer = served(o, false, one), one, other
		}, want: Reload, reason: "the templates changed"},
		{name: "a refused app stands in while --resync has not passed", in: func(in *Input, o render.Options) {
			in.Served, in.Snapshot, in.Refused = served(o, false, standing), refusedSnap, refused
		}, want: Skip, check: func(t *testing.T, d Decision) {
			require.Equal(t, map[string]string{"bad": "nginx -t: no certificate"}, d.StandIns)
			require.Same(t, bad, d.Snapshot.Apps[0].Spec, "its last good record, the same pointer")
			require.Equal(t, refusedSnap.Apps[0].Servers, d.Snapshot.Apps[0].Servers, "with today's servers")
			require.Equal(t, t0.Add(50*time.Minute), d.Wake, "decide again when the refusal expires")
			require.Empty(t, d.Settled)
		}},
		{name: "a placeholder stands in with no server", in: func(in *Input, o render.Options) {
			r := refused["bad"]
			r.Placeholder = true
			in.Served, in.Snapshot, in.Refused = served(o, false, snapOf(8, state.App{Spec: bad}, withServers(web, "127.0.0.1:8001"))), refusedSnap,
				map[string]Refusal{"bad": r}
		}, want: Skip, check: func(t *testing.T, d Decision) {
			require.Empty(t, d.Snapshot.Apps[0].Servers)
		}},
		{name: "a refused app's refusal expired: it is tried again", in: func(in *Input, o render.Options) {
			r := refused["bad"]
			r.At = t0.Add(-time.Hour)
			in.Served, in.Snapshot, in.Refused = served(o, false, standing), refusedSnap, map[string]Refusal{"bad": r}
		}, want: Reload, reason: "refused before and tried again (changed, or --resync passed): bad", check: func(t *testing.T, d Decision) {
			require.Empty(t, d.StandIns)
			require.True(t, d.Wake.IsZero())
		}},
		{name: "a refused app's new generation is tried at once", in: func(in *Input, o render.Options) {
			again := *broken
			again.Generation = 3
			in.Served, in.Refused = served(o, false, standing), refused
			in.Snapshot = snapOf(9, withServers(&again, "127.0.0.1:9001"), withServers(web, "127.0.0.1:8001"))
		}, want: Reload, reason: "tried again (changed, or --resync passed): bad"},
		// In dynamic mode an app's generation is not in its config.
		{name: "a refused app changed into what nginx serves for it: settled", dyn: true, in: func(in *Input, o render.Options) {
			in.Served, in.Refused = served(o, true, standing), refused
			in.Snapshot = snapOf(9, withServers(fixed, "127.0.0.1:9001"), withServers(web, "127.0.0.1:8001"))
		}, want: Skip, check: func(t *testing.T, d Decision) {
			require.Equal(t, []string{"bad"}, d.Settled)
			require.Empty(t, d.StandIns)
		}},
		{name: "built: what nginx accepts is what it serves", in: func(in *Input, o render.Options) {
			in.Served, in.Snapshot, in.Built = served(o, false, standing), refusedSnap, &standing
		}, want: Skip, reason: "the apps it refused stand in", check: func(t *testing.T, d Decision) {
			require.Equal(t, standing, d.Snapshot)
		}},
		{name: "built, dynamic mode: what nginx accepts is what it serves, with a server more", dyn: true, in: func(in *Input, o render.Options) {
			more := snapOf(9, withServers(bad, "127.0.0.1:9001"), withServers(web, "127.0.0.1:8001", "127.0.0.1:8002"))
			in.Served, in.Snapshot, in.Built = served(o, true, standing), refusedSnap, &more
		}, want: Push, check: func(t *testing.T, d Decision) {
			require.Equal(t, []string{"web"}, keys(d.Changed))
		}},
		{name: "built: another config than nginx serves", in: func(in *Input, o render.Options) {
			in.Served, in.Snapshot, in.Built = served(o, false, one), refusedSnap, &standing
		}, want: Reload, reason: "other than the one it serves", check: func(t *testing.T, d Decision) {
			require.Equal(t, uint64(4), d.Generation)
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			o := renderOptions(tt.dyn)
			in := Input{Now: t0, Renderer: r, Render: o, Dynamic: tt.dyn, EmptyHold: 30 * time.Second, Resync: time.Hour}
			tt.in(&in, o)
			d := Decide(in)
			require.Equal(t, tt.want, d.Action, "reason: %s", d.Reason)
			require.Contains(t, d.Reason, tt.reason)
			if tt.check != nil {
				tt.check(t, d)
			}
		})
	}
}

// TestDecideMemoizedEndpoints: the endpoint cache gives the decisions
// of dynamic.Of.
func TestDecideMemoizedEndpoints(t *testing.T) {
	t.Parallel()
	o, r := renderOptions(true), loadRenderer(t)
	web := appMsg("web", "web.test")
	one, two := snapOf(5, withServers(web, "127.0.0.1:8001")), snapOf(6, withServers(web, "127.0.0.1:8001", "127.0.0.1:8002"))
	var cache dynamic.Cache
	in := Input{Now: time.Unix(0, 0), Renderer: r, Render: o, Dynamic: true, Resync: time.Hour, Endpoints: &cache,
		Served: newServed(1, r, one, one, dynamic.Of(one), o)}
	for _, snap := range []state.Snapshot{one, two, two, one} {
		in.Snapshot = snap
		memo := Decide(in)
		in.Endpoints = nil
		fresh := Decide(in)
		in.Endpoints = &cache
		require.Equal(t, fresh, memo)
		in.Served.Endpoints = memo.Endpoints
	}
}

func keys[V any](m map[string]V) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	return out
}

// TestUpdateGenerations: walking the served records beside the next ones
// gives the generations of the next ones, through random runs.
func TestUpdateGenerations(t *testing.T) {
	t.Parallel()
	rng := rand.New(rand.NewPCG(8, 9))
	records := map[string]*msg.App{}
	var last []*msg.App
	apps := map[string]int64{}
	for step := range 300 {
		for range 1 + rng.IntN(3) {
			name := fmt.Sprintf("app-%02d", rng.IntN(20))
			if rng.IntN(3) == 0 {
				delete(records, name)
			} else {
				records[name] = &msg.App{Name: name, Generation: int64(rng.IntN(5))}
			}
		}
		var next []*msg.App
		want := map[string]int64{}
		for _, name := range slices.Sorted(maps.Keys(records)) {
			next = append(next, records[name])
			want[name] = records[name].Generation
		}
		require.True(t, updateGenerations(apps, last, next), "step %d", step)
		require.Equal(t, want, apps, "step %d", step)
		last = next
	}
	require.False(t, updateGenerations(map[string]int64{}, last, last), "apps that are not last's")
}
