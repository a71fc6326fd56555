// Package publish puts the leader's view of every app into the apps
// bucket: the routing and health view lbagent and healthd read. It puts
// everything when leadership is gained and after a NATS reconnect, puts or
// deletes one app when it changes, and stamps every value with the
// leader's term so readers drop a deposed leader's writes.
package publish

import (
	"context"
	"errors"
	"fmt"
	"time"

	"go.uber.org/zap"

	"github.com/berthhq/berth/common/bus"
	"github.com/berthhq/berth/common/logging"
	"github.com/berthhq/berth/common/msg"
	"github.com/berthhq/berth/scheduler/internal/store"
)

// Apps is what the publisher reads and writes. Safe for concurrent use.
type Apps interface {
	Get(ctx context.Context, name string) (store.App, error)
	List(ctx context.Context) ([]store.App, error)
	LeaderTx(ctx context.Context, l store.Lease, fn func(ctx context.Context, tx *store.Tx) error) error
}

var _ Apps = (*store.Store)(nil)

// View turns a stored app into its v1 message.
func View(a store.App, term uint64) *msg.App {
	s := *a.Spec
	s.Default()
	return &msg.App{Name: a.Name, Generation: a.Generation, Term: term, Port: s.Port, Health: s.Health,
		LB: s.LB, Routing: s.Routing, Drain: s.Stop.Drain, UpdatedAt: a.UpdatedAt.UTC()}
}

// Publisher writes app views to the apps bucket.
type Publisher struct {
	apps   Apps
	conn   *bus.Conn
	names  msg.Names
	logger *zap.Logger
}

// New returns a publisher.
func New(apps Apps, conn *bus.Conn, names msg.Names, logger *zap.Logger) *Publisher {
	return &Publisher{apps: apps, conn: conn, names: names, logger: logger.Named("publish")}
}

func (p *Publisher) kv(ctx context.Context) (*bus.KV, error) {
	kv, err := p.conn.KV(ctx, p.names.AppsBucket())
	if errors.Is(err, bus.ErrBucketNotFound) {
		if err := p.conn.EnsureBuckets(ctx, bus.ContractBuckets(p.names)); err != nil {
			return nil, err
		}
		return p.conn.KV(ctx, p.names.AppsBucket())
	}
	return kv, err
}

// All puts every app and deletes keys of apps that no longer exist.
func (p *Publisher) All(ctx context.Context, term uint64) error {
	kv, err := p.kv(ctx)
	if err != nil {
		return fmt.Errorf("publish apps: %w", err)
	}
	apps, err := p.apps.List(ctx)
	if err != nil {
		return fmt.Errorf("publish apps: %w", err)
	}
	live := map[string]bool{}
	for _, a := range apps {
		live[a.Name] = true
		if err := p.put(ctx, kv, a, term); err != nil {
			return err
		}
	}
	keys, err := kv.Keys(ctx)
	if err != nil {
		return fmt.Errorf("publish apps: %w", err)
	}
	for _, k := range keys {
		if !live[k] {
			if err := kv.Delete(ctx, k); err != nil {
				return fmt.Errorf("publish apps: %w", err)
			}
		}
	}
	p.logger.Info("published every app", zap.Int("apps", len(apps)), zap.Uint64(logging.KeyTerm, term))
	return nil
}

// One puts the app name, or deletes its key when it no longer exists, and
// records and publishes the lifecycle event (app_updated, app_deleted)
// under the leader's lease.
func (p *Publisher) One(ctx context.Context, name string, l store.Lease) error {
	kv, err := p.kv(ctx)
	if err != nil {
		return fmt.Errorf("publish %s: %w", name, err)
	}
	a, err := p.apps.Get(ctx, name)
	if errors.Is(err, store.ErrNotFound) {
		// Several change notifications can arrive after one delete (a
		// rollback just before it, say): the event is for the first.
		if _, err := kv.Get(ctx, name); errors.Is(err, bus.ErrKeyNotFound) {
			return nil
		}
		if err := kv.Delete(ctx, name); err != nil {
			return fmt.Errorf("publish %s: %w", name, err)
		}
		return p.event(ctx, l, store.Event{App: name, Kind: "app_deleted", Message: "app " + name + " deleted; its instances are stopped"})
	}
	if err != nil {
		return fmt.Errorf("publish %s: %w", name, err)
	}
	if err := p.put(ctx, kv, a, l.Term); err != nil {
		return err
	}
	return p.event(ctx, l, store.Event{App: name, Kind: "app_updated",
		Message: fmt.Sprintf("app %s is at generation %d (image %s)", name, a.Generation, a.Spec.Image),
		Details: map[string]string{"generation": fmt.Sprint(a.Generation), "image": a.Spec.Image}})
}

// event records e under the lease (fenced) and publishes it on the events subject.
func (p *Publisher) event(ctx context.Context, l store.Lease, e store.Event) error {
	var id int64
	if err := p.apps.LeaderTx(ctx, l, func(ctx context.Context, tx *store.Tx) error {
		var err error
		id, err = tx.AddEvent(ctx, e)
		return err
	}); err != nil {
		return fmt.Errorf("event %s/%s: %w", e.App, e.Kind, err)
	}
	b, err := msg.Encode(&msg.Event{ID: fmt.Sprint(id), App: e.App, Instance: e.Instance, Kind: e.Kind, Message: e.Message,
		Details: e.Details, Term: l.Term, At: time.Now().UTC()})
	if err == nil {
		err = p.conn.Publish(ctx, p.names.EventsSubject(e.App, e.Kind), b)
	}
	if err != nil {
		return fmt.Errorf("event %s/%s: %w", e.App, e.Kind, err)
	}
	return nil
}

func (p *Publisher) put(ctx context.Context, kv *bus.KV, a store.App, term uint64) error {
	b, err := msg.Encode(View(a, term))
	if err != nil {
		return fmt.Errorf("publish %s: %w", a.Name, err)
	}
	if _, err := kv.Put(ctx, a.Name, b); err != nil {
		return fmt.Errorf("publish %s: %w", a.Name, err)
	}
	return nil
}

// Loop publishes while this replica leads: everything on gaining
// leadership and after every NATS reconnect, one app on each change name
// received on changes, and everything every resync as a guard.
func (p *Publisher) Loop(ctx context.Context, leader func() (store.Lease, bool), gained <-chan struct{}, changes <-chan string, resync time.Duration) error {
	reconnected, stop := p.conn.Reconnected()
	defer stop()
	tick := time.NewTicker(resync)
	defer tick.Stop()
	all := func() {
		if l, ok := leader(); ok {
			if err := p.All(ctx, l.Term); err != nil {
				p.logger.Warn("publish failed, retrying at the next change or resync", zap.Error(err))
			}
		}
	}
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-gained:
			all()
		case <-reconnected:
			all()
		case <-tick.C:
			all()
		case name := <-changes:
			if l, ok := leader(); ok {
				if err := p.One(ctx, name, l); err != nil {
					p.logger.Warn("publish failed", zap.String(logging.KeyApp, name), zap.Error(err))
				}
			}
		}
	}
}
