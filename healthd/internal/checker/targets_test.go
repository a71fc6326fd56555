package checker

import (
	"testing"
	"time"

	"github.com/berthhq/berth/common/msg"
	"github.com/berthhq/berth/common/spec"
	"github.com/stretchr/testify/require"
)

func TestTargets(t *testing.T) {
	t.Parallel()
	off := false
	started := time.Unix(1000, 0)
	apps := map[string]*msg.App{
		"web":   {Name: "web", Port: 8080, Health: &spec.Health{Type: spec.HealthHTTP, Port: 8080, InitialDelay: spec.Duration(5 * time.Second)}},
		"admin": {Name: "admin", Port: 8080, Health: &spec.Health{Type: spec.HealthTCP, Port: 9090}},
		"none":  {Name: "none", Port: 8080},
		"off":   {Name: "off", Port: 8080, Health: &spec.Health{Type: spec.HealthHTTP, Port: 8080, Enabled: &off}},
		// The scheduler checks these: healthd never probes them.
		"dock": {Name: "dock", Port: 8080, Health: &spec.Health{Type: spec.HealthDocker, Port: 8080}},
		"exec": {Name: "exec", Port: 8080, Health: &spec.Health{Type: spec.HealthExec, Port: 8080, Exec: &spec.ExecHealth{Command: []string{"/check"}}}},
	}
	inst := func(app, id, state, addr string) *msg.Instance {
		return &msg.Instance{App: app, ID: id, State: state, Address: addr, Generation: 3, Term: 2, StartedAt: &started}
	}
	instances := map[string]*msg.Instance{
		"web.a":    inst("web", "a", msg.StateRunning, "127.0.0.1:32001"),
		"web.b":    inst("web", "b", msg.StateStarting, "127.0.0.1:32002"),
		"web.c":    inst("web", "c", msg.StateDraining, "127.0.0.1:32003"),
		"web.d":    inst("web", "d", msg.StateStopped, "127.0.0.1:32004"),
		"web.e":    inst("web", "e", msg.StateCreating, ""),
		"admin.x":  inst("admin", "x", msg.StateRunning, "172.18.0.5:8080"),
		"none.y":   inst("none", "y", msg.StateRunning, "127.0.0.1:1"),
		"off.z":    inst("off", "z", msg.StateRunning, "127.0.0.1:2"),
		"ghost.q1": inst("ghost", "q1", msg.StateRunning, "127.0.0.1:3"),
		"dock.d1":  inst("dock", "d1", msg.StateRunning, "127.0.0.1:4"),
		"exec.e1":  inst("exec", "e1", msg.StateRunning, "127.0.0.1:5"),
	}
	got := Targets(apps, instances, nil)
	var keys []string
	for _, tg := range got {
		keys = append(keys, tg.Key)
	}
	require.Equal(t, []string{"admin.x", "web.a", "web.b"}, keys, "only starting and running instances of apps with an enabled http or tcp check")
	require.Equal(t, "172.18.0.5:9090", got[0].Address, "a separate health port is reached on the instance's host")
	require.Equal(t, "127.0.0.1:32001", got[1].Address)
	require.Equal(t, started.Add(5*time.Second), got[1].NotBefore, "initial delay counts from the container start")
	require.Equal(t, int64(3), got[1].Generation)
	require.Equal(t, uint64(2), got[1].Term)

	mine := Targets(apps, instances, func(key string) bool { return key == "web.b" })
	require.Len(t, mine, 1)
	require.Equal(t, "web.b", mine[0].Key)
}

func TestResolveSecrets(t *testing.T) {
	t.Parallel()
	env := map[string]string{"BERTH_PROBE_WEB__TOKEN": "Bearer s3cret", "BERTH_PROBE_WEB__BODY": `{"key":"s3cret"}`, "HOME": "/root",
		"BERTH_PROBE_SHOP__TOKEN": "Bearer shop-s3cret", "BERTH_PROBE_WEB__X__TOKEN": "Bearer web--x-s3cret"}
	lookup := func(k string) (string, bool) { v, ok := env[k]; return v, ok }
	for _, tc := range []struct {
		name        string
		headers     map[string]string
		body        string
		wantHeaders map[string]string
		wantBody    string
	}{
		{"reference", map[string]string{"Authorization": "$env:BERTH_PROBE_WEB__TOKEN"}, "", map[string]string{"Authorization": "Bearer s3cret"}, ""},
		{"unset reference is left out", map[string]string{"Authorization": "$env:BERTH_PROBE_WEB__MISSING", "Accept": "text/plain"}, "", map[string]string{"Accept": "text/plain"}, ""},
		{"another app's variable is left out", map[string]string{"Authorization": "$env:BERTH_PROBE_SHOP__TOKEN"}, "", map[string]string{}, ""},
		{"a longer app's variable is left out", map[string]string{"Authorization": "$env:BERTH_PROBE_WEB__X__TOKEN"}, "", map[string]string{}, ""},
		{"redacted is left out", map[string]string{"Authorization": spec.RedactedValue}, "", map[string]string{}, ""},
		{"no prefix is literal", map[string]string{"X-Note": "$env:HOME"}, "", map[string]string{"X-Note": "$env:HOME"}, ""},
		{"literal", map[string]string{"Host": "web.internal"}, "ping", map[string]string{"Host": "web.internal"}, "ping"},
		{"body reference", nil, "$env:BERTH_PROBE_WEB__BODY", nil, `{"key":"s3cret"}`},
		{"unset body reference", nil, "$env:BERTH_PROBE_WEB__NONE", nil, ""},
		{"another app's body is not read", nil, "$env:BERTH_PROBE_SHOP__TOKEN", nil, ""},
		{"a redacted body is not sent", nil, spec.RedactedValue, nil, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			h := spec.Health{Type: spec.HealthHTTP, Headers: tc.headers, Body: tc.body}
			got := ResolveSecrets("web", h, lookup)
			require.Equal(t, tc.wantHeaders, got.Headers)
			require.Equal(t, tc.wantBody, got.Body)
			require.Equal(t, tc.body, h.Body, "the published check is not changed")
		})
	}
}

func TestTargetsResolveFromEnvironment(t *testing.T) { // not parallel: sets the environment
	t.Setenv("BERTH_PROBE_WEB__TARGETS_TEST", "Bearer from-env")
	hc := &spec.Health{Type: spec.HealthHTTP, Port: 8080, Headers: map[string]string{"Authorization": "$env:BERTH_PROBE_WEB__TARGETS_TEST"}}
	apps := map[string]*msg.App{"web": {Name: "web", Port: 8080, Health: hc}}
	instances := map[string]*msg.Instance{"web.a": {App: "web", ID: "a", State: msg.StateRunning, Address: "127.0.0.1:1"}}
	got := Targets(apps, instances, nil)
	require.Len(t, got, 1)
	require.Equal(t, "Bearer from-env", got[0].Check.Headers["Authorization"])
	require.Equal(t, "$env:BERTH_PROBE_WEB__TARGETS_TEST", hc.Headers["Authorization"], "the app view keeps the reference")
}
