// Package dynamic owns lbagent's side of dynamic upstreams: the endpoint
// sets of a state snapshot in the shape nginx's Lua balancer
// (templates/lua/berth/dynamic.lua) takes, the versioned batches pushed to
// it through the control endpoint on nginx's status listener, the snapshot
// file nginx loads when it starts or reloads, and the control token. An
// endpoint change — a scale, a rollout step, a health flip, a killed
// container — is a push: no file changes and nginx does not reload. With
// --dynamic-routes the sets of the apps nginx's Lua router routes carry
// their routes too (render.RoutedApps), so creating, changing or removing
// such an app is a push as well.
package dynamic

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"maps"
	"net/http"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/berthhq/berth/common/msg"
	"github.com/berthhq/berth/common/spec"
	"github.com/berthhq/berth/lbagent/internal/atomicfile"
	"github.com/berthhq/berth/lbagent/internal/render"
	"github.com/berthhq/berth/lbagent/internal/state"
)

// Server is one endpoint of an app.
type Server struct {
	Address string `json:"address"`
	Weight  int    `json:"weight"`
	Backup  bool   `json:"backup"`
}

// Endpoints is an app's endpoint set and how the balancer picks among it.
type Endpoints struct {
	Method string `json:"method"`
	// MaxFails failures within FailTimeout (seconds) mark a server failed
	// for FailTimeout; 0 disables passive marking.
	MaxFails    int      `json:"max_fails"`
	FailTimeout float64  `json:"fail_timeout"`
	Servers     []Server `json:"servers"`
	// Splits are the weights of the app's rules' splits, by rule index
	// (decimal), one per split entry in spec order: nginx's Lua split reads
	// them, so a weight change is a push, not a reload.
	Splits map[string][]int `json:"splits,omitempty"`
	// Routes (an app the Lua router routes, render.RoutedApps) are the
	// locations the route table grants the app, by host: nginx's router
	// looks requests up in them, so a route change is a push. Nil for an
	// app that is rendered.
	Routes []render.HostRoute `json:"routes,omitempty"`
	// Rules (an app the Lua router routes) are its routing.rules as the
	// router needs them, by index: what a route's Rule names.
	Rules []Rule `json:"rules,omitempty"`
	// HashKey (a routed app with method hash) is its lb.hash_key, which
	// the router evaluates per request as the rendered location's
	// "set $berth_hash_key" would.
	HashKey string `json:"hash_key,omitempty"`
	// MaxBodySize (a routed app) is its lb.client_max_body_size in
	// bytes, 0 for no limit: the router answers 413 past it.
	MaxBodySize *int64 `json:"max_body_size,omitempty"`
	// ConnectTimeout and ReadTimeout (seconds) and Tries are the app's
	// proxy_connect_timeout, proxy_read_timeout (and send) and
	// proxy_next_upstream_tries, which the router sets per request. Every
	// app's set has them when the router is on: a routed app's split may
	// send a request to any app.
	ConnectTimeout float64 `json:"connect_timeout,omitempty"`
	ReadTimeout    float64 `json:"read_timeout,omitempty"`
	Tries          int     `json:"tries,omitempty"`
}

// Rule is one rule of an app the Lua router routes.
type Rule struct {
	// Headers are the rule's header match: name → exact value (compared
	// ignoring case, as nginx's map) or "~" and a regex.
	Headers map[string]string `json:"headers,omitempty"`
	// Split are the apps of the rule's split, in spec order; their weights
	// are Splits[rule index].
	Split []string `json:"split,omitempty"`
	// ResponseHeaders are added to every answer of the rule (add_header
	// … always), as name and value, sorted by name.
	ResponseHeaders [][2]string `json:"response_headers,omitempty"`
	// RateLimit is the rule's limit_req: requests per second per client
	// address, and the burst served without delay.
	RateLimit *spec.RateLimit `json:"rate_limit,omitempty"`
}

