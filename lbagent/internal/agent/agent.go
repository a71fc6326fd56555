// Package agent is the lbagent's loop. It waits for a change of the state
// (the store's apps, instances, health and certificates, the templates),
// lets a burst settle (debounce), then observes, decides and acts, as the
// scheduler's controller does:
//
//   - observe: the store's snapshot, with the certificates this lbagent
//     serves named in its app records (self-signed ones it makes, ACME ones
//     the scheduler leader ordered, placed from their sealed keys; cert.go),
//     the templates, and, before anything was applied, the config nginx is
//     found serving;
//   - decide: the pure Decide (decide.go) says hold (a state that removes
//     every server is held back for --empty-hold), skip (nginx serves this
//     state already), push (dynamic mode: only endpoints changed), adopt (a
//     restarted lbagent takes over the config nginx serves, with no
//     reload) or reload, why, and when to decide again;
//   - act: a push installs the changed endpoint sets in nginx's dict and
//     writes the snapshot file behind it (push.go); an adoption records
//     what nginx serves (adopt.go); a reload builds a candidate, renders
//     it, tests it with nginx -t in a staging directory, isolates the apps
//     nginx refuses by bisection and stands in their last good record or
//     a placeholder answering 503 (candidate.go), then swaps the file in
//     atomically, reloads nginx and confirms the new generation is served
//     (reload.go). Each result is reported.
//
// nginx is never left with a config that failed nginx -t, and an app nginx
// refused is not tried again until its spec changes or --resync passes.
package agent

import (
	"context"
	"fmt"
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"

	"github.com/berthhq/berth/common/msg"
	"github.com/berthhq/berth/lbagent/internal/nginx"
	"github.com/berthhq/berth/lbagent/internal/render"
	"github.com/berthhq/berth/lbagent/internal/state"
	"github.com/berthhq/berth/lbagent/internal/templatedir"
)

// Tester runs nginx -t on a config in a staging prefix.
type Tester interface {
	Test(ctx context.Context, prefix, conf string) error
}

// Reloader asks the serving nginx to re-read its config.
type Reloader interface {
	Reload(ctx context.Context) error
}

// Status reads which config generation nginx serves. Calls come from the
// agent's Run goroutine.
type Status interface {
	// Generation returns the generation nginx serves, 0 when it reports
	// none.
	Generation(ctx context.Context) (uint64, error)
	// Confirm returns once nginx serves gen, or an error saying what it
	// served when ctx ends first.
	Confirm(ctx context.Context, gen uint64) error
}

// Ejector takes the instances ejected for failing real traffic
// (health.outlier) out of each snapshot. Calls come from the agent's Run
// goroutine.
type Ejector interface {
	// Filter returns snap without the instances ejected at now, and when
	// the next ejection ends (zero: none).
	Filter(snap state.Snapshot, now time.Time) (state.Snapshot, time.Time)
	// Ejected lists them for the agents record.
	Ejected() []msg.Ejection
}

// Reporter publishes what the agent did. Calls come from the agent's Run
// goroutine, one at a time.
type Reporter interface {
	// Reload reports one config change, or a refusal to make one.
	Reload(ctx context.Context, r *msg.Reload)
	// Applied reports the state nginx now serves (the agents bucket).
	Applied(ctx context.Context, a *msg.Agent)
}

var (
	_ templatedir.Setter = (*Agent)(nil)
	_ Tester             = nginx.Binary{}
	_ Reloader           = nginx.PidFile("")
	_ Reloader           = (*nginx.Supervisor)(nil)
	_ Status             = (*nginx.Status)(nil)
)

