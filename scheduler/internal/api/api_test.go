package api

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/berthhq/berth/common/msg"
	"github.com/berthhq/berth/common/spec"
	"github.com/berthhq/berth/internal/testrig"
	"github.com/berthhq/berth/scheduler/internal/auth"
	"github.com/berthhq/berth/scheduler/internal/autoscale"
	"github.com/berthhq/berth/scheduler/internal/store"
	"github.com/stretchr/testify/require"
	"go.uber.org/zap/zaptest"
)

func TestMain(m *testing.M) { testrig.Main(m) }

type client struct {
	t     *testing.T
	url   string
	token string
	st    *store.Store
	keys  *auth.Keyring
}

// newAPI serves an API whose --api-token-file token is token, or an open
// loopback API (no token needed) when token is "".
func newAPI(t *testing.T, token string) *client {
	t.Helper()
	if token == "" {
		return newAPIWith(t, Options{})
	}
	return serveAPI(t, openStore(t), Options{}, auth.Config{Bootstrap: token}, token)
}

// newAPIWith serves an open loopback API with o.
func newAPIWith(t *testing.T, o Options) *client {
	t.Helper()
	o.Open = true
	return serveAPI(t, openStore(t), o, auth.Config{}, "")
}

func openStore(t *testing.T) *store.Store {
	t.Helper()
	st, err := store.Open(context.Background(), testrig.Postgres(t))
	require.NoError(t, err)
	t.Cleanup(st.Close)
	_, err = st.Migrate(context.Background())
	require.NoError(t, err)
	return st
}

// serveAPI serves the API on st with a keyring of kc (unknown tokens load
// at once); the client sends token.
func serveAPI(t *testing.T, st *store.Store, o Options, kc auth.Config, token string) *client {
	t.Helper()
	kc.MissInterval = cmp.Or(kc.MissInterval, time.Nanosecond)
	keys := auth.NewKeyring(st, kc, zaptest.NewLogger(t))
	o.Keyring = keys
	o.Role = func() (bool, uint64) { return true, 7 }
	srv := httptest.NewServer(New(deps(st), o, zaptest.NewLogger(t)))
	t.Cleanup(srv.Close)
	return &client{t: t, url: srv.URL, token: token, st: st, keys: keys}
}

// as returns a client of the same API that sends token.
func (c *client) as(token string) *client {
	cc := *c
	cc.token = token
	return &cc
}

// deps serves every dependency from st.
func deps(st *store.Store) Deps {
	return Deps{Apps: st, Changes: st, Events: st, Decisions: st, DB: st, Claims: st, Hosts: st, History: st, Tokens: st, Certificates: st}
}

func (c *client) do(method, path, body string) (int, map[string]any, []byte) {
	c.t.Helper()
	req, err := http.NewRequest(method, c.url+path, strings.NewReader(body))
	require.NoError(c.t, err)
	if c.token != "" {
		req.Header.Set("Authorization", "Bearer "+c.token)
	}
	resp, err := http.DefaultClient.Do(req)
	require.NoError(c.t, err)
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	var obj map[string]any
	_ = json.Unmarshal(raw, &obj)
	return resp.StatusCode, obj, raw
}

const web = "name: web\nimage: web:1\nport: 8080\nreplicas: 3\n"

func TestAppLifecycle(t *testing.T) {
	t.Parallel()
	c := newAPI(t, "")
	code, obj, _ := c.do("PUT", "/v1/apps/web", web)
	require.Equal(t, 200, code)
	require.EqualValues(t, 1, obj["generation"])
	require.Equal(t, true, obj["changed"])

	code, obj, _ = c.do("PUT", "/v1/apps/web", web)
	require.Equal(t, 200, code)
	require.Equal(t, false, obj["changed"], "the same spec again changes nothing")

	code, obj, _ = c.do("GET", "/v1/apps/web", "")
	require.Equal(t, 200, code)
	require.EqualValues(t, 3, obj["desired_replicas"])
	require.EqualValues(t, 0, obj["observed_replicas"])
	require.Equal(t, "web:1", obj["spec"].(map[string]any)["image"])

	code, _, raw := c.do("GET", "/v1/apps", "")
	require.Equal(t, 200, code)
	var list []AppView
	require.NoError(t, json.Unmarshal(raw, &list))
	require.Len(t, list, 1)

	code, obj, _ = c.do("POST", "/v1/apps/web/scale", `{"replicas": 5}`)
	require.Equal(t, 200, code)
	require.EqualValues(t, 2, obj["generation"])
	require.EqualValues(t, 5, obj["desired_replicas"])

	code, obj, _ = c.do("POST", "/v1/apps/web/rollback", "")
	require.Equal(t, 200, code)
	require.EqualValues(t, 3, obj["desired_replicas"])

	code, _, raw = c.do("GET", "/v1/apps/web/instances", "")
	require.Equal(t, 200, code)
	require.JSONEq(t, "[]", string(raw))

	code, _, _ = c.do("DELETE", "/v1/apps/web", "")
	require.Equal(t, 202, code)
	code, obj, _ = c.do("GET", "/v1/apps/web", "")
	require.Equal(t, 404, code)
	require.Contains(t, obj["error"], "app not found")
}

