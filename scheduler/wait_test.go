package main

import (
	"bytes"
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/berthhq/berth/scheduler/internal/api"
)

// statusServer answers GET /v1/apps/web with each view in turn, then the
// last one for ever.
func statusServer(t *testing.T, views ...api.AppView) *client {
	t.Helper()
	var mu sync.Mutex
	i := 0
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		require.Equal(t, "/v1/apps/web", r.URL.Path)
		mu.Lock()
		v := views[min(i, len(views)-1)]
		i++
		mu.Unlock()
		_ = json.NewEncoder(w).Encode(v)
	}))
	t.Cleanup(srv.Close)
	cl, err := newClient(clientFlags{Server: srv.URL})
	require.NoError(t, err)
	return cl
}

func rolling(gen int64, desired, old int) api.AppView {
	v := api.AppView{Name: "web", Generation: gen, DesiredReplicas: 3, Rollout: &api.RolloutView{State: api.RolloutRolling, Generation: gen}}
	if desired > 0 {
		v.Serving = append(v.Serving, api.ServingView{Generation: gen, Instances: desired, Desired: true})
	}
	if old > 0 {
		v.Serving = append(v.Serving, api.ServingView{Generation: gen - 1, Instances: old})
	}
	return v
}

func TestWaitRollout(t *testing.T) {
	t.Parallel()
	complete := rolling(4, 3, 0)
	complete.Rollout.State = api.RolloutComplete
	rolledBack := api.AppView{Name: "web", Generation: 5, DesiredReplicas: 3,
		Rollout:  &api.RolloutView{State: api.RolloutRolledBack, Generation: 5, FromGeneration: 4, Cause: "generation 4 failed: 3 of its instances failed within 10m0s, the last because its container exited with code 3"},
		Serving:  []api.ServingView{{Generation: 3, Instances: 3, Desired: true}},
		Failures: []api.FailureView{{Instance: "n1", Generation: 4, Kind: "instance_exited", Reason: "its container exited with code 3", LastLine: "fatal: bad config"}}}
	failed := rolling(4, 0, 3)
	failed.Rollout.State, failed.Rollout.Cause = api.RolloutFailed, "generation 4 had an instance not healthy within update.healthy_deadline (30s)"
	releasing := rolling(4, 0, 3)
	releasing.Rollout.State = api.RolloutReleasing
	releaseFailed := api.AppView{Name: "web", Generation: 5, DesiredReplicas: 3,
		Rollout:  &api.RolloutView{State: api.RolloutRolledBack, Generation: 5, FromGeneration: 4, Cause: "generation 4 failed: release task exited with code 3"},
		Serving:  []api.ServingView{{Generation: 3, Instances: 3, Desired: true}},
		Failures: []api.FailureView{{Instance: "release-4", Generation: 4, Kind: "release_failed", Reason: "release task exited with code 3", LastLine: "release: failed"}}}
	superseded := rolling(6, 0, 3)
	superseded.UpdatedBy = "team-b"

	for _, tt := range []struct {
		name    string
		views   []api.AppView
		timeout time.Duration
		want    string // "" for success
		lines   []string
	}{
		{"rolled out", []api.AppView{rolling(4, 0, 3), rolling(4, 1, 3), rolling(4, 2, 2), complete}, time.Minute, "",
			[]string{"0 of 3 instances of generation 4 serving, 3 of an earlier spec still serving", "1 of 3 instances", "3 of 3 instances of generation 4 serving: rolled out"}},
		{"rolled back", []api.AppView{rolling(4, 0, 3), rolledBack}, time.Minute,
			"the rollout did not take: generation 4 was rolled back (now generation 5): generation 4 failed: 3 of its instances failed within 10m0s, the last because its container exited with code 3",
			[]string{"rolled back", `n1: instance_exited: its container exited with code 3 — last line: "fatal: bad config"`}},
		{"release failed", []api.AppView{releasing, releaseFailed}, time.Minute,
			"the rollout did not take: generation 4 was rolled back (now generation 5): generation 4 failed: release task exited with code 3",
			[]string{"release task running, 0 of 3 instances of generation 4 serving, 3 of an earlier spec still serving", "rolled back",
				`release-4: release_failed: release task exited with code 3 — last line: "release: failed"`}},
		{"failed without auto_rollback", []api.AppView{failed}, time.Minute,
			"the rollout did not take: the rollout of generation 4 failed and stopped: generation 4 had an instance not healthy within update.healthy_deadline (30s)", nil},
		{"superseded", []api.AppView{rolling(4, 1, 2), superseded}, time.Minute,
			"the rollout did not take: generation 4 was replaced by generation 6 (by team-b) before it rolled out", nil},
		{"timed out", []api.AppView{rolling(4, 1, 2)}, 50 * time.Millisecond,
			"the rollout did not take: generation 4 is not rolled out after --timeout 50ms: 1 of 3 instances of generation 4 serving, 2 of an earlier spec still serving", nil},
	} {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			var out bytes.Buffer
			err := waitRollout(context.Background(), statusServer(t, tt.views...), "web", 4, tt.timeout, 5*time.Millisecond, &out)
			if tt.want == "" {
				require.NoError(t, err)
			} else {
				require.EqualError(t, err, tt.want)
				require.ErrorIs(t, err, errRolloutFailed)
			}
			for _, l := range tt.lines {
				require.Contains(t, out.String(), l)
			}
			require.Equal(t, len(strings.Split(strings.TrimSpace(out.String()), "\n")), strings.Count(out.String(), "\n"), "one line per change")
		})
	}
}

func TestWaitFlags(t *testing.T) {
	t.Parallel()
	code, _, errOut := cmd(t, "apply", "-f", "/nonexistent.yaml", "--wait", "--timeout", "0s", "--server", "http://127.0.0.1:1")
	require.Equal(t, 2, code)
	require.Contains(t, errOut, "--timeout (0s): must be between 1s and 24h")
}
