package api

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http/httptest"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest"

	"github.com/berthhq/berth/common/msg"
	"github.com/berthhq/berth/scheduler/internal/store"
)

// TestSummaryOfEveryApp: GET /v1/apps?summary=true counts each app's
// replicas as GET /v1/apps/{name} does (mixed generations, an unhealthy
// instance, one lost with its host, one on a host that is down), decides
// its rollout the same (rolled back, failed, rolling), and adds the ready
// replicas, the health tally, the traffic and the newest event. Without
// the parameter the list is as before.
func TestSummaryOfEveryApp(t *testing.T) {
	t.Parallel()
	traffic := TrafficView{RPS: 12.5, ErrorRate: 0.02, P95MS: 80, Requests: 125, Nodes: 1}
	c := newAPIWith(t, Options{SpecHash: func(a store.App) string { return a.Spec.Image },
		Traffic: func(app string, _ time.Time) (TrafficView, bool) { return traffic, app == "web" }})
	ctx := context.Background()
	for _, src := range []string{
		"name: web\nimage: web:1\nport: 8080\nrouting: {hosts: [web.example.com]}\nreplicas: 3\n",
		"name: web\nimage: web:2\nport: 8080\nrouting: {hosts: [web.example.com]}\nreplicas: 3\n",
		"name: web\nimage: web:1\nport: 8080\nrouting: {hosts: [web.example.com]}\nreplicas: 3\n", // generation 3: web:1 again
		"name: api\nimage: api:1\nport: 8080\nrouting: {hosts: [api.example.com]}\n",
		"name: idle\nimage: idle:1\nport: 8080\nrouting: {hosts: [idle.example.com]}\n",
	} {
		code, _, raw := c.do("PUT", "/v1/apps/"+load(t, src).Name, src)
		require.Equal(t, 200, code, "%s", raw)
	}
	for _, h := range []string{"h1", "h2"} {
		_, err := c.st.PutHost(ctx, store.Host{Name: h, DockerURL: "unix:///run/" + h + ".sock", Address: "10.0.0.1"})
		require.NoError(t, err)
	}
	l, _, err := c.st.Acquire(ctx, "scheduler", "me", time.Minute)
	require.NoError(t, err)
	require.NoError(t, c.st.LeaderTx(ctx, l, func(ctx context.Context, tx *store.Tx) error {
		for _, in := range []store.Instance{
			{ID: "o1", App: "web", Generation: 1, State: msg.StateRunning, Health: msg.StatusHealthy, SpecHash: "web:1", Host: "h1"},
			{ID: "o2", App: "web", Generation: 3, State: msg.StateRunning, Health: msg.StatusHealthy, SpecHash: "web:1", Host: "h1"},
			{ID: "o3", App: "web", Generation: 3, State: msg.StateRunning, Health: msg.StatusUnhealthy, SpecHash: "web:1", Host: "h1"},
			{ID: "n9", App: "web", Generation: 2, State: msg.StateRunning, Health: msg.StatusUnknown, SpecHash: "web:2", Host: "h1"},
			{ID: "x1", App: "web", Generation: 3, State: msg.StateRunning, Health: msg.StatusHealthy, SpecHash: "web:1", Host: "h2"},
			{ID: "l1", App: "web", Generation: 3, State: msg.StateFailed, Health: msg.StatusUnknown, SpecHash: "web:1", Host: "h2"},
			{ID: "s1", App: "web", Generation: 2, State: msg.StateStopped, Health: msg.StatusUnknown, SpecHash: "web:2", Host: "h1"},
			{ID: "a1", App: "api", Generation: 1, State: msg.StateStarting, Health: msg.StatusUnknown, SpecHash: "api:1", Host: "h1"},
		} {
			if err := tx.PutInstance(ctx, in); err != nil {
				return err
			}
		}
		for _, e := range []store.Event{
			{App: "web", Kind: msg.EventRolloutRolledBack, Message: "generation 2 failed: rolled back",
				Details: map[string]string{"from_generation": "2", "generation": "3", "cause": "generation 2 failed: 3 of its instances failed"}},
			{App: "web", Instance: "n9", Kind: msg.EventInstanceExited, Message: "instance n9 exited", Details: map[string]string{"generation": "2"}},
			{App: "api", Kind: msg.EventRolloutFailed, Message: "generation 1 failed", Details: map[string]string{"generation": "1", "cause": "its health check never passed"}},
		} {
			if _, err := tx.AddEvent(ctx, e); err != nil {
				return err
			}
		}
		if err := tx.SetHostState(ctx, "h1", store.HostUp, "", time.Now(), time.Now()); err != nil {
			return err
		}
		return tx.SetHostState(ctx, "h2", store.HostDown, "", time.Now(), time.Now().Add(-time.Minute))
	}))

	// GET of the instances says which run the desired spec: by its hash,
	// so o1 (generation 1, the spec generation 3 came back to) does.
	code, _, raw := c.do("GET", "/v1/apps/web/instances", "")
	require.Equal(t, 200, code, "%s", raw)
	var ivs []InstanceView
	require.NoError(t, json.Unmarshal(raw, &ivs))
	desired := map[string]bool{}
	for _, iv := range ivs {
		desired[iv.ID] = iv.Desired
	}
	require.Equal(t, map[string]bool{"o1": true, "o2": true, "o3": true, "n9": false, "x1": true, "l1": true, "s1": false}, desired)

	code, _, raw = c.do("GET", "/v1/apps?summary=true", "")
	require.Equal(t, 200, code, "%s", raw)
	var vs []AppView
	require.NoError(t, json.Unmarshal(raw, &vs))
	require.Len(t, vs, 3)
	byName := map[string]AppView{}
	for _, v := range vs {
		byName[v.Name] = v
		require.NotNil(t, v.Summary, v.Name)
		require.Nil(t, v.Spec, "the list shows no spec")
		require.Nil(t, v.Serving)
		require.Nil(t, v.Failures)
	}
	web := byName["web"]
	require.Equal(t, 4, web.ObservedReplicas, "o1, o2, o3, n9: x1's host is down")
	require.Equal(t, 1, web.LostReplicas)
	require.Equal(t, &SummaryView{ReadyReplicas: 3, Health: HealthTally{Healthy: 2, Unhealthy: 1, Unknown: 1},
		LastEvent: &LastEventView{ID: web.Summary.LastEvent.ID, Kind: msg.EventInstanceExited, Message: "instance n9 exited", At: web.Summary.LastEvent.At}},
		web.Summary, "ready: o1, o2 and x1 run web:1 healthy, as the rollout counts them")
	require.Equal(t, "2 healthy, 1 unhealthy, 1 unknown", web.Summary.Health.String())
	require.Equal(t, &traffic, web.Traffic)
	require.Equal(t, RolloutRolledBack, web.Rollout.State)
	require.Equal(t, "generation 2 failed: 3 of its instances failed", web.Rollout.Cause)

	// The same counts and rollout as GET of the app.
	for _, name := range []string{"web", "api", "idle"} {
		code, _, raw = c.do("GET", "/v1/apps/"+name, "")
		require.Equal(t, 200, code, "%s", raw)
		var one AppView
		require.NoError(t, json.Unmarshal(raw, &one))
		s := byName[name]
		require.Equal(t, one.ObservedReplicas, s.ObservedReplicas, name)
		require.Equal(t, one.LostReplicas, s.LostReplicas, name)
		require.Equal(t, one.Rollout, s.Rollout, name)
		require.Equal(t, one.Breaker, s.Breaker, name)
	}
	api := byName["api"]
	require.Equal(t, RolloutFailed, api.Rollout.State)
	require.Equal(t, "its health check never passed", api.Rollout.Cause)
	require.Equal(t, 1, api.Rollout.Starting)
	require.Equal(t, HealthTally{}, api.Summary.Health, "a1 does not run yet")
	require.Equal(t, "-", api.Summary.Health.String())
	require.Nil(t, api.Traffic)
	idle := byName["idle"]
	require.Equal(t, RolloutRolling, idle.Rollout.State, "none of its 1 replica is ready")
	require.Nil(t, idle.Summary.LastEvent)

	// Without the parameter, or with false, the list is as it was, byte
	// for byte.
	apps, err := c.st.List(ctx)
	require.NoError(t, err)
	plain := make([]AppView, 0, len(apps))
	for _, a := range apps {
		plain = append(plain, view(a, false))
	}
	want, err := json.Marshal(plain)
	require.NoError(t, err)
	for _, path := range []string{"/v1/apps", "/v1/apps?summary=false"} {
		code, _, raw = c.do("GET", path, "")
		require.Equal(t, 200, code, "%s", raw)
		require.Equal(t, string(want)+"\n", string(raw), path)
		require.NotContains(t, string(raw), `"summary"`)
	}
	code, obj, _ := c.do("GET", "/v1/apps?summary=yes", "")
	require.Equal(t, 400, code)
	require.Equal(t, `"yes" must be true or false`, fieldErrors(t, obj)["summary"])
}