func TestBadRequests(t *testing.T) {
	t.Parallel()
	c := newAPI(t, "")
	tests := []struct {
		name, method, path, body string
		code                     int
		fields                   []string
	}{
		{"bad spec, every field reported", "PUT", "/v1/apps/web", "name: web\nimage: 'Bad Image'\nport: 0\nroutng: {}\nhealth: {timeout: 5s, interval: 2s}\n", 400,
			[]string{"routng", "image", "port", "health.port", "health.timeout"}},
		{"name differs from the URL", "PUT", "/v1/apps/api", web, 400, []string{"name"}},
		{"not yaml", "PUT", "/v1/apps/web", "{[", 400, []string{""}},
		{"hostile host", "PUT", "/v1/apps/web", web + "routing: {hosts: [\"a.com; return 200\"]}\n", 400, []string{"routing.hosts[0]"}},
		{"too many routes for one app", "PUT", "/v1/apps/web", web + "routing: " + routes(40, 30) + "\n", 400, []string{"routing"}},
		{"a health port the scheduler cannot reach (no --network)", "PUT", "/v1/apps/web", web + "health: {type: tcp, port: 9000}\n", 400, []string{"health.port"}},
		{"scale without replicas", "POST", "/v1/apps/web/scale", `{"count": 2}`, 400, []string{"replicas"}},
		{"scale unknown app", "POST", "/v1/apps/nope/scale", `{"replicas": 2}`, 404, nil},
		{"rollback without history", "POST", "/v1/apps/web/rollback", "", 409, nil},
		{"events with a bad since", "GET", "/v1/events?since=yesterday", "", 400, []string{"since"}},
		{"events with a bad app", "GET", "/v1/events?app=Bad_App", "", 400, []string{"app"}},
		{"method not allowed", "PATCH", "/v1/apps/web", "", 405, nil},
	}
	code, _, _ := c.do("PUT", "/v1/apps/web", web)
	require.Equal(t, 200, code)
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			code, obj, raw := c.do(tt.method, tt.path, tt.body)
			require.Equal(t, tt.code, code, "%s", raw)
			var got []string
			if fs, ok := obj["fields"].([]any); ok {
				for _, f := range fs {
					got = append(got, f.(map[string]any)["path"].(string))
				}
			}
			require.ElementsMatch(t, tt.fields, got, "%s", raw)
		})
	}
}

// routes returns a routing block of hosts × paths.
func routes(hosts, paths int) string { return routesOn("h", hosts, paths) }

// routesOn is routes on hosts named prefix0.example.com, prefix1….
func routesOn(prefix string, hosts, paths int) string {
	var hs, ps []string
	for i := range hosts {
		hs = append(hs, fmt.Sprintf("%s%d.example.com", prefix, i))
	}
	for i := range paths {
		ps = append(ps, fmt.Sprintf("/p%d", i))
	}
	return "{hosts: [" + strings.Join(hs, ", ") + "], paths: [" + strings.Join(ps, ", ") + "]}"
}

// TestMaxRoutes: the routes of every app together are capped (--max-routes),
// as every nginx renders them all; an app that does not grow is never refused.
func TestMaxRoutes(t *testing.T) {
	t.Parallel()
	c := newAPIWith(t, Options{MaxRoutes: 1500})
	app := func(name string, hosts, paths int) string {
		return fmt.Sprintf("name: %s\nimage: web:1\nport: 8080\nrouting: %s\n", name, routesOn(name, hosts, paths))
	}
	code, _, raw := c.do("PUT", "/v1/apps/a", app("a", 10, 100))
	require.Equal(t, 200, code, "%s", raw)
	code, obj, raw := c.do("PUT", "/v1/apps/b", app("b", 6, 100))
	require.Equal(t, 400, code, "%s", raw)
	require.Contains(t, string(raw), "1600", "the error says the total")
	require.Contains(t, string(raw), "--max-routes")
	require.Equal(t, "routing", obj["fields"].([]any)[0].(map[string]any)["path"])
	code, _, raw = c.do("PUT", "/v1/apps/b", app("b", 5, 100))
	require.Equal(t, 200, code, "at the cap: %s", raw)
	code, _, raw = c.do("PUT", "/v1/apps/a", app("a", 9, 100))
	require.Equal(t, 200, code, "shrinking is always allowed: %s", raw)
	code, _, raw = c.do("PUT", "/v1/apps/a", app("a", 11, 100))
	require.Equal(t, 400, code, "growing past the cap is not: %s", raw)
}

