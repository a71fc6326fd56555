package controller

import (
	"cmp"
	"context"
	"fmt"
	"sort"
	"sync"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/stretchr/testify/require"
	"go.uber.org/zap/zaptest"

	"github.com/berthhq/berth/common/bus"
	"github.com/berthhq/berth/common/msg"
	"github.com/berthhq/berth/common/spec"
	"github.com/berthhq/berth/common/view"
	"github.com/berthhq/berth/scheduler/internal/docker"
	"github.com/berthhq/berth/scheduler/internal/store"
)

// fake is a hand-written fake of everything behind the controller's
// interfaces: the store, the publisher and Docker, in memory.
type fake struct {
	mu         sync.Mutex
	apps       map[string]store.App
	history    map[string]map[int64]*spec.App // by app and generation, for rollback
	records    map[string]store.Instance
	events     []store.Event
	containers map[string]*docker.Container
	rev        uint64
	revs       map[string]uint64
	failed     map[string]bool
	ids        int
	// onStart decides whether a started container keeps running.
	onStart func(o docker.CreateOptions) bool
	// crash makes a started container of an image exit at once with a
	// code, reported by a die event; missing makes an image's pull fail.
	crash   map[string]int
	missing map[string]error
	// oom makes a crash of an image an OOM kill, as Docker's state says.
	oom map[string]bool
	// stopBlock, when set, holds every Stop until it is closed or ctx ends.
	stopBlock chan struct{}
	stops     []string
	handle    func(docker.Event)
	opened    chan struct{} // closed once the controller's event stream is open
	openOnce  sync.Once
	created   []docker.CreateOptions
	// hosts, when set, are the hosts the controller places on; a down
	// host's containers are not listed.
	hosts Hosts
	// lies are hosts whose engines report a foreign address (host →
	// address) for every container: Inspect refuses it as the docker
	// adapter does.
	lies map[string]string
	// addresses are every address a Put gave a record: what would reach
	// berth_instances.
	addresses []string
	// releases are the release records by app/generation; releaseExit
	// makes a started release container of an image exit with a code,
	// reported by a die event (absent: it runs until releaseEnd).
	releases    map[string]store.Release
	releaseExit map[string]int
}

func newFake() *fake {
	return &fake{apps: map[string]store.App{}, history: map[string]map[int64]*spec.App{}, records: map[string]store.Instance{},
		containers: map[string]*docker.Container{}, crash: map[string]int{}, missing: map[string]error{}, oom: map[string]bool{}, revs: map[string]uint64{}, failed: map[string]bool{}, opened: make(chan struct{}),
		releases: map[string]store.Release{}, releaseExit: map[string]int{}}
}

var (
	_ Desired        = (*fake)(nil)
	_ Records        = (*fake)(nil)
	_ Routing        = (*fake)(nil)
	_ Containers     = fakeContainers{}
	_ Runtime        = (*fake)(nil)
	_ Images         = (*fake)(nil)
	_ Logs           = (*fake)(nil)
	_ ReleaseRecords = (*fake)(nil)
)

func (f *fake) Releases(_ context.Context, keys []store.ReleaseKey) ([]store.Release, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	// As the store reads them: the running ones, and for each key the
	// generation's and the newest that released the hash (or its newest).
	picked := map[string]store.Release{}
	for k, r := range f.releases {
		if r.State == store.ReleaseRunning {
			picked[k] = r
		}
	}
	for _, key := range keys {
		best, bestKey := store.Release{}, ""
		for k, r := range f.releases {
			if r.App != key.App {
				continue
			}
			if r.Generation == key.Generation {
				picked[k] = r
			}
			if r.SpecHash != key.SpecHash {
				continue
			}
			better := bestKey == "" || (r.State == store.ReleaseSucceeded) != (best.State == store.ReleaseSucceeded) && r.State == store.ReleaseSucceeded ||
				(r.State == store.ReleaseSucceeded) == (best.State == store.ReleaseSucceeded) && r.Generation > best.Generation
			if better {
				best, bestKey = r, k
			}
		}
		if bestKey != "" {
			picked[bestKey] = best
		}
	}
	out := make([]store.Release, 0, len(picked))
	for _, r := range picked {
		out = append(out, r)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Generation < out[j].Generation })
	return out, nil
}

