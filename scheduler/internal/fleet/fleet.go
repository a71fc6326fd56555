// Package fleet drives the Docker engines of every registered host as one:
// it keeps a client per host (the registry in Postgres decides which),
// probes each engine, marks a host down once it has not answered for the
// host timeout, lists the containers of every host that is up, routes
// each container operation (and each read of a container's log) to the
// host that runs it, and merges their event streams. With no host registered the scheduler's local engine is
// the one host (its name is ""), as before hosts existed.
package fleet

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"

	"github.com/berthhq/berth/common/spec"
	"github.com/berthhq/berth/scheduler/internal/docker"
	"github.com/berthhq/berth/scheduler/internal/image"
	"github.com/berthhq/berth/scheduler/internal/placement"
	"github.com/berthhq/berth/scheduler/internal/store"
)

// Engine is one host's Docker engine (docker.Client).
type Engine interface {
	Ping(ctx context.Context) (string, error)
	List(ctx context.Context) ([]docker.Container, error)
	Inspect(ctx context.Context, id string) (docker.Container, error)
	Events(ctx context.Context, handle func(docker.Event), resync func()) error
	Create(ctx context.Context, o docker.CreateOptions) (string, error)
	Start(ctx context.Context, id string) error
	Stop(ctx context.Context, id, signal string, grace time.Duration) error
	Remove(ctx context.Context, id string) error
	ImagePresent(ctx context.Context, ref string) (bool, error)
	Image(ctx context.Context, ref string) (docker.ImageInfo, error)
	Pull(ctx context.Context, ref string, timeout time.Duration) error
	Stats(ctx context.Context, ids []string, parallel int) (map[string]docker.Reading, error)
	Tail(ctx context.Context, id string, n int) ([]string, error)
	Exec(ctx context.Context, id string, argv []string, timeout time.Duration) (docker.ExecResult, error)
	Logs(ctx context.Context, id string, o docker.LogOptions, emit func(docker.LogLine) error) error
	Close() error
}

var _ Engine = (*docker.Client)(nil)

// Registry is where the hosts are registered.
type Registry interface {
	Hosts(ctx context.Context) ([]store.Host, error)
}

// Dial connects to a registered host's engine.
type Dial func(h store.Host) (Engine, error)

// Errors of the fleet.
var (
	// ErrHostDown is an operation on a host that is down or unknown.
	ErrHostDown = errors.New("fleet: the host is not up")
	// ErrHostUnknown is a list while a host has never answered.
	ErrHostUnknown = errors.New("fleet: a host's containers are not known yet")
)

// Config tunes the fleet.
type Config struct {
	// Timeout is how long a host's engine may not answer before the host
	// is marked down (--host-timeout).
	Timeout time.Duration
	// Probe is how often every engine is pinged.
	Probe time.Duration
	// Call bounds one list or ping of one engine.
	Call time.Duration
}

// Host states, as store.Host… .
const (
	Up      = store.HostUp
	Down    = store.HostDown
	Unknown = store.HostUnknown
)

type member struct {
	rec     store.Host
	eng     Engine
	state   string
	reason  string // why the host is not used: its client could not be set up
	failing bool   // the last call failed: not answering, not down yet
	listed  bool   // a list has come back since it was (re)added or down
	lastOK  time.Time
	since   time.Time
	last    []docker.Container // the last list, served while the host is suspect
	stopEvs context.CancelFunc
}

// Fleet is every engine as one. Safe for concurrent use.
type Fleet struct {
	cfg    Config
	reg    Registry
	dial   Dial
	local  Engine
	logger *zap.Logger
	now    func() time.Time

	syncMu  sync.Mutex // one Sync at a time: a stale registry read never lands after a fresh one
	mu      sync.Mutex
	synced  bool               // the registry has been read once
	members map[string]*member // registered hosts, by name
	localOK bool               // the local engine's last list succeeded
	where   map[string]string  // container id → host
	handle  func(docker.Event)
	resync  func()
	evCtx   context.Context
	// Changed is called after a host changes state (set before Run).
	Changed func(host, state string)

	up *prometheus.GaugeVec
}

