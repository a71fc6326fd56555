package store

import (
	"context"
	"encoding/json"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

func TestDecisionsScaleFencedAndKeptAcrossApply(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s := open(t)
	const src = "name: web\nimage: web:1\nport: 8080\nscaling: {min: 2, max: 6, target_rps_per_replica: 50}\n"
	app, _, err := s.Apply(ctx, load(t, src), nil)
	require.NoError(t, err)
	require.Equal(t, 2, app.DesiredReplicas, "a new autoscaled app starts at min")
	l, ok, err := s.Acquire(ctx, "scheduler", "a", time.Minute)
	require.NoError(t, err)
	require.True(t, ok)

	at := time.Now().UTC().Truncate(time.Microsecond)
	record := func(d Decision) error {
		return s.LeaderTx(ctx, l, func(ctx context.Context, tx *Tx) error { _, err := tx.RecordDecision(ctx, d); return err })
	}
	reasons := json.RawMessage(`[{"metric":"rps","value":120,"target":50,"ratio":2.4,"replicas":5}]`)
	require.NoError(t, record(Decision{App: "web", Current: 2, Desired: 2, Recommendation: 2, At: at.Add(-time.Hour * 3)}), "an old hold")
	require.NoError(t, record(Decision{App: "web", Current: 2, Desired: 5, Recommendation: 5, Reasons: reasons, Limits: []string{"x"}, At: at}))
	app, err = s.Get(ctx, "web")
	require.NoError(t, err)
	require.Equal(t, 5, app.DesiredReplicas)
	require.Equal(t, int64(1), app.Generation, "scaling is not a new generation: nothing restarts")

	// A decision from a count the app no longer has is refused, and nothing of it is kept.
	require.ErrorIs(t, record(Decision{App: "web", Current: 2, Desired: 3, At: at}), ErrScaleConflict)
	_, err = s.Scale(ctx, "web", 3)
	require.ErrorIs(t, err, ErrAutoscaled)

	// A new image keeps the autoscaled count; a lower max clamps it.
	app, _, err = s.Apply(ctx, load(t, "name: web\nimage: web:2\nport: 8080\nscaling: {min: 2, max: 6, target_rps_per_replica: 50}\n"), nil)
	require.NoError(t, err)
	require.Equal(t, 5, app.DesiredReplicas)
	app, _, err = s.Apply(ctx, load(t, "name: web\nimage: web:2\nport: 8080\nscaling: {min: 1, max: 4, target_rps_per_replica: 50}\n"), nil)
	require.NoError(t, err)
	require.Equal(t, 4, app.DesiredReplicas)

	ds, err := s.Decisions(ctx, "web", time.Time{}, 10)
	require.NoError(t, err)
	require.Len(t, ds, 2, "oldest first, the refused one absent")
	last := ds[1]
	require.Equal(t, 5, last.Desired)
	require.Equal(t, l.Term, last.Term)
	require.Equal(t, []string{"x"}, last.Limits)
	require.JSONEq(t, string(reasons), string(last.Reasons))
	require.True(t, last.At.Equal(at))
	ds, err = s.Decisions(ctx, "web", time.Time{}, 1)
	require.NoError(t, err)
	require.Len(t, ds, 1)
	require.Equal(t, 5, ds[0].Desired, "the limit keeps the newest")

	// Pruning drops old holds, keeps changes.
	require.NoError(t, s.LeaderTx(ctx, l, func(ctx context.Context, tx *Tx) error {
		n, err := tx.PruneDecisions(ctx, at.Add(-2*time.Hour), at.Add(-7*24*time.Hour))
		require.Equal(t, int64(1), n)
		return err
	}))
	ds, err = s.Decisions(ctx, "", time.Time{}, 10)
	require.NoError(t, err)
	require.Len(t, ds, 1)
}
