package store

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// PruneEvents deletes the events before the cutoff in batches, oldest
// first, and keeps the others whatever their app or kind.
func TestPruneEvents(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s := open(t)
	now := time.Now().UTC().Truncate(time.Second)
	_, err := s.pool.Exec(ctx, `
		INSERT INTO events (app, kind, message, at)
		SELECT 'app-' || (i % 7), 'instance_started', 'event ' || i, $1::timestamptz - make_interval(hours => 1000 - i)
		FROM generate_series(1, 1000) AS i`, now)
	require.NoError(t, err)
	count := func() (n int) {
		require.NoError(t, s.pool.QueryRow(ctx, `SELECT count(*) FROM events`).Scan(&n))
		return n
	}
	// Events 1..1000 are 999..0 hours old: 700 of them are older than
	// 300 h, deleted in batches of 64 (the last one partial).
	n, err := s.PruneEvents(ctx, now.Add(-300*time.Hour), 64)
	require.NoError(t, err)
	require.EqualValues(t, 699, n)
	require.Equal(t, 301, count())
	var oldest time.Time
	require.NoError(t, s.pool.QueryRow(ctx, `SELECT min(at) FROM events`).Scan(&oldest))
	require.False(t, oldest.Before(now.Add(-300*time.Hour)), "the oldest kept is at the cutoff or after: %s", oldest)

	n, err = s.PruneEvents(ctx, now.Add(-300*time.Hour), 64)
	require.NoError(t, err)
	require.Zero(t, n, "nothing left to prune")
	n, err = s.PruneEvents(ctx, now.Add(time.Hour), 1000)
	require.NoError(t, err)
	require.EqualValues(t, 301, n, "a batch as large as the rest")
	require.Zero(t, count())
}

// BenchmarkPruneEvents measures the leader's hourly prune: a table of 1M
// events over 100 days (10,000 a day, 1,000 apps, with details), of which
// --events-keep 30d deletes the 700,000 oldest, in batches of
// PruneEventsBatch; then the prune an hour later, with nothing new to
// delete (what every later hourly prune costs but its own hour's events).
// events/s is the first prune's rate; idle-ms the second's time.
func BenchmarkPruneEvents(b *testing.B) {
	ctx := context.Background()
	for b.Loop() {
		b.StopTimer()
		s := openBench(b)
		now := time.Now().UTC()
		if _, err := s.pool.Exec(ctx, `
			INSERT INTO events (app, instance, kind, message, details, at)
			SELECT 'app-' || (i % 1000), 'i' || (i % 7919), 'instance_started', 'instance started at 10.0.0.1:32768 on host h1 (generation 3)',
				'{"generation": "3", "host": "h1"}', $1::timestamptz - make_interval(secs => (1000000 - i) * 8.64)
			FROM generate_series(1, 1000000) AS i`, now); err != nil {
			b.Fatal(err)
		}
		if _, err := s.pool.Exec(ctx, `VACUUM ANALYZE events`); err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
		start := time.Now()
		n, err := s.PruneEvents(ctx, now.Add(-30*24*time.Hour), PruneEventsBatch)
		took := time.Since(start)
		if err != nil {
			b.Fatal(err)
		}
		start = time.Now()
		if _, err := s.PruneEvents(ctx, now.Add(-30*24*time.Hour), PruneEventsBatch); err != nil {
			b.Fatal(err)
		}
		idle := time.Since(start)
		b.ReportMetric(float64(n), "deleted")
		b.ReportMetric(float64(n)/took.Seconds(), "events/s")
		b.ReportMetric(float64(idle.Microseconds())/1000, "idle-ms")
	}
}
