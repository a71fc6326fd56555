// Package render turns a state snapshot into nginx config text through the
// templates: it lays the snapshot out as template data (pure and sorted, so
// the same snapshot always renders the same bytes), resolves host and path
// conflicts between apps, and executes the templates with missingkey=error
// and a func map of helpers that validate and quote every value or fail.
package render

import (
	"bytes"
	"fmt"
	"io/fs"
	"maps"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"text/template"
	"time"

	"github.com/berthhq/berth/common/msg"
	"github.com/berthhq/berth/common/spec"
	"github.com/berthhq/berth/lbagent/internal/state"
)

// Options are the node-level settings of a render.
type Options struct {
	// Node is the lbagent's node id, written in a comment.
	Node string
	// HTTPListen and HTTPSListen are where app traffic arrives ("0.0.0.0:80").
	HTTPListen, HTTPSListen string
	// StatusListen serves stub_status and the generation endpoint.
	StatusListen string
	// AccessLogSocket is lbagent's unix datagram socket for the JSON access
	// log; empty turns the access log off.
	AccessLogSocket string
	// Main renders a whole nginx.conf; otherwise only the http context, for
	// an include directory of an nginx.conf that lbagent does not own.
	Main bool
	// Dynamic renders dynamic upstreams; nil renders server lines (reload
	// mode).
	Dynamic *Dynamic
	// ACME is where lbagent answers ACME HTTP-01 challenges (host:port on
	// loopback): the servers of apps with tls.acme send
	// /.well-known/acme-challenge/ there.
	ACME string
	// Claims, when set, remembers the route table of the last app records
	// laid out, for the next layout or RoutedApps of the same records.
	Claims *ClaimsMemo
}

// Dynamic is dynamic upstream mode: every app's upstream is balanced by
// nginx's Lua module from endpoint sets lbagent pushes into a shared
// dict, so an endpoint change reloads nothing.
type Dynamic struct {
	// LuaDir is the lua_package_path root holding berth/dynamic.lua.
	LuaDir string
	// Snapshot is the endpoint file init_by_lua loads when nginx starts or
	// reloads; Token the control endpoint's token file.
	Snapshot, Token string
	// ModulesDir holds ndk_http_module.so and ngx_http_lua_module.so; the
	// main config loads them from there (empty: the operator's nginx.conf
	// loads them).
	ModulesDir string
	// Drain renders the closers (Server.Closers) that let a reload lose no
	// request (lbagent --reload-drain > 0); they cost a named location per
	// app and host.
	Drain bool
	// Routes routes the apps that allow it (Routable) by nginx's Lua
	// router, from the route table pushed with their endpoints, instead of
	// rendering them: creating, changing or removing one reloads nothing
	// (lbagent --dynamic-routes).
	Routes bool
}

// Data is what the templates see.
type Data struct {
	Node            string
	Generation      uint64
	Revision        uint64
	StatusListen    string
	AccessLogSocket string
	Dynamic         *Dynamic
	Upstreams       []Upstream
	// RateZones are the limit_req zones of the rules with a rate limit.
	RateZones []RateZone
	// Maps choose, per request, which app's location answers a location
	// that several apps' rules share by their header matches (Routed).
	Maps []RouteMap
	// Splits send a share of a rule's requests to other apps.
	Splits  []SplitClients
	Servers []Server
	// Router renders the upstream of the apps the Lua router routes
	// (Dynamic.Routes); the default server then has the router's location.
	Router bool
	// DictMB is the size of the shared dict of dynamic mode, in MiB
	// (DictSize).
	DictMB int
}

// DictSize is the size of dynamic mode's shared dict for apps apps, in
// MiB: 2 KiB an app (a set with its routes, its host's entry, counters;
// about 0.8 KiB measured at 10,000 apps), at least 32, rounded up to a
// power of two so that the size, and so the config, changes only when
// the number of apps doubles. A new size is a new zone: nginx's reload
// starts it from the endpoint file, as a start does.
func DictSize(apps int) int {
	mb := 32
	for mb*1024 < apps*2 {
		mb *= 2
	}
	return mb
}

// SplitClients is one rule's split: each request goes to one named
// location, by Percent, or to Rest (the rule's own). In reload mode it is
// a split_clients block on $request_id; in dynamic mode the routed
// location sets Var with the Lua balancer's split, which reads the
// weights pushed with Owner's endpoint set (Rule is the rule's index
// there), so a weight change reloads nothing.
type SplitClients struct {
	Var    string
	Shares []Share
	Rest   string
	Owner  string
	Rule   int
}

// Share is one app's share of a split.
type Share struct {
	Percent int
	Target  string
	// Index is the share's index in the rule's split.
	Index int
	// to is the location the target names, for Named.
	to Location
}

// RouteMap is one nginx map of the http context: Var is Source's value
// looked up in Entries, or Default.
type RouteMap struct {
	Var, Source, Default string
	Entries              []MapEntry
}

// MapEntry is one line of a map: Key is a header value to match exactly,
// "~" and a regex, or "11…" (every header of an alternative matched).
type MapEntry struct{ Key, Value string }

// Routed is a location that several claims share: each request goes to
// the named location (Named) that the map variable Var names. In dynamic
// mode, Splits are the splits it may reach, whose variables it sets.
type Routed struct {
	Arg, Var string
	Dynamic  bool
	Splits   []SplitClients
}

