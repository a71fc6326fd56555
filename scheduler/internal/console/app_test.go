package console

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.uber.org/zap/zaptest"

	"github.com/berthhq/berth/common/msg"
	"github.com/berthhq/berth/scheduler/internal/api"
	"github.com/berthhq/berth/scheduler/internal/auth"
	"github.com/berthhq/berth/scheduler/internal/autoscale"
	"github.com/berthhq/berth/scheduler/internal/store"
)

// appRig is the rig's console in front of an API with o (health values,
// traffic, ejections) and, when wrap is set, wrapped by it.
func appRig(t *testing.T, o api.Options, wrap func(http.Handler) http.Handler) *rig {
	t.Helper()
	r := newRig(t, nil)
	o.Keyring = r.keys
	deps := api.Deps{Apps: r.st, Changes: r.st, Events: r.st, Decisions: r.st, DB: r.st, Claims: r.st, Hosts: r.st, History: r.st, Tokens: r.st, Certificates: r.st}
	var h http.Handler = api.New(deps, o, zaptest.NewLogger(t))
	if wrap != nil {
		h = wrap(h)
	}
	con, err := New(Options{Keyring: r.keys, API: h, Live: r.live}, zaptest.NewLogger(t))
	require.NoError(t, err)
	srv := httptest.NewServer(con)
	t.Cleanup(srv.Close)
	out := *r
	out.url = srv.URL
	return &out
}

// asLeader runs f in a leader transaction of the rig's store.
func (r *rig) asLeader(f func(ctx context.Context, tx *store.Tx) error) {
	r.t.Helper()
	ctx := context.Background()
	l, ok, err := r.st.Acquire(ctx, "scheduler", "console-test", time.Minute)
	require.NoError(r.t, err)
	require.True(r.t, ok)
	require.NoError(r.t, r.st.LeaderTx(ctx, l, f))
}

const appHostile = `<script>alert("x")</script>`

// webSpec routes on a host with rules of every kind and a self-signed
// certificate.
const webSpec = `name: web
image: web:1
port: 8080
replicas: 3
health: {type: http, path: /healthz}
routing:
  hosts: [shop.example.com]
  paths: [/]
  tls: {self_signed: true, redirect_http: true}
  rules:
    - {path: /api, rate_limit: {rps: 100, burst: 50}, response_headers: {Cache-Control: no-store}}
    - {path: /beta, headers: {X-Beta: "1"}, split: [{app: canary, weight: 10}]}
`

// appFixture applies web (generation 1, then 2 with image web:2), puts
// its instances on two hosts and the local engine (one of generation 1),
// and records events, one carrying markup and a log tail.
func appFixture(r *rig) {
	r.apply(webSpec)
	r.apply(strings.Replace(webSpec, "web:1", "web:2", 1) + "env: {GREETING: \"<b>hi</b>\"}\n")
	r.asLeader(func(ctx context.Context, tx *store.Tx) error {
		for _, in := range []store.Instance{
			{ID: "web-a1", App: "web", Generation: 2, SpecHash: "h2", State: "running", Health: "healthy", Address: "10.0.0.1:30001", Host: "alpha"},
			{ID: "web-b1", App: "web", Generation: 2, SpecHash: "h2", State: "running", Health: "unhealthy", Address: "10.0.0.2:30001", Host: "beta", Restarts: 4},
			{ID: "web-b2", App: "web", Generation: 1, SpecHash: "h1", State: "running", Health: "healthy", Address: "10.0.0.2:30002", Host: "beta"},
			{ID: "web-l1", App: "web", Generation: 2, SpecHash: "h2", State: "starting", Health: "unknown", Address: "127.0.0.1:30003"},
		} {
			if err := tx.PutInstance(ctx, in); err != nil {
				return err
			}
		}
		if _, err := tx.AddEvent(ctx, store.Event{App: "web", Instance: "web-b1", Kind: msg.EventInstanceExited, Message: "exited " + appHostile,
			Details: map[string]string{"generation": "2", "exit_code": "3", "reason": "exit code 3"},
			LogTail: []string{"booting", `panic: <img src=x onerror=alert(1)>`}}); err != nil {
			return err
		}
		_, err := tx.AddEvent(ctx, store.Event{App: "web", Kind: msg.EventAppScaled, Message: "scaled to 3"})
		return err
	})
}

