package main

import (
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

// status APP --instance ID shows the instance's last check results,
// newest first, and its failures by kind, in a table and in JSON.
func TestStatusOfAnInstance(t *testing.T) {
	t.Parallel()
	st, err := store.Open(context.Background(), testrig.Postgres(t))
	require.NoError(t, err)
	t.Cleanup(st.Close)
	_, err = st.Migrate(context.Background())
	require.NoError(t, err)
	at := time.Now().UTC().Add(-time.Minute).Truncate(time.Millisecond)
	h := &msg.Health{App: "web", Instance: "w1", Status: msg.StatusHealthy, Failure: msg.FailureSlow,
		Message: "slow: answered in 812ms, max_response_time 500ms", LatencyMS: 812, ConsecutiveFailures: 1, Checker: "healthd-a", Generation: 1, CheckedAt: at,
		History: []msg.HealthResult{{At: at, LatencyMS: 812, Failure: msg.FailureSlow, Message: "slow: answered in 812ms, max_response_time 500ms"},
			{At: at.Add(-time.Second), LatencyMS: 2.5}},
		FailureCounts: map[string]int64{msg.FailureSlow: 1, msg.FailureTimeout: 4}, Probes: 90, HistorySince: at.Add(-time.Hour)}
	srv := httptest.NewServer(api.New(api.Deps{Apps: st, Changes: st, Events: st, Decisions: st, DB: st, Claims: st, Hosts: st, History: st, Tokens: st},
		api.Options{Open: true, Health: func(app, inst string) (*msg.Health, bool) { return h, app == "web" && inst == "w1" }}, zaptest.NewLogger(t)))
	t.Cleanup(srv.Close)
	ctx := context.Background()
	_, _, err = st.Apply(ctx, &spec.App{Name: "web", Image: "web:1", Port: 8080, Health: &spec.Health{Type: spec.HealthHTTP}}, nil)
	require.NoError(t, err)
	l, ok, err := st.Acquire(ctx, "scheduler", "t", time.Minute)
	require.NoError(t, err)
	require.True(t, ok)
	require.NoError(t, st.LeaderTx(ctx, l, func(ctx context.Context, tx *store.Tx) error {
		if err := tx.PutInstance(ctx, store.Instance{ID: "w1", App: "web", Generation: 1, State: "running", Health: "healthy", Address: "127.0.0.1:3001", Host: "h1"}); err != nil {
			return err
		}
		return tx.PutInstance(ctx, store.Instance{ID: "w2", App: "web", Generation: 1, State: "starting", Health: "unknown", Address: "127.0.0.1:3002", Host: "h1"})
	}))

	code, out, errOut := cmd(t, "status", "web", "--instance", "w1", "--server", srv.URL)
	require.Equal(t, 0, code, errOut)
	require.Regexp(t, `^web w1: running, health healthy, generation 1, host h1, address 127.0.0.1:3001, 0 restarts, created \S+ ago\n`, out)
	require.Regexp(t, `(?m)^check: healthy by healthd-a, checked 1m\d+s ago \(0 passed, 1 failed in a row\), last failure slow: slow: answered in 812ms, max_response_time 500ms$`, out)
	require.Contains(t, out, "(90 probes, the checker's since it took the instance): slow 1, timeout 4\n")
	require.Contains(t, out, "last 2 results, newest first:\n")
	require.Regexp(t, `(?m)^  AT\s+LATENCY\s+RESULT\s+MESSAGE$`, out)
	require.Regexp(t, `(?m)^  \d\d:\d\d:\d\d\.\d{3}\s+812\.0ms\s+slow\s+slow: answered in 812ms, max_response_time 500ms$`, out)
	require.Regexp(t, `(?m)^  \d\d:\d\d:\d\d\.\d{3}\s+2\.5ms\s+ok\s*$`, out)

	code, out, errOut = cmd(t, "status", "web", "--instance", "w1", "--server", srv.URL, "-o", "json")
	require.Equal(t, 0, code, errOut)
	var d api.InstanceDetail
	require.NoError(t, json.Unmarshal([]byte(out), &d))
	require.Equal(t, h.History, d.Check.History)
	require.Equal(t, h.FailureCounts, d.Check.FailureCounts)

	code, out, errOut = cmd(t, "status", "web", "--instance", "w2", "--server", srv.URL)
	require.Equal(t, 0, code, errOut)
	require.Contains(t, out, "check: "+api.NoteNotChecked+"\n")

	code, _, errOut = cmd(t, "status", "web", "--instance", "nosuch", "--server", srv.URL)
	require.Equal(t, exitFailed, code)
	require.Contains(t, errOut, "app web has no instance nosuch")

	code, _, errOut = cmd(t, "status", "--instance", "w1", "--server", srv.URL)
	require.NotZero(t, code)
	require.Contains(t, errOut, "--instance needs the app")
}
