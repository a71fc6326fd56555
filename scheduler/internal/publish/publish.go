// Package publish is the leader's one writer to NATS: the apps bucket (the
// routing and health view lbagent and healthd read), the instances bucket
// (where every instance runs and in which state), and the events subjects.
// It puts everything when leadership is gained, after every NATS reconnect
// and every resync, deleting the keys of apps and instances that no longer
// exist, so a NATS that comes back empty is whole again within one
// reconnect; it puts or deletes one app or instance when it changes; and it
// stamps every value with the leader's term so readers drop a deposed
// leader's writes. Events are recorded in Postgres in the leader's fenced
// transaction and published only once it commits.
package publish

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"hash/fnv"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"

	"github.com/berthhq/berth/common/bus"
	"github.com/berthhq/berth/common/logging"
	"github.com/berthhq/berth/common/msg"
	"github.com/berthhq/berth/common/spec"
	"github.com/berthhq/berth/scheduler/internal/store"
)

// Store is what the publisher reads, and the fenced transaction it records
// events in. Safe for concurrent use.
type Store interface {
	Get(ctx context.Context, name string) (store.App, error)
	List(ctx context.Context) ([]store.App, error)
	// Claimants returns the app name and every other app that claims one
	// of hosts (spec.HostKey).
	Claimants(ctx context.Context, name string, hosts []string) ([]store.App, error)
	Instances(ctx context.Context, app string) ([]store.Instance, error)
	UpdatedBy(ctx context.Context, name string) (string, error)
	LeaderTx(ctx context.Context, l store.Lease, fn func(ctx context.Context, tx *store.Tx) error) error
}

var _ Store = (*store.Store)(nil)

// Bus is the NATS connection the publisher writes through. Safe for
// concurrent use.
type Bus interface {
	KV(ctx context.Context, bucket string) (*bus.KV, error)
	EnsureBuckets(ctx context.Context, buckets []bus.BucketConfig) error
	Publish(ctx context.Context, subject string, data []byte) error
	Reconnected() (<-chan struct{}, func())
}

var _ Bus = (*bus.Conn)(nil)

// View turns a stored app into its v1 message.
func View(a store.App, term uint64) *msg.App {
	s := *a.Spec
	s.Default()
	routing, _ := servableRouting(s.Routing)
	return &msg.App{Name: a.Name, Generation: a.Generation, Term: term, Port: s.Port, Health: redactHealth(s.Health),
		LB: s.LB, Routing: routing, Drain: s.Stop.Drain, UpdatedAt: a.UpdatedAt.UTC(), CreatedAt: a.CreatedAt.UTC(), HostClaims: utc(a.HostClaims)}
}

// utc returns claims in UTC, nil for none.
func utc(claims map[string]time.Time) map[string]time.Time {
	if len(claims) == 0 {
		return nil
	}
	out := make(map[string]time.Time, len(claims))
	for h, t := range claims {
		out[h] = t.UTC()
	}
	return out
}

// redactHealth returns a copy of h for every reader of berth_apps: the
// literal value of a secret header (Authorization, Cookie, …), and a
// literal body (refused at apply since; one stored before is not
// published), become spec.RedactedValue; "$env:" references, resolved by
// healthd, are kept.
func redactHealth(h *spec.Health) *spec.Health {
	if h == nil {
		return nil
	}
	_, bodyRef := spec.EnvRef(h.Body)
	literalBody := h.Body != "" && !bodyRef
	if len(h.Headers) == 0 && !literalBody {
		return h
	}
	c := *h
	if literalBody {
		c.Body = spec.RedactedValue
	}
	if len(h.Headers) > 0 {
		c.Headers = make(map[string]string, len(h.Headers))
		for k, v := range h.Headers {
			if _, ref := spec.EnvRef(v); !ref && spec.SecretHeader(k) {
				v = spec.RedactedValue
			}
			c.Headers[k] = v
		}
	}
	return &c
}

