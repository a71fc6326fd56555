package publish

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"go.uber.org/zap"

	"github.com/berthhq/berth/common/bus"
	"github.com/berthhq/berth/common/logging"
	"github.com/berthhq/berth/common/msg"
	"github.com/berthhq/berth/scheduler/internal/store"
)

// Watch is how the guard follows a bucket: a watcher of it that reports
// every value it drops to onDrop, until ctx ends.
type Watch func(ctx context.Context, bucket string, onDrop func(key string)) error

// BusWatch is Watch over a connection whose record keys verify the
// scheduler's seals: a dropped value is one the scheduler did not seal for
// that key, or an older one of its own copied back (docs/nats.md, Sealed
// records).
func BusWatch(conn *bus.Conn, logger *zap.Logger) Watch {
	return func(ctx context.Context, bucket string, onDrop func(key string)) error {
		w := bus.NewWatcher(conn, bucket, func(string, []byte) (struct{}, error) { return struct{}{}, nil },
			bus.HandlerFuncs[struct{}]{OnSnapshot: func([]bus.Event[struct{}], uint64) {}, OnUpdate: func(bus.Event[struct{}]) {}}, logger)
		w.OnDrop = func(key string, _ error) { onDrop(key) }
		return w.Run(ctx)
	}
}

// repairWait coalesces the repairs of a burst of forged writes.
const repairWait = 50 * time.Millisecond

// Guard writes again, while this replica leads, every key of the apps and
// instances buckets whose last value the scheduler did not seal: a
// forgery, a copied delete or a replayed older value that readers dropped
// but that a reader starting now would find as the key's value. Each key
// is put again from Postgres, or deleted when Postgres no longer has it,
// within repairWait, instead of at the next resync.
func (p *Publisher) Guard(ctx context.Context, leader func() (store.Lease, bool), watch Watch) error {
	var mu sync.Mutex
	pending := map[[2]string]bool{}
	wake := make(chan struct{}, 1)
	mark := func(bucket string) func(string) {
		return func(key string) {
			mu.Lock()
			pending[[2]string{bucket, key}] = true
			mu.Unlock()
			select {
			case wake <- struct{}{}:
			default:
			}
		}
	}
	var wg sync.WaitGroup
	for _, b := range []string{p.names.AppsBucket(), p.names.InstancesBucket()} {
		wg.Go(func() {
			if err := watch(ctx, b, mark(b)); err != nil && ctx.Err() == nil {
				p.logger.Warn("guard watch ended", zap.String("bucket", b), zap.Error(err))
			}
		})
	}
	defer wg.Wait()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-wake:
		}
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(repairWait):
		}
		mu.Lock()
		keys := pending
		pending = map[[2]string]bool{}
		mu.Unlock()
		l, ok := leader()
		if !ok {
			continue
		}
		for k := range keys {
			if err := p.repair(ctx, l, k[0], k[1]); err != nil && ctx.Err() == nil {
				p.logger.Warn("could not repair a forged key; the next resync will", zap.String("bucket", k[0]), zap.String("key", k[1]), zap.Error(err))
				continue
			}
			p.logger.Warn("repaired a key whose last value the scheduler had not sealed", zap.String("bucket", k[0]), zap.String("key", k[1]))
		}
	}
}

// repair writes one key of the apps or instances bucket from Postgres. It
// reads and puts under the lock the other writers of that bucket take, so
// it never puts an older view after a newer one.
func (p *Publisher) repair(ctx context.Context, l store.Lease, bucket, key string) error {
	if bucket == p.names.AppsBucket() {
		p.appMu.Lock()
		defer p.appMu.Unlock()
		kv, err := p.bucket(ctx, bucket)
		if err != nil {
			return err
		}
		a, err := p.store.Get(ctx, key)
		if errors.Is(err, store.ErrNotFound) {
			delete(p.sentApps, key)
			return kv.Delete(ctx, key)
		}
		if err != nil {
			return err
		}
		return p.putApp(ctx, kv, a, l.Term)
	}
	p.mu.Lock() // as Instance, Unpublish and the full republish
	defer p.mu.Unlock()
	kv, err := p.bucket(ctx, p.names.InstancesBucket())
	if err != nil {
		return err
	}
	app, id, err := msg.ParseInstanceKey(key)
	if err != nil {
		return p.unpublishKey(ctx, kv, key)
	}
	records, err := p.store.Instances(ctx, app)
	if err != nil {
		return fmt.Errorf("instances of %s: %w", app, err)
	}
	for _, r := range records {
		if r.ID == id && routable(r) {
			if f, ok := p.failed[key]; ok {
				r = f
			}
			_, err := p.putInstance(ctx, kv, r, l.Term, time.Now())
			return err
		}
	}
	p.logger.Debug("forged instance key not in Postgres, deleting", zap.String(logging.KeyApp, app), zap.String(logging.KeyInstance, id))
	return p.unpublishKey(ctx, kv, key)
}

// unpublishKey deletes an instances key that no record owns (under mu).
func (p *Publisher) unpublishKey(ctx context.Context, kv *bus.KV, key string) error {
	delete(p.sent, key)
	return kv.Delete(ctx, key)
}
