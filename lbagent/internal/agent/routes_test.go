package agent

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/berthhq/berth/common/bus"
	"github.com/berthhq/berth/common/msg"
	"github.com/berthhq/berth/common/spec"
	"github.com/berthhq/berth/internal/loadgen"
	"github.com/berthhq/berth/internal/testrig"
)

const testWait, testPoll = 10 * time.Second, 5 * time.Millisecond

// withDynamicRoutes is lbagent --dynamic-routes.
func withDynamicRoutes(m *rigAgent) { m.cfg.Render.Dynamic.Routes = true }

func (r *rig) deleteApp(name string) {
	r.store.AppsHandler().Update(bus.Event[*msg.App]{Key: name, Op: bus.OpDelete})
}

// TestDynamicRoutesReloadNothing: with --dynamic-routes, an app whose
// routing is hosts and path prefixes is routed by nginx's Lua router from
// the route table pushed with its endpoints: creating it, changing its
// paths and hosts and removing it reload nothing and change no file. An
// app with lb.keepalive 0 is still rendered (and reloads), beside the routed ones.
func TestDynamicRoutesReloadNothing(t *testing.T) {
	t.Parallel()
	r := newRigMode(t, true, withDynamicRoutes)
	r.putApp(appMsg("web", "web.test"))
	r.applied(r.putInstance("web", "a", testrig.Backend(t, "A"), msg.StateRunning))
	r.waitFor("web.test", 200, "A")
	gen, reloads := r.agent.Generation(), r.reloads()
	conf, err := os.ReadFile(r.agent.cfg.Target)
	require.NoError(t, err)
	require.NotContains(t, string(conf), "web.test", "a routed app is not rendered")
	require.Contains(t, string(conf), "upstream berth_routed")
	unchanged := func(what string) {
		t.Helper()
		require.Equal(t, gen, r.agent.Generation(), "%s: no new config generation", what)
		require.Equal(t, reloads, r.reloads(), "%s: no reload", what)
		now, err := os.ReadFile(r.agent.cfg.Target)
		require.NoError(t, err)
		require.Equal(t, string(conf), string(now), "%s: no file changed", what)
	}

	// A new app, its instance first: served from the push, no reload.
	r.putInstance("shop", "c", testrig.Backend(t, "C"), msg.StateRunning)
	r.putApp(appMsg("shop", "shop.test"))
	r.waitFor("shop.test", 200, "C")
	r.waitFor("web.test", 200, "A")
	unchanged("new app")
	_, ag := r.rep.last()
	require.Equal(t, int64(1), ag.Apps["shop"], "the routed app is reported applied")

	// Its paths change: /api (so /api and /api/…, not /apix), and a host
	// is added.
	shop := appMsg("shop", "shop.test", "shop2.test")
	shop.Generation = 2
	shop.Routing.Paths = []string{"/api", "/50%off.v*1+"}
	r.putApp(shop)
	r.waitForPath("shop2.test", "/api/x", 200, "C")
	for _, c := range []struct {
		host, path string
		code       int
	}{
		{"shop.test", "/api", 200}, {"shop.test", "/api/", 200}, {"shop.test", "/api/deep/er", 200},
		{"shop.test", "/apix", 404}, {"shop.test", "/", 404}, {"shop2.test", "/api", 200},
		// Pattern characters are literal: nothing but the path itself matches.
		{"shop.test", "/50%25off.v*1+/x", 200}, {"shop.test", "/50%25offXv*1+/x", 404}, {"shop.test", "/50%25off.vvv1+", 404},
		{"SHOP.test", "/api", 200}, {"shop.test.", "/api", 200},
	} {
		code, body := r.getPath(c.host, c.path)
		require.Equal(t, c.code, code, "%s%s: %s", c.host, c.path, body)
		if c.code == 404 {
			require.Contains(t, body, "no app is routed here")
		}
	}
	unchanged("changed paths and hosts")

	// Hostile Host headers are data: looked up, not found, 404.
	for _, h := range []string{`x"]; os.exit(1) --`, "h:", "a:web", "_", "%", strings.Repeat("a", 200) + ".test"} {
		code, body := r.getPath(h, "/")
		require.Contains(t, []int{400, 404}, code, "host %q: %s", h, body)
	}

	// Removed: 404 "no app is routed here" at once, the other app served.
	r.deleteApp("shop")
	r.waitForPath("shop.test", "/api", 404, "no app is routed here")
	r.waitFor("web.test", 200, "A")
	unchanged("removed app")
	require.Eventually(t, func() bool { _, ag := r.rep.last(); _, ok := ag.Apps["shop"]; return !ok }, testWait, testPoll,
		"a removed routed app leaves the applied apps")

	// No servers: 503 from the router, its route kept.
	r.putInstance("web", "a", "127.0.0.1:1", msg.StateStopped)
	r.waitFor("web.test", 503, "no_backend")
	unchanged("no servers")

	// An app with lb.keepalive 0 is rendered as before: a reload, and served.
	ruled := appMsg("ruled", "ruled.test")
	ruled.Routing.Rules = []spec.Rule{{Path: "/r"}}
	ruled.LB.Keepalive = 0
	r.putInstance("ruled", "d", testrig.Backend(t, "D"), msg.StateRunning)
	r.putApp(ruled)
	r.waitForPath("ruled.test", "/r/x", 200, "D")
	require.Eventually(t, func() bool { return r.reloads() > reloads }, testWait, testPoll)
	now, err := os.ReadFile(r.agent.cfg.Target)
	require.NoError(t, err)
	require.Contains(t, string(now), "server_name ruled.test;")
	require.NotContains(t, string(now), "web.test")
	r.waitFor("web.test", 503, "no_backend") // still routed by the router after the reload
}

