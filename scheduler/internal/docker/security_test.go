package docker

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/berthhq/berth/common/spec"
	"github.com/berthhq/berth/internal/testrig"
	"github.com/moby/moby/client"
	"github.com/stretchr/testify/require"
)

// TestCreateSecurityDefaults inspects what the engine holds for a created
// container: no-new-privileges always, and a pids limit always, the
// spec's or the default.
func TestCreateSecurityDefaults(t *testing.T) {
	t.Parallel()
	c := newClient(t)
	image := testrig.DemoImage(t, "v1")
	tests := []struct {
		name string
		pids int
		want int64
	}{
		{"default", 0, spec.DefaultPids},
		{"raised by the spec", 4096, 4096},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			ctx := context.Background()
			inst := fmt.Sprintf("s%d%d", i, time.Now().UnixNano()%1e9)
			id, err := c.Create(ctx, CreateOptions{App: "dockertest", Instance: inst, Image: image, Port: testrig.DemoPort,
				Pids: tt.pids, StopSignal: "SIGTERM", StopGrace: time.Second})
			require.NoError(t, err)
			t.Cleanup(func() { _ = c.Remove(context.Background(), id) })
			res, err := c.c.ContainerInspect(ctx, id, client.ContainerInspectOptions{})
			require.NoError(t, err)
			host := res.Container.HostConfig
			require.NotNil(t, host)
			require.Contains(t, host.SecurityOpt, "no-new-privileges:true")
			require.NotNil(t, host.PidsLimit)
			require.Equal(t, tt.want, *host.PidsLimit)
		})
	}
}
