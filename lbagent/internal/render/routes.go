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

// RouterBodyLimit is the client_max_body_size of the router's location:
// the largest of the routed apps' (0, unlimited, when one is), rounded up
// to a power of two of at least 1 MiB so that the config changes only
// when it doubles. nginx refuses a body past it before Lua runs; the
// router holds each app to its own below it (berth.dynamic route).
func RouterBodyLimit(snap state.Snapshot, routed map[string]bool) spec.ByteSize {
	var most spec.ByteSize
	for _, a := range snap.Apps {
		if !routed[a.Spec.Name] {
			continue
		}
		size := a.Spec.LB.ClientMaxBodySize
		if size == 0 {
			return 0
		}
		most = max(most, size)
	}
	limit := spec.ByteSize(1 << 20)
	for limit < most {
		limit *= 2
	}
	return limit
}

// MaxRoutes is the most routes one app's set may carry (the Lua side's
// MAX_ROUTES): spec.MaxHosts × spec.MaxPaths × 2 arguments a path. An app
// with more is rendered, never a push nginx would refuse.
const MaxRoutes = 20000

// HostRoute is one nginx location argument ("= /api", "/api/", "/",
// "~ regex") that the route table grants an app on one host key (""
// for the default server).
type HostRoute struct {
	Host     string `json:"host"`
	Location string `json:"location"`
	// Order is the app's place among the apps routing on the host, in
	// claim order (the owner 0): where several claim one location (header
	// matches), and for regexes, which nginx tries in the order they were
	// claimed, the router keeps this order, then the order of the app's
	// routes.
	Order int `json:"order,omitempty"`
	// Rule is the rule's number in routing.rules, counted from 1; 0 for a
	// plain path. Its header match, split and response headers are in the
	// app's set (dynamic.Endpoints.Rules).
	Rule int `json:"rule,omitempty"`
}

// Routable says why app a cannot be routed by the Lua router, "" when
// its spec alone allows it. Whether it is, also depends on the other apps
// (routedApps).
func Routable(a *spec.Routing, lb spec.LB) string {
	switch {
	case a.TLS != nil:
		return "routing.tls: certificates are rendered (ssl_certificate)"
	case lb.Keepalive <= 0:
		return "lb.keepalive 0: the router's upstream keeps connections alive"
	}
	if max(len(a.Hosts), 1)*(len(a.Paths)+len(a.Rules))*2 > MaxRoutes {
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
		for order, ar := range hr.Apps {
			if !routed[ar.App] {
				continue
			}
			for _, l := range ar.Locations {
				for _, arg := range l.Args() {
					out[ar.App] = append(out[ar.App], HostRoute{Host: hr.Host, Location: arg, Order: order, Rule: l.Index + 1})
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
// rendered), that no rendered app's split names (a rendered share's
// location needs its target's upstream; the router's splits balance any
// app from the dict), on hosts that every app routing there is routed on (a host
// is one server block or none) and that no rendered wildcard host covers (nginx
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
	// splitters are the apps with a split: a rendered one keeps its
	// targets rendered.
	var splitters []*msg.App
	for _, a := range snap.Apps {
		if slices.ContainsFunc(a.Spec.Routing.Rules, func(r spec.Rule) bool { return len(r.Split) > 0 }) {
			splitters = append(splitters, a.Spec)
		}
	}
	wild := map[string][]spec.AppRoutes{} // "example.com" of "*.example.com": its apps
	for _, hr := range table.Hosts() {
		if s, isWild := strings.CutPrefix(hr.Host, "*."); isWild {
			wild[s] = hr.Apps
		}
	}
	// covered says a rendered wildcard server covers h: nginx matches it
	// before the default server, so h never reaches the router. (A routed
	// wildcard is the router's to match, after h's own entry.)
	covered := func(h string) bool {
		for rest := h; ; {
			_, after, found := strings.Cut(rest, ".")
			if !found {
				return false
			}
			for _, ar := range wild[after] {
				if !ok[ar.App] {
					return true
				}
			}
			rest = after
		}
	}
	for changed := true; changed; {
		changed = false
		for _, a := range splitters {
			if ok[a.Name] {
				continue
			}
			for _, r := range a.Routing.Rules {
				for _, sp := range r.Split {
					if ok[sp.App] {
						delete(ok, sp.App)
						changed = true
					}
				}
			}
		}
		for _, hr := range table.Hosts() {
			dyn := !covered(hr.Host)
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