// InstanceView turns a stored instance into its v1 message.
func InstanceView(r store.Instance, term uint64, now time.Time) *msg.Instance {
	return &msg.Instance{App: r.App, ID: r.ID, Generation: max(r.Generation, 1), Term: term, Address: r.Address, State: r.State, Weight: 1,
		ContainerID: r.ContainerID, StartedAt: r.StartedAt, UpdatedAt: now.UTC()}
}

// Publisher writes to the apps and instances buckets and the events
// subjects. Safe for concurrent use.
type Publisher struct {
	store  Store
	conn   Bus
	names  msg.Names
	logger *zap.Logger

	// mu orders instance writes: a full republish (list from Postgres, put,
	// sweep) never interleaves with one instance's put or delete, so a
	// record deleted from Postgres and then unpublished cannot be put back
	// by a republish that listed it just before.
	mu sync.Mutex
	// sent is what the last put of each instance key carried and the
	// revision it got (drains wait for it: Revision).
	sent map[string]sent
	// failed holds instances whose container Docker reported dead before
	// the controller has replaced them: a republish keeps them failed
	// rather than put back the running state Postgres still records.
	failed map[string]store.Instance
	// appMu orders the writes of one app's record: One, the guard's repair
	// and the passes each read Postgres and put under it, so none puts back
	// an older view after another's newer one. sentApps (under it) is what
	// the last put of each app carried.
	appMu    sync.Mutex
	sentApps map[string]sent
	// passes counts All and Resync, for the spread re-seal.
	passes atomic.Uint64
	// instancesFailed says a put or delete of one instance failed: Loop
	// runs a Resync after its backoff, which writes what the bucket lacks.
	instancesFailed chan struct{}
}

// New returns a publisher.
func New(st Store, conn Bus, names msg.Names, logger *zap.Logger) *Publisher {
	return &Publisher{store: st, conn: conn, names: names, logger: logger.Named("publish"),
		sent: map[string]sent{}, sentApps: map[string]sent{}, failed: map[string]store.Instance{}, instancesFailed: make(chan struct{}, 1)}
}

// instanceFailed tells Loop that an instance's record was not written.
func (p *Publisher) instanceFailed() {
	select {
	case p.instancesFailed <- struct{}{}:
	default: // a retry is already due
	}
}

// bucket opens a contract bucket, creating the contract's buckets when it
// is missing (a NATS that came back empty).
func (p *Publisher) bucket(ctx context.Context, name string) (*bus.KV, error) {
	return bus.OwnedKV(ctx, p.conn, p.names, bus.RoleScheduler, name)
}

// All puts every app and every instance, and deletes the keys of apps and
// instances that no longer exist. It runs on gaining leadership and after
// a NATS reconnect, when the bucket may have lost anything.
func (p *Publisher) All(ctx context.Context, term uint64) error {
	return p.pass(ctx, term, true)
}

// Resync is the periodic pass. Like All it deletes the keys of apps and
// instances that no longer exist, but it puts only the keys whose value
// changed since this publisher last put it, that the bucket no longer
// holds as it was put (deleted, purged, or last written by anyone else:
// the listing that finds the stray keys gives each key's revision), and
// those whose turn it is: each key is put again at least every
// resealEvery resyncs, at a pass of its own (a hash of the key), so that
// load is spread.
//
// Readers take a stored value however long ago it was sealed (a copy is
// told by when the server stored it, not by its age: docs/nats.md, Sealed
// records), so putting every key every resync bought nothing but load:
// at 10,000 instances, 10,000 puts every 30 s and as many signature
// checks on every lbagent and healthd, ten times that at 100,000
// (BenchmarkResealPass in common/bus). The spread re-seal brings back,
// within resealEvery resyncs, a value that a reader refused wrongly (a
// clock out of bounds, a floor after a flood of junk keys).
func (p *Publisher) Resync(ctx context.Context, term uint64) error {
	return p.pass(ctx, term, false)
}

// resealEvery is how many resyncs may pass before a key is put again
// although unchanged.
const resealEvery = 10

