package render

import (
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/berthhq/berth/common/spec"
	"github.com/berthhq/berth/internal/testrig"
	"github.com/berthhq/berth/lbagent/internal/state"
	"github.com/berthhq/berth/templates"
)

// served is a real nginx serving rendered configs of this package on
// ports of its own: o are the options it renders with.
type served struct {
	t   *testing.T
	o   Options
	r   *Renderer
	ngx *testrig.Nginx
}

// serve renders apps (reload mode, the http context only), starts nginx on
// it, and returns the fixture.
func serve(t *testing.T, apps ...state.App) *served {
	t.Helper()
	o := opts
	o.AccessLogSocket, o.Main = "", false
	o.HTTPListen = fmt.Sprintf("127.0.0.1:%d", testrig.FreePort(t))
	o.StatusListen = fmt.Sprintf("127.0.0.1:%d", testrig.FreePort(t))
	r, err := Load(templates.FS)
	require.NoError(t, err)
	s := &served{t: t, o: o, r: r, ngx: testrig.NewNginx(t)}
	s.ngx.WriteConfig(s.config(1, apps...))
	s.ngx.Start()
	return s
}

// config renders apps as generation gen, wrapped in a main config.
func (s *served) config(gen uint64, apps ...state.App) string {
	s.t.Helper()
	d, conflicts := Layout(state.Snapshot{Apps: apps}, gen, s.o)
	require.Empty(s.t, conflicts)
	out, err := s.r.Render(d, false)
	require.NoError(s.t, err)
	return testrig.MainConfig(string(out))
}

// reload serves apps as generation gen, once nginx -t accepts them.
func (s *served) reload(gen uint64, apps ...state.App) {
	s.t.Helper()
	s.ngx.WriteConfig(s.config(gen, apps...))
	require.NoError(s.t, s.ngx.Test())
	s.ngx.Reload()
}

// backend is an HTTP server that answers every request with name.
func backend(t *testing.T, name string) string {
	t.Helper()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { fmt.Fprint(w, name) }))
	t.Cleanup(srv.Close)
	return strings.TrimPrefix(srv.URL, "http://")
}

// TestRulesServe runs a real nginx on a rendered config with every rule
// kind and checks what a client sees: an exact location matches only its
// path, a regex only what it matches, response headers come with every
// answer (errors too) beside the X-Request-ID they would otherwise drop,
// and a rate limit answers 429 past rps plus burst.
func TestRulesServe(t *testing.T) {
	t.Parallel()
	backend := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { fmt.Fprint(w, r.URL.Path) }))
	t.Cleanup(backend.Close)
	a := app("shop", 0)
	a.Servers = []state.Server{{Instance: "i0", Address: strings.TrimPrefix(backend.URL, "http://"), Weight: 1}}
	a.Spec.Routing.Rules = []spec.Rule{
		{Path: "/healthz", Match: spec.MatchExact, ResponseHeaders: map[string]string{"X-Rule": "exact"}},
		{Path: `^/img/[a-z]+\.png$`, Match: spec.MatchRegex, ResponseHeaders: map[string]string{"X-Rule": "img"}},
		{Path: "/api", RateLimit: &spec.RateLimit{RPS: 1, Burst: 2}, ResponseHeaders: map[string]string{"X-Rule": "api", "Cache-Control": "no-store"}},
	}
	o := serve(t, a).o

	client := &http.Client{Timeout: 5 * time.Second}
	get := func(path string) *http.Response {
		t.Helper()
		var resp *http.Response
		require.Eventually(t, func() bool {
			var err error
			resp, err = client.Get("http://" + o.HTTPListen + path)
			return err == nil
		}, 5*time.Second, 20*time.Millisecond)
		resp.Body.Close()
		return resp
	}
	for path, rule := range map[string]string{
		"/healthz": "exact", "/healthz/x": "", "/healthzz": "",
		"/img/cat.png": "img", "/img/cat.gif": "", "/img/a/cat.png": "",
		"/other": "",
	} {
		resp := get(path)
		require.Equal(t, http.StatusOK, resp.StatusCode, path)
		require.Equal(t, rule, resp.Header.Get("X-Rule"), path)
		require.NotEmpty(t, resp.Header.Get("X-Request-ID"), "%s: the http context's header is kept", path)
	}

	codes := map[int]int{}
	for range 6 {
		resp := get("/api/orders")
		codes[resp.StatusCode]++
		require.Equal(t, "api", resp.Header.Get("X-Rule"), "always: on a 429 too")
		require.Equal(t, "no-store", resp.Header.Get("Cache-Control"))
		require.NotEmpty(t, resp.Header.Get("X-Request-ID"))
	}
	require.GreaterOrEqual(t, codes[http.StatusOK], 3, "rps 1 with burst 2 serves 3 at once: %v", codes)
	require.GreaterOrEqual(t, codes[http.StatusTooManyRequests], 2, "and refuses the rest: %v", codes)
	require.Equal(t, 6, codes[http.StatusOK]+codes[http.StatusTooManyRequests], "%v", codes)
}