// RateZone is one rule's limit_req zone: requests per second per client
// address. Each has 256k of shared memory (the template), about 2,000
// client addresses at once, 128 bytes each; past it nginx forgets the
// least recently seen. spec.MaxRules bounds them per app.
type RateZone struct {
	Name string
	RPS  int
}

// Header is one response header of a rule.
type Header struct{ Name, Value string }

// Upstream is one app's upstream block; apps without servers have none.
type Upstream struct {
	Name       string
	App        string
	Generation int64
	LB         spec.LB
	Servers    []state.Server
	// ServerParams are the parameters every server line of the upstream
	// shares (" max_fails=1 fail_timeout=10s"), built once rather than per
	// server: 10,000 server lines dominate a large render.
	ServerParams string
	// Dynamic renders the Lua balancer instead of server lines.
	Dynamic bool
}

// Server is one server block: one host, or the default server.
type Server struct {
	Host                    string
	Default                 bool
	HTTPListen, HTTPSListen string
	TLS                     *spec.TLS
	RedirectHTTP            bool
	RejectTLS               bool
	// ACME is where the server sends /.well-known/acme-challenge/ (an app
	// here has tls.acme); empty: nowhere.
	ACME string
	// AccessLogSocket is where its access log goes; empty: none.
	AccessLogSocket string
	Locations       []Location
	HasRoot         bool
	// Closers (dynamic mode) are one named location per app routed here:
	// the app's location with keepalive_timeout 0, where the Lua access
	// handler sends requests while a reload drains keep-alive connections.
	Closers []Location
	// Named are the bodies that shared locations (Location.Routed) send
	// requests to (@<Target>), and NotFound renders @berth_notfound for a
	// shared location no claim without headers owns.
	Named    []Location
	NotFound bool
	// Router (the default server, Dynamic.Routes) renders the Lua router's
	// "location /": hosts without a server block of their own, and the
	// default server's paths, are looked up in the route table pushed into
	// nginx's dict; RouterDrain renders its closer too.
	Router, RouterDrain bool
	// RouterBodySize is the router location's client_max_body_size
	// (RouterBodyLimit): the Lua router holds each app to its own.
	RouterBodySize spec.ByteSize
}

// Location routes one path or rule of one app.
type Location struct {
	Path    string
	Matches []string // the nginx location arguments for Path
	// Regex: the location is a regex, whose order nginx follows (the
	// first claimant's first).
	Regex    bool
	App      string
	Upstream string // empty: the app has no server and answers 503
	LB       spec.LB
	// Dynamic: the Lua balancer picks the server, and answers 503 itself
	// when the app has none.
	Dynamic bool
	// Drain: the app has a closer in this server (Dynamic.Drain).
	Drain bool
	// Closer names the closer this location sends requests to while a
	// reload drains: the app's ("@<upstream>_close"), or this rule's own
	// when it has a rate limit or response headers.
	Closer string
	// RateZone and RateLimit limit the requests per client address.
	RateZone  string
	RateLimit *spec.RateLimit
	// Headers are added to every answer, sorted by name.
	Headers []Header
	// Cond is the rule's header match in canonical form (spec), "" for
	// none; MatchHeaders the headers themselves. Target names the
	// location's body as a named location, for shared locations.
	Cond         string
	MatchHeaders map[string]string
	Target       string
	// Shares are the rule's split: other apps' shares of its requests.
	Shares []Share
	// Routed, when set, makes this a location that several claims share
	// (Matches is its one argument): each request jumps to the claim the
	// maps choose. It stands where the first claim was, so a shared regex
	// keeps its place in the order nginx tries regexes.
	Routed *Routed
	// Fallback (dynamic mode), for a share's location, names the rule's
	// own location: a share whose app has no server goes there.
	Fallback string

	// body names the "route" template's text of this location: the same
	// for every location of one path set or rule of one app record (on
	// every host, both locations of a prefix, and render after render
	// while the record is the same), so the route helper executes the
	// template once per record and rule, not once per location.
	body bodyKey
}

// bodyKey is what a location's route body depends on: the app record (a
// record is never changed in place: a change is a new record), the rule,
// and what Layout derived from the node's options.
type bodyKey struct {
	spec     *msg.App
	rule     int
	upstream string
	dynamic  bool
	drain    bool
	fallback string
}

// UpstreamName is the nginx upstream of an app.
func UpstreamName(app string) string { return "berth_" + strings.ReplaceAll(app, "-", "_") }