func (p *Publisher) pass(ctx context.Context, term uint64, full bool) error {
	turn := p.passes.Add(1)
	apps, putApps, err := p.apps(ctx, term, full, turn)
	if err != nil {
		return err
	}
	n, putInstances, err := p.instances(ctx, term, full, turn)
	if err != nil {
		return err
	}
	if full {
		p.logger.Info("published every app and instance", zap.Int("apps", apps), zap.Int("instances", n), zap.Uint64(logging.KeyTerm, term))
	} else if ce := p.logger.Check(zap.DebugLevel, "resynced apps and instances"); ce != nil {
		ce.Write(zap.Int("apps", apps), zap.Int("instances", n), zap.Int("apps_put", putApps), zap.Int("instances_put", putInstances), zap.Uint64(logging.KeyTerm, term))
	}
	return nil
}

// sent is what the last put of a key carried, as a digest of its record
// (the put's own time aside), and the revision it got.
type sent struct {
	digest [16]byte
	rev    uint64
}

// digest is a 128-bit FNV hash of v's JSON, false when v does not encode
// (then it never equals another).
func digest(v any) ([16]byte, bool) {
	var d [16]byte
	b, err := json.Marshal(v)
	if err != nil {
		return d, false
	}
	h := fnv.New128a()
	_, _ = h.Write(b)
	h.Sum(d[:0])
	return d, true
}

// unchanged reports whether a record with digest d, ok is the one last put
// and the bucket still holds that put (stored is the key's listed
// revision).
func (s sent) unchanged(d [16]byte, ok bool, stored uint64) bool {
	return ok && s.digest == d && s.rev == stored
}

// instanceDigest is the digest of an instance record but for its
// UpdatedAt, which each put sets to its own time (and its type, which
// msg.Encode sets).
func instanceDigest(m *msg.Instance) ([16]byte, bool) {
	c := *m
	c.Header, c.UpdatedAt = msg.Header{}, time.Time{}
	return digest(&c)
}

// appDigest is the digest of an app record (its type aside, which
// msg.Encode sets).
func appDigest(m *msg.App) ([16]byte, bool) {
	c := *m
	c.Header = msg.Header{}
	return digest(&c)
}

// listing deletes the keys of kv not in live (and purges old delete
// markers) and returns the revision of each key that has a value.
func listing(ctx context.Context, kv *bus.KV, live map[string]bool) (map[string]uint64, error) {
	revs := map[string]uint64{}
	_, _, err := kv.Sweep(ctx, func(key string, rev uint64) bool {
		revs[key] = rev
		return live[key]
	}, bus.DeleteMarkerAge)
	return revs, err
}

func (p *Publisher) apps(ctx context.Context, term uint64, full bool, turn uint64) (n, put int, err error) {
	p.appMu.Lock()
	defer p.appMu.Unlock()
	kv, err := p.bucket(ctx, p.names.AppsBucket())
	if err != nil {
		return 0, 0, fmt.Errorf("publish apps: %w", err)
	}
	apps, err := p.store.List(ctx)
	if err != nil {
		return 0, 0, fmt.Errorf("publish apps: %w", err)
	}
	live := map[string]bool{}
	for _, a := range apps {
		live[a.Name] = true
	}
	stored, err := listing(ctx, kv, live)
	if err != nil {
		return 0, 0, fmt.Errorf("publish apps: %w", err)
	}
	for name := range p.sentApps {
		if !live[name] {
			delete(p.sentApps, name)
		}
	}
	for _, a := range apps {
		// The digest only skips a put: a full pass puts every key, and
		// putApp digests what it put (at 10,000 apps the digests were
		// 40 % of a full pass's CPU).
		if !full && !bus.ResealDue(a.Name, turn, resealEvery) {
			if d, ok := appDigest(View(a, term)); p.sentApps[a.Name].unchanged(d, ok, stored[a.Name]) {
				continue
			}
		}
		var invalid spec.Errors
		if err := p.putApp(ctx, kv, a, term); errors.As(err, &invalid) {
			// A record the grammar refuses today (a spec stored before it
			// tightened) must not hold back every app after it.
			p.logger.Warn("app not published: its stored spec is refused today; apply it again", zap.String(logging.KeyApp, a.Name), zap.Error(err))
			continue
		} else if err != nil {
			return 0, 0, err
		}
		put++
	}
	return len(apps), put, nil
}

