package api

import (
	"context"
	"encoding/json"
	"fmt"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/berthhq/berth/common/msg"
	"github.com/berthhq/berth/scheduler/internal/store"
)

// status separates what is desired from what serves: a generation rolled
// back after its instances crashed, served by generation 1's, with each
// failed instance's latest failure and an open breaker; the log tail is in
// the event view.
func TestStatusSeparatesDesiredFromServing(t *testing.T) {
	t.Parallel()
	// Instances carry the spec's image as their hash here: v1 is desired.
	c := newAPIWith(t, Options{SpecHash: func(a store.App) string { return a.Spec.Image }})
	ctx := context.Background()
	for _, img := range []string{"web:1", "web:2", "web:1"} {
		code, _, raw := c.do("PUT", "/v1/apps/web", fmt.Sprintf("name: web\nimage: %s\nport: 8080\nreplicas: 2\n", img))
		require.Equal(t, 200, code, "%s", raw)
	}
	l, _, err := c.st.Acquire(ctx, "scheduler", "me", time.Minute)
	require.NoError(t, err)
	until := time.Now().Add(time.Hour).UTC().Truncate(time.Second)
	require.NoError(t, c.st.LeaderTx(ctx, l, func(ctx context.Context, tx *store.Tx) error {
		for i, in := range []store.Instance{
			{ID: "o1", App: "web", Generation: 1, State: msg.StateRunning, Health: msg.StatusHealthy, SpecHash: "web:1"},
			{ID: "o2", App: "web", Generation: 1, State: msg.StateRunning, Health: msg.StatusHealthy, SpecHash: "web:1"},
			{ID: "n9", App: "web", Generation: 2, State: msg.StateRunning, Health: msg.StatusUnknown, SpecHash: "web:2"},
		} {
			in.Address = fmt.Sprintf("127.0.0.1:%d", 30000+i)
			if err := tx.PutInstance(ctx, in); err != nil {
				return err
			}
		}
		for _, e := range []store.Event{
			{App: "web", Instance: "n1", Kind: msg.EventInstanceExited, Message: "instance n1 exited: its container exited with code 2",
				Details: map[string]string{"generation": "2", "exit_code": "2", "reason": "its container exited with code 2"}, LogTail: []string{"start", "DEMO_MODE \"bogus\": must be http or tcp"}},
			{App: "web", Instance: "n1", Kind: msg.EventInstanceReplaced, Message: "instance n1 replaced", Details: map[string]string{"generation": "2"}},
			{App: "web", Instance: "n2", Kind: msg.EventImagePullFailed, Message: "cannot start web: image web:2 is not present",
				Details: map[string]string{"generation": "2", "reason": "cannot start web: image web:2 is not present"}},
			{App: "web", Instance: "n1", Kind: msg.EventInstanceExited, Message: "instance n1 exited again", Details: map[string]string{"generation": "2", "exit_code": "137", "oom_killed": "true", "reason": "OOMKilled"}},
			{App: "web", Kind: msg.EventRolloutRolledBack, Message: "generation 2 failed: …: rolled back",
				Details: map[string]string{"from_generation": "2", "to_generation": "1", "generation": "3", "cause": "generation 2 failed: 3 of its instances failed"},
				LogTail: []string{"DEMO_MODE \"bogus\": must be http or tcp"}},
			{App: "web", Kind: msg.EventAppFailed, Message: "crash-looping", Details: map[string]string{"generation": "3", "until": until.Format(time.RFC3339), "reason": "5 restarts"}},
			{App: "web", Kind: msg.EventAppFailed, Message: "an older one", Details: map[string]string{"generation": "2", "until": until.Format(time.RFC3339), "reason": "old"}},
		} {
			if _, err := tx.AddEvent(ctx, e); err != nil {
				return err
			}
		}
		return nil
	}))
	code, _, raw := c.do("GET", "/v1/apps/web", "")
	require.Equal(t, 200, code)
	var v AppView
	require.NoError(t, json.Unmarshal(raw, &v))
	require.Equal(t, int64(3), v.Generation)
	require.Equal(t, &RolloutView{State: RolloutRolledBack, Generation: 3, Cause: "generation 2 failed: 3 of its instances failed", FromGeneration: 2, At: v.Rollout.At, Earlier: 1}, v.Rollout,
		"n9, of generation 2's spec, still runs")
	require.Equal(t, []ServingView{{Generation: 1, Image: "web:1", Instances: 2, Desired: true}}, v.Serving, "n9 is not healthy: it does not serve")
	require.Equal(t, &BreakerView{Generation: 3, Until: until, Reason: "5 restarts"}, v.Breaker, "generation 2's breaker holds nothing")
	require.Len(t, v.Failures, 2, "the latest failure of each instance")
	require.Equal(t, "n1", v.Failures[0].Instance, "newest first")
	require.True(t, v.Failures[0].OOMKilled)
	require.Equal(t, 137, *v.Failures[0].ExitCode)
	require.Equal(t, "n2", v.Failures[1].Instance)
	require.Equal(t, "image_pull_failed: cannot start web: image web:2 is not present", v.Failures[1].String())

	code, _, raw = c.do("GET", "/v1/events?app=web", "")
	require.Equal(t, 200, code)
	var evs []EventView
	require.NoError(t, json.Unmarshal(raw, &evs))
	require.Equal(t, []string{"start", "DEMO_MODE \"bogus\": must be http or tcp"}, evs[0].LogTail)

	// A rollout under way: an instance of another spec still runs.
	code, _, _ = c.do("PUT", "/v1/apps/web", "name: web\nimage: web:4\nport: 8080\nreplicas: 2\n")
	require.Equal(t, 200, code)
	code, _, raw = c.do("GET", "/v1/apps/web", "")
	require.Equal(t, 200, code)
	v = AppView{}
	require.NoError(t, json.Unmarshal(raw, &v))
	require.Equal(t, int64(4), v.Generation)
	require.Equal(t, RolloutRolling, v.Rollout.State)
	require.Nil(t, v.Breaker, "a new generation starts with a fresh budget")
	require.Equal(t, []ServingView{{Generation: 1, Image: "web:1", Instances: 2}}, v.Serving)
}