// New returns a fleet over the registry's hosts; local is the engine used
// while none is registered (nil: none).
func New(cfg Config, reg Registry, dial Dial, local Engine, logger *zap.Logger) *Fleet {
	if cfg.Timeout <= 0 {
		cfg.Timeout = 15 * time.Second
	}
	if cfg.Probe <= 0 {
		cfg.Probe = time.Second
	}
	if cfg.Call <= 0 {
		cfg.Call = 5 * time.Second
	}
	return &Fleet{cfg: cfg, reg: reg, dial: dial, local: local, logger: logger.Named("fleet"), now: time.Now,
		members: map[string]*member{}, where: map[string]string{},
		up: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "berth_scheduler_host_up",
			Help: "1 while a registered host's Docker engine answers, 0 once it is marked down (--host-timeout), -1 before its first answer."}, []string{"host"})}
}

// Collectors returns the fleet's metrics.
func (f *Fleet) Collectors() []prometheus.Collector { return []prometheus.Collector{f.up} }

// Run syncs with the registry and probes every engine until ctx ends.
func (f *Fleet) Run(ctx context.Context) error {
	f.mu.Lock()
	f.evCtx = ctx
	f.mu.Unlock()
	t := time.NewTicker(f.cfg.Probe)
	defer t.Stop()
	for {
		if err := f.Sync(ctx); err != nil && ctx.Err() == nil {
			f.logger.Warn("could not read the host registry; probing the hosts known", zap.Error(err))
		}
		f.probe(ctx)
		select {
		case <-ctx.Done():
			f.mu.Lock()
			for _, m := range f.members {
				f.drop(m)
			}
			f.mu.Unlock()
			return nil
		case <-t.C:
		}
	}
}

// Sync reads the registry: new hosts are dialled, changed ones dialled
// again, removed ones closed.
func (f *Fleet) Sync(ctx context.Context) error {
	f.syncMu.Lock()
	defer f.syncMu.Unlock()
	hosts, err := f.reg.Hosts(ctx)
	if err != nil {
		return err
	}
	var failed []string
	f.mu.Lock()
	seen := map[string]bool{}
	for _, h := range hosts {
		seen[h.Name] = true
		m, ok := f.members[h.Name]
		if ok && sameEngine(m.rec, h) && m.eng != nil {
			m.rec = h
			continue
		}
		if ok {
			f.drop(m)
		}
		eng, err := f.dial(h)
		if err != nil {
			// Dialled again at the next Sync (every probe); logged once
			// for each reason.
			reason := Reason(err)
			if !ok || m.eng != nil || m.reason != reason {
				f.logger.Error("cannot set up the host's Docker client: it is down until this is fixed", zap.String("host", h.Name), zap.String("reason", reason))
			}
			m = &member{rec: h, state: Down, reason: reason, since: f.now()}
			f.up.WithLabelValues(h.Name).Set(0)
			failed = append(failed, h.Name)
		} else {
			m = &member{rec: h, eng: eng, state: Unknown, since: f.now()}
			f.watch(m)
			f.up.WithLabelValues(h.Name).Set(-1)
			f.logger.Info("host added", zap.String("host", h.Name), zap.String("docker_url", h.DockerURL), zap.String("address", h.Address))
		}
		f.members[h.Name] = m
	}
	for name, m := range f.members {
		if !seen[name] {
			f.drop(m)
			delete(f.members, name)
			f.up.DeleteLabelValues(name)
			f.logger.Info("host removed from the registry", zap.String("host", name))
		}
	}
	f.synced = true
	cb := f.Changed
	f.mu.Unlock()
	if cb != nil {
		for _, name := range failed {
			cb(name, Down)
		}
	}
	return nil
}

func sameEngine(a, b store.Host) bool {
	return a.DockerURL == b.DockerURL && a.TLSCA == b.TLSCA && a.TLSCert == b.TLSCert && a.TLSKey == b.TLSKey && a.Address == b.Address &&
		slices.Equal(a.Registries, b.Registries)
}

// Reason is err as one line, for a host's state reason: a registration's
// field errors joined by "; ".
func Reason(err error) string {
	var es spec.Errors
	if errors.As(err, &es) {
		parts := make([]string, len(es))
		for i, e := range es {
			parts[i] = e.Error()
		}
		prefix, _, _ := strings.Cut(err.Error(), "spec:")
		return prefix + strings.Join(parts, "; ")
	}
	return strings.ReplaceAll(err.Error(), "\n", " ")
}