func (p *Publisher) instances(ctx context.Context, term uint64, full bool, turn uint64) (n, put int, err error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	kv, err := p.bucket(ctx, p.names.InstancesBucket())
	if err != nil {
		return 0, 0, fmt.Errorf("publish instances: %w", err)
	}
	records, err := p.store.Instances(ctx, "")
	if err != nil {
		return 0, 0, fmt.Errorf("publish instances: %w", err)
	}
	live := map[string]bool{}
	for _, r := range records {
		live[msg.InstanceKey(r.App, r.ID)] = true
	}
	stored, err := listing(ctx, kv, live)
	if err != nil {
		return 0, 0, fmt.Errorf("publish instances: %w", err)
	}
	for key := range p.failed {
		if !live[key] {
			delete(p.failed, key)
		}
	}
	for key := range p.sent {
		if !live[key] {
			delete(p.sent, key)
		}
	}
	now := time.Now()
	for _, r := range records {
		key := msg.InstanceKey(r.App, r.ID)
		if !routable(r) {
			continue
		}
		if f, ok := p.failed[key]; ok {
			r = f
		}
		view := InstanceView(r, term, now)
		if !full && !bus.ResealDue(key, turn, resealEvery) {
			if d, ok := instanceDigest(view); p.sent[key].unchanged(d, ok, stored[key]) {
				continue
			}
		}
		b, err := msg.Encode(view)
		if err != nil {
			// One record the contract refuses must not keep every other
			// instance out of a NATS that came back empty.
			p.logger.Warn("instance not publishable, skipped", zap.String(logging.KeyApp, r.App), zap.String(logging.KeyInstance, r.ID), zap.Error(err))
			continue
		}
		if err := p.putKey(ctx, kv, key, view, b); err != nil {
			return 0, 0, fmt.Errorf("publish instances: %w", err)
		}
		put++
	}
	return len(records), put, nil
}

// routable reports whether an instance's record belongs in the instances
// bucket: not while it is created or started, when it has no address yet,
// nor once it is failed (an instance lost with its host, kept in Postgres
// only to be counted while it may still run).
func routable(r store.Instance) bool {
	return r.State != msg.StateCreating && r.State != msg.StateStarting && r.State != msg.StatePending && r.State != msg.StateFailed
}

// Put writes an instance record and events in the leader's fenced
// transaction, then puts the record into the instances bucket (once it
// has an address) and publishes the events.
func (p *Publisher) Put(ctx context.Context, l store.Lease, r store.Instance, events ...store.Event) error {
	if err := p.Tx(ctx, l, func(ctx context.Context, tx *store.Tx) error {
		if err := tx.PutInstance(ctx, r); err != nil {
			return err
		}
		return addEvents(ctx, tx, events)
	}); err != nil {
		return err
	}
	if !routable(r) {
		return nil
	}
	_, err := p.Instance(ctx, l, r)
	return err
}

// Delete deletes an instance record with events in the leader's fenced
// transaction, then deletes it from the instances bucket and publishes the
// events.
func (p *Publisher) Delete(ctx context.Context, l store.Lease, r store.Instance, events ...store.Event) error {
	if err := p.Tx(ctx, l, func(ctx context.Context, tx *store.Tx) error {
		if err := tx.DeleteInstance(ctx, r.ID); err != nil {
			return err
		}
		return addEvents(ctx, tx, events)
	}); err != nil {
		return err
	}
	return p.Unpublish(ctx, r.App, r.ID)
}

// BeginRelease records a release running, with events, in the leader's
// fenced transaction (store.ErrReleaseExists for a generation that has
// one), then publishes the events.
func (p *Publisher) BeginRelease(ctx context.Context, l store.Lease, r store.Release, events ...store.Event) error {
	return p.Tx(ctx, l, func(ctx context.Context, tx *store.Tx) error {
		if err := tx.BeginRelease(ctx, r); err != nil {
			return err
		}
		return addEvents(ctx, tx, events)
	})
}

