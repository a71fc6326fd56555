package render

import (
	"slices"
	"strings"
	"sync"

	"github.com/berthhq/berth/common/msg"
	"github.com/berthhq/berth/common/spec"
	"github.com/berthhq/berth/lbagent/internal/state"
)

// Routes without reloads (Dynamic.Routes, lbagent --dynamic-routes): the
// apps whose routing is simple enough are not rendered at all. Their
// hosts and paths travel, as data, with their endpoint sets into nginx's
// shared dict, and one generic location in the default server looks up
// host → path → app there (berth.dynamic route). So creating, changing
// or removing such an app is a push, not a reload.
//
// What the route table grants is the same table the rendered apps get
// (spec.Claims): one computed result for both sides.

// RouterUpstream is the one upstream of every app the Lua router routes.
const RouterUpstream = "berth_routed"

// RouterBodySize is the client_max_body_size of the router's location:
// the spec's default, which an app needs to be routed there.
const RouterBodySize spec.ByteSize = 1 << 20

// MaxRoutes is the most routes one app's set may carry (the Lua side's
// MAX_ROUTES): spec.MaxHosts × spec.MaxPaths × 2 arguments a path. An app
// with more is rendered, never a push nginx would refuse.
const MaxRoutes = 20000

// HostRoute is one nginx location argument ("= /api", "/api/", "/") that
// the route table grants an app on one host key ("" for the default
// server).
type HostRoute struct {
	Host     string `json:"host"`
	Location string `json:"location"`
}

// Routable says why app a cannot be routed by the Lua router, "" when
// its spec alone allows it. Whether it is, also depends on the other apps
// (routedApps).
func Routable(a *spec.Routing, lb spec.LB) string {
	switch {
	case a.TLS != nil:
		return "routing.tls: certificates are rendered (ssl_certificate)"
	case len(a.Rules) > 0:
		return "routing.rules: regex, exact and header matches, splits, rate limits and response headers are rendered"
	case lb.Method == spec.LBHash:
		return "lb.method hash: its hash_key is an nginx variable expression, rendered"
	case lb.Keepalive <= 0:
		return "lb.keepalive 0: the router's upstream keeps connections alive"
	case lb.ClientMaxBodySize != RouterBodySize:
		return "lb.client_max_body_size other than 1 MiB: nginx enforces it per location, rendered"
	}
	for _, h := range a.Hosts {
		if strings.HasPrefix(h, "*.") {
			return "a wildcard host: nginx matches it before the router, rendered"
		}
	}
	if max(len(a.Hosts), 1)*len(a.Paths)*2 > MaxRoutes {
		return "more routes than one push carries"
	}
	return ""
}

// ClaimsMemo remembers the route table of the last set of app records it
// was asked for, and which of them the Lua router routes: a decision
// lays the state out and then computes the routes of the same records,
// and at 10,000 apps spec.Claims costs tens of milliseconds each time. A
// record is never changed in place (a change is a new record), so the
// same records, in the same order, have the same table. Safe for
// concurrent use.
type ClaimsMemo struct {
	mu    sync.Mutex
	specs []*msg.App
	table *spec.RouteTable
	// routedDone says routed is computed for table; routed nil then
	// means the router is off (routedApps).
	routedDone bool
	routed     map[string]bool
	// routes is RoutedApps' result for table, nil until asked for.
	routes map[string][]HostRoute
}