// drop stops a member's events and closes its client. Under mu.
func (f *Fleet) drop(m *member) {
	if m.stopEvs != nil {
		m.stopEvs()
	}
	if m.eng != nil {
		_ = m.eng.Close()
	}
}

// watch streams a member's events to the handler, once Events was
// called. Under mu.
func (f *Fleet) watch(m *member) {
	if f.handle == nil || f.evCtx == nil || m.eng == nil {
		return
	}
	ctx, cancel := context.WithCancel(f.evCtx)
	m.stopEvs = cancel
	eng, handle, resync := m.eng, f.handle, f.resync
	go func() { _ = eng.Events(ctx, handle, resync) }()
}

// probe pings every engine; a host that has not answered for the timeout
// is down.
func (f *Fleet) probe(ctx context.Context) {
	f.mu.Lock()
	ms := slices.Collect(maps.Values(f.members))
	f.mu.Unlock()
	var wg sync.WaitGroup
	for _, m := range ms {
		if m.eng == nil {
			continue
		}
		wg.Go(func() {
			cctx, cancel := context.WithTimeout(ctx, min(f.cfg.Call, f.cfg.Probe*2))
			_, err := m.eng.Ping(cctx)
			cancel()
			if ctx.Err() == nil {
				f.observe(m, err)
			}
		})
	}
	wg.Wait()
}

// observe records the outcome of a call to m's engine.
func (f *Fleet) observe(m *member, err error) {
	f.mu.Lock()
	name := m.rec.Name
	if f.members[name] != m {
		f.mu.Unlock() // dropped or replaced meanwhile: its news is stale
		return
	}
	now := f.now()
	state := m.state
	m.failing = err != nil
	switch {
	case err == nil:
		m.lastOK = now
		state = Up
	case m.state == Up && now.Sub(m.lastOK) >= f.cfg.Timeout, m.state == Unknown && now.Sub(m.since) >= f.cfg.Timeout:
		state = Down
	}
	changed := state != m.state
	if changed {
		m.state, m.since = state, now
		if state == Down {
			m.last, m.listed = nil, false
		}
		switch state {
		case Up:
			f.up.WithLabelValues(name).Set(1)
		case Down:
			f.up.WithLabelValues(name).Set(0)
		}
	}
	cb := f.Changed
	f.mu.Unlock()
	if !changed {
		return
	}
	switch state {
	case Up:
		f.logger.Info("host up: its engine answers", zap.String("host", name))
	case Down:
		f.logger.Warn("host down: its engine has not answered for the host timeout", zap.String("host", name),
			zap.Duration("timeout", f.cfg.Timeout), zap.Error(err))
	}
	if cb != nil {
		cb(name, state)
	}
}

// Each calls fn with every registered host's state, why it is not used
// ("" unless its client could not be set up) and when it last answered
// (zero: never).
func (f *Fleet) Each(fn func(host, state, reason string, lastOK time.Time)) {
	type row struct {
		name, state, reason string
		ok                  time.Time
	}
	f.mu.Lock()
	rows := make([]row, 0, len(f.members))
	for name, m := range f.members {
		rows = append(rows, row{name, m.state, m.reason, m.lastOK})
	}
	f.mu.Unlock()
	for _, r := range rows {
		fn(r.name, r.state, r.reason, r.ok)
	}
}

// Registered reports whether any host is registered: without one, the
// local engine is the one host.
func (f *Fleet) Registered() bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.members) > 0
}

// Hosts are the hosts placement may choose from, without reservations:
// the registered ones (schedulable while up and not draining), or the
// local engine alone while none is registered.
func (f *Fleet) Hosts() []placement.Host {
	f.mu.Lock()
	defer f.mu.Unlock()
	if !f.synced {
		return nil // nothing is placed before the registry is read
	}
	if len(f.members) == 0 {
		if f.local == nil {
			return nil
		}
		return []placement.Host{{Name: "", Schedulable: true, State: Up}}
	}
	out := make([]placement.Host, 0, len(f.members))
	for _, m := range f.members {
		state := m.state
		switch {
		case m.rec.Drain:
			state = "draining"
		case m.state == Up && m.failing:
			state = Unreachable
		}
		out = append(out, placement.Host{Name: m.rec.Name, Labels: m.rec.Labels, CPU: m.rec.CPU, Memory: m.rec.Memory,
			Schedulable: m.state == Up && !m.failing && m.listed && !m.rec.Drain, State: state})
	}
	slices.SortFunc(out, func(a, b placement.Host) int { return strings.Compare(a.Name, b.Name) })
	return out
}