// health is the published check of web-b1: seven results, failing.
func appHealth(at time.Time) func(app, inst string) (*msg.Health, bool) {
	h := &msg.Health{App: "web", Instance: "web-b1", Status: msg.StatusUnhealthy, Failure: msg.FailureTimeout, Message: "timeout after 2s",
		Checker: "healthd-a", Generation: 2, CheckedAt: at}
	for i := range 7 {
		res := msg.HealthResult{At: at.Add(-time.Duration(i) * time.Second), LatencyMS: float64(100 + i), Failure: msg.FailureTimeout, Message: "timeout " + appHostile}
		if i == 0 {
			res.Message = "newest result"
		}
		h.History = append(h.History, res)
	}
	return func(app, inst string) (*msg.Health, bool) {
		if app == "web" && inst == "web-b1" {
			return h, true
		}
		return nil, false
	}
}

func appGet(t *testing.T, r *rig, c *http.Client, path string) (int, string) {
	t.Helper()
	resp, page := get(t, c, r.url+path)
	return resp.StatusCode, page
}

func TestAppPage(t *testing.T) {
	t.Parallel()
	at := time.Now().UTC().Truncate(time.Second)
	r := appRig(t, api.Options{
		Health: appHealth(at),
		Traffic: func(string, time.Time) (api.TrafficView, bool) {
			return api.TrafficView{RPS: 12.5, ErrorRate: 0.02, P95MS: 87, Requests: 750, Nodes: 2}, true
		},
		Ejected: func(string, time.Time) []api.EjectionView {
			return []api.EjectionView{{Node: "edge-1", Instance: "web-b1", Reason: "5 consecutive 5xx", Times: 1, Until: at.Add(time.Minute)}}
		},
	}, nil)
	appFixture(r)
	c := r.browser()
	require.Equal(t, http.StatusSeeOther, r.login(c, r.token("viewer", auth.Read)).StatusCode)
	code, page := appGet(t, r, c, "/ui/apps/web")
	require.Equal(t, http.StatusOK, code, page)

	t.Run("header", func(t *testing.T) {
		require.Contains(t, page, `<body data-live="refresh" data-app="web">`, "live: refetched on the app's events")
		require.Contains(t, page, "generation 2")
		require.Contains(t, page, `1 ready</span> / 3 desired · 3 running`, "one instance of the desired generation is healthy")
		require.Contains(t, page, "web:2")
		require.Contains(t, page, "12.5 req/s")
		require.Contains(t, page, "2.00 % 5xx")
		require.Contains(t, page, "p95 87 ms")
		require.Contains(t, page, "(750 requests from 2 lbagent(s))", "no window reported: none said")
		require.Contains(t, page, "web-b1 by edge-1")
		require.Contains(t, page, "exit code 3 (exit 3)")
	})
	t.Run("instances by host", func(t *testing.T) {
		alpha, beta, local := strings.Index(page, "<h3>Host alpha</h3>"), strings.Index(page, "<h3>Host beta</h3>"), strings.Index(page, "<h3>Host (local engine)</h3>")
		require.Positive(t, alpha)
		require.Greater(t, beta, alpha)
		require.Greater(t, local, beta, "the local engine last")
		for id, host := range map[string]int{"web-a1": alpha, "web-b1": beta, "web-b2": beta, "web-l1": local} {
			i := strings.Index(page, `data-name="`+id+`"`)
			require.Greater(t, i, host, id)
		}
		require.Less(t, strings.Index(page, `data-name="web-a1"`), beta)
		require.Less(t, strings.Index(page, `data-name="web-b2"`), local)
		require.Contains(t, page, `<tr data-name="web-b2" class="old">`, "an instance of generation 1 is marked")
		require.Contains(t, page, `1 <small class="bad">old</small>`)
		require.Contains(t, page, "10.0.0.2:30001")
		require.Contains(t, page, "<td>4</td>", "restarts")
	})
	t.Run("check results", func(t *testing.T) {
		require.Contains(t, page, "newest result")
		require.Contains(t, page, "100.0 ms timeout: newest result")
		require.Contains(t, page, "104.0 ms")
		require.NotContains(t, page, "105.0 ms", "the last five results only")
		require.Contains(t, page, "timeout after 2s")
		require.Contains(t, page, "timeout &lt;script&gt;")
		require.Contains(t, page, api.NoteNotChecked)
	})
	t.Run("routing and certificate", func(t *testing.T) {
		require.Contains(t, page, "shop.example.com")
		require.Contains(t, page, "100/s per client, burst 50")
		require.Contains(t, page, "<div>Cache-Control: no-store</div>")
		require.Contains(t, page, "<div>X-Beta: 1</div>")
		require.Contains(t, page, "10 % → canary")
		require.Contains(t, page, "self-signed by each lbagent")
		require.Contains(t, page, "redirected to HTTPS")
	})
	t.Run("history", func(t *testing.T) {
		require.Contains(t, page, `<a href="/ui/apps/web/history/2">2</a> <small class="good">current</small>`)
		require.Contains(t, page, `<a href="/ui/apps/web/history/1">1</a>`)
		require.Contains(t, page, "image web:1→web:2")
	})
	t.Run("events", func(t *testing.T) {
		scaled, exited := strings.Index(page, "scaled to 3"), strings.Index(page, "exited &lt;script&gt;")
		require.Positive(t, exited)
		require.Positive(t, scaled)
		require.Less(t, scaled, exited, "newest first")
		require.Contains(t, page, "<pre class=\"tail\">booting\npanic: &lt;img src=x onerror=alert(1)&gt;</pre>", "log tails, as text")
		require.Contains(t, page, "last line: panic: &lt;img")
		require.NotContains(t, page, "<img")
	})
	t.Run("actions", func(t *testing.T) {
		require.Contains(t, page, `<form method="get" action="/ui/apps/web/scale" class="inline">`)
		require.Contains(t, page, `name="replicas" type="number" min="0" value="3"`)
		require.Contains(t, page, `href="/ui/apps/web/rollback"`)
		require.Contains(t, page, `href="/ui/apps/web/restart"`)
		require.Less(t, strings.Index(page, `action="/ui/apps/web/scale"`), strings.Index(page, `<main id="content">`),
			"outside what live updates replace, so a value being typed survives them")
	})
	require.NotContains(t, page, appHostile)
	require.Equal(t, 1, strings.Count(page, "<script"), "the console's one script file")

	// A deploy token limited to other apps reads the app, but the API
	// gives it no log tail.
	secret, hash, err := auth.New(nil)
	require.NoError(t, err)
	_, err = r.st.CreateToken(context.Background(), store.Token{Name: "others", Scope: auth.Deploy.String(), Hash: hash, Apps: []string{"other-*"}})
	require.NoError(t, err)
	limited := r.browser()
	require.Equal(t, http.StatusSeeOther, r.login(limited, secret).StatusCode)
	code, page = appGet(t, r, limited, "/ui/apps/web")
	require.Equal(t, http.StatusOK, code)
	require.Contains(t, page, "exited &lt;script&gt;")
	require.NotContains(t, page, "booting")
	require.NotContains(t, page, "last line")
}

