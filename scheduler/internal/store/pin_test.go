package store

import (
	"context"
	"testing"

	"github.com/jackc/tern/v2/migrate"
	"github.com/stretchr/testify/require"

	"github.com/berthhq/berth/internal/testrig"
)

const (
	refV1 = "127.0.0.1:5000/web@sha256:1111111111111111111111111111111111111111111111111111111111111111"
	refV2 = "127.0.0.1:5000/web@sha256:2222222222222222222222222222222222222222222222222222222222222222"
)

// The pinned ref is part of a generation: a new ref alone is a new
// generation, an empty one keeps the current pin, and scale, restart,
// redeploy and rollback carry the ref of the generation they make.
func TestImagePinning(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s := open(t)
	spec := load(t, "name: web\nimage: 127.0.0.1:5000/web:latest\nport: 8080\nreplicas: 2\n")
	app, changed, err := s.ApplyPinned(ctx, spec, refV1, nil)
	require.NoError(t, err)
	require.True(t, changed)
	require.Equal(t, refV1, app.ImageRef)
	require.Empty(t, app.PreviousImageRef)

	_, changed, err = s.ApplyPinned(ctx, load(t, "name: web\nimage: 127.0.0.1:5000/web:latest\nport: 8080\nreplicas: 2\n"), refV1, nil)
	require.NoError(t, err)
	require.False(t, changed, "same spec, same digest")
	_, changed, err = s.ApplyPinned(ctx, load(t, "name: web\nimage: 127.0.0.1:5000/web:latest\nport: 8080\nreplicas: 2\n"), "", nil)
	require.NoError(t, err)
	require.False(t, changed, "not resolved this time: the pin stays")

	app, changed, err = s.ApplyPinned(ctx, load(t, "name: web\nimage: 127.0.0.1:5000/web:latest\nport: 8080\nreplicas: 2\n"), refV2, nil)
	require.NoError(t, err)
	require.True(t, changed, "the tag pushed again: a new generation")
	require.Equal(t, int64(2), app.Generation)
	require.Equal(t, refV2, app.ImageRef)
	require.Equal(t, refV1, app.PreviousImageRef)

	app, err = s.Scale(ctx, "web", 3)
	require.NoError(t, err)
	require.Equal(t, refV2, app.ImageRef, "scale keeps the pin")
	app, err = s.Restart(ctx, "web")
	require.NoError(t, err)
	require.Equal(t, refV2, app.ImageRef, "restart keeps the pin")
	require.Equal(t, int64(4), app.Generation)

	// Redeploy: only at the generation resolved; the same ref changes nothing.
	_, _, err = s.Redeploy(ctx, "web", 3, refV1)
	require.ErrorIs(t, err, ErrChanged)
	app, changed, err = s.Redeploy(ctx, "web", 4, refV2)
	require.NoError(t, err)
	require.False(t, changed)
	require.Equal(t, int64(4), app.Generation)
	app, changed, err = s.Redeploy(ctx, "web", 4, refV1)
	require.NoError(t, err)
	require.True(t, changed)
	require.Equal(t, int64(5), app.Generation)
	require.Equal(t, refV1, app.ImageRef)
	require.Equal(t, refV2, app.PreviousImageRef)
	require.Equal(t, int64(4), app.RestartedGeneration, "a redeploy keeps the restart")
	_, _, err = s.Redeploy(ctx, "nope", 1, refV1)
	require.ErrorIs(t, err, ErrNotFound)

	// Rollback: generation 4 has the same spec and another digest: it is
	// a rollback target, and its ref comes back with it.
	app, err = s.RollbackTo(ctx, "web", 4)
	require.NoError(t, err)
	require.Equal(t, refV2, app.ImageRef)
	_, err = s.RollbackTo(ctx, "web", 4)
	require.ErrorIs(t, err, ErrNoHistory, "its spec and image already")
	app, err = s.Rollback(ctx, "web")
	require.NoError(t, err)
	require.Equal(t, refV1, app.ImageRef, "the newest earlier generation whose spec or image differs: 5")

	revs, err := s.History(ctx, "web", 10)
	require.NoError(t, err)
	require.Len(t, revs, 7)
	require.Equal(t, refV1, revs[0].ImageRef)
	require.Equal(t, refV2, revs[1].ImageRef)
	require.Equal(t, refV1, revs[6].ImageRef)
	require.Equal(t, "127.0.0.1:5000/web:latest", revs[0].Image)
	got, err := s.Get(ctx, "web")
	require.NoError(t, err)
	require.Equal(t, refV1, got.ImageRef)

	// Another image with no pin: unpinned.
	app, _, err = s.ApplyPinned(ctx, load(t, "name: web\nimage: web:2\nport: 8080\n"), "", nil)
	require.NoError(t, err)
	require.Empty(t, app.ImageRef)
}

// Apps stored before migration 015 read with no pin.
func TestImageRefMigration(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s, err := Open(ctx, testrig.Postgres(t))
	require.NoError(t, err)
	t.Cleanup(s.Close)
	require.NoError(t, s.migrator(ctx, func(m *migrate.Migrator) error { return m.MigrateTo(ctx, 14) }))
	_, err = s.pool.Exec(ctx, `
		INSERT INTO apps (name, spec, generation, desired_replicas) VALUES ('web', '{"name":"web","image":"web:1","port":80}', 1, 1);
		INSERT INTO app_history (app, generation, spec) VALUES ('web', 1, '{"name":"web","image":"web:1","port":80}')`)
	require.NoError(t, err)
	_, err = s.Migrate(ctx)
	require.NoError(t, err)
	app, err := s.Get(ctx, "web")
	require.NoError(t, err)
	require.Empty(t, app.ImageRef)
	revs, err := s.History(ctx, "web", 10)
	require.NoError(t, err)
	require.Empty(t, revs[0].ImageRef)
}

// A generation written by a scheduler of the version before pinning (the
// API of a replica not upgraded yet) leaves image_ref alone: that stale
// pin does not apply to it.
func TestStalePinIsIgnored(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s := open(t)
	_, _, err := s.ApplyPinned(ctx, load(t, "name: web\nimage: r/web:1\nport: 8080\n"), refV1, nil)
	require.NoError(t, err)
	// What the version before writes: spec and generation, nothing of the pin.
	_, err = s.pool.Exec(ctx, `UPDATE apps SET spec = '{"name":"web","image":"r/web:2","port":8080}', generation = generation + 1 WHERE name = 'web'`)
	require.NoError(t, err)
	app, err := s.Get(ctx, "web")
	require.NoError(t, err)
	require.Empty(t, app.ImageRef, "r/web:2 is not pinned to r/web:1's digest")
	app, changed, err := s.ApplyPinned(ctx, load(t, "name: web\nimage: r/web:2\nport: 8080\n"), refV2, nil)
	require.NoError(t, err)
	require.True(t, changed)
	require.Equal(t, refV2, app.ImageRef)
	require.Empty(t, app.PreviousImageRef, "the stale pin was no pin")
}
