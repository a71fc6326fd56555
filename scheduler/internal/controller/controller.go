// Package controller is the leader's loop: observe (the desired apps and
// instance records, the containers, each host's state, health and the
// lbagents' applied revisions), ask reconcile.Plan what to do, act. What a
// host's state means (a lost instance, a move, a container not to touch)
// is the planner's decision; the controller only reports the states. It sleeps until the
// plan's own wake time, a change (an app, a health flip, an lbagent
// confirming a drain, a Docker event) or the resync, whichever comes
// first, so a rollout moves at the speed of health. Starts and other
// short actions run with bounded parallelism inside a cycle; a drained
// instance's stop and removal, which can take the spec's whole grace, runs
// beside the loop so it never holds back the next step. A container that
// dies leaves berth_instances at once, before anything else is decided.
package controller

import (
	"context"
	"errors"
	"sync"
	"time"

	"go.uber.org/zap"

	"github.com/berthhq/berth/common/msg"
	"github.com/berthhq/berth/common/spec"
	"github.com/berthhq/berth/common/view"
	"github.com/berthhq/berth/scheduler/internal/appenv"
	"github.com/berthhq/berth/scheduler/internal/docker"
	"github.com/berthhq/berth/scheduler/internal/fleet"
	"github.com/berthhq/berth/scheduler/internal/healthcheck"
	"github.com/berthhq/berth/scheduler/internal/placement"
	"github.com/berthhq/berth/scheduler/internal/publish"
	"github.com/berthhq/berth/scheduler/internal/secret"
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
	// ReleasePoll is how often a release container is inspected besides
	// its die event; zero: every 2s.
	ReleasePoll time.Duration
	// Secrets opens the env secrets of a spec for its containers; nil:
	// this scheduler has no --secret-key-file, and an app with a secret
	// does not start (an event says why).
	Secrets Secrets
}

// Secrets opens the sealed env secrets of an app's spec: plain values as
// they are, secrets opened, or an error naming the variable and the key
// (never a value). Safe for concurrent use.
type Secrets interface {
	Env(app string, env map[string]spec.EnvValue) (map[string]string, error)
}

var _ Secrets = (*secret.Box)(nil)

// Desired is the desired state and the instance records, as the
// controller reads them. Safe for concurrent use.
type Desired interface {
	List(ctx context.Context) ([]store.App, error)
	Instances(ctx context.Context, app string) ([]store.Instance, error)
	// Restarts returns each app's restarts since a time: the restart budget.
	Restarts(ctx context.Context, since time.Time) (map[string][]store.Restart, error)
	// FailedRollouts returns each app's newest failed rollout since a time.
	FailedRollouts(ctx context.Context, since time.Time) (map[string]store.FailedRollout, error)
	// RollbackTo restores the spec of an earlier generation as a new one.
	RollbackTo(ctx context.Context, name string, generation int64) (store.App, error)
	// LastLogTail is the log tail of an app's newest instance_exited or
	// release_failed at a generation.
	LastLogTail(ctx context.Context, app string, generation int64) ([]string, error)
	// Releases returns the running releases and those the keys name.
	Releases(ctx context.Context, keys []store.ReleaseKey) ([]store.Release, error)
}

var _ Desired = (*store.Store)(nil)

// Records writes instance records and events under the leader's lease
// and publishes them once committed. Safe for concurrent use.
type Records interface {
	// Put writes a record (and puts it into berth_instances once it has
	// an address).
	Put(ctx context.Context, l store.Lease, r store.Instance, events ...store.Event) error
	// Delete deletes a record, and its key in berth_instances.
	Delete(ctx context.Context, l store.Lease, r store.Instance, events ...store.Event) error
	Event(ctx context.Context, l store.Lease, events ...store.Event) error
	SetHealth(ctx context.Context, l store.Lease, health map[string]string) error
}

// Routing is what nginx is told, beside the records. Safe for concurrent use.
type Routing interface {
	// Fail marks an instance failed in berth_instances at once.
	Fail(ctx context.Context, l store.Lease, r store.Instance) error
	// Revision is the revision of the last write of an instance's key.
	Revision(app, id string) uint64
	// Unpublish deletes an instance's key from berth_instances.
	Unpublish(ctx context.Context, app, id string) error
}

var (
	_ Records = (*publish.Publisher)(nil)
	_ Routing = (*publish.Publisher)(nil)
)