// WatchRelease records a running release's container and the leader's
// term that waits on it; false for a release that is not running.
func (p *Publisher) WatchRelease(ctx context.Context, l store.Lease, app string, generation int64, container string) (bool, error) {
	var ok bool
	err := p.Tx(ctx, l, func(ctx context.Context, tx *store.Tx) error {
		var err error
		ok, err = tx.WatchRelease(ctx, app, generation, container)
		return err
	})
	return ok, err
}

// EndRelease records how a running release ended, with events, once:
// false, and no event, for a release that is not running.
func (p *Publisher) EndRelease(ctx context.Context, l store.Lease, r store.Release, events ...store.Event) (bool, error) {
	var ended bool
	err := p.Tx(ctx, l, func(ctx context.Context, tx *store.Tx) error {
		var err error
		if ended, err = tx.EndRelease(ctx, r); err != nil || !ended {
			return err
		}
		return addEvents(ctx, tx, events)
	})
	return ended, err
}

// SetHealth records the health the leader last saw for each instance.
func (p *Publisher) SetHealth(ctx context.Context, l store.Lease, health map[string]string) error {
	return p.Tx(ctx, l, func(ctx context.Context, tx *store.Tx) error { return tx.SetHealth(ctx, health) })
}

// Fail puts an instance into the instances bucket as failed at once (its
// container died), without waiting for the controller to replace it, and
// keeps it failed across republishes until it is deleted.
func (p *Publisher) Fail(ctx context.Context, l store.Lease, r store.Instance) error {
	r.State = msg.StateFailed
	_, err := p.Instance(ctx, l, r)
	return err
}

func addEvents(ctx context.Context, tx *store.Tx, events []store.Event) error {
	for _, e := range events {
		if _, err := tx.AddEvent(ctx, e); err != nil {
			return err
		}
	}
	return nil
}

// Instance puts one instance record and returns the write's revision.
func (p *Publisher) Instance(ctx context.Context, l store.Lease, r store.Instance) (uint64, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if r.State == msg.StateFailed {
		p.failed[msg.InstanceKey(r.App, r.ID)] = r
	}
	kv, err := p.bucket(ctx, p.names.InstancesBucket())
	var rev uint64
	if err == nil {
		rev, err = p.putInstance(ctx, kv, r, l.Term, time.Now())
	}
	if err != nil {
		p.instanceFailed()
		return 0, fmt.Errorf("publish instance %s/%s: %w", r.App, r.ID, err)
	}
	return rev, nil
}

func (p *Publisher) putInstance(ctx context.Context, kv *bus.KV, r store.Instance, term uint64, now time.Time) (uint64, error) {
	view := InstanceView(r, term, now)
	b, err := msg.Encode(view)
	if err != nil {
		return 0, err
	}
	key := msg.InstanceKey(r.App, r.ID)
	if err := p.putKey(ctx, kv, key, view, b); err != nil {
		return 0, err
	}
	return p.sent[key].rev, nil
}

// putKey puts an instance, encoded as b, and notes what it carried and
// its revision (under mu).
func (p *Publisher) putKey(ctx context.Context, kv *bus.KV, key string, view *msg.Instance, b []byte) error {
	rev, err := kv.Put(ctx, key, b)
	if err != nil {
		delete(p.sent, key) // the bucket may hold it or not: put it next time
		return err
	}
	d, _ := instanceDigest(view) // it encoded: b
	p.sent[key] = sent{digest: d, rev: rev}
	return nil
}

// Revision returns the revision of the last put of an instance's record by
// this publisher, 0 when it has none: an agent that applied it no longer
// routes by an older state of the instance.
func (p *Publisher) Revision(app, id string) uint64 {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.sent[msg.InstanceKey(app, id)].rev
}

// Unpublish deletes an instance's record. Delete it from Postgres first,
// so that a concurrent republish does not put it back.
func (p *Publisher) Unpublish(ctx context.Context, app, id string) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	key := msg.InstanceKey(app, id)
	delete(p.failed, key)
	delete(p.sent, key)
	kv, err := p.bucket(ctx, p.names.InstancesBucket())
	if err == nil {
		err = kv.Delete(ctx, key)
	}
	if err != nil {
		p.instanceFailed()
		return fmt.Errorf("unpublish instance %s/%s: %w", app, id, err)
	}
	return nil
}

