package spec

import (
	"bytes"
	"cmp"
	"encoding/json"
	"fmt"
	"regexp/syntax"
	"slices"
	"strings"
	"time"
)

// The route table: who may route what on each host. Apps are tenants, and
// one of them may be an attacker, so a claim is decided by one function,
// Claims, that the API calls at apply, the scheduler's publisher before it
// reports conflicts, and lbagent before it renders or pushes anything.
//
// The rules:
//   - A host (an app's routing.hosts, or the default server for an app
//     with none) belongs to the app that claimed it first: the one whose
//     claim of that host the scheduler recorded earliest (Claimant.Claimed).
//     The owner alone sets its TLS and its redirect.
//   - Another app routes there only when the owner lists it in
//     routing.share_with (a member). Any other app gets nothing on that host.
//   - On a host, each nginx location (LocationKeys) goes to the first app,
//     owner first, that claims it.
//   - A member never shadows the owner: no header rule on a location the
//     owner routes, and no regex that can match a path under one of the
//     owner's prefixes, unless the owner names that path in the member's
//     share_with entry (paths). Below the owner's "/", a member may take
//     a path of its own by prefix, exact match or a regex anchored on a
//     literal path of at least one character after the "/": that is what
//     sharing a host is for.
//   - Splits are written by the owner of the rule, so their targets need
//     no share.

// Conflict reasons.
const (
	// ConflictHost is an app routing on a host another app owns, which
	// does not share it with the app.
	ConflictHost = "host"
	// ConflictRoute is a location another app claimed first on the host.
	ConflictRoute = "route"
	// ConflictShadow is a member's header or regex rule that would take
	// requests from a path the owner routes.
	ConflictShadow = "shadow"
	// ConflictTLS is a member's TLS on a host whose owner alone sets it.
	ConflictTLS = "tls"
)

// MaxShares bounds routing.share_with.
const MaxShares = 32

// Share is one app that the owner of a host lets route on its hosts
// (routing.share_with): written as the app's name, or as {app, paths}.
type Share struct {
	// App is the app that may route on this app's hosts.
	App string `json:"app"`
	// Paths are routes of this app (its paths, or its prefix and exact
	// rules) that App's header and regex rules may also take requests
	// from: a canary by header over "/", say.
	Paths []string `json:"paths,omitempty"`
}

// shareObject is the mapping form of a Share.
type shareObject struct {
	App   string   `json:"app"`
	Paths []string `json:"paths,omitempty"`
}

// UnmarshalJSON reads an app name, or the mapping {app, paths}, strictly.
func (s *Share) UnmarshalJSON(b []byte) error {
	var name string
	if err := json.Unmarshal(b, &name); err == nil {
		*s = Share{App: name}
		return nil
	}
	var o shareObject
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&o); err != nil {
		return fmt.Errorf("must be an app name, or a mapping {app, paths}: %w", err)
	}
	*s = Share(o)
	return nil
}

// MarshalJSON writes the app's name alone when s names no paths.
func (s Share) MarshalJSON() ([]byte, error) {
	if len(s.Paths) == 0 {
		return json.Marshal(s.App)
	}
	return json.Marshal(shareObject(s))
}

// Claimant is one app as the route table sees it.
type Claimant struct {
	Name string
	// Created is when the app was created; a tie-break after Claimed.
	Created time.Time
	// Claimed is when the app first claimed each of its hosts (HostKey),
	// as the scheduler records it. Nil: every host at Created (a record
	// of an older scheduler). A host missing from a non-nil Claimed is
	// claimed now, after every recorded claim.
	Claimed map[string]time.Time
	// Routing is the app's routing, defaulted and validated. Its
	// locations point into it.
	Routing *Routing
}

// HostKey is the route table's key of a host: lower case, "" for the
// default server (an app without hosts).
func HostKey(h string) string { return strings.ToLower(h) }