// Config is how the agent renders, tests and applies.
type Config struct {
	// Node is this agent's node id.
	Node string
	// Render holds the listeners and access log socket; Render.Main says
	// whether Target is a whole nginx.conf or an include file.
	Render render.Options
	// Target is the file nginx reads: nginx.conf, or <conf-dir>/berth.conf.
	Target string
	// Staging is a directory the agent owns for nginx -t.
	Staging string
	// DebounceMin is the quiet time after a change before acting;
	// DebounceMax caps the wait after the first change of a burst.
	DebounceMin, DebounceMax time.Duration
	// Resync re-renders this often even without a change.
	Resync time.Duration
	// EmptyHold is how long a snapshot that removes every server is held back.
	EmptyHold time.Duration
	// ConfirmTimeout is the least wait for nginx to serve a new
	// generation; a config that takes nginx longer to test, or a last
	// reload that took longer to serve, is waited for longer
	// (confirmWait).
	ConfirmTimeout time.Duration
	// Heartbeat is how often the applied state is republished.
	Heartbeat time.Duration
	// Status reads the generation nginx serves; nil: nginx's status
	// listener, Render.StatusListen.
	Status Status
	// Pusher, when set, is dynamic mode (Render.Dynamic set too): an
	// endpoint change is pushed into nginx, and only a change of the apps,
	// routes, hosts, TLS or lb settings renders and reloads. Snapshot is
	// the endpoint file nginx loads when it starts or reloads.
	Pusher   Pusher
	Snapshot string
	// ReloadDrain (dynamic mode) is how long nginx's workers close keep-alive
	// connections after each answer before a reload replaces them: busy
	// connections then end between two requests, and the reload cuts none
	// that a client is about to use. 0 reloads at once.
	ReloadDrain time.Duration
	// CertDir holds the certificates lbagent makes for apps with
	// routing.tls.self_signed (selfsigned.Ensure), and in acme/ those the
	// scheduler leader ordered for apps with routing.tls.acme.
	CertDir string
	// Keys opens the private keys of ACME certificates, sealed to the
	// lbagent role; nil opens none (those apps stay on plain HTTP).
	Keys Opener
	// Ejector, when set, leaves the instances ejected by outlier
	// detection out of what nginx serves: in dynamic mode a push, in
	// reload mode a reload; nil: none.
	Ejector Ejector
	// NginxVersion is what nginx -v printed, for the agents record; ""
	// leaves it out.
	NginxVersion string
	// Hooks observe the loop for metrics; nil fields are skipped.
	Hooks Hooks
}

// Hooks observe the agent for metrics. They are called from Run's goroutine.
type Hooks struct {
	// Rendered is called with the duration of each full render.
	Rendered func(time.Duration)
	// Held is called with whether a snapshot is being held back.
	Held func(bool)
	// Served is called after a change is applied with the apps and servers nginx serves.
	Served func(apps, servers int)
	// Pushed is called with the duration of each endpoint push and whether it failed.
	Pushed func(d time.Duration, err error)
	// ConfirmWait is called as each reload is signalled with how long it
	// is waited for at most (confirmWait).
	ConfirmWait func(time.Duration)
	// ReloadServed is called with each confirmed reload's time from the
	// signal to nginx serving its generation.
	ReloadServed func(time.Duration)
}

// Agent is the loop. Create it with New and run it with Run.
type Agent struct {
	cfg      Config
	store    *state.Store
	tester   Tester
	reloader Reloader
	status   Status
	reporter Reporter
	logger   *zap.Logger
	now      func() time.Time

	mu       sync.Mutex
	renderer *render.Renderer
	kick     chan struct{}
	// servedGen mirrors served.Generation for readers outside Run
	// (metrics, tests).
	servedGen atomic.Uint64

	// Owned by Run.
	served     Served
	lastGood   map[string]state.App
	refused    map[string]Refusal // apps nginx refused, by name
	appErrors  map[string]string
	emptySince time.Time
	// reloadFailures counts the reloads in a row that nginx did not
	// confirm (not running yet, stopped): each is tried again, backing off.
	reloadFailures int
	certs          *certs
	pushes         *pushes // nil in reload mode
	// waits says how long a reload is waited for; it learns from each.
	waits *confirmWait
	// ejectionEnds is when the next outlier ejection ends (zero: none).
	ejectionEnds time.Time
	// lastReload is the latest reload or failed attempt at one (nil:
	// none yet); lastErr the error of the latest change that failed as a
	// whole, "" once one succeeds. Both go in the agents record.
	lastReload *msg.ConfigChange
	lastErr    string
}

// New returns an agent. renderer is replaced later by SetRenderer when the
// templates change.
func New(cfg Config, store *state.Store, renderer *render.Renderer, tester Tester, reloader Reloader, reporter Reporter, logger *zap.Logger) *Agent {
	logger = logger.Named("agent")
	a := &Agent{
		cfg: cfg, store: store, renderer: renderer, tester: tester, reloader: reloader, status: cfg.Status, reporter: reporter,
		logger: logger, now: time.Now, kick: make(chan struct{}, 1),
		lastGood: map[string]state.App{}, refused: map[string]Refusal{}, appErrors: map[string]string{},
		certs: newCerts(cfg.CertDir, cfg.Keys, logger), waits: newConfirmWait(cfg.ConfirmTimeout),
	}
	if a.status == nil {
		a.status = nginx.NewStatus(cfg.Render.StatusListen)
	}
	if a.cfg.Render.Claims == nil {
		// A decision lays the records out, then computes their routes:
		// one route table for both.
		a.cfg.Render.Claims = &render.ClaimsMemo{}
	}
	if cfg.Pusher != nil {
		a.pushes = newPushes(cfg.Pusher, cfg.Snapshot, cfg.ReloadDrain, cfg.Hooks.Pushed, func() time.Time { return a.now() }, logger)
		// Apps the Lua router routes carry their routes in their sets.
		a.pushes.cache.Render = &a.cfg.Render
	}
	return a
}

