package publish

import (
	"testing"
	"time"

	"github.com/berthhq/berth/common/msg"
	"github.com/berthhq/berth/common/spec"
	"github.com/berthhq/berth/scheduler/internal/store"
	"github.com/stretchr/testify/require"
)

// TestViewRedactsHealthSecrets: berth_apps carries no literal value of a
// secret health header; references and other headers pass unchanged, and
// the stored spec is not touched.
func TestViewRedactsHealthSecrets(t *testing.T) {
	t.Parallel()
	headers := map[string]string{
		"Authorization": "Bearer s3cret",
		"X-Api-Key":     "s3cret",
		"Cookie":        "sid=s3cret",
		"X-Auth-Token":  "$env:BERTH_PROBE_WEB__TOKEN",
		"Host":          "web.internal",
		"Accept":        "application/json",
	}
	a := &spec.App{Name: "web", Image: "web:1", Port: 8080, Health: &spec.Health{Type: spec.HealthHTTP, Path: "/healthz", Headers: headers}}
	v := View(store.App{Name: "web", Spec: a, Generation: 1, UpdatedAt: time.Unix(1, 0)}, 3)
	require.Equal(t, map[string]string{
		"Authorization": spec.RedactedValue,
		"X-Api-Key":     spec.RedactedValue,
		"Cookie":        spec.RedactedValue,
		"X-Auth-Token":  "$env:BERTH_PROBE_WEB__TOKEN",
		"Host":          "web.internal",
		"Accept":        "application/json",
	}, v.Health.Headers)
	require.Equal(t, "Bearer s3cret", a.Health.Headers["Authorization"], "the stored spec keeps its value")
	require.Equal(t, "/healthz", v.Health.Path)

	none := View(store.App{Name: "web", Spec: &spec.App{Name: "web", Image: "web:1", Port: 8080}}, 3)
	require.NotPanics(t, func() { _ = none.Health })
}

// TestRouteConflicts: a change of an app reports, by the route table,
// the claims it does not get and the claims of others that it now holds.
func TestRouteConflicts(t *testing.T) {
	t.Parallel()
	app := func(name string, created int64, hosts []string, paths ...string) store.App {
		claims := map[string]time.Time{}
		r := spec.Routing{Hosts: hosts, Paths: paths}
		for _, h := range r.HostKeys() {
			claims[h] = time.Unix(created, 0)
		}
		return store.App{Name: name, CreatedAt: time.Unix(created, 0), HostClaims: claims, Spec: &spec.App{Name: name, Routing: r}}
	}
	shop := app("shop", 1, []string{"Example.com"}, "/api/", "/")
	api := app("api", 2, []string{"example.com", "api.example.com"}, "/api", "/v2")
	blog := app("blog", 3, nil, "/")
	all := []store.App{shop, api, blog}

	evs := RouteConflicts("api", all)
	require.Len(t, evs, 1)
	require.Equal(t, msg.EventRouteConflict, evs[0].Kind)
	require.Equal(t, "api", evs[0].App)
	require.Equal(t, "host example.com belongs to app shop, which claimed it first: app api may route there only when shop lists it in routing.share_with: app api gets no route there", evs[0].Message)
	require.Equal(t, map[string]string{"app": "shop", "host": "example.com", "reason": "host", "field": "routing.hosts[0]", "conflicts": "1"}, evs[0].Details)
	require.Equal(t, evs, RouteConflicts("shop", all), "the owner's change names what it holds from api")
	require.Empty(t, RouteConflicts("blog", all), "the default server is not example.com")

	// Shared: api gets /v2, not the /api that shop routes.
	shop.Spec.Routing.ShareWith = []spec.Share{{App: "api"}}
	all = []store.App{shop, api, blog}
	evs = RouteConflicts("api", all)
	require.Len(t, evs, 1)
	require.Equal(t, "path /api on host example.com is already routed to app shop, which claimed it first: app api gets no route there", evs[0].Message)
	require.Equal(t, "/api", evs[0].Details["path"])

	// A second app on the default server, which blog owns.
	blog2 := app("blog2", 4, nil, "/", "/x")
	evs = RouteConflicts("blog2", append(all, blog2))
	require.Len(t, evs, 1)
	require.Equal(t, "blog", evs[0].Details["app"])
	require.Equal(t, "(default server)", evs[0].Details["host"])
}

// TestViewDropsRulesThatStallNginx: a spec stored before the grammar
// refused backtracking regexes is published without those rules (a rule
// with a refused header regex whole), with its other rules, and the
// record encodes; the stored spec is not touched.
func TestViewDropsRulesThatStallNginx(t *testing.T) {
	t.Parallel()
	rules := []spec.Rule{
		{Path: `^/(\w+)+$`, Match: spec.MatchRegex},
		{Path: "/ok"},
		{Path: "/h", Headers: map[string]string{"X-Team": "~^(a|aa)+$", "X-Beta": "1"}},
		{Path: `^/v[0-9]+/`, Match: spec.MatchRegex, Headers: map[string]string{"X-Team": "~^(red|blue)$"}},
	}
	a, err := spec.Load([]byte("name: web\nimage: web:1\nport: 8080\n"))
	require.NoError(t, err)
	a.Routing.Paths, a.Routing.Rules = nil, rules
	v := View(store.App{Name: "web", Spec: a, Generation: 1, UpdatedAt: time.Unix(1, 0)}, 3)
	require.Equal(t, []spec.Rule{rules[1], rules[3]}, v.Routing.Rules)
	require.Len(t, a.Routing.Rules, 4, "the stored spec keeps its rules")
	_, err = msg.Encode(v)
	require.NoError(t, err)

	_, reasons := servableRouting(a.Routing)
	require.Len(t, reasons, 2)
	require.Contains(t, reasons[0], `routing.rules[0].path: "^/(\\w+)+$" can stall nginx`)
	require.Contains(t, reasons[1], `routing.rules[2].headers[X-Team]: "^(a|aa)+$" can stall nginx`)
	same, reasons := servableRouting(spec.Routing{Rules: rules[1:2]})
	require.Nil(t, reasons)
	require.Equal(t, rules[1:2], same.Rules)
}
