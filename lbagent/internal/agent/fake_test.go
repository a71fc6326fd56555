package agent

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.uber.org/zap/zaptest"

	"github.com/berthhq/berth/common/bus"
	"github.com/berthhq/berth/common/msg"
	"github.com/berthhq/berth/lbagent/internal/dynamic"
	"github.com/berthhq/berth/lbagent/internal/render"
	"github.com/berthhq/berth/lbagent/internal/state"
	"github.com/berthhq/berth/templates"
)

// feed puts records into a store as the NATS watchers would.
type feed struct {
	store *state.Store
	rev   uint64
}

// load delivers every bucket's first snapshot, empty.
func (f *feed) load() {
	f.store.HealthHandler().Snapshot(nil, 0)
	f.store.CertificatesHandler().Snapshot(nil, 0)
	f.store.InstancesHandler().Snapshot(nil, 0)
	f.store.AppsHandler().Snapshot(nil, 0)
}

func (f *feed) putApp(a *msg.App) {
	f.store.AppsHandler().Update(bus.Event[*msg.App]{Key: a.Name, Op: bus.OpPut, Value: a})
}

func (f *feed) putInstance(app, id, addr, st string) uint64 {
	f.putInstanceMsg(app, id, addr, st)
	return f.rev
}

// putInstanceMsg is putInstance, returning the record put.
func (f *feed) putInstanceMsg(app, id, addr, st string) *msg.Instance {
	f.rev++
	v := &msg.Instance{App: app, ID: id, Term: 1, Generation: 1, Address: addr, State: st, Weight: 1}
	f.store.InstancesHandler().Update(bus.Event[*msg.Instance]{Key: app + "." + id, Revision: f.rev, Op: bus.OpPut, Value: v})
	return v
}

// fakeNginx is nginx as the agent sees it: nginx -t (Tester), the reload
// (Reloader), and the generation it serves (Status). A reload serves the
// generation written in the target file.
type fakeNginx struct {
	target string

	mu sync.Mutex
	// refuse: nginx -t refuses a config that holds one of these.
	refuse []string
	// failReloads is how many reloads fail next (nginx not running).
	failReloads int
	// down: the status listener answers nothing.
	down    bool
	served  uint64
	tests   int
	reloads int
}

var (
	_ Tester   = (*fakeNginx)(nil)
	_ Reloader = (*fakeNginx)(nil)
	_ Status   = (*fakeNginx)(nil)
)

func (n *fakeNginx) Test(_ context.Context, _, conf string) error {
	b, err := os.ReadFile(conf)
	if err != nil {
		return err
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	n.tests++
	for _, r := range n.refuse {
		if bytes.Contains(b, []byte(r)) {
			return fmt.Errorf("nginx -t: %q refused", r)
		}
	}
	return nil
}

// generationLine is the line of nginx.conf.tmpl that names the generation.
var generationLine = regexp.MustCompile(`(?m)^# generation (\d+)$`)

func (n *fakeNginx) Reload(context.Context) error {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.failReloads > 0 {
		n.failReloads--
		return errors.New("nginx is not running")
	}
	b, err := os.ReadFile(n.target)
	if err != nil {
		return err
	}
	m := generationLine.FindSubmatch(b)
	if m == nil {
		return errors.New("the config names no generation")
	}
	n.served, _ = strconv.ParseUint(string(m[1]), 10, 64)
	n.reloads++
	return nil
}

func (n *fakeNginx) Generation(context.Context) (uint64, error) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.down {
		return 0, errors.New("connection refused")
	}
	return n.served, nil
}

func (n *fakeNginx) Confirm(_ context.Context, gen uint64) error {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.served != gen {
		return fmt.Errorf("nginx serves generation %d, not %d", n.served, gen)
	}
	return nil
}

func (n *fakeNginx) counts() (tests, reloads int) {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.tests, n.reloads
}

// fakePusher is nginx's endpoint dict (dynamic mode).
type fakePusher struct {
	mu        sync.Mutex
	fail      error // every push fails with it
	installed uint64
	dict      map[string]*dynamic.Endpoints
	batches   []dynamic.Batch
	drains    []uint64 // the generations CloseKeepalive was asked below, with a ttl
}

var _ Pusher = (*fakePusher)(nil)

func (p *fakePusher) Push(_ context.Context, b dynamic.Batch) (uint64, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.fail != nil {
		return 0, p.fail
	}
	if b.Version <= p.installed {
		return 0, &dynamic.StaleError{Installed: p.installed}
	}
	if b.Full || p.dict == nil {
		p.dict = map[string]*dynamic.Endpoints{}
	}
	for app, e := range b.Apps {
		if e == nil {
			delete(p.dict, app)
			continue
		}
		p.dict[app] = e
	}
	p.installed = b.Version
	p.batches = append(p.batches, b)
	return p.installed, nil
}