func TestACMENeedsADirectory(t *testing.T) {
	t.Parallel()
	spec := "name: web\nimage: web:1\nport: 8080\nrouting: {hosts: [web.example.com], tls: {acme: true}}\n"
	code, obj, raw := newAPI(t, "").do("PUT", "/v1/apps/web", spec)
	require.Equal(t, 400, code, "%s", raw)
	require.Equal(t, "routing.tls.acme", obj["fields"].([]any)[0].(map[string]any)["path"])
	require.Contains(t, string(raw), "--acme-directory")
	code, _, raw = newAPIWith(t, Options{ACME: true}).do("PUT", "/v1/apps/web", spec)
	require.Equal(t, 200, code, "%s", raw)
}

func TestOversizedBody(t *testing.T) {
	t.Parallel()
	c := newAPI(t, "")
	big := web + "command: [\"" + strings.Repeat("x", MaxBody) + "\"]\n"
	code, obj, _ := c.do("PUT", "/v1/apps/web", big)
	require.Equal(t, 413, code)
	require.Contains(t, obj["error"], "request body is over")
}

func TestAutoscaledScaleRefused(t *testing.T) {
	t.Parallel()
	c := newAPI(t, "")
	code, _, _ := c.do("PUT", "/v1/apps/auto", "name: auto\nimage: a:1\nport: 80\nscaling: {min: 2, max: 5, target_cpu_percent: 60}\n")
	require.Equal(t, 200, code)
	code, obj, _ := c.do("POST", "/v1/apps/auto/scale", `{"replicas": 3}`)
	require.Equal(t, 409, code)
	require.Contains(t, obj["error"], "change scaling.min and scaling.max instead")
}

func TestEvents(t *testing.T) {
	t.Parallel()
	c := newAPI(t, "")
	ctx := context.Background()
	l, _, err := c.st.Acquire(ctx, "scheduler", "me", 60e9)
	require.NoError(t, err)
	require.NoError(t, c.st.LeaderTx(ctx, l, func(ctx context.Context, tx *store.Tx) error {
		for _, app := range []string{"web", "api", "web"} {
			if _, err := tx.AddEvent(ctx, store.Event{App: app, Kind: msg.EventInstanceStarted, Message: "started"}); err != nil {
				return err
			}
		}
		return nil
	}))
	code, _, raw := c.do("GET", "/v1/events?app=web", "")
	require.Equal(t, 200, code)
	var evs []EventView
	require.NoError(t, json.Unmarshal(raw, &evs))
	require.Len(t, evs, 2)
	code, _, raw = c.do("GET", "/v1/events?since="+jsonNumber(evs[0].ID), "")
	require.Equal(t, 200, code)
	require.NoError(t, json.Unmarshal(raw, &evs))
	require.Len(t, evs, 2, "events after the first")
}

func jsonNumber(n int64) string { b, _ := json.Marshal(n); return string(b) }

func TestAuthAndProbes(t *testing.T) {
	t.Parallel()
	c := newAPI(t, "s3cret")
	code, _, _ := c.do("GET", "/v1/apps", "")
	require.Equal(t, 200, code)

	for _, hdr := range []string{"", "Bearer wrong", "Basic s3cret", "bearer s3cret"} {
		req, _ := http.NewRequest("GET", c.url+"/v1/apps", nil)
		if hdr != "" {
			req.Header.Set("Authorization", hdr)
		}
		resp, err := http.DefaultClient.Do(req)
		require.NoError(t, err)
		resp.Body.Close()
		require.Equal(t, 401, resp.StatusCode, "header %q", hdr)
		require.Equal(t, `Bearer realm="berth"`, resp.Header.Get("WWW-Authenticate"))
	}
	// Probes need no token.
	resp, err := http.Get(c.url + "/healthz")
	require.NoError(t, err)
	resp.Body.Close()
	require.Equal(t, 200, resp.StatusCode)
	resp, err = http.Get(c.url + "/readyz")
	require.NoError(t, err)
	var rd Readiness
	require.NoError(t, json.NewDecoder(resp.Body).Decode(&rd))
	resp.Body.Close()
	require.Equal(t, Readiness{Ready: true, Role: "leader", Term: 7}, rd)
}