// Layout turns a snapshot into template data. Paths are routes
// (spec.RoutePath): "/x" and "/x/" are one. What each app gets on each
// host is the route table's (spec.Claims): a host's owner, its TLS and
// redirect, and the locations each app may have there. An app that does
// not get a claim is reported in conflicts, by app, with the reason.
func Layout(snap state.Snapshot, generation uint64, o Options) (Data, map[string]string) {
	d := Data{Node: o.Node, Generation: generation, Revision: snap.Revision, StatusListen: o.StatusListen, AccessLogSocket: o.AccessLogSocket, Dynamic: o.Dynamic,
		DictMB: DictSize(len(snap.Apps))}
	dynamic := o.Dynamic != nil
	conflicts := map[string]string{}
	servers := map[string]*Server{"": {Default: true, HTTPListen: o.HTTPListen, HTTPSListen: o.HTTPSListen, AccessLogSocket: o.AccessLogSocket}}
	zones := map[string]bool{}
	anyTLS := false
	upstreams := make(map[string]string, len(snap.Apps))
	apps := make(map[string]*msg.App, len(snap.Apps))
	for _, a := range snap.Apps {
		apps[a.Spec.Name] = a.Spec
	}
	// Who routes what on each host: the route table every side computes
	// (spec.Claims). An app gets nothing the table does not grant it. The
	// apps the Lua router routes are not rendered (routes.go).
	byName := make(map[string]*state.App, len(snap.Apps))
	for i := range snap.Apps {
		byName[snap.Apps[i].Spec.Name] = &snap.Apps[i]
	}
	table, routed := o.Claims.of(snap, dynamic && o.Dynamic.Routes)
	if dynamic && o.Dynamic.Routes {
		if routed != nil {
			d.Router = true
			servers[""].Router, servers[""].RouterDrain = true, o.Dynamic.Drain
			servers[""].RouterBodySize = RouterBodyLimit(snap, routed)
		}
	}
	for _, a := range snap.Apps {
		if routed[a.Spec.Name] {
			continue
		}
		upstream := ""
		switch {
		case dynamic:
			// Rendered once whatever the servers: they live in nginx's
			// shared dict, so a change of them changes no file.
			upstream = UpstreamName(a.Spec.Name)
			d.Upstreams = append(d.Upstreams, Upstream{Name: upstream, App: a.Spec.Name, LB: a.Spec.LB, Dynamic: true})
		case len(a.Servers) > 0:
			upstream = UpstreamName(a.Spec.Name)
			d.Upstreams = append(d.Upstreams, Upstream{Name: upstream, App: a.Spec.Name, Generation: a.Spec.Generation, LB: a.Spec.LB, Servers: a.Servers,
				ServerParams: fmt.Sprintf(" max_fails=%d fail_timeout=%s", a.Spec.LB.MaxFails, secs(a.Spec.LB.FailTimeout))})
		}
		upstreams[a.Spec.Name] = upstream
	}
	for _, app := range table.Conflicted() {
		cs := table.Conflicts(app)
		conflicts[app] = cs[0].Error()
		if len(cs) > 1 {
			conflicts[app] += fmt.Sprintf(" (and %d more conflicts)", len(cs)-1)
		}
	}
	for _, hr := range table.Hosts() {
		h := hr.Host
		if len(hr.Apps) > 0 && routed[hr.Apps[0].App] {
			continue // every app there is routed (routedApps): no server block
		}
		srv, ok := servers[h]
		if !ok {
			srv = &Server{Host: h, HTTPListen: o.HTTPListen, HTTPSListen: o.HTTPSListen, AccessLogSocket: o.AccessLogSocket}
			servers[h] = srv
		}
		// The owner's TLS and redirect alone. An app with tls.acme and no
		// certificate yet is served over plain HTTP (lbagent names the
		// files once one is issued), and so is a host its certificate does
		// not cover yet (hosts added).
		owner := byName[hr.Owner]
		if tls := owner.Spec.Routing.TLS; tls != nil && (!tls.ACME || tls.Certificate != "" && covers(owner.Cert, h)) {
			srv.TLS, srv.RedirectHTTP, anyTLS = tls, tls.RedirectHTTP, true
		}
		for _, ar := range hr.Apps {
			a := byName[ar.App]
			owned := len(srv.Locations)
			srv.Locations = slices.Grow(srv.Locations, len(ar.Locations))
			for _, l := range ar.Locations {
				srv.Locations = append(srv.Locations, locationOf(a.Spec, l, upstreams, apps, &d, zones, o))
				if l.Match == spec.MatchPrefix && l.Path == "/" {
					srv.HasRoot = true
				}
			}
			// The CA's challenge for h is answered only where the owner, with
			// tls.acme, routes something of h: an owner whose every route
			// there is refused gets no certificate for it.
			if tls := a.Spec.Routing.TLS; ar.App == hr.Owner && tls != nil && tls.ACME && len(srv.Locations) > owned {
				srv.ACME = o.ACME
			}
		}
	}
	for h, srv := range servers {
		if srv.ACME != "" {
			reserveChallengePath(srv, h, conflicts)
		}
	}
	servers[""].RejectTLS = anyTLS
	hosts := make([]string, 0, len(servers))
	for h := range servers {
		hosts = append(hosts, h)
	}
	sort.Strings(hosts)           // "" (the default server) first
	splitVars := map[string]int{} // claim Target → its split, in d.Splits
	for _, h := range hosts {
		srv := servers[h]
		share(srv, &d, splitVars)
		// Prefix and exact locations by path; regex locations after them in
		// the order they were claimed, which is the order nginx tries them.
		sort.SliceStable(srv.Locations, func(i, j int) bool {
			a, b := srv.Locations[i], srv.Locations[j]
			if a.Regex || b.Regex {
				return !a.Regex && b.Regex
			}
			return a.Path < b.Path || a.Path == b.Path && len(a.Matches[0]) < len(b.Matches[0])
		})
		if dynamic && o.Dynamic.Drain {
			seen := map[string]bool{}
			for _, l := range append(append([]Location(nil), srv.Locations...), srv.Named...) {
				if l.Closer != "" && !seen[l.Closer] {
					seen[l.Closer] = true
					srv.Closers = append(srv.Closers, Location{App: l.App, Upstream: l.Upstream, LB: l.LB, Dynamic: true, Drain: true, Closer: l.Closer,
						RateZone: l.RateZone, RateLimit: l.RateLimit, Headers: l.Headers, Fallback: l.Fallback})
				}
			}
			sort.Slice(srv.Closers, func(i, j int) bool { return srv.Closers[i].Closer < srv.Closers[j].Closer })
		}
		d.Servers = append(d.Servers, *srv)
	}
	return d, conflicts
}