func (p *fakePusher) Version(context.Context) (uint64, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.installed, nil
}

func (p *fakePusher) CloseKeepalive(_ context.Context, below uint64, ttl time.Duration) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if ttl > 0 {
		p.drains = append(p.drains, below)
	}
	return nil
}

// pushed returns the batches pushed, and the dict's addresses of app.
func (p *fakePusher) pushed(app string) ([]dynamic.Batch, []string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	var addrs []string
	if e := p.dict[app]; e != nil {
		for _, s := range e.Servers {
			addrs = append(addrs, s.Address)
		}
	}
	return append([]dynamic.Batch(nil), p.batches...), addrs
}

// clock is a clock the test moves.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *clock) add(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

// fakeRig is an agent on fakes: no nginx. Its tests call step, one sync
// at a time, on the rig's clock; or run, the whole loop.
type fakeRig struct {
	*feed
	t      *testing.T
	agent  *Agent
	nginx  *fakeNginx
	pusher *fakePusher // nil in reload mode
	rep    *reporter
	clock  *clock
}

func newFakeRig(t *testing.T, dyn bool, tune ...func(*Config)) *fakeRig {
	t.Helper()
	dir := t.TempDir()
	cfg := Config{
		Node: "lb-test", Render: renderOptions(dyn), Target: filepath.Join(dir, "nginx.conf"), Staging: filepath.Join(dir, "staging"),
		DebounceMin: 20 * time.Millisecond, DebounceMax: 200 * time.Millisecond, Resync: time.Hour, EmptyHold: time.Hour,
		ConfirmTimeout: time.Second, Heartbeat: time.Hour, CertDir: filepath.Join(dir, "certs"),
	}
	r := &fakeRig{t: t, feed: &feed{store: state.NewStoreCarrying(0, nil)}, nginx: &fakeNginx{target: cfg.Target}, rep: &reporter{},
		clock: &clock{t: time.Date(2026, 1, 1, 12, 0, 0, 0, time.UTC)}}
	if dyn {
		r.pusher = &fakePusher{}
		cfg.Pusher, cfg.Snapshot, cfg.ReloadDrain = r.pusher, filepath.Join(dir, "berth-endpoints.json"), time.Millisecond
	}
	cfg.Status = r.nginx
	for _, f := range tune {
		f(&cfg)
	}
	renderer := loadRenderer(t)
	// nginx starts on a first config with nothing routed, as lbagent does.
	d, _ := render.Layout(state.Snapshot{}, 0, cfg.Render)
	initial, err := renderer.Render(d, true)
	require.NoError(t, err)
	require.NoError(t, os.WriteFile(cfg.Target, initial, 0o644))
	r.agent = New(cfg, r.store, renderer, r.nginx, r.nginx, r.rep, zaptest.NewLogger(t))
	r.agent.now = r.clock.now
	r.load()
	return r
}

// step runs one sync and returns how long the agent would wait at most.
func (r *fakeRig) step() time.Duration { return r.agent.sync(context.Background()) }

// run runs the loop until the test ends, on the real clock.
func (r *fakeRig) run() {
	r.agent.now = time.Now
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- r.agent.Run(ctx) }()
	r.t.Cleanup(func() {
		cancel()
		require.NoError(r.t, <-done)
	})
}

// lastReload is the last reload report.
func (r *fakeRig) lastReload() *msg.Reload {
	rl, _ := r.rep.last()
	require.NotNil(r.t, rl, "a reload report")
	return rl
}

// lastAgent is the last applied state reported.
func (r *fakeRig) lastAgent() *msg.Agent {
	_, ag := r.rep.last()
	require.NotNil(r.t, ag, "an applied state")
	return ag
}

// config is the file nginx reads.
func (r *fakeRig) config() string {
	b, err := os.ReadFile(r.agent.cfg.Target)
	require.NoError(r.t, err)
	return string(b)
}

// renderAt is the config the agent's renderer makes of the store's
// state at gen.
func (r *fakeRig) renderAt(gen uint64) []byte {
	snap, ok := r.store.Snapshot()
	require.True(r.t, ok)
	return renderAt(r.t, r.agent.renderer, r.agent.cfg.Render, snap, gen)
}

// edited is the template set with the no-backend answer's text changed.
func edited(t *testing.T) *render.Renderer {
	t.Helper()
	dir := t.TempDir()
	for _, name := range []string{"nginx.conf.tmpl", "http.conf.tmpl", "app.conf.tmpl"} {
		b, err := templates.FS.ReadFile(name)
		require.NoError(t, err)
		if name == "app.conf.tmpl" {
			b = bytes.Replace(b, []byte(`"no_backend"`), []byte(`"edited_template"`), 1)
		}
		require.NoError(t, os.WriteFile(filepath.Join(dir, name), b, 0o644))
	}
	r, err := render.Load(os.DirFS(dir))
	require.NoError(t, err)
	return r
}
