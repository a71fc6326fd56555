// Package controller is the leader's loop: it observes the desired apps
// (Postgres), the instance records, the containers (Docker) and the health
// (NATS), asks reconcile.Plan what to do, and does it with bounded
// parallelism, writing every instance change to Postgres under the lease
// (fenced) and to berth_instances, and recording events. A container that
// dies leaves berth_instances at once, before anything else is decided.
package controller

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"sync"
	"time"

	"go.uber.org/zap"

	"github.com/berthhq/berth/common/bus"
	"github.com/berthhq/berth/common/logging"
	"github.com/berthhq/berth/common/msg"
	"github.com/berthhq/berth/common/spec"
	"github.com/berthhq/berth/common/view"
	"github.com/berthhq/berth/scheduler/internal/appenv"
	"github.com/berthhq/berth/scheduler/internal/docker"
	"github.com/berthhq/berth/scheduler/internal/publish"
	"github.com/berthhq/berth/scheduler/internal/reconcile"
	"github.com/berthhq/berth/scheduler/internal/store"
)

// Config tunes the controller.
type Config struct {
	// MaxParallel bounds the actions in flight.
	MaxParallel int
	// Resync runs a full cycle this often even without a change.
	Resync time.Duration
	// PullTimeout bounds an image pull; StartTimeout a container start;
	// StopTimeout a container stop, after which it is removed by force.
	PullTimeout, StartTimeout, StopTimeout time.Duration
	// DefaultCPU (cores) and DefaultMemory (bytes) apply when a spec sets none.
	DefaultCPU    float64
	DefaultMemory int64
	// Env is the passthrough policy and Environ the scheduler's environment.
	Env     appenv.Policy
	Environ []string
}

// Controller runs the leader's loop. Create it with New; run it with Run.
type Controller struct {
	cfg    Config
	st     *store.Store
	dk     *docker.Client
	conn   *bus.Conn
	pub    *publish.Publisher
	names  msg.Names
	lease  func() (store.Lease, bool)
	health *view.Table[*msg.Health]
	agents *view.Table[*msg.Agent]
	logger *zap.Logger

	wake chan struct{}

	mu           sync.Mutex
	healthySince map[string]time.Time // by <app>.<instance>
	tripped      map[string]time.Time // by app: when the breaker was last reported
	// dead holds containers Docker reported dead (die, oom). Docker emits
	// the event before its container list says so, so the event is
	// trusted over the list.
	dead map[string]bool
	// oom holds containers Docker reported killed for memory.
	oom map[string]bool
	// unhealthySince is when each instance last turned unhealthy.
	unhealthySince map[string]time.Time

	metrics *metrics
}

// New returns a controller. lease reports the current leadership; health
// and agents are fed by watchers of the health and agents buckets.
func New(cfg Config, st *store.Store, dk *docker.Client, conn *bus.Conn, pub *publish.Publisher, names msg.Names, lease func() (store.Lease, bool),
	health *view.Table[*msg.Health], agents *view.Table[*msg.Agent], logger *zap.Logger) *Controller {
	return &Controller{cfg: cfg, st: st, dk: dk, conn: conn, pub: pub, names: names, lease: lease, health: health, agents: agents,
		logger: logger.Named("controller"), wake: make(chan struct{}, 1),
		healthySince: map[string]time.Time{}, tripped: map[string]time.Time{}, dead: map[string]bool{}, oom: map[string]bool{}, unhealthySince: map[string]time.Time{},
		metrics: newMetrics()}
}

// Wake asks for a cycle soon (an app changed, health changed, leadership gained).
func (c *Controller) Wake() {
	select {
	case c.wake <- struct{}{}:
	default:
	}
}

// Run loops until ctx ends: on every wake and every Resync, while leading.
func (c *Controller) Run(ctx context.Context) error {
	go func() {
		_ = c.dk.Events(ctx, func(e docker.Event) { c.onDockerEvent(ctx, e) }, c.Wake)
	}()
	tick := time.NewTicker(c.cfg.Resync)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-c.wake:
		case <-tick.C:
		}
		l, ok := c.lease()
		if !ok {
			c.metrics.desired.Reset()
			c.metrics.ready.Reset()
			continue
		}
		started := time.Now()
		acted, err := c.cycle(ctx, l)
		c.metrics.duration.Observe(time.Since(started).Seconds())
		c.metrics.cycles.WithLabelValues(result(err)).Inc()
		if acted > 0 {
			// The state moved: plan again from where it is now (a replaced
			// instance's successor, the next step of a rollout).
			c.Wake()
		}
		if err != nil && ctx.Err() == nil {
			if errors.Is(err, store.ErrNotLeader) {
				c.logger.Warn("lost the lease mid-cycle: stopping", zap.Error(err))
				continue
			}
			c.logger.Error("cycle failed, retrying", zap.Error(err))
			time.AfterFunc(time.Second, c.Wake)
		}
	}
}