// TestDynamicRoutesSharedHostIsRendered: a routed app and an app that
// must be rendered on one host make the host one server block, as before:
// both apps are rendered there, and a new routed app elsewhere still
// reloads nothing.
func TestDynamicRoutesSharedHostIsRendered(t *testing.T) {
	t.Parallel()
	r := newRigMode(t, true, withDynamicRoutes)
	owner := appMsg("owner", "both.test")
	owner.Routing.Paths = []string{"/a"}
	owner.Routing.ShareWith = []spec.Share{{App: "member"}}
	owner.CreatedAt = time.Unix(1, 0) // claims the host first
	member := appMsg("member", "both.test")
	member.Routing.Paths = nil
	member.CreatedAt = time.Unix(2, 0)
	member.Routing.Rules = []spec.Rule{{Path: "/b"}}
	member.LB.Keepalive = 0
	r.putInstance("owner", "o", testrig.Backend(t, "O"), msg.StateRunning)
	r.putInstance("member", "m", testrig.Backend(t, "M"), msg.StateRunning)
	r.putApp(owner)
	r.putApp(member)
	r.waitForPath("both.test", "/a/x", 200, "O")
	r.waitForPath("both.test", "/b/x", 200, "M")
	// nginx serves the reload before the agent has recorded it: wait for its report.
	require.Eventually(t, func() bool { _, ag := r.rep.last(); return ag != nil && ag.Apps["member"] == 1 }, testWait, testPoll)
	conf, err := os.ReadFile(r.agent.cfg.Target)
	require.NoError(t, err)
	require.Contains(t, string(conf), "upstream berth_owner", "the owner shares a rendered host: rendered")
	gen, reloads := r.agent.Generation(), r.reloads()

	r.putInstance("solo", "s", testrig.Backend(t, "S"), msg.StateRunning)
	r.putApp(appMsg("solo", "solo.test"))
	r.waitFor("solo.test", 200, "S")
	r.waitForPath("both.test", "/b/x", 200, "M")
	require.Equal(t, gen, r.agent.Generation(), "a routed app beside rendered ones: no new config generation")
	require.Equal(t, reloads, r.reloads(), "no reload")
}

// TestDynamicRoutesToRenderedLosesNoRequest: an app the router routes that
// becomes one to render (lb.keepalive 0) is a reload; the workers it
// replaces keep routing it (its routes stay in the file the reload loads)
// until the new ones serve its server block: a client that never retries
// sees no failure.
func TestDynamicRoutesToRenderedLosesNoRequest(t *testing.T) {
	t.Parallel()
	r := newRigMode(t, true, withDynamicRoutes)
	r.putApp(appMsg("web", "web.test"))
	r.applied(r.putInstance("web", "a", testrig.Backend(t, "A"), msg.StateRunning))
	r.waitFor("web.test", 200, "A")
	reloads := r.reloads()
	gen := loadgen.Start(context.Background(), loadgen.Config{URL: "http://" + r.httpAddr + "/", Host: "web.test", Workers: 4, NoRetry: true})
	flowing(t, gen, 50)

	ruled := appMsg("web", "web.test")
	ruled.Generation = 2
	ruled.LB.Keepalive = 0
	r.putApp(ruled)
	require.Eventually(t, func() bool { return r.reloads() > reloads }, testWait, testPoll, "a reload renders the app")
	flowing(t, gen, 50)
	res := gen.Stop()
	require.NoError(t, loadgen.Check(res), "%s", res)
	conf, err := os.ReadFile(r.agent.cfg.Target)
	require.NoError(t, err)
	require.Contains(t, string(conf), "server_name web.test;")
	require.Eventually(t, func() bool {
		snap, err := os.ReadFile(r.agent.cfg.Snapshot)
		return err == nil && !strings.Contains(string(snap), `"routes"`)
	}, testWait, testPoll, "the push after the reload drops the kept routes (the file follows it, behind)")
}