// Hosts are the host keys r claims: its hosts, or the default server.
func (r Routing) HostKeys() []string {
	if len(r.Hosts) == 0 {
		return []string{""}
	}
	out := make([]string, len(r.Hosts))
	for i, h := range r.Hosts {
		out[i] = HostKey(h)
	}
	return out
}

// claimedAt is when c claimed host h, and whether that is recorded.
func (c *Claimant) claimedAt(h string) (time.Time, bool) {
	if c.Claimed == nil {
		return c.Created, !c.Created.IsZero()
	}
	t, ok := c.Claimed[h]
	return t, ok && !t.IsZero()
}

// claimsBefore orders the claims of one host: recorded before not
// recorded, then earlier first, then by creation (ClaimsBefore).
func claimsBefore(h string, a, b *Claimant) bool {
	ta, oka := a.claimedAt(h)
	tb, okb := b.claimedAt(h)
	switch {
	case oka != okb:
		return oka
	case oka && !ta.Equal(tb):
		return ta.Before(tb)
	}
	return ClaimsBefore(a.Name, a.Created, b.Name, b.Created)
}

// Conflict is a claim an app does not get: a host it is not let route on,
// a location claimed first by another app, a rule that would shadow the
// owner, or TLS on a host whose owner alone sets it.
type Conflict struct {
	// App is the app that does not get the claim.
	App string
	// Host is the host key ("" for the default server).
	Host string
	// Holder is the app that holds it: the host's owner, or the app that
	// claimed the location first.
	Holder string
	// Reason is one of the Conflict… constants.
	Reason string
	// Location is App's location (ConflictRoute, ConflictShadow).
	Location *Location
	// Shadowed is the holder's route that Location would take requests
	// from (ConflictShadow).
	Shadowed string
	// Field is the spec field of App the conflict is about:
	// routing.hosts[i], routing.paths[i], routing.rules[i].path or
	// routing.tls.
	Field string
}

// Error says what App does not get, from whom and what to do.
func (c Conflict) Error() string {
	host := "host " + c.Host
	if c.Host == "" {
		host = "the default server (apps without routing.hosts)"
	}
	switch c.Reason {
	case ConflictHost:
		return fmt.Sprintf("%s belongs to app %s, which claimed it first: app %s may route there only when %s lists it in routing.share_with",
			host, c.Holder, c.App, c.Holder)
	case ConflictTLS:
		return fmt.Sprintf("%s belongs to app %s, which alone sets its TLS and redirect: remove routing.tls, or give app %s hosts of its own",
			host, c.Holder, c.App)
	case ConflictShadow:
		what := c.Location.Label() + " with a header match"
		if c.Location.Match == MatchRegex {
			what = c.Location.Label()
		}
		return fmt.Sprintf("%s on %s would take requests for path %s of app %s, which owns the host: %s must name %s in the paths of its routing.share_with entry for app %s",
			what, host, c.Shadowed, c.Holder, c.Holder, c.Shadowed, c.App)
	}
	return fmt.Sprintf("%s on %s is already routed to app %s, which claimed it first", c.Location.Label(), host, c.Holder)
}

// HostRoutes are the claims granted on one host.
type HostRoutes struct {
	// Host is the host key ("" for the default server).
	Host string
	// Owner is the app that owns it; its TLS and redirect serve there.
	Owner string
	// Apps are the apps that route there, owner first, in claim order,
	// each with the locations it got (possibly none).
	Apps []AppRoutes
}

// AppRoutes are the locations one app got on one host, in the order of
// its Routing.Locations.
type AppRoutes struct {
	App       string
	Locations []Location
}

// RouteTable is the outcome of Claims. It is read-only once made.
type RouteTable struct {
	hosts     []HostRoutes
	byHost    map[string]int
	conflicts map[string][]Conflict
	// idx, kept by ClaimsIndexed and Update, is what Update needs.
	idx *claimIndex
}

// Hosts are the hosts claimed, sorted by key ("" first).
func (t *RouteTable) Hosts() []HostRoutes { return t.hosts }

// Owner is the app that owns host key h, "" when none claims it.
func (t *RouteTable) Owner(h string) string {
	if i, ok := t.byHost[h]; ok {
		return t.hosts[i].Owner
	}
	return ""
}

