package fleet

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.uber.org/zap"

	"github.com/berthhq/berth/scheduler/internal/docker"
	"github.com/berthhq/berth/scheduler/internal/image"
	"github.com/berthhq/berth/scheduler/internal/store"
)

// engine is a fake Docker engine of one host.
type engine struct {
	mu         sync.Mutex
	host       string
	down       bool
	containers map[string]docker.Container
	n          int
	closed     bool
	images     map[string]docker.ImageInfo
}

var errDown = errors.New("connection refused")

func newEngine(host string) *engine {
	return &engine{host: host, containers: map[string]docker.Container{}}
}

func (e *engine) set(down bool) { e.mu.Lock(); e.down = down; e.mu.Unlock() }

func (e *engine) check() error {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.down {
		return errDown
	}
	return nil
}

func (e *engine) Ping(context.Context) (string, error) { return "1.51", e.check() }
func (e *engine) List(context.Context) ([]docker.Container, error) {
	if err := e.check(); err != nil {
		return nil, err
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	out := []docker.Container{}
	for _, c := range e.containers {
		out = append(out, c)
	}
	return out, nil
}
func (e *engine) Inspect(_ context.Context, id string) (docker.Container, error) {
	if err := e.check(); err != nil {
		return docker.Container{}, err
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	c, ok := e.containers[id]
	if !ok {
		return c, docker.ErrNotFound
	}
	return c, nil
}
func (e *engine) Events(ctx context.Context, _ func(docker.Event), _ func()) error {
	<-ctx.Done()
	return nil
}
func (e *engine) Create(_ context.Context, o docker.CreateOptions) (string, error) {
	if err := e.check(); err != nil {
		return "", err
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	e.n++
	id := fmt.Sprintf("%s-c%d", e.host, e.n)
	e.containers[id] = docker.Container{ID: id, Host: e.host, App: o.App, Instance: o.Instance, Running: true}
	return id, nil
}
func (e *engine) Start(context.Context, string) error                       { return nil }
func (e *engine) Stop(context.Context, string, string, time.Duration) error { return nil }
func (e *engine) Remove(_ context.Context, id string) error {
	if err := e.check(); err != nil {
		return err
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	delete(e.containers, id)
	return nil
}
func (e *engine) ImagePresent(context.Context, string) (bool, error) { return true, e.check() }
func (e *engine) Pull(context.Context, string, time.Duration) error  { return e.check() }
func (e *engine) Image(_ context.Context, ref string) (docker.ImageInfo, error) {
	if err := e.check(); err != nil {
		return docker.ImageInfo{}, err
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	info, ok := e.images[ref]
	if !ok {
		return info, fmt.Errorf("image %s: %w", ref, docker.ErrImageNotFound)
	}
	return info, nil
}
func (e *engine) Stats(context.Context, []string, int) (map[string]docker.Reading, error) {
	return nil, nil
}
func (e *engine) Exec(_ context.Context, id string, argv []string, _ time.Duration) (docker.ExecResult, error) {
	if err := e.check(); err != nil {
		return docker.ExecResult{}, err
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	if _, ok := e.containers[id]; !ok {
		return docker.ExecResult{}, docker.ErrNotFound
	}
	return docker.ExecResult{Output: e.host + " ran " + argv[0]}, nil
}
func (e *engine) Tail(_ context.Context, id string, _ int) ([]string, error) {
	if err := e.check(); err != nil {
		return nil, err
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	if _, ok := e.containers[id]; !ok {
		return nil, docker.ErrNotFound
	}
	return []string{"last line of " + id}, nil
}
func (e *engine) Logs(context.Context, string, docker.LogOptions, func(docker.LogLine) error) error {
	return e.check()
}
func (e *engine) Close() error { e.mu.Lock(); e.closed = true; e.mu.Unlock(); return nil }

type registry struct {
	mu    sync.Mutex
	hosts []store.Host
}

func (r *registry) Hosts(context.Context) ([]store.Host, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]store.Host(nil), r.hosts...), nil
}

func TestFleetStatesListsAndRouting(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	engines := map[string]*engine{"h1": newEngine("h1"), "h2": newEngine("h2")}
	local := newEngine("")
	reg := &registry{}
	f := New(Config{Timeout: 15 * time.Second}, reg, func(h store.Host) (Engine, error) { return engines[h.Name], nil }, local, zap.NewNop())
	now := time.Unix(1000, 0)
	f.now = func() time.Time { return now }
	var changes []string
	f.Changed = func(host, state string) { changes = append(changes, host+"="+state) }

	// Before the registry is read, nothing is known, nothing placed.
	_, err := f.List(ctx)
	require.ErrorIs(t, err, ErrHostUnknown)
	require.Empty(t, f.Hosts())
	state, _ := f.State("h1")
	require.Equal(t, Unknown, state, "a registered host is not taken for removed")

	// No host registered: the local engine is the one host.
	require.NoError(t, f.Sync(ctx))
	require.False(t, f.Registered())
	require.Len(t, f.Hosts(), 1)
	id, err := f.Create(ctx, docker.CreateOptions{App: "web", Instance: "a"})
	require.NoError(t, err)
	list, err := f.List(ctx)
	require.NoError(t, err)
	require.Len(t, list, 1)

	reg.hosts = []store.Host{{Name: "h1", DockerURL: "unix:///h1.sock", Address: "127.0.1.1", Labels: map[string]string{"zone": "a"}},
		{Name: "h2", DockerURL: "unix:///h2.sock", Address: "127.0.1.2", Drain: true}}
	require.NoError(t, f.Sync(ctx))
	engines["h2"].set(true) // never answers
	f.probe(ctx)
	require.Equal(t, []string{"h1=up"}, changes)
	state, _ = f.State("h1")
	require.Equal(t, Unknown, state, "answers, but not listed yet: its instances are held")
	require.False(t, f.Hosts()[0].Schedulable)
	_, err = f.List(ctx)
	require.NoError(t, err)
	state, _ = f.State("h2")
	require.Equal(t, Unknown, state, "h2 never answered: nothing there may look gone yet")
	hs := f.Hosts()
	require.Equal(t, "h1", hs[0].Name)
	require.True(t, hs[0].Schedulable)
	require.False(t, hs[1].Schedulable, "unknown and draining")
	state, draining := f.State("")
	require.Equal(t, Up, state)
	require.True(t, draining, "once hosts are registered, the local engine's instances move to them")
	state, _ = f.State("h1")
	require.Equal(t, Up, state)

	now = now.Add(16 * time.Second)
	f.probe(ctx)
	require.Equal(t, []string{"h1=up", "h2=down"}, changes, "h2 never answered within the host timeout")
	c1, err := f.Create(ctx, docker.CreateOptions{Host: "h1", App: "web", Instance: "b"})
	require.NoError(t, err)
	_, err = f.Create(ctx, docker.CreateOptions{Host: "h2", App: "web", Instance: "c"})
	require.ErrorIs(t, err, ErrHostDown)
	list, err = f.List(ctx)
	require.NoError(t, err)
	require.Len(t, list, 2, "the local engine's container and h1's")

	// h1 stops answering: its last list is served until the host timeout.
	engines["h1"].set(true)
	now = now.Add(5 * time.Second)
	list, err = f.List(ctx)
	require.NoError(t, err)
	require.Len(t, list, 2, "suspect: still listed")
	require.ErrorIs(t, f.Start(ctx, c1), ErrHostDown, "routed to h1 by container id, which fails at once: it does not answer")
	state, _ = f.State("h1")
	require.Equal(t, Unreachable, state)
	now = now.Add(11 * time.Second)
	f.probe(ctx)
	require.Equal(t, "h1=down", changes[len(changes)-1])
	list, err = f.List(ctx)
	require.NoError(t, err)
	require.Len(t, list, 1, "a down host's containers are gone to the scheduler")
	require.ErrorIs(t, f.Remove(ctx, c1), ErrHostDown, "fails at once, not after a timeout")
	_, err = f.Tail(ctx, c1, 20)
	require.ErrorIs(t, err, ErrHostDown, "a down host's logs fail at once too")
	_, err = f.Exec(ctx, c1, []string{"/check"}, time.Second)
	require.ErrorIs(t, err, ErrHostDown, "so does an exec check")

	// h1 comes back: up, and its container listed again (an orphan to the
	// controller if it was replaced meanwhile).
	engines["h1"].set(false)
	f.probe(ctx)
	require.Equal(t, "h1=up", changes[len(changes)-1])
	list, err = f.List(ctx)
	require.NoError(t, err)
	require.Len(t, list, 2)
	tail, err := f.Tail(ctx, c1, 20)
	require.NoError(t, err)
	require.Equal(t, []string{"last line of " + c1}, tail, "read from the container's own host")
	res, err := f.Exec(ctx, c1, []string{"/check"}, time.Second)
	require.NoError(t, err)
	require.Equal(t, "h1 ran /check", res.Output, "an exec check runs on the container's own host")
	require.NoError(t, f.Remove(ctx, c1))
	require.NoError(t, f.Remove(ctx, id), "the local engine's, by id")

	// Removed from the registry: its client is closed.
	reg.hosts = reg.hosts[:1]
	require.NoError(t, f.Sync(ctx))
	require.True(t, engines["h2"].closed)
	state, draining = f.State("h2")
	require.Equal(t, Down, state)
	require.True(t, draining)
}

// followEngine is an engine whose log stream hangs until ctx ends, as a
// follow on a host that stopped answering does.
type followEngine struct {
	*engine
	started chan struct{}
}

func (e *followEngine) Logs(ctx context.Context, _ string, _ docker.LogOptions, emit func(docker.LogLine) error) error {
	if err := e.check(); err != nil {
		return err
	}
	if err := emit(docker.LogLine{Text: "hello"}); err != nil {
		return err
	}
	close(e.started)
	<-ctx.Done()
	return ctx.Err()
}

func TestLogsOfAHostThatStopsAnswering(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	h1 := &followEngine{engine: newEngine("h1"), started: make(chan struct{})}
	reg := &registry{hosts: []store.Host{{Name: "h1"}, {Name: "h2"}}}
	f := New(Config{Timeout: time.Hour, Probe: 5 * time.Millisecond}, reg, func(h store.Host) (Engine, error) {
		if h.Name == "h1" {
			return h1, nil
		}
		return newEngine(h.Name), nil
	}, newEngine(""), zap.NewNop())
	require.NoError(t, f.Sync(ctx))
	require.ErrorIs(t, f.Logs(ctx, "h2", "c", docker.LogOptions{}, func(docker.LogLine) error { return nil }), ErrHostDown,
		"a host that never answered: at once")
	require.ErrorContains(t, f.Logs(ctx, "h2", "c", docker.LogOptions{}, nil), "host h2 has not answered yet")
	f.probe(ctx)

	var lines []string
	done := make(chan error, 1)
	go func() {
		done <- f.Logs(ctx, "h1", "c", docker.LogOptions{Follow: true}, func(l docker.LogLine) error { lines = append(lines, l.Text); return nil })
	}()
	<-h1.started
	h1.set(true)
	f.probe(ctx) // the ping fails: h1 is unreachable
	err := <-done
	require.ErrorIs(t, err, ErrHostDown)
	require.ErrorContains(t, err, "host h1 does not answer")
	require.Equal(t, []string{"hello"}, lines)
	require.ErrorIs(t, f.Logs(ctx, "h3", "c", docker.LogOptions{}, nil), ErrHostDown, "a host not registered")
}

// Images asks the local engine while no host is registered, then every
// up host, leaving out those that lack the image; it fails only when no
// engine could be asked.
func TestFleetImages(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	engines := map[string]*engine{"h1": newEngine("h1"), "h2": newEngine("h2"), "h3": newEngine("h3")}
	local := newEngine("")
	local.images = map[string]docker.ImageInfo{"web:v1": {ID: "sha256:l"}}
	engines["h1"].images = map[string]docker.ImageInfo{"web:v1": {ID: "sha256:a"}}
	engines["h2"].images = map[string]docker.ImageInfo{"web:v1": {ID: "sha256:a", RepoDigests: []string{"r/web@sha256:d"}}}
	reg := &registry{}
	f := New(Config{Timeout: 15 * time.Second}, reg, func(h store.Host) (Engine, error) { return engines[h.Name], nil }, local, zap.NewNop())
	require.NoError(t, f.Sync(ctx))
	got, err := f.Images(ctx, "web:v1")
	require.NoError(t, err)
	require.Equal(t, []image.Local{{ID: "sha256:l"}}, got)

	reg.hosts = []store.Host{{Name: "h1", DockerURL: "unix:///h1.sock"}, {Name: "h2", DockerURL: "unix:///h2.sock"}, {Name: "h3", DockerURL: "unix:///h3.sock"}}
	require.NoError(t, f.Sync(ctx))
	_, err = f.Images(ctx, "web:v1")
	require.ErrorIs(t, err, ErrHostDown, "no host has answered yet")
	f.probe(ctx)
	got, err = f.Images(ctx, "web:v1")
	require.NoError(t, err)
	require.Equal(t, []image.Local{{Host: "h1", ID: "sha256:a"}, {Host: "h2", ID: "sha256:a", RepoDigests: []string{"r/web@sha256:d"}}}, got,
		"h3 lacks it; the local engine is no host once hosts are registered")
	got, err = f.Images(ctx, "web:v9")
	require.NoError(t, err)
	require.Empty(t, got)
}