func TestAppPageGeneration(t *testing.T) {
	t.Parallel()
	r := newRig(t, nil)
	appFixture(r)
	c := r.browser()
	r.login(c, r.token("viewer", auth.Read))
	code, page := appGet(t, r, c, "/ui/apps/web/history/2")
	require.Equal(t, http.StatusOK, code, page)
	require.Contains(t, page, `against <a href="/ui/apps/web/history/1">generation 1</a>`)
	require.Contains(t, page, `<pre class="diff">`)
	require.Contains(t, page, "&#43;image: web:2")
	require.Contains(t, page, "&lt;b&gt;hi&lt;/b&gt;", "the spec's values are text")
	require.NotContains(t, page, "<b>hi")
	require.Contains(t, page, `<pre class="yaml">name: web`)

	code, page = appGet(t, r, c, "/ui/apps/web/history/1")
	require.Equal(t, http.StatusOK, code)
	require.Contains(t, page, "No earlier generation is kept")

	for _, tt := range []struct {
		path string
		code int
		want string
	}{
		{"/ui/apps/web/history/9", http.StatusNotFound, "generation 9"},
		{"/ui/apps/web/history/0", http.StatusBadRequest, "must be a generation of the app"},
		{"/ui/apps/web/history/x%3Cb%3E", http.StatusBadRequest, "x&lt;b&gt;"},
		{"/ui/apps/nosuch/history/1", http.StatusNotFound, "nosuch"},
		{"/ui/apps/%3Cb%3E/history/1", http.StatusBadRequest, "is not an app name"},
	} {
		code, page := appGet(t, r, c, tt.path)
		require.Equal(t, tt.code, code, tt.path)
		require.Contains(t, page, tt.want, tt.path)
		require.Contains(t, page, `class="error"`, tt.path)
		require.NotContains(t, page, "<b>", tt.path)
	}
}

func TestAppPageRefusesWhatIsNoApp(t *testing.T) {
	t.Parallel()
	r := newRig(t, nil)
	c := r.browser()
	r.login(c, admin)
	code, page := appGet(t, r, c, "/ui/apps/nosuch")
	require.Equal(t, http.StatusNotFound, code)
	require.Contains(t, page, `<p class="error" role="alert">`)
	require.Contains(t, page, "nosuch")
	require.Contains(t, page, `data-live="refresh" data-app="nosuch"`, "it shows once the app is applied")

	for _, name := range []string{"%3Cscript%3Ealert(1)%3C%2Fscript%3E", "Web", strings.Repeat("a", 5000)} {
		code, page = appGet(t, r, c, "/ui/apps/"+name)
		require.Equal(t, http.StatusBadRequest, code, name)
		require.Contains(t, page, "is not an app name")
		require.Equal(t, 1, strings.Count(page, "<script"), "the console's one script file")
		require.Less(t, len(page), 4000, "a long name is cut")
		require.Contains(t, page, `data-live="" data-app=""`, "follows nothing")
	}
}