// locationOf is the Location of a's location l: its upstream, closer,
// header match, split shares, rate limit (adding its zone to d) and
// response headers.
func locationOf(a *msg.App, l spec.Location, upstreams map[string]string, apps map[string]*msg.App, d *Data, zones map[string]bool, o Options) Location {
	dynamic := o.Dynamic != nil
	upstream := upstreams[a.Name]
	loc := Location{Path: l.Path, Matches: l.Args(), Regex: l.Match == spec.MatchRegex, App: a.Name, Upstream: upstream, LB: a.LB,
		Dynamic: dynamic, Drain: dynamic && o.Dynamic.Drain, Cond: l.Condition()}
	if l.Rule != nil {
		loc.MatchHeaders = l.Rule.Headers
	}
	if upstream != "" {
		loc.Closer = upstream + "_close"
	}
	if r := l.Rule; r != nil {
		if len(r.Headers) > 0 || len(r.Split) > 0 {
			// Only a location that may be shared is named (share).
			loc.Target = bodyTarget(a.Name, l.Index)
		}
		for j, sp := range r.Split {
			t, ok := apps[sp.App]
			// An app that is not here gets no share, nor in reload mode
			// one with no server or weight. In dynamic mode a share of
			// weight 0 is kept: its weight is pushed, not rendered.
			if !ok || sp.App == a.Name || (!dynamic && (sp.Weight <= 0 || upstreams[sp.App] == "")) {
				continue
			}
			tu := upstreams[sp.App]
			to := Location{App: sp.App, Upstream: tu, LB: t.LB, Dynamic: dynamic, Drain: dynamic && o.Dynamic.Drain, Target: bodyTarget(sp.App, -1),
				body: bodyKey{spec: t, rule: -1, upstream: tu, dynamic: dynamic, drain: dynamic && o.Dynamic.Drain}}
			if tu != "" {
				to.Closer = tu + "_close"
			}
			if dynamic {
				// Its own location, which hands the share back
				// to the rule's app while sp.App has no server,
				// and its own closer, which does too.
				to.Target = fmt.Sprintf("%s_s%d", loc.Target, j)
				to.Fallback = loc.Target
				to.body.fallback = loc.Target
				if tu != "" {
					to.Closer = to.Target + "_close"
				}
			}
			loc.Shares = append(loc.Shares, Share{Percent: sp.Weight, Target: to.Target, Index: j, to: to})
		}
		if r.RateLimit != nil {
			loc.RateZone, loc.RateLimit = rateZoneName(a.Name, l.Index), r.RateLimit
			if !zones[loc.RateZone] {
				zones[loc.RateZone] = true
				d.RateZones = append(d.RateZones, RateZone{Name: loc.RateZone, RPS: r.RateLimit.RPS})
			}
		}
		for _, name := range slices.Sorted(maps.Keys(r.ResponseHeaders)) {
			loc.Headers = append(loc.Headers, Header{Name: name, Value: r.ResponseHeaders[name]})
		}
		if upstream != "" && (loc.RateLimit != nil || len(loc.Headers) > 0) {
			loc.Closer = fmt.Sprintf("%s_close_r%d", upstream, l.Index)
		}
	}
	loc.body = bodyKey{spec: a, rule: l.Index, upstream: upstream, dynamic: dynamic, drain: loc.Drain}
	return loc
}

// covers reports whether an ACME certificate covers host h; without one
// (the lbagent serves a certificate it kept), it is taken to.
func covers(c *msg.Certificate, h string) bool {
	if c == nil {
		return true
	}
	for _, n := range c.Names {
		if strings.EqualFold(n, h) {
			return true
		}
	}
	return false
}

// challengeArgs are the nginx location arguments another app's route
// would share with the challenge location, which nginx refuses as a
// duplicate.
var challengeArgs = []string{spec.ACMEChallengePath, "^~ " + spec.ACMEChallengePath}

// reserveChallengePath takes /.well-known/acme-challenge/ from any route
// of srv that claims it, when an app there has tls.acme: lbagent answers
// it. Such a route keeps its other location arguments, or is dropped and
// reported as a conflict.
func reserveChallengePath(srv *Server, h string, conflicts map[string]string) {
	kept := srv.Locations[:0]
	for _, l := range srv.Locations {
		args := slices.DeleteFunc(slices.Clone(l.Matches), func(a string) bool { return slices.Contains(challengeArgs, a) })
		if len(args) < len(l.Matches) {
			conflicts[l.App] = fmt.Sprintf("%s on host %s is where the ACME CA's challenges are answered, for an app with tls.acme", spec.ACMEChallengePath, hostLabel(h))
		}
		if len(args) == 0 {
			continue
		}
		l.Matches = args
		kept = append(kept, l)
	}
	srv.Locations = kept
}

func hostLabel(h string) string {
	if h == "" {
		return "(default)"
	}
	return h
}