// status says a generation whose release task runs is releasing, and a
// failed release is its failure, with its exit code and last line.
func TestStatusOfARelease(t *testing.T) {
	t.Parallel()
	c := newAPIWith(t, Options{SpecHash: func(a store.App) string { return a.Spec.Image }})
	ctx := context.Background()
	for _, img := range []string{"web:1", "web:2"} {
		code, _, raw := c.do("PUT", "/v1/apps/web", fmt.Sprintf("name: web\nimage: %s\nport: 8080\nreplicas: 1\nrelease: {command: [m]}\n", img))
		require.Equal(t, 200, code, "%s", raw)
	}
	l, _, err := c.st.Acquire(ctx, "scheduler", "me", time.Minute)
	require.NoError(t, err)
	event := func(e store.Event) {
		require.NoError(t, c.st.LeaderTx(ctx, l, func(ctx context.Context, tx *store.Tx) error {
			if e.Kind == msg.EventReleaseStarted {
				if err := tx.PutInstance(ctx, store.Instance{ID: "o1", App: "web", Generation: 1, State: msg.StateRunning, Health: msg.StatusHealthy, SpecHash: "web:1", Address: "127.0.0.1:30000"}); err != nil {
					return err
				}
			}
			_, err := tx.AddEvent(ctx, e)
			return err
		}))
	}
	status := func() AppView {
		code, _, raw := c.do("GET", "/v1/apps/web", "")
		require.Equal(t, 200, code)
		var v AppView
		require.NoError(t, json.Unmarshal(raw, &v))
		return v
	}
	event(store.Event{App: "web", Instance: "release-2", Kind: msg.EventReleaseStarted, Message: "release started", Details: map[string]string{"generation": "2"}})
	v := status()
	require.Equal(t, RolloutReleasing, v.Rollout.State)
	require.Empty(t, v.Failures)
	event(store.Event{App: "web", Instance: "release-2", Kind: msg.EventReleaseFailed, Message: "release failed",
		Details: map[string]string{"generation": "2", "exit_code": "3", "reason": "release task exited with code 3"}, LogTail: []string{"release: step 1", "release: failed"}})
	v = status()
	require.Equal(t, RolloutRolling, v.Rollout.State, "no longer releasing (the leader fails the rollout next)")
	require.Len(t, v.Failures, 1)
	require.Equal(t, "release-2", v.Failures[0].Instance)
	require.Equal(t, 3, *v.Failures[0].ExitCode)
	require.Equal(t, `release_failed: release task exited with code 3 — last line: "release: failed"`, v.Failures[0].String())
}