// Conflicts are the claims app does not get, by host, then field.
func (t *RouteTable) Conflicts(app string) []Conflict { return t.conflicts[app] }

// Conflicted are the apps with conflicts, sorted.
func (t *RouteTable) Conflicted() []string {
	out := make([]string, 0, len(t.conflicts))
	for a := range t.conflicts {
		out = append(out, a)
	}
	slices.Sort(out)
	return out
}

// Granted returns the locations app got on host key h.
func (t *RouteTable) Granted(app, h string) ([]Location, bool) {
	i, ok := t.byHost[h]
	if !ok {
		return nil, false
	}
	for _, a := range t.hosts[i].Apps {
		if a.App == app {
			return a.Locations, true
		}
	}
	return nil, false
}

// Claims decides the route table of apps (see the rules above). It is
// pure: the same apps give the same table, whatever their order. An app
// named twice is taken once, the first time.
func Claims(apps []Claimant) *RouteTable { return claims(apps, false) }

// claims is Claims; keep keeps the claimants by app and by host for Update.
func claims(apps []Claimant, keep bool) *RouteTable {
	t := &RouteTable{byHost: map[string]int{}, conflicts: map[string][]Conflict{}}
	byName := make(map[string]*Claimant, len(apps))
	byHost := map[string][]*Claimant{}
	for i := range apps {
		c := &apps[i]
		if _, dup := byName[c.Name]; dup || c.Routing == nil {
			continue
		}
		byName[c.Name] = c
		for _, h := range hostKeysOf(c) {
			byHost[h] = append(byHost[h], c)
		}
	}
	keys := make([]string, 0, len(byHost))
	for h := range byHost {
		keys = append(keys, h)
	}
	slices.Sort(keys)
	for _, h := range keys {
		cs := byHost[h]
		sortClaims(h, cs)
		t.byHost[h] = len(t.hosts)
		t.hosts = append(t.hosts, t.host(h, cs))
	}
	for app, cs := range t.conflicts {
		sortConflicts(cs)
		t.conflicts[app] = cs
	}
	if keep {
		t.idx = &claimIndex{byName: byName, byHost: byHost}
	}
	return t
}

// sortClaims puts the claimants of host h in claim order.
func sortClaims(h string, cs []*Claimant) {
	slices.SortStableFunc(cs, func(a, b *Claimant) int {
		switch {
		case claimsBefore(h, a, b):
			return -1
		case claimsBefore(h, b, a):
			return 1
		}
		return 0
	})
}

// sortConflicts orders one app's conflicts by host, then field.
func sortConflicts(cs []Conflict) {
	slices.SortStableFunc(cs, func(a, b Conflict) int {
		return cmp.Or(strings.Compare(a.Host, b.Host), strings.Compare(a.Field, b.Field))
	})
}

// owned is one of the owner's locations on a host, for the shadow rule.
type owned struct {
	loc   Location
	route string // its route, as share_with's paths name it
}