// Batch is one push: every changed app (nil removes one), or every app
// when Full. Versions only grow.
type Batch struct {
	Version uint64                `json:"version"`
	Full    bool                  `json:"full"`
	Apps    map[string]*Endpoints `json:"apps"`
}

// Of returns the endpoint set of every app in snap, without routes.
func Of(snap state.Snapshot) map[string]*Endpoints {
	out := make(map[string]*Endpoints, len(snap.Apps))
	for _, a := range snap.Apps {
		out[a.Spec.Name] = endpointsOf(a, nil, false)
	}
	return out
}

// endpointsOf is a's endpoint set; routes, when not nil, make it an app
// the Lua router routes; router says the router is on (the set carries
// the app's timeouts).
func endpointsOf(a state.App, routes []render.HostRoute, router bool) *Endpoints {
	lb := a.Spec.LB
	e := &Endpoints{Method: lb.Method, MaxFails: lb.MaxFails, FailTimeout: lb.FailTimeout.Std().Seconds(), Servers: make([]Server, 0, len(a.Servers))}
	for _, s := range a.Servers {
		e.Servers = append(e.Servers, Server{Address: s.Address, Weight: max(s.Weight, 1), Backup: s.Backup})
	}
	for i, r := range a.Spec.Routing.Rules {
		if len(r.Split) == 0 {
			continue
		}
		if e.Splits == nil {
			e.Splits = map[string][]int{}
		}
		w := make([]int, len(r.Split))
		for j, sp := range r.Split {
			w[j] = sp.Weight
		}
		e.Splits[strconv.Itoa(i)] = w
	}
	if routes != nil || router {
		e.Tries = lb.NextUpstreamTries
		e.ConnectTimeout, e.ReadTimeout = lb.ConnectTimeout.Std().Seconds(), lb.ReadTimeout.Std().Seconds()
	}
	if routes != nil {
		e.Routes = routes
		if lb.Method == spec.LBHash {
			e.HashKey = lb.HashKey
		}
		size := int64(lb.ClientMaxBodySize)
		e.MaxBodySize = &size
		for _, r := range a.Spec.Routing.Rules {
			rule := Rule{Headers: r.Headers, RateLimit: r.RateLimit}
			for _, sp := range r.Split {
				rule.Split = append(rule.Split, sp.App)
			}
			for _, name := range slices.Sorted(maps.Keys(r.ResponseHeaders)) {
				rule.ResponseHeaders = append(rule.ResponseHeaders, [2]string{name, r.ResponseHeaders[name]})
			}
			e.Rules = append(e.Rules, rule)
		}
	}
	return e
}

// Cache turns snapshots into endpoint sets like Of, and gives back the
// very set it made last time for an app whose record and servers did not
// change, so that Diff skips it by identity. Not safe for concurrent use.
//
// A snapshot with the apps of the last one, in the same order (an
// endpoint change), costs a comparison of pointers per app and its
// changed apps' work: the result is the last one's map cloned with the
// changed sets put in, and Diff of the last result to it is known without
// walking either (Cache.Diff). Every map it returns is never changed
// afterwards.
type Cache struct {
	// Render, when it routes apps by the Lua router (Dynamic.Routes),
	// adds each routed app's routes to its set (render.RoutedApps).
	Render *render.Options

	// last are the cached sets of the last snapshot's apps, in its order;
	// out is the map Of returned for it.
	last []cached
	out  map[string]*Endpoints
	// sorted says last is sorted by name, each name once: Of walks it.
	sorted bool
	// prev is the map returned before out and delta what changed from it
	// to out (nil values: removed); prev is nil when unknown.
	prev, delta map[string]*Endpoints
	// specs and routes are the last route computation and the records it
	// was made of: the same records, in order, route the same.
	specs  []*msg.App
	routes map[string][]render.HostRoute
	// lastRoutes are the routes the entries of last were made with.
	lastRoutes map[string][]render.HostRoute
}

type cached struct {
	spec    *msg.App
	servers []state.Server
	routes  []render.HostRoute
	eps     *Endpoints
}

