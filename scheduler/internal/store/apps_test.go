package store

import (
	"context"
	"testing"
	"time"

	"github.com/berthhq/berth/common/spec"
	"github.com/stretchr/testify/require"
)

func load(t *testing.T, src string) *spec.App {
	t.Helper()
	a, err := spec.Load([]byte(src))
	require.NoError(t, err)
	return a
}

func TestApplyScaleRollbackDelete(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s := open(t)
	notified := make(chan string, 50)
	lctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go func() { _ = s.Listen(lctx, []string{AppsChannel}, func(_, p string) { notified <- p }) }()
	// LISTEN may not be in place yet: apply a probe app until its notification arrives.
	probe := load(t, "name: probe\nimage: p:1\nport: 80\n")
	require.Eventually(t, func() bool {
		if _, err := s.Rollback(ctx, "probe"); err != nil { // any write to probe notifies
			_, _, _ = s.Apply(ctx, probe, nil)
			_, _ = s.Scale(ctx, "probe", 2)
		}
		for {
			select {
			case name := <-notified:
				if name == "probe" {
					return true
				}
			default:
				return false
			}
		}
	}, 10*time.Second, 50*time.Millisecond)
	require.NoError(t, s.Delete(ctx, "probe"))

	v1 := load(t, "name: web\nimage: web:1\nport: 8080\nreplicas: 2\n")
	app, changed, err := s.Apply(ctx, v1, nil)
	require.NoError(t, err)
	require.True(t, changed)
	require.Equal(t, int64(1), app.Generation)
	require.Equal(t, 2, app.DesiredReplicas)

	_, changed, err = s.Apply(ctx, load(t, "name: web\nimage: web:1\nport: 8080\nreplicas: 2\n"), nil)
	require.NoError(t, err)
	require.False(t, changed, "the same spec again is not a new generation")

	app, changed, err = s.Apply(ctx, load(t, "name: web\nimage: web:2\nport: 8080\nreplicas: 2\n"), nil)
	require.NoError(t, err)
	require.True(t, changed)
	require.Equal(t, int64(2), app.Generation)

	app, err = s.Scale(ctx, "web", 5)
	require.NoError(t, err)
	require.Equal(t, int64(3), app.Generation)
	require.Equal(t, 5, app.DesiredReplicas)
	require.Equal(t, "web:2", app.Spec.Image)

	// Rollback goes to the newest earlier spec that differs: web:2 with 2 replicas.
	app, err = s.Rollback(ctx, "web")
	require.NoError(t, err)
	require.Equal(t, int64(4), app.Generation)
	require.Equal(t, 2, *app.Spec.Replicas)
	require.Equal(t, "web:2", app.Spec.Image)

	got, err := s.Get(ctx, "web")
	require.NoError(t, err)
	require.Equal(t, app.Generation, got.Generation)
	list, err := s.List(ctx)
	require.NoError(t, err)
	require.Len(t, list, 1)

	require.NoError(t, s.Delete(ctx, "web"))
	_, err = s.Get(ctx, "web")
	require.ErrorIs(t, err, ErrNotFound)
	require.ErrorIs(t, s.Delete(ctx, "web"), ErrNotFound)
	app, changed, err = s.Apply(ctx, v1, nil)
	require.NoError(t, err)
	require.True(t, changed, "a deleted app can be applied again")
	require.Equal(t, int64(6), app.Generation, "generations keep counting across a delete")

	// Every change notified the leader (bounded: a lost notification fails, never hangs).
	seen := 0
	timeout := time.After(10 * time.Second)
	for seen < 5 {
		select {
		case name := <-notified:
			if name == "web" {
				seen++
			}
		case <-timeout:
			t.Fatalf("only %d of 5 notifications for web arrived", seen)
		}
	}
}

func TestScaleAndRollbackErrors(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s := open(t)
	_, err := s.Scale(ctx, "nope", 3)
	require.ErrorIs(t, err, ErrNotFound)
	_, err = s.Rollback(ctx, "nope")
	require.ErrorIs(t, err, ErrNotFound)

	_, _, err = s.Apply(ctx, load(t, "name: auto\nimage: a:1\nport: 80\nscaling: {min: 2, max: 6, target_cpu_percent: 70}\n"), nil)
	require.NoError(t, err)
	_, err = s.Scale(ctx, "auto", 3)
	require.ErrorIs(t, err, ErrAutoscaled)
	require.ErrorContains(t, err, "change scaling.min and scaling.max instead")
	_, err = s.Rollback(ctx, "auto")
	require.ErrorIs(t, err, ErrNoHistory)

	_, _, err = s.Apply(ctx, load(t, "name: fixed\nimage: f:1\nport: 80\n"), nil)
	require.NoError(t, err)
	_, err = s.Scale(ctx, "fixed", 5000)
	require.ErrorContains(t, err, "replicas: (5000) must be between 0 and 1000")
}

func TestInstanceRecordsAndRestarts(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s := open(t)
	l, _, err := s.Acquire(ctx, "scheduler", "a", time.Minute)
	require.NoError(t, err)
	started := time.Now().UTC().Truncate(time.Millisecond)
	require.NoError(t, s.LeaderTx(ctx, l, func(ctx context.Context, tx *Tx) error {
		if err := tx.PutInstance(ctx, Instance{ID: "a1", App: "web", Generation: 2, State: "creating", Health: "unknown", SpecHash: "h1"}); err != nil {
			return err
		}
		if err := tx.PutInstance(ctx, Instance{ID: "a1", App: "web", Generation: 2, ContainerID: "c1", Address: "127.0.0.1:1", State: "running",
			Health: "unknown", SpecHash: "h1", StartedAt: &started}); err != nil {
			return err
		}
		if err := tx.PutInstance(ctx, Instance{ID: "b1", App: "api", Generation: 1, State: "running", SpecHash: "h2"}); err != nil {
			return err
		}
		_, err := tx.AddEvent(ctx, Event{App: "web", Instance: "z9", Kind: "instance_replaced", Message: "died"})
		return err
	}))
	all, err := s.Instances(ctx, "")
	require.NoError(t, err)
	require.Len(t, all, 2)
	web, err := s.Instances(ctx, "web")
	require.NoError(t, err)
	require.Len(t, web, 1)
	require.Equal(t, "running", web[0].State)
	require.Equal(t, "h1", web[0].SpecHash)
	require.Equal(t, uint64(1), web[0].Term)
	require.Equal(t, started, web[0].StartedAt.UTC())

	require.NoError(t, s.LeaderTx(ctx, l, func(ctx context.Context, tx *Tx) error { return tx.DeleteInstance(ctx, "a1") }))
	web, err = s.Instances(ctx, "web")
	require.NoError(t, err)
	require.Empty(t, web)

	r, err := s.Restarts(ctx, time.Now().Add(-time.Hour))
	require.NoError(t, err)
	require.Len(t, r["web"], 1)
}
