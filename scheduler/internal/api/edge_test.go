package api

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/berthhq/berth/common/msg"
)

// TestEdgeView: GET /v1/edge lists every lbagent by node, with its lag
// behind the instances bucket's newest revision, its mode ("unknown" for
// an lbagent older than the field), its latest reload and push, and
// whether its record outlived the agents bucket's TTL.
func TestEdgeView(t *testing.T) {
	t.Parallel()
	now := time.Now().UTC().Truncate(time.Second)
	reload := &msg.ConfigChange{At: now.Add(-time.Hour), DurationMS: 84.5, Revision: 100}
	push := &msg.ConfigChange{At: now.Add(-2 * time.Second), DurationMS: 1.5, Revision: 120, Error: "control endpoint: 500"}
	records := []*msg.Agent{
		{Node: "lb-2", AppliedRevision: 90, Apps: map[string]int64{"web": 3}, UpdatedAt: now.Add(-time.Minute)}, // older, and gone
		{Node: "lb-1", AppliedRevision: 120, Apps: map[string]int64{"web": 3, "api": 1}, Errors: map[string]string{"api": "nginx -t: refused"},
			LastError: "control endpoint: 500", NginxVersion: "nginx/1.22.1", Mode: msg.ModeDynamic, LastReload: reload, LastPush: push,
			Ejected: []msg.Ejection{{App: "web", Instance: "a1", Reason: "errors", Since: now, Until: now.Add(time.Minute), Times: 1}}, UpdatedAt: now},
		{Node: "lb-3", AppliedRevision: 500, Mode: msg.ModeReload, UpdatedAt: now}, // above the bucket: it started over
	}
	c := newAPIWith(t, Options{Agents: func() []*msg.Agent { return records },
		InstancesRevision: func(context.Context) (uint64, error) { return 120, nil }})
	code, _, raw := c.do("GET", "/v1/edge", "")
	require.Equal(t, http.StatusOK, code, "%s", raw)
	var v EdgeView
	require.NoError(t, json.Unmarshal(raw, &v))
	require.Equal(t, uint64(120), v.InstancesRevision)
	require.Empty(t, v.RevisionError)
	zero, behind := uint64(0), uint64(30)
	require.Equal(t, []AgentView{
		{Node: "lb-1", AppliedRevision: 120, Lag: &zero, Mode: msg.ModeDynamic, LastReload: reload, LastPush: push, NginxVersion: "nginx/1.22.1",
			LastError: "control endpoint: 500", Errors: map[string]string{"api": "nginx -t: refused"}, Apps: 2, Ejected: 1, UpdatedAt: now},
		{Node: "lb-2", AppliedRevision: 90, Lag: &behind, Mode: ModeUnknown, Apps: 1, UpdatedAt: now.Add(-time.Minute), Stale: true},
		{Node: "lb-3", AppliedRevision: 500, Mode: msg.ModeReload, UpdatedAt: now},
	}, v.Agents)
	var obj map[string]any
	require.NoError(t, json.Unmarshal(raw, &obj))
	require.NotContains(t, obj["agents"].([]any)[2], "lag", "an unknown lag is absent, not 0")
}

// TestEdgeViewWithoutRevision: when the instances bucket's revision does
// not read, every lbagent is still shown, with no lag and a note that
// says why; a replica without the agents view shows an empty list.
func TestEdgeViewWithoutRevision(t *testing.T) {
	t.Parallel()
	now := time.Now().UTC()
	c := newAPIWith(t, Options{Agents: func() []*msg.Agent { return []*msg.Agent{{Node: "lb-1", AppliedRevision: 7, UpdatedAt: now}} },
		InstancesRevision: func(context.Context) (uint64, error) { return 0, errors.New("nats: timeout") }})
	code, _, raw := c.do("GET", "/v1/edge", "")
	require.Equal(t, http.StatusOK, code)
	var v EdgeView
	require.NoError(t, json.Unmarshal(raw, &v))
	require.Zero(t, v.InstancesRevision)
	require.Contains(t, v.RevisionError, "lag unknown")
	require.NotContains(t, v.RevisionError, "nats: timeout", "NATS's errors go to the log, not to readers")
	require.Len(t, v.Agents, 1)
	require.Nil(t, v.Agents[0].Lag)

	// An empty instances bucket is revision 0, known: an lbagent at 0 is
	// caught up.
	c = newAPIWith(t, Options{Agents: func() []*msg.Agent { return []*msg.Agent{{Node: "lb-1", UpdatedAt: now}} },
		InstancesRevision: func(context.Context) (uint64, error) { return 0, nil }})
	code, _, raw = c.do("GET", "/v1/edge", "")
	require.Equal(t, http.StatusOK, code)
	v = EdgeView{}
	require.NoError(t, json.Unmarshal(raw, &v))
	require.Empty(t, v.RevisionError)
	require.NotNil(t, v.Agents[0].Lag)
	require.Zero(t, *v.Agents[0].Lag)

	code, obj, raw := newAPIWith(t, Options{}).do("GET", "/v1/edge", "")
	require.Equal(t, http.StatusOK, code, "%s", raw)
	require.Equal(t, []any{}, obj["agents"])
	require.Contains(t, obj["revision_error"], "lag unknown")
}
