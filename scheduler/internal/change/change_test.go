package change

import (
	"fmt"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/berthhq/berth/common/spec"
)

func load(t *testing.T, src string) *spec.App {
	t.Helper()
	a, err := spec.Load([]byte(src))
	require.NoError(t, err)
	return a
}

// sealed is a with its secret name sealed under value id id (what the
// scheduler stores); the box is not the plaintext.
func sealed(a *spec.App, name, id string) *spec.App {
	c := *a
	c.Env = map[string]spec.EnvValue{}
	for k, v := range a.Env {
		c.Env[k] = v
	}
	c.Env[name] = spec.EnvValue{Sealed: &spec.Sealed{Box: []byte("box-" + id), ValueID: id}}
	return &c
}

const base = "name: web\nimage: web:1\nport: 8080\nreplicas: 3\nenv: {LOG_LEVEL: info, OLD: x}\nrouting: {hosts: [a.example.com]}\n"

func TestSummary(t *testing.T) {
	t.Parallel()
	v1 := load(t, base)
	v2 := load(t, strings.NewReplacer("web:1", "web:2", "replicas: 3", "replicas: 5", "LOG_LEVEL: info, OLD: x", "LOG_LEVEL: debug, DB_URL: pg").Replace(base))
	hosts := load(t, strings.Replace(base, "[a.example.com]", "[a.example.com, b.example.com]", 1))
	id1, id2 := strings.Repeat("1", 32), strings.Repeat("2", 32)
	s1, s2 := sealed(v1, "TOKEN", id1), sealed(v1, "TOKEN", id2)
	long := *v2
	long.Env = map[string]spec.EnvValue{}
	for i := range 30 {
		long.Env[fmt.Sprintf("VAR_NUMBER_%02d", i)] = spec.PlainValue("v")
	}
	tests := []struct {
		name       string
		prev       *spec.App
		prevGen    int64
		next       *spec.App
		gen        int64
		backTo     int64
		want       string
		wantPrefix string
	}{
		{"created", nil, 0, v1, 1, 0, "created", ""},
		{"pruned before", nil, 0, v1, 9, 0, "oldest kept generation (earlier ones pruned)", ""},
		{"image, replicas, env", v1, 1, v2, 2, 0, "image web:1→web:2, replicas 3→5, env: +DB_URL ~LOG_LEVEL -OLD", ""},
		{"routing", v1, 1, hosts, 2, 0, "routing.hosts changed", ""},
		{"restart", v1, 4, v1, 5, 0, "restart (same spec)", ""},
		{"secret changed", s1, 1, s2, 2, 0, "env: ~TOKEN (secret)", ""},
		{"secret kept", s1, 1, sealed(s1, "TOKEN", id1), 2, 0, "restart (same spec)", ""},
		{"secret added", v1, 1, s1, 2, 0, "env: +TOKEN (secret)", ""},
		{"back to an earlier spec", v2, 8, v1, 9, 7, "back to 7: image web:2→web:1, replicas 5→3, env: -DB_URL ~LOG_LEVEL +OLD", ""},
		{"after a delete", v1, 3, v2, 5, 0, "", "re-created after a delete: image web:1→web:2"},
		{"bounded", v1, 1, &long, 2, 0, "", "image web:1→web:2, replicas 3→5, env: -LOG_LEVEL -OLD +VAR_NUMBER_00 +VAR_NUMBER_01 +VAR_NUMBER_02 +VAR_NUMBER_03 +VAR_NUMBER_04 +VAR_NUMBER_05 and 24 more"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			got := Summary(tt.prev, tt.prevGen, tt.next, tt.gen, tt.backTo)
			require.LessOrEqual(t, len(got), MaxSummary)
			if tt.want != "" {
				require.Equal(t, tt.want, got)
			} else {
				require.True(t, strings.HasPrefix(got, tt.wantPrefix), got)
			}
			require.NotContains(t, got, "box-")
		})
	}
}

// TestYAMLAndDiff: the YAML reads back as the same spec, a secret shows
// redacted (not even its value id), a changed one says so in the diff,
// and the diff names the changed line.
func TestYAMLAndDiff(t *testing.T) {
	t.Parallel()
	v1 := load(t, base)
	require.True(t, Same(v1, load(t, YAML(v1))), "YAML reads back as the spec")
	require.True(t, strings.HasPrefix(YAML(v1), "name: web\nimage: web:1\nenv:\n  LOG_LEVEL: info\n  OLD: x\nport: 8080\nreplicas: 3\n"), "in the spec's order:\n%s", YAML(v1))
	id1, id2 := "0123456789abcdef0123456789abcdef", "fedcba9876543210fedcba9876543210"
	s1, s2 := sealed(v1, "TOKEN", id1), sealed(v1, "TOKEN", id2)
	y := YAML(s1)
	require.Contains(t, y, "TOKEN:\n    secret: <redacted>\n")
	require.NotContains(t, y, "box-")
	require.NotContains(t, y, "value_id")

	d := Diff(s1, s2, "generation 1", "generation 2")
	require.Contains(t, d, "--- generation 1\n+++ generation 2\n")
	require.Contains(t, d, "-    secret: <redacted>\n+    secret: <redacted> (changed)\n")
	require.NotContains(t, d, "box-")
	require.NotContains(t, d, "value_id")
	require.Empty(t, Diff(s1, sealed(v1, "TOKEN", id1), "a", "b"), "the same secret")
	require.Empty(t, Diff(v1, v1, "a", "b"))

	// A literal secret header (and a body) never shows, in the YAML, the
	// diff or the summary; a reference and another header do.
	h1 := load(t, base+"health: {type: http, path: /, headers: {Authorization: Bearer one-4711, X-Env: $env:BERTH_PROBE_WEB__T, Accept: text/plain}}\n")
	h2 := load(t, base+"health: {type: http, path: /, headers: {Authorization: Bearer two-4712, X-Env: $env:BERTH_PROBE_WEB__U, Accept: text/html}}\n")
	for _, out := range []string{YAML(h1), Diff(h1, h2, "a", "b"), Summary(h1, 1, h2, 2, 0)} {
		require.NotContains(t, out, "4711")
		require.NotContains(t, out, "4712")
	}
	require.Contains(t, YAML(h1), "Authorization: <redacted>\n")
	require.Contains(t, Diff(h1, h2, "a", "b"), "+    Authorization: <redacted> (changed)\n")
	require.Equal(t, "health.headers.Accept text/plain→text/html, health.headers.Authorization changed, health.headers.X-Env $env:BERTH_PROBE_WEB__T→$env:BERTH_PROBE_WEB__U",
		Summary(h1, 1, h2, 2, 0))
	require.False(t, Same(h1, load(t, strings.Replace(YAML(h1), "<redacted>", "Bearer other", 1))), "a changed header is a change")
	require.Contains(t, Diff(nil, v1, "none", "new"), "+image: web:1\n")
}