// counting serves apps, each with three instances and one event, and
// counts the queries made of it.
type counting struct {
	apps    int
	queries atomic.Int64
}

func (f *counting) list() []store.App {
	out := make([]store.App, f.apps)
	for i := range out {
		out[i] = store.App{Name: fmt.Sprintf("app%05d", i), Generation: 2, DesiredReplicas: 3, Status: "active"}
	}
	return out
}

func (f *counting) Get(_ context.Context, name string) (store.App, error) {
	f.queries.Add(1)
	return store.App{Name: name, Generation: 2, DesiredReplicas: 3}, nil
}

func (f *counting) List(context.Context) ([]store.App, error) { f.queries.Add(1); return f.list(), nil }

func (f *counting) Instances(_ context.Context, app string) ([]store.Instance, error) {
	f.queries.Add(1)
	var out []store.Instance
	for _, a := range f.list() {
		if app != "" && a.Name != app {
			continue
		}
		out = append(out,
			store.Instance{ID: a.Name + "-1", App: a.Name, Generation: 2, State: msg.StateRunning, Health: msg.StatusHealthy, SpecHash: "g2"},
			store.Instance{ID: a.Name + "-2", App: a.Name, Generation: 2, State: msg.StateRunning, Health: msg.StatusUnhealthy, SpecHash: "g2"},
			store.Instance{ID: a.Name + "-3", App: a.Name, Generation: 1, State: msg.StateRunning, Health: msg.StatusHealthy, SpecHash: "g1"})
	}
	return out, nil
}

