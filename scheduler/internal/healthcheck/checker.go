package healthcheck

import (
	"context"
	"errors"
	"hash/fnv"
	"reflect"
	"sync"
	"time"

	"go.uber.org/zap"

	"github.com/berthhq/berth/common/msg"
	"github.com/berthhq/berth/common/spec"
	"github.com/berthhq/berth/scheduler/internal/docker"
)

// Target is one instance whose health the scheduler checks itself.
type Target struct {
	// Key is <app>.<instance>, its health key.
	Key           string
	App, Instance string
	// Host is the Docker host it runs on ("": the local engine).
	Host        string
	ContainerID string
	Generation  int64
	// Term is its record's leader term.
	Term uint64
	// Check is its app's health block (type docker or exec).
	Check spec.Health
	// StartedAt is when its container started (zero: unknown).
	StartedAt time.Time
}

// Docker is what the checker asks of the Docker engines (fleet.Fleet).
// Safe for concurrent use.
type Docker interface {
	// Inspect returns a container with its health (Container.Health).
	Inspect(ctx context.Context, id string) (docker.Container, error)
	// Exec runs argv in a container, bounded by timeout.
	Exec(ctx context.Context, id string, argv []string, timeout time.Duration) (docker.ExecResult, error)
}

// Sink publishes health values (the health bucket, sealed by the
// scheduler's key). Safe for concurrent use.
type Sink interface {
	Put(ctx context.Context, key string, h *msg.Health) error
	Delete(ctx context.Context, key string) error
}

// Reporter records that an instance turned unhealthy (an event, which
// operators see in `scheduler events`). Safe for concurrent use; nil in
// Config: none.
type Reporter interface {
	Unhealthy(ctx context.Context, t Target, s State)
}

// Config tunes a Checker.
type Config struct {
	// ExecsPerHost is how many exec checks run at once on one host.
	ExecsPerHost int
	// Refresh is how often every value is published again (and every
	// docker target inspected again, in case an event was lost).
	Refresh time.Duration
	// InspectTimeout bounds one inspect.
	InspectTimeout time.Duration
	// Report records each turn to unhealthy; nil: logged only.
	Report Reporter
}

// Checker runs the scheduler's health checks for the targets the
// controller hands it, and publishes their health. Create it with New,
// run it with Run (a leader-only service); SetTargets and DockerHealth
// are safe to call at any time, from any goroutine.
type Checker struct {
	cfg    Config
	docker Docker
	sink   Sink
	logger *zap.Logger
	now    func() time.Time

	kick chan struct{}

	mu      sync.Mutex
	targets map[string]Target
	byID    map[string]string // container id → key
	dirty   map[string]bool   // docker targets to inspect
	states  map[string]State
	sent    map[string]State // what was last published, by key
	running map[string]bool  // exec checks in flight
	next    map[string]time.Time
	slots   map[string]chan struct{} // per host
}

// New returns a Checker.
func New(cfg Config, d Docker, sink Sink, logger *zap.Logger) *Checker {
	if cfg.ExecsPerHost <= 0 {
		cfg.ExecsPerHost = 4
	}
	if cfg.Refresh <= 0 {
		cfg.Refresh = 30 * time.Second
	}
	if cfg.InspectTimeout <= 0 {
		cfg.InspectTimeout = 5 * time.Second
	}
	return &Checker{cfg: cfg, docker: d, sink: sink, logger: logger.Named("healthcheck"), now: time.Now,
		kick: make(chan struct{}, 1), targets: map[string]Target{}, byID: map[string]string{}, dirty: map[string]bool{},
		states: map[string]State{}, sent: map[string]State{}, running: map[string]bool{}, next: map[string]time.Time{},
		slots: map[string]chan struct{}{}}
}

func (c *Checker) wake() {
	select {
	case c.kick <- struct{}{}:
	default:
	}
}