// Comparable returns d without what only the renderer's caches use (each
// location's body key names its app record): two layouts that render the
// same config are DeepEqual once Comparable, whatever else their records
// changed (a generation, a replica count).
func (d Data) Comparable() Data {
	// In dynamic mode a split's weights are pushed, not rendered: a
	// weight change is no layout change.
	dynamic := d.Dynamic != nil
	shares := func(ss []Share) []Share {
		out := make([]Share, len(ss))
		for i, s := range ss {
			s.to.body = bodyKey{}
			if dynamic {
				s.Percent = 0
			}
			out[i] = s
		}
		return out
	}
	strip := func(ls []Location) []Location {
		out := make([]Location, len(ls))
		for i, l := range ls {
			l.body = bodyKey{}
			l.Shares = shares(l.Shares)
			if l.Routed != nil {
				r := *l.Routed
				scs := make([]SplitClients, len(r.Splits))
				for k, sc := range r.Splits {
					sc.Shares = shares(sc.Shares)
					scs[k] = sc
				}
				r.Splits = scs
				l.Routed = &r
			}
			out[i] = l
		}
		return out
	}
	splits := make([]SplitClients, len(d.Splits))
	for i, s := range d.Splits {
		s.Shares = shares(s.Shares)
		splits[i] = s
	}
	d.Splits = splits
	servers := make([]Server, len(d.Servers))
	for i, s := range d.Servers {
		s.Locations, s.Named, s.Closers = strip(s.Locations), strip(s.Named), strip(s.Closers)
		servers[i] = s
	}
	d.Servers = servers
	return d
}

// bodyTarget names the body of an app's rule (or of its paths, rule -1)
// as a named location, for shared locations.
func bodyTarget(app string, rule int) string {
	if rule < 0 {
		return UpstreamName(app) + "_bp"
	}
	return fmt.Sprintf("%s_b%d", UpstreamName(app), rule)
}

// share turns the nginx locations of srv that several claims share (a
// rule with header matches beside another claim of the same location, or
// alone) into Routed locations with their maps, appended to maps: the
// claims' bodies become named locations (Named), and each request goes
// to the first claim, in claim order, whose headers it carries, else to
// the claim without headers, else to @berth_notfound. srv.Locations keeps
// the locations that one claim without headers owns alone, with only
// those arguments.
func share(srv *Server, d *Data, splitVars map[string]int) {
	// Claims without headers or a split never share a location: two on one
	// argument are a conflict, which Layout resolved before.
	if !slices.ContainsFunc(srv.Locations, func(l Location) bool { return l.Cond != "" || len(l.Shares) > 0 }) {
		return
	}
	for i, l := range srv.Locations {
		if l.Target == "" { // a claim without headers that shares its location with one that has them
			srv.Locations[i].Target = bodyTarget(l.App, l.body.rule)
		}
	}
	claims := map[string][]int{} // nginx location argument → claims (srv.Locations index), in claim order
	var args []string
	for i, l := range srv.Locations {
		for _, arg := range l.Matches {
			if _, ok := claims[arg]; !ok {
				args = append(args, arg)
			}
			claims[arg] = append(claims[arg], i)
		}
	}
	shared := map[string]bool{}
	for _, arg := range args {
		c := claims[arg]
		first := srv.Locations[c[0]]
		shared[arg] = len(c) > 1 || first.Cond != "" || len(first.Shares) > 0
	}
	named := map[string]bool{}
	routed := map[string]*Routed{} // shared argument → its routing
	addNamed := func(l Location) {
		if !named[l.Target] {
			named[l.Target] = true
			srv.Named = append(srv.Named, l)
		}
	}
	// target is where a claim's requests go: its named location, or the
	// split_clients variable that shares them with other apps; used
	// collects the splits one location may reach.
	var used []SplitClients
	target := func(l Location) string {
		addNamed(l)
		if len(l.Shares) == 0 {
			return l.Target
		}
		for _, sh := range l.Shares {
			addNamed(sh.to)
		}
		i, ok := splitVars[l.Target]
		if !ok {
			i = len(d.Splits)
			splitVars[l.Target] = i
			d.Splits = append(d.Splits, SplitClients{Var: fmt.Sprintf("$berth_s%d", i), Shares: l.Shares, Rest: l.Target, Owner: l.App, Rule: l.body.rule})
		}
		used = append(used, d.Splits[i])
		return d.Splits[i].Var
	}
	for _, arg := range args {
		if !shared[arg] {
			continue
		}
		n := len(d.Maps)
		used = nil
		def := "berth_notfound"
		var alts []Location
		for _, i := range claims[arg] {
			l := srv.Locations[i]
			if l.Cond == "" {
				def = target(l)
			} else {
				alts = append(alts, l)
			}
		}
		if def == "berth_notfound" {
			srv.NotFound = true
		}
		if len(alts) == 0 { // one claim with a split: its variable decides
			routed[arg] = &Routed{Arg: arg, Var: def, Dynamic: d.Dynamic != nil, Splits: used}
			continue
		}
		// One map per header of each alternative ("1" when it matches),
		// one per alternative ("1" when all did), and a chain that takes
		// the first alternative that matched.
		top := fmt.Sprintf("$berth_r%d", n)
		chain := make([]RouteMap, len(alts))
		for j, l := range alts {
			src, all := "", ""
			for k, name := range slices.Sorted(maps.Keys(l.MatchHeaders)) {
				v := fmt.Sprintf("$berth_r%d_%d_%d", n, j, k)
				d.Maps = append(d.Maps, RouteMap{Var: v, Source: "$http_" + strings.ReplaceAll(strings.ToLower(name), "-", "_"), Default: `""`,
					Entries: []MapEntry{{Key: l.MatchHeaders[name], Value: "1"}}})
				src += v
				all += "1"
			}
			matched := fmt.Sprintf("$berth_r%d_%d", n, j)
			d.Maps = append(d.Maps, RouteMap{Var: matched, Source: src, Default: `""`, Entries: []MapEntry{{Key: "=" + all, Value: "1"}}})
			next := def
			if j+1 < len(alts) {
				next = fmt.Sprintf("$berth_r%d_c%d", n, j+1)
			}
			v := top
			if j > 0 {
				v = fmt.Sprintf("$berth_r%d_c%d", n, j)
			}
			chain[j] = RouteMap{Var: v, Source: matched, Default: next, Entries: []MapEntry{{Key: "=1", Value: target(l)}}}
		}
		d.Maps = append(d.Maps, chain...)
		routed[arg] = &Routed{Arg: arg, Var: top, Dynamic: d.Dynamic != nil, Splits: used}
	}
	// The locations again, in claim order: each shared argument once, where
	// its first claim was, and each claim with the arguments it owns alone.
	kept := make([]Location, 0, len(srv.Locations))
	placed := map[string]bool{}
	for _, l := range srv.Locations {
		var own []string
		for _, arg := range l.Matches {
			switch {
			case !shared[arg]:
				own = append(own, arg)
			case !placed[arg] && routed[arg] != nil:
				placed[arg] = true
				kept = append(kept, Location{Path: l.Path, Matches: []string{arg}, Regex: l.Regex, App: l.App, Routed: routed[arg]})
			}
		}
		if len(own) > 0 {
			l.Matches = own
			kept = append(kept, l)
		}
	}
	srv.Locations = kept
	sort.Slice(srv.Named, func(i, j int) bool { return srv.Named[i].Target < srv.Named[j].Target })
}

