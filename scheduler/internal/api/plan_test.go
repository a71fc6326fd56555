package api

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/berthhq/berth/common/spec"
	"github.com/berthhq/berth/scheduler/internal/store"
)

// written is what an apply writes of an app: its row and its history.
type written struct {
	Generation int64
	UpdatedAt  time.Time
	History    int
}

func writtenOf(t *testing.T, st *store.Store, app string) written {
	t.Helper()
	a, err := st.Get(context.Background(), app)
	require.NoError(t, err)
	revs, err := st.History(context.Background(), app, MaxHistory)
	require.NoError(t, err)
	return written{a.Generation, a.UpdatedAt, len(revs)}
}

// TestPlan: a plan says what an apply of the same body would change and
// do, checks it as apply does, and writes nothing: the app's row and
// history stay, and no notification is sent.
func TestPlan(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	// The image is the containers' hash: enough to tell specs apart.
	c := newAPIWith(t, Options{DefaultCPU: 0.5, DefaultMemory: 64 << 20, SpecHash: func(a store.App) string { return a.Spec.Image }})
	code, _, raw := c.do("PUT", "/v1/apps/web", web)
	require.Equal(t, 200, code, "%s", raw)
	_, err := c.st.PutHost(ctx, store.Host{Name: "h1", DockerURL: "unix:///run/h1.sock", Address: "10.0.0.1", CPU: 2})
	require.NoError(t, err)
	l, ok, err := c.st.Acquire(ctx, "scheduler", "t", time.Minute)
	require.NoError(t, err)
	require.True(t, ok)
	require.NoError(t, c.st.LeaderTx(ctx, l, func(ctx context.Context, tx *store.Tx) error {
		for i := range 3 {
			if err := tx.PutInstance(ctx, store.Instance{ID: fmt.Sprintf("w%d", i), App: "web", Generation: 1, State: "running", Health: "healthy", Host: "h1", SpecHash: "web:1"}); err != nil {
				return err
			}
		}
		return tx.SetHostState(ctx, "h1", store.HostUp, "", time.Now(), time.Now())
	}))

	// Every notification from now on, in order.
	notified := make(chan string, 100)
	lctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go func() { _ = c.st.Listen(lctx, []string{store.AppsChannel}, func(_, p string) { notified <- p }) }()
	probe := func() {
		t.Helper()
		n := 1
		require.Eventually(t, func() bool { // LISTEN may not be in place at first
			n++
			_, err := c.st.Scale(ctx, "web-probe", n)
			if err != nil {
				_, _, err = c.st.Apply(ctx, load(t, "name: web-probe\nimage: p:1\nport: 80\nrouting: {hosts: [probe.test]}\n"), nil)
				require.NoError(t, err)
			}
			for {
				select {
				case name := <-notified:
					require.Equal(t, "web-probe", name, "a plan notified")
					if name == "web-probe" {
						return true
					}
				case <-time.After(100 * time.Millisecond):
					return false
				}
			}
		}, 10*time.Second, 10*time.Millisecond)
	}
	probe()
	before := writtenOf(t, c.st, "web")

	type action struct{ Kind, Message string }
	tests := []struct {
		name, app, body string
		new, changed    bool
		summary         string
		diff            []string
		actions         []action
	}{
		{"no change", "web", web, false, false, "", nil, []action{{"no_change", "no change: the spec is the current one; nothing happens"}}},
		{"new image", "web", strings.Replace(web, "web:1", "web:2", 1), false, true, "image web:1→web:2",
			[]string{"--- generation 1\n+++ planned\n", "-image: web:1\n+image: web:2\n"},
			[]action{{"replace", "replace 3 instance(s) by a rolling update (max_surge 1, max_unavailable 0): its containers change"}}},
		{"scale past the host", "web", strings.Replace(web, "replicas: 3", "replicas: 6", 1), false, true, "replicas 3→6", []string{"-replicas: 3\n+replicas: 6\n"},
			[]action{{"scale", "scale 3→6"}, {"unplaceable", "unplaceable: 2 instance(s) do not fit: no host of 1 can take it (h1: has 0.00 of 2.00 CPU left, needs 0.50)"}}},
		{"routing only", "web", web + "routing: {hosts: [web.test]}\n", false, true, "routing.hosts set", []string{"+  hosts:\n+  - web.test\n"},
			[]action{{"routing", "routing only: lbagents push the change to nginx or reload it; no instance is replaced"}}},
		{"new app", "api", strings.Replace(web, "name: web", "name: api", 1) + "routing: {hosts: [api.test]}\n", true, true, "created", []string{"--- (no app)\n+++ planned\n", "+name: api\n"},
			[]action{{"create", "create the app: start 3 instance(s) of web:1"},
				{"unplaceable", "unplaceable: 2 instance(s) do not fit: no host of 1 can take it (h1: has 0.00 of 2.00 CPU left, needs 0.50)"}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var got PlanView
			code, raw := c.doJSON("POST", "/v1/apps/"+tt.app+"/plan", tt.body, &got)
			require.Equal(t, 200, code, "%s", raw)
			require.Equal(t, tt.new, got.New)
			require.Equal(t, tt.changed, got.Changed)
			require.Equal(t, tt.summary, got.Summary)
			for _, d := range tt.diff {
				require.Contains(t, got.Diff, d)
			}
			var actions []action
			for _, a := range got.Actions {
				actions = append(actions, action{a.Kind, a.Message})
			}
			require.Equal(t, tt.actions, actions)
		})
	}

	// Refused as apply refuses, naming the field.
	for body, want := range map[string]string{
		strings.Replace(web, "port: 8080", "port: 99999", 1): "port",
		strings.Replace(web, "name: web", "name: other", 1):  "must match the app in the URL",
	} {
		code, obj, raw := c.do("POST", "/v1/apps/web/plan", body)
		require.Equal(t, http.StatusBadRequest, code, "%s", raw)
		require.Contains(t, fmt.Sprint(obj["fields"]), want)
	}
	// A host another app claimed first is a conflict, as for apply.
	code, obj, raw := c.do("POST", "/v1/apps/web/plan", web+"routing: {hosts: [probe.test]}\n")
	require.Equal(t, http.StatusBadRequest, code, "%s", raw)
	require.Contains(t, fmt.Sprint(obj["fields"]), "routing.hosts[0]")

	// Nothing was written, and nothing notified: the probe's change is the
	// next notification.
	require.Equal(t, before, writtenOf(t, c.st, "web"))
	_, err = c.st.Get(ctx, "api")
	require.ErrorIs(t, err, store.ErrNotFound, "a planned new app is not created")
	probe()
}

// doJSON is do, decoding the answer into out.
func (c *client) doJSON(method, path, body string, out any) (int, []byte) {
	c.t.Helper()
	code, _, raw := c.do(method, path, body)
	if code == http.StatusOK {
		require.NoError(c.t, json.Unmarshal(raw, out))
	}
	return code, raw
}

func load(t *testing.T, src string) *spec.App {
	t.Helper()
	a, err := spec.Load([]byte(src))
	require.NoError(t, err)
	return a
}