// One puts the app name, or deletes its key when it no longer exists, and
// records and publishes the lifecycle event (app_updated, app_deleted)
// under the leader's lease.
func (p *Publisher) One(ctx context.Context, name string, l store.Lease) error {
	p.appMu.Lock()
	defer p.appMu.Unlock()
	kv, err := p.bucket(ctx, p.names.AppsBucket())
	if err != nil {
		return fmt.Errorf("publish %s: %w", name, err)
	}
	a, err := p.store.Get(ctx, name)
	if errors.Is(err, store.ErrNotFound) {
		// Several change notifications can arrive after one delete (a
		// rollback just before it, say): the event is for the first.
		if _, err := kv.Get(ctx, name); errors.Is(err, bus.ErrKeyNotFound) {
			return nil
		}
		delete(p.sentApps, name)
		if err := kv.Delete(ctx, name); err != nil {
			return fmt.Errorf("publish %s: %w", name, err)
		}
		return p.Event(ctx, l, store.Event{App: name, Kind: msg.EventAppDeleted, Message: "app " + name + " deleted; its instances are stopped", Actor: p.deletedBy(ctx, name)})
	}
	if err != nil {
		return fmt.Errorf("publish %s: %w", name, err)
	}
	if err := p.putApp(ctx, kv, a, l.Term); err != nil {
		return err
	}
	events := []store.Event{updated(a)}
	if claimants, err := p.store.Claimants(ctx, name, a.Spec.Routing.HostKeys()); err == nil {
		events = append(events, RouteConflicts(name, claimants)...)
	}
	// The change's actor (its token, or the autoscaler) made these happen.
	for i := range events {
		events[i].Actor = cmp.Or(a.UpdatedBy, store.ActorScheduler)
	}
	return p.Event(ctx, l, events...)
}

// updated is the app_updated event of an app's generation: its image, what
// that is pinned to, and the pin before when it changed (a redeploy, or a
// tag pushed again and applied).
func updated(a store.App) store.Event {
	d := map[string]string{"generation": fmt.Sprint(a.Generation), "image": a.Spec.Image}
	text := fmt.Sprintf("app %s is at generation %d (image %s)", a.Name, a.Generation, a.Spec.Image)
	if a.ImageRef != "" {
		d["image_ref"] = a.ImageRef
		text = fmt.Sprintf("app %s is at generation %d (image %s pinned to %s)", a.Name, a.Generation, a.Spec.Image, a.ImageRef)
	}
	if a.PreviousImageRef != "" && a.PreviousImageRef != a.ImageRef {
		d["previous_image_ref"] = a.PreviousImageRef
		text += "; image was " + a.PreviousImageRef
	}
	return store.Event{App: a.Name, Kind: msg.EventAppUpdated, Message: text, Details: d}
}

// deletedBy returns who deleted an app, the scheduler when that cannot be read.
func (p *Publisher) deletedBy(ctx context.Context, name string) string {
	actor, err := p.store.UpdatedBy(ctx, name)
	if err != nil {
		p.logger.Warn("could not read who deleted an app: its app_deleted event names the scheduler", zap.String(logging.KeyApp, name), zap.Error(err))
	}
	return cmp.Or(actor, store.ActorScheduler)
}

// RouteConflicts returns the route_conflict events that a change of app
// name brings, by the route table (spec.Claims) of apps, which must hold
// name and every app that claims one of its hosts (others change nothing:
// the table decides each host by its claimants alone): one for name when
// it does not get a claim, and one for every other app that does not get
// one that name holds (name's owner took its share away, or now routes a
// path the other's rule would shadow). Each names the first conflict,
// counts the others, and says what lbagent does: the app gets nothing of
// it.
func RouteConflicts(name string, apps []store.App) []store.Event {
	claimants := make([]spec.Claimant, 0, len(apps))
	for _, a := range apps {
		if a.Spec != nil {
			claimants = append(claimants, a.Claimant())
		}
	}
	table := spec.Claims(claimants)
	var out []store.Event
	for _, app := range table.Conflicted() {
		cs := table.Conflicts(app)
		if app != name {
			cs = slices.DeleteFunc(slices.Clone(cs), func(c spec.Conflict) bool { return c.Holder != name })
		}
		if len(cs) > 0 {
			out = append(out, conflictEvent(app, cs))
		}
	}
	return out
}