// fresh reports whether e was made of a with routes r.
func (e *cached) fresh(a state.App, r []render.HostRoute) bool {
	return e.spec == a.Spec && sameServers(e.servers, a.Servers) && (e.routes == nil) == (r == nil) &&
		(len(r) > 0 && len(e.routes) == len(r) && &e.routes[0] == &r[0] || slices.Equal(e.routes, r))
}

// sameServers is slices.Equal, at once for the same slice (the store
// keeps an untouched app's servers).
func sameServers(a, b []state.Server) bool {
	if len(a) == len(b) && (len(a) == 0 || &a[0] == &b[0]) {
		return true
	}
	return slices.Equal(a, b)
}

// Of returns the endpoint set of every app in snap, as Of does, with the
// routes of the apps the Lua router routes.
func (c *Cache) Of(snap state.Snapshot) map[string]*Endpoints {
	routes := c.routesOf(snap)
	sameRoutes := c.out != nil && sameMap(c.lastRoutes, routes)
	c.lastRoutes = routes
	if c.out == nil || !c.sorted {
		return c.rebuild(snap, routes)
	}
	// Walk the last snapshot's apps beside snap's, both sorted by name.
	var delta map[string]*Endpoints
	change := func(name string, e *Endpoints) {
		if delta == nil {
			delta = map[string]*Endpoints{}
		}
		delta[name] = e
	}
	// While the apps are the last ones, their entries are updated in
	// place; from the first that came or went, next holds them.
	last := c.last
	var next []cached
	i := 0
	for k, a := range snap.Apps {
		if next == nil && i == k && k < len(last) && last[k].spec == a.Spec {
			// The last snapshot's record at its place: in order, no name
			// to compare.
			i++
			r := last[k].routes // the same record routes the same in the same route table
			if !sameRoutes {
				r = routes[a.Spec.Name]
			}
			var changed bool
			if last[k], changed = last[k].refresh(a, r, c.router()); changed {
				change(a.Spec.Name, last[k].eps)
			}
			continue
		}
		if k > 0 && snap.Apps[k-1].Spec.Name >= a.Spec.Name {
			return c.rebuild(snap, routes) // not sorted by name
		}
		for i < len(last) && last[i].spec.Name < a.Spec.Name {
			change(last[i].spec.Name, nil) // gone
			i++
		}
		if next == nil && (i != k || i == len(last) || last[i].spec.Name != a.Spec.Name) {
			next = append(make([]cached, 0, len(snap.Apps)), last[:k]...)
		}
		var e cached
		if i < len(last) && last[i].spec.Name == a.Spec.Name {
			e = last[i]
			i++
			r := e.routes
			if e.spec != a.Spec || !sameRoutes {
				r = routes[a.Spec.Name]
			}
			var changed bool
			if e, changed = e.refresh(a, r, c.router()); changed {
				change(a.Spec.Name, e.eps)
			}
		} else {
			r := routes[a.Spec.Name]
			e = cached{spec: a.Spec, servers: a.Servers, routes: r, eps: endpointsOf(a, r, c.router())}
			change(a.Spec.Name, e.eps)
		}
		if next != nil {
			next = append(next, e)
		} else {
			last[k] = e
		}
	}
	for ; i < len(last); i++ {
		change(last[i].spec.Name, nil)
	}
	if next != nil {
		c.last = next
	} else {
		c.last = last[:len(snap.Apps)] // the last ones, or the first of them
	}
	return c.result(delta)
}

// result is the last map with delta applied (nil values: removed), now
// the last one; the last map itself when delta is empty.
func (c *Cache) result(delta map[string]*Endpoints) map[string]*Endpoints {
	if delta == nil {
		c.prev, c.delta = c.out, nil
		return c.out
	}
	out := maps.Clone(c.out)
	for name, e := range delta {
		if e == nil {
			delete(out, name)
		} else {
			out[name] = e
		}
	}
	c.prev, c.delta, c.out = c.out, delta, out
	return out
}

