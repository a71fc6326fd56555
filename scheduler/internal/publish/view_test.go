package publish

import (
	"testing"
	"time"

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

// TestRouteConflict: the app that claims a route another app claimed first
// gets the event naming it; the first app does not; "/x" and "/x/" and
// host case are one route, as in lbagent.
func TestRouteConflict(t *testing.T) {
	t.Parallel()
	app := func(name string, created int64, hosts []string, paths ...string) store.App {
		return store.App{Name: name, CreatedAt: time.Unix(created, 0),
			Spec: &spec.App{Name: name, Routing: spec.Routing{Hosts: hosts, Paths: paths}}}
	}
	first := app("shop", 1, []string{"Example.com"}, "/api/", "/")
	later := app("api", 2, []string{"example.com", "api.example.com"}, "/api", "/v2")
	other := app("blog", 3, nil, "/")
	all := []store.App{first, later, other}

	ev, ok := RouteConflict(later, all)
	require.True(t, ok)
	require.Equal(t, "route_conflict", ev.Kind)
	require.Equal(t, "api", ev.App)
	require.Equal(t, "path /api on host example.com is already routed to app shop, created first: app api gets no route there", ev.Message)
	require.Equal(t, map[string]string{"app": "shop", "host": "example.com", "path": "/api", "match": "prefix", "routes": "1"}, ev.Details)

	_, ok = RouteConflict(first, all)
	require.False(t, ok, "the app that claimed first keeps its routes")
	_, ok = RouteConflict(other, all)
	require.False(t, ok, "the default server's / is not example.com's")
	_, ok = RouteConflict(app("blog2", 4, nil, "/", "/x"), all)
	require.True(t, ok, "the default server's routes conflict too")

	// Rules: an exact /api is one of the nginx locations of shop's prefix
	// /api/; a regex conflicts with the same regex only.
	exact := app("exact", 5, []string{"example.com"})
	exact.Spec.Routing.Rules = []spec.Rule{{Path: "/api", Match: spec.MatchExact}}
	ev, ok = RouteConflict(exact, append(all, exact))
	require.True(t, ok)
	require.Equal(t, "exact path /api on host example.com is already routed to app shop, created first: app exact gets no route there", ev.Message)
	re := func(name string, created int64, regex string) store.App {
		a := app(name, created, []string{"example.com"})
		a.Spec.Routing.Rules = []spec.Rule{{Path: regex, Match: spec.MatchRegex}}
		return a
	}
	r1, r2, r3 := re("r1", 6, "^/v[0-9]+/"), re("r2", 7, "^/v[0-9]+/"), re("r3", 8, "^/v2/")
	_, ok = RouteConflict(r2, []store.App{r1, r2, r3})
	require.True(t, ok)
	_, ok = RouteConflict(r3, []store.App{r1, r2, r3})
	require.False(t, ok, "another regex is another location, even if it matches the same paths")
}

// TestViewRedactsALiteralBody: a spec stored before literal bodies were
// refused does not publish its body; a reference is kept.
func TestViewRedactsALiteralBody(t *testing.T) {
	t.Parallel()
	a := &spec.App{Name: "web", Image: "web:1", Port: 8080, Health: &spec.Health{Type: spec.HealthHTTP, Path: "/", Body: `{"password":"s3cret"}`}}
	v := View(store.App{Name: "web", Spec: a, Generation: 1, UpdatedAt: time.Unix(1, 0)}, 3)
	require.Equal(t, spec.RedactedValue, v.Health.Body)
	require.Nil(t, v.Health.Headers)
	a.Health.Body = "$env:BERTH_PROBE_WEB__BODY"
	v = View(store.App{Name: "web", Spec: a, Generation: 1, UpdatedAt: time.Unix(1, 0)}, 3)
	require.Equal(t, "$env:BERTH_PROBE_WEB__BODY", v.Health.Body)
}
