package api

import (
	"context"
	"encoding/json"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/berthhq/berth/common/msg"
	"github.com/berthhq/berth/common/spec"
	"github.com/berthhq/berth/scheduler/internal/store"
)

// GET /v1/apps/{name}/instances/{id} shows the instance's record and its
// health checks as healthd published them: the latest results and the
// failures by kind.
func TestInstanceShowsItsCheckHistory(t *testing.T) {
	t.Parallel()
	at := time.Date(2026, 12, 6, 12, 0, 0, 0, time.UTC)
	var mu sync.Mutex
	published := map[string]*msg.Health{
		"web.w1": {App: "web", Instance: "w1", Status: msg.StatusHealthy, Failure: msg.FailureSlow, Message: "slow: answered in 812ms, max_response_time 500ms",
			LatencyMS: 812, ConsecutiveFailures: 1, Checker: "healthd-a", Generation: 1, CheckedAt: at,
			History: []msg.HealthResult{{At: at, LatencyMS: 812, Failure: msg.FailureSlow, Message: "slow: answered in 812ms, max_response_time 500ms"},
				{At: at.Add(-time.Second), LatencyMS: 2.5}},
			FailureCounts: map[string]int64{msg.FailureSlow: 1, msg.FailureTimeout: 4}, Probes: 90, HistorySince: at.Add(-time.Hour)},
		"web.w2": {App: "web", Instance: "w2", Status: msg.StatusHealthy, Checker: "healthd-a", Generation: 1, CheckedAt: at}, // an older healthd: no history
	}
	c := newAPIWith(t, Options{Health: func(app, inst string) (*msg.Health, bool) {
		mu.Lock()
		defer mu.Unlock()
		h, ok := published[app+"."+inst]
		return h, ok
	}})
	ctx := context.Background()
	_, _, err := c.st.Apply(ctx, &spec.App{Name: "web", Image: "web:1", Port: 8080, Health: &spec.Health{Type: spec.HealthHTTP}}, nil)
	require.NoError(t, err)
	_, _, err = c.st.Apply(ctx, &spec.App{Name: "plain", Image: "plain:1", Port: 8080}, nil)
	require.NoError(t, err)
	l, ok, err := c.st.Acquire(ctx, "scheduler", "t", time.Minute)
	require.NoError(t, err)
	require.True(t, ok)
	require.NoError(t, c.st.LeaderTx(ctx, l, func(ctx context.Context, tx *store.Tx) error {
		for _, in := range []store.Instance{
			{ID: "w1", App: "web", Generation: 1, State: "running", Health: "healthy", Address: "127.0.0.1:3001", Host: "h1"},
			{ID: "w2", App: "web", Generation: 2, State: "running", Health: "healthy", Address: "127.0.0.1:3002", Host: "h1"},
			{ID: "w3", App: "web", Generation: 1, State: "starting", Health: "unknown", Address: "127.0.0.1:3003", Host: "h1"},
			{ID: "p1", App: "plain", Generation: 1, State: "running", Health: "healthy", Address: "127.0.0.1:3004", Host: "h1"},
		} {
			if err := tx.PutInstance(ctx, in); err != nil {
				return err
			}
		}
		return nil
	}))

	get := func(path string) (int, InstanceDetail, string) {
		code, _, raw := c.do("GET", path, "")
		var d InstanceDetail
		if code == 200 {
			require.NoError(t, json.Unmarshal(raw, &d), "%s", raw)
		}
		return code, d, string(raw)
	}
	code, d, raw := get("/v1/apps/web/instances/w1")
	require.Equal(t, 200, code, raw)
	require.Equal(t, "w1", d.ID)
	require.Equal(t, "running", d.State)
	require.NotNil(t, d.Check)
	require.Empty(t, d.CheckNote)
	require.Equal(t, published["web.w1"].History, d.Check.History)
	require.Equal(t, map[string]int64{"slow": 1, "timeout": 4}, d.Check.FailureCounts)
	require.Equal(t, int64(90), d.Check.Probes)
	require.Equal(t, at.Add(-time.Hour), d.Check.HistorySince)
	require.Equal(t, "slow", d.Check.Failure)

	code, d, raw = get("/v1/apps/web/instances/w2")
	require.Equal(t, 200, code, raw)
	require.Empty(t, d.Check.History, "an older healthd's value: no history")
	require.Contains(t, raw, `"history":[]`, "an empty list, not null")
	require.Equal(t, "the health shown was published for generation 1, not the instance's 2", d.CheckNote)

	code, d, _ = get("/v1/apps/web/instances/w3")
	require.Equal(t, 200, code)
	require.Nil(t, d.Check)
	require.Equal(t, NoteNotChecked, d.CheckNote)

	code, d, _ = get("/v1/apps/plain/instances/p1")
	require.Equal(t, 200, code)
	require.Nil(t, d.Check)
	require.Equal(t, NoteNoCheck, d.CheckNote)

	// A value sealed by the role whose check the app does not run (the
	// scheduler's on an http app) is a takeover attempt: not shown.
	mu.Lock()
	published["web.w1"] = &msg.Health{App: "web", Instance: "w1", Status: msg.StatusUnhealthy, Checker: "scheduler", Generation: 1, CheckedAt: at, Sealer: "scheduler"}
	mu.Unlock()
	code, d, _ = get("/v1/apps/web/instances/w1")
	require.Equal(t, 200, code)
	require.Nil(t, d.Check)
	require.Equal(t, "the health published for this instance was written by scheduler, which does not check this app (healthd does): it is ignored", d.CheckNote)

	for _, tt := range []struct {
		name, path string
		code       int
		want       string
	}{
		{"no such instance", "/v1/apps/web/instances/p1", 404, "app web has no instance p1"},
		{"no such app", "/v1/apps/nosuch/instances/w1", 404, "nosuch"},
		{"an id that is not one", "/v1/apps/web/instances/W1%3Bdrop", 400, `"path":"id"`},
		{"a huge id", "/v1/apps/web/instances/" + strings.Repeat("a", 5000), 400, `is not an instance id`},
	} {
		t.Run(tt.name, func(t *testing.T) {
			code, _, raw := c.do("GET", tt.path, "")
			require.Equal(t, tt.code, code, "%s", raw)
			require.Contains(t, string(raw), tt.want)
			require.Less(t, len(raw), 1024, "a hostile id is not echoed whole")
		})
	}
}