// answer is what a client sees of one request: the status, the body and
// the headers a rule adds.
type answer struct {
	code               int
	body, rule, policy string
}

func (r *rig) ask(host, path string, header map[string]string) answer {
	return r.send(http.MethodGet, host, path, header, nil)
}

// send is ask with a method and a body (an io.Reader nginx gets chunked).
func (r *rig) send(method, host, path string, header map[string]string, body io.Reader) answer {
	req, _ := http.NewRequest(method, "http://"+r.httpAddr+path, body)
	req.Host = host
	for k, v := range header {
		req.Header.Set(k, v)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return answer{body: err.Error()}
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return answer{code: resp.StatusCode, body: string(b), rule: strings.Join(resp.Header.Values("X-Rule"), ","), policy: resp.Header.Get("Cache-Control")}
}

// rulesApps are apps with every rule the router routes: exact, regex and
// prefix rules with response headers; a member's header matches (exact,
// which nginx's map compares ignoring case, and regex, with case) on a
// path the owner shares with it; splits at 100 and 0 %, and one to an
// app with no server (which hands its share back); an app with no
// server; an app in the default server with a regex rule; two apps'
// regexes that both match, tried in claim order; a rate limit; an app
// balanced by hash on a key of variables ($server_name included), whose
// requests go to the same server in both modes; wildcard hosts, the
// longest one winning, and an exact host under one.
func rulesApps() []*msg.App {
	shop := appMsg("shop", "shop.test")
	shop.CreatedAt = time.Unix(1, 0)
	shop.Routing.ShareWith = []spec.Share{{App: "canary", Paths: []string{"/api"}}}
	shop.Routing.Rules = []spec.Rule{
		{Path: "/healthz", Match: spec.MatchExact, ResponseHeaders: map[string]string{"X-Rule": "exact"}},
		{Path: `^/img/[a-z]+\.png$`, Match: spec.MatchRegex, ResponseHeaders: map[string]string{"X-Rule": "img"}},
		{Path: "/api", ResponseHeaders: map[string]string{"X-Rule": "api", "Cache-Control": "no-store"}},
		{Path: "/split", Split: []spec.Split{{App: "beta", Weight: 100}}},
		{Path: "/nosplit", Split: []spec.Split{{App: "beta", Weight: 0}}},
		{Path: "/ghost", Split: []spec.Split{{App: "empty", Weight: 100}}, ResponseHeaders: map[string]string{"X-Rule": "ghost"}},
		{Path: `^/api/v1$`, Match: spec.MatchRegex, ResponseHeaders: map[string]string{"X-Rule": "shop-v1"}},
		{Path: "/slow", RateLimit: &spec.RateLimit{RPS: 1, Burst: 2}, ResponseHeaders: map[string]string{"X-Rule": "slow"}},
	}
	canary := appMsg("canary", "shop.test")
	canary.CreatedAt = time.Unix(2, 0)
	canary.Routing.Paths = nil
	canary.Routing.Rules = []spec.Rule{
		{Path: "/api", Headers: map[string]string{"X-Canary": "on"}, ResponseHeaders: map[string]string{"X-Rule": "canary"}},
		{Path: "/api", Headers: map[string]string{"X-Beta": `~^b[0-9]+$`, "X-Team": "blue"}},
		// after the owner's regex in claim order: /api/v1 is the owner's
		{Path: `^/api/v[0-9]$`, Match: spec.MatchRegex, ResponseHeaders: map[string]string{"X-Rule": "canary-v"}},
	}
	beta := appMsg("beta", "beta.test")
	empty := appMsg("empty", "empty.test")
	dflt := appMsg("dflt")
	dflt.Routing.Paths = []string{"/d"}
	dflt.Routing.Rules = []spec.Rule{{Path: `^/n/[0-9]+$`, Match: spec.MatchRegex, ResponseHeaders: map[string]string{"X-Rule": "n"}}}
	upload := appMsg("upload", "upload.test")
	upload.LB.ClientMaxBodySize = 4 << 10
	sticky := appMsg("sticky", "sticky.test")
	sticky.LB.Method, sticky.LB.HashKey = spec.LBHash, "$arg_user:$server_name"
	wild := appMsg("wild", "*.w.test")
	wild.LB.Method, wild.LB.HashKey = spec.LBHash, "$server_name"
	deeper := appMsg("deeper", "*.b.w.test")
	exact := appMsg("exact", "a.w.test")
	return []*msg.App{shop, canary, beta, empty, dflt, sticky, upload, wild, deeper, exact}
}

// request is one request of a comparison.
type request struct {
	host, path string
	header     map[string]string
}

// rulesAsks are the requests both modes must answer alike.
var rulesAsks = []request{
	{"shop.test", "/", nil}, {"shop.test", "/x", nil},
	{"shop.test", "/healthz", nil}, {"shop.test", "/healthz/x", nil}, {"shop.test", "/healthzz", nil},
	{"shop.test", "/img/cat.png", nil}, {"shop.test", "/img/cat.gif", nil}, {"shop.test", "/img/a/cat.png", nil},
	{"shop.test", "/api", nil}, {"shop.test", "/api/x", nil}, {"shop.test", "/apix", nil},
	{"shop.test", "/api", map[string]string{"X-Canary": "on"}}, {"shop.test", "/api/x", map[string]string{"X-Canary": "ON"}},
	{"shop.test", "/api", map[string]string{"X-Canary": "off"}},
	{"shop.test", "/api", map[string]string{"X-Beta": "b12", "X-Team": "Blue"}}, {"shop.test", "/api", map[string]string{"X-Beta": "B12", "X-Team": "blue"}},
	{"shop.test", "/api", map[string]string{"X-Beta": "b12"}}, {"shop.test", "/api", map[string]string{"X-Beta": "b12x", "X-Team": "blue"}},
	{"shop.test", "/api", map[string]string{"X-Canary": "on", "X-Beta": "b1", "X-Team": "blue"}},
	{"shop.test", "/api/v1", nil}, {"shop.test", "/api/v2", nil}, {"shop.test", "/api/v22", nil},
	{"shop.test", "/split", nil}, {"shop.test", "/split/x", nil}, {"shop.test", "/nosplit", nil}, {"shop.test", "/ghost", nil},
	{"beta.test", "/", nil}, {"empty.test", "/", nil}, {"EMPTY.test", "/x", nil},
	{"other.test", "/d", nil}, {"other.test", "/d/x", nil}, {"other.test", "/n/12", nil}, {"other.test", "/n/12/x", nil}, {"other.test", "/", nil},
	{"shop.test", "/n/12", nil},
	{"sticky.test", "/?user=1", nil}, {"sticky.test", "/?user=2", nil}, {"sticky.test", "/?user=3", nil},
	{"sticky.test", "/?user=4", nil}, {"sticky.test", "/?user=5", nil}, {"sticky.test", "/?user=6", nil},
	{"sticky.test", "/?user=7", nil}, {"sticky.test", "/?user=8", nil}, {"sticky.test", "/", nil},
	{"x.w.test", "/", nil}, {"a.w.test", "/", nil}, {"b.w.test", "/", nil}, {"c.b.w.test", "/", nil}, {"x.y.b.w.test", "/x", nil},
	{"w.test", "/", nil}, {"w.test", "/d", nil}, {"xw.test", "/", nil},
}

// TestDynamicRoutesRulesServeAsRendered: with --dynamic-routes, apps with
// rules (exact and regex paths, header matches, splits, response
// headers) are routed by the Lua router, and every request is answered
// as the rendered config answers it: the same app, status, body and
// rule headers, request by request, before and after rule changes. The
// router's changes reload nothing.
func TestDynamicRoutesRulesServeAsRendered(t *testing.T) {
	t.Parallel()
	rendered := newRigMode(t, true)
	router := newRigMode(t, true, withDynamicRoutes)
	backends := map[string]string{}
	for _, name := range []string{"shop", "canary", "beta", "dflt", "upload", "wild", "deeper", "exact"} {
		backends[name] = testrig.Backend(t, strings.ToUpper(name))
	}
	for i := range 3 {
		backends[fmt.Sprintf("sticky/%d", i)] = testrig.Backend(t, fmt.Sprintf("STICKY%d", i))
	}
	for _, r := range []*rig{rendered, router} {
		var last uint64
		for name, addr := range backends {
			app, id, _ := strings.Cut(name, "/")
			last = r.putInstance(app, "i"+id, addr, msg.StateRunning)
		}
		for _, a := range rulesApps() {
			r.putApp(a)
		}
		r.waitForPath("other.test", "/n/1", 200, "DFLT")
		r.waitForPath("shop.test", "/api", 200, "SHOP")
		r.waitFor("sticky.test", 200, "STICKY")
		r.applied(last) // every instance: the hash app has its three servers
	}
	conf, err := os.ReadFile(router.agent.cfg.Target)
	require.NoError(t, err)
	require.NotContains(t, string(conf), "shop.test", "every app is routed by the router")
	require.NotContains(t, string(conf), "w.test", "wildcard hosts too")
	require.NotContains(t, string(conf), "upstream berth_shop")
	same := func(when string, asks []request) {
		t.Helper()
		for _, q := range asks {
			want := rendered.ask(q.host, q.path, q.header)
			require.NotZero(t, want.code, "%s: %s%s %v: %s", when, q.host, q.path, q.header, want.body)
			require.Equal(t, want, router.ask(q.host, q.path, q.header), "%s: %s%s %v", when, q.host, q.path, q.header)
		}
	}
	same("first", rulesAsks)
	// Bodies against an app's client_max_body_size (4 KiB; the default is
	// 1 MiB): by Content-Length, and chunked.
	for _, c := range []struct {
		size    int
		chunked bool
	}{{1000, false}, {4096, false}, {5000, false}, {1000, true}, {5000, true}} {
		do := func(r *rig) answer {
			var body io.Reader = strings.NewReader(strings.Repeat("x", c.size))
			if c.chunked {
				body = io.MultiReader(body) // no length: sent chunked
			}
			return r.send(http.MethodPost, "upload.test", "/", nil, body)
		}
		want := do(rendered)
		require.Equal(t, want, do(router), "a body of %d bytes, chunked %v", c.size, c.chunked)
		require.Equal(t, c.size <= 4096, want.code == http.StatusOK, "a body of %d bytes, chunked %v: %d", c.size, c.chunked, want.code)
	}
	// The rate limit (1 a second, a burst of 2, per client address): the
	// same three answered at once, then 429 with the rule's header (nginx's
	// own 429 page in both), and only the rate's refills after.
	for _, r := range []*rig{rendered, router} {
		start := time.Now()
		var codes []int
		var refused answer
		for range 10 {
			a := r.ask("shop.test", "/slow", nil)
			codes = append(codes, a.code)
			if a.code == http.StatusTooManyRequests {
				refused = a
			}
		}
		elapsed := time.Since(start)
		require.Equal(t, []int{200, 200, 200}, codes[:3], "the first and the burst")
		served := 0
		for _, c := range codes {
			if c == http.StatusOK {
				served++
			}
		}
		require.LessOrEqual(t, served, 3+int(elapsed.Seconds()), "%v in %v", codes, elapsed)
		if elapsed < time.Second { // refused for sure only when no token came back meanwhile
			require.Equal(t, 3, served, "%v in %v", codes, elapsed)
		}
		if refused.code != 0 {
			require.Equal(t, "slow", refused.rule, "a refusal carries the rule's header")
			require.Contains(t, refused.body, "429 Too Many Requests")
		}
	}
	gen, reloads := router.agent.Generation(), router.reloads()

	// Rule changes: a header match's value, a split's weight (beta takes
	// /nosplit), a new regex rule, a rule removed (/healthz).
	apps := rulesApps()
	shop, canary := apps[0], apps[1]
	canary.Generation = 2
	canary.Routing.Rules[0].Headers = map[string]string{"X-Canary": "yes"}
	shop.Generation = 2
	shop.Routing.Rules[4].Split[0].Weight = 100
	shop.Routing.Rules[0] = spec.Rule{Path: `^/v[0-9]/`, Match: spec.MatchRegex, ResponseHeaders: map[string]string{"X-Rule": "v"}}
	for _, r := range []*rig{rendered, router} {
		r.putApp(canary)
		r.putApp(shop)
		r.waitForPath("shop.test", "/v2/x", 200, "SHOP")
		r.waitForPath("shop.test", "/nosplit", 200, "BETA")
		require.Eventually(t, func() bool {
			return r.ask("shop.test", "/api", map[string]string{"X-Canary": "yes"}).body == "CANARY"
		}, testWait, testPoll)
	}
	same("after the changes", append(slices.Clone(rulesAsks), request{"shop.test", "/v2/x", nil}, request{"shop.test", "/api", map[string]string{"X-Canary": "yes"}}))
	require.Equal(t, gen, router.agent.Generation(), "rule changes: no new config generation")
	require.Equal(t, reloads, router.reloads(), "rule changes: no reload")
}