// SetRenderer swaps in newly loaded templates and triggers a render. A
// template set that fails to load never reaches here, so the running
// config stays.
func (a *Agent) SetRenderer(r *render.Renderer) {
	a.mu.Lock()
	a.renderer = r
	a.mu.Unlock()
	a.Kick()
}

// Kick asks for a render now (after the debounce), as a change would.
func (a *Agent) Kick() {
	select {
	case a.kick <- struct{}{}:
	default:
	}
}

// Run loops until ctx ends. On return nginx keeps serving the last config
// the agent applied.
func (a *Agent) Run(ctx context.Context) error {
	if err := os.MkdirAll(a.cfg.Staging, 0o755); err != nil {
		return fmt.Errorf("staging dir: %w", err)
	}
	if a.pushes != nil {
		done := make(chan struct{})
		wctx, stop := context.WithCancel(ctx)
		go func() {
			defer close(done)
			a.pushes.run(wctx)
		}()
		defer func() { stop(); <-done }()
	}
	resync := time.NewTicker(a.cfg.Resync)
	defer resync.Stop()
	heartbeat := time.NewTicker(a.cfg.Heartbeat)
	defer heartbeat.Stop()
	var wake <-chan time.Time
	var idleSince time.Time // when the last sync ended
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-a.store.Changed():
		case <-a.kick:
		case <-resync.C:
		case <-wake:
		case <-heartbeat.C:
			if a.served.Generation > 0 {
				a.reporter.Applied(ctx, a.agentMessage())
			}
			continue
		}
		// Leading edge: a change after a quiet spell is applied at once; one
		// that follows a recent sync waits for the burst to settle.
		if a.now().Sub(idleSince) < a.cfg.DebounceMin && !a.debounce(ctx) {
			return nil
		}
		wake = nil
		if wait := a.sync(ctx); wait > 0 {
			wake = time.After(wait)
		}
		idleSince = a.now()
	}
}

// debounce waits until no change came for DebounceMin, or DebounceMax
// passed since the first one, so a burst of changes makes one reload.
func (a *Agent) debounce(ctx context.Context) bool {
	deadline := time.NewTimer(a.cfg.DebounceMax)
	defer deadline.Stop()
	quiet := time.NewTimer(a.cfg.DebounceMin)
	defer quiet.Stop()
	for {
		select {
		case <-ctx.Done():
			return false
		case <-deadline.C:
			return true
		case <-quiet.C:
			return true
		case <-a.store.Changed():
		case <-a.kick:
		}
		if !quiet.Stop() {
			<-quiet.C
		}
		quiet.Reset(a.cfg.DebounceMin)
	}
}

// sync is one step: observe, Decide, act. It makes nginx serve the
// store's snapshot, as far as nginx accepts it, and returns how long to
// wait at most before the next step (a hold that ends, a refusal that
// expires, a reload or push to try again); 0 waits for a change.
func (a *Agent) sync(ctx context.Context) time.Duration {
	start := a.now()
	in, ok := a.observe(ctx, start)
	if !ok {
		return 0 // not every bucket has loaded: never act on a partial view
	}
	dec := Decide(in)
	a.emptySince = dec.EmptySince
	if h := a.cfg.Hooks.Held; h != nil {
		h(dec.Action == Hold)
	}
	if dec.Action != Hold {
		a.certs.forget(in.Snapshot)
	}
	if dec.Action == Adopt && !a.adopt(ctx, start, in, dec) {
		dec.Action, dec.Generation = Reload, a.served.Generation+1
		dec.Reason = "the nginx found serving took no endpoint push"
	}
	var retry time.Duration
	switch dec.Action {
	case Hold:
		a.logger.Error("holding back a snapshot that removes every server",
			zap.Int("servers_now", a.served.Snapshot.Servers()), zap.Duration("applies_in", dec.Wake.Sub(start)))
		a.report(ctx, start, in.Snapshot.Revision, msg.ReloadFailed, dec.Reason, nil)
	case Skip, Push:
		retry = a.skip(ctx, start, in.Snapshot, dec)
	case Reload:
		retry = a.reload(ctx, start, in, dec)
	}
	wake := dec.Wake
	if e := a.ejectionEnds; !e.IsZero() && (wake.IsZero() || e.Before(wake)) {
		wake = e
	}
	return wait(start, wake, retry)
}

