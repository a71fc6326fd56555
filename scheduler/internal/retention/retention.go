// Package retention deletes what the scheduler keeps no longer: the
// events older than --events-keep. The leader runs it, at its start and
// then every hour.
package retention

import (
	"context"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"

	"github.com/berthhq/berth/scheduler/internal/store"
)

// Pruner deletes the events before a time (store.Store).
type Pruner interface {
	PruneEvents(ctx context.Context, cutoff time.Time, batch int) (int64, error)
}

var _ Pruner = (*store.Store)(nil)

// Every is how often the leader prunes.
const Every = time.Hour

// Events prunes the events older than its keep.
type Events struct {
	st     Pruner
	keep   time.Duration
	every  time.Duration
	now    func() time.Time
	logger *zap.Logger

	pruned, failures prometheus.Counter
}

// NewEvents prunes st's events older than keep (> 0) every Every.
func NewEvents(st Pruner, keep time.Duration, logger *zap.Logger) *Events {
	return &Events{st: st, keep: keep, every: Every, now: time.Now, logger: logger.Named("retention"),
		pruned: prometheus.NewCounter(prometheus.CounterOpts{Name: "berth_scheduler_events_pruned_total",
			Help: "Events deleted because they were older than --events-keep."}),
		failures: prometheus.NewCounter(prometheus.CounterOpts{Name: "berth_scheduler_events_prune_failures_total",
			Help: "Prunes of the events that failed (Postgres refused or could not be reached); the next one tries again."}),
	}
}

// Collectors are its metrics.
func (e *Events) Collectors() []prometheus.Collector {
	return []prometheus.Collector{e.pruned, e.failures}
}

// Run prunes at once and then every e.every until ctx ends.
func (e *Events) Run(ctx context.Context) error {
	tick := time.NewTicker(e.every)
	defer tick.Stop()
	for {
		e.Prune(ctx)
		select {
		case <-ctx.Done():
			return nil
		case <-tick.C:
		}
	}
}

// Prune deletes the events older than the keep once, logging what it did.
func (e *Events) Prune(ctx context.Context) {
	start := e.now()
	cutoff := start.Add(-e.keep)
	n, err := e.st.PruneEvents(ctx, cutoff, store.PruneEventsBatch)
	e.pruned.Add(float64(n))
	switch {
	case err != nil && ctx.Err() != nil:
	case err != nil:
		e.failures.Inc()
		e.logger.Warn("could not prune old events; the next prune tries again", zap.Time("before", cutoff), zap.Int64("deleted", n), zap.Error(err))
	case n > 0:
		e.logger.Info("pruned old events", zap.Time("before", cutoff), zap.Int64("deleted", n), zap.Duration("took", time.Since(start)))
	}
}