// An API error is shown as the API words it: the whole page's when the
// app cannot be read, a section's when one of its reads fails.
func TestAppPageShowsAPIErrors(t *testing.T) {
	t.Parallel()
	fail := func(w http.ResponseWriter, code int, text string) {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(code)
		_ = json.NewEncoder(w).Encode(api.Error{Error: text})
	}
	r := appRig(t, api.Options{}, func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
			switch req.URL.Path {
			case "/v1/apps/broken":
				fail(w, http.StatusServiceUnavailable, api.UnavailableMessage)
			case "/v1/apps/web/history":
				fail(w, http.StatusInternalServerError, "internal error; see the scheduler's log")
			case "/v1/apps/web/instances/web-a1":
				fail(w, http.StatusForbidden, "forbidden: <needs> read")
			default:
				next.ServeHTTP(w, req)
			}
		})
	})
	appFixture(r)
	c := r.browser()
	r.login(c, admin)
	code, page := appGet(t, r, c, "/ui/apps/broken")
	require.Equal(t, http.StatusServiceUnavailable, code)
	require.Contains(t, page, "cannot read the app: postgres is unreachable")

	code, page = appGet(t, r, c, "/ui/apps/web")
	require.Equal(t, http.StatusOK, code, "the other sections show")
	require.Contains(t, page, `<p class="error">cannot read the history: internal error; see the scheduler&#39;s log</p>`)
	require.Contains(t, page, "cannot read its checks: forbidden: &lt;needs&gt; read")
	require.Contains(t, page, "scaled to 3")
}

// An autoscaled app shows its newest decisions with their reasons.
func TestAppPageScalingDecisions(t *testing.T) {
	t.Parallel()
	r := newRig(t, nil)
	r.apply("name: auto\nimage: auto:1\nport: 8080\nscaling: {min: 1, max: 5, target_cpu_percent: 60}\n")
	reasons, err := json.Marshal([]autoscale.Reason{{Metric: "cpu", Value: 90, Target: 60, Ratio: 1.5, Replicas: 2, Note: appHostile}})
	require.NoError(t, err)
	r.asLeader(func(ctx context.Context, tx *store.Tx) error {
		_, err := tx.RecordDecision(ctx, store.Decision{App: "auto", Current: 1, Desired: 1, Recommendation: 2, Reasons: reasons, Limits: []string{"scale-up stabilisation"}})
		return err
	})
	c := r.browser()
	r.login(c, admin)
	code, page := appGet(t, r, c, "/ui/apps/auto")
	require.Equal(t, http.StatusOK, code, page)
	require.Contains(t, page, "1–5 replicas · CPU 60 %")
	require.Contains(t, page, "1 → 1: cpu 90/60 (×1.50 → 2) &lt;script&gt;")
	require.Contains(t, page, "held by: scale-up stabilisation")
	require.NotContains(t, page, appHostile)
}

// The page reads the check results of the first appMaxDetailed instances
// alone, and says how many more there are.
func TestAppPageBoundsTheInstancesItDetails(t *testing.T) {
	t.Parallel()
	r := newRig(t, nil)
	r.apply("name: many\nimage: many:1\nport: 8080\nreplicas: 60\n")
	r.asLeader(func(ctx context.Context, tx *store.Tx) error {
		for i := range appMaxDetailed + 2 {
			if err := tx.PutInstance(ctx, store.Instance{ID: fmt.Sprintf("many-%02d", i), App: "many", Generation: 1, State: "running", Health: "unknown", Host: "h1"}); err != nil {
				return err
			}
		}
		return nil
	})
	c := r.browser()
	r.login(c, admin)
	code, page := appGet(t, r, c, "/ui/apps/many")
	require.Equal(t, http.StatusOK, code)
	require.Equal(t, appMaxDetailed+2, strings.Count(page, `<tr data-name="many-`))
	require.Equal(t, appMaxDetailed, strings.Count(page, api.NoteNoCheck), "one check read per detailed instance")
	require.Equal(t, 2, strings.Count(page, "not read</small>"))
	require.Contains(t, page, "The check results of 2 more instances are not read here")
}
