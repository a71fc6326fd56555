package controller

import (
	"context"
	"sync"
	"time"

	"github.com/berthhq/berth/common/bus"
	"github.com/berthhq/berth/common/msg"
	"github.com/berthhq/berth/common/spec"
	"github.com/berthhq/berth/scheduler/internal/docker"
	"github.com/berthhq/berth/scheduler/internal/fleet"
	"github.com/berthhq/berth/scheduler/internal/healthcheck"
	"github.com/berthhq/berth/scheduler/internal/reconcile"
	"github.com/berthhq/berth/scheduler/internal/secret"
	"github.com/berthhq/berth/scheduler/internal/store"
)

// memory is what the controller learns between cycles and nothing else
// records: since when each instance has been healthy or unhealthy, which
// containers Docker reported dead (Docker emits the event before its
// container list says so, so the event is trusted over the list), and
// when each app's tripped breaker was last reported. Safe for concurrent use.
type memory struct {
	mu             sync.Mutex
	healthySince   map[string]time.Time // by <app>.<instance>
	unhealthySince map[string]time.Time
	dead, oom      map[string]bool      // by container
	exit           map[string]int       // by container: a die event's exit code
	tripped        map[string]time.Time // by app
	// unplaced is each app's last unplaceable reason and when it was
	// reported.
	unplaced map[string]reported
}

type reported struct {
	reason string
	at     time.Time
}

// unplaceableEvery is how often an unchanged unplaceable reason is
// reported again.
const unplaceableEvery = 5 * time.Minute

// unplaceable says whether an app's unplaceable reason should be reported
// now: a new reason at once, the same one every unplaceableEvery. An
// empty reason forgets the app's (it was placed).
func (m *memory) unplaceable(app, reason string, now time.Time) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	if reason == "" {
		delete(m.unplaced, app)
		return false
	}
	last, ok := m.unplaced[app]
	if ok && last.reason == reason && now.Sub(last.at) < unplaceableEvery {
		return false
	}
	m.unplaced[app] = reported{reason: reason, at: now}
	return true
}

func newMemory() *memory {
	return &memory{healthySince: map[string]time.Time{}, unhealthySince: map[string]time.Time{},
		dead: map[string]bool{}, oom: map[string]bool{}, exit: map[string]int{}, tripped: map[string]time.Time{}, unplaced: map[string]reported{}}
}

// died records a container Docker reported dead: an oom event, or a die
// event with its exit code (exited false: none reported).
func (m *memory) died(container string, oom bool, code int, exited bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.dead[container] = true
	if oom {
		m.oom[container] = true
	}
	if exited {
		m.exit[container] = code
	}
}

// containers applies the dead set to Docker's list and forgets
// containers that no longer exist.
func (m *memory) containers(list []docker.Container) map[string]docker.Container {
	m.mu.Lock()
	defer m.mu.Unlock()
	by := make(map[string]docker.Container, len(list))
	for _, ct := range list {
		if m.dead[ct.ID] {
			ct.Running = false
		}
		by[ct.ID] = ct
	}
	for id := range m.dead {
		if _, ok := by[id]; !ok {
			delete(m.dead, id)
			delete(m.oom, id)
			delete(m.exit, id)
		}
	}
	return by
}

// exited returns what Docker reported of a dead container: OOM-killed,
// and its exit code if a die event said it.
func (m *memory) exited(container string) (oom bool, code int, ok bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	code, ok = m.exit[container]
	return m.oom[container], code, ok
}

// since returns since when key has been healthy and unhealthy, as of now.
func (m *memory) since(key, status string, now time.Time) (healthy, unhealthy time.Time) {
	m.mu.Lock()
	defer m.mu.Unlock()
	track := func(by map[string]time.Time, on bool) time.Time {
		if !on {
			delete(by, key)
			return time.Time{}
		}
		t, ok := by[key]
		if !ok {
			t = now
			by[key] = t
		}
		return t
	}
	return track(m.healthySince, status == msg.StatusHealthy), track(m.unhealthySince, status == msg.StatusUnhealthy)
}