func TestCheckCloser(t *testing.T) {
	t.Parallel()
	for _, ok := range []string{"berth_web_close", "berth_my_close_close", "berth_web_close_r0", "berth_my_close_close_r12"} {
		require.NoError(t, checkCloser(ok), ok)
	}
	for _, bad := range []string{"berth_web", "berth_web_close_r", "berth_web_close_rx", "berth_web_close_r1;", "web_close", "berth_web_close {"} {
		require.Error(t, checkCloser(bad), bad)
	}
}

// TestHeaderMatchServe runs nginx with apps that share locations by header
// matches (canary by header): a request that carries a rule's headers goes
// to that rule's app, the first claimant's when several match; any other
// to the app that routes the location without headers, or 404 when none
// does. Each app's location keeps its own options.
func TestHeaderMatchServe(t *testing.T) {
	t.Parallel()
	mk := func(name string, created int64, rules ...spec.Rule) state.App {
		a := app(name, 0, "shop.test")
		a.Spec.CreatedAt = time.Unix(created, 0)
		a.Servers = []state.Server{{Instance: "i0", Address: backend(t, name), Weight: 1}}
		a.Spec.Routing.Rules = rules
		return a
	}
	stable := mk("stable", 1)
	stable.Spec.Routing.ShareWith = []spec.Share{{App: "beta", Paths: []string{"/"}}, {App: "both", Paths: []string{"/"}}, {App: "preview"}}
	beta := mk("beta", 2, spec.Rule{Path: "/", Headers: map[string]string{"X-Beta": "1"}, ResponseHeaders: map[string]string{"X-App": "beta"}})
	beta.Spec.Routing.Paths = nil
	both := mk("both", 3, spec.Rule{Path: "/", Headers: map[string]string{"X-Beta": "1", "X-Team": "~^(red|blue)$"}})
	both.Spec.Routing.Paths = nil
	preview := mk("preview", 4, spec.Rule{Path: "/preview", Headers: map[string]string{"X-Preview": "default"}})
	preview.Spec.Routing.Paths = nil

	sv := serve(t, preview, both, beta, stable)
	o := sv.o

	client := &http.Client{Timeout: 5 * time.Second}
	get := func(path string, headers map[string]string) (int, string, http.Header) {
		t.Helper()
		req, err := http.NewRequest(http.MethodGet, "http://"+o.HTTPListen+path, nil)
		require.NoError(t, err)
		req.Host = "shop.test"
		for k, v := range headers {
			req.Header.Set(k, v)
		}
		var resp *http.Response
		require.Eventually(t, func() bool { resp, err = client.Do(req); return err == nil }, 5*time.Second, 20*time.Millisecond)
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		require.NoError(t, err)
		return resp.StatusCode, string(b), resp.Header
	}
	for _, tc := range []struct {
		path    string
		headers map[string]string
		want    string
	}{
		{"/x", nil, "stable"},
		{"/x", map[string]string{"X-Beta": "1"}, "beta"},
		{"/x", map[string]string{"X-Beta": "2"}, "stable"},
		{"/x", map[string]string{"X-Beta": "1", "X-Team": "red"}, "beta"}, // beta claimed first and matches too
		{"/x", map[string]string{"X-Team": "red"}, "stable"},
		{"/preview/a", map[string]string{"X-Preview": "default"}, "preview"}, // a map's special word, matched as a value
	} {
		code, body, h := get(tc.path, tc.headers)
		require.Equal(t, http.StatusOK, code, "%s %v", tc.path, tc.headers)
		require.Equal(t, tc.want, body, "%s %v", tc.path, tc.headers)
		require.Equal(t, map[string]string{"beta": "beta"}[tc.want], h.Get("X-App"), "each app's location keeps its options")
	}
	// /preview is claimed only with a header: without it, nginx still
	// picks that location, and no app routes it without headers: 404.
	for _, h := range []map[string]string{nil, {"X-Preview": "no"}} {
		code, body, _ := get("/preview/a", h)
		require.Equal(t, http.StatusNotFound, code)
		require.Contains(t, body, "no app is routed here")
	}
	code, body, _ := get("/previewx", nil)
	require.Equal(t, http.StatusOK, code, "/previewx is not under /preview")
	require.Equal(t, "stable", body)

	// The same layout without stable: the shared / has no owner without
	// headers, so a request without them gets Berth's 404.
	sv.reload(2, beta)
	require.Eventually(t, func() bool {
		code, body, _ := get("/x", nil)
		return code == http.StatusNotFound && strings.Contains(body, "no app is routed here")
	}, 5*time.Second, 20*time.Millisecond)
	code, body, _ = get("/x", map[string]string{"X-Beta": "1"})
	require.Equal(t, http.StatusOK, code)
	require.Equal(t, "beta", body)
}