// Containers observes Docker. Safe for concurrent use.
type Containers interface {
	List(ctx context.Context) ([]docker.Container, error)
	Inspect(ctx context.Context, id string) (docker.Container, error)
	// Events streams container events until ctx ends, calling resync
	// after a reconnect (events may have been lost).
	Events(ctx context.Context, handle func(docker.Event), resync func()) error
}

// Logs reads what containers wrote. Safe for concurrent use.
type Logs interface {
	// Tail returns the last n lines a container wrote, stdout and stderr.
	Tail(ctx context.Context, id string, n int) ([]string, error)
}

// Checks are the health checks the scheduler runs itself (health.type
// docker and exec: healthcheck.Checker). Safe for concurrent use.
type Checks interface {
	// SetTargets replaces the instances to check.
	SetTargets(ts []healthcheck.Target)
	// DockerHealth takes a container's health_status event.
	DockerHealth(containerID, status string)
}

var _ Checks = (*healthcheck.Checker)(nil)

// Runtime runs containers. Safe for concurrent use.
type Runtime interface {
	Create(ctx context.Context, o docker.CreateOptions) (string, error)
	Start(ctx context.Context, id string) error
	Stop(ctx context.Context, id, signal string, grace time.Duration) error
	Remove(ctx context.Context, id string) error
}

// Images makes an image present on a host. Safe for concurrent use.
type Images interface {
	ImagePresent(ctx context.Context, host, ref string) (bool, error)
	Pull(ctx context.Context, host, ref string, timeout time.Duration) error
}

// Hosts are the Docker hosts instances are placed on. Safe for concurrent use.
type Hosts interface {
	// Hosts are the hosts placement chooses from, without reservations.
	Hosts() []placement.Host
	// State is a host's state (store.HostUp, HostDown, HostUnknown), and
	// whether it drains: its instances move to other hosts.
	State(host string) (state string, draining bool)
}

var (
	_ Containers = (*docker.Client)(nil)
	_ Runtime    = (*docker.Client)(nil)
	_ Containers = (*fleet.Fleet)(nil)
	_ Runtime    = (*fleet.Fleet)(nil)
	_ Images     = (*fleet.Fleet)(nil)
	_ Hosts      = (*fleet.Fleet)(nil)
)

// oneHost is the local engine alone: what a controller without Hosts places on.
type oneHost struct{}

func (oneHost) Hosts() []placement.Host {
	return []placement.Host{{Name: "", Schedulable: true, State: store.HostUp}}
}
func (oneHost) State(string) (string, bool) { return store.HostUp, false }

// Deps are the controller's collaborators.
type Deps struct {
	Desired Desired
	Records Records
	Routing Routing
	// Releases records release tasks.
	Releases   ReleaseRecords
	Containers Containers
	Runtime    Runtime
	Images     Images
	// Logs reads a failed instance's last lines for its event; nil: none.
	Logs Logs
	// Checks runs the docker and exec health checks; nil: none (their
	// instances then never become healthy).
	Checks Checks
	// Hosts places instances; nil: the one local engine.
	Hosts Hosts
	// Lease reports the current leadership.
	Lease func() (store.Lease, bool)
	// Health and Agents are fed by watchers of the health and agents buckets.
	Health *view.Table[*msg.Health]
	Agents *view.Table[*msg.Agent]
}

// Controller runs the leader's loop. Create it with New; run it with Run.
type Controller struct {
	cfg    Config
	deps   Deps
	logger *zap.Logger
	wake   chan struct{}

	mu sync.Mutex
	// seen tracks what the controller learnt between cycles: health
	// transitions, dead containers and reported breakers.
	seen *memory
	// removing holds the instances whose stop and removal is in flight, or
	// done but not yet observed done.
	removing map[string]bool
	// draining is how many draining instances the last cycle saw: while
	// there are some, an lbagent's confirmation wakes the loop.
	draining int

	// releases are the release tasks this leader waits on, by app and
	// generation; releaseRuns their goroutines.
	releases    map[string]*releaseRun
	releaseRuns sync.WaitGroup

	removals sync.WaitGroup
	metrics  *metrics
}

// New returns a controller.
func New(cfg Config, deps Deps, logger *zap.Logger) *Controller {
	if deps.Hosts == nil {
		deps.Hosts = oneHost{}
	}
	if cfg.Secrets == nil {
		cfg.Secrets = secret.New(nil, logger)
	}
	return &Controller{cfg: cfg, deps: deps, logger: logger.Named("controller"), wake: make(chan struct{}, 1),
		seen: newMemory(), removing: map[string]bool{}, releases: map[string]*releaseRun{}, metrics: newMetrics()}
}

