// Package state owns what the lbagent knows of the cluster: the apps,
// instances and health it watches on NATS, fenced by leader term, and the
// pure Build that turns them into an immutable Snapshot of what nginx
// should serve. It never acts on a partial initial load.
package state

import (
	"sort"
	"time"

	"github.com/berthhq/berth/common/bus"
	"github.com/berthhq/berth/common/msg"
	"github.com/berthhq/berth/common/view"
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
	// Unsettled counts the running instances with an address that are left
	// out only for want of data: their app has no record, or their app has
	// a health check and no health value exists for them. That is what a
	// NATS reset looks like while the buckets refill, not anyone's intent.
	Unsettled int
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
	unsettled := 0
	for key, inst := range v.Instances {
		app, ok := v.Apps[inst.App]
		h := v.Health[key]
		if inst.State == msg.StateRunning && inst.Address != "" && (!ok || app.Health.IsEnabled() && h == nil) {
			unsettled++
		}
		if !ok || !Routable(app, inst, h) {
			continue
		}
		byApp[inst.App] = append(byApp[inst.App], Server{Instance: inst.ID, Address: inst.Address, Weight: inst.Weight, Backup: inst.Backup})
	}
	names := make([]string, 0, len(v.Apps))
	for name := range v.Apps {
		names = append(names, name)
	}
	sort.Strings(names)
	s := Snapshot{Apps: make([]App, 0, len(names)), Revision: v.Revision, Instances: len(v.Instances), Unsettled: unsettled}
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
// every server of every app, when the applied one had servers, and in
// which no instance record says why (every record vanished, or those left
// are running but lack their app or their health value, as while the
// buckets refill after a NATS reset) looks like a reset rather than
// intent: it is held back until it has persisted for hold. Instances the
// scheduler wrote as draining, stopped or failed, or that healthd found
// unhealthy, are intent, and leave at once. since is when the empty state
// was first seen (zero if it was not); the result says whether to apply
// and the new since.
func EmptyHold(applied, next Snapshot, since, now time.Time, hold time.Duration) (apply bool, newSince time.Time) {
	if next.Servers() > 0 || applied.Servers() == 0 || next.Instances > next.Unsettled {
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

// Store accumulates what the three watchers deliver, one view.Table per
// bucket. It is safe for concurrent use: each watcher calls its handler
// from its own goroutine.
type Store struct {
	apps      *view.Table[*msg.App]
	instances *view.Table[*msg.Instance]
	health    *view.Table[*msg.Health]
	changed   chan struct{}
}

// NewStore returns an empty store.
func NewStore() *Store {
	s := &Store{changed: make(chan struct{}, 1)}
	s.apps = view.NewTable(view.AppTerm, s.notify)
	s.instances = view.NewTable(view.InstanceTerm, s.notify)
	s.health = view.NewTable(view.NoTerm[*msg.Health], s.notify)
	return s
}

// Changed receives a value after each change (coalesced: one pending at most).
func (s *Store) Changed() <-chan struct{} { return s.changed }

// Ready reports whether all three buckets have delivered their first
// complete snapshot; until then nothing may be built.
func (s *Store) Ready() bool {
	return s.apps.Loaded() && s.instances.Loaded() && s.health.Loaded()
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
	if !s.Ready() {
		return Snapshot{}, false
	}
	// Always in this order, so the nested locks cannot deadlock.
	s.apps.Read(func(apps map[string]*msg.App, _ uint64) {
		s.instances.Read(func(insts map[string]*msg.Instance, rev uint64) {
			s.health.Read(func(health map[string]*msg.Health, _ uint64) {
				snap = Build(View{Apps: apps, Instances: insts, Health: health, Revision: rev})
			})
		})
	})
	return snap, true
}

func (s *Store) notify() {
	select {
	case s.changed <- struct{}{}:
	default:
	}
}

// AppsHandler handles the apps bucket.
func (s *Store) AppsHandler() bus.Handler[*msg.App] { return s.apps.Handler() }

// InstancesHandler handles the instances bucket; its revisions become the
// snapshot's Revision.
func (s *Store) InstancesHandler() bus.Handler[*msg.Instance] { return s.instances.Handler() }

// HealthHandler handles the health bucket (written by healthd, not fenced).
func (s *Store) HealthHandler() bus.Handler[*msg.Health] { return s.health.Handler() }
