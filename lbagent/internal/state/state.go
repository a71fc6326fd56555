// Package state owns what the lbagent knows of the cluster: the apps,
// instances and health it watches on NATS, fenced by leader term, and the
// pure Build that turns them into an immutable Snapshot of what nginx
// should serve. It never acts on a partial initial load.
package state

import (
	"slices"
	"sort"
	"strings"
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
	// Cert is the app's ACME certificate, when its spec has tls.acme and
	// one was issued.
	Cert *msg.Certificate
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
	Instances map[string]*msg.Instance    // by <app>.<instance>
	Health    map[string]*msg.Health      // by <app>.<instance>
	Certs     map[string]*msg.Certificate // ACME certificates, by app
	Revision  uint64                      // of the instances bucket
	// Served are, by app, the instances the previous snapshot served: one
	// whose health value is missing (not unhealthy: missing, as while
	// healthd's bucket refills after a NATS reset) stays served.
	Served map[string]map[string]bool
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
	groups := map[string]map[string]struct{}{}
	for key, inst := range v.Instances {
		g := groups[inst.App]
		if g == nil {
			g = map[string]struct{}{}
			groups[inst.App] = g
		}
		g[key] = struct{}{}
	}
	var b builder
	return b.full(v, groups)
}

// builder builds snapshots, and rebuilds only the apps that changed when
// it is told which (Store does). The result is always what Build returns
// for the same view.
type builder struct {
	last      Snapshot
	built     bool           // last is built
	unsettled map[string]int // by app name, including apps without a record
}

// find is the index of app name in apps (sorted by name), or where it
// goes, and whether it is there.
func find(apps []App, name string) (int, bool) {
	return slices.BinarySearchFunc(apps, name, func(a App, name string) int { return strings.Compare(a.Spec.Name, name) })
}

// full builds every app. groups holds each app's instance keys.
func (b *builder) full(v View, groups map[string]map[string]struct{}) Snapshot {
	names := make([]string, 0, len(v.Apps))
	for name := range v.Apps {
		names = append(names, name)
	}
	sort.Strings(names)
	s := Snapshot{Apps: make([]App, 0, len(names)), Revision: v.Revision, Instances: len(v.Instances)}
	prev := b.last
	b.unsettled = map[string]int{}
	for name, keys := range groups {
		if _, ok := v.Apps[name]; !ok {
			_, u := buildApp(name, nil, keys, v, nil)
			b.unsettled[name] = u
			s.Unsettled += u
		}
	}
	for _, name := range names {
		served := v.Served[name]
		if j, ok := find(prev.Apps, name); ok && served == nil {
			served = servedIDs(prev.Apps[j])
		}
		app, u := buildApp(name, v.Apps[name], groups[name], v, served)
		s.Apps = append(s.Apps, app)
		b.unsettled[name] = u
		s.Unsettled += u
	}
	b.last, b.built = s, true
	return s
}

// partial rebuilds the dirty apps only, putting in the apps that came and
// taking out those that went; a builder that has built nothing builds
// everything.
func (b *builder) partial(v View, groups map[string]map[string]struct{}, dirty map[string]struct{}) Snapshot {
	if !b.built {
		return b.full(v, groups)
	}
	s := b.last
	s.Apps = append(make([]App, 0, len(b.last.Apps)+len(dirty)), b.last.Apps...)
	s.Revision, s.Instances = v.Revision, len(v.Instances)
	for name := range dirty {
		i, known := find(s.Apps, name)
		var served map[string]bool
		if known {
			served = servedIDs(s.Apps[i])
		}
		spec, present := v.Apps[name]
		app, u := buildApp(name, spec, groups[name], v, served)
		switch {
		case known && present:
			s.Apps[i] = app
		case present:
			s.Apps = slices.Insert(s.Apps, i, app)
		case known:
			s.Apps = slices.Delete(s.Apps, i, i+1)
		}
		s.Unsettled += u - b.unsettled[name]
		if u == 0 {
			delete(b.unsettled, name)
		} else {
			b.unsettled[name] = u
		}
	}
	if len(s.Apps) != len(v.Apps) {
		return b.full(v, groups) // a change not marked dirty: never a wrong snapshot
	}
	b.last = s
	return s
}

// servedIDs are the instances a built app serves.
func servedIDs(a App) map[string]bool {
	if len(a.Servers) == 0 {
		return nil
	}
	out := make(map[string]bool, len(a.Servers))
	for _, s := range a.Servers {
		out[s.Instance] = true
	}
	return out
}

// buildApp is one app of Build from the keys of its instances: its
// routable servers, sorted, and how many of its running instances are
// left out for want of data. spec nil is an app without a record.
func buildApp(name string, spec *msg.App, keys map[string]struct{}, v View, served map[string]bool) (App, int) {
	var servers []Server
	unsettled := 0
	for key := range keys {
		inst := v.Instances[key]
		if inst == nil || inst.App != name {
			continue
		}
		h := v.Health[key]
		if h != nil && spec != nil && !bus.HealthTrusted(spec.Health, h.Sealer) {
			// Sealed by a role whose check this app does not run (its
			// type changed since, or a value from before its record):
			// no verdict.
			h = nil
		}
		// No health value, or one that says unknown, is no verdict: a
		// checker that starts a target again (after NATS came back empty,
		// or a new checker without the published value) publishes unknown
		// until its thresholds are met.
		noVerdict := h == nil || h.Status == msg.StatusUnknown
		missing := inst.State == msg.StateRunning && inst.Address != "" && (spec == nil || spec.Health.IsEnabled() && noVerdict)
		if missing {
			unsettled++
		}
		// An instance served before stays served until healthd says
		// otherwise.
		kept := missing && spec != nil && served[inst.ID]
		if !kept && (spec == nil || !Routable(spec, inst, h)) {
			continue
		}
		servers = append(servers, Server{Instance: inst.ID, Address: inst.Address, Weight: inst.Weight, Backup: inst.Backup})
	}
	sort.Slice(servers, func(i, j int) bool {
		if servers[i].Address != servers[j].Address {
			return servers[i].Address < servers[j].Address
		}
		return servers[i].Instance < servers[j].Instance
	})
	a := App{Spec: spec, Servers: servers}
	if spec != nil && spec.Routing.TLS != nil && spec.Routing.TLS.ACME {
		a.Cert = v.Certs[name]
	}
	return a, unsettled
}

// EmptyHold decides whether next may be applied. A snapshot that removes
// every server of every app, when the applied one had servers, and in
// which no instance record says why (every record vanished, or those left
// are running but lack their app or a health verdict, as while the
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