func TestAppMetrics(t *testing.T) {
	t.Parallel()
	now := time.Now().UTC()
	h := &msg.Histogram{}
	h.Add(40, 100)
	h.Finish()
	c := newAPIWith(t, Options{Samples: func(app string, _ time.Time) ([]autoscale.Traffic, []autoscale.Usage, autoscale.Policy, bool) {
		if app != "auto" {
			return nil, nil, autoscale.Policy{}, false
		}
		return []autoscale.Traffic{{Node: "lb1", At: now, RPS: 20, Latency: h}},
			[]autoscale.Usage{{Instance: "a1", At: now, CPUPercent: 55, MemoryPercent: 10}}, autoscale.Policy{}, true
	}})
	code, _, _ := c.do("PUT", "/v1/apps/web", web)
	require.Equal(t, http.StatusOK, code)
	code, _, _ = c.do("PUT", "/v1/apps/auto", "name: auto\nimage: web:1\nport: 8080\nscaling: {min: 2, max: 4, target_rps_per_replica: 10}\nrouting: {hosts: [auto.test]}\n")
	require.Equal(t, http.StatusOK, code)

	code, obj, _ := c.do("GET", "/v1/apps/web/metrics", "")
	require.Equal(t, http.StatusOK, code)
	require.Equal(t, false, obj["autoscaled"])
	require.Empty(t, obj["traffic"])

	l, ok, err := c.st.Acquire(context.Background(), "s", "a", time.Minute)
	require.NoError(t, err)
	require.True(t, ok)
	require.NoError(t, c.st.LeaderTx(context.Background(), l, func(ctx context.Context, tx *store.Tx) error {
		_, err := tx.RecordDecision(ctx, store.Decision{App: "auto", Current: 2, Desired: 3, Recommendation: 3,
			Reasons: json.RawMessage(`[{"metric":"rps","value":15,"target":10,"ratio":1.5,"replicas":3}]`), At: now})
		return err
	}))
	var m MetricsView
	code, _, raw := c.do("GET", "/v1/apps/auto/metrics", "")
	require.Equal(t, http.StatusOK, code)
	require.NoError(t, json.Unmarshal(raw, &m))
	require.True(t, m.Autoscaled)
	require.Equal(t, 3, m.DesiredReplicas)
	require.Equal(t, 60*time.Second, m.Scaling.Window.Std(), "the policy with its defaults")
	require.Len(t, m.Traffic, 1)
	require.InDelta(t, 40, m.Traffic[0].P95MS, 1)
	require.Equal(t, int64(100), m.Traffic[0].Requests)
	require.Equal(t, []UsageSample{{Instance: "a1", At: now, CPUPercent: 55, MemoryPercent: 10}}, m.Usage)
	require.Len(t, m.Decisions, 1)
	require.Equal(t, 3, m.Decisions[0].Desired)

	code, obj, _ = c.do("GET", "/v1/apps/auto/metrics?decisions=lots", "")
	require.Equal(t, http.StatusBadRequest, code)
	require.Contains(t, obj["error"], "decisions")
	code, _, _ = c.do("GET", "/v1/apps/nope/metrics", "")
	require.Equal(t, http.StatusNotFound, code)
	code, obj, _ = c.do("POST", "/v1/apps/auto/scale", `{"replicas": 5}`)
	require.Equal(t, http.StatusConflict, code)
	require.Contains(t, obj["error"], "change scaling.min and scaling.max instead")
}