// onDockerEvent takes a dead container's instance out of nginx at once,
// then lets the next cycle replace it.
func (c *Controller) onDockerEvent(ctx context.Context, e docker.Event) {
	switch e.Action {
	case "die", "oom", "kill", "stop":
	default:
		return
	}
	if e.App == "" || e.Instance == "" {
		return
	}
	if e.Action == "die" || e.Action == "oom" {
		c.mu.Lock()
		c.dead[e.ContainerID] = true
		if e.Action == "oom" {
			c.oom[e.ContainerID] = true
		}
		c.mu.Unlock()
	}
	if l, ok := c.lease(); ok && (e.Action == "die" || e.Action == "oom") {
		// Not routable any more: nginx drops it on its next debounce.
		c.publishInstance(ctx, l, store.Instance{ID: e.Instance, App: e.App, State: msg.StateFailed, Generation: 1, ContainerID: e.ContainerID})
	}
	c.Wake()
}

// cycle observes, plans and acts once, and returns how many actions it took.
func (c *Controller) cycle(ctx context.Context, l store.Lease) (int, error) {
	now := time.Now()
	apps, err := c.st.List(ctx)
	if err != nil {
		return 0, err
	}
	records, err := c.st.Instances(ctx, "")
	if err != nil {
		return 0, err
	}
	containers, err := c.dk.List(ctx)
	if err != nil {
		return 0, err
	}
	restarts, err := c.st.Restarts(ctx, now.Add(-24*time.Hour))
	if err != nil {
		return 0, err
	}
	health, _ := c.health.Rows()

	in := reconcile.Input{Apps: map[string]reconcile.Desired{}, Term: l.Term, Now: now}
	specs := map[string]store.App{}
	for _, a := range apps {
		s := *a.Spec
		s.Default()
		env := c.cfg.Env.Env(s.Env, c.cfg.Environ)
		in.Apps[a.Name] = reconcile.Desired{App: a.Name, Generation: a.Generation, SpecHash: reconcile.SpecHash(&s, env),
			Replicas: a.DesiredReplicas, MaxSurge: s.Update.MaxSurge, MaxUnavailable: s.Update.MaxUnavailable,
			MinHealthyTime: s.Update.MinHealthyTime.Std(), RestartAttempts: s.Restart.MaxAttempts,
			UnhealthyGrace: unhealthyGrace(&s), RestartWindow: s.Restart.Window.Std(), BackoffInitial: s.Restart.BackoffInitial.Std(), BackoffMax: s.Restart.BackoffMax.Std()}
		specs[a.Name] = a
		for _, at := range restarts[a.Name] {
			in.Failures = append(in.Failures, reconcile.Failure{App: a.Name, At: at})
		}
	}
	byContainer := map[string]docker.Container{}
	c.mu.Lock()
	listed := map[string]bool{}
	for _, ct := range containers {
		listed[ct.ID] = true
		if c.dead[ct.ID] {
			ct.Running = false
		}
		byContainer[ct.ID] = ct
	}
	for id := range c.dead {
		if !listed[id] { // removed: forget it
			delete(c.dead, id)
			delete(c.oom, id)
		}
	}
	c.mu.Unlock()
	owned := map[string]bool{}
	healthChanged := map[string]string{}
	for _, r := range records {
		ct, exists := byContainer[r.ContainerID]
		owned[r.ContainerID] = true
		o := reconcile.Observed{ID: r.ID, App: r.App, Generation: r.Generation, SpecHash: r.SpecHash, State: r.State,
			Health: msg.StatusUnknown, CreatedAt: r.CreatedAt, Term: r.Term, ContainerID: r.ContainerID,
			ContainerRunning: exists && ct.Running, ContainerGone: r.ContainerID != "" && !exists}
		key := msg.InstanceKey(r.App, r.ID)
		o.Health, o.HealthySince, o.UnhealthySince = c.healthOf(key, health[key], specs[r.App], now)
		if o.Health != r.Health {
			healthChanged[r.ID] = o.Health
		}
		c.mu.Lock()
		o.OOMKilled = c.oom[r.ContainerID]
		c.mu.Unlock()
		// A creating/starting record older than the start timeout is stale.
		if (r.State == msg.StateCreating || r.State == msg.StateStarting) && now.Sub(r.UpdatedAt) > c.cfg.StartTimeout {
			o.State, o.ContainerGone = msg.StateRunning, true
		}
		in.Instances = append(in.Instances, o)
	}
	if len(healthChanged) > 0 {
		if err := c.pub.Tx(ctx, l, func(ctx context.Context, tx *store.Tx) error { return tx.SetHealth(ctx, healthChanged) }); err != nil {
			return 0, err
		}
	}
	for _, ct := range containers {
		if !owned[ct.ID] {
			in.Orphans = append(in.Orphans, reconcile.Orphan{ContainerID: ct.ID, App: ct.App, Instance: ct.Instance,
				SpecHash: ct.SpecHash, Generation: ct.Generation, Running: ct.Running})
		}
	}

	// Time alone can change the plan while an instance is not healthy (the
	// unhealthy grace, a rollout's healthy_deadline, min_healthy_time):
	// plan again in a second then.
	for _, o := range in.Instances {
		if o.Health != msg.StatusHealthy && (o.State == msg.StateRunning || o.State == msg.StateStarting) {
			time.AfterFunc(time.Second, c.Wake)
			break
		}
	}
	if n, err := c.checkRollouts(ctx, l, in, specs, now); err != nil || n > 0 {
		return n, err // rolled back: plan again from the new generation
	}
	c.metrics.observeApps(in)
	actions := reconcile.Plan(in).Actions
	if ce := c.logger.Check(zap.DebugLevel, "planned"); ce != nil {
		obs := make([]string, 0, len(in.Instances))
		for _, o := range in.Instances {
			obs = append(obs, fmt.Sprintf("%s:%s:run=%t:gone=%t:%s", o.ID, o.State, o.ContainerRunning, o.ContainerGone, o.Health))
		}
		ce.Write(zap.Strings("observed", obs), zap.Int("orphans", len(in.Orphans)), zap.Int("actions", len(actions)), zap.Stringers("plan", actions))
	}
	if len(actions) == 0 {
		return 0, nil
	}
	sem := make(chan struct{}, max(c.cfg.MaxParallel, 1))
	var wg sync.WaitGroup
	errs := make(chan error, len(actions))
	for _, a := range actions {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			err := c.act(ctx, l, a, specs[a.App], in.Apps[a.App], recordOf(records, a.Instance))
			c.metrics.action(a.Kind, err)
			if err != nil {
				errs <- err
			}
		}()
	}
	wg.Wait()
	close(errs)
	var all []error
	for err := range errs {
		all = append(all, err)
	}
	// A tripped breaker or a hold is a report, not a change of state.
	acted := 0
	for _, a := range actions {
		if a.Kind != reconcile.TripBreaker && a.Kind != reconcile.Hold {
			acted++
		}
	}
	return acted, errors.Join(all...)
}