// refresh returns e, made again of a with routes r unless it was made of
// them, and whether its set changed: a new set equal to e's is e's own,
// so that Diff skips it by identity.
func (e cached) refresh(a state.App, r []render.HostRoute, router bool) (cached, bool) {
	if e.fresh(a, r) {
		return e, false
	}
	n := cached{spec: a.Spec, servers: a.Servers, routes: r, eps: endpointsOf(a, r, router)}
	if reflect.DeepEqual(n.eps, e.eps) {
		n.eps = e.eps
		return n, false
	}
	return n, true
}

// rebuild is Of from scratch, keeping the sets of unchanged apps.
func (c *Cache) rebuild(snap state.Snapshot, routes map[string][]render.HostRoute) map[string]*Endpoints {
	byName := make(map[string]cached, len(c.last))
	for _, e := range c.last {
		byName[e.spec.Name] = e
	}
	out := make(map[string]*Endpoints, len(snap.Apps))
	last := make([]cached, len(snap.Apps))
	for i, a := range snap.Apps {
		e := byName[a.Spec.Name]
		r := routes[a.Spec.Name]
		if e.spec == nil || !e.fresh(a, r) {
			e = cached{spec: a.Spec, servers: a.Servers, routes: r, eps: endpointsOf(a, r, c.router())}
		}
		out[a.Spec.Name], last[i] = e.eps, e
	}
	c.last, c.out, c.prev, c.delta = last, out, nil, nil
	c.sorted = slices.IsSortedFunc(snap.Apps, func(a, b state.App) int { return strings.Compare(a.Spec.Name, b.Spec.Name) })
	for k := 1; c.sorted && k < len(snap.Apps); k++ {
		c.sorted = snap.Apps[k-1].Spec.Name != snap.Apps[k].Spec.Name
	}
	return out
}

// Diff is Diff(old, next); when next is the last map Of returned and old
// the one before it, it is known without walking them.
func (c *Cache) Diff(old, next map[string]*Endpoints) map[string]*Endpoints {
	if c != nil && old != nil && c.prev != nil && sameMap(next, c.out) && sameMap(old, c.prev) {
		if len(c.delta) == 0 {
			return nil
		}
		return maps.Clone(c.delta)
	}
	return Diff(old, next)
}

// sameMap reports whether a and b are the same map (not equal ones).
func sameMap[V any](a, b map[string]V) bool {
	return reflect.ValueOf(a).UnsafePointer() == reflect.ValueOf(b).UnsafePointer()
}

// router says the Lua router is on: every set carries its timeouts.
func (c *Cache) router() bool {
	return c.Render != nil && c.Render.Dynamic != nil && c.Render.Dynamic.Routes
}

// routesOf is render.RoutedApps of snap, computed again only when its
// app records are not those of the last call.
func (c *Cache) routesOf(snap state.Snapshot) map[string][]render.HostRoute {
	if c.Render == nil || c.Render.Dynamic == nil || !c.Render.Dynamic.Routes {
		return nil
	}
	same := c.specs != nil && len(c.specs) == len(snap.Apps)
	for i := 0; same && i < len(snap.Apps); i++ {
		same = c.specs[i] == snap.Apps[i].Spec
	}
	if !same {
		c.routes = render.RoutedApps(snap, *c.Render)
		c.specs = make([]*msg.App, len(snap.Apps))
		for i, a := range snap.Apps {
			c.specs[i] = a.Spec
		}
	}
	return c.routes
}

// KeepRoutes returns next where an app that the Lua router routed in
// served (its set has routes) and is rendered in next keeps its routes
// and timeouts: the file nginx loads as it reloads, so that the workers
// the reload replaces, which have no server block for the app, still
// route it until the new ones serve it. next itself (without them) is
// pushed once the reload is served. next is not changed.
func KeepRoutes(next, served map[string]*Endpoints) map[string]*Endpoints {
	var out map[string]*Endpoints
	for name, e := range next {
		s := served[name]
		if e.Routes != nil || s == nil || s.Routes == nil {
			continue
		}
		if out == nil {
			out = maps.Clone(next)
		}
		k := *e
		k.Routes, k.Rules, k.HashKey, k.MaxBodySize = s.Routes, s.Rules, s.HashKey, s.MaxBodySize
		k.ConnectTimeout, k.ReadTimeout, k.Tries = s.ConnectTimeout, s.ReadTimeout, s.Tries
		out[name] = &k
	}
	if out == nil {
		return next
	}
	return out
}

