// Package leader elects one scheduler replica on the store's lease row: it
// acquires or renews the lease every TTL/3 (with jitter), stops acting at
// once when it cannot renew before its lease runs out, resigns on a clean
// stop so a follower takes over without waiting, and wakes followers on the
// resign notification. A Group runs the leader-only services while this
// replica leads, and stops and joins them all when it stops leading.
package leader

import (
	"context"
	"math/rand/v2"
	"sync"
	"time"

	"go.uber.org/zap"

	"github.com/berthhq/berth/common/lifecycle"
	"github.com/berthhq/berth/common/logging"
	"github.com/berthhq/berth/scheduler/internal/store"
)

// Lessor is the part of the store an elector needs. Safe for concurrent use.
type Lessor interface {
	Acquire(ctx context.Context, name, holder string, ttl time.Duration) (store.Lease, bool, error)
	Resign(ctx context.Context, l store.Lease) error
}

var _ Lessor = (*store.Store)(nil)

// Elector holds or seeks leadership for one holder. Run drives it;
// Leader may be called from any goroutine.
type Elector struct {
	lessor Lessor
	name   string
	holder string
	ttl    time.Duration
	logger *zap.Logger
	now    func() time.Time

	// ResignOnStop resigns when Run's context ends (a clean stop). Off, a
	// stop looks like a crash: tests use it.
	ResignOnStop bool
	// OnChange is called when leadership is gained (ok) or lost (!ok), from
	// Run's goroutine.
	OnChange func(l store.Lease, ok bool)

	wake chan struct{}

	mu         sync.Mutex
	lease      store.Lease
	validUntil time.Time
}

// New returns an elector for the lease name.
func New(lessor Lessor, name, holder string, ttl time.Duration, logger *zap.Logger) *Elector {
	return &Elector{lessor: lessor, name: name, holder: holder, ttl: ttl, logger: logger.Named("leader"), now: time.Now,
		ResignOnStop: true, wake: make(chan struct{}, 1)}
}

// Wake makes a follower try to acquire now (call it on the lease NOTIFY).
func (e *Elector) Wake() {
	select {
	case e.wake <- struct{}{}:
	default:
	}
}

// Leader returns the lease while this elector holds it and it has not run
// out by the local clock (measured from before the last renewal was sent,
// so it ends no later than the database's).
func (e *Elector) Leader() (store.Lease, bool) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.lease.Term == 0 || !e.now().Before(e.validUntil) {
		return store.Lease{}, false
	}
	return e.lease, true
}

func (e *Elector) set(l store.Lease, until time.Time) (changed bool) {
	e.mu.Lock()
	defer e.mu.Unlock()
	changed = e.lease.Term != l.Term
	e.lease, e.validUntil = l, until
	return changed
}

// Run seeks and keeps leadership until ctx ends.
func (e *Elector) Run(ctx context.Context) error {
	renewEvery := e.ttl / 3
	for {
		sent := e.now()
		actx, cancel := context.WithTimeout(ctx, renewEvery)
		l, ok, err := e.lessor.Acquire(actx, e.name, e.holder, e.ttl)
		cancel()
		switch {
		case err == nil && ok:
			if e.set(l, sent.Add(e.ttl)) {
				e.logger.Info("became leader", zap.Uint64(logging.KeyTerm, l.Term))
				e.notify(l, true)
			}
		case err == nil:
			e.depose("another scheduler leads")
		default:
			// Keep acting only while the lease we hold has not run out.
			if _, still := e.Leader(); !still {
				e.depose("cannot renew the lease: " + err.Error())
			} else {
				e.logger.Warn("lease renewal failed, retrying", zap.Error(err))
			}
		}
		wait := jitter(renewEvery)
		if _, leading := e.Leader(); leading {
			// Wake up in time to stop acting if renewals keep failing.
			e.mu.Lock()
			if left := e.validUntil.Sub(e.now()); left < wait {
				wait = max(left, time.Millisecond)
			}
			e.mu.Unlock()
		}
		select {
		case <-ctx.Done():
			e.stop(ctx)
			return nil
		case <-e.wake:
		case <-time.After(wait):
		}
	}
}

func (e *Elector) depose(why string) {
	e.mu.Lock()
	was := e.lease
	e.mu.Unlock()
	if was.Term == 0 {
		return
	}
	e.set(store.Lease{}, time.Time{})
	e.logger.Warn("stopped leading", zap.Uint64(logging.KeyTerm, was.Term), zap.String("reason", why))
	e.notify(was, false)
}

func (e *Elector) stop(ctx context.Context) {
	l, ok := e.Leader()
	e.set(store.Lease{}, time.Time{})
	if !ok {
		return
	}
	e.notify(l, false)
	if !e.ResignOnStop {
		return
	}
	cctx, cancel := lifecycle.CleanupContext(ctx)
	defer cancel()
	if err := e.lessor.Resign(cctx, l); err != nil {
		e.logger.Warn("resign failed: a follower takes over when the lease expires", zap.Error(err))
		return
	}
	e.logger.Info("resigned", zap.Uint64(logging.KeyTerm, l.Term))
}

func (e *Elector) notify(l store.Lease, ok bool) {
	if e.OnChange != nil {
		e.OnChange(l, ok)
	}
}

// jitter spreads renewals by ±10% so replicas do not move in step.
func jitter(d time.Duration) time.Duration {
	spread := int64(d) / 5
	if spread <= 0 {
		return d
	}
	return d - time.Duration(spread/2) + time.Duration(rand.Int64N(spread))
}