// conflictEvent is the route_conflict event of app's conflicts cs.
func conflictEvent(app string, cs []spec.Conflict) store.Event {
	c := cs[0]
	text := c.Error() + ": app " + app + " gets no route there"
	if len(cs) > 1 {
		text += fmt.Sprintf(" (and %d more conflicts)", len(cs)-1)
	}
	host := c.Host
	if host == "" {
		host = "(default server)"
	}
	d := map[string]string{"app": c.Holder, "host": host, "reason": c.Reason, "field": c.Field, "conflicts": fmt.Sprint(len(cs))}
	if c.Location != nil {
		d["path"], d["match"] = c.Location.Path, c.Location.Match
	}
	return store.Event{App: app, Kind: msg.EventRouteConflict, Message: text, Details: d}
}

// Event records events under the lease (fenced) and then publishes them.
func (p *Publisher) Event(ctx context.Context, l store.Lease, events ...store.Event) error {
	return p.Tx(ctx, l, func(ctx context.Context, tx *store.Tx) error { return addEvents(ctx, tx, events) })
}

// Tx runs fn in the leader's fenced transaction and, once it has
// committed, publishes every event fn recorded with tx.AddEvent. Nothing
// is published when fn fails or the lease is lost: the event did not
// happen. A failed publish is logged, not returned: the event is recorded
// and readers catch up from the API.
func (p *Publisher) Tx(ctx context.Context, l store.Lease, fn func(ctx context.Context, tx *store.Tx) error) error {
	var added []store.Event
	if err := p.store.LeaderTx(ctx, l, func(ctx context.Context, tx *store.Tx) error {
		if err := fn(ctx, tx); err != nil {
			return err
		}
		added = tx.Added()
		return nil
	}); err != nil {
		return err
	}
	for _, e := range added {
		p.publishEvent(ctx, e)
	}
	return nil
}

func (p *Publisher) publishEvent(ctx context.Context, e store.Event) {
	b, err := msg.Encode(&msg.Event{ID: fmt.Sprint(e.ID), App: e.App, Instance: e.Instance, Kind: e.Kind, Message: msg.Truncate(e.Message, msg.MaxTextLen),
		Details: e.Details, Actor: e.Actor, Term: e.Term, At: e.At})
	if err == nil {
		err = p.conn.Publish(ctx, p.names.EventsSubject(e.App, e.Kind), b)
	}
	if err != nil {
		p.logger.Warn("publish event", zap.String(logging.KeyApp, e.App), zap.String("kind", string(e.Kind)), zap.Error(err))
	}
	p.logger.Info("event", zap.String(logging.KeyApp, e.App), zap.String(logging.KeyInstance, e.Instance), zap.String("kind", string(e.Kind)))
}

// putApp puts an app's record and notes what it carried (under appMu).
func (p *Publisher) putApp(ctx context.Context, kv *bus.KV, a store.App, term uint64) error {
	if _, dropped := servableRouting(a.Spec.Routing); len(dropped) > 0 {
		p.logger.Warn("rules not published: nginx could stall on their regexes; apply the spec again with them rewritten",
			zap.String(logging.KeyApp, a.Name), zap.Strings("rules", dropped))
	}
	view := View(a, term)
	b, err := msg.Encode(view)
	if err != nil {
		return fmt.Errorf("publish %s: %w", a.Name, err)
	}
	rev, err := kv.Put(ctx, a.Name, b)
	if err != nil {
		delete(p.sentApps, a.Name)
		return fmt.Errorf("publish %s: %w", a.Name, err)
	}
	d, _ := appDigest(view) // it encoded: b
	p.sentApps[a.Name] = sent{digest: d, rev: rev}
	return nil
}