// SetTargets replaces the targets: every starting or running instance
// with a container of an app whose check is docker or exec. A new docker
// target is inspected at once; a new exec target is checked after its
// initial delay, at an offset of its own within its interval.
func (c *Checker) SetTargets(ts []Target) {
	c.mu.Lock()
	defer c.mu.Unlock()
	now := c.now()
	keep := make(map[string]Target, len(ts))
	for _, t := range ts {
		keep[t.Key] = t
		old, had := c.targets[t.Key]
		if had && old.ContainerID == t.ContainerID && sameCheck(old.Check, t.Check) {
			continue
		}
		if had && old.ContainerID != t.ContainerID {
			delete(c.byID, old.ContainerID)
		}
		c.byID[t.ContainerID] = t.Key
		c.states[t.Key] = Unknown()
		switch t.Check.Type {
		case spec.HealthDocker:
			c.dirty[t.Key] = true
		case spec.HealthExec:
			first := now.Add(offset(t.Key, t.Check.Interval.Std()))
			if !t.StartedAt.IsZero() {
				first = later(first, t.StartedAt.Add(t.Check.InitialDelay.Std()))
			}
			c.next[t.Key] = first
		}
	}
	for key, t := range c.targets {
		if _, ok := keep[key]; !ok {
			delete(c.byID, t.ContainerID)
			delete(c.dirty, key)
			delete(c.next, key)
			delete(c.states, key)
		}
	}
	c.targets = keep
	c.wake()
}

func sameCheck(a, b spec.Health) bool { return reflect.DeepEqual(a, b) }

// DockerHealth takes a health_status event of a container: its target is
// inspected at once (for the test's output) and published.
func (c *Checker) DockerHealth(containerID, status string) {
	c.mu.Lock()
	key, ok := c.byID[containerID]
	if ok {
		c.dirty[key] = true
	}
	c.mu.Unlock()
	if ok {
		c.logger.Debug("docker health event", zap.String("key", key), zap.String("status", status))
		c.wake()
	}
}

// Run checks and publishes until ctx ends. It returns once every check it
// started has ended.
func (c *Checker) Run(ctx context.Context) error {
	c.restart()
	var wg sync.WaitGroup
	defer wg.Wait()
	results := make(chan keyed, 64)
	refresh := time.NewTicker(c.cfg.Refresh)
	defer refresh.Stop()
	timer := time.NewTimer(0)
	defer timer.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case r := <-results:
			c.apply(ctx, r)
			continue
		case <-refresh.C:
			c.refresh(ctx)
		case <-c.kick:
		case <-timer.C:
		}
		c.unpublishGone(ctx)
		wait := c.launch(ctx, &wg, results)
		if !timer.Stop() {
			select {
			case <-timer.C:
			default:
			}
		}
		timer.Reset(wait)
	}
}

// restart starts a term of leadership afresh: another leader may have
// published since this one last did, and checks that were in flight when
// the last term ended never reported. Every target is checked again and
// its first result published.
func (c *Checker) restart() {
	c.mu.Lock()
	defer c.mu.Unlock()
	now := c.now()
	clear(c.running)
	clear(c.sent)
	for key, t := range c.targets {
		c.states[key] = Unknown()
		switch t.Check.Type {
		case spec.HealthDocker:
			c.dirty[key] = true
		case spec.HealthExec:
			c.next[key] = now.Add(offset(key, t.Check.Interval.Std()))
		}
	}
}

// keyed is one check's outcome for a target, as of its container.
type keyed struct {
	key, container string
	// docker is Docker's health, for a docker target; else exec's result.
	docker *State
	exec   Result
}

// launch starts the inspects and the exec checks that are due, and
// returns how long until the next is.
func (c *Checker) launch(ctx context.Context, wg *sync.WaitGroup, results chan<- keyed) time.Duration {
	c.mu.Lock()
	defer c.mu.Unlock()
	now := c.now()
	for key := range c.dirty {
		t := c.targets[key]
		delete(c.dirty, key)
		wg.Go(func() { c.inspect(ctx, t, results) })
	}
	wait := c.cfg.Refresh
	for key, at := range c.next {
		t := c.targets[key]
		if c.running[key] {
			continue
		}
		if at.After(now) {
			wait = min(wait, at.Sub(now))
			continue
		}
		c.running[key] = true
		c.next[key] = now.Add(t.Check.Interval.Std())
		wait = min(wait, t.Check.Interval.Std())
		slot := c.slot(t.Host)
		wg.Go(func() { c.exec(ctx, t, slot, results) })
	}
	return wait
}

// slot is host's semaphore of exec checks; c.mu held.
func (c *Checker) slot(host string) chan struct{} {
	s, ok := c.slots[host]
	if !ok {
		s = make(chan struct{}, c.cfg.ExecsPerHost)
		c.slots[host] = s
	}
	return s
}

