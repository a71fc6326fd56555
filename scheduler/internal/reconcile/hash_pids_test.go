package reconcile

import (
	"testing"

	"github.com/berthhq/berth/common/spec"
	"github.com/berthhq/berth/scheduler/internal/secret"
	"github.com/stretchr/testify/require"
)

func TestSpecHashPids(t *testing.T) {
	t.Parallel()
	load := func(src string) string {
		a, err := spec.Load([]byte("name: web\nimage: web:1\nport: 8080\n" + src))
		require.NoError(t, err)
		return SpecHash(a, secret.HashEnv(a.Env))
	}
	require.Equal(t, load(""), load("resources: {pids: 512}\n"), "the default written out is the default")
	require.NotEqual(t, load(""), load("resources: {pids: 4096}\n"), "a raised pids limit rolls")
}
