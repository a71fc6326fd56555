// Package agent is the lbagent's loop: it waits for state changes, lets them
// settle (debounce), renders the whole config, skips it when nothing
// changed, tests it in a staging directory, isolates the apps whose config
// nginx refuses (bisecting), swaps the file in atomically, reloads nginx,
// confirms the new generation is served, and reports the result. nginx is
// never left with a config that failed nginx -t.
package agent

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"

	"github.com/berthhq/berth/common/msg"
	"github.com/berthhq/berth/common/spec"
	"github.com/berthhq/berth/lbagent/internal/acmecert"
	"github.com/berthhq/berth/lbagent/internal/atomicfile"
	"github.com/berthhq/berth/lbagent/internal/dynamic"
	"github.com/berthhq/berth/lbagent/internal/nginx"
	"github.com/berthhq/berth/lbagent/internal/render"
	"github.com/berthhq/berth/lbagent/internal/selfsigned"
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

// Pusher installs endpoint sets in the running nginx without a reload
// (dynamic mode). Calls come from the agent's Run goroutine.
type Pusher interface {
	// Push installs a batch and returns the version nginx reports
	// installed, read back; a version not above nginx's is a
	// *dynamic.StaleError.
	Push(ctx context.Context, b dynamic.Batch) (uint64, error)
	// Version reads the version nginx has installed.
	Version(ctx context.Context) (uint64, error)
	// CloseKeepalive makes the workers of generations below below close
	// each keep-alive connection after its next answer, for ttl (0 ends it).
	CloseKeepalive(ctx context.Context, below uint64, ttl time.Duration) error
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
	_ Pusher             = (*dynamic.Client)(nil)
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
	// ConfirmTimeout bounds the wait for nginx to serve a new generation.
	ConfirmTimeout time.Duration
	// Heartbeat is how often the applied state is republished.
	Heartbeat time.Duration
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
}

// Agent is the loop. Create it with New and run it with Run.
type Agent struct {
	cfg      Config
	store    *state.Store
	tester   Tester
	reloader Reloader
	reporter Reporter
	logger   *zap.Logger
	client   *http.Client
	now      func() time.Time

	mu       sync.Mutex
	renderer *render.Renderer
	kick     chan struct{}
	// servedGen mirrors generation for readers outside Run (metrics, tests).
	servedGen atomic.Uint64

	// Owned by Run.
	generation      uint64
	applied         state.Snapshot
	appliedLayout   render.Data // of what nginx serves, generation 0
	appliedSpecs    []*msg.App  // the app records appliedLayout was made of
	appliedRenderer *render.Renderer
	appliedApps     map[string]int64
	lastGood        map[string]state.App
	refused         map[string]refusal  // apps nginx refused, by name
	certs           map[string]selfCert // self-signed certificates made, by app
	appErrors       map[string]string
	emptySince      time.Time
	hasApplied      bool
	// reloadFailures counts the reloads in a row that nginx did not
	// confirm (not running yet, stopped): each is tried again, backing off.
	reloadFailures int
	// endpoints are the sets nginx's dict holds (dynamic mode), version
	// the last version pushed or written.
	endpoints   map[string]*dynamic.Endpoints
	endpointsOf dynamic.Cache
	snapshots   *dynamic.SnapshotWriter // nil in reload mode
	version     uint64
	versioned   bool
}