func (c *Checker) inspect(ctx context.Context, t Target, results chan<- keyed) {
	ictx, cancel := context.WithTimeout(ctx, c.cfg.InspectTimeout)
	defer cancel()
	ct, err := c.docker.Inspect(ictx, t.ContainerID)
	if err != nil {
		if ctx.Err() == nil && !errors.Is(err, docker.ErrNotFound) {
			c.logger.Warn("inspect for docker health", zap.String("key", t.Key), zap.Error(err))
		}
		return // the next refresh, or the controller's next targets, tries again
	}
	s := FromDocker(ct.Health, ct.HealthLog, c.now())
	select {
	case results <- keyed{key: t.Key, container: t.ContainerID, docker: &s}:
	case <-ctx.Done():
	}
}

func (c *Checker) exec(ctx context.Context, t Target, slot chan struct{}, results chan<- keyed) {
	select {
	case slot <- struct{}{}:
	case <-ctx.Done():
		return
	}
	timeout := t.Check.Timeout.Std()
	started := c.now()
	res, err := c.docker.Exec(ctx, t.ContainerID, t.Check.Exec.Argv(), timeout)
	<-slot
	r := ExecOutcome(res, err, c.now().Sub(started), timeout, c.now())
	select {
	case results <- keyed{key: t.Key, container: t.ContainerID, exec: r}:
	case <-ctx.Done():
	}
}

// apply takes one outcome into the target's state and publishes it when
// the verdict changed.
func (c *Checker) apply(ctx context.Context, r keyed) {
	c.mu.Lock()
	t, ok := c.targets[r.key]
	if r.docker == nil {
		delete(c.running, r.key)
	}
	if !ok || t.ContainerID != r.container {
		c.mu.Unlock()
		return // gone, or replaced, meanwhile
	}
	var s State
	if r.docker != nil {
		s = FollowDocker(c.states[r.key], *r.docker)
	} else {
		s = Step(c.states[r.key], r.exec, t.Check)
	}
	c.states[r.key] = s
	sent, was := c.sent[r.key]
	c.mu.Unlock()
	if was && Same(sent, s) {
		return
	}
	if s.Status != sent.Status && s.Status == msg.StatusUnhealthy {
		c.logger.Info("instance unhealthy", zap.String("key", r.key), zap.String("check", t.Check.Type),
			zap.String("failure", s.Failure), zap.String("message", s.Message))
		if c.cfg.Report != nil {
			c.cfg.Report.Unhealthy(ctx, t, s)
		}
	}
	c.publish(ctx, t, s)
}

func (c *Checker) publish(ctx context.Context, t Target, s State) {
	pctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if err := c.sink.Put(pctx, t.Key, Value(t, s)); err != nil {
		if ctx.Err() == nil {
			c.logger.Warn("publish health", zap.String("key", t.Key), zap.Error(err))
		}
		return // the next refresh publishes it again
	}
	c.mu.Lock()
	if cur, ok := c.targets[t.Key]; ok && cur.ContainerID == t.ContainerID {
		c.sent[t.Key] = s
	}
	c.mu.Unlock()
}

// refresh publishes every target's state again (seals go stale, and a
// NATS that came back empty needs them) and inspects every docker target
// again, in case an event was lost.
func (c *Checker) refresh(ctx context.Context) {
	c.mu.Lock()
	var again []Target
	for key, t := range c.targets {
		if t.Check.Type == spec.HealthDocker {
			c.dirty[key] = true
		}
		if _, ok := c.sent[key]; ok {
			again = append(again, t)
		}
	}
	states := make([]State, len(again))
	for i, t := range again {
		states[i] = c.states[t.Key]
	}
	c.mu.Unlock()
	for i, t := range again {
		c.publish(ctx, t, states[i])
	}
}

// unpublishGone deletes the health of the targets that went away.
func (c *Checker) unpublishGone(ctx context.Context) {
	c.mu.Lock()
	var gone []string
	for key := range c.sent {
		if _, ok := c.targets[key]; !ok {
			gone = append(gone, key)
			delete(c.sent, key)
		}
	}
	c.mu.Unlock()
	for _, key := range gone {
		dctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		if err := c.sink.Delete(dctx, key); err != nil && ctx.Err() == nil {
			c.logger.Warn("delete the health of a gone instance", zap.String("key", key), zap.Error(err))
		}
		cancel()
	}
}

// offset spreads the first checks of the targets over their interval.
func offset(key string, interval time.Duration) time.Duration {
	if interval <= 0 {
		return 0
	}
	h := fnv.New64a()
	_, _ = h.Write([]byte(key))
	return time.Duration(h.Sum64() % uint64(interval))
}

func later(a, b time.Time) time.Time {
	if b.After(a) {
		return b
	}
	return a
}
