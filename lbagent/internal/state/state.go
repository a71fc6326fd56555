// Package state owns what the lbagent knows of the cluster: the apps,
// instances and health it watches on NATS, fenced by leader term, and the
// pure Build that turns them into an immutable Snapshot of what nginx
// should serve. It never acts on a partial initial load.
package state

import (
	"sort"
	"sync"
	"time"

	"github.com/berthhq/berth/common/bus"
	"github.com/berthhq/berth/common/msg"
)

// Server is one routable instance of an app.
type Server struct {
	// Instance is the instance id.
	Instance string
	// Address is host:port.
	Address string
	// Weight is the nginx weight.
	Weight int
	// Backup marks a backup server.
	Backup bool
}

// App is one app and the servers nginx may send its traffic to.
type App struct {
	// Spec is the app's routing and health view.
	Spec *msg.App
	// Servers are sorted by address; empty means the app answers 503.
	Servers []Server
}

// Snapshot is everything nginx should serve, immutable once built.
type Snapshot struct {
	// Apps are sorted by name.
	Apps []App
	// Revision is the highest instances-bucket revision the snapshot reflects.
	Revision uint64
	// Instances counts the instance records the snapshot was built from,
	// routable or not.
	Instances int
}

// Servers counts the servers of every app.
func (s Snapshot) Servers() int {
	n := 0
	for _, a := range s.Apps {
		n += len(a.Servers)
	}
	return n
}

// View is the raw state Build reads. Build does not modify it.
type View struct {
	Apps      map[string]*msg.App
	Instances map[string]*msg.Instance // by <app>.<instance>
	Health    map[string]*msg.Health   // by <app>.<instance>
	Revision  uint64                   // of the instances bucket
}

// Routable reports whether nginx may send new requests to inst: it is
// running with an address, and healthy when its app has an enabled health
// check. Unknown, unhealthy, draining and stopped instances get nothing.
func Routable(app *msg.App, inst *msg.Instance, h *msg.Health) bool {
	if inst.State != msg.StateRunning || inst.Address == "" {
		return false
	}
	if !app.Health.IsEnabled() {
		return true
	}
	return h != nil && h.Status == msg.StatusHealthy
}

// Build turns a view into a snapshot: every app, with its routable servers.
// Instances of apps it does not know are left out. Output is sorted, so the
// same view always builds the same snapshot.
func Build(v View) Snapshot {
	byApp := map[string][]Server{}
	for key, inst := range v.Instances {
		app, ok := v.Apps[inst.App]
		if !ok || !Routable(app, inst, v.Health[key]) {
			continue
		}
		byApp[inst.App] = append(byApp[inst.App], Server{Instance: inst.ID, Address: inst.Address, Weight: inst.Weight, Backup: inst.Backup})
	}
	names := make([]string, 0, len(v.Apps))
	for name := range v.Apps {
		names = append(names, name)
	}
	sort.Strings(names)
	s := Snapshot{Apps: make([]App, 0, len(names)), Revision: v.Revision, Instances: len(v.Instances)}
	for _, name := range names {
		servers := byApp[name]
		sort.Slice(servers, func(i, j int) bool {
			if servers[i].Address != servers[j].Address {
				return servers[i].Address < servers[j].Address
			}
			return servers[i].Instance < servers[j].Instance
		})
		s.Apps = append(s.Apps, App{Spec: v.Apps[name], Servers: servers})
	}
	return s
}

// EmptyHold decides whether next may be applied. A snapshot that removes
// every server of every app because every instance record vanished, when
// the applied one had servers, looks like a NATS reset or a wiped bucket
// rather than intent: it is held back until it has persisted for hold.
// Instances the scheduler wrote as draining, stopped or failed are intent,
// and leave at once. since is when the empty state was first seen (zero if
// it was not); the result says whether to apply and the new since.
func EmptyHold(applied, next Snapshot, since, now time.Time, hold time.Duration) (apply bool, newSince time.Time) {
	if next.Servers() > 0 || applied.Servers() == 0 || next.Instances > 0 {
		return true, time.Time{}
	}
	if since.IsZero() {
		since = now
	}
	if now.Sub(since) >= hold {
		return true, time.Time{}
	}
	return false, since
}