// checkRollouts rolls back an app, if update.auto_rollback is on, when a
// rollout's new instance has existed for update.healthy_deadline without
// becoming healthy (as Nomad's healthy_deadline is per allocation: a long
// rollout of healthy instances is not rolled back). It returns how many
// apps it rolled back.
func (c *Controller) checkRollouts(ctx context.Context, l store.Lease, in reconcile.Input, specs map[string]store.App, now time.Time) (int, error) {
	rolling, late := map[string]bool{}, map[string]bool{}
	for _, o := range in.Instances {
		if d, ok := in.Apps[o.App]; ok && o.SpecHash != d.SpecHash && (o.State == msg.StateRunning || o.State == msg.StateStarting) {
			rolling[o.App] = true
		}
	}
	for _, o := range in.Instances {
		d, ok := in.Apps[o.App]
		s := specs[o.App].Spec
		if !ok || !rolling[o.App] || o.SpecHash != d.SpecHash || s == nil || s.Update.AutoRollback == nil || !*s.Update.AutoRollback {
			continue
		}
		if o.Health != msg.StatusHealthy && now.Sub(o.CreatedAt) > s.Update.HealthyDeadline.Std() {
			late[o.App] = true
		}
	}
	n := 0
	for app := range late {
		prev, err := c.st.Rollback(ctx, app)
		if err != nil {
			c.logger.Warn("auto-rollback failed", zap.String(logging.KeyApp, app), zap.Error(err))
			continue
		}
		n++
		if err := c.pub.Tx(ctx, l, func(ctx context.Context, tx *store.Tx) error {
			return addEvent(ctx, tx, store.Event{App: app, Kind: "rollout_rolled_back",
				Message: fmt.Sprintf("generation %d had an instance not healthy within update.healthy_deadline (%s): rolled back to the previous spec as generation %d (image %s)",
					in.Apps[app].Generation, specs[app].Spec.Update.HealthyDeadline, prev.Generation, prev.Spec.Image)})
		}); err != nil {
			return n, err
		}
	}
	return n, nil
}