// rateZoneName names the limit_req zone of an app's rule.
func rateZoneName(app string, rule int) string {
	return fmt.Sprintf("berth_rl_%s_%d", strings.ReplaceAll(app, "-", "_"), rule)
}

// Renderer executes the templates. It is safe for concurrent use.
type Renderer struct {
	tmpl *template.Template
	// lastLen sizes the next output buffer: a large config grows it
	// through many copies otherwise.
	lastLen atomic.Int64

	// bodies are the route bodies rendered, by what they depend on; renders
	// counts renders, to forget the bodies of records no longer served.
	bodyMu  sync.Mutex
	bodies  map[bodyKey]*cachedBody
	renders uint64
}

// Load parses every *.tmpl in fsys.
func Load(fsys fs.FS) (*Renderer, error) {
	r := &Renderer{bodies: map[bodyKey]*cachedBody{}}
	t, err := template.New("berth").Option("missingkey=error").Funcs(funcs).Funcs(template.FuncMap{"route": r.route, "locations": r.locations, "serverLocations": r.serverLocations}).ParseFS(fsys, "*.tmpl")
	if err != nil {
		return nil, fmt.Errorf("parse templates: %w", err)
	}
	for _, name := range []string{"nginx.conf.tmpl", "http", "upstream", "server", "location", "route", "routed", "acme"} {
		if t.Lookup(name) == nil {
			return nil, fmt.Errorf("parse templates: template %q is missing", name)
		}
	}
	r.tmpl = t
	return r, nil
}

// route is the helper that executes the "route" template for a location,
// once for all the locations that share its body (bodyKey), kept across
// renders while their app record is served.
func (r *Renderer) route(l Location) (string, error) { return r.routeOf(&l) }

func (r *Renderer) routeOf(l *Location) (string, error) {
	if l.body.spec == nil { // not from Layout: nothing to share
		var b strings.Builder
		err := r.tmpl.ExecuteTemplate(&b, "route", l)
		return b.String(), err
	}
	r.bodyMu.Lock()
	e, ok := r.bodies[l.body]
	if ok {
		e.used = r.renders
		r.bodyMu.Unlock()
		return e.text, nil
	}
	r.bodyMu.Unlock()
	var b strings.Builder
	if err := r.tmpl.ExecuteTemplate(&b, "route", l); err != nil {
		return "", err
	}
	r.bodyMu.Lock()
	r.bodies[l.body] = &cachedBody{text: b.String(), used: r.renders}
	r.bodyMu.Unlock()
	return b.String(), nil
}

// locations is the helper that writes a route's location blocks, one per
// nginx argument (Matches), each argument checked (checkLocation) and each
// with the route body: what ranging over Matches in the template writes,
// in a fraction of the time (9,000 blocks dominate a large render).
func (r *Renderer) locations(l Location) (string, error) {
	body, err := r.routeOf(&l)
	if err != nil {
		return "", err
	}
	var b strings.Builder
	b.Grow(len(l.Matches) * (len(body) + 48))
	err = writeLocations(&b, &l, body)
	return b.String(), err
}

// writeLocations writes l's location blocks with body.
func writeLocations(b *strings.Builder, l *Location, body string) error {
	for _, arg := range l.Matches {
		if err := checkLocation(arg); err != nil {
			return err
		}
		b.WriteString("\n        location ")
		b.WriteString(arg)
		b.WriteString(" {")
		b.WriteString(body)
		b.WriteString("\n        }")
	}
	return nil
}

