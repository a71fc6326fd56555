package state

import (
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/berthhq/berth/common/bus"
	"github.com/berthhq/berth/common/msg"
	"github.com/berthhq/berth/common/view"
)

// Store accumulates what the three watchers deliver, one view.Table per
// bucket, and builds snapshots from them. It is safe for concurrent use:
// each watcher calls its handler from its own goroutine.
//
// A snapshot is rebuilt only for the apps a change touched since the last
// one (an app record, or an instance or health key of the app), so an
// endpoint change at 1000 apps × 10 instances costs one app's work, not
// the whole state's. A bucket snapshot (a watcher's first load, a resync,
// a NATS reset) or a change of the set of apps rebuilds everything.
type Store struct {
	apps      *view.Table[*msg.App]
	instances *view.Table[*msg.Instance]
	health    *view.Table[*msg.Health]
	certs     *view.Table[*msg.Certificate]
	changed   chan struct{}

	// mu orders every table change with the dirty marks it leaves and
	// with Snapshot, so a snapshot never reflects a change (its revision
	// included) that it has not rebuilt.
	mu      sync.Mutex
	groups  map[string]map[string]struct{} // instance keys by app (key prefix)
	dirty   map[string]struct{}            // apps changed since the last Snapshot
	all     bool                           // everything changed
	builder builder

	takeovers atomic.Uint64
}

// Carry is how long a re-snapshot of the apps or instances bucket keeps
// the records it lacks by default (view.Table.Carry; lbagent uses its
// --empty-hold): after a NATS reset, lbagent may load a bucket while the
// scheduler's republish has put some apps back and not yet others, and an
// app must not lose its servers (answer 503) for a moment because of it. A
// record the scheduler really deleted while lbagent was away leaves once
// this has passed; one it deletes meanwhile leaves at once.
const Carry = 30 * time.Second

// NewStore returns an empty store whose re-snapshots carry records for
// Carry.
func NewStore() *Store { return NewStoreCarrying(Carry, nil) }

// NewStoreCarrying returns an empty store whose re-snapshots of the apps
// and instances buckets keep the records they lack for carry (0: none),
// by the clock now (nil: time.Now).
func NewStoreCarrying(carry time.Duration, now func() time.Time) *Store {
	s := &Store{changed: make(chan struct{}, 1), groups: map[string]map[string]struct{}{}, dirty: map[string]struct{}{}, all: true}
	s.apps = view.NewTable(view.AppTerm, nil)
	s.instances = view.NewTable(view.InstanceTerm, nil)
	if carry > 0 {
		s.apps.Carry(carry, now)
		s.instances.Carry(carry, now)
	}
	s.health = view.NewTable(view.NoTerm[*msg.Health], nil)
	s.certs = view.NewTable(func(c *msg.Certificate) uint64 { return c.Term }, nil)
	return s
}

// Changed receives a value after each change (coalesced: one pending at most).
func (s *Store) Changed() <-chan struct{} { return s.changed }

// Ready reports whether every bucket has delivered its first complete
// snapshot; until then nothing may be built (without the certificates, an
// app with tls.acme would lose HTTPS until they load).
func (s *Store) Ready() bool {
	return s.apps.Loaded() && s.instances.Loaded() && s.health.Loaded() && s.certs.Loaded()
}

// AppNames returns the names of the apps it holds, in no order.
func (s *Store) AppNames() []string {
	var names []string
	s.apps.Read(func(apps map[string]*msg.App, _ uint64) {
		names = make([]string, 0, len(apps))
		for name := range apps {
			names = append(names, name)
		}
	})
	return names
}

// Fenced counts writes dropped because they came from a lower leader term.
func (s *Store) Fenced() uint64 { return s.apps.Fenced() + s.instances.Fenced() }

// Snapshot builds the current snapshot; ok is false until the store is Ready.
func (s *Store) Snapshot() (snap Snapshot, ok bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.Ready() {
		return Snapshot{}, false
	}
	// Always in this order, so the nested locks cannot deadlock.
	s.apps.Read(func(apps map[string]*msg.App, _ uint64) {
		s.instances.Read(func(insts map[string]*msg.Instance, rev uint64) {
			s.health.Read(func(health map[string]*msg.Health, _ uint64) {
				s.certs.Read(func(certs map[string]*msg.Certificate, _ uint64) {
					v := View{Apps: apps, Instances: insts, Health: health, Certs: certs, Revision: rev}
					if s.all {
						snap = s.builder.full(v, s.groups)
					} else {
						snap = s.builder.partial(v, s.groups, s.dirty)
					}
				})
			})
		})
	})
	s.all = false
	clear(s.dirty)
	return snap, true
}

func (s *Store) notify() {
	select {
	case s.changed <- struct{}{}:
	default:
	}
}