// Wake asks for a cycle soon (an app changed, health changed, leadership gained).
func (c *Controller) Wake() {
	select {
	case c.wake <- struct{}{}:
	default:
	}
}

// AgentsChanged is called when an lbagent reports: it wakes the loop
// while an instance waits for its drain to be confirmed.
func (c *Controller) AgentsChanged() {
	c.mu.Lock()
	waiting := c.draining > 0
	c.mu.Unlock()
	if waiting {
		c.Wake()
	}
}

// Run loops until ctx ends: a cycle at once, then on every wake, at the
// plan's wake time and every Resync. It is a leader-only service (run it
// in a leader.Group): each cycle still checks the lease, and skips while
// it is not held. It returns once every goroutine it started (the Docker
// event stream, removals in flight) has ended, with its per-app gauges
// cleared: a follower exports none. Runs do not overlap.
func (c *Controller) Run(ctx context.Context) error {
	var events sync.WaitGroup
	events.Go(func() {
		_ = c.deps.Containers.Events(ctx, func(e docker.Event) { c.onDockerEvent(ctx, e) }, c.Wake)
	})
	defer c.metrics.following()
	defer events.Wait()
	defer c.removals.Wait()
	defer c.releaseRuns.Wait()
	timer := time.NewTimer(0)
	defer timer.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-c.wake:
		case <-timer.C:
		}
		delay := c.step(ctx)
		if !timer.Stop() {
			select {
			case <-timer.C:
			default:
			}
		}
		timer.Reset(delay)
	}
}

// step runs one cycle if leading and returns how long to sleep at most.
func (c *Controller) step(ctx context.Context) time.Duration {
	l, ok := c.deps.Lease()
	if !ok {
		c.metrics.following()
		return c.cfg.Resync
	}
	started := time.Now()
	wake, acted, err := c.cycle(ctx, l)
	c.metrics.duration.Observe(time.Since(started).Seconds())
	c.metrics.cycles.WithLabelValues(result(err)).Inc()
	delay := c.cfg.Resync
	if !wake.IsZero() {
		// A few milliseconds late, so that the deadline has passed.
		delay = min(delay, max(time.Until(wake), 0)+5*time.Millisecond)
	}
	if acted > 0 {
		// The state moved: plan again from where it is now (a replaced
		// instance's successor, the next step of a rollout).
		c.Wake()
	}
	if err != nil && ctx.Err() == nil {
		if errors.Is(err, store.ErrNotLeader) {
			c.logger.Warn("lost the lease mid-cycle: stopping", zap.Error(err))
			return delay
		}
		c.logger.Error("cycle failed, retrying", zap.Error(err))
		delay = min(delay, time.Second)
	}
	return delay
}

// inspectDeadTimeout bounds the inspection of a container killed by a
// signal: whether it was for memory.
const inspectDeadTimeout = 2 * time.Second

// onDockerEvent takes a dead container's instance out of nginx at once,
// then lets the next cycle replace it.
func (c *Controller) onDockerEvent(ctx context.Context, e docker.Event) {
	switch e.Action {
	case "die", "oom", "kill", "stop":
	case "health_status":
		if c.deps.Checks != nil && !e.Release {
			c.deps.Checks.DockerHealth(e.ContainerID, e.Health)
		}
		return
	default:
		return
	}
	if e.App == "" || e.Instance == "" {
		return
	}
	if e.Release {
		// A release container is no instance: nothing routes to it. Its
		// wait reads how it ended.
		if e.Action == "die" || e.Action == "oom" {
			c.releaseDied(e.ContainerID)
		}
		return
	}
	if e.Action == "die" || e.Action == "oom" {
		if l, ok := c.deps.Lease(); ok {
			// Not routable any more: nginx drops it on its next debounce.
			if err := c.deps.Routing.Fail(ctx, l, store.Instance{ID: e.Instance, App: e.App, Generation: 1, ContainerID: e.ContainerID}); err != nil {
				c.logger.Warn("publish a dead instance", zap.Error(err))
			}
		}
		oom := e.Action == "oom"
		if e.Action == "die" && e.ExitCode == 137 {
			// Docker's oom event does not come on every engine (cgroup v2):
			// its state says whether the kernel killed it for memory.
			ictx, cancel := context.WithTimeout(ctx, inspectDeadTimeout)
			if ct, err := c.deps.Containers.Inspect(ictx, e.ContainerID); err == nil {
				oom = ct.OOMKilled
			}
			cancel()
		}
		c.seen.died(e.ContainerID, oom, e.ExitCode, e.Action == "die")
	}
	c.Wake()
}
