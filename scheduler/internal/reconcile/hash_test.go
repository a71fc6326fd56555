package reconcile

import (
	"testing"

	"github.com/berthhq/berth/common/spec"
	"github.com/berthhq/berth/scheduler/internal/secret"
	"github.com/stretchr/testify/require"
)

func TestSpecHash(t *testing.T) {
	t.Parallel()
	base, err := spec.Load([]byte("name: web\nimage: web:1\nport: 8080\nreplicas: 2\nenv: {A: '1'}\n"))
	require.NoError(t, err)
	h := SpecHash(base, secret.HashEnv(base.Env))
	require.Len(t, h, 16)
	require.Equal(t, h, SpecHash(base, map[string]string{"A": "1"}), "stable")

	same := []string{
		"name: web\nimage: web:1\nport: 8080\nreplicas: 7\nenv: {A: '1'}\n",
		"name: web\nimage: web:1\nport: 8080\nreplicas: 2\nenv: {A: '1'}\nrouting: {hosts: [web.example.com]}\n",
		"name: web\nimage: web:1\nport: 8080\nreplicas: 2\nenv: {A: '1'}\nhealth: {path: /ready}\nlb: {method: least_conn}\n",
		"name: web\nimage: web:1\nport: 8080\nreplicas: 2\nenv: {A: '1'}\nupdate: {max_surge: 2}\nstop: {drain: 1s}\n",
		"name: web\nimage: web:1\nport: 8080\nreplicas: 2\nenv: {A: '1'}\nrelease: {command: [/app/migrate], timeout: 1m, env: {B: '2'}}\n",
	}
	for _, src := range same {
		a, err := spec.Load([]byte(src))
		require.NoError(t, err)
		require.Equal(t, h, SpecHash(a, secret.HashEnv(a.Env)), "no restart for: %s", src)
	}
	differs := []string{
		"name: web\nimage: web:2\nport: 8080\nreplicas: 2\nenv: {A: '1'}\n",
		"name: web\nimage: web:1\nport: 8080\nreplicas: 2\nenv: {A: '2'}\n",
		"name: web\nimage: web:1\nport: 9090\nreplicas: 2\nenv: {A: '1'}\n",
		"name: web\nimage: web:1\nport: 8080\nreplicas: 2\nenv: {A: '1'}\ncommand: [/web, -v]\n",
		"name: web\nimage: web:1\nport: 8080\nreplicas: 2\nenv: {A: '1'}\nresources: {memory: 128Mi}\n",
	}
	for _, src := range differs {
		a, err := spec.Load([]byte(src))
		require.NoError(t, err)
		require.NotEqual(t, h, SpecHash(a, secret.HashEnv(a.Env)), "a rollout for: %s", src)
	}
}

func TestRestarted(t *testing.T) {
	t.Parallel()
	require.Equal(t, "abc", Restarted("abc", 0), "never restarted: the hash as it was")
	require.NotEqual(t, "abc", Restarted("abc", 4))
	require.NotEqual(t, Restarted("abc", 4), Restarted("abc", 5))
	require.Equal(t, Restarted("abc", 4), Restarted("abc", 4))
	require.Len(t, Restarted("abc", 4), 16)
}

func TestPinned(t *testing.T) {
	t.Parallel()
	require.Equal(t, "abc", Pinned("abc", ""), "not pinned (stored before pinning): the hash as it was")
	a, b := Pinned("abc", "r/web@sha256:1"), Pinned("abc", "r/web@sha256:2")
	require.NotEqual(t, "abc", a)
	require.NotEqual(t, a, b, "another digest rolls")
	require.Equal(t, a, Pinned("abc", "r/web@sha256:1"))
	require.Len(t, a, 16)
	require.NotEqual(t, Restarted(a, 3), a, "a restart of a pinned app still rolls")
}