// handler feeds table through the store: under mu, it applies the
// event, then marks the apps it touched (keyApp of the key) and, for the
// instances table, keeps the index of keys by app.
func handler[T any](s *Store, table *view.Table[T], keyApp func(string) string, indexed bool) bus.Handler[T] {
	inner := table.Handler()
	return bus.HandlerFuncs[T]{
		OnSnapshot: func(evs []bus.Event[T], rev uint64) {
			s.mu.Lock()
			inner.Snapshot(evs, rev)
			if indexed {
				reindexTable(s, table, keyApp)
			}
			s.all = true
			s.mu.Unlock()
			s.notify()
			if table.Carried() > 0 {
				dropCarried(s, table, keyApp, indexed)
			}
		},
		OnUpdate: func(e bus.Event[T]) {
			s.mu.Lock()
			inner.Update(e)
			app := keyApp(e.Key)
			if indexed {
				_, present := table.Get(e.Key)
				s.index(e.Key, app, present)
			}
			s.dirty[app] = struct{}{}
			s.mu.Unlock()
			s.notify()
		},
	}
}

// dropCarried drops table's carried records whose time has passed
// (rebuilding everything, and the index of an indexed table, when it
// drops any), and does so again when the next one's time passes.
func dropCarried[T any](s *Store, table *view.Table[T], keyApp func(string) string, indexed bool) {
	s.mu.Lock()
	dropped, next := table.DropCarried()
	if dropped {
		if indexed {
			reindexTable(s, table, keyApp)
		}
		s.all = true
	}
	s.mu.Unlock()
	if dropped {
		s.notify()
	}
	if !next.IsZero() {
		time.AfterFunc(time.Until(next), func() { dropCarried(s, table, keyApp, indexed) })
	}
}

// reindexTable rebuilds the index of keys by app from table. Called under mu.
func reindexTable[T any](s *Store, table *view.Table[T], keyApp func(string) string) {
	clear(s.groups)
	table.Read(func(rows map[string]T, _ uint64) {
		for key := range rows {
			s.index(key, keyApp(key), true)
		}
	})
}

// index adds key to its app's group, or removes it. Called under mu.
func (s *Store) index(key, app string, present bool) {
	g := s.groups[app]
	if present {
		if g == nil {
			g = map[string]struct{}{}
			s.groups[app] = g
		}
		g[key] = struct{}{}
		return
	}
	delete(g, key)
	if len(g) == 0 {
		delete(s.groups, app)
	}
}

// instanceApp is the app part of an "<app>.<instance>" key; the bus has
// checked that every record's key names its own app.
func instanceApp(key string) string {
	app, _, _ := strings.Cut(key, ".")
	return app
}

func appKey(key string) string { return key }

// AppsHandler handles the apps bucket.
func (s *Store) AppsHandler() bus.Handler[*msg.App] { return handler(s, s.apps, appKey, false) }

// InstancesHandler handles the instances bucket; its revisions become the
// snapshot's Revision.
func (s *Store) InstancesHandler() bus.Handler[*msg.Instance] {
	return handler(s, s.instances, instanceApp, true)
}

// AssumeNoCertificates loads the certificates as none, unless they have
// loaded: for a NATS where the bucket is missing or this credential may
// not read it (a scheduler or a nats-server config older than the
// bucket), so that lbagent still applies changes; apps with tls.acme are
// then served over plain HTTP. It reports whether it did.
func (s *Store) AssumeNoCertificates() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.certs.Loaded() {
		return false
	}
	s.certs.Handler().Snapshot(nil, 0)
	s.all = true
	s.notify()
	return true
}

// CertificatesHandler handles the certificates bucket (by app, fenced).
func (s *Store) CertificatesHandler() bus.Handler[*msg.Certificate] {
	return handler(s, s.certs, appKey, false)
}

// HealthHandler handles the health bucket (written by healthd, and by the
// scheduler for docker and exec checks; not fenced). Each value keeps the
// role that sealed it, and Build takes it only from the role its app's
// check type names (bus.HealthTrusted). An update from the wrong role for
// an app this store knows is dropped outright, so the key keeps its last
// value, as a forged one would.
func (s *Store) HealthHandler() bus.Handler[*msg.Health] {
	inner := bus.MarkHealthSealer(handler(s, s.health, instanceApp, false))
	return bus.HandlerFuncs[*msg.Health]{
		OnSnapshot: inner.Snapshot,
		OnUpdate: func(e bus.Event[*msg.Health]) {
			if app, ok := s.apps.Get(instanceApp(e.Key)); ok && !bus.HealthTrusted(app.Health, e.Sealer) {
				s.takeovers.Add(1)
				return
			}
			inner.Update(e)
		},
	}
}

// Takeovers counts health updates dropped because a role other than the
// one its app's check names sealed them (bus.HealthTrusted).
func (s *Store) Takeovers() uint64 { return s.takeovers.Load() }