// Store accumulates what the three watchers deliver. It is safe for
// concurrent use: each watcher calls its handler from its own goroutine.
type Store struct {
	mu      sync.Mutex
	view    View
	loaded  [3]bool
	fence   msg.Fence
	fenced  uint64
	changed chan struct{}
}

// NewStore returns an empty store.
func NewStore() *Store {
	return &Store{
		view:    View{Apps: map[string]*msg.App{}, Instances: map[string]*msg.Instance{}, Health: map[string]*msg.Health{}},
		changed: make(chan struct{}, 1),
	}
}

// Changed receives a value after each change (coalesced: one pending at most).
func (s *Store) Changed() <-chan struct{} { return s.changed }

// Ready reports whether all three buckets have delivered their first
// complete snapshot; until then nothing may be built.
func (s *Store) Ready() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.loaded[0] && s.loaded[1] && s.loaded[2]
}

// Fenced counts writes dropped because they came from a lower leader term.
func (s *Store) Fenced() uint64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.fenced
}

// Snapshot builds the current snapshot; ok is false until the store is Ready.
func (s *Store) Snapshot() (snap Snapshot, ok bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !(s.loaded[0] && s.loaded[1] && s.loaded[2]) {
		return Snapshot{}, false
	}
	return Build(s.view), true
}

func (s *Store) notify() {
	select {
	case s.changed <- struct{}{}:
	default:
	}
}

// AppsHandler handles the apps bucket.
func (s *Store) AppsHandler() bus.Handler[*msg.App] {
	return bus.HandlerFuncs[*msg.App]{
		OnSnapshot: func(evs []bus.Event[*msg.App], _ uint64) {
			replace(s, 0, evs, &s.view.Apps, func(a *msg.App) uint64 { return a.Term })
		},
		OnUpdate: func(e bus.Event[*msg.App]) {
			update(s, e, s.view.Apps, func(a *msg.App) uint64 { return a.Term }, nil)
		},
	}
}

// InstancesHandler handles the instances bucket; its revisions become the
// snapshot's Revision.
func (s *Store) InstancesHandler() bus.Handler[*msg.Instance] {
	return bus.HandlerFuncs[*msg.Instance]{
		OnSnapshot: func(evs []bus.Event[*msg.Instance], rev uint64) {
			s.mu.Lock()
			s.view.Revision = rev
			s.mu.Unlock()
			replace(s, 1, evs, &s.view.Instances, func(i *msg.Instance) uint64 { return i.Term })
		},
		OnUpdate: func(e bus.Event[*msg.Instance]) {
			update(s, e, s.view.Instances, func(i *msg.Instance) uint64 { return i.Term }, &s.view.Revision)
		},
	}
}

// HealthHandler handles the health bucket (written by healthd, not fenced).
func (s *Store) HealthHandler() bus.Handler[*msg.Health] {
	return bus.HandlerFuncs[*msg.Health]{
		OnSnapshot: func(evs []bus.Event[*msg.Health], _ uint64) {
			replace(s, 2, evs, &s.view.Health, func(*msg.Health) uint64 { return 0 })
		},
		OnUpdate: func(e bus.Event[*msg.Health]) {
			update(s, e, s.view.Health, func(*msg.Health) uint64 { return 0 }, nil)
		},
	}
}

// replace installs a complete snapshot of one bucket.
func replace[T any](s *Store, idx int, evs []bus.Event[T], dst *map[string]T, term func(T) uint64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	m := make(map[string]T, len(evs))
	for _, e := range evs {
		if !s.fence.Accept(e.Key, term(e.Value)) {
			s.fenced++
			continue
		}
		m[e.Key] = e.Value
	}
	*dst = m
	s.loaded[idx] = true
	s.notify()
}

// update applies one change; rev, when not nil, tracks the bucket revision.
func update[T any](s *Store, e bus.Event[T], dst map[string]T, term func(T) uint64, rev *uint64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if rev != nil {
		*rev = max(*rev, e.Revision)
	}
	if e.Op == bus.OpDelete {
		delete(dst, e.Key)
	} else if s.fence.Accept(e.Key, term(e.Value)) {
		dst[e.Key] = e.Value
	} else {
		s.fenced++
		return
	}
	s.notify()
}
