package store

import (
	"context"
	"encoding/json"
	"maps"
	"slices"
	"testing"
	"time"

	"github.com/jackc/tern/v2/migrate"
	"github.com/stretchr/testify/require"

	"github.com/berthhq/berth/common/msg"
	"github.com/berthhq/berth/common/spec"
	"github.com/berthhq/berth/internal/testrig"
)

func load(t *testing.T, src string) *spec.App {
	t.Helper()
	a, err := spec.Load([]byte(src))
	require.NoError(t, err)
	return a
}

func TestApplyScaleRollbackDelete(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s := open(t)
	notified := make(chan string, 50)
	lctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go func() { _ = s.Listen(lctx, []string{AppsChannel}, func(_, p string) { notified <- p }) }()
	// LISTEN may not be in place yet: apply a probe app until its notification arrives.
	probe := load(t, "name: probe\nimage: p:1\nport: 80\n")
	require.Eventually(t, func() bool {
		if _, err := s.Rollback(ctx, "probe"); err != nil { // any write to probe notifies
			_, _, _ = s.Apply(ctx, probe, nil)
			_, _ = s.Scale(ctx, "probe", 2)
		}
		for {
			select {
			case name := <-notified:
				if name == "probe" {
					return true
				}
			default:
				return false
			}
		}
	}, 10*time.Second, 50*time.Millisecond)
	require.NoError(t, s.Delete(ctx, "probe"))

	v1 := load(t, "name: web\nimage: web:1\nport: 8080\nreplicas: 2\n")
	app, changed, err := s.Apply(ctx, v1, nil)
	require.NoError(t, err)
	require.True(t, changed)
	require.Equal(t, int64(1), app.Generation)
	require.Equal(t, 2, app.DesiredReplicas)

	_, changed, err = s.Apply(ctx, load(t, "name: web\nimage: web:1\nport: 8080\nreplicas: 2\n"), nil)
	require.NoError(t, err)
	require.False(t, changed, "the same spec again is not a new generation")

	app, changed, err = s.Apply(ctx, load(t, "name: web\nimage: web:2\nport: 8080\nreplicas: 2\n"), nil)
	require.NoError(t, err)
	require.True(t, changed)
	require.Equal(t, int64(2), app.Generation)

	app, err = s.Scale(ctx, "web", 5)
	require.NoError(t, err)
	require.Equal(t, int64(3), app.Generation)
	require.Equal(t, 5, app.DesiredReplicas)
	require.Equal(t, "web:2", app.Spec.Image)

	// Rollback goes to the newest earlier spec that differs: web:2 with 2 replicas.
	app, err = s.Rollback(ctx, "web")
	require.NoError(t, err)
	require.Equal(t, int64(4), app.Generation)
	require.Equal(t, 2, *app.Spec.Replicas)
	require.Equal(t, "web:2", app.Spec.Image)

	got, err := s.Get(ctx, "web")
	require.NoError(t, err)
	require.Equal(t, app.Generation, got.Generation)
	list, err := s.List(ctx)
	require.NoError(t, err)
	require.Len(t, list, 1)

	require.NoError(t, s.Delete(ctx, "web"))
	_, err = s.Get(ctx, "web")
	require.ErrorIs(t, err, ErrNotFound)
	require.ErrorIs(t, s.Delete(ctx, "web"), ErrNotFound)
	app, changed, err = s.Apply(ctx, v1, nil)
	require.NoError(t, err)
	require.True(t, changed, "a deleted app can be applied again")
	require.Equal(t, int64(6), app.Generation, "generations keep counting across a delete")

	// Every change notified the leader (bounded: a lost notification fails, never hangs).
	seen := 0
	timeout := time.After(10 * time.Second)
	for seen < 5 {
		select {
		case name := <-notified:
			if name == "web" {
				seen++
			}
		case <-timeout:
			t.Fatalf("only %d of 5 notifications for web arrived", seen)
		}
	}
}

func TestScaleAndRollbackErrors(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s := open(t)
	_, err := s.Scale(ctx, "nope", 3)
	require.ErrorIs(t, err, ErrNotFound)
	_, err = s.Rollback(ctx, "nope")
	require.ErrorIs(t, err, ErrNotFound)

	_, _, err = s.Apply(ctx, load(t, "name: auto\nimage: a:1\nport: 80\nscaling: {min: 2, max: 6, target_cpu_percent: 70}\n"), nil)
	require.NoError(t, err)
	_, err = s.Scale(ctx, "auto", 3)
	require.ErrorIs(t, err, ErrAutoscaled)
	require.ErrorContains(t, err, "change scaling.min and scaling.max instead")
	_, err = s.Rollback(ctx, "auto")
	require.ErrorIs(t, err, ErrNoHistory)

	_, _, err = s.Apply(ctx, load(t, "name: fixed\nimage: f:1\nport: 80\n"), nil)
	require.NoError(t, err)
	_, err = s.Scale(ctx, "fixed", 5000)
	require.ErrorContains(t, err, "replicas: (5000) must be between 0 and 1000")
}

