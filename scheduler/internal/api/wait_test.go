package api

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/berthhq/berth/common/msg"
	"github.com/berthhq/berth/scheduler/internal/store"
)

// waitStream opens GET /v1/apps/web/wait?query and returns its lines as
// they come.
func (c *client) waitStream(query string) (*http.Response, <-chan WaitUpdate) {
	c.t.Helper()
	req, err := http.NewRequest("GET", c.url+"/v1/apps/web/wait?"+query, nil)
	require.NoError(c.t, err)
	resp, err := http.DefaultClient.Do(req)
	require.NoError(c.t, err)
	c.t.Cleanup(func() { resp.Body.Close() })
	lines := make(chan WaitUpdate, 100)
	go func() {
		defer close(lines)
		sc := bufio.NewScanner(resp.Body)
		for sc.Scan() {
			var u WaitUpdate
			if json.Unmarshal(sc.Bytes(), &u) != nil {
				u = WaitUpdate{State: "unparsable: " + sc.Text()}
			}
			lines <- u
		}
	}()
	return resp, lines
}

// putInstances records instances of web under a lease of the test's.
func (c *client) putInstances(insts ...store.Instance) {
	c.t.Helper()
	ctx := context.Background()
	l, _, err := c.st.Acquire(ctx, "scheduler", "me", time.Minute)
	require.NoError(c.t, err)
	require.NoError(c.t, c.st.LeaderTx(ctx, l, func(ctx context.Context, tx *store.Tx) error {
		for i, in := range insts {
			in.App = "web"
			in.Address = fmt.Sprintf("127.0.0.1:%d", 31000+i)
			if err := tx.PutInstance(ctx, in); err != nil {
				return err
			}
		}
		return nil
	}))
}

// The wait streams a generation's progress as its instances come up, and
// ends with one line saying it rolled out.
func TestWaitStreamsUntilRolledOut(t *testing.T) {
	t.Parallel()
	c := newAPIWith(t, Options{SpecHash: func(a store.App) string { return a.Spec.Image }})
	for _, img := range []string{"web:1", "web:2"} {
		code, _, raw := c.do("PUT", "/v1/apps/web", fmt.Sprintf("name: web\nimage: %s\nport: 8080\nreplicas: 2\n", img))
		require.Equal(t, 200, code, "%s", raw)
	}
	old1 := store.Instance{ID: "o1", Generation: 1, State: msg.StateRunning, Health: msg.StatusHealthy, SpecHash: "web:1"}
	old2 := store.Instance{ID: "o2", Generation: 1, State: msg.StateRunning, Health: msg.StatusHealthy, SpecHash: "web:1"}
	new1 := store.Instance{ID: "n1", Generation: 2, State: msg.StateStarting, Health: msg.StatusUnknown, SpecHash: "web:2"}
	c.putInstances(old1, old2, new1)

	resp, lines := c.waitStream("generation=2&timeout=1m")
	require.Equal(t, 200, resp.StatusCode)
	require.Equal(t, "application/x-ndjson", resp.Header.Get("Content-Type"))
	u := <-lines
	require.Equal(t, WaitProgress, u.State)
	require.Equal(t, "0 of 2 instances of generation 2 serving, 1 starting, 2 of an earlier spec still serving", u.Progress)

	new1.State, new1.Health = msg.StateRunning, msg.StatusHealthy
	new2 := store.Instance{ID: "n2", Generation: 2, State: msg.StateRunning, Health: msg.StatusHealthy, SpecHash: "web:2"}
	c.putInstances(new1, new2)
	ctx := context.Background()
	l, _, err := c.st.Acquire(ctx, "scheduler", "me", time.Minute)
	require.NoError(t, err)
	require.NoError(t, c.st.LeaderTx(ctx, l, func(ctx context.Context, tx *store.Tx) error {
		for _, id := range []string{"o1", "o2"} {
			if err := tx.DeleteInstance(ctx, id); err != nil {
				return err
			}
		}
		return nil
	}))
	var got []WaitUpdate
	for u := range lines {
		got = append(got, u)
	}
	require.NotEmpty(t, got)
	last := got[len(got)-1]
	require.Equal(t, WaitRolledOut, last.State, "%+v", got)
	require.Equal(t, "2 of 2 instances of generation 2 serving: rolled out", last.Progress)
	for _, u := range got[:len(got)-1] {
		require.Equal(t, WaitProgress, u.State, "only the last line ends the wait")
	}
}