// forget drops what is remembered of instances not in live (by
// <app>.<instance>) and of apps not in apps: they are gone.
func (m *memory) forget(live map[string]bool, apps map[string]store.App) {
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, by := range []map[string]time.Time{m.healthySince, m.unhealthySince} {
		for key := range by {
			if !live[key] {
				delete(by, key)
			}
		}
	}
	for app := range m.tripped {
		if _, ok := apps[app]; !ok {
			delete(m.tripped, app)
		}
	}
}

// report says whether a tripped breaker should be reported again: once
// per every period.
func (m *memory) report(app string, every time.Duration, now time.Time) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	if now.Sub(m.tripped[app]) <= every {
		return false
	}
	m.tripped[app] = now
	return true
}

// world is one cycle's observation: the planner's input, and what acting
// on its actions needs.
type world struct {
	in      reconcile.Input
	apps    map[string]store.App
	records map[string]store.Instance
	// health is each record's health as observed, where it differs from
	// what the record says.
	health map[string]string
}

// observe reads the desired state, the records, the containers, the
// hosts, health and the lbagents, and builds the planner's input. What a
// host's state means for its instances is the planner's to decide.
func (c *Controller) observe(ctx context.Context, l store.Lease, now time.Time) (world, error) {
	apps, err := c.deps.Desired.List(ctx)
	if err != nil {
		return world{}, err
	}
	records, err := c.deps.Desired.Instances(ctx, "")
	if err != nil {
		return world{}, err
	}
	list, err := c.deps.Containers.List(ctx)
	if err != nil {
		return world{}, err
	}
	restarts, err := c.deps.Desired.Restarts(ctx, now.Add(-24*time.Hour))
	if err != nil {
		return world{}, err
	}
	failed, err := c.deps.Desired.FailedRollouts(ctx, now.Add(-failedRolloutsKept))
	if err != nil {
		return world{}, err
	}
	// Sized once: at 10,000 apps, growing them took half of a pass's
	// allocations (issue 30).
	w := world{in: reconcile.Input{Apps: make(map[string]reconcile.Desired, len(apps)), Instances: make([]reconcile.Observed, 0, len(records)),
		Term: l.Term, StartTimeout: c.cfg.StartTimeout, Now: now},
		apps: make(map[string]store.App, len(apps)), records: make(map[string]store.Instance, len(records)), health: map[string]string{}}
	w.in.Hosts = c.hosts(records, list)
	var keys []store.ReleaseKey
	for _, a := range apps {
		s := *a.Spec
		s.Default()
		d := c.desired(a, &s)
		w.in.Apps[a.Name] = d
		if d.Release {
			keys = append(keys, store.ReleaseKey{App: a.Name, SpecHash: d.ReleaseHash, Generation: a.Generation})
		}
		w.apps[a.Name] = a
		for _, r := range restarts[a.Name] {
			w.in.Failures = append(w.in.Failures, reconcile.Failure{App: a.Name, At: r.At, Generation: r.Generation, SpecHash: r.SpecHash, Reason: r.Reason})
		}
		if f, ok := failed[a.Name]; ok {
			if w.in.FailedRollouts == nil {
				w.in.FailedRollouts = map[string]reconcile.Rollout{}
			}
			w.in.FailedRollouts[a.Name] = reconcile.Rollout{Generation: f.Generation, SpecHash: f.SpecHash}
		}
	}
	releases, err := c.deps.Desired.Releases(ctx, keys)
	if err != nil {
		return world{}, err
	}
	w.in.Releases = c.watched(releases)
	containers := c.seen.containers(list)
	health, _ := c.deps.Health.Rows()
	drained := c.drained()
	// Every record owns its container, a lost instance's included: it is
	// no orphan while the record is kept.
	owned, live := make(map[string]bool, len(records)), make(map[string]bool, len(records))
	for _, r := range records {
		w.records[r.ID] = r
		ct, exists := containers[r.ContainerID]
		owned[r.ContainerID] = true
		key := msg.InstanceKey(r.App, r.ID)
		live[key] = true
		o := reconcile.Observed{ID: r.ID, App: r.App, Host: r.Host, Generation: r.Generation, SpecHash: r.SpecHash, State: r.State,
			CreatedAt: r.CreatedAt, UpdatedAt: r.UpdatedAt, Term: r.Term, ContainerID: r.ContainerID,
			ContainerRunning: exists && ct.Running, ContainerGone: r.ContainerID != "" && !exists}
		o.OOMKilled, o.ExitCode, o.Exited = c.seen.exited(r.ContainerID)
		o.Health = healthOf(health[key], w.apps[r.App].Spec)
		if r.State == msg.StateRunning && r.ContainerID != "" && !o.ContainerRunning && w.in.Hosts[r.Host].State == reconcile.HostUp {
			// Its container is dead (a breaker or a backoff may hold its
			// replacement): it serves nothing, whatever healthd last said,
			// also for an app without a check. Recorded, status says so.
			o.Health = msg.StatusUnhealthy
		}
		if h := health[key]; h != nil && h.Failure != "" {
			o.Probe = msg.Truncate(h.Failure+": "+h.Message, 256)
		}
		o.HealthySince, o.UnhealthySince = c.seen.since(key, o.Health, now)
		if o.Health != r.Health && r.State != msg.StateFailed {
			w.health[r.ID] = o.Health
		}
		if r.State == msg.StateDraining {
			o.Drained = drained(c.deps.Routing.Revision(r.App, r.ID))
		}
		w.in.Instances = append(w.in.Instances, o)
	}
	c.seen.forget(live, w.apps)
	if c.deps.Checks != nil {
		c.deps.Checks.SetTargets(checkTargets(records, w.apps, containers))
	}
	for _, ct := range list {
		if !owned[ct.ID] {
			w.in.Orphans = append(w.in.Orphans, reconcile.Orphan{ContainerID: ct.ID, Host: ct.Host, App: ct.App, Instance: ct.Instance,
				SpecHash: ct.SpecHash, Generation: ct.Generation, Running: containers[ct.ID].Running, Release: ct.Release})
		}
	}
	return w, nil
}

