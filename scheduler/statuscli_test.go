package main

import (
	"bytes"
	"context"
	"encoding/json"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.uber.org/zap/zaptest"

	"github.com/berthhq/berth/common/msg"
	"github.com/berthhq/berth/common/spec"
	"github.com/berthhq/berth/internal/testrig"
	"github.com/berthhq/berth/scheduler/internal/api"
	"github.com/berthhq/berth/scheduler/internal/store"
)

func TestPrintApps(t *testing.T) {
	t.Parallel()
	now := time.Date(2026, 12, 6, 12, 0, 0, 0, time.UTC)
	apps := []api.AppView{
		{Name: "api", Generation: 4, Status: "active", DesiredReplicas: 3, UpdatedAt: now.Add(-time.Hour), UpdatedBy: "ci",
			Rollout: &api.RolloutView{State: api.RolloutRolledBack},
			Traffic: &api.TrafficView{RPS: 42.46, ErrorRate: 0.0213, P95MS: 87.34},
			Summary: &api.SummaryView{ReadyReplicas: 2, Health: api.HealthTally{Healthy: 2, Unhealthy: 1},
				LastEvent: &api.LastEventView{Kind: msg.EventRolloutRolledBack, At: now.Add(-3 * time.Minute)}}},
		{Name: "idle", Generation: 1, Status: "active", DesiredReplicas: 1, UpdatedAt: now.Add(-time.Minute),
			Rollout: &api.RolloutView{State: api.RolloutRolling}, Summary: &api.SummaryView{}},
		// From a scheduler before the summary.
		{Name: "old", Generation: 2, Status: "active", DesiredReplicas: 2, UpdatedAt: now.Add(-time.Second)},
	}
	var b bytes.Buffer
	printApps(&b, apps, now)
	require.Equal(t, ""+
		"APP   GENERATION  READY  HEALTH                  ROLLOUT      RPS   5XX    P95     LAST EVENT                    STATUS  UPDATED     BY\n"+
		"api   4           2/3    2 healthy, 1 unhealthy  rolled_back  42.5  2.13%  87.3ms  rollout_rolled_back 3m0s ago  active  1h0m0s ago  ci\n"+
		"idle  1           0/1    -                       rolling      -     -      -       -                             active  1m0s ago    -\n"+
		"old   2           -      -                       -            -     -      -       -                             active  1s ago      -\n",
		b.String())
}

// TestStatusOfEveryApp: scheduler status without an app shows each app's
// ready replicas of desired, their health, its rollout and its newest
// event, from GET /v1/apps?summary=true; -o json gives the views.
func TestStatusOfEveryApp(t *testing.T) {
	t.Parallel()
	st, err := store.Open(context.Background(), testrig.Postgres(t))
	require.NoError(t, err)
	t.Cleanup(st.Close)
	_, err = st.Migrate(context.Background())
	require.NoError(t, err)
	srv := httptest.NewServer(api.New(api.Deps{Apps: st, Changes: st, Events: st, Decisions: st, DB: st, Claims: st, Hosts: st, History: st, Tokens: st},
		api.Options{Open: true, Traffic: func(app string, _ time.Time) (api.TrafficView, bool) {
			return api.TrafficView{RPS: 20, ErrorRate: 0.05, P95MS: 40}, app == "web"
		}}, zaptest.NewLogger(t)))
	t.Cleanup(srv.Close)
	ctx := context.Background()
	for _, a := range []*spec.App{
		{Name: "web", Image: "web:1", Port: 8080, Replicas: new(3), Routing: spec.Routing{Hosts: []string{"web.test"}}},
		{Name: "api", Image: "api:1", Port: 8080, Replicas: new(2), Routing: spec.Routing{Hosts: []string{"api.test"}}},
	} {
		_, _, err = st.Apply(ctx, a, nil)
		require.NoError(t, err)
	}
	l, ok, err := st.Acquire(ctx, "scheduler", "t", time.Minute)
	require.NoError(t, err)
	require.True(t, ok)
	require.NoError(t, st.LeaderTx(ctx, l, func(ctx context.Context, tx *store.Tx) error {
		for _, in := range []store.Instance{
			{ID: "w1", App: "web", Generation: 1, State: "running", Health: "healthy"},
			{ID: "w2", App: "web", Generation: 1, State: "running", Health: "healthy"},
			{ID: "w3", App: "web", Generation: 1, State: "running", Health: "unhealthy"},
			{ID: "a1", App: "api", Generation: 1, State: "starting", Health: "unknown"},
		} {
			if err := tx.PutInstance(ctx, in); err != nil {
				return err
			}
		}
		_, err := tx.AddEvent(ctx, store.Event{App: "api", Kind: msg.EventRolloutFailed, Message: "generation 1 failed",
			Details: map[string]string{"generation": "1", "cause": "its health check never passed"}})
		return err
	}))

	code, out, errOut := cmd(t, "status", "--server", srv.URL)
	require.Equal(t, 0, code, errOut)
	require.Regexp(t, `^APP\s+GENERATION\s+READY\s+HEALTH\s+ROLLOUT\s+RPS\s+5XX\s+P95\s+LAST EVENT\s+STATUS\s+UPDATED\s+BY\n`, out)
	require.Regexp(t, `(?m)^api\s+1\s+0/2\s+-\s+failed\s+-\s+-\s+-\s+rollout_failed \d+s ago\s+active\s+\d+s ago\s+\S+$`, out)
	require.Regexp(t, `(?m)^web\s+1\s+2/3\s+2 healthy, 1 unhealthy\s+rolling\s+20\.0\s+5\.00%\s+40\.0ms\s+-\s+active\s+\d+s ago\s+\S+$`, out)

	code, out, errOut = cmd(t, "status", "--server", srv.URL, "-o", "json")
	require.Equal(t, 0, code, errOut)
	var vs []api.AppView
	require.NoError(t, json.Unmarshal([]byte(out), &vs))
	require.Len(t, vs, 2)
	require.Equal(t, "api", vs[0].Name)
	require.Equal(t, api.RolloutFailed, vs[0].Rollout.State)
	require.Equal(t, "its health check never passed", vs[0].Rollout.Cause)
	require.Equal(t, msg.EventRolloutFailed, vs[0].Summary.LastEvent.Kind)
	require.Equal(t, api.HealthTally{Healthy: 2, Unhealthy: 1}, vs[1].Summary.Health)
	require.Equal(t, 3, vs[1].ObservedReplicas)
	require.Equal(t, 2, vs[1].Summary.ReadyReplicas)
}
