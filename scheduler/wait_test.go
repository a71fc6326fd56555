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

// waitServer answers each GET /v1/apps/web/wait with the lines of the
// next connection in turn (a connection whose lines end without an outcome
// is a stream that broke), then the last one for ever.
func waitServer(t *testing.T, conns ...[]api.WaitUpdate) *client {
	t.Helper()
	var mu sync.Mutex
	i := 0
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		require.Equal(t, "/v1/apps/web/wait", r.URL.Path)
		require.Equal(t, "4", r.URL.Query().Get("generation"))
		_, err := time.ParseDuration(r.URL.Query().Get("timeout"))
		require.NoError(t, err, "the time left is asked for")
		mu.Lock()
		lines := conns[min(i, len(conns)-1)]
		i++
		mu.Unlock()
		if lines == nil {
			w.WriteHeader(http.StatusNotFound)
			_ = json.NewEncoder(w).Encode(api.Error{Error: "app web has no generation 4 yet: its newest is 3"})
			return
		}
		enc := json.NewEncoder(w)
		for _, u := range lines {
			_ = enc.Encode(u)
			w.(http.Flusher).Flush()
		}
	}))
	t.Cleanup(srv.Close)
	cl, err := newClient(clientFlags{Server: srv.URL})
	require.NoError(t, err)
	return cl
}

func progress(p string) api.WaitUpdate { return api.WaitUpdate{State: api.WaitProgress, Progress: p} }

func TestWaitRollout(t *testing.T) {
	t.Parallel()
	rolledOut := api.WaitUpdate{State: api.WaitRolledOut, Progress: "3 of 3 instances of generation 4 serving: rolled out"}
	rolledBack := api.WaitUpdate{State: api.WaitFailed, Progress: "rolled back",
		Failure:  "generation 4 was rolled back (now generation 5): generation 4 failed: 3 of its instances failed within 10m0s, the last because its container exited with code 3",
		Failures: []api.FailureView{{Instance: "n1", Generation: 4, Kind: "instance_exited", Reason: "its container exited with code 3", LastLine: "fatal: bad config"}}}
	timedOut := api.WaitUpdate{State: api.WaitTimeout, Progress: "1 of 3 instances of generation 4 serving", Failure: "generation 4 is not rolled out after 1m0s"}

	for _, tt := range []struct {
		name  string
		conns [][]api.WaitUpdate
		want  string // "" for success
		lines []string
	}{
		{"rolled out", [][]api.WaitUpdate{{progress("0 of 3 instances of generation 4 serving, 1 starting, 3 of an earlier spec still serving"),
			progress("1 of 3 instances of generation 4 serving, 2 of an earlier spec still serving"), rolledOut}}, "",
			[]string{"0 of 3 instances of generation 4 serving, 1 starting", "1 of 3 instances", "3 of 3 instances of generation 4 serving: rolled out"}},
		{"rolled back", [][]api.WaitUpdate{{progress("0 of 3 instances of generation 4 serving"), rolledBack}},
			"the rollout did not take: generation 4 was rolled back (now generation 5): generation 4 failed: 3 of its instances failed within 10m0s, the last because its container exited with code 3",
			[]string{"rolled back", `n1: instance_exited: its container exited with code 3 — last line: "fatal: bad config"`}},
		{"the stream breaks and is opened again", [][]api.WaitUpdate{{progress("1 of 3 instances of generation 4 serving")}, {progress("1 of 3 instances of generation 4 serving"), rolledOut}}, "",
			[]string{"lost the scheduler's stream (the stream ended before the rollout did); asking again", "rolled out"}},
		{"timed out", [][]api.WaitUpdate{{progress("1 of 3 instances of generation 4 serving"), timedOut}},
			"the rollout did not take: generation 4 is not rolled out after --timeout 1m0s: 1 of 3 instances of generation 4 serving", nil},
		{"no such generation", [][]api.WaitUpdate{nil}, "app web has no generation 4 yet: its newest is 3", nil},
	} {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			var out bytes.Buffer
			err := waitRollout(context.Background(), waitServer(t, tt.conns...), "web", 4, time.Minute, time.Millisecond, &out)
			switch {
			case tt.want == "":
				require.NoError(t, err)
			case tt.name == "no such generation":
				require.EqualError(t, err, tt.want)
			default:
				require.EqualError(t, err, tt.want)
				require.ErrorIs(t, err, errRolloutFailed)
			}
			for _, l := range tt.lines {
				require.Contains(t, out.String(), l)
			}
			require.LessOrEqual(t, strings.Count(out.String(), "1 of 3 instances of generation 4 serving\n"), 1, "one line per change, also across a reconnect:\n%s", out.String())
		})
	}
}

// Ctrl-C stops the wait, saying that the rollout goes on.
func TestWaitRolloutInterrupted(t *testing.T) {
	t.Parallel()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_ = json.NewEncoder(w).Encode(progress("1 of 3 instances of generation 4 serving"))
		w.(http.Flusher).Flush()
		<-r.Context().Done()
	}))
	t.Cleanup(srv.Close)
	cl, err := newClient(clientFlags{Server: srv.URL})
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	// Ctrl-C once the progress is shown.
	out := writerFunc(func(p []byte) (int, error) { cancel(); return len(p), nil })
	err = waitRollout(ctx, cl, "web", 4, time.Minute, time.Millisecond, out)
	require.EqualError(t, err, "stopped waiting for generation 4 (its rollout goes on): 1 of 3 instances of generation 4 serving")
	require.NotErrorIs(t, err, errRolloutFailed)
}

type writerFunc func([]byte) (int, error)

func (f writerFunc) Write(p []byte) (int, error) { return f(p) }

func TestWaitFlags(t *testing.T) {
	t.Parallel()
	code, _, errOut := cmd(t, "apply", "-f", "/nonexistent.yaml", "--wait", "--timeout", "0s", "--server", "http://127.0.0.1:1")
	require.Equal(t, 2, code)
	require.Contains(t, errOut, "--timeout (0s): must be between 1s and 24h")
}