// observe reads what a decision needs: the store's snapshot (false until
// every bucket has loaded) with the certificates served, the templates,
// what nginx serves, and before anything was applied what nginx is found
// serving.
func (a *Agent) observe(ctx context.Context, now time.Time) (Input, bool) {
	snap, ok := a.store.Snapshot()
	if !ok {
		return Input{}, false
	}
	a.mu.Lock()
	renderer := a.renderer
	a.mu.Unlock()
	a.ejectionEnds = time.Time{}
	if a.cfg.Ejector != nil {
		snap, a.ejectionEnds = a.cfg.Ejector.Filter(snap, now)
	}
	in := Input{Now: now, Served: a.served, Snapshot: a.certs.apply(snap, now), Renderer: renderer, Refused: a.refused,
		EmptySince: a.emptySince, Render: a.cfg.Render, Dynamic: a.pushes != nil, EmptyHold: a.cfg.EmptyHold, Resync: a.cfg.Resync}
	if a.pushes != nil {
		in.Endpoints = &a.pushes.cache
	}
	if a.served.Generation == 0 {
		in.Found = a.find(ctx)
	}
	return in, true
}

// skip acts on Skip and Push: nginx serves snap's config; a push installs
// the endpoint sets that changed. The refusals dec settles end.
func (a *Agent) skip(ctx context.Context, start time.Time, snap state.Snapshot, dec Decision) time.Duration {
	if !a.pushChanged(ctx, start, snap.Revision, dec, nil) {
		return time.Second
	}
	a.served.Snapshot = snap
	// When nginx serves the records it served, and no refusal stands in
	// or ends (an endpoint change), the served records and apps stay:
	// no walk of every app.
	if len(a.refused) > 0 || len(dec.StandIns) > 0 || !sameSpecs(a.served.Specs, dec.Snapshot) {
		a.servedRecords(dec)
	}
	a.applied(ctx)
	a.report(ctx, start, snap.Revision, msg.ReloadSkipped, "", nil)
	if h := a.cfg.Hooks.Served; h != nil && a.pushes != nil {
		h(len(snap.Apps), snap.Servers())
	}
	a.logger.Debug("nothing to reload", zap.String("action", string(dec.Action)), zap.String("reason", dec.Reason),
		zap.Uint64("revision", snap.Revision))
	return 0
}

// servedRecords records the app records of dec as those nginx serves
// after a Skip or Push. The refusals dec settles end.
func (a *Agent) servedRecords(dec Decision) {
	// These records lay out the config nginx serves (Decide found it so):
	// the next decision knows it by identity, without a layout. With
	// --dynamic-routes a new app the Lua router routes is such a change.
	last := a.served.Specs
	a.served.Specs = specsOf(dec.Snapshot)
	if len(a.refused) == 0 && len(dec.StandIns) == 0 && updateGenerations(a.served.Apps, last, a.served.Specs) {
		return
	}
	for _, name := range dec.Settled {
		delete(a.refused, name)
		delete(a.appErrors, name)
	}
	present := make(map[string]bool, len(dec.Snapshot.Apps))
	for _, app := range dec.Snapshot.Apps {
		present[app.Spec.Name] = true
		if _, stand := dec.StandIns[app.Spec.Name]; !stand {
			a.served.Apps[app.Spec.Name] = app.Spec.Generation
		}
	}
	for name := range a.served.Apps {
		if !present[name] { // a routed app removed by a push
			delete(a.served.Apps, name)
		}
	}
}

// updateGenerations makes apps, the spec generation of each record of
// last, those of next, walking both by name, and reports whether it could
// (both sorted by name, and apps holding last's): a new app at 10,000
// costs no map of every app.
func updateGenerations(apps map[string]int64, last, next []*msg.App) bool {
	byName := func(a, b *msg.App) int { return strings.Compare(a.Name, b.Name) }
	if len(apps) != len(last) || !slices.IsSortedFunc(last, byName) || !slices.IsSortedFunc(next, byName) {
		return false
	}
	i := 0
	for k, app := range next {
		if k > 0 && next[k-1].Name == app.Name {
			return false
		}
		for ; i < len(last) && last[i].Name < app.Name; i++ {
			delete(apps, last[i].Name)
		}
		if i < len(last) && last[i].Name == app.Name {
			i++
		}
		apps[app.Name] = app.Generation
	}
	for ; i < len(last); i++ {
		delete(apps, last[i].Name)
	}
	return true
}