func TestPostgresUnreachable(t *testing.T) {
	t.Parallel()
	// A store whose Postgres is not listening, with a password that must
	// not show.
	port := testrig.FreePort(t)
	st, err := store.Open(context.Background(), fmt.Sprintf("postgres://berth:hunter2@127.0.0.1:%d/berth?sslmode=disable", port))
	require.NoError(t, err)
	t.Cleanup(st.Close)
	srv := httptest.NewServer(New(deps(st), Options{Open: true}, zaptest.NewLogger(t)))
	t.Cleanup(srv.Close)
	c := &client{t: t, url: srv.URL}
	tests := []struct{ name, method, path, body string }{
		{"list", "GET", "/v1/apps", ""},
		{"get", "GET", "/v1/apps/web", ""},
		{"instances", "GET", "/v1/apps/web/instances", ""},
		{"metrics", "GET", "/v1/apps/web/metrics", ""},
		{"apply", "PUT", "/v1/apps/web", web},
		{"scale", "POST", "/v1/apps/web/scale", `{"replicas": 2}`},
		{"rollback", "POST", "/v1/apps/web/rollback", ""},
		{"delete", "DELETE", "/v1/apps/web", ""},
		{"events", "GET", "/v1/events", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			c := &client{t: t, url: c.url}
			code, obj, raw := c.do(tt.method, tt.path, tt.body)
			require.Equal(t, http.StatusServiceUnavailable, code, "%s", raw)
			require.Equal(t, UnavailableMessage, obj["error"])
			for _, secret := range []string{"hunter2", strconv.Itoa(port), "berth:"} {
				require.NotContains(t, string(raw), secret)
			}
		})
	}
	resp, err := http.Get(srv.URL + "/readyz")
	require.NoError(t, err)
	defer resp.Body.Close()
	var rd Readiness
	require.NoError(t, json.NewDecoder(resp.Body).Decode(&rd))
	require.Equal(t, http.StatusServiceUnavailable, resp.StatusCode)
	require.Equal(t, Readiness{Role: "follower", Error: UnavailableMessage}, rd)
}

// failing answers every call with err.
type failing struct{ err error }

func (f failing) Get(context.Context, string) (store.App, error)              { return store.App{}, f.err }
func (f failing) List(context.Context) ([]store.App, error)                   { return nil, f.err }
func (f failing) Instances(context.Context, string) ([]store.Instance, error) { return nil, f.err }

func TestErrorStatus(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		err  error
		code int
		msg  string
	}{
		{"not found", fmt.Errorf("get web: %w", store.ErrNotFound), http.StatusNotFound, "get web: store: app not found"},
		{"unavailable", fmt.Errorf("list apps: %w", store.ErrUnavailable), http.StatusServiceUnavailable, UnavailableMessage},
		{"anything else", errors.New("list apps: postgres://berth:hunter2@db/x broke"), http.StatusInternalServerError, "internal error; see the scheduler's log"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			srv := httptest.NewServer(New(Deps{Apps: failing{tt.err}}, Options{Open: true}, zaptest.NewLogger(t)))
			t.Cleanup(srv.Close)
			c := &client{t: t, url: srv.URL}
			code, obj, _ := c.do("GET", "/v1/apps/web", "")
			require.Equal(t, tt.code, code)
			require.Equal(t, tt.msg, obj["error"])
		})
	}
}

// TestAppTrafficView: GET of an app that is not autoscaled shows its
// traffic over the lbagents' last windows; an app no lbagent reported has none.
func TestAppTrafficView(t *testing.T) {
	t.Parallel()
	at := time.Date(2026, 12, 6, 10, 0, 0, 0, time.UTC)
	c := newAPIWith(t, Options{Traffic: func(app string, _ time.Time) (TrafficView, bool) {
		if app != "web" {
			return TrafficView{}, false
		}
		return TrafficView{RPS: 42.5, ErrorRate: 0.02, P95MS: 87.3, Requests: 425, Nodes: 2, Window: spec.Duration(5 * time.Second), At: at}, true
	}})
	code, _, _ := c.do("PUT", "/v1/apps/web", web)
	require.Equal(t, http.StatusOK, code)
	code, _, _ = c.do("PUT", "/v1/apps/quiet", "name: quiet\nimage: web:1\nport: 8080\nrouting: {hosts: [quiet.test]}\n")
	require.Equal(t, http.StatusOK, code)

	code, obj, _ := c.do("GET", "/v1/apps/web", "")
	require.Equal(t, http.StatusOK, code)
	require.Equal(t, map[string]any{"rps": 42.5, "error_rate": 0.02, "p95_ms": 87.3, "requests": 425.0, "nodes": 2.0,
		"window": "5s", "at": "2026-12-06T10:00:00Z"}, obj["traffic"])

	code, obj, _ = c.do("GET", "/v1/apps/quiet", "")
	require.Equal(t, http.StatusOK, code)
	require.NotContains(t, obj, "traffic")
	code, _, raw := c.do("GET", "/v1/apps", "")
	require.Equal(t, http.StatusOK, code)
	require.NotContains(t, string(raw), "traffic", "the list shows none")
}