// ?last=n gives the newest n events, oldest first: what an operator reads
// first, also of an app with more events than a page.
func TestEventsLast(t *testing.T) {
	t.Parallel()
	c := newAPI(t, "")
	ctx := context.Background()
	l, _, err := c.st.Acquire(ctx, "scheduler", "me", time.Minute)
	require.NoError(t, err)
	require.NoError(t, c.st.LeaderTx(ctx, l, func(ctx context.Context, tx *store.Tx) error {
		for i := range 7 {
			if _, err := tx.AddEvent(ctx, store.Event{App: "web", Kind: msg.EventInstanceStarted, Message: fmt.Sprint(i)}); err != nil {
				return err
			}
		}
		_, err := tx.AddEvent(ctx, store.Event{App: "api", Kind: msg.EventInstanceStarted, Message: "other"})
		return err
	}))
	code, _, raw := c.do("GET", "/v1/events?app=web&last=3", "")
	require.Equal(t, 200, code)
	var evs []EventView
	require.NoError(t, json.Unmarshal(raw, &evs))
	require.Len(t, evs, 3)
	require.Equal(t, []string{"4", "5", "6"}, []string{evs[0].Message, evs[1].Message, evs[2].Message})
	for _, bad := range []string{"last=0", "last=501", "last=x", "last=3&since=1"} {
		code, obj, _ := c.do("GET", "/v1/events?"+bad, "")
		require.Equal(t, 400, code, bad)
		require.Equal(t, "last", obj["fields"].([]any)[0].(map[string]any)["path"], bad)
	}
}

// Two teams share one Berth: a deploy token limited to its team's apps
// reads neither another team's logs nor the log tails of its failures
// (they may hold what that app printed), while it still sees their status.
func TestLimitedTokenReadsOnlyItsAppsLogs(t *testing.T) {
	t.Parallel()
	c := newAPI(t, "bootstrap-secret-of-the-file")
	admin := c.as("bootstrap-secret-of-the-file")
	code, obj, raw := admin.do("POST", "/v1/tokens", `{"name":"team-a","scope":"deploy","apps":["shop"]}`)
	require.Equal(t, 201, code, "%s", raw)
	teamA := c.as(obj["token"].(string))
	for _, app := range []string{"bank", "shop"} {
		code, _, raw := admin.do("PUT", "/v1/apps/"+app, fmt.Sprintf("name: %s\nimage: %s:1\nport: 8080\nrouting: {hosts: [%s.test]}\n", app, app, app))
		require.Equal(t, 200, code, "%s", raw)
	}
	ctx := context.Background()
	l, _, err := c.st.Acquire(ctx, "scheduler", "me", time.Minute)
	require.NoError(t, err)
	require.NoError(t, c.st.LeaderTx(ctx, l, func(ctx context.Context, tx *store.Tx) error {
		for _, app := range []string{"bank", "shop"} {
			if _, err := tx.AddEvent(ctx, store.Event{App: app, Instance: "i1", Kind: msg.EventInstanceExited, Message: "exited",
				Details: map[string]string{"generation": "1", "reason": "its container exited with code 1"}, LogTail: []string{app + "'s secret line"}}); err != nil {
				return err
			}
		}
		return nil
	}))

	code, obj, _ = teamA.do("GET", "/v1/apps/bank/logs", "")
	require.Equal(t, 403, code)
	require.Contains(t, obj["error"], "token team-a may read the logs of only the apps shop, not bank")
	code, _, _ = teamA.do("GET", "/v1/apps/shop/logs", "")
	require.Equal(t, 503, code, "its own app's logs get past the guard (this API has no log reader)")

	code, _, raw = teamA.do("GET", "/v1/events", "")
	require.Equal(t, 200, code)
	var evs []EventView
	require.NoError(t, json.Unmarshal(raw, &evs))
	tails := map[string][]string{}
	for _, e := range evs {
		if e.Kind == msg.EventInstanceExited {
			tails[e.App] = e.LogTail
		}
	}
	require.Equal(t, map[string][]string{"bank": nil, "shop": {"shop's secret line"}}, tails)
	for app, want := range map[string]string{"bank": "", "shop": "shop's secret line"} {
		code, _, raw = teamA.do("GET", "/v1/apps/"+app, "")
		require.Equal(t, 200, code)
		var v AppView
		require.NoError(t, json.Unmarshal(raw, &v))
		require.Len(t, v.Failures, 1)
		require.Equal(t, want, v.Failures[0].LastLine, app)
	}
	code, _, raw = admin.do("GET", "/v1/events?app=bank", "")
	require.Equal(t, 200, code)
	require.Contains(t, string(raw), "bank's secret line", "an unlimited token reads every tail")
}