// Diff returns the apps whose endpoint set differs from old to next (nil
// for an app that is gone), or nil when nothing changed.
func Diff(old, next map[string]*Endpoints) map[string]*Endpoints {
	var out map[string]*Endpoints
	add := func(name string, e *Endpoints) {
		if out == nil {
			out = map[string]*Endpoints{}
		}
		out[name] = e
	}
	for name, e := range next {
		if o, ok := old[name]; !ok || o != e && !reflect.DeepEqual(o, e) {
			add(name, e)
		}
	}
	for name := range old {
		if _, ok := next[name]; !ok {
			add(name, nil)
		}
	}
	return out
}

// ErrStale is a push whose version is not above the one nginx has.
var ErrStale = errors.New("dynamic: version not above the installed one")

// StaleError carries the version nginx has installed.
type StaleError struct{ Installed uint64 }

func (e *StaleError) Error() string {
	return fmt.Sprintf("dynamic: nginx has version %d installed", e.Installed)
}

// Is makes errors.Is(err, ErrStale) true.
func (e *StaleError) Is(target error) bool { return target == ErrStale }

// Client talks to the control endpoint. It is safe for concurrent use.
type Client struct {
	// URL is http://<status listener>/berth/endpoints.
	URL   string
	Token string
	HTTP  *http.Client
}

// NewClient returns a client of the control endpoint on a status listener.
func NewClient(statusListen, token string) *Client {
	return &Client{URL: "http://" + statusListen + "/berth/endpoints", Token: token,
		HTTP: &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{Proxy: nil, MaxIdleConns: 2, IdleConnTimeout: 30 * time.Second}}}
}

type versionReply struct {
	Version uint64 `json:"version"`
	Error   string `json:"error"`
}