// failedRolloutsKept is how long a failed rollout without auto_rollback
// stays stopped, at most: a day, as long as the restart history read.
const failedRolloutsKept = 24 * time.Hour

// hosts is the planner's view of every host placement chooses from and
// every host a record or a container names: its state, its drain, its
// labels, and whether it left the registry.
func (c *Controller) hosts(records []store.Instance, list []docker.Container) map[string]reconcile.Host {
	out := map[string]reconcile.Host{}
	add := func(name string, labels map[string]string, registered bool) {
		if _, ok := out[name]; ok {
			return
		}
		state, draining := c.deps.Hosts.State(name)
		h := reconcile.Host{State: hostState(state), Draining: draining, Labels: labels, Constrained: registered && name != ""}
		// The local engine is never gone; a host the registry no longer
		// has is, once the registry has been read (its state is known).
		h.Gone = !registered && name != "" && h.State != reconcile.HostUnknown
		out[name] = h
	}
	for _, h := range c.deps.Hosts.Hosts() {
		add(h.Name, h.Labels, true)
	}
	for _, r := range records {
		add(r.Host, nil, r.Host == "")
	}
	for _, ct := range list {
		add(ct.Host, nil, ct.Host == "")
	}
	return out
}

// hostState is a fleet state as the planner's.
func hostState(s string) string {
	switch s {
	case store.HostUp:
		return reconcile.HostUp
	case store.HostDown:
		return reconcile.HostDown
	case fleet.Unreachable:
		return reconcile.HostUnreachable
	}
	return reconcile.HostUnknown
}

// SpecHash is the hash of an app's container-relevant spec, as its
// instances carry it. Safe for concurrent use.
func (c *Controller) SpecHash(a store.App) string {
	s := *a.Spec
	s.Default()
	return c.desired(a, &s).SpecHash
}