// pushChanged acts on a Push: it pushes the endpoint sets dec says
// changed and records every set as nginx's. It reports false when the
// push failed, logged and reported as failed with failed.
func (a *Agent) pushChanged(ctx context.Context, start time.Time, rev uint64, dec Decision, failed map[string]string) bool {
	if dec.Action != Push {
		return true
	}
	if err := a.pushes.push(ctx, rev, dec.Changed, dec.Endpoints, dec.Full); err != nil {
		a.logger.Error("endpoints not pushed, retrying", zap.Error(err))
		a.report(ctx, start, rev, msg.ReloadFailed, err.Error(), failed)
		return false
	}
	a.served.Endpoints = dec.Endpoints
	return true
}

// wait is how long to sleep at most before the next sync: until wake, or
// the retry of a failed act, whichever comes first; 0 waits for a change
// or the resync.
func wait(now, wake time.Time, retry time.Duration) time.Duration {
	if wake.IsZero() {
		return retry
	}
	until := max(wake.Sub(now), time.Millisecond)
	if retry > 0 && retry < until {
		return retry
	}
	return until
}

// agentMessage is the agents record of what nginx serves now: the
// applied revision and apps, the refused apps, the mode, and how the
// latest reload and push went.
func (a *Agent) agentMessage() *msg.Agent {
	errs := map[string]string{}
	for k, v := range a.appErrors {
		errs[k] = msg.Truncate(v, msg.MaxTextLen)
	}
	m := &msg.Agent{Node: a.cfg.Node, AppliedRevision: a.served.Snapshot.Revision, Apps: a.served.Apps, Errors: errs,
		LastError: a.lastErr, NginxVersion: msg.Truncate(a.cfg.NginxVersion, msg.MaxTextLen), Mode: msg.ModeReload,
		LastReload: copyChange(a.lastReload), UpdatedAt: a.now().UTC()}
	if a.pushes != nil {
		m.Mode, m.LastPush = msg.ModeDynamic, copyChange(a.pushes.last)
	}
	if a.cfg.Ejector != nil {
		m.Ejected = a.cfg.Ejector.Ejected()
	}
	return m
}

// copyChange copies c, so that a record handed to the reporter does not
// change with the next reload or push.
func copyChange(c *msg.ConfigChange) *msg.ConfigChange {
	if c == nil {
		return nil
	}
	cc := *c
	return &cc
}

// applied publishes the agents record after a change nginx now serves:
// the error of an earlier one that failed is over.
func (a *Agent) applied(ctx context.Context) {
	a.lastErr = ""
	a.reporter.Applied(ctx, a.agentMessage())
}

// report publishes the result of a sync, and keeps the error of one that
// failed as a whole for the agents record until one succeeds (applied).
func (a *Agent) report(ctx context.Context, start time.Time, rev uint64, result, errText string, failed map[string]string) {
	if result == msg.ReloadFailed {
		a.lastErr = msg.Truncate(errText, msg.MaxTextLen)
	}
	fa := map[string]string{}
	for k, v := range failed {
		fa[k] = msg.Truncate(v, msg.MaxTextLen)
	}
	a.reporter.Reload(ctx, &msg.Reload{Node: a.cfg.Node, Result: result, Revision: rev, Error: msg.Truncate(errText, msg.MaxTextLen),
		FailedApps: fa, DurationMS: float64(a.now().Sub(start).Microseconds()) / 1000, At: a.now().UTC()})
}

// noteReload records a reload of rev that started at start, or an
// attempt at one that failed with err, for the agents record.
func (a *Agent) noteReload(start time.Time, rev uint64, err error) {
	a.lastReload = change(start, a.now(), rev, err)
}

// change is a ConfigChange from start to end, failed with err (nil: none).
func change(start, end time.Time, rev uint64, err error) *msg.ConfigChange {
	c := &msg.ConfigChange{At: end.UTC(), DurationMS: float64(max(end.Sub(start), 0).Microseconds()) / 1000, Revision: rev}
	if err != nil {
		c.Error = msg.Truncate(err.Error(), msg.MaxTextLen)
	}
	return c
}

// Generation returns the config generation nginx serves; safe from any goroutine.
func (a *Agent) Generation() uint64 { return a.servedGen.Load() }