// New returns an agent. renderer is replaced later by SetRenderer when the
// templates change.
func New(cfg Config, store *state.Store, renderer *render.Renderer, tester Tester, reloader Reloader, reporter Reporter, logger *zap.Logger) *Agent {
	a := &Agent{
		cfg: cfg, store: store, renderer: renderer, tester: tester, reloader: reloader, reporter: reporter,
		logger: logger.Named("agent"), client: &http.Client{Timeout: time.Second}, now: time.Now,
		kick: make(chan struct{}, 1), lastGood: map[string]state.App{}, refused: map[string]refusal{}, certs: map[string]selfCert{}, appErrors: map[string]string{},
	}
	if cfg.Pusher != nil {
		a.snapshots = dynamic.NewSnapshotWriter(cfg.Snapshot)
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
	if a.snapshots != nil {
		done := make(chan struct{})
		wctx, stop := context.WithCancel(ctx)
		go func() {
			defer close(done)
			a.snapshots.Run(wctx, func(err error) {
				// nginx serves the pushes; only its next start would begin older.
				a.logger.Warn("endpoint snapshot not written", zap.Error(err))
			})
		}()
		defer func() { stop(); <-done }()
	}
	resync := time.NewTicker(a.cfg.Resync)
	defer resync.Stop()
	heartbeat := time.NewTicker(a.cfg.Heartbeat)
	defer heartbeat.Stop()
	var hold <-chan time.Time
	var idleSince time.Time // when the last sync ended
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-a.store.Changed():
		case <-a.kick:
		case <-resync.C:
		case <-hold:
		case <-heartbeat.C:
			if a.hasApplied {
				a.reporter.Applied(ctx, a.agentMessage(""))
			}
			continue
		}
		// Leading edge: a change after a quiet spell is applied at once; one
		// that follows a recent sync waits for the burst to settle.
		if a.now().Sub(idleSince) < a.cfg.DebounceMin && !a.debounce(ctx) {
			return nil
		}
		hold = nil
		if wait := a.sync(ctx); wait > 0 {
			hold = time.After(wait)
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

// sync makes nginx serve the store's snapshot, as far as nginx accepts it.
// It returns how long to wait before trying again when a snapshot is held,
// or a reload or push failed.
func (a *Agent) sync(ctx context.Context) time.Duration {
	start := a.now()
	snap, ok := a.store.Snapshot()
	if !ok {
		return 0 // not every bucket has loaded: never act on a partial view
	}
	apply, since := state.EmptyHold(a.applied, snap, a.emptySince, start, a.cfg.EmptyHold)
	a.emptySince = since
	if h := a.cfg.Hooks.Held; h != nil {
		h(!apply)
	}
	if !apply {
		wait := a.cfg.EmptyHold - start.Sub(since)
		a.logger.Error("holding back a snapshot that removes every server",
			zap.Int("servers_now", a.applied.Servers()), zap.Duration("applies_in", wait))
		a.report(ctx, start, snap.Revision, msg.ReloadFailed, fmt.Sprintf(
			"held back: the new state removes all %d servers of every app; it is applied if it persists for %s", a.applied.Servers(), a.cfg.EmptyHold), nil)
		return wait + time.Millisecond
	}

	a.mu.Lock()
	renderer := a.renderer
	a.mu.Unlock()
	// Apps nginx refused at their current generation are not tried again
	// (nor bisected) until their spec changes or --resync passes: they
	// stand in as what was served for them.
	eff, known := a.effective(a.withCerts(snap, start), start)
	c := &candidate{agent: a, renderer: renderer, snap: eff, known: known}

	// Rendering is deterministic: the same layout through the same templates
	// gives the same bytes but for the generation. So when the layout (with
	// the generation left out) equals the applied one, nginx already serves
	// this state and only the revision moved; no render is needed to know.
	if a.hasApplied && renderer == a.appliedRenderer && a.sameLayout(eff) {
		if a.cfg.Pusher != nil {
			// Dynamic mode: only endpoints moved. Push them; nothing reloads.
			if err := a.pushChanged(ctx, a.endpointsOf.Of(eff)); err != nil {
				a.logger.Error("endpoints not pushed, retrying", zap.Error(err))
				a.report(ctx, start, snap.Revision, msg.ReloadFailed, err.Error(), nil)
				return time.Second
			}
		}
		a.applied = snap
		a.settleRefusals(eff, known)
		a.reporter.Applied(ctx, a.agentMessage(""))
		a.report(ctx, start, snap.Revision, msg.ReloadSkipped, "", nil)
		if h := a.cfg.Hooks.Served; h != nil && a.cfg.Pusher != nil {
			h(len(snap.Apps), snap.Servers())
		}
		return 0
	}

	if !a.hasApplied && a.adopt(ctx, eff, renderer) {
		a.reporter.Applied(ctx, a.agentMessage(""))
		a.report(ctx, start, snap.Revision, msg.ReloadSkipped, "", nil)
		return 0
	}

	gen := a.generation + 1
	final, failed, err := c.build(ctx, gen)
	for name, r := range final.refused {
		a.refused[name] = r
	}
	if err != nil {
		a.logger.Error("config not applied", zap.Error(err))
		a.report(ctx, start, snap.Revision, msg.ReloadFailed, err.Error(), failed)
		return 0
	}
	if a.hasApplied && renderer == a.appliedRenderer && len(final.refused) > 0 && a.sameLayout(final.snap) {
		// What nginx accepts of this state is what it serves: an app
		// refused again after its refusal expired. Nothing to reload.
		if a.cfg.Pusher != nil {
			if err := a.pushChanged(ctx, a.endpointsOf.Of(final.snap)); err != nil {
				a.logger.Error("endpoints not pushed, retrying", zap.Error(err))
				a.report(ctx, start, snap.Revision, msg.ReloadFailed, err.Error(), failed)
				return time.Second
			}
		}
		a.applied, a.appErrors = snap, failed
		a.reporter.Applied(ctx, a.agentMessage(""))
		a.report(ctx, start, snap.Revision, msg.ReloadRejected, "", failed)
		return 0
	}
	var eps map[string]*dynamic.Endpoints
	if a.cfg.Pusher != nil {
		// nginx loads this file as it reloads: the new config starts with
		// its endpoints in place, never with an empty dict.
		eps = a.endpointsOf.Of(final.snap)
		a.initVersion(ctx)
		a.version++
		if err := a.snapshots.Write(dynamic.Batch{Version: a.version, Apps: eps}); err != nil {
			a.logger.Error("config not applied", zap.Error(err))
			a.report(ctx, start, snap.Revision, msg.ReloadFailed, err.Error(), failed)
			return 0
		}
	}
	drained := a.drainKeepalive(ctx, gen)
	if err := a.apply(ctx, final.bytes, gen); err != nil {
		if drained {
			_ = a.cfg.Pusher.CloseKeepalive(ctx, gen, 0) // the old workers stay: let them keep connections again
		}
		// nginx -t accepted the config: what failed is the reload (nginx
		// not running yet, or gone). Try again, backing off, rather than
		// wait for the next change, which may never come.
		retry := min(time.Second<<min(a.reloadFailures, 5), 30*time.Second)
		a.reloadFailures++
		a.logger.Error("config not applied, retrying", zap.Error(err), zap.Duration("retry_in", retry))
		a.report(ctx, start, snap.Revision, msg.ReloadFailed, err.Error(), failed)
		return retry
	}
	a.reloadFailures = 0
	if a.cfg.Pusher != nil {
		// The reload loaded the file; a full push makes sure of it (an
		// nginx that kept a newer dict, an adopted one) and reads it back.
		if err := a.push(ctx, eps, true); err != nil {
			a.logger.Error("endpoints not pushed after the reload, retrying", zap.Error(err))
			a.report(ctx, start, snap.Revision, msg.ReloadFailed, err.Error(), failed)
			a.endpoints = nil
			return time.Second
		}
		a.endpoints = eps
	}
	a.generation, a.applied, a.hasApplied = gen, snap, true
	a.appliedLayout, a.appliedSpecs = a.comparable(final.snap), specsOf(final.snap)
	a.appliedRenderer = renderer
	a.servedGen.Store(gen)
	a.appliedApps = map[string]int64{}
	for _, app := range final.snap.Apps {
		if _, bad := failed[app.Spec.Name]; !bad {
			a.lastGood[app.Spec.Name] = app
		}
		a.appliedApps[app.Spec.Name] = app.Spec.Generation
	}
	for name := range a.lastGood {
		if _, present := a.appliedApps[name]; !present {
			delete(a.lastGood, name)
		}
	}
	for name := range a.refused {
		if _, still := failed[name]; !still {
			delete(a.refused, name)
		}
	}
	a.appErrors = failed
	result := msg.ReloadApplied
	if len(failed) > 0 {
		result = msg.ReloadRejected
	}
	a.reporter.Applied(ctx, a.agentMessage(""))
	a.report(ctx, start, snap.Revision, result, "", failed)
	if h := a.cfg.Hooks.Served; h != nil {
		h(len(final.snap.Apps), final.snap.Servers())
	}
	a.logger.Info("config applied", zap.Uint64("generation", gen), zap.Uint64("revision", snap.Revision),
		zap.Int("apps", len(snap.Apps)), zap.Int("servers", snap.Servers()), zap.Int("failed_apps", len(failed)),
		zap.Duration("duration", a.now().Sub(start)))
	return 0
}

// adopt takes over the config nginx already serves when a restarted
// lbagent would render exactly it (same bytes at the served generation):
// no reload, so no keep-alive connection is closed. In dynamic mode it
// pushes every app's endpoints. It reports whether it adopted.
func (a *Agent) adopt(ctx context.Context, snap state.Snapshot, renderer *render.Renderer) bool {
	sctx, cancel := context.WithTimeout(ctx, time.Second)
	served, err := nginx.Served(sctx, a.client, a.statusURL())
	cancel()
	var gen uint64
	if err != nil || served == "" {
		a.logger.Debug("no served generation to adopt", zap.Error(err))
		return false
	}
	if _, err := fmt.Sscan(served, &gen); err != nil || gen == 0 {
		return false
	}
	current, err := os.ReadFile(a.cfg.Target)
	if err != nil {
		return false
	}
	d, conflicts := render.Layout(snap, gen, a.cfg.Render)
	if len(conflicts) > 0 {
		return false
	}
	out, err := renderer.Render(d, a.cfg.Render.Main)
	if err != nil || !bytes.Equal(out, current) {
		a.logger.Debug("the served config is not this state's: reloading", zap.Uint64("generation", gen), zap.Error(err))
		return false
	}
	if a.cfg.Pusher != nil {
		eps := a.endpointsOf.Of(snap)
		if err := a.push(ctx, eps, true); err != nil {
			a.logger.Warn("endpoints not pushed to the nginx found serving; reloading instead", zap.Error(err))
			return false
		}
		a.endpoints = eps
		a.snapshots.Put(dynamic.Batch{Version: a.version, Apps: eps})
	}
	a.generation, a.applied, a.hasApplied = gen, snap, true
	a.appliedLayout, a.appliedSpecs = a.comparable(snap), specsOf(snap)
	a.appliedRenderer = renderer
	a.servedGen.Store(gen)
	a.appliedApps = map[string]int64{}
	for _, app := range snap.Apps {
		a.lastGood[app.Spec.Name] = app
		a.appliedApps[app.Spec.Name] = app.Spec.Generation
	}
	a.appErrors = map[string]string{}
	if h := a.cfg.Hooks.Served; h != nil {
		h(len(snap.Apps), snap.Servers())
	}
	a.logger.Info("adopted the config nginx serves: no reload", zap.Uint64("generation", gen), zap.Uint64("revision", snap.Revision))
	return true
}

// drainKeepalive, in dynamic mode with nginx serving, asks the workers
// that the reload into gen replaces to close keep-alive connections after
// each answer, and waits ReloadDrain for busy ones to cycle. The request
// lives until the reload is confirmed (and a while past it: the old
// workers finish their requests with it). It reports whether it asked.
func (a *Agent) drainKeepalive(ctx context.Context, gen uint64) bool {
	if a.cfg.Pusher == nil || a.cfg.ReloadDrain <= 0 || !a.hasApplied {
		return false
	}
	rctx, cancel := context.WithTimeout(ctx, time.Second)
	err := a.cfg.Pusher.CloseKeepalive(rctx, gen, a.cfg.ReloadDrain+a.cfg.ConfirmTimeout+10*time.Second)
	cancel()
	if err != nil {
		// Templates older than the keepalive location: reload anyway.
		a.logger.Warn("keep-alive connections not drained before the reload", zap.Error(err))
		return false
	}
	select {
	case <-ctx.Done():
	case <-time.After(a.cfg.ReloadDrain):
	}
	return true
}

// initVersion learns the version nginx has installed, once: pushes
// continue above it and above the snapshot file's.
func (a *Agent) initVersion(ctx context.Context) {
	if a.versioned {
		return
	}
	a.version = max(a.version, dynamic.ReadSnapshotVersion(a.cfg.Snapshot))
	vctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	if v, err := a.cfg.Pusher.Version(vctx); err == nil {
		a.version = max(a.version, v)
		a.versioned = true
	}
}

// pushChanged pushes the apps whose endpoints differ from what nginx has,
// then records next as nginx's and writes the snapshot file.
func (a *Agent) pushChanged(ctx context.Context, next map[string]*dynamic.Endpoints) error {
	changed := dynamic.Diff(a.endpoints, next)
	if changed == nil {
		return nil
	}
	full := a.endpoints == nil
	if full {
		changed = next
	}
	if err := a.push(ctx, changed, full); err != nil {
		return err
	}
	a.endpoints = next
	// nginx serves the push; the file, for nginx's next start or reload, is
	// written behind it (and synchronously before any reload).
	a.snapshots.Put(dynamic.Batch{Version: a.version, Apps: next})
	return nil
}

// push sends one batch above every version seen, retrying once above
// nginx's when nginx has a newer one (a restarted lbagent).
func (a *Agent) push(ctx context.Context, apps map[string]*dynamic.Endpoints, full bool) error {
	start := a.now()
	a.initVersion(ctx)
	var err error
	for range 2 {
		a.version++
		var got uint64
		got, err = a.cfg.Pusher.Push(ctx, dynamic.Batch{Version: a.version, Full: full, Apps: apps})
		var stale *dynamic.StaleError
		if errors.As(err, &stale) {
			a.version = max(a.version, stale.Installed)
			continue
		}
		if err == nil {
			a.version, a.versioned = max(a.version, got), true
		}
		break
	}
	if h := a.cfg.Hooks.Pushed; h != nil {
		h(a.now().Sub(start), err)
	}
	return err
}

// sameLayout reports whether snap renders the config nginx serves. In
// dynamic mode the layout is made of the app records alone (servers live in
// nginx's dict), so the very records the applied layout was made of, in
// the same order, are the same layout: an endpoint change is known to
// need no render without building one (the store keeps an untouched app's
// record). Otherwise the layouts are compared.
func (a *Agent) sameLayout(snap state.Snapshot) bool {
	if a.cfg.Pusher != nil && len(snap.Apps) == len(a.appliedSpecs) {
		same := true
		for i, app := range snap.Apps {
			if app.Spec != a.appliedSpecs[i] {
				same = false
				break
			}
		}
		if same {
			return true
		}
	}
	return reflect.DeepEqual(a.comparable(snap), a.appliedLayout)
}

// specsOf returns the app records of snap, in order.
func specsOf(snap state.Snapshot) []*msg.App {
	out := make([]*msg.App, len(snap.Apps))
	for i, app := range snap.Apps {
		out[i] = app.Spec
	}
	return out
}

// comparable is the layout of snap without what changes on every write
// (generation, revision): equal layouts through the same templates render
// equal configs.
func (a *Agent) comparable(snap state.Snapshot) render.Data {
	d, _ := render.Layout(snap, 0, a.cfg.Render)
	d.Revision = 0
	return d.Comparable()
}

// apply swaps the tested config in, reloads and confirms; on a failed
// confirm it puts the previous file back and reloads again.
func (a *Agent) apply(ctx context.Context, conf []byte, gen uint64) error {
	previous, _ := os.ReadFile(a.cfg.Target)
	if err := atomicfile.Write(a.cfg.Target, conf, 0o644); err != nil {
		return err
	}
	if len(previous) > 0 {
		_ = atomicfile.Write(a.cfg.Target+".last-good", previous, 0o644)
	}
	err := a.reloader.Reload(ctx)
	if err == nil {
		cctx, cancel := context.WithTimeout(ctx, a.cfg.ConfirmTimeout)
		err = nginx.Confirm(cctx, a.client, a.statusURL(), fmt.Sprint(gen), 10*time.Millisecond)
		cancel()
	}
	if err == nil {
		return nil
	}
	if len(previous) > 0 {
		if rerr := atomicfile.Write(a.cfg.Target, previous, 0o644); rerr == nil {
			_ = a.reloader.Reload(ctx)
		}
	}
	return fmt.Errorf("generation %d: %w", gen, err)
}

func (a *Agent) statusURL() string {
	return "http://" + a.cfg.Render.StatusListen + "/berth/generation"
}

func (a *Agent) agentMessage(lastErr string) *msg.Agent {
	errs := map[string]string{}
	for k, v := range a.appErrors {
		errs[k] = msg.Truncate(v, msg.MaxTextLen)
	}
	return &msg.Agent{Node: a.cfg.Node, AppliedRevision: a.applied.Revision, Apps: a.appliedApps, Errors: errs,
		LastError: msg.Truncate(lastErr, msg.MaxTextLen), UpdatedAt: a.now().UTC()}
}

func (a *Agent) report(ctx context.Context, start time.Time, rev uint64, result, errText string, failed map[string]string) {
	fa := map[string]string{}
	for k, v := range failed {
		fa[k] = msg.Truncate(v, msg.MaxTextLen)
	}
	a.reporter.Reload(ctx, &msg.Reload{Node: a.cfg.Node, Result: result, Revision: rev, Error: msg.Truncate(errText, msg.MaxTextLen),
		FailedApps: fa, DurationMS: float64(a.now().Sub(start).Microseconds()) / 1000, At: a.now().UTC()})
}

// candidate is one attempt to build a config nginx accepts.
type candidate struct {
	agent    *Agent
	renderer *render.Renderer
	// snap has the apps in known (refused before, by name, with why)
	// already replaced by their stand-ins (Agent.effective).
	snap  state.Snapshot
	known map[string]string
}

type built struct {
	snap  state.Snapshot
	bytes []byte
	// refused are the apps nginx refused in this build, found by bisection.
	refused map[string]refusal
}

// refusal is an app nginx refused: at its spec generation, why, when, and
// the app record that stands in for it meanwhile (its last good record, or
// a 503 placeholder), kept so that the stand-in is the same pointer from
// one sync to the next.
type refusal struct {
	generation  int64
	why         string
	at          time.Time
	spec        *msg.App
	placeholder bool // spec is a placeholder: no servers
}

// Opener opens a secret sealed to this lbagent's role (bus.Conn).
type Opener interface {
	OpenSealed(boxes []msg.SealedKey) ([]byte, error)
}

// selfCert is the record an app with a self-signed or ACME certificate is
// rendered with: its own, with the files of its certificate.
type selfCert struct {
	src, out *msg.App
	notAfter time.Time
	// serial is the ACME certificate's, "" for a self-signed one; files
	// are its files, none while it could not be placed.
	serial string
	files  selfsigned.Cert
	// cert is the ACME certificate served (its names decide which hosts
	// get it); failed the serial of a newer one that could not be placed.
	cert   *msg.Certificate
	failed string
}

// withCerts returns snap with every app whose TLS is self_signed rendered
// from a copy of its record that names the certificate this lbagent made
// for its hosts (made, or made again, as selfsigned.Ensure decides). The
// copy is the same pointer from one sync to the next while the record and
// the certificate hold, so an endpoint change stays a push. An app whose
// certificate cannot be made keeps its record: its render fails, and it
// alone is isolated.
func (a *Agent) withCerts(snap state.Snapshot, now time.Time) state.Snapshot {
	if len(a.certs) > 0 { // forget apps that are gone
		present := make(map[string]bool, len(snap.Apps))
		for _, app := range snap.Apps {
			present[app.Spec.Name] = true
		}
		for name := range a.certs {
			if !present[name] {
				delete(a.certs, name)
			}
		}
	}
	out := snap
	out.Apps = nil
	for i, app := range snap.Apps {
		tls := app.Spec.Routing.TLS
		if tls != nil && tls.ACME {
			c, ok := a.acmeCert(app, now)
			if !ok {
				continue
			}
			if out.Apps == nil {
				out.Apps = append([]state.App(nil), snap.Apps...)
			}
			out.Apps[i] = state.App{Spec: c.out, Servers: app.Servers, Cert: c.cert}
			continue
		}
		if tls == nil || !tls.SelfSigned {
			continue
		}
		c, ok := a.certs[app.Spec.Name]
		if !ok || c.src != app.Spec || c.notAfter.Sub(now) <= selfsigned.RenewBefore {
			cert, err := selfsigned.Ensure(a.cfg.CertDir, app.Spec.Name, app.Spec.Routing.Hosts, now)
			if err != nil {
				a.logger.Error("self-signed certificate not made", zap.String("app", app.Spec.Name), zap.Error(err))
				continue
			}
			spec := *app.Spec
			t := *tls
			t.Certificate, t.Key = cert.Certificate, cert.Key
			spec.Routing.TLS = &t
			c = selfCert{src: app.Spec, out: &spec, notAfter: cert.NotAfter}
			a.certs[app.Spec.Name] = c
		}
		if out.Apps == nil {
			out.Apps = append([]state.App(nil), snap.Apps...)
		}
		out.Apps[i] = state.App{Spec: c.out, Servers: app.Servers}
	}
	if out.Apps == nil {
		return snap
	}
	return out
}

// acmeCert is the record an app with tls.acme is rendered with once its
// certificate is issued: a copy that names the certificate's files, placed
// in CertDir/acme from the chain and the key opened from its sealed box.
// The copy is kept while the record and the certificate (its serial) hold,
// so the scheduler's periodic republish writes nothing. A certificate that
// does not open or pair, or one missing from the bucket (a NATS that came
// back empty, until the leader puts it again), leaves the one this lbagent
// serves in place while it is valid: nginx never loses HTTPS for it.
// Without any, ok is false and the app is rendered from its record: plain
// HTTP, answering the CA's challenges.
func (a *Agent) acmeCert(app state.App, now time.Time) (selfCert, bool) {
	name := app.Spec.Name
	prev, had := a.certs[name]
	serving := had && prev.files.Certificate != "" && now.Before(prev.notAfter)
	keep := func() (selfCert, bool) {
		if !serving {
			delete(a.certs, name)
			return selfCert{}, false
		}
		if prev.src != app.Spec {
			prev.src, prev.out = app.Spec, withCertFiles(app.Spec, prev.files)
			a.certs[name] = prev
		}
		return prev, true
	}
	cert := app.Cert
	if cert == nil {
		return keep()
	}
	if had && prev.src == app.Spec && (prev.serial == cert.Serial || prev.failed == cert.Serial) {
		return prev, prev.files.Certificate != ""
	}
	if had && (prev.serial == cert.Serial && prev.files.Certificate == "" || prev.failed == cert.Serial) {
		return keep() // this certificate failed already: logged once
	}
	fail := func(text string, err error) (selfCert, bool) {
		a.logger.Error(text, zap.String("app", name), zap.String("serial", cert.Serial), zap.Bool("keeps_serving_the_previous", serving), zap.Error(err))
		if serving {
			prev.failed = cert.Serial
			a.certs[name] = prev
			return keep()
		}
		a.certs[name] = selfCert{src: app.Spec, out: app.Spec, serial: cert.Serial}
		return selfCert{}, false
	}
	if a.cfg.Keys == nil {
		return fail("an ACME certificate, and no record keys to open it: run lbagent with its role credential (--nats-nkey)", nil)
	}
	key, err := a.cfg.Keys.OpenSealed(cert.Keys)
	if err != nil {
		return fail("ACME certificate key does not open", err)
	}
	files, err := acmecert.Place(filepath.Join(a.cfg.CertDir, "acme"), cert, key, app.Spec.Routing.Hosts)
	clear(key)
	if err != nil {
		return fail("ACME certificate not placed", err)
	}
	c := selfCert{src: app.Spec, out: withCertFiles(app.Spec, files), notAfter: files.NotAfter, serial: cert.Serial, files: files, cert: cert}
	a.certs[name] = c
	log := a.logger.Debug
	if !had || prev.serial != cert.Serial {
		log = a.logger.Info
	}
	log("serving an ACME certificate", zap.String("app", name), zap.String("serial", cert.Serial), zap.Time("not_after", files.NotAfter))
	return c, true
}

// withCertFiles is a copy of app whose TLS names files.
func withCertFiles(app *msg.App, files selfsigned.Cert) *msg.App {
	spec := *app
	t := *app.Routing.TLS
	t.Certificate, t.Key = files.Certificate, files.Key
	spec.Routing.TLS = &t
	return &spec
}

// settleRefusals, when nginx already serves eff with nothing to reload,
// forgets the refusals not in known (the app changed into something that
// renders as its stand-in did, or left) and records eff's generations.
func (a *Agent) settleRefusals(eff state.Snapshot, known map[string]string) {
	for name := range a.refused {
		if _, ok := known[name]; !ok {
			delete(a.refused, name)
			delete(a.appErrors, name)
		}
	}
	for _, app := range eff.Apps {
		if _, stand := known[app.Spec.Name]; !stand && a.appliedApps[app.Spec.Name] != app.Spec.Generation {
			a.appliedApps[app.Spec.Name] = app.Spec.Generation
		}
	}
}

// effective returns snap with every app refused at its current generation
// within --resync replaced by its stand-in (with the app's current servers,
// unless it is a placeholder), and those apps with why.
func (a *Agent) effective(snap state.Snapshot, now time.Time) (state.Snapshot, map[string]string) {
	known := map[string]string{}
	if len(a.refused) == 0 {
		return snap, known
	}
	out := snap
	out.Apps = nil
	for i, app := range snap.Apps {
		r, ok := a.refused[app.Spec.Name]
		if !ok || r.generation != app.Spec.Generation || now.Sub(r.at) >= a.cfg.Resync {
			continue
		}
		if out.Apps == nil {
			out.Apps = append([]state.App(nil), snap.Apps...)
		}
		stand := state.App{Spec: r.spec, Servers: app.Servers}
		if r.placeholder {
			stand.Servers = nil
		}
		out.Apps[i] = stand
		known[app.Spec.Name] = r.why
	}
	if out.Apps == nil {
		return snap, known
	}
	return out, known
}

func (c *candidate) render(gen uint64, snap state.Snapshot) ([]byte, error) {
	start := time.Now()
	d, _ := render.Layout(snap, gen, c.agent.cfg.Render)
	out, err := c.renderer.Render(d, c.agent.cfg.Render.Main)
	if h := c.agent.cfg.Hooks.Rendered; h != nil {
		h(time.Since(start))
	}
	return out, err
}

// build renders the snapshot and tests it. When nginx refuses it, it
// finds the apps at fault by bisection, replaces each with its last good
// version (or, for an app never good, a route that answers 503), and
// tests again. It returns the config to apply and the failed apps.
func (c *candidate) build(ctx context.Context, gen uint64) (built, map[string]string, error) {
	failed := map[string]string{}
	for app, why := range c.known {
		failed[app] = why
	}
	start := time.Now()
	d, conflicts := render.Layout(c.snap, gen, c.agent.cfg.Render)
	for app, why := range conflicts {
		failed[app] = why
	}
	out, err := c.renderer.Render(d, c.agent.cfg.Render.Main)
	if h := c.agent.cfg.Hooks.Rendered; h != nil {
		h(time.Since(start))
	}
	if err == nil {
		err = c.test(ctx, out)
	}
	if err == nil {
		return built{snap: c.snap, bytes: out}, failed, nil
	}
	if ctx.Err() != nil {
		return built{}, failed, ctx.Err()
	}
	c.agent.logger.Warn("candidate config refused, isolating the apps at fault", zap.Error(err))
	bad := c.bisect(ctx, gen, c.snap.Apps, err)
	if len(bad) == 0 {
		return built{}, failed, fmt.Errorf("nginx refused the config but no single app is at fault: %w", err)
	}
	fixed := c.snap
	fixed.Apps = make([]state.App, 0, len(c.snap.Apps))
	refused := map[string]refusal{}
	routes := routeTable(c.snap.Apps)
	for _, app := range c.snap.Apps {
		why, isBad := bad[app.Spec.Name]
		if !isBad {
			fixed.Apps = append(fixed.Apps, app)
			continue
		}
		failed[app.Spec.Name] = why
		r := refusal{generation: app.Spec.Generation, why: why, at: c.agent.now()}
		stand := state.App{Servers: app.Servers}
		if good, ok := c.agent.lastGood[app.Spec.Name]; ok {
			// The last good record, with today's servers: in dynamic mode
			// they are pushed, in reload mode they are in its upstream.
			stand.Spec = good.Spec
		} else {
			stand, r.placeholder = placeholder(app, routes), true
		}
		r.spec = stand.Spec
		refused[app.Spec.Name] = r
		fixed.Apps = append(fixed.Apps, stand)
	}
	d, _ = render.Layout(fixed, gen, c.agent.cfg.Render)
	out, err = c.renderer.Render(d, c.agent.cfg.Render.Main)
	if err == nil {
		err = c.test(ctx, out)
	}
	if err != nil {
		return built{}, failed, fmt.Errorf("config still refused after isolating %d apps: %w", len(bad), err)
	}
	return built{snap: fixed, bytes: out, refused: refused}, failed, nil
}

// placeholder keeps an app's hosts and paths answering 503, without
// anything that could have made nginx refuse it: no TLS, no health check,
// no host or path the grammar refuses, and of the route table's (routes,
// spec.Claims) only the hosts it routes on and the locations it got on
// every one of them, so a broken app's 503 never takes or shadows another
// app's route.
func placeholder(app state.App, routes *spec.RouteTable) state.App {
	s := *app.Spec
	s.Routing.TLS = nil
	s.Health = nil
	s.Routing.Hosts = nil
	for _, h := range app.Spec.Routing.Hosts {
		if _, routed := routes.Granted(s.Name, spec.HostKey(h)); routed && spec.CheckHost(h) == nil {
			s.Routing.Hosts = append(s.Routing.Hosts, h)
		}
	}
	s.Routing.Paths = nil
	if len(app.Spec.Routing.Hosts) > 0 && len(s.Routing.Hosts) == 0 {
		return state.App{Spec: &s} // no valid host it routes on: no route, never the default server's
	}
	s.Routing.Rules = nil
	granted := func(l spec.Location) bool {
		for _, h := range s.Routing.HostKeys() {
			locs, _ := routes.Granted(s.Name, h)
			if !slices.ContainsFunc(locs, func(g spec.Location) bool { return g.Match == l.Match && g.Path == l.Path && g.Index == l.Index }) {
				return false
			}
		}
		return true
	}
	// Paths and the prefix and exact rules, without their options; no
	// regex, the riskiest thing to hand nginx, and no header match.
	for _, l := range app.Spec.Routing.Locations() {
		switch {
		case l.Match == spec.MatchRegex || (l.Rule != nil && len(l.Rule.Headers) > 0) || !granted(l):
		case l.Rule == nil && spec.CheckPath(l.Path) == nil:
			s.Routing.Paths = append(s.Routing.Paths, l.Path)
		case l.Rule != nil && spec.CheckPath(l.Rule.Path) == nil:
			s.Routing.Rules = append(s.Routing.Rules, spec.Rule{Path: l.Rule.Path, Match: l.Rule.Match})
		}
	}
	return state.App{Spec: &s}
}

// routeTable is the route table of apps (spec.Claims).
func routeTable(apps []state.App) *spec.RouteTable {
	claimants := make([]spec.Claimant, len(apps))
	for i, a := range apps {
		claimants[i] = a.Spec.Claimant()
	}
	return spec.Claims(claimants)
}

// bisect returns the apps that nginx (or a template helper) refuses on their
// own, each with the error, testing halves of apps recursively.
func (c *candidate) bisect(ctx context.Context, gen uint64, apps []state.App, whole error) map[string]string {
	bad := map[string]string{}
	var walk func(apps []state.App, known error)
	walk = func(apps []state.App, known error) {
		if len(apps) == 0 || ctx.Err() != nil {
			return
		}
		err := known
		if err == nil {
			_, err = c.renderAndTest(ctx, gen, apps)
		}
		if err == nil {
			return
		}
		if len(apps) == 1 {
			bad[apps[0].Spec.Name] = err.Error()
			return
		}
		mid := len(apps) / 2
		walk(apps[:mid], nil)
		walk(apps[mid:], nil)
	}
	walk(apps, whole)
	return bad
}

func (c *candidate) renderAndTest(ctx context.Context, gen uint64, apps []state.App) ([]byte, error) {
	out, err := c.render(gen, state.Snapshot{Apps: apps})
	if err != nil {
		return nil, err
	}
	return out, c.test(ctx, out)
}

// test writes the candidate into the staging prefix and runs nginx -t on it.
// An include file is wrapped in a minimal main config.
func (c *candidate) test(ctx context.Context, conf []byte) error {
	dir := c.agent.cfg.Staging
	for _, sub := range []string{"conf", "logs", "run", "temp"} {
		if err := os.MkdirAll(filepath.Join(dir, sub), 0o755); err != nil {
			return err
		}
	}
	main := filepath.Join(dir, "conf", "nginx.conf")
	if c.agent.cfg.Render.Main {
		if err := os.WriteFile(main, conf, 0o644); err != nil {
			return err
		}
	} else {
		inc := filepath.Join(dir, "conf", "berth.conf")
		if err := os.WriteFile(inc, conf, 0o644); err != nil {
			return err
		}
		modules := ""
		if d := c.agent.cfg.Render.Dynamic; d != nil && d.ModulesDir != "" {
			modules = "load_module " + filepath.Join(d.ModulesDir, "ndk_http_module.so") + ";\nload_module " +
				filepath.Join(d.ModulesDir, "ngx_http_lua_module.so") + ";\n"
		}
		wrapper := modules + "pid run/nginx.pid;\nerror_log logs/error.log;\nevents {}\nhttp {\n" +
			"    client_body_temp_path temp/client_body;\n    proxy_temp_path temp/proxy;\n" +
			"    fastcgi_temp_path temp/fastcgi;\n    uwsgi_temp_path temp/uwsgi;\n    scgi_temp_path temp/scgi;\n" +
			"    include " + inc + ";\n}\n"
		if err := os.WriteFile(main, []byte(wrapper), 0o644); err != nil {
			return err
		}
	}
	return c.agent.tester.Test(ctx, dir, main)
}

// Generation returns the config generation nginx serves; safe from any goroutine.
func (a *Agent) Generation() uint64 { return a.servedGen.Load() }