func (f *fake) BeginRelease(_ context.Context, l store.Lease, r store.Release, events ...store.Event) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	key := releaseKey(r.App, r.Generation)
	if _, ok := f.releases[key]; ok {
		return store.ErrReleaseExists
	}
	r.State, r.Term, r.StartedAt = store.ReleaseRunning, l.Term, time.Now()
	f.releases[key] = r
	f.addEvents(events)
	return nil
}

func (f *fake) WatchRelease(_ context.Context, l store.Lease, app string, generation int64, container string) (bool, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	r, ok := f.releases[releaseKey(app, generation)]
	if !ok || r.State != store.ReleaseRunning {
		return false, nil
	}
	if container != "" {
		r.ContainerID = container
	}
	r.Term = l.Term
	f.releases[releaseKey(app, generation)] = r
	return true, nil
}

func (f *fake) EndRelease(_ context.Context, _ store.Lease, r store.Release, events ...store.Event) (bool, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	cur, ok := f.releases[releaseKey(r.App, r.Generation)]
	if !ok || cur.State != store.ReleaseRunning {
		return false, nil
	}
	cur.State, cur.ExitCode, cur.Reason = r.State, r.ExitCode, r.Reason
	f.releases[releaseKey(r.App, r.Generation)] = cur
	f.addEvents(events)
	return true, nil
}

// releaseEnd makes a running release container exit with code, as Docker
// reports it: the die event first.
func (f *fake) releaseEnd(id string, code int) {
	f.mu.Lock()
	c := f.containers[id]
	c.Running, c.ExitCode, c.State = false, code, "exited"
	handle := f.handle
	f.mu.Unlock()
	if handle != nil {
		handle(docker.Event{Action: "die", ContainerID: id, App: c.App, Instance: c.Instance, ExitCode: code, Release: true})
	}
}

func (f *fake) apply(s *spec.App, replicas int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	a := f.apps[s.Name]
	a = store.App{Name: s.Name, Spec: s, Generation: a.Generation + 1, DesiredReplicas: replicas, UpdatedAt: time.Now()}
	f.apps[s.Name] = a
	if f.history[s.Name] == nil {
		f.history[s.Name] = map[int64]*spec.App{}
	}
	f.history[s.Name][a.Generation] = s
}

func (f *fake) List(context.Context) ([]store.App, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	out := make([]store.App, 0, len(f.apps))
	for _, a := range f.apps {
		out = append(out, a)
	}
	return out, nil
}

func (f *fake) Instances(_ context.Context, app string) ([]store.Instance, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []store.Instance
	for _, r := range f.records {
		if app == "" || r.App == app {
			out = append(out, r)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].CreatedAt.Before(out[j].CreatedAt) })
	return out, nil
}

func (f *fake) Restarts(_ context.Context, since time.Time) (map[string][]store.Restart, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	out := map[string][]store.Restart{}
	for _, e := range f.events {
		switch e.Kind {
		case msg.EventInstanceReplaced, msg.EventInstanceFailed, msg.EventInstanceStartFailed, msg.EventInstanceAddressRefused,
			msg.EventImagePullFailed, msg.EventInstanceCreateFailed:
			if e.Details["cause"] == "host_lost" {
				continue // as the store: a host's loss is no crash
			}
			if !e.At.Before(since) {
				var gen int64
				_, _ = fmt.Sscan(e.Details["generation"], &gen)
				out[e.App] = append(out[e.App], store.Restart{At: e.At, Generation: gen, SpecHash: e.Details["spec_hash"], Reason: cmp.Or(e.Details["reason"], e.Message)})
			}
		}
	}
	return out, nil
}