// Unreachable is the state of a host that stopped answering and is not
// down yet: what runs there is left alone until it answers or is down.
const Unreachable = "unreachable"

// State is a host's state: Up, Unreachable, Down or Unknown; draining
// reports its drain flag. The local engine ("") is up while no host is
// registered and draining once one is.
func (f *Fleet) State(host string) (state string, draining bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if !f.synced {
		return Unknown, false // before the registry is read, nothing is known
	}
	if host == "" {
		switch {
		case len(f.members) == 0:
			return Up, false
		case !f.localOK:
			return Unreachable, true
		}
		return Up, true
	}
	m, ok := f.members[host]
	switch {
	case !ok:
		return Down, true // removed from the registry: what ran there is gone to us
	case m.state == Up && m.failing:
		return Unreachable, m.rec.Drain
	case m.state == Up && !m.listed:
		return Unknown, m.rec.Drain // answers, but what runs there is not known yet
	}
	return m.state, m.rec.Drain
}

// List returns the containers of every host that is up, and the last list
// of a host that stopped answering but is not down yet, so that nothing
// is replaced before the host timeout; a host never listed yet (State:
// Unknown) contributes nothing, and the controller holds its instances as
// they are. The local engine's while no host is registered, and then its
// failure is the list's; once hosts are registered, its containers (from
// before) are listed when it answers. Before the registry is read once,
// List fails: what is registered is not known.
func (f *Fleet) List(ctx context.Context) ([]docker.Container, error) {
	f.mu.Lock()
	synced := f.synced
	ms := slices.Collect(maps.Values(f.members))
	local := f.local
	f.mu.Unlock()
	if !synced {
		return nil, fmt.Errorf("%w: the host registry has not been read yet", ErrHostUnknown)
	}
	lists := make([][]docker.Container, len(ms)+1)
	var localErr error
	var wg sync.WaitGroup
	if local != nil {
		wg.Go(func() {
			cctx, cancel := context.WithTimeout(ctx, f.cfg.Call)
			list, err := local.List(cctx)
			cancel()
			f.mu.Lock()
			f.localOK = err == nil
			f.mu.Unlock()
			localErr, lists[len(ms)] = err, list
		})
	}
	for i, m := range ms {
		f.mu.Lock()
		state := m.state
		f.mu.Unlock()
		if m.eng == nil || state == Down {
			continue
		}
		wg.Go(func() {
			cctx, cancel := context.WithTimeout(ctx, f.cfg.Call)
			list, err := m.eng.List(cctx)
			cancel()
			if ctx.Err() != nil {
				return
			}
			f.observe(m, err)
			f.mu.Lock()
			defer f.mu.Unlock()
			if err == nil {
				m.last, m.listed = list, true
			}
			if m.state != Down && m.listed {
				lists[i] = m.last
			}
		})
	}
	wg.Wait()
	if localErr != nil && len(ms) == 0 {
		return nil, localErr
	}
	var out []docker.Container
	for _, l := range lists {
		out = append(out, l...)
	}
	f.mu.Lock()
	for _, ct := range out {
		f.where[ct.ID] = ct.Host
	}
	f.mu.Unlock()
	return out, nil
}

// engine returns the engine of host, which must be up (or the local one).
func (f *Fleet) engine(host string) (Engine, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if host == "" {
		if f.local == nil {
			return nil, fmt.Errorf("%w: no local Docker engine", ErrHostDown)
		}
		return f.local, nil
	}
	m, ok := f.members[host]
	if !ok || m.eng == nil {
		return nil, fmt.Errorf("%w: host %s is not registered", ErrHostDown, host)
	}
	if m.state == Down {
		return nil, fmt.Errorf("%w: host %s is down", ErrHostDown, host)
	}
	if m.failing {
		return nil, fmt.Errorf("%w: host %s does not answer", ErrHostDown, host)
	}
	return m.eng, nil
}