// unhealthyGrace is how long an instance may stay unhealthy before it is
// replaced: three check intervals, at least 5 s; none without a check.
func unhealthyGrace(s *spec.App) time.Duration {
	if !s.Health.IsEnabled() {
		return 0
	}
	return max(3*s.Health.Interval.Std(), 5*time.Second)
}

func recordOf(records []store.Instance, id string) store.Instance {
	for _, r := range records {
		if r.ID == id {
			return r
		}
	}
	return store.Instance{}
}

// healthOf is an instance's health for planning — healthd's status, or
// healthy for an app without an enabled check once it runs — and since
// when it has been healthy or unhealthy.
func (c *Controller) healthOf(key string, h *msg.Health, app store.App, now time.Time) (status string, healthySince, unhealthySince time.Time) {
	status = msg.StatusUnknown
	switch {
	case app.Spec != nil && !app.Spec.Health.IsEnabled():
		status = msg.StatusHealthy
	case h != nil:
		status = h.Status
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	since := func(m map[string]time.Time, on bool) time.Time {
		if !on {
			delete(m, key)
			return time.Time{}
		}
		t, ok := m[key]
		if !ok {
			t = now
			m[key] = t
		}
		return t
	}
	return status, since(c.healthySince, status == msg.StatusHealthy), since(c.unhealthySince, status == msg.StatusUnhealthy)
}

// act carries out one action.
func (c *Controller) act(ctx context.Context, l store.Lease, a reconcile.Action, app store.App, d reconcile.Desired, rec store.Instance) error {
	log := c.logger.With(zap.String(logging.KeyApp, a.App), zap.String(logging.KeyInstance, a.Instance), zap.String("action", string(a.Kind)))
	switch a.Kind {
	case reconcile.Start:
		return c.start(ctx, l, app, d, log)
	case reconcile.Stop:
		return c.stop(ctx, l, app, rec, a.Reason)
	case reconcile.Replace:
		_ = c.dk.Remove(ctx, a.ContainerID)
		err := c.pub.Tx(ctx, l, func(ctx context.Context, tx *store.Tx) error {
			if err := tx.DeleteInstance(ctx, a.Instance); err != nil {
				return err
			}
			return addEvent(ctx, tx, store.Event{App: a.App, Instance: a.Instance, Kind: "instance_replaced", Message: "instance " + a.Instance + " replaced: " + a.Reason})
		})
		c.deleteInstance(ctx, a.App, a.Instance)
		return err
	case reconcile.Adopt:
		ct, err := c.dk.Inspect(ctx, a.ContainerID)
		if err != nil {
			return err
		}
		now := time.Now()
		rec := store.Instance{ID: a.Instance, App: a.App, Generation: ct.Generation, ContainerID: ct.ID, Address: ct.Address,
			State: msg.StateRunning, Health: msg.StatusUnknown, SpecHash: ct.SpecHash, StartedAt: &now}
		if err := c.pub.Tx(ctx, l, func(ctx context.Context, tx *store.Tx) error {
			if err := tx.PutInstance(ctx, rec); err != nil {
				return err
			}
			return addEvent(ctx, tx, store.Event{App: a.App, Instance: a.Instance, Kind: "instance_adopted", Message: "adopted running container " + short(ct.ID) + ": " + a.Reason})
		}); err != nil {
			return err
		}
		c.publishInstance(ctx, l, rec)
		return nil
	case reconcile.Hold:
		// Plan again when the backoff ends.
		time.AfterFunc(time.Until(a.Until)+10*time.Millisecond, c.Wake)
		return nil
	case reconcile.RemoveOrphan:
		log.Info("removing orphan container", zap.String(logging.KeyContainer, short(a.ContainerID)))
		return c.dk.Remove(ctx, a.ContainerID)
	case reconcile.TripBreaker:
		c.mu.Lock()
		last := c.tripped[a.App]
		report := time.Since(last) > d.BackoffMax
		if report {
			c.tripped[a.App] = time.Now()
		}
		c.mu.Unlock()
		if !report {
			return nil
		}
		return c.pub.Tx(ctx, l, func(ctx context.Context, tx *store.Tx) error {
			return addEvent(ctx, tx, store.Event{App: a.App, Kind: "app_failed", Message: "app " + a.App + " is crash-looping: " + a.Reason})
		})
	}
	return fmt.Errorf("unknown action %s", a.Kind)
}

// start creates, starts and records a new instance.
func (c *Controller) start(ctx context.Context, l store.Lease, app store.App, d reconcile.Desired, log *zap.Logger) error {
	s := *app.Spec
	s.Default()
	id := newID()
	rec := store.Instance{ID: id, App: app.Name, Generation: app.Generation, State: msg.StateCreating, Health: msg.StatusUnknown, SpecHash: d.SpecHash}
	if err := c.pub.Tx(ctx, l, func(ctx context.Context, tx *store.Tx) error { return tx.PutInstance(ctx, rec) }); err != nil {
		return err
	}
	fail := func(kind, message string) error {
		rec.State = msg.StateFailed
		return c.pub.Tx(ctx, l, func(ctx context.Context, tx *store.Tx) error {
			if err := tx.DeleteInstance(ctx, id); err != nil {
				return err
			}
			return addEvent(ctx, tx, store.Event{App: app.Name, Instance: id, Kind: kind, Message: message})
		})
	}
	present, err := c.dk.ImagePresent(ctx, s.Image)
	if err != nil {
		return err
	}
	if !present {
		log.Info("pulling image", zap.String("image", s.Image))
		if err := c.dk.Pull(ctx, s.Image, c.cfg.PullTimeout); err != nil {
			return fail("image_pull_failed", fmt.Sprintf("cannot start %s: image %s is not present and pulling it failed: %v", app.Name, s.Image, err))
		}
	}
	cpu, mem := c.limits(&s)
	sctx, cancel := context.WithTimeout(ctx, c.cfg.StartTimeout)
	defer cancel()
	cid, err := c.dk.Create(sctx, docker.CreateOptions{App: app.Name, Instance: id, Generation: app.Generation, SpecHash: d.SpecHash, Term: l.Term,
		Image: s.Image, Command: s.Command, Env: c.cfg.Env.Env(s.Env, c.cfg.Environ), Port: s.Port, CPU: cpu, Memory: mem,
		StopSignal: s.Stop.Signal, StopGrace: s.Stop.Grace.Std()})
	if err != nil {
		return fail("instance_create_failed", fmt.Sprintf("cannot create a container for %s: %v", app.Name, err))
	}
	rec.ContainerID, rec.State = cid, msg.StateStarting
	if err := c.dk.Start(sctx, cid); err != nil {
		_ = c.dk.Remove(ctx, cid)
		return fail("instance_start_failed", fmt.Sprintf("cannot start a container for %s: %v", app.Name, err))
	}
	ct, err := c.dk.Inspect(sctx, cid)
	if err != nil {
		return err
	}
	now := time.Now()
	rec.Address, rec.State, rec.StartedAt = ct.Address, msg.StateRunning, &now
	if err := c.pub.Tx(ctx, l, func(ctx context.Context, tx *store.Tx) error {
		if err := tx.PutInstance(ctx, rec); err != nil {
			return err
		}
		return addEvent(ctx, tx, store.Event{App: app.Name, Instance: id, Kind: "instance_started",
			Message: fmt.Sprintf("instance %s started at %s (generation %d)", id, ct.Address, app.Generation),
			Details: map[string]string{"container_id": short(cid), "address": ct.Address, "generation": fmt.Sprint(app.Generation)}})
	}); err != nil {
		return err
	}
	c.publishInstance(ctx, l, rec)
	return nil
}

// limits are the CPU (cores) and memory (bytes) limits a container of s
// gets: the spec's, or the scheduler's defaults.
func (c *Controller) limits(s *spec.App) (cpu float64, mem int64) {
	cpu, mem = s.Resources.CPU, int64(s.Resources.Memory)
	if cpu == 0 {
		cpu = c.cfg.DefaultCPU
	}
	if mem == 0 {
		mem = c.cfg.DefaultMemory
	}
	return cpu, mem
}

// stop drains an instance out of nginx, then stops and removes it.
func (c *Controller) stop(ctx context.Context, l store.Lease, app store.App, rec store.Instance, reason string) error {
	drain, grace, signal := 10*time.Second, 30*time.Second, "SIGTERM"
	if app.Spec != nil {
		s := *app.Spec
		s.Default()
		drain, grace, signal = s.Stop.Drain.Std(), s.Stop.Grace.Std(), s.Stop.Signal
	}
	rec.State = msg.StateDraining
	if err := c.pub.Tx(ctx, l, func(ctx context.Context, tx *store.Tx) error { return tx.PutInstance(ctx, rec) }); err != nil {
		return err
	}
	if rev := c.publishInstance(ctx, l, rec); rev > 0 {
		c.waitDrained(ctx, rev, drain)
	}
	if rec.ContainerID != "" {
		sctx, cancel := context.WithTimeout(ctx, c.stopTimeout(grace))
		err := c.dk.Stop(sctx, rec.ContainerID, signal, grace)
		cancel()
		if err != nil && !errors.Is(err, docker.ErrNotFound) {
			c.logger.Warn("stop failed, removing by force", zap.Error(err))
		}
		if err := c.dk.Remove(ctx, rec.ContainerID); err != nil && !errors.Is(err, docker.ErrNotFound) {
			return err
		}
	}
	err := c.pub.Tx(ctx, l, func(ctx context.Context, tx *store.Tx) error {
		if err := tx.DeleteInstance(ctx, rec.ID); err != nil {
			return err
		}
		return addEvent(ctx, tx, store.Event{App: rec.App, Instance: rec.ID, Kind: "instance_stopped", Message: "instance " + rec.ID + " stopped: " + reason})
	})
	c.deleteInstance(ctx, rec.App, rec.ID)
	return err
}

// stopTimeout bounds a stop: the flag, but never less than the grace plus
// a margin, so the spec's grace is always honoured.
func (c *Controller) stopTimeout(grace time.Duration) time.Duration {
	return max(c.cfg.StopTimeout, grace+10*time.Second)
}

// waitDrained waits until every live lbagent has applied revision rev (so
// no nginx routes to the draining instance any more), at most drain.
func (c *Controller) waitDrained(ctx context.Context, rev uint64, drain time.Duration) {
	deadline := time.Now().Add(drain)
	for time.Now().Before(deadline) {
		agents, _ := c.agents.Rows()
		done := true
		for _, a := range agents {
			if time.Since(a.UpdatedAt) < msg.AgentTTL && a.AppliedRevision < rev {
				done = false
			}
		}
		if done {
			return
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// publishInstance puts the instance into berth_instances and returns the
// write's revision (0 on failure, which is logged).
func (c *Controller) publishInstance(ctx context.Context, l store.Lease, r store.Instance) uint64 {
	rev, err := c.pub.Instance(ctx, l, r)
	if err != nil {
		c.logger.Warn("publish instance", zap.Error(err))
	}
	return rev
}

func (c *Controller) deleteInstance(ctx context.Context, app, id string) {
	if err := c.pub.Unpublish(ctx, app, id); err != nil {
		c.logger.Warn("unpublish instance", zap.Error(err))
	}
}

// addEvent records e in tx; the publisher publishes it once tx commits.
func addEvent(ctx context.Context, tx *store.Tx, e store.Event) error {
	_, err := tx.AddEvent(ctx, e)
	return err
}

const idAlphabet = "abcdefghijklmnopqrstuvwxyz0123456789"

// newID returns a random 8-character instance id.
func newID() string {
	b := make([]byte, 8)
	_, _ = rand.Read(b)
	for i := range b {
		b[i] = idAlphabet[int(b[i])%len(idAlphabet)]
	}
	return string(b)
}

func short(id string) string {
	if len(id) > 12 {
		return id[:12]
	}
	return id
}