// desired is an app's desired state for the planner.
func (c *Controller) desired(a store.App, s *spec.App) reconcile.Desired {
	// The hash sees a secret's value id, never its value: it needs no key.
	env := c.cfg.Env.Env(secret.HashEnv(s.Env), c.cfg.Environ)
	hash := reconcile.Pinned(reconcile.SpecHash(s, env), a.ImageRef)
	return reconcile.Desired{App: a.Name, Generation: a.Generation, SpecHash: reconcile.Restarted(hash, a.RestartedGeneration),
		Release: s.Release != nil, ReleaseHash: hash,
		Replicas: a.DesiredReplicas, MaxSurge: s.Update.MaxSurge, MaxUnavailable: s.Update.MaxUnavailable,
		MinHealthyTime: s.Update.MinHealthyTime.Std(), HealthyDeadline: s.Update.HealthyDeadline.Std(),
		AutoRollback: s.Update.AutoRollback != nil && *s.Update.AutoRollback, Drain: s.Stop.Drain.Std(),
		RestartAttempts: s.Restart.MaxAttempts, UnhealthyGrace: unhealthyGrace(s), RestartWindow: s.Restart.Window.Std(),
		BackoffInitial: s.Restart.BackoffInitial.Std(), BackoffMax: s.Restart.BackoffMax.Std(),
		Constraints: s.Placement.Parsed(), HoldLost: !s.Placement.ReplaceLost()}
}

// drained returns whether every live lbagent has applied a revision:
// then no nginx routes by an older state of the instance written at it.
// An unknown revision (0) is never drained: the drain time decides.
func (c *Controller) drained() func(rev uint64) bool {
	agents, _ := c.deps.Agents.Rows()
	now := time.Now()
	return func(rev uint64) bool {
		if rev == 0 {
			return false
		}
		for _, a := range agents {
			if now.Sub(a.UpdatedAt) < msg.AgentTTL && a.AppliedRevision < rev {
				return false
			}
		}
		return true
	}
}

// healthOf is an instance's health for planning: the status its check's
// writer published (healthd, or this scheduler for docker and exec
// checks: a value sealed by the other is no verdict), or healthy for an
// app without an enabled check.
func healthOf(h *msg.Health, s *spec.App) string {
	switch {
	case s != nil && !s.Health.IsEnabled():
		return msg.StatusHealthy
	case h != nil && s != nil && !bus.HealthTrusted(s.Health, h.Sealer):
		return msg.StatusUnknown
	case h != nil:
		return h.Status
	}
	return msg.StatusUnknown
}

// unhealthyGrace is how long an instance may stay unhealthy before it is
// replaced: three check intervals, at least 5 s; none without a check.
// A docker check's interval is Docker's: health.docker.interval when set
// (the image's own is not known here), else health.interval.
func unhealthyGrace(s *spec.App) time.Duration {
	if !s.Health.IsEnabled() {
		return 0
	}
	interval := s.Health.Interval.Std()
	if d := s.Health.Docker; s.Health.Type == spec.HealthDocker && d != nil && d.Interval > 0 {
		interval = d.Interval.Std()
	}
	return max(3*interval, 5*time.Second)
}

// checkTargets are the instances whose health the scheduler checks itself
// (health.type docker or exec): starting or running, with a container
// that runs.
func checkTargets(records []store.Instance, apps map[string]store.App, containers map[string]docker.Container) []healthcheck.Target {
	var out []healthcheck.Target
	for _, r := range records {
		a, ok := apps[r.App]
		if !ok || a.Spec == nil || !a.Spec.Health.IsEnabled() || !a.Spec.Health.Scheduled() {
			continue
		}
		ct, exists := containers[r.ContainerID]
		if r.State != msg.StateStarting && r.State != msg.StateRunning || r.ContainerID == "" || !exists || !ct.Running {
			continue
		}
		s := *a.Spec
		s.Default()
		out = append(out, healthcheck.Target{Key: msg.InstanceKey(r.App, r.ID), App: r.App, Instance: r.ID, Host: r.Host,
			ContainerID: r.ContainerID, Generation: r.Generation, Term: r.Term, Check: *s.Health, StartedAt: ct.StartedAt})
	}
	return out
}