func TestInstanceRecordsAndRestarts(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s := open(t)
	l, _, err := s.Acquire(ctx, "scheduler", "a", time.Minute)
	require.NoError(t, err)
	started := time.Now().UTC().Truncate(time.Millisecond)
	require.NoError(t, s.LeaderTx(ctx, l, func(ctx context.Context, tx *Tx) error {
		if err := tx.PutInstance(ctx, Instance{ID: "a1", App: "web", Generation: 2, State: "creating", Health: "unknown", SpecHash: "h1"}); err != nil {
			return err
		}
		if err := tx.PutInstance(ctx, Instance{ID: "a1", App: "web", Generation: 2, ContainerID: "c1", Address: "127.0.0.1:1", State: "running",
			Health: "unknown", SpecHash: "h1", StartedAt: &started}); err != nil {
			return err
		}
		if err := tx.PutInstance(ctx, Instance{ID: "b1", App: "api", Generation: 1, State: "running", SpecHash: "h2"}); err != nil {
			return err
		}
		if _, err := tx.AddEvent(ctx, Event{App: "web", Instance: "z9", Kind: msg.EventInstanceReplaced, Message: "died"}); err != nil {
			return err
		}
		if _, err := tx.AddEvent(ctx, Event{App: "web", Instance: "z7", Kind: msg.EventInstanceFailed, Message: "died; its replacement waits"}); err != nil {
			return err
		}
		// A host's loss is no crash: its replacements spend no budget.
		_, err := tx.AddEvent(ctx, Event{App: "web", Instance: "z8", Kind: msg.EventInstanceReplaced, Message: "lost with h3",
			Details: map[string]string{"cause": "host_lost", "host": "h3"}})
		return err
	}))
	all, err := s.Instances(ctx, "")
	require.NoError(t, err)
	require.Len(t, all, 2)
	web, err := s.Instances(ctx, "web")
	require.NoError(t, err)
	require.Len(t, web, 1)
	require.Equal(t, "running", web[0].State)
	require.Equal(t, "h1", web[0].SpecHash)
	require.Equal(t, uint64(1), web[0].Term)
	require.Equal(t, started, web[0].StartedAt.UTC())

	require.NoError(t, s.LeaderTx(ctx, l, func(ctx context.Context, tx *Tx) error { return tx.DeleteInstance(ctx, "a1") }))
	web, err = s.Instances(ctx, "web")
	require.NoError(t, err)
	require.Empty(t, web)

	r, err := s.Restarts(ctx, time.Now().Add(-time.Hour))
	require.NoError(t, err)
	require.Len(t, r["web"], 2, "a crash replaced and one whose replacement waits; not a host's loss")
}

// TestHostClaims: an app keeps the time it claimed each host across
// changes; a host it names anew, and every host of an app deleted and
// applied again, is claimed at that change.
func TestHostClaims(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s := open(t)
	apply := func(hosts ...string) App {
		a := &spec.App{Name: "web", Image: "web:1", Port: 8080, Routing: spec.Routing{Hosts: hosts}}
		a.Default()
		app, _, err := s.Apply(ctx, a, nil)
		require.NoError(t, err)
		got, err := s.Get(ctx, "web")
		require.NoError(t, err)
		require.Equal(t, app.HostClaims, got.HostClaims, "apply returns what get reads")
		return got
	}
	first := apply("A.test")
	require.Len(t, first.HostClaims, 1)
	ta := first.HostClaims["a.test"]
	require.False(t, ta.IsZero())
	second := apply("a.test", "b.test")
	require.True(t, second.HostClaims["a.test"].Equal(ta), "a.test keeps its claim")
	require.True(t, second.HostClaims["b.test"].After(ta), "b.test is claimed at this change")
	third := apply("b.test")
	require.Equal(t, []string{"b.test"}, slices.Collect(maps.Keys(third.HostClaims)))
	require.True(t, third.HostClaims["b.test"].Equal(second.HostClaims["b.test"]))
	require.NoError(t, s.Delete(ctx, "web"))
	again := apply("b.test")
	require.True(t, again.HostClaims["b.test"].After(third.HostClaims["b.test"]), "a deleted app claims afresh")
	none := apply()
	require.Equal(t, []string{""}, slices.Collect(maps.Keys(none.HostClaims)), "no hosts: the default server")
}