func (f *counting) Events(context.Context, string, int64, int) ([]store.Event, error) {
	f.queries.Add(1)
	return nil, nil
}

func (f *counting) LatestEvents(context.Context, string, []msg.EventKind, int) ([]store.Event, error) {
	f.queries.Add(1)
	return nil, nil
}

func (f *counting) LastEvents(context.Context, string, int) ([]store.Event, error) {
	f.queries.Add(1)
	return nil, nil
}

func (f *counting) LastEventByApp(_ context.Context, app string) (map[string]store.Event, error) {
	f.queries.Add(1)
	out := map[string]store.Event{}
	for i, a := range f.list() {
		if app == "" || a.Name == app {
			out[a.Name] = store.Event{ID: int64(i + 1), App: a.Name, Kind: msg.EventAppUpdated, Message: "done"}
		}
	}
	return out, nil
}

func (f *counting) RolloutEventsByApp(_ context.Context, app string, _ []msg.EventKind, _ int) (map[string][]store.Event, error) {
	f.queries.Add(1)
	out := map[string][]store.Event{}
	for _, a := range f.list() {
		if app == "" || a.Name == app {
			out[a.Name] = []store.Event{{App: a.Name, Kind: msg.EventRolloutFailed, Details: map[string]string{"generation": "2", "cause": "boom"}}}
		}
	}
	return out, nil
}

func (f *counting) Hosts(context.Context) ([]store.Host, error) { f.queries.Add(1); return nil, nil }
func (f *counting) GetHost(context.Context, string) (store.Host, error) {
	f.queries.Add(1)
	return store.Host{}, nil
}
func (f *counting) PutHost(context.Context, store.Host) (store.Host, error) { return store.Host{}, nil }
func (f *counting) SetHostDrain(context.Context, string, bool) (store.Host, error) {
	return store.Host{}, nil
}
func (f *counting) DeleteHost(context.Context, string, bool) error { return nil }

// TestSummaryQueriesDoNotGrowWithApps: the summary of 1 app and of 2,000
// costs the same queries, over the API and through Summaries.
func TestSummaryQueriesDoNotGrowWithApps(t *testing.T) {
	t.Parallel()
	for _, n := range []int{1, 2000} {
		t.Run(fmt.Sprint(n), func(t *testing.T) {
			t.Parallel()
			f := &counting{apps: n}
			d := Deps{Apps: f, Events: f, Hosts: f}
			srv := httptest.NewServer(New(d, Options{Open: true}, zaptest.NewLogger(t)))
			t.Cleanup(srv.Close)
			c := &client{t: t, url: srv.URL}
			code, _, raw := c.do("GET", "/v1/apps?summary=true", "")
			require.Equal(t, 200, code, "%s", raw)
			require.EqualValues(t, 5, f.queries.Load(), "list, instances, hosts, rollout events, last events")
			var vs []AppView
			require.NoError(t, json.Unmarshal(raw, &vs))
			require.Len(t, vs, n)
			for _, v := range vs {
				require.Equal(t, 3, v.ObservedReplicas)
				require.Equal(t, &SummaryView{ReadyReplicas: 1, Health: HealthTally{Healthy: 2, Unhealthy: 1}, LastEvent: v.Summary.LastEvent}, v.Summary)
				require.Equal(t, RolloutFailed, v.Rollout.State)
				require.Equal(t, 1, v.Rollout.Earlier)
			}

			f.queries.Store(0)
			vs, err := Summaries(d, Options{})(context.Background(), time.Now())
			require.NoError(t, err)
			require.Len(t, vs, n)
			require.EqualValues(t, 5, f.queries.Load())
		})
	}
}