// serverLocations is the helper that writes every location of a server,
// in order: a shared one ("routed", Location.Routed) through the "routed"
// template, any other as the "location" template writes it (locations),
// each after a newline. What ranging over Locations in the template
// writes, with one helper call a server instead of one a location: the
// calls, through reflection, cost more than the writing.
func (r *Renderer) serverLocations(s Server) (string, error) {
	// The bodies first (cached), so that the text is allocated once.
	bodies := make([]string, len(s.Locations))
	size := 0
	for i := range s.Locations {
		l := &s.Locations[i]
		if l.Routed != nil {
			size += 512
			continue
		}
		body, err := r.routeOf(l)
		if err != nil {
			return "", err
		}
		bodies[i] = body
		size += 1 + len(l.Matches)*(len(body)+48)
	}
	var b strings.Builder
	b.Grow(size)
	for i := range s.Locations {
		l := &s.Locations[i]
		b.WriteByte('\n')
		if l.Routed != nil {
			if err := r.tmpl.ExecuteTemplate(&b, "routed", l.Routed); err != nil {
				return "", err
			}
			continue
		}
		if err := writeLocations(&b, l, bodies[i]); err != nil {
			return "", err
		}
	}
	return b.String(), nil
}

type cachedBody struct {
	text string
	used uint64 // the render that last used it
}

// sweepBodies forgets the bodies the last render did not use, once they
// are as many as the ones it did: records no longer served.
func (r *Renderer) sweepBodies() {
	r.bodyMu.Lock()
	defer r.bodyMu.Unlock()
	stale := 0
	for _, e := range r.bodies {
		if e.used != r.renders {
			stale++
		}
	}
	if stale > 64 && stale*2 > len(r.bodies) {
		for k, e := range r.bodies {
			if e.used != r.renders {
				delete(r.bodies, k)
			}
		}
	}
	r.renders++
}

// Render executes the templates over d: the whole nginx.conf when main is
// true, otherwise the http context alone.
func (r *Renderer) Render(d Data, main bool) ([]byte, error) {
	name := "http"
	if main {
		name = "nginx.conf.tmpl"
	}
	if d.Router && r.tmpl.Lookup("router") == nil {
		// A template directory copied before the router existed would
		// leave every routed app answering 404.
		return nil, fmt.Errorf("render %s: --dynamic-routes needs the template \"router\" (templates/app.conf.tmpl), and a server template that writes it", name)
	}
	var b bytes.Buffer
	b.Grow(int(r.lastLen.Load()) + 4096)
	err := r.tmpl.ExecuteTemplate(&b, name, d)
	r.sweepBodies()
	if err != nil {
		return nil, fmt.Errorf("render %s: %w", name, err)
	}
	r.lastLen.Store(int64(b.Len()))
	return b.Bytes(), nil
}

// checked makes a template helper of a grammar check: the value passes
// through unchanged, or the render fails with the check's error.
func checked(check func(string) error) func(string) (string, error) {
	return func(s string) (string, error) {
		if err := check(s); err != nil {
			return "", err
		}
		return s, nil
	}
}

// checkUpstream checks an upstream name as UpstreamName makes it.
func checkUpstream(s string) error {
	name, ok := strings.CutPrefix(s, "berth_")
	if !ok || name == "" {
		return fmt.Errorf("upstream %q is not berth_<app>", s)
	}
	for _, r := range name {
		if (r < 'a' || r > 'z') && (r < '0' || r > '9') && r != '_' {
			return fmt.Errorf("upstream %q is not berth_<app>", s)
		}
	}
	return nil
}

// checkLocation checks a location argument as locationMatches makes it:
// a routing path, "= " and one, or "~ " and a rule's regex.
func checkLocation(s string) error {
	if re, ok := strings.CutPrefix(s, "~ "); ok {
		return checkRegexCached(re)
	}
	return spec.CheckPath(strings.TrimPrefix(s, "= "))
}

// validRegexes remembers the regexes spec.CheckRegex accepted (it
// compiles each, a tenth of a large render otherwise); at most
// maxValidRegexes, then it starts over.
var (
	validMu         sync.Mutex
	validRegexes    = map[string]bool{}
	maxValidRegexes = 1 << 16
)

func checkRegexCached(re string) error {
	validMu.Lock()
	ok := validRegexes[re]
	validMu.Unlock()
	if ok {
		return nil
	}
	if err := spec.CheckRegex(re); err != nil {
		return err
	}
	validMu.Lock()
	if len(validRegexes) >= maxValidRegexes {
		clear(validRegexes)
	}
	validRegexes[re] = true
	validMu.Unlock()
	return nil
}

// checkTarget checks a named location's name as bodyTarget makes it, or
// berth_notfound.
func checkTarget(s string) error {
	if s == "berth_notfound" {
		return nil
	}
	if i := strings.LastIndex(s, "_s"); i > 0 && s[i+2:] != "" && strings.Trim(s[i+2:], "0123456789") == "" {
		s = s[:i] // a share's location: <rule's location>_s<share>
	}
	i := strings.LastIndex(s, "_b")
	if i < 0 || checkUpstream(s[:i]) != nil || (s[i+2:] != "p" && (s[i+2:] == "" || strings.Trim(s[i+2:], "0123456789") != "")) {
		return fmt.Errorf("named location %q is not <upstream>_b<rule>[_s<share>] or <upstream>_bp", s)
	}
	return nil
}

// checkMapVar checks a map or split_clients variable as share makes it:
// $berth_r or $berth_s, then digits, '_' and 'c'.
func checkMapVar(s string) error {
	rest, ok := strings.CutPrefix(s, "$berth_r")
	if !ok {
		rest, ok = strings.CutPrefix(s, "$berth_s")
	}
	if !ok || rest == "" || strings.Trim(rest, "0123456789_c") != "" {
		return fmt.Errorf("variable %q is not $berth_r… or $berth_s…", s)
	}
	return nil
}