// TestComparableIgnoresTheRecord: a new record of an app whose routing is
// the same (a scale, a new generation) lays out the same config, so
// lbagent in dynamic mode reloads nothing for it; the cache key of the
// route body (the record) must not make the layouts differ.
func TestComparableIgnoresTheRecord(t *testing.T) {
	t.Parallel()
	o := opts
	o.Dynamic = &Dynamic{LuaDir: "/lua", Snapshot: "/s.json", Token: "/t", Drain: true}
	a := app("web", 2, "web.example.com")
	a.Spec.Routing.Rules = []spec.Rule{{Path: "/api", Headers: map[string]string{"X-Beta": "1"}}}
	b := app("web", 3, "web.example.com")
	b.Spec.Routing.Rules = []spec.Rule{{Path: "/api", Headers: map[string]string{"X-Beta": "1"}}}
	b.Spec.Generation = a.Spec.Generation + 1
	d1, _ := Layout(state.Snapshot{Apps: []state.App{a}}, 1, o)
	d2, _ := Layout(state.Snapshot{Apps: []state.App{b}}, 1, o)
	require.NotEqual(t, d1, d2, "the body keys name different records")
	require.True(t, reflect.DeepEqual(d1.Comparable(), d2.Comparable()))
	c := app("web", 2, "web.example.com")
	c.Spec.Routing.Paths = []string{"/other"}
	d3, _ := Layout(state.Snapshot{Apps: []state.App{c}}, 1, o)
	require.False(t, reflect.DeepEqual(d1.Comparable(), d3.Comparable()), "a routing change is a layout change")
}