func (f *fake) FailedRollouts(_ context.Context, since time.Time) (map[string]store.FailedRollout, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	out := map[string]store.FailedRollout{}
	for _, e := range f.events {
		if e.Kind == msg.EventRolloutFailed && !e.At.Before(since) {
			var gen int64
			_, _ = fmt.Sscan(e.Details["generation"], &gen)
			out[e.App] = store.FailedRollout{Generation: gen, SpecHash: e.Details["spec_hash"]}
		}
	}
	return out, nil
}

func (f *fake) LastLogTail(_ context.Context, app string, generation int64) ([]string, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for i := len(f.events) - 1; i >= 0; i-- {
		if e := f.events[i]; e.App == app && (e.Kind == msg.EventInstanceExited || e.Kind == msg.EventReleaseFailed) && e.Details["generation"] == fmt.Sprint(generation) && e.LogTail != nil {
			return e.LogTail, nil
		}
	}
	return nil, nil
}

func (f *fake) RollbackTo(_ context.Context, name string, generation int64) (store.App, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	s, ok := f.history[name][generation]
	if !ok {
		return store.App{}, store.ErrNoHistory
	}
	a := f.apps[name]
	a.Spec, a.Generation = s, a.Generation+1
	f.history[name][a.Generation] = s
	f.apps[name] = a
	return a, nil
}

func (f *fake) Put(_ context.Context, l store.Lease, r store.Instance, events ...store.Event) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	now := time.Now()
	if old, ok := f.records[r.ID]; ok {
		r.CreatedAt = old.CreatedAt
	} else {
		r.CreatedAt = now
	}
	r.UpdatedAt, r.Term = now, l.Term
	f.records[r.ID] = r
	if r.Address != "" {
		f.addresses = append(f.addresses, r.Address)
	}
	f.rev++
	f.revs[r.ID] = f.rev
	f.addEvents(events)
	return nil
}

func (f *fake) Delete(_ context.Context, _ store.Lease, r store.Instance, events ...store.Event) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	delete(f.records, r.ID)
	delete(f.revs, r.ID)
	f.addEvents(events)
	return nil
}

func (f *fake) addEvents(events []store.Event) {
	for _, e := range events {
		e.At = time.Now()
		f.events = append(f.events, e)
	}
}

func (f *fake) Event(_ context.Context, _ store.Lease, events ...store.Event) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.addEvents(events)
	return nil
}

func (f *fake) SetHealth(_ context.Context, _ store.Lease, health map[string]string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	for id, h := range health {
		if r, ok := f.records[id]; ok {
			r.Health = h
			f.records[id] = r
		}
	}
	return nil
}

func (f *fake) Fail(_ context.Context, _ store.Lease, r store.Instance) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.failed[r.ID] = true
	return nil
}

func (f *fake) Unpublish(context.Context, string, string) error { return nil }

func (f *fake) Revision(_, id string) uint64 {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.revs[id]
}