// Logs reads a container's log from the engine of host, the host its
// instance record names (every replica can: no list is needed). A host
// that is down, does not answer or has not answered yet is ErrHostDown,
// at once; one that stops answering while its log is read (a follow) is
// ErrHostDown within a probe, since its engine's stream may hang.
func (f *Fleet) Logs(ctx context.Context, host, id string, o docker.LogOptions, emit func(docker.LogLine) error) error {
	f.mu.Lock()
	m := f.members[host]
	unknown := host != "" && m != nil && m.state == Unknown
	f.mu.Unlock()
	if unknown {
		return fmt.Errorf("%w: host %s has not answered yet", ErrHostDown, host)
	}
	eng, err := f.engine(host)
	if err != nil {
		return err
	}
	if host == "" {
		return eng.Logs(ctx, id, o, emit)
	}
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	go func() {
		t := time.NewTicker(f.cfg.Probe)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
				if _, err := f.engine(host); err != nil {
					cancel(err)
					return
				}
			}
		}
	}()
	err = eng.Logs(ctx, id, o, emit)
	if cause := context.Cause(ctx); errors.Is(cause, ErrHostDown) {
		return cause
	}
	return err
}

// callTimeout bounds a routed call that carries no bound of its own, so a
// host that stops answering mid-call holds no cycle for minutes.
const callTimeout = 30 * time.Second

func bounded(ctx context.Context) (context.Context, context.CancelFunc) {
	if _, ok := ctx.Deadline(); ok {
		return ctx, func() {}
	}
	return context.WithTimeout(ctx, callTimeout)
}

// of returns the engine that runs container id.
func (f *Fleet) of(id string) (Engine, error) {
	f.mu.Lock()
	host, ok := f.where[id]
	f.mu.Unlock()
	if !ok {
		return nil, fmt.Errorf("docker: container %s is on no host the fleet knows: %w", docker.ShortID(id), docker.ErrNotFound)
	}
	return f.engine(host)
}

// Create creates a container on o.Host.
func (f *Fleet) Create(ctx context.Context, o docker.CreateOptions) (string, error) {
	eng, err := f.engine(o.Host)
	if err != nil {
		return "", err
	}
	id, err := eng.Create(ctx, o)
	if err == nil {
		f.mu.Lock()
		f.where[id] = o.Host
		f.mu.Unlock()
	}
	return id, err
}

// Start starts a container where it was created.
func (f *Fleet) Start(ctx context.Context, id string) error {
	eng, err := f.of(id)
	if err != nil {
		return err
	}
	ctx, cancel := bounded(ctx)
	defer cancel()
	return eng.Start(ctx, id)
}

// Stop stops a container where it runs.
func (f *Fleet) Stop(ctx context.Context, id, signal string, grace time.Duration) error {
	eng, err := f.of(id)
	if err != nil {
		return err
	}
	return eng.Stop(ctx, id, signal, grace)
}

// Remove removes a container where it runs.
func (f *Fleet) Remove(ctx context.Context, id string) error {
	eng, err := f.of(id)
	if err != nil {
		return err
	}
	ctx, cancel := bounded(ctx)
	defer cancel()
	err = eng.Remove(ctx, id)
	if err == nil || errors.Is(err, docker.ErrNotFound) {
		f.mu.Lock()
		delete(f.where, id)
		f.mu.Unlock()
	}
	return err
}

// Inspect inspects a container where it runs.
func (f *Fleet) Inspect(ctx context.Context, id string) (docker.Container, error) {
	eng, err := f.of(id)
	if err != nil {
		return docker.Container{}, err
	}
	ctx, cancel := bounded(ctx)
	defer cancel()
	return eng.Inspect(ctx, id)
}

// Tail returns the last n lines of a container, from its host's engine.
func (f *Fleet) Tail(ctx context.Context, id string, n int) ([]string, error) {
	eng, err := f.of(id)
	if err != nil {
		return nil, err
	}
	ctx, cancel := bounded(ctx)
	defer cancel()
	return eng.Tail(ctx, id, n)
}