// TestSplitServe sends 10,000 requests through nginx for each weight of a
// canary split, 0 → 10 → 50 → 100 %, reloading between them, and requires
// the canary's share within ±3 % of the weight, every request answered.
func TestSplitServe(t *testing.T) {
	t.Parallel()
	canary := app("shop-v2", 0, "shop.test")
	canary.Spec.Routing.Paths = []string{"/v2-only"}
	canary.Servers = []state.Server{{Instance: "c", Address: backend(t, "v2"), Weight: 1}}
	stableAddr := backend(t, "v1")
	stable := func(weight int) state.App {
		a := app("shop", 0, "shop.test")
		a.Spec.Routing.Paths = nil
		a.Spec.Routing.Rules = []spec.Rule{{Path: "/", Split: []spec.Split{{App: "shop-v2", Weight: weight}}}}
		a.Servers = []state.Server{{Instance: "s", Address: stableAddr, Weight: 1}}
		a.Spec.Routing.ShareWith = []spec.Share{{App: "shop-v2"}}
		return a
	}
	sv := serve(t, stable(0), canary)
	o := sv.o
	client := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: 4}}
	for _, weight := range []int{0, 10, 50, 100} {
		sv.reload(uint64(weight+1), stable(weight), canary)
		require.Eventually(t, func() bool {
			resp, err := client.Get("http://" + o.StatusListen + "/berth/generation")
			if err != nil {
				return false
			}
			defer resp.Body.Close()
			b, _ := io.ReadAll(resp.Body)
			return strings.TrimSpace(string(b)) == fmt.Sprint(weight+1)
		}, 10*time.Second, 10*time.Millisecond, "nginx serves the config of weight %d", weight)
		// The kept-alive connections lead to the old workers, which serve
		// the old config until they close them: count on new ones.
		client.CloseIdleConnections()
		counts := map[string]int{}
		for range 10_000 {
			req, err := http.NewRequest(http.MethodGet, "http://"+o.HTTPListen+"/x", nil)
			require.NoError(t, err)
			req.Host = "shop.test"
			resp, err := client.Do(req)
			require.NoError(t, err)
			b, err := io.ReadAll(resp.Body)
			resp.Body.Close()
			require.NoError(t, err)
			require.Equal(t, http.StatusOK, resp.StatusCode)
			counts[string(b)]++
		}
		share := float64(counts["v2"]) / 100
		t.Logf("weight %3d %%: canary %.2f %% of 10,000 (%v)", weight, share, counts)
		require.InDelta(t, float64(weight), share, 3, "weight %d: %v", weight, counts)
	}
}

// TestSharedRegexKeepsClaimOrder: a regex location shared by a header
// match stands where its first claim was, so nginx still tries the regexes
// in claim order: an older app's canary regex wins over a later app's
// broader regex for a request that carries its header.
func TestSharedRegexKeepsClaimOrder(t *testing.T) {
	t.Parallel()
	mk := func(name string, created int64, rules ...spec.Rule) state.App {
		a := app(name, 0, "order.test")
		a.Spec.CreatedAt = time.Unix(created, 0)
		a.Spec.Routing.Paths = nil
		a.Spec.Routing.Rules = rules
		a.Servers = []state.Server{{Instance: "i0", Address: backend(t, name), Weight: 1}}
		return a
	}
	first := mk("first", 1, spec.Rule{Path: "^/a", Match: spec.MatchRegex, Headers: map[string]string{"X-T": "1"}})
	first.Spec.Routing.ShareWith = []spec.Share{{App: "later"}}
	later := mk("later", 2, spec.Rule{Path: "^/", Match: spec.MatchRegex})
	sv := serve(t, later, first)
	client := &http.Client{Timeout: 5 * time.Second}
	get := func(path, header string) string {
		t.Helper()
		req, err := http.NewRequest(http.MethodGet, "http://"+sv.o.HTTPListen+path, nil)
		require.NoError(t, err)
		req.Host = "order.test"
		if header != "" {
			req.Header.Set("X-T", header)
		}
		var resp *http.Response
		require.Eventually(t, func() bool { resp, err = client.Do(req); return err == nil }, 5*time.Second, 20*time.Millisecond)
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		require.NoError(t, err)
		return string(b)
	}
	require.Equal(t, "first", get("/a", "1"), "the first claimant's regex comes first")
	require.Equal(t, "later", get("/b", "1"))
	body := get("/a", "")
	require.Contains(t, body, "no app is routed here", "without the header, the shared regex has no owner: nginx picked it first")
}