func (c *Client) do(ctx context.Context, method, url string, body []byte) (versionReply, int, error) {
	var r io.Reader
	if body != nil {
		r = bytes.NewReader(body)
	}
	req, err := http.NewRequestWithContext(ctx, method, url, r)
	if err != nil {
		return versionReply{}, 0, err
	}
	req.Header.Set("X-Berth-Token", c.Token)
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	replayable(req)
	resp, err := c.HTTP.Do(req)
	if err != nil {
		return versionReply{}, 0, fmt.Errorf("control endpoint: %w", err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	var v versionReply
	if err := json.Unmarshal(b, &v); err != nil {
		return v, resp.StatusCode, fmt.Errorf("control endpoint: %s: %q", resp.Status, strings.TrimSpace(string(b)))
	}
	return v, resp.StatusCode, nil
}

// Version reads the version nginx has installed.
func (c *Client) Version(ctx context.Context) (uint64, error) {
	v, code, err := c.do(ctx, http.MethodGet, c.URL, nil)
	if err != nil {
		return 0, err
	}
	if code != http.StatusOK {
		return 0, fmt.Errorf("control endpoint: %d: %s", code, v.Error)
	}
	return v.Version, nil
}

// Push installs a batch and returns the version nginx then reports
// installed, which is at least b.Version: the control endpoint answers
// with the version it read back from the shared dict after the write. A version not above
// the installed one is a *StaleError.
func (c *Client) Push(ctx context.Context, b Batch) (uint64, error) {
	body, err := json.Marshal(b)
	if err != nil {
		return 0, err
	}
	v, code, err := c.do(ctx, http.MethodPost, c.URL, body)
	switch {
	case err != nil:
		return 0, err
	case code == http.StatusConflict:
		return 0, &StaleError{Installed: v.Version}
	case code != http.StatusOK:
		return 0, fmt.Errorf("control endpoint refused version %d: %d: %s", b.Version, code, v.Error)
	case v.Version < b.Version:
		return 0, fmt.Errorf("control endpoint: pushed version %d, nginx reports %d", b.Version, v.Version)
	}
	return v.Version, nil
}

// replayable lets net/http send req again on a new connection when the
// kept-alive one it used was closed under it, as a reload closes the old
// workers' idle connections (found on make demo: a push right after a
// route change failed with "connection reset by peer"). Both control
// requests may be replayed: a push is versioned (a replay is refused as
// stale, then retried above the installed version) and the keepalive
// request sets a value. net/http replays a POST only with this header.
func replayable(req *http.Request) {
	req.Header.Set("Idempotency-Key", "berth-control")
}

// CloseKeepalive asks nginx's workers of a config generation below below
// to close each keep-alive connection after its next answer, for ttl (0
// ends it): lbagent calls it before reloading into generation below, so
// that busy client connections end cleanly instead of being cut by the
// reload while idle (see keepalive in dynamic.lua).
func (c *Client) CloseKeepalive(ctx context.Context, below uint64, ttl time.Duration) error {
	body, err := json.Marshal(map[string]any{"below": below, "seconds": ttl.Seconds()})
	if err != nil {
		return err
	}
	v, code, err := c.do(ctx, http.MethodPost, strings.TrimSuffix(c.URL, "/endpoints")+"/keepalive", body)
	if err != nil {
		return err
	}
	if code != http.StatusOK {
		return fmt.Errorf("control endpoint /berth/keepalive: %d: %s", code, v.Error)
	}
	return nil
}

// WriteSnapshot writes b (a full batch) to path atomically: nginx's
// init_by_lua loads it when it starts or reloads.
func WriteSnapshot(path string, b Batch) error {
	b.Full = true
	data, err := json.Marshal(b)
	if err != nil {
		return err
	}
	return atomicfile.Write(path, data, 0o644)
}

// ReadSnapshotVersion returns the version of the snapshot file at path, 0
// when there is none or it cannot be read.
func ReadSnapshotVersion(path string) uint64 {
	data, err := os.ReadFile(path)
	if err != nil {
		return 0
	}
	var b struct {
		Version uint64 `json:"version"`
	}
	_ = json.Unmarshal(data, &b)
	return b.Version
}

// EnsureToken returns the control token in path, creating a random one
// (mode 0600) when the file does not exist.
func EnsureToken(path string) (string, error) {
	if b, err := os.ReadFile(path); err == nil {
		if t := strings.TrimSpace(string(b)); len(t) >= 32 {
			return t, os.Chmod(path, 0o600)
		}
	}
	raw := make([]byte, 32)
	if _, err := rand.Read(raw); err != nil {
		return "", err
	}
	t := hex.EncodeToString(raw)
	if err := atomicfile.Write(path, []byte(t+"\n"), 0o600); err != nil {
		return "", err
	}
	return t, nil
}

// LuaFile is where the balancer's source sits in a templates tree and
// under the lua_package_path root.
const LuaFile = "lua/berth/dynamic.lua"

// InstallLua copies the balancer's source from fsys (a templates tree)
// into dir, so that dir/berth/dynamic.lua is what nginx requires.
func InstallLua(fsys fs.FS, dir string) error {
	src, err := fs.ReadFile(fsys, LuaFile)
	if err != nil {
		return fmt.Errorf("lua balancer: %w", err)
	}
	dst := filepath.Join(dir, "berth", "dynamic.lua")
	if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
		return err
	}
	return atomicfile.Write(dst, src, 0o644)
}

// Available reports whether dir holds the modules dynamic mode needs; an
// empty dir means they are compiled into nginx (OpenResty), which the
// probe then checks.
func Available(modulesDir string) bool {
	if modulesDir == "" {
		return true
	}
	for _, m := range []string{"ndk_http_module.so", "ngx_http_lua_module.so"} {
		if st, err := os.Stat(filepath.Join(modulesDir, m)); err != nil || st.IsDir() {
			return false
		}
	}
	return true
}

// Upstream modes (--upstream-mode).
const (
	ModeAuto    = "auto"
	ModeDynamic = "dynamic"
	ModeReload  = "reload"
)

// Tester runs nginx -t on a config in a prefix.
type Tester interface {
	Test(ctx context.Context, prefix, conf string) error
}

// Choose resolves an upstream mode: dynamic and reload as given; auto is
// dynamic when lbagent owns nginx.conf (ownsMain) and nginx loads the Lua
// module from modulesDir with lua-resty-core and lua-cjson (an nginx -t of a probe
// config in scratch), reload otherwise. It says why.
func Choose(ctx context.Context, mode string, ownsMain bool, modulesDir string, t Tester, scratch string) (bool, string) {
	switch mode {
	case ModeDynamic:
		return true, "--upstream-mode dynamic"
	case ModeReload:
		return false, "--upstream-mode reload"
	}
	if !ownsMain {
		return false, "auto: lbagent writes an include file (--conf-dir), and cannot load nginx's Lua module itself; use --upstream-mode dynamic once nginx.conf loads it"
	}
	if !Available(modulesDir) {
		return false, "auto: no ngx_http_lua_module in " + modulesDir + " (Debian: apt-get install libnginx-mod-http-lua lua-resty-core lua-cjson)"
	}
	if err := Probe(ctx, modulesDir, t, scratch); err != nil {
		return false, "auto: nginx cannot load its Lua module: " + err.Error()
	}
	return true, "auto: nginx has the Lua module"
}

// Probe runs nginx -t on a config that loads the Lua module and
// lua-resty-core's balancer, in the scratch prefix.
func Probe(ctx context.Context, modulesDir string, t Tester, scratch string) error {
	for _, sub := range []string{"conf", "logs", "run", "temp"} {
		if err := os.MkdirAll(filepath.Join(scratch, sub), 0o755); err != nil {
			return err
		}
	}
	conf := filepath.Join(scratch, "conf", "probe.conf")
	text := ""
	if modulesDir != "" {
		text = "load_module " + filepath.Join(modulesDir, "ndk_http_module.so") + ";\n" +
			"load_module " + filepath.Join(modulesDir, "ngx_http_lua_module.so") + ";\n"
	}
	text += "pid run/nginx.pid;\nerror_log logs/error.log;\nevents {}\nhttp {\n" +
		"    client_body_temp_path temp/client_body;\n    proxy_temp_path temp/proxy;\n" +
		"    fastcgi_temp_path temp/fastcgi;\n    uwsgi_temp_path temp/uwsgi;\n    scgi_temp_path temp/scgi;\n" +
		"    lua_shared_dict berth_probe 1m;\n" +
		"    init_by_lua_block { require(\"ngx.balancer\") require(\"cjson.safe\") }\n}\n"
	if err := os.WriteFile(conf, []byte(text), 0o644); err != nil {
		return err
	}
	return t.Test(ctx, scratch, conf)
}

// SnapshotWriter keeps the snapshot file up to date off the push path: a
// push is served as soon as nginx has it, and the whole-state file is
// written behind it, the newest batch only when pushes come faster than
// writes. Each write encodes only the sets that are not those of the last
// write (snapshotEncoder): at 10,000 apps a whole encoding took more CPU
// than the push it follows, beside the nginx that serves it. Write is for
// callers that need the file on disk now (before a reload). Create it
// with NewSnapshotWriter and run it with Run.
type SnapshotWriter struct {
	path string
	wake chan struct{}

	mu      sync.Mutex // held while writing
	written uint64     // version on disk, under mu
	lastErr error      // of the last write, under mu

	pmu     sync.Mutex
	pending *Batch

	enc snapshotEncoder // under mu
}

// snapshotEncoder writes a snapshot's JSON as WriteSnapshot does, from the
// encoding of each set it made last time when the set is the same one
// (by identity: a Cache gives back an unchanged app's set), so that the
// file after an endpoint change costs the changed sets' encoding and a
// copy of the others', not the whole state's.
type snapshotEncoder struct {
	sets  map[string]encodedSet
	names []string // sorted names of sets
}

type encodedSet struct {
	eps *Endpoints
	raw []byte
}

// encode returns what json.Marshal returns for b with Full set.
func (e *snapshotEncoder) encode(b Batch) ([]byte, error) {
	same := len(e.names) == len(b.Apps)
	for i := 0; same && i < len(e.names); i++ {
		_, same = b.Apps[e.names[i]]
	}
	if !same {
		// Apps came or went: the names that stay, in order, and the new
		// ones put in their places.
		names := make([]string, 0, len(b.Apps))
		for _, name := range e.names {
			if _, ok := b.Apps[name]; ok {
				names = append(names, name)
			} else {
				delete(e.sets, name)
			}
		}
		switch added := len(b.Apps) - len(names); {
		case added > 64: // a first write, a burst of new apps
			names = slices.Sorted(maps.Keys(b.Apps))
		case added > 0:
			for name := range b.Apps {
				if i, found := slices.BinarySearch(names, name); !found {
					names = slices.Insert(names, i, name)
				}
			}
		}
		e.names = names
	}
	if e.sets == nil {
		e.sets = make(map[string]encodedSet, len(b.Apps))
	}
	size := 64
	for _, name := range e.names {
		set := b.Apps[name]
		es, ok := e.sets[name]
		if !ok || es.eps != set || set == nil {
			raw, err := json.Marshal(set)
			if err != nil {
				return nil, err
			}
			es = encodedSet{eps: set, raw: raw}
			e.sets[name] = es
		}
		size += len(name) + len(es.raw) + 4
	}
	out := make([]byte, 0, size)
	out = append(out, `{"version":`...)
	out = strconv.AppendUint(out, b.Version, 10)
	out = append(out, `,"full":true,"apps":{`...)
	for i, name := range e.names {
		if i > 0 {
			out = append(out, ',')
		}
		key, err := json.Marshal(name)
		if err != nil {
			return nil, err
		}
		out = append(out, key...)
		out = append(out, ':')
		out = append(out, e.sets[name].raw...)
	}
	return append(out, "}}"...), nil
}

// NewSnapshotWriter returns a writer of the file at path.
func NewSnapshotWriter(path string) *SnapshotWriter {
	return &SnapshotWriter{path: path, wake: make(chan struct{}, 1)}
}

// Put queues b to be written; a newer Put replaces it.
func (w *SnapshotWriter) Put(b Batch) {
	w.pmu.Lock()
	if w.pending == nil || b.Version > w.pending.Version {
		w.pending = &b
	}
	w.pmu.Unlock()
	select {
	case w.wake <- struct{}{}:
	default:
	}
}

// Write writes b, or a newer queued batch, before it returns.
func (w *SnapshotWriter) Write(b Batch) error {
	w.Put(b)
	w.flush()
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.written >= b.Version {
		return nil
	}
	if w.lastErr != nil {
		return w.lastErr
	}
	return fmt.Errorf("snapshot version %d not written", b.Version)
}

// Run writes queued batches until ctx ends, then writes the last one; a
// write that fails is logged by onError and retried with the next batch.
func (w *SnapshotWriter) Run(ctx context.Context, onError func(error)) {
	for {
		select {
		case <-ctx.Done():
			if err := w.flush(); err != nil && onError != nil {
				onError(err)
			}
			return
		case <-w.wake:
			if err := w.flush(); err != nil && onError != nil {
				onError(err)
			}
		}
	}
}

func (w *SnapshotWriter) flush() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.pmu.Lock()
	b := w.pending
	w.pending = nil
	w.pmu.Unlock()
	if b == nil || b.Version <= w.written {
		return nil
	}
	data, err := w.enc.encode(*b)
	if err == nil {
		err = atomicfile.Write(w.path, data, 0o644)
	}
	w.lastErr = err
	if w.lastErr == nil {
		w.written = b.Version
	}
	return w.lastErr
}
