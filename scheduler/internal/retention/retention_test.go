package retention

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/stretchr/testify/require"
	"go.uber.org/zap/zaptest"
)

type fakePruner struct {
	cutoffs []time.Time
	n       int64
	err     error
}

func (f *fakePruner) PruneEvents(_ context.Context, cutoff time.Time, batch int) (int64, error) {
	f.cutoffs = append(f.cutoffs, cutoff)
	return f.n, f.err
}

// A prune deletes what is older than the keep, counts it, and a failure
// is counted and left to the next prune.
func TestPrune(t *testing.T) {
	t.Parallel()
	now := time.Date(2026, 12, 6, 12, 0, 0, 0, time.UTC)
	f := &fakePruner{n: 12}
	e := NewEvents(f, 30*24*time.Hour, zaptest.NewLogger(t))
	e.now = func() time.Time { return now }
	e.Prune(context.Background())
	require.Equal(t, []time.Time{now.Add(-30 * 24 * time.Hour)}, f.cutoffs)
	require.InDelta(t, 12, testutil.ToFloat64(e.pruned), 0)

	f.n, f.err = 3, errors.New("postgres is unreachable")
	e.Prune(context.Background())
	require.InDelta(t, 15, testutil.ToFloat64(e.pruned), 0, "what it deleted before failing counts")
	require.InDelta(t, 1, testutil.ToFloat64(e.failures), 0)
}

// Run prunes at once, then every tick, until its context ends.
func TestRunPrunesAtOnceAndEveryTick(t *testing.T) {
	t.Parallel()
	pruned := make(chan struct{}, 1)
	e := NewEvents(prunerFunc(func() {
		select {
		case pruned <- struct{}{}:
		default: // the test reads two; more may come before it cancels
		}
	}), time.Hour, zaptest.NewLogger(t))
	e.every = time.Millisecond
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- e.Run(ctx) }()
	<-pruned
	<-pruned // a tick later
	cancel()
	require.NoError(t, <-done)
}

type prunerFunc func()

func (p prunerFunc) PruneEvents(context.Context, time.Time, int) (int64, error) { p(); return 0, nil }