// host decides the claims of one host; cs are its claimants in claim order.
func (t *RouteTable) host(h string, cs []*Claimant) HostRoutes {
	owner := cs[0]
	hr := HostRoutes{Host: h, Owner: owner.Name}
	held := map[string]string{} // LocationKeys → app
	var mine []owned
	for _, c := range cs {
		isOwner := c == owner
		var share *Share
		if !isOwner {
			share = owner.Routing.shareFor(c.Name)
			if share == nil {
				t.add(Conflict{App: c.Name, Host: h, Holder: owner.Name, Reason: ConflictHost, Field: hostField(c.Routing, h)})
				continue
			}
			if tls := c.Routing.TLS; tls != nil && !sameFiles(owner.Routing.TLS, tls) {
				t.add(Conflict{App: c.Name, Host: h, Holder: owner.Name, Reason: ConflictTLS, Field: "routing.tls"})
				continue
			}
		}
		ar := AppRoutes{App: c.Name}
		for i, l := range c.Routing.Locations() {
			ks := LocationKeys(h, l)
			holder := ""
			for _, k := range ks {
				holder = cmp.Or(holder, held[k])
			}
			if holder != "" {
				if holder != c.Name { // the same app twice ("/x" and a rule "/x/"): one location
					t.add(Conflict{App: c.Name, Host: h, Holder: holder, Reason: ConflictRoute, Location: &l, Field: locationField(c.Routing, i, l)})
				}
				continue
			}
			if !isOwner {
				if route, ok := shadows(l, mine); ok && !slices.Contains(share.routes(), route) {
					t.add(Conflict{App: c.Name, Host: h, Holder: owner.Name, Reason: ConflictShadow, Location: &l, Shadowed: route, Field: locationField(c.Routing, i, l)})
					continue
				}
			}
			for _, k := range ks {
				held[k] = c.Name
			}
			ar.Locations = append(ar.Locations, l)
			if isOwner {
				mine = append(mine, owned{loc: l, route: l.Path})
			}
		}
		hr.Apps = append(hr.Apps, ar)
	}
	return hr
}

func (t *RouteTable) add(c Conflict) { t.conflicts[c.App] = append(t.conflicts[c.App], c) }

// sameFiles reports whether a member's TLS is the owner's certificate
// files themselves: then it changes nothing. Anything else (another
// certificate, a self-signed or an ACME one made for the member) is the
// owner's to set.
func sameFiles(owner, member *TLS) bool {
	return owner != nil && *owner == *member && !owner.ACME && !owner.SelfSigned
}

// shareFor returns the share_with entry of app, nil when r does not
// share its hosts with it.
func (r *Routing) shareFor(app string) *Share {
	for i := range r.ShareWith {
		if r.ShareWith[i].App == app {
			return &r.ShareWith[i]
		}
	}
	return nil
}

// routes are the routes s names (RoutePath).
func (s *Share) routes() []string {
	out := make([]string, len(s.Paths))
	for i, p := range s.Paths {
		out[i] = RoutePath(p)
	}
	return out
}

// shadows reports whether a member's location l would take requests from
// one of the owner's locations, and the route of the first such one.
//   - A header match on a location argument the owner routes takes the
//     requests that carry the header from it.
//   - Under a prefix p of the owner's other than "/", nginx gives a
//     request to the longest prefix, to an exact location, or to any
//     regex that matches it (regexes are tried after the longest prefix,
//     and the owner's come first): so a member's longer prefix, exact
//     path or regex that can match a path under p takes requests from p.
//     A regex's literal prefixes (regexPrefixes) bound what it can match.
//   - Under the owner's "/", a member may take paths of its own: a
//     prefix, an exact path other than "/" itself, or a regex whose
//     literal prefix is a path of at least one character after the "/".
func shadows(l Location, mine []owned) (string, bool) {
	headers := l.Rule != nil && len(l.Rule.Headers) > 0
	for _, o := range mine {
		if headers && slices.ContainsFunc(l.Args(), func(a string) bool { return slices.Contains(o.loc.Args(), a) }) {
			return o.route, true
		}
		if o.loc.Match != MatchPrefix {
			continue
		}
		cover := o.loc.Path
		if !strings.HasSuffix(cover, "/") {
			cover += "/"
		}
		root := cover == "/"
		switch l.Match {
		case MatchRegex:
			for _, q := range regexPrefixes(l.Path) {
				if root && len(q) < 2 || !root && (strings.HasPrefix(q, cover) || strings.HasPrefix(cover, q)) {
					return o.route, true
				}
			}
		case MatchExact:
			if root && l.Path == "/" || !root && strings.HasPrefix(l.Path, cover) {
				return o.route, true
			}
		default:
			if !root && strings.HasPrefix(l.Path+"/", cover) {
				return o.route, true
			}
		}
	}
	return "", false
}

