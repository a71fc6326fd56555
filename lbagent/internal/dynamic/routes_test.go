package dynamic

import (
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/berthhq/berth/common/msg"
	"github.com/berthhq/berth/common/spec"
	"github.com/berthhq/berth/lbagent/internal/render"
	"github.com/berthhq/berth/lbagent/internal/state"
)

func routedApp(name string, created int64, hosts ...string) state.App {
	return state.App{Spec: &msg.App{Name: name, CreatedAt: time.Unix(created, 0), Routing: spec.Routing{Hosts: hosts, Paths: []string{"/"}},
		LB: spec.LB{Method: spec.LBRoundRobin, Keepalive: 8, ConnectTimeout: spec.Duration(time.Second), ReadTimeout: spec.Duration(5 * time.Second),
			NextUpstreamTries: 3, ClientMaxBodySize: 1 << 20}},
		Servers: []state.Server{{Address: "127.0.0.1:1", Weight: 1}}}
}

// TestCacheRoutes: with --dynamic-routes the sets of routed apps carry
// their routes and timeouts; the route table is computed again only for
// other records, and a set is rebuilt when its routes change although its
// record did not (another app took or freed a claim).
func TestCacheRoutes(t *testing.T) {
	t.Parallel()
	o := render.Options{Dynamic: &render.Dynamic{Routes: true}}
	c := Cache{Render: &o}
	web := routedApp("web", 1, "web.test")
	first := c.Of(state.Snapshot{Apps: []state.App{web}})
	require.Equal(t, []render.HostRoute{{Host: "web.test", Location: "/"}}, first["web"].Routes)
	require.Equal(t, 1.0, first["web"].ConnectTimeout)
	require.Equal(t, 5.0, first["web"].ReadTimeout)
	require.Equal(t, 3, first["web"].Tries)
	again := c.Of(state.Snapshot{Apps: []state.App{web}})
	require.Same(t, first["web"], again["web"], "same record, servers and routes: the same set")

	// lb.keepalive 0 makes "ruled" rendered on web.test's host too: web is
	// rendered, its record unchanged. With the router on, every set keeps
	// its timeouts (a routed split may pick any app).
	ruled := routedApp("ruled", 2, "web.test")
	ruled.Spec.Routing.Paths = nil
	ruled.Spec.Routing.Rules = []spec.Rule{{Path: "/r"}}
	ruled.Spec.LB.Keepalive = 0
	web.Spec.Routing.ShareWith = []spec.Share{{App: "ruled"}}
	both := c.Of(state.Snapshot{Apps: []state.App{web, ruled}})
	require.Nil(t, both["web"].Routes, "rendered: no routes")
	require.Equal(t, 1.0, both["web"].ConnectTimeout)
	require.Nil(t, both["ruled"].Routes)
	require.Nil(t, both["ruled"].Rules, "rendered: no rules")

	// Rules travel with a routed app's set: header match, split apps,
	// response headers sorted by name.
	solo := routedApp("solo", 3, "solo.test")
	solo.Spec.Routing.Rules = []spec.Rule{{Path: "/r", Match: spec.MatchExact, Headers: map[string]string{"X-Canary": "on"}, ResponseHeaders: map[string]string{"X-B": "2", "X-A": "1"}}}
	three := c.Of(state.Snapshot{Apps: []state.App{web, ruled, solo}})
	require.Equal(t, []render.HostRoute{{Host: "solo.test", Location: "/"}, {Host: "solo.test", Location: "= /r", Rule: 1}}, three["solo"].Routes)
	require.Equal(t, []Rule{{Headers: map[string]string{"X-Canary": "on"}, ResponseHeaders: [][2]string{{"X-A", "1"}, {"X-B", "2"}}}}, three["solo"].Rules)

	// Without the flag: no routes.
	plain := (&Cache{}).Of(state.Snapshot{Apps: []state.App{routedApp("web", 1, "web.test")}})
	require.Nil(t, plain["web"].Routes)
}

// TestKeepRoutes: an app routed in what nginx serves and rendered next
// keeps its routes in the file a reload loads; others are next's.
func TestKeepRoutes(t *testing.T) {
	t.Parallel()
	routes := []render.HostRoute{{Host: "a.test", Location: "/"}}
	served := map[string]*Endpoints{
		"a": {Method: "round_robin", Routes: routes, ConnectTimeout: 1, ReadTimeout: 5, Tries: 2},
		"b": {Method: "round_robin"},
	}
	next := map[string]*Endpoints{
		"a": {Method: "round_robin", Servers: []Server{{Address: "127.0.0.1:1", Weight: 1}}},
		"b": {Method: "round_robin", Routes: []render.HostRoute{{Host: "b.test", Location: "/"}}},
		"c": {Method: "round_robin"},
	}
	kept := KeepRoutes(next, served)
	require.Equal(t, routes, kept["a"].Routes)
	require.Equal(t, 5.0, kept["a"].ReadTimeout)
	require.Equal(t, next["a"].Servers, kept["a"].Servers, "its new servers")
	require.Same(t, next["b"], kept["b"])
	require.Same(t, next["c"], kept["c"])
	require.Nil(t, next["a"].Routes, "next is not changed")
	require.Equal(t, next, KeepRoutes(next, nil))
}
