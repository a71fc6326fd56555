package store

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

func TestHostRegistry(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s := open(t)
	h, err := s.PutHost(ctx, Host{Name: "h1", DockerURL: "tcp://10.0.0.1:2376", TLSCA: "/etc/berth/ca.pem", Address: "10.0.0.1",
		Labels: map[string]string{"zone": "a"}, CPU: 8, Memory: 16 << 30, Registries: []string{"registry.corp.example", "ghcr.io"}})
	require.NoError(t, err)
	require.Equal(t, HostUnknown, h.State)
	require.Equal(t, []string{"registry.corp.example", "ghcr.io"}, h.Registries)
	require.False(t, h.Drain)
	_, err = s.PutHost(ctx, Host{Name: "h0", DockerURL: "unix:///run/docker.sock", Address: "127.0.0.1"})
	require.NoError(t, err)

	hosts, err := s.Hosts(ctx)
	require.NoError(t, err)
	require.Len(t, hosts, 2)
	require.Equal(t, "h0", hosts[0].Name)
	require.Equal(t, map[string]string{"zone": "a"}, hosts[1].Labels)
	require.Empty(t, hosts[0].Labels)
	require.Nil(t, hosts[0].Registries)

	h, err = s.SetHostDrain(ctx, "h1", true)
	require.NoError(t, err)
	require.True(t, h.Drain)
	h, err = s.PutHost(ctx, Host{Name: "h1", DockerURL: "tcp://10.0.0.1:2376", Address: "10.0.0.2", CPU: 4})
	require.NoError(t, err)
	require.True(t, h.Drain, "re-registering keeps the drain")
	require.Equal(t, "10.0.0.2", h.Address)
	require.Nil(t, h.Registries, "re-registering without registries allows none")
	_, err = s.SetHostDrain(ctx, "nope", true)
	require.ErrorIs(t, err, ErrNotFound)

	l, ok, err := s.Acquire(ctx, "scheduler", "a", time.Minute)
	require.NoError(t, err)
	require.True(t, ok)
	at := time.Now().UTC().Truncate(time.Microsecond)
	require.NoError(t, s.LeaderTx(ctx, l, func(ctx context.Context, tx *Tx) error {
		return tx.SetHostState(ctx, "h1", HostDown, "tls.key: outside --host-tls-dir", at, time.Time{})
	}))
	h, err = s.GetHost(ctx, "h1")
	require.NoError(t, err)
	require.Equal(t, "tls.key: outside --host-tls-dir", h.StateReason)
	require.NoError(t, s.LeaderTx(ctx, l, func(ctx context.Context, tx *Tx) error {
		return tx.SetHostState(ctx, "h1", HostUp, "", at, at)
	}))
	require.NoError(t, s.LeaderTx(ctx, l, func(ctx context.Context, tx *Tx) error {
		return tx.SetHostState(ctx, "h1", HostUp, "", at.Add(time.Minute), at.Add(time.Minute))
	}))
	h, err = s.GetHost(ctx, "h1")
	require.NoError(t, err)
	require.Equal(t, HostUp, h.State)
	require.Empty(t, h.StateReason, "the reason goes with the state")
	require.True(t, at.Equal(h.StateAt), "the state's since stays while it holds")
	require.True(t, at.Add(time.Minute).Equal(h.LastSeen))

	// A host that instances run on is removed only by force.
	require.NoError(t, s.LeaderTx(ctx, l, func(ctx context.Context, tx *Tx) error {
		return tx.PutInstance(ctx, Instance{ID: "i1", App: "web", Generation: 1, State: "running", Host: "h1"})
	}))
	_, err = s.PutHost(ctx, Host{Name: "h1", DockerURL: "tcp://10.0.0.9:2376", Address: "10.0.0.2"})
	require.ErrorIs(t, err, ErrHostInUse, "another engine under a name instances run on")
	err = s.DeleteHost(ctx, "h1", false)
	require.ErrorIs(t, err, ErrHostInUse)
	require.ErrorContains(t, err, "scheduler hosts drain h1")
	require.NoError(t, s.DeleteHost(ctx, "h1", true))
	require.NoError(t, s.DeleteHost(ctx, "h0", false))
	require.ErrorIs(t, s.DeleteHost(ctx, "h0", false), ErrNotFound)
}