// A team's spec may not keep more log per container than the scheduler
// allows: the hosts' disks are shared.
func TestApplyRefusesLogsOverTheCap(t *testing.T) {
	t.Parallel()
	c := newAPIWith(t, Options{LogLimits: LogLimits{DefaultSize: 10 << 20, DefaultFiles: 3, MaxTotal: 1 << 30}})
	code, obj, _ := c.do("PUT", "/v1/apps/web", "name: web\nimage: web:1\nport: 8080\nlogging: {max_size: 1g, max_files: 20}\n")
	require.Equal(t, 400, code)
	require.Equal(t, "logging", obj["fields"].([]any)[0].(map[string]any)["path"])
	require.Contains(t, obj["fields"].([]any)[0].(map[string]any)["message"], "max_size 1g × max_files 20 keeps up to 20g of log per container; this scheduler allows 1g (--log-max-total)")
	code, _, _ = c.do("PUT", "/v1/apps/web", "name: web\nimage: web:1\nport: 8080\nlogging: {max_size: 500m}\n")
	require.Equal(t, 400, code, "500m × the default 3 files is over 1g")
	code, _, raw := c.do("PUT", "/v1/apps/web", "name: web\nimage: web:1\nport: 8080\nlogging: {max_size: 100m, max_files: 10}\n")
	require.Equal(t, 200, code, "%s", raw)
}

// Rollback goes to any kept generation, three back included; one that is
// the current spec, one that does not exist and a bad body are refused.
func TestRollbackToAGeneration(t *testing.T) {
	t.Parallel()
	c := newAPI(t, "")
	for i := 1; i <= 4; i++ {
		code, _, raw := c.do("PUT", "/v1/apps/web", fmt.Sprintf("name: web\nimage: web:%d\nport: 8080\n", i))
		require.Equal(t, 200, code, "%s", raw)
	}
	code, obj, raw := c.do("POST", "/v1/apps/web/rollback", `{"to": 1}`)
	require.Equal(t, 200, code, "%s", raw)
	require.EqualValues(t, 5, obj["generation"])
	require.Equal(t, "web:1", obj["spec"].(map[string]any)["image"], "three generations back")
	for body, want := range map[string]int{
		`{"to": 5}`:  409, // the current spec
		`{"to": 1}`:  409, // the same, by its first generation
		`{"to": 99}`: 409,
		`{"to": 0}`:  400,
		`{"to": -2}`: 400,
		`{"gen": 2}`: 400,
		`[`:          400,
	} {
		code, obj, _ := c.do("POST", "/v1/apps/web/rollback", body)
		require.Equal(t, want, code, "%s: %v", body, obj)
	}
	code, obj, _ = c.do("POST", "/v1/apps/web/rollback", `{"to": 3}`)
	require.Equal(t, 200, code)
	require.Equal(t, "web:3", obj["spec"].(map[string]any)["image"])
	code, obj, _ = c.do("POST", "/v1/apps/web/rollback", "")
	require.Equal(t, 200, code, "an empty body: the newest earlier spec that differs")
	require.Equal(t, "web:1", obj["spec"].(map[string]any)["image"])
}

// POST /v1/apps/{name}/restart makes a new generation of the same spec.
func TestRestart(t *testing.T) {
	t.Parallel()
	c := newAPI(t, "")
	code, _, raw := c.do("PUT", "/v1/apps/web", "name: web\nimage: web:1\nport: 8080\n")
	require.Equal(t, 200, code, "%s", raw)
	code, obj, raw := c.do("POST", "/v1/apps/web/restart", "")
	require.Equal(t, 200, code, "%s", raw)
	require.EqualValues(t, 2, obj["generation"])
	require.Equal(t, "web:1", obj["spec"].(map[string]any)["image"])
	app, err := c.st.Get(context.Background(), "web")
	require.NoError(t, err)
	require.Equal(t, int64(2), app.RestartedGeneration)
	revs, err := c.st.History(context.Background(), "web", 10)
	require.NoError(t, err)
	require.Len(t, revs, 2, "the restart is a generation of the history")
	code, _, _ = c.do("POST", "/v1/apps/nope/restart", "")
	require.Equal(t, 404, code)
	// An apply after it keeps the restart: the instances it made stay.
	code, _, _ = c.do("PUT", "/v1/apps/web", "name: web\nimage: web:1\nport: 8080\nreplicas: 2\n")
	require.Equal(t, 200, code)
	app, err = c.st.Get(context.Background(), "web")
	require.NoError(t, err)
	require.Equal(t, int64(2), app.RestartedGeneration)
}
