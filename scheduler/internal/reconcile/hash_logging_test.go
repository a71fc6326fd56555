package reconcile

import (
	"testing"
	"time"

	"github.com/berthhq/berth/common/spec"
	"github.com/berthhq/berth/scheduler/internal/secret"
	"github.com/stretchr/testify/require"
)

func TestSpecHashLogging(t *testing.T) {
	t.Parallel()
	load := func(src string) string {
		a, err := spec.Load([]byte("name: web\nimage: web:1\nport: 8080\n" + src))
		require.NoError(t, err)
		return SpecHash(a, secret.HashEnv(a.Env))
	}
	// The hash of a spec without logging, as it was before logging
	// existed: upgrading the scheduler rolls no running app.
	require.Equal(t, "bb7d8463904b4e7a", load(""), "a spec without logging hashes as before")
	require.Equal(t, load(""), load("logging: {}\n"), "an empty logging block is the defaults")
	require.NotEqual(t, load(""), load("logging: {max_size: 20m}\n"), "a changed log size rolls: Docker fixes it at create")
	require.NotEqual(t, load("logging: {max_size: 20m}\n"), load("logging: {max_size: 20m, max_files: 5}\n"), "a changed file count rolls")
	require.Equal(t, load("logging: {max_size: 20m}\n"), load("logging: {max_size: 20Mi}\n"), "the same size written otherwise is the same")
}

// TestSpecHashDockerHealth: an override of the image's HEALTHCHECK is
// fixed at create, so it rolls; a docker check without one, or any other
// check, hashes as before.
func TestSpecHashDockerHealth(t *testing.T) {
	t.Parallel()
	base := &spec.App{Name: "web", Image: "web:1", Port: 8080}
	plain := SpecHash(base, nil)
	for _, h := range []*spec.Health{
		{Type: spec.HealthHTTP, Path: "/"},
		{Type: spec.HealthDocker},
		{Type: spec.HealthExec, Exec: &spec.ExecHealth{Command: []string{"/check"}}},
	} {
		a := *base
		a.Health = h
		require.Equal(t, plain, SpecHash(&a, nil), h.Type)
	}
	a := *base
	a.Health = &spec.Health{Type: spec.HealthDocker, Docker: &spec.DockerHealth{Interval: spec.Duration(time.Second)}}
	over := SpecHash(&a, nil)
	require.NotEqual(t, plain, over)
	a.Health = &spec.Health{Type: spec.HealthDocker, Docker: &spec.DockerHealth{Interval: spec.Duration(2 * time.Second)}}
	require.NotEqual(t, over, SpecHash(&a, nil))
}