// mapSource writes a map's source: one header variable ($http_NAME), or
// map variables (checkMapVar) joined, quoted.
func mapSource(s string) (string, error) {
	if name, ok := strings.CutPrefix(s, "$http_"); ok {
		if name == "" || strings.Trim(name, "abcdefghijklmnopqrstuvwxyz0123456789_") != "" {
			return "", fmt.Errorf("map source %q is not $http_<name>", s)
		}
		return s, nil
	}
	parts := strings.Split(strings.TrimPrefix(s, "$"), "$")
	for _, p := range parts {
		if err := checkMapVar("$" + p); err != nil {
			return "", err
		}
	}
	return `"` + s + `"`, nil
}

// mapKey writes a map key: "=" and digits (an alternative's matches) as
// themselves; "~" and a header regex, quoted; any other string an exact
// header value (spec.CheckHeaderMatch), quoted behind a backslash, which
// map removes, so that no value reads as one of map's special words.
func mapKey(s string) (string, error) {
	if digits, ok := strings.CutPrefix(s, "="); ok {
		if digits == "" || strings.Trim(digits, "1") != "" {
			return "", fmt.Errorf("map key %q is not =1…", s)
		}
		return digits, nil
	}
	if err := spec.CheckHeaderMatch(s); err != nil {
		return "", err
	}
	if strings.HasPrefix(s, "~") {
		return `"` + s + `"`, nil
	}
	return `"\\` + s + `"`, nil
}

// mapValue writes a map value: "" (empty), 1, a named location
// (checkTarget) or a map variable (checkMapVar).
func mapValue(s string) (string, error) {
	switch {
	case s == `""` || s == "1":
		return s, nil
	case strings.HasPrefix(s, "$"):
		return s, checkMapVar(s)
	}
	return s, checkTarget(s)
}

// checkZone checks a limit_req zone name as rateZoneName makes it.
func checkZone(s string) error {
	name, ok := strings.CutPrefix(s, "berth_rl_")
	if !ok || name == "" || strings.Trim(name, "abcdefghijklmnopqrstuvwxyz0123456789_") != "" {
		return fmt.Errorf("zone %q is not berth_rl_<app>_<rule>", s)
	}
	return nil
}

// checkCloser checks a closer's name: an upstream name, then "_close" and
// optionally "_r<rule>".
func checkCloser(s string) error {
	base, ok := strings.CutSuffix(s, "_close")
	if i := strings.LastIndex(s, "_close_r"); !ok && i > 0 {
		digits := s[i+len("_close_r"):]
		base, ok = s[:i], digits != "" && strings.Trim(digits, "0123456789") == ""
	}
	if !ok || checkUpstream(base) != nil {
		return fmt.Errorf("closer %q is not <upstream>_close[_r<rule>]", s)
	}
	return nil
}

// secs writes d for parameters nginx parses in whole seconds (fail_timeout),
// rounded up so a sub-second value does not become 0 (off).
func secs(d spec.Duration) string { return fmt.Sprintf("%ds", (d.Std()+time.Second-1)/time.Second) }

// serverLines writes an upstream's server lines, each address checked as
// the addr helper does: the same text as ranging over u.Servers in the
// template, in a tenth of the time (10,000 lines dominate a large render).
func serverLines(u Upstream) (string, error) {
	var b strings.Builder
	b.Grow(len(u.Servers) * (48 + len(u.ServerParams)))
	for _, s := range u.Servers {
		if err := msg.CheckAddress(s.Address); err != nil {
			return "", err
		}
		b.WriteString("\n        server ")
		b.WriteString(s.Address)
		b.WriteString(" weight=")
		b.WriteString(strconv.Itoa(s.Weight))
		b.WriteString(u.ServerParams)
		if s.Backup {
			b.WriteString(" backup")
		}
		b.WriteByte(';')
	}
	return b.String(), nil
}

// funcs are the only way values reach the text: each checks its value
// against the grammar nginx needs and fails the render otherwise.
var funcs = template.FuncMap{
	"name":     checked(spec.CheckName),
	"upstream": checked(checkUpstream),
	"location": checked(checkLocation),
	"host":     checked(spec.CheckHost),
	"file":     checked(spec.CheckFilePath),
	"addr":     checked(msg.CheckAddress),
	"listen":   checked(msg.CheckAddress),
	"hashkey":  checked(spec.CheckHashKey),
	"zone":     checked(checkZone),
	"target":   checked(checkTarget),
	"mapvar":   checked(checkMapVar),
	"mapsrc":   mapSource,
	"mapkey":   mapKey,
	"mapval":   mapValue,
	"closer":   checked(checkCloser),
	"header":   checked(spec.CheckHeaderName),
	"hvalue": func(s string) (string, error) {
		if err := spec.CheckResponseHeaderValue(s); err != nil {
			return "", err
		}
		return `"` + s + `"`, nil
	},
	"quote": func(s string) (string, error) {
		if !spec.NginxSafe(s) {
			return "", fmt.Errorf("%q cannot be quoted for nginx", s)
		}
		return `"` + s + `"`, nil
	},
	"servers": serverLines,
	"dur":     func(d spec.Duration) string { return fmt.Sprintf("%dms", d.Std().Milliseconds()) },
	"secs":    secs,
	"size": func(b spec.ByteSize) (string, error) {
		if b < 0 {
			return "", fmt.Errorf("negative size %d", b)
		}
		return fmt.Sprint(int64(b)), nil
	},
}