// of returns the table of snap's records and, when routes, the apps the
// router routes (routedApps), computing them only for other records than
// last time. What it returns is shared: read it only.
func (m *ClaimsMemo) of(snap state.Snapshot, routes bool) (*spec.RouteTable, map[string]bool) {
	if m == nil {
		table := claimsOf(snap)
		if !routes {
			return table, nil
		}
		return table, routedApps(snap, table)
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	same := m.table != nil && len(m.specs) == len(snap.Apps)
	for i := 0; same && i < len(snap.Apps); i++ {
		same = m.specs[i] == snap.Apps[i].Spec
	}
	if !same {
		table := m.update(snap)
		if table == nil {
			table = claimsOf(snap)
		}
		m.table, m.routedDone, m.routed, m.routes = table, false, nil, nil
		m.specs = make([]*msg.App, len(snap.Apps))
		for i, a := range snap.Apps {
			m.specs[i] = a.Spec
		}
	}
	if !routes {
		return m.table, nil
	}
	if !m.routedDone {
		m.routed, m.routedDone = routedApps(snap, m.table), true
	}
	return m.table, m.routed
}

// maxUpdate is the most apps created, changed or removed whose route
// table ClaimsMemo updates (spec.RouteTable.Update) rather than computes
// again.
const maxUpdate = 64

// update returns the route table of snap's records made by updating the
// last one with the records that are not the last ones (by name: both
// are sorted by name); nil when it cannot (none, not sorted, too many).
// Called under mu.
func (m *ClaimsMemo) update(snap state.Snapshot) *spec.RouteTable {
	if m.table == nil || !slices.IsSortedFunc(m.specs, func(a, b *msg.App) int { return strings.Compare(a.Name, b.Name) }) {
		return nil
	}
	var changed []spec.Claimant
	var removed []string
	last, i := m.specs, 0
	for k, a := range snap.Apps {
		name := a.Spec.Name
		if k > 0 && snap.Apps[k-1].Spec.Name >= name {
			return nil
		}
		for ; i < len(last) && last[i].Name < name; i++ {
			removed = append(removed, last[i].Name)
		}
		switch {
		case i < len(last) && last[i].Name == name:
			if last[i] != a.Spec {
				changed = append(changed, a.Spec.Claimant())
			}
			i++
		default:
			changed = append(changed, a.Spec.Claimant())
		}
		if len(changed)+len(removed) > maxUpdate {
			return nil
		}
	}
	for ; i < len(last); i++ {
		removed = append(removed, last[i].Name)
	}
	if len(changed)+len(removed) > maxUpdate {
		return nil
	}
	return m.table.Update(changed, removed)
}

// claimsOf is the route table of snap's records, kept for an update.
func claimsOf(snap state.Snapshot) *spec.RouteTable {
	claimants := make([]spec.Claimant, len(snap.Apps))
	for i := range snap.Apps {
		claimants[i] = snap.Apps[i].Spec.Claimant()
	}
	return spec.ClaimsIndexed(claimants)
}

// RoutedApps returns the apps of snap that the Lua router routes with o
// (none unless o.Dynamic.Routes), each with the locations the route
// table grants it. Layout leaves exactly these apps out.
func RoutedApps(snap state.Snapshot, o Options) map[string][]HostRoute {
	if o.Dynamic == nil || !o.Dynamic.Routes {
		return nil
	}
	table, routed := o.Claims.of(snap, true)
	if m := o.Claims; m != nil {
		m.mu.Lock()
		routes := m.routes
		if m.table != table {
			routes = nil
		}
		m.mu.Unlock()
		if routes != nil {
			return routes
		}
	}
	out := make(map[string][]HostRoute, len(routed))
	for _, hr := range table.Hosts() {
		for _, ar := range hr.Apps {
			if !routed[ar.App] {
				continue
			}
			for _, l := range ar.Locations {
				for _, arg := range l.Args() {
					out[ar.App] = append(out[ar.App], HostRoute{Host: hr.Host, Location: arg})
				}
			}
		}
	}
	for name := range routed {
		if _, ok := out[name]; !ok {
			out[name] = []HostRoute{} // routed, granted nothing: still not rendered
		}
	}
	if m := o.Claims; m != nil {
		m.mu.Lock()
		if m.table == table {
			m.routes = out
		}
		m.mu.Unlock()
	}
	return out
}

// routedApps decides which apps the router routes: those Routable allows,
// without a conflict (a conflict is reported by a build, so such an app is
// rendered), that no split names (a share's location needs its
// upstream), on hosts that every app routing there is routed on (a host
// is one server block or none) and that no wildcard host covers (nginx
// would match the wildcard's server first). The default server is where
// the router lives: when an app rendered there routes without hosts,
// nothing is routed by the router.
func routedApps(snap state.Snapshot, table *spec.RouteTable) map[string]bool {
	ok := make(map[string]bool, len(snap.Apps))
	for _, a := range snap.Apps {
		if Routable(&a.Spec.Routing, a.Spec.LB) == "" && len(table.Conflicts(a.Spec.Name)) == 0 {
			ok[a.Spec.Name] = true
		}
	}
	for _, a := range snap.Apps {
		for _, r := range a.Spec.Routing.Rules {
			for _, sp := range r.Split {
				delete(ok, sp.App)
			}
		}
	}
	wild := map[string]bool{} // "example.com" of "*.example.com"
	for _, hr := range table.Hosts() {
		if s, isWild := strings.CutPrefix(hr.Host, "*."); isWild {
			wild[s] = true
		}
	}
	covered := func(h string) bool {
		for rest := h; ; {
			_, after, found := strings.Cut(rest, ".")
			if !found {
				return false
			}
			if wild[after] {
				return true
			}
			rest = after
		}
	}
	for changed := true; changed; {
		changed = false
		for _, hr := range table.Hosts() {
			dyn := !strings.HasPrefix(hr.Host, "*.") && !covered(hr.Host)
			for _, ar := range hr.Apps {
				dyn = dyn && ok[ar.App]
			}
			if dyn {
				continue
			}
			if hr.Host == "" {
				return nil
			}
			for _, ar := range hr.Apps {
				if ok[ar.App] {
					delete(ok, ar.App)
					changed = true
				}
			}
		}
	}
	return ok
}
