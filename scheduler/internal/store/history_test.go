package store

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// generations returns the generations app_history keeps of app, oldest first.
func generations(t testing.TB, s *Store, app string) []int64 {
	t.Helper()
	rows, err := s.pool.Query(context.Background(), `SELECT generation FROM app_history WHERE app = $1 ORDER BY generation`, app)
	require.NoError(t, err)
	var out []int64
	for rows.Next() {
		var g int64
		require.NoError(t, rows.Scan(&g))
		out = append(out, g)
	}
	require.NoError(t, rows.Err())
	return out
}

// TestHistoryPruning: each new generation prunes the history to the
// newest --history-keep, except a generation an instance still runs (what
// serves, which an automatic rollback returns to); a rollback to a pruned
// generation is refused naming what is kept; another app's history is
// its own.
func TestHistoryPruning(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s := open(t)
	s.SetHistoryKeep(3)
	apply := func(app string, i int) {
		t.Helper()
		_, changed, err := s.Apply(ctx, load(t, fmt.Sprintf("name: %s\nimage: %s:%d\nport: 8080\nreplicas: 1\n", app, app, i)), nil)
		require.NoError(t, err)
		require.True(t, changed)
	}
	apply("web", 1)
	apply("other", 1)
	apply("other", 2)
	apply("web", 2)
	require.Equal(t, []int64{1, 2}, generations(t, s, "web"), "fewer than 3: nothing pruned")
	apply("web", 3)
	apply("web", 4)
	require.Equal(t, []int64{2, 3, 4}, generations(t, s, "web"))
	require.Equal(t, []int64{1, 2}, generations(t, s, "other"))

	// Generation 4 serves (an instance runs it) while 5, 6 and 7 come.
	l, _, err := s.Acquire(ctx, "scheduler", "me", time.Minute)
	require.NoError(t, err)
	require.NoError(t, s.LeaderTx(ctx, l, func(ctx context.Context, tx *Tx) error {
		return tx.PutInstance(ctx, Instance{ID: "w4", App: "web", Generation: 4, State: "running", Health: "healthy", SpecHash: "h4"})
	}))
	for i := 5; i <= 7; i++ {
		apply("web", i)
	}
	require.Equal(t, []int64{4, 5, 6, 7}, generations(t, s, "web"), "the newest 3, and the one that serves")
	app, err := s.RollbackTo(ctx, "web", 4)
	require.NoError(t, err, "the serving generation can be rolled back to")
	require.Equal(t, int64(8), app.Generation)
	require.Equal(t, []int64{4, 6, 7, 8}, generations(t, s, "web"))

	_, err = s.RollbackTo(ctx, "web", 2)
	require.ErrorIs(t, err, ErrNoGeneration)
	require.ErrorIs(t, err, ErrNoHistory)
	require.EqualError(t, err, "rollback web: generation 2 of web is not kept (it was pruned): 4 generations are kept, 4 to 8, "+
		"and the scheduler keeps the newest 3 (--history-keep); scheduler history web lists them")
	_, _, err = s.Generation(ctx, "web", 5)
	require.ErrorIs(t, err, ErrNoGeneration)
	_, _, err = s.Generation(ctx, "web", 99)
	require.ErrorContains(t, err, "generation 99 of web is not kept (the newest is 8)")

	// Restart and scale prune too; a keep below the minimum keeps 2.
	s.SetHistoryKeep(1)
	_, err = s.Restart(ctx, "web")
	require.NoError(t, err)
	_, err = s.Scale(ctx, "web", 2)
	require.NoError(t, err)
	require.Equal(t, []int64{4, 9, 10}, generations(t, s, "web"))

	// Keep 0: every generation.
	s.SetHistoryKeep(0)
	for i := 11; i <= 13; i++ {
		apply("web", i)
	}
	require.Equal(t, []int64{4, 9, 10, 11, 12, 13}, generations(t, s, "web"))
}

// TestHistorySummary: each generation says what changed against the one
// before; the oldest kept says whether earlier ones were pruned; one
// generation comes with the kept one before it.
func TestHistorySummary(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s := open(t)
	v1 := load(t, "name: web\nimage: web:1\nport: 8080\nreplicas: 3\nenv: {LOG_LEVEL: info}\n")
	v2 := load(t, "name: web\nimage: web:2\nport: 8080\nreplicas: 3\nenv: {LOG_LEVEL: debug, DB_URL: pg}\nrouting: {hosts: [web.example.com]}\n")
	_, _, err := s.Apply(ctx, v1, nil)
	require.NoError(t, err)
	_, _, err = s.Apply(ctx, v2, nil)
	require.NoError(t, err)
	_, err = s.Scale(ctx, "web", 4)
	require.NoError(t, err)
	_, err = s.Restart(ctx, "web")
	require.NoError(t, err)
	_, err = s.RollbackTo(ctx, "web", 1)
	require.NoError(t, err)

	revs, err := s.History(ctx, "web", 10)
	require.NoError(t, err)
	summaries := map[int64]string{}
	for _, r := range revs {
		summaries[r.Generation] = r.Summary
		require.NotNil(t, r.Spec)
	}
	require.Equal(t, map[int64]string{
		1: "created",
		2: "image web:1→web:2, env: +DB_URL ~LOG_LEVEL, routing.hosts set",
		3: "replicas 3→4",
		4: "restart (same spec)",
		5: "back to 1: image web:2→web:1, replicas 4→3, env: -DB_URL ~LOG_LEVEL, routing.hosts removed",
	}, summaries)

	revs, err = s.History(ctx, "web", 2)
	require.NoError(t, err)
	require.Len(t, revs, 2)
	require.Equal(t, "restart (same spec)", revs[1].Summary, "the oldest listed is still compared with the one before it")

	cur, prev, err := s.Generation(ctx, "web", 3)
	require.NoError(t, err)
	require.Equal(t, int64(3), cur.Generation)
	require.Equal(t, "replicas 3→4", cur.Summary)
	require.Equal(t, 4, *cur.Spec.Replicas)
	require.Equal(t, int64(2), prev.Generation)
	cur, prev, err = s.Generation(ctx, "web", 1)
	require.NoError(t, err)
	require.Equal(t, "created", cur.Summary)
	require.Nil(t, prev)

	// Pruned: the oldest kept says so.
	s.SetHistoryKeep(2)
	_, err = s.Scale(ctx, "web", 5)
	require.NoError(t, err)
	revs, err = s.History(ctx, "web", 10)
	require.NoError(t, err)
	require.Len(t, revs, 2)
	require.Equal(t, "oldest kept generation (earlier ones pruned)", revs[1].Summary)
	_, _, err = s.Generation(ctx, "nosuch", 1)
	require.ErrorIs(t, err, ErrNotFound)
}