// fixture serves n apps with 3 instances, one last event and one
// rollout event each, built once: BenchmarkSummaries times the API's own
// work, not the fake's.
type fixture struct {
	apps  []store.App
	insts []store.Instance
	last  map[string]store.Event
	evs   map[string][]store.Event
}

func newFixture(n int) *fixture {
	f := &fixture{last: map[string]store.Event{}, evs: map[string][]store.Event{}}
	for i := range n {
		name := fmt.Sprintf("app%05d", i)
		f.apps = append(f.apps, store.App{Name: name, Generation: 2, DesiredReplicas: 3, Status: "active", UpdatedBy: "ci"})
		for j := range 3 {
			f.insts = append(f.insts, store.Instance{ID: fmt.Sprintf("%s-%d", name, j), App: name, Generation: 2, State: msg.StateRunning,
				Health: msg.StatusHealthy, SpecHash: "h"})
		}
		f.last[name] = store.Event{ID: int64(i), App: name, Kind: msg.EventAppUpdated, Message: "app " + name + " updated"}
		f.evs[name] = []store.Event{{App: name, Kind: msg.EventReleaseSucceeded, Details: map[string]string{"generation": "2"}}}
	}
	return f
}

func (f *fixture) Get(context.Context, string) (store.App, error)              { return f.apps[0], nil }
func (f *fixture) List(context.Context) ([]store.App, error)                   { return f.apps, nil }
func (f *fixture) Instances(context.Context, string) ([]store.Instance, error) { return f.insts, nil }
func (f *fixture) Events(context.Context, string, int64, int) ([]store.Event, error) {
	return nil, nil
}
func (f *fixture) LatestEvents(context.Context, string, []msg.EventKind, int) ([]store.Event, error) {
	return nil, nil
}
func (f *fixture) LastEvents(context.Context, string, int) ([]store.Event, error) { return nil, nil }
func (f *fixture) LastEventByApp(context.Context, string) (map[string]store.Event, error) {
	return f.last, nil
}
func (f *fixture) RolloutEventsByApp(context.Context, string, []msg.EventKind, int) (map[string][]store.Event, error) {
	return f.evs, nil
}
func (f *fixture) Hosts(context.Context) ([]store.Host, error)             { return nil, nil }
func (f *fixture) GetHost(context.Context, string) (store.Host, error)     { return store.Host{}, nil }
func (f *fixture) PutHost(context.Context, store.Host) (store.Host, error) { return store.Host{}, nil }
func (f *fixture) SetHostDrain(context.Context, string, bool) (store.Host, error) {
	return store.Host{}, nil
}
func (f *fixture) DeleteHost(context.Context, string, bool) error { return nil }

// BenchmarkSummaries times GET /v1/apps?summary=true's own work (group,
// count, decide, encode), the store answering from memory, at 1,000 and
// 10,000 apps × 3 instances, against GET /v1/apps of the same apps (view
// and encode alone): linear, the 10,000's ns/op is 10 times the 1,000's.
func BenchmarkSummaries(b *testing.B) {
	for _, n := range []int{1000, 10000} {
		f := newFixture(n)
		h := New(Deps{Apps: f, Events: f, Hosts: f}, Options{Open: true, Traffic: func(string, time.Time) (TrafficView, bool) {
			return TrafficView{RPS: 1, Requests: 5, Nodes: 1}, true
		}}, zap.NewNop())
		for name, path := range map[string]string{"list": "/v1/apps", "summary": "/v1/apps?summary=true"} {
			b.Run(fmt.Sprintf("%s/%d", name, n), func(b *testing.B) {
				b.ReportAllocs()
				for b.Loop() {
					w := httptest.NewRecorder()
					h.ServeHTTP(w, httptest.NewRequest("GET", path, nil))
					if w.Code != 200 {
						b.Fatalf("%d: %s", w.Code, w.Body)
					}
				}
			})
		}
	}
}