// A generation rolled back ends the wait with its cause and its
// instances' failures; a timeout ends it saying the rollout goes on.
func TestWaitEndsOnFailureAndTimeout(t *testing.T) {
	t.Parallel()
	c := newAPIWith(t, Options{SpecHash: func(a store.App) string { return a.Spec.Image }})
	for _, img := range []string{"web:1", "web:2", "web:1"} {
		code, _, raw := c.do("PUT", "/v1/apps/web", fmt.Sprintf("name: web\nimage: %s\nport: 8080\nreplicas: 1\n", img))
		require.Equal(t, 200, code, "%s", raw)
	}
	ctx := context.Background()
	l, _, err := c.st.Acquire(ctx, "scheduler", "me", time.Minute)
	require.NoError(t, err)
	require.NoError(t, c.st.LeaderTx(ctx, l, func(ctx context.Context, tx *store.Tx) error {
		for _, e := range []store.Event{
			{App: "web", Instance: "n1", Kind: msg.EventInstanceExited, Message: "instance n1 exited",
				Details: map[string]string{"generation": "2", "exit_code": "3", "reason": "its container exited with code 3"}},
			{App: "web", Kind: msg.EventRolloutRolledBack, Message: "rolled back",
				Details: map[string]string{"from_generation": "2", "to_generation": "1", "generation": "3", "cause": "generation 2 failed: 3 of its instances failed"}},
		} {
			if _, err := tx.AddEvent(ctx, e); err != nil {
				return err
			}
		}
		return nil
	}))
	_, lines := c.waitStream("generation=2")
	u := <-lines
	require.Equal(t, WaitFailed, u.State)
	require.Equal(t, "generation 2 was rolled back (now generation 3): generation 2 failed: 3 of its instances failed", u.Failure)
	require.Len(t, u.Failures, 1)
	require.Equal(t, "n1", u.Failures[0].Instance)
	_, ok := <-lines
	require.False(t, ok, "the failure is the last line")

	// Generation 3 has no instance: after a 1 s timeout, the wait says so.
	_, lines = c.waitStream("generation=3&timeout=1s")
	var last WaitUpdate
	for u := range lines {
		last = u
	}
	require.Equal(t, WaitTimeout, last.State)
	require.Equal(t, "generation 3 is not rolled out after 1s (its rollout goes on): 0 of 1 instances of generation 3 serving", last.Failure)
}

func TestWaitRefusesBadRequests(t *testing.T) {
	t.Parallel()
	c := newAPI(t, "")
	code, _, raw := c.do("PUT", "/v1/apps/web", web)
	require.Equal(t, 200, code, "%s", raw)
	for _, tt := range []struct {
		query, want string
		code        int
	}{
		{"", `{"path":"generation","message":"\"\" must be a generation number, 1 or more"}`, 400},
		{"generation=0&timeout=1ms", `{"path":"timeout","message":"\"1ms\" must be a duration from 1s to 24h0m0s"}`, 400},
		{"generation=x&timeout=forever", `{"path":"timeout","message":"\"forever\"`, 400},
		{"generation=9", "app web has no generation 9 yet: its newest is 1", 404},
	} {
		code, _, raw := c.do("GET", "/v1/apps/web/wait?"+tt.query, "")
		require.Equal(t, tt.code, code, "%s: %s", tt.query, raw)
		require.Contains(t, string(raw), tt.want, tt.query)
	}
	code, _, _ = c.do("GET", "/v1/apps/nope/wait?generation=1", "")
	require.Equal(t, 404, code)
}

// The wait's outcome, from status alone.
func TestRolloutOutcome(t *testing.T) {
	t.Parallel()
	v := AppView{Generation: 4, DesiredReplicas: 3, Rollout: &RolloutView{State: RolloutRolling, Generation: 4, Starting: 1, Earlier: 2},
		Serving: []ServingView{{Generation: 4, Instances: 1, Desired: true}, {Generation: 3, Instances: 2}}}
	done, failure, progress := RolloutOutcome(v, 4)
	require.False(t, done)
	require.Empty(t, failure)
	require.Equal(t, "1 of 3 instances of generation 4 serving, 1 starting, 2 of an earlier spec still serving", progress)

	v = AppView{Generation: 4, DesiredReplicas: 3, Rollout: &RolloutView{State: RolloutReleasing, Generation: 4, Earlier: 3},
		Serving: []ServingView{{Generation: 3, Instances: 3}}}
	_, _, progress = RolloutOutcome(v, 4)
	require.Equal(t, "release task running, 0 of 3 instances of generation 4 serving, 3 of an earlier spec still serving", progress)
	v = AppView{Generation: 5, DesiredReplicas: 3,
		Rollout:  &RolloutView{State: RolloutRolledBack, Generation: 5, FromGeneration: 4, Cause: "generation 4 failed: release task exited with code 3"},
		Serving:  []ServingView{{Generation: 3, Instances: 3, Desired: true}},
		Failures: []FailureView{{Instance: "release-4", Generation: 4, Kind: "release_failed", Reason: "release task exited with code 3", LastLine: "release: failed"}}}
	u := waitUpdate(v, 4)
	require.Equal(t, WaitFailed, u.State)
	require.Equal(t, "generation 4 was rolled back (now generation 5): generation 4 failed: release task exited with code 3", u.Failure)
	require.Equal(t, "release-4", u.Failures[0].Instance, "the failed release is among the generation's failures")
}