// Loop publishes while this replica leads, a leader-only service (run it
// in a leader.Group; every publish still checks leader): everything at
// once, then after every NATS reconnect, on each receive from refresh (a
// Postgres reconnect, whose notifications may be lost) and every resync;
// one app on each change name received on changes (those waiting when it
// starts are in the first pass). What fails is done again after a
// backoff (retryFirst, doubling up to resync), not only at the next
// change or resync: a NATS cluster refuses a bucket's writes for the
// seconds its stream takes to elect a leader, while the connection stays.
// That includes the controller's writes of one instance (Put, Fail,
// Delete): the controller has nothing left to do for an instance that
// runs, so after one fails Loop runs a Resync, which writes the records
// the bucket lacks.
func (p *Publisher) Loop(ctx context.Context, leader func() (store.Lease, bool), refresh <-chan struct{}, changes <-chan string, resync time.Duration) error {
	reconnected, stop := p.conn.Reconnected()
	defer stop()
	tick := time.NewTicker(resync)
	defer tick.Stop()
	var r retries
	all := func() {
		if l, ok := leader(); ok {
			err := p.All(ctx, l.Term)
			r.all = err != nil
			if err == nil {
				r.apps, r.resync = nil, false // every app and instance was put
			}
			if err != nil && ctx.Err() == nil {
				p.logger.Warn("publish failed, retrying", zap.Error(err), zap.Duration("in", r.wait(resync)))
			}
		}
	}
	one := func(name string) {
		if l, ok := leader(); ok {
			err := p.One(ctx, name, l)
			r.app(name, err != nil)
			if err != nil && ctx.Err() == nil {
				p.logger.Warn("publish failed, retrying", zap.String(logging.KeyApp, name), zap.Error(err), zap.Duration("in", r.wait(resync)))
			}
		}
	}
	resyncNow := func() {
		if l, ok := leader(); ok {
			err := p.Resync(ctx, l.Term)
			r.resync = err != nil
			if err != nil && ctx.Err() == nil {
				p.logger.Warn("resync failed, retrying", zap.Error(err), zap.Duration("in", r.wait(resync)))
			}
		}
	}
	drain(changes)
	drain(refresh)
	all()
	if r.pending() {
		r.due = time.After(r.wait(resync))
	}
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-refresh:
			all()
		case <-reconnected:
			all()
		case <-tick.C:
			resyncNow()
		case name := <-changes:
			one(name)
		case <-p.instancesFailed:
			r.resync = true
		case <-r.due:
			r.due = nil
			if r.all {
				all() // every app and instance too
			} else {
				if r.resync {
					resyncNow()
				}
				for _, name := range r.names() {
					one(name)
				}
			}
			if r.pending() {
				r.backoff = min(2*r.wait(resync), resync)
			} else {
				r.backoff = 0
			}
		}
		if r.pending() && r.due == nil {
			r.due = time.After(r.wait(resync))
		}
	}
}

// drain empties c: what was asked while following is in the first pass
// of everything.
func drain[T any](c <-chan T) {
	for {
		select {
		case <-c:
		default:
			return
		}
	}
}

// retryFirst is the first wait before publishing again what failed.
const retryFirst = 250 * time.Millisecond

// retries is what Loop has to publish again, and when (Loop's goroutine).
type retries struct {
	all     bool            // All failed
	resync  bool            // an instance's write, or a Resync, failed
	apps    map[string]bool // One failed for these
	backoff time.Duration   // the wait before the next retry; 0 for retryFirst
	due     <-chan time.Time
}

func (r *retries) app(name string, failed bool) {
	if !failed {
		delete(r.apps, name)
		return
	}
	if r.apps == nil {
		r.apps = map[string]bool{}
	}
	r.apps[name] = true
}

func (r *retries) pending() bool { return r.all || r.resync || len(r.apps) > 0 }

func (r *retries) wait(limit time.Duration) time.Duration {
	if r.backoff == 0 {
		return min(retryFirst, limit)
	}
	return r.backoff
}

// names returns the apps to publish again, and forgets them: a failure
// adds its app back.
func (r *retries) names() []string {
	out := make([]string, 0, len(r.apps))
	for name := range r.apps {
		out = append(out, name)
	}
	slices.Sort(out)
	r.apps = nil
	return out
}