// Exec runs an exec check's argv in a container where it runs, bounded
// by timeout (docker.Client.Exec).
func (f *Fleet) Exec(ctx context.Context, id string, argv []string, timeout time.Duration) (docker.ExecResult, error) {
	eng, err := f.of(id)
	if err != nil {
		return docker.ExecResult{}, err
	}
	return eng.Exec(ctx, id, argv, timeout)
}

// ImagePresent reports whether ref is on host.
func (f *Fleet) ImagePresent(ctx context.Context, host, ref string) (bool, error) {
	eng, err := f.engine(host)
	if err != nil {
		return false, err
	}
	ctx, cancel := bounded(ctx)
	defer cancel()
	return eng.ImagePresent(ctx, ref)
}

// Images returns ref as each engine holds it: the local engine's while no
// host is registered, else every up host's, asked at once; a host that
// does not hold it is left out. It fails only when no engine could be
// asked. The resolver's view (image.Engines): which image an apply pins.
func (f *Fleet) Images(ctx context.Context, ref string) ([]image.Local, error) {
	type target struct {
		host string
		eng  Engine
	}
	var targets []target
	f.mu.Lock()
	if len(f.members) == 0 {
		if f.local != nil {
			targets = append(targets, target{"", f.local})
		}
	}
	for name, m := range f.members {
		if m.eng != nil && m.state == Up && !m.failing {
			targets = append(targets, target{name, m.eng})
		}
	}
	f.mu.Unlock()
	if len(targets) == 0 {
		return nil, fmt.Errorf("%w: no engine is up to look for image %s in", ErrHostDown, ref)
	}
	var (
		mu   sync.Mutex
		out  []image.Local
		errs []error
		wg   sync.WaitGroup
	)
	for _, tg := range targets {
		wg.Go(func() {
			info, err := tg.eng.Image(ctx, ref)
			mu.Lock()
			defer mu.Unlock()
			switch {
			case err == nil:
				out = append(out, image.Local{Host: tg.host, ID: info.ID, RepoDigests: info.RepoDigests, Healthcheck: info.Healthcheck})
			case !errors.Is(err, docker.ErrImageNotFound):
				errs = append(errs, fmt.Errorf("host %q: %w", tg.host, err))
			}
		})
	}
	wg.Wait()
	slices.SortFunc(out, func(a, b image.Local) int { return strings.Compare(a.Host, b.Host) })
	if len(errs) == len(targets) {
		return nil, errors.Join(errs...)
	}
	return out, nil
}

var _ image.Engines = (*Fleet)(nil)

// Pull pulls ref on host.
func (f *Fleet) Pull(ctx context.Context, host, ref string, timeout time.Duration) error {
	eng, err := f.engine(host)
	if err != nil {
		return err
	}
	return eng.Pull(ctx, ref, timeout)
}

// Stats reads the containers ids on the hosts that run them.
func (f *Fleet) Stats(ctx context.Context, ids []string, parallel int) (map[string]docker.Reading, error) {
	by := map[string][]string{}
	f.mu.Lock()
	for _, id := range ids {
		by[f.where[id]] = append(by[f.where[id]], id)
	}
	f.mu.Unlock()
	out := map[string]docker.Reading{}
	var errs []error
	for host, hids := range by {
		eng, err := f.engine(host)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		rs, err := eng.Stats(ctx, hids, parallel)
		maps.Copy(out, rs)
		if err != nil {
			errs = append(errs, err)
		}
	}
	return out, errors.Join(errs...)
}

// Events streams the events of every engine's containers to handle until
// ctx ends, calling resync after any stream reconnects.
func (f *Fleet) Events(ctx context.Context, handle func(docker.Event), resync func()) error {
	wrapped := func(e docker.Event) {
		if e.Action == "destroy" {
			f.mu.Lock()
			delete(f.where, e.ContainerID)
			f.mu.Unlock()
		}
		handle(e)
	}
	f.mu.Lock()
	f.handle, f.resync = wrapped, resync
	if f.evCtx == nil {
		f.evCtx = ctx
	}
	for _, m := range f.members {
		if m.stopEvs == nil {
			f.watch(m)
		}
	}
	local := f.local
	f.mu.Unlock()
	if local != nil {
		return local.Events(ctx, wrapped, resync)
	}
	<-ctx.Done()
	return nil
}