// regexPrefixes are literal strings that every path a regex matches
// starts with, one per top-level alternative; "" for an alternative that
// can match anywhere in the path (unanchored) or starts with no literal.
// A regex that does not parse gives {""}: it could match anything.
func regexPrefixes(re string) []string {
	r, err := syntax.Parse(re, syntax.Perl)
	if err != nil {
		return []string{""}
	}
	alts := []*syntax.Regexp{r}
	if r.Op == syntax.OpAlternate {
		alts = r.Sub
	}
	out := make([]string, 0, len(alts))
	for _, a := range alts {
		out = append(out, anchoredLiteral(a))
	}
	return out
}

// anchoredLiteral is the literal that a match of r must start the path
// with: r begins with ^ and then literal characters (case-sensitive); ""
// otherwise.
func anchoredLiteral(r *syntax.Regexp) string {
	subs := []*syntax.Regexp{r}
	if r.Op == syntax.OpConcat {
		subs = r.Sub
	}
	if len(subs) == 0 || subs[0].Op != syntax.OpBeginLine && subs[0].Op != syntax.OpBeginText {
		return ""
	}
	var b strings.Builder
	for _, s := range subs[1:] {
		for s.Op == syntax.OpCapture && len(s.Sub) == 1 && s.Sub[0].Op == syntax.OpLiteral {
			s = s.Sub[0]
		}
		if s.Op != syntax.OpLiteral || s.Flags&syntax.FoldCase != 0 {
			break
		}
		for _, c := range s.Rune {
			b.WriteRune(c)
		}
	}
	return b.String()
}

// hostField is the spec field of host key h in r.
func hostField(r *Routing, h string) string {
	for i, x := range r.Hosts {
		if HostKey(x) == h {
			return Index("routing.hosts", i)
		}
	}
	return "routing.hosts"
}

// locationField is the spec field of r's i-th location (Locations).
func locationField(r *Routing, i int, l Location) string {
	if l.Rule == nil {
		return Index("routing.paths", i)
	}
	return Join(Index("routing.rules", l.Index), "path")
}

// ClaimErrors are the conflicts of app as spec errors, each on its field,
// at most max of them (the rest counted in the last one).
func ClaimErrors(cs []Conflict, max int) Errors {
	var es Errors
	for i, c := range cs {
		if i == max {
			es.Add("routing", "and %d more conflicts of the same kind", len(cs)-max)
			break
		}
		es.Add(c.Field, "%s", c.Error())
	}
	return es
}

// validateShares checks routing.share_with: apps by name, each once, and
// paths that are routes of this app's own (a path, or a prefix or exact
// rule). The app's own name is taken by Validate's caller (App.Validate).
func validateShares(path string, r Routing) Errors {
	var es Errors
	if len(r.ShareWith) > MaxShares {
		es.Add(path, "has %d apps; at most %d", len(r.ShareWith), MaxShares)
	}
	routes := map[string]bool{}
	for _, l := range r.Locations() {
		if l.Match != MatchRegex {
			routes[RoutePath(l.Path)] = true
		}
	}
	seen := map[string]int{}
	for i, s := range r.ShareWith {
		sp := Index(path, i)
		ap := Join(sp, "app")
		if s.App == "" || CheckName(s.App) != nil {
			es.Add(ap, "%q is not an app name (a DNS label: lower-case letters, digits and '-')", s.App)
		} else if j, dup := seen[s.App]; dup {
			es.Add(ap, "%q repeats %s", s.App, Index(path, j))
		} else {
			seen[s.App] = i
		}
		if len(s.Paths) > MaxPaths {
			es.Add(Join(sp, "paths"), "has %d paths; at most %d", len(s.Paths), MaxPaths)
		}
		for k, p := range s.Paths {
			pp := Index(Join(sp, "paths"), k)
			if err := CheckPath(p); err != nil {
				es.Check(pp, err)
				continue
			}
			if !routes[RoutePath(p)] {
				es.Add(pp, "%q is not a route of this app (routing.paths, or a prefix or exact rule): share_with's paths name routes of the owner's that %s's header and regex rules may take requests from", p, s.App)
			}
		}
	}
	return es
}