// TestHostClaimsMigration: migrating an existing database takes each app
// to have claimed its hosts (lower case), or the default server, when it
// was created; a deleted app claims nothing.
func TestHostClaimsMigration(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s, err := Open(ctx, testrig.Postgres(t))
	require.NoError(t, err)
	t.Cleanup(s.Close)
	require.NoError(t, s.migrator(ctx, func(m *migrate.Migrator) error { return m.MigrateTo(ctx, 5) }))
	_, err = s.pool.Exec(ctx, `
		INSERT INTO apps (name, spec, generation, desired_replicas, created_at) VALUES
			('web', '{"name":"web","routing":{"hosts":["Web.test","www.test"]}}', 1, 1, '2026-01-01T00:00:00Z'),
			('api', '{"name":"api","routing":{"paths":["/"]}}', 1, 1, '2026-02-01T00:00:00Z');
		INSERT INTO apps (name, spec, generation, desired_replicas, deleted_at) VALUES
			('gone', '{"name":"gone","routing":{"hosts":["gone.test"]}}', 2, 1, now())`)
	require.NoError(t, err)
	_, err = s.Migrate(ctx)
	require.NoError(t, err)
	claims := map[string]map[string]time.Time{}
	rows, err := s.pool.Query(ctx, `SELECT name, host_claims FROM apps`)
	require.NoError(t, err)
	for rows.Next() {
		var name string
		var raw []byte
		require.NoError(t, rows.Scan(&name, &raw))
		var c map[string]time.Time
		require.NoError(t, json.Unmarshal(raw, &c))
		claims[name] = c
	}
	require.NoError(t, rows.Err())
	web, api := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC), time.Date(2026, 2, 1, 0, 0, 0, 0, time.UTC)
	require.Len(t, claims["web"], 2)
	require.True(t, claims["web"]["web.test"].Equal(web))
	require.True(t, claims["web"]["www.test"].Equal(web))
	require.Len(t, claims["api"], 1)
	require.True(t, claims["api"][""].Equal(api))
	require.Empty(t, claims["gone"])
}

// TestClaimants: the apps an app's routes are checked against are the app
// and those that claim one of the given hosts (any case, "" the default
// server), never a deleted one; the routes Postgres counts in each row
// are spec.Routing.Routes of its spec.
func TestClaimants(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s := open(t)
	for _, src := range []string{
		"name: a\nimage: a:1\nport: 80\nrouting: {hosts: [A.test, b.test], paths: [/, /x]}\n",
		"name: b\nimage: b:1\nport: 80\nrouting: {hosts: [b.test], rules: [{path: '^/b', match: regex}, {path: /c}]}\n",
		"name: c\nimage: c:1\nport: 80\nrouting: {hosts: [c.test]}\n",
		"name: d\nimage: d:1\nport: 80\n",
		"name: e\nimage: e:1\nport: 80\nrouting: {paths: [/e, /f, /g]}\n",
		"name: gone\nimage: g:1\nport: 80\nrouting: {hosts: [a.test]}\n",
	} {
		_, _, err := s.Apply(ctx, load(t, src), nil)
		require.NoError(t, err)
	}
	require.NoError(t, s.Delete(ctx, "gone"))
	names := func(apps []App, err error) []string {
		require.NoError(t, err)
		var out []string
		for _, a := range apps {
			out = append(out, a.Name)
		}
		return out
	}
	for _, tc := range []struct {
		name, app string
		hosts     []string
		want      []string
	}{
		{"one host", "c", []string{"c.test"}, []string{"c"}},
		{"a shared host", "x", []string{"b.test"}, []string{"a", "b"}},
		{"by key", "a", []string{"a.test"}, []string{"a"}},
		{"the default server", "x", []string{""}, []string{"d", "e"}},
		{"the app itself, whatever it claims", "c", []string{"nobody.test"}, []string{"c"}},
		{"none", "x", nil, nil},
		{"a deleted app", "gone", []string{"a.test"}, []string{"a"}},
	} {
		require.Equal(t, tc.want, names(s.Claimants(ctx, tc.app, tc.hosts)), tc.name)
	}

	all, err := s.List(ctx)
	require.NoError(t, err)
	for _, besides := range []string{"", "a", "e"} {
		want := 0
		for _, a := range all {
			if a.Name != besides {
				want += a.Spec.Routing.Routes()
			}
		}
		got, err := s.RoutesBesides(ctx, besides)
		require.NoError(t, err)
		require.Equal(t, want, got, "besides %q", besides)
	}
}