func (f *fake) listContainers() []docker.Container {
	out := make([]docker.Container, 0, len(f.containers))
	for _, c := range f.containers {
		out = append(out, *c)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out
}

func (f *fake) Inspect(_ context.Context, id string) (docker.Container, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	c, ok := f.containers[id]
	if !ok {
		return docker.Container{}, docker.ErrNotFound
	}
	if addr, lie := f.lies[c.Host]; lie {
		ct := *c
		ct.Address = ""
		return ct, &docker.AddressError{Host: c.Host, Container: c.ID, Address: addr, Reason: "a published port must be on the host's address"}
	}
	return *c, nil
}

func (f *fake) Events(ctx context.Context, handle func(docker.Event), _ func()) error {
	f.mu.Lock()
	f.handle = handle
	f.mu.Unlock()
	f.openOnce.Do(func() { close(f.opened) })
	<-ctx.Done()
	return nil
}

// kill makes a container die as Docker reports it: the event first.
func (f *fake) kill(id string) {
	select { // the controller's event stream may not be open yet
	case <-f.opened:
	case <-time.After(10 * time.Second):
		panic("the controller never opened its event stream")
	}
	f.mu.Lock()
	handle, c := f.handle, f.containers[id]
	f.mu.Unlock()
	handle(docker.Event{Action: "die", ContainerID: id, App: c.App, Instance: c.Instance})
	f.mu.Lock()
	c.Running = false
	f.mu.Unlock()
}

func (f *fake) Create(_ context.Context, o docker.CreateOptions) (string, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.ids++
	f.created = append(f.created, o)
	id := fmt.Sprintf("c%03d", f.ids)
	f.containers[id] = &docker.Container{ID: id, Host: o.Host, App: o.App, Instance: o.Instance, Generation: o.Generation, SpecHash: o.SpecHash,
		Address: fmt.Sprintf("127.0.0.1:%d", 20000+f.ids), Name: o.Image, Release: o.Release, State: "created"}
	if o.Release {
		f.containers[id].Address = ""
	}
	return id, nil
}

func (f *fake) Start(_ context.Context, id string) error {
	f.mu.Lock()
	c := f.containers[id]
	c.Running = f.onStart == nil || f.onStart(docker.CreateOptions{App: c.App, Instance: c.Instance})
	c.State = "running"
	code, crash := f.crash[c.Name]
	if c.Release {
		code, crash = f.releaseExit[c.Name]
		c.Running = true
	}
	if crash {
		c.State = "exited"
	}
	handle := f.handle
	if crash {
		c.Running, c.OOMKilled, c.ExitCode = false, f.oom[c.Name], code
	}
	f.mu.Unlock()
	if crash && handle != nil {
		handle(docker.Event{Action: "die", ContainerID: id, App: c.App, Instance: c.Instance, ExitCode: code, Release: c.Release})
	}
	return nil
}

// Tail is what a container wrote: two lines naming it.
func (f *fake) Tail(_ context.Context, id string, n int) ([]string, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	c, ok := f.containers[id]
	if !ok {
		return nil, docker.ErrNotFound
	}
	return []string{"starting " + c.Name, "fatal: bad config in " + id}[:min(n, 2)], nil
}

func (f *fake) Stop(ctx context.Context, id, _ string, _ time.Duration) error {
	f.mu.Lock()
	block := f.stopBlock
	f.mu.Unlock()
	if block != nil {
		select {
		case <-block:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.stops = append(f.stops, id)
	if c, ok := f.containers[id]; ok {
		c.Running, c.State = false, "exited"
		if c.Release {
			c.ExitCode = 137
		}
	}
	return nil
}

func (f *fake) Remove(_ context.Context, id string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	delete(f.containers, id)
	return nil
}

func (f *fake) ImagePresent(_ context.Context, _, ref string) (bool, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.missing[ref] == nil, nil
}

func (f *fake) Pull(_ context.Context, _, ref string, _ time.Duration) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.missing[ref]
}

// snapshot returns the records and the kinds of the events so far.
func (f *fake) snapshot() (records []store.Instance, events []msg.EventKind) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, r := range f.records {
		records = append(records, r)
	}
	for _, e := range f.events {
		events = append(events, e.Kind)
	}
	return records, events
}

func (f *fake) image(r store.Instance) string {
	f.mu.Lock()
	defer f.mu.Unlock()
	if c, ok := f.containers[r.ContainerID]; ok {
		return c.Name
	}
	return ""
}

// harness runs a controller against a fake, with a health table and an
// agents table the test drives as healthd and lbagent would.
type harness struct {
	t      *testing.T
	f      *fake
	c      *Controller
	health *view.Table[*msg.Health]
	agents *view.Table[*msg.Agent]
	done   chan error
	cancel context.CancelFunc
	once   sync.Once
}

// fakeContainers adapts fake to Containers (List clashes with Desired's).
type fakeContainers struct{ *fake }

func (f fakeContainers) List(context.Context) ([]docker.Container, error) {
	f.mu.Lock()
	list, hosts := f.listContainers(), f.hosts
	f.mu.Unlock()
	if hosts == nil {
		return list, nil
	}
	out := list[:0]
	for _, c := range list {
		if state, _ := hosts.State(c.Host); state != store.HostDown {
			out = append(out, c)
		}
	}
	return out, nil
}

func start(t *testing.T, f *fake, cfg Config) *harness {
	t.Helper()
	return startAt(t, f, cfg, 1)
}

// startAt is start as the leader of term (a failover's new leader).
func startAt(t *testing.T, f *fake, cfg Config, term uint64) *harness {
	t.Helper()
	h := &harness{t: t, f: f, done: make(chan error, 1)}
	var c *Controller
	h.health = view.NewTable(view.NoTerm[*msg.Health], func() {
		if c != nil {
			c.Wake()
		}
	})
	h.agents = view.NewTable(view.NoTerm[*msg.Agent], func() {
		if c != nil {
			c.AgentsChanged()
		}
	})
	h.health.Handler().Snapshot(nil, 0)
	h.agents.Handler().Snapshot(nil, 0)
	if cfg.Resync == 0 {
		cfg.Resync = time.Hour // nothing may wait for it
	}
	cfg.MaxParallel = max(cfg.MaxParallel, 4)
	cfg.StartTimeout = max(cfg.StartTimeout, time.Minute)
	lease := store.Lease{Name: "test", Holder: "me", Term: term}
	c = New(cfg, Deps{Desired: f, Records: f, Routing: f, Releases: f, Containers: fakeContainers{f}, Runtime: f, Images: f, Logs: f, Hosts: f.hosts,
		Lease: func() (store.Lease, bool) { return lease, true }, Health: h.health, Agents: h.agents}, zaptest.NewLogger(t))
	h.c = c
	ctx, cancel := context.WithCancel(context.Background())
	h.cancel = cancel
	go func() { h.done <- c.Run(ctx) }()
	t.Cleanup(h.stop)
	c.Wake()
	return h
}

// stop ends Run and requires it to return soon; later calls do nothing.
func (h *harness) stop() {
	h.once.Do(func() {
		h.cancel()
		select {
		case err := <-h.done:
			require.NoError(h.t, err)
		case <-time.After(5 * time.Second):
			h.t.Error("Run did not return after its context ended")
		}
	})
}

// cycles wakes the controller until it has run n more cycles, each
// observing and planning from scratch: what must not happen (a start
// beyond a bound, a report repeated) would have happened by then.
func (h *harness) cycles(n int) {
	h.t.Helper()
	done := func() float64 {
		total := 0.0
		for _, r := range []string{"ok", "error"} {
			var m dto.Metric
			_ = h.c.metrics.cycles.WithLabelValues(r).Write(&m) // a counter always writes
			total += m.GetCounter().GetValue()
		}
		return total
	}
	from := done()
	require.Eventually(h.t, func() bool {
		h.c.Wake()
		return done() >= from+float64(n)
	}, 5*time.Second, time.Millisecond, "%d cycles", n)
}

// setHealth publishes an instance's health as healthd would.
func (h *harness) setHealth(r store.Instance, status string) {
	key := msg.InstanceKey(r.App, r.ID)
	h.health.Handler().Update(bus.Event[*msg.Health]{Key: key, Op: bus.OpPut, Value: &msg.Health{App: r.App, Instance: r.ID, Status: status}})
}

// setAgent publishes an lbagent's applied revision.
func (h *harness) setAgent(node string, rev uint64, age time.Duration) {
	h.agents.Handler().Update(bus.Event[*msg.Agent]{Key: node, Op: bus.OpPut, Value: &msg.Agent{Node: node, AppliedRevision: rev, UpdatedAt: time.Now().Add(-age)}})
}

func load(t *testing.T, src string) *spec.App {
	t.Helper()
	a, err := spec.Load([]byte(src))
	require.NoError(t, err)
	return a
}
