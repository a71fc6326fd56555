package reconcile

import (
	"time"

	"github.com/berthhq/berth/common/spec"
)

// Desired is what an app should run.
type Desired struct {
	App        string
	Generation int64
	// SpecHash identifies the container-relevant spec (image, env,
	// command, resources): instances with another hash are replaced by a
	// rolling update; a change of replicas alone restarts nothing.
	SpecHash string
	Replicas int
	Deleted  bool
	// MaxSurge and MaxUnavailable bound a rolling update.
	MaxSurge, MaxUnavailable int
	// MinHealthyTime is how long a new instance must be healthy to count.
	MinHealthyTime time.Duration
	// HealthyDeadline is how long a rollout's new instance has to become
	// healthy; past it, with AutoRollback, the app is rolled back.
	HealthyDeadline time.Duration
	AutoRollback    bool
	// Drain is the longest a draining instance waits for every lbagent to
	// take it out of nginx before it is stopped anyway.
	Drain time.Duration
	// RestartAttempts within RestartWindow trip the breaker.
	RestartAttempts int
	RestartWindow   time.Duration
	// UnhealthyGrace is how long an instance may stay unhealthy (after
	// healthd's thresholds already said so) before it is replaced; zero
	// never replaces for health alone.
	UnhealthyGrace time.Duration
	// BackoffInitial is the wait after the first restart, doubling after
	// each one up to BackoffMax; BackoffMax is also when a tripped breaker
	// lets one attempt through (half-open).
	BackoffInitial, BackoffMax time.Duration
	// Constraints are the app's placement constraints: an instance on a
	// registered host that fails one moves (Migrate).
	Constraints []spec.Constraint
	// HoldLost is placement.on_host_lost.replace: false. An instance lost
	// with its host may still run there (a partition), so it counts toward
	// Replicas + MaxSurge until its host answers or leaves the registry.
	// Without it (the default) every lost instance is replaced at once.
	HoldLost bool
	// Release says the app has a release task: the first instance of a
	// spec not released yet waits for it. ReleaseHash keys its runs: the
	// container spec's hash without a restart's generation, so a restart
	// releases nothing new.
	Release     bool
	ReleaseHash string
}

// Host states, as the fleet reports them.
const (
	// HostUp answers and has been listed: what runs there is known.
	HostUp = "up"
	// HostUnreachable stopped answering and is not down yet: its last
	// container list stands, and nothing there can be touched.
	HostUnreachable = "unreachable"
	// HostDown has not answered for --host-timeout, or left the registry.
	HostDown = "down"
	// HostUnknown has not been listed yet (a leader's start, a host just
	// added): its containers are unseen, not gone.
	HostUnknown = "unknown"
)

// Host is what the planner knows of a Docker host.
type Host struct {
	// State is HostUp, HostUnreachable, HostDown or HostUnknown.
	State string
	// Draining says its instances move to other hosts (a drain, or the
	// local engine once hosts are registered).
	Draining bool
	// Gone says it left the registry: what ran there is forgotten.
	Gone bool
	// Constrained says an app's placement constraints apply to it (a
	// registered host; never the local engine), against Labels.
	Constrained bool
	Labels      map[string]string
}

// Observed is one instance as the store records it, with what Docker says.
type Observed struct {
	ID  string
	App string
	// Host is the host it was placed on ("": the local engine).
	Host       string
	Generation int64
	SpecHash   string
	// State is one of the msg.State… constants; StateFailed is an
	// instance lost with its host, whose record is kept while it may
	// still run there.
	State string
	// Health is msg.StatusHealthy, StatusUnhealthy or StatusUnknown.
	Health string
	// HealthySince is when the instance last became healthy; UnhealthySince
	// when it last became unhealthy.
	HealthySince, UnhealthySince time.Time
	// OOMKilled says its container was killed for running out of memory.
	OOMKilled bool
	// ExitCode is its container's exit code, when Exited says Docker
	// reported one.
	ExitCode int
	Exited   bool
	// Probe is healthd's last probe failure ("kind: message"), empty
	// after a pass or before any probe.
	Probe     string
	CreatedAt time.Time
	// UpdatedAt is when the scheduler last changed the record's state:
	// since when it has been creating, starting or draining.
	UpdatedAt time.Time
	// Term is the leader term that created the instance.
	Term uint64
	// ContainerID is empty before creation; ContainerRunning says what Docker reports.
	ContainerID      string
	ContainerRunning bool
	ContainerGone    bool
	// Drained says a draining instance is out of every live lbagent's
	// nginx config (confirmed): it no longer counts toward max_surge and
	// can be stopped.
	Drained bool
}

// Orphan is a Berth-labelled container that no instance record owns.
type Orphan struct {
	ContainerID string
	// Host is the host it runs on ("": the local engine).
	Host       string
	App        string
	Instance   string
	SpecHash   string
	Generation int64
	Running    bool
	// Release says it is a release task's container (Generation's), not
	// an instance's: never adopted as one.
	Release bool
}

// Release states, as the store records them.
const (
	ReleaseRunning   = "running"
	ReleaseSucceeded = "succeeded"
	ReleaseFailed    = "failed"
)

// Release is one run of an app's release task: the one of its Generation.
type Release struct {
	App        string
	Generation int64
	// SpecHash is the ReleaseHash it released.
	SpecHash string
	State    string
	// Host is where its container runs; ContainerID is empty until it is
	// recorded (an earlier leader may have died creating it).
	Host        string
	ContainerID string
	// Watched says this leader waits on it: its run or its adoption is
	// in flight.
	Watched bool
	// Reason says why it failed ("release task exited with code 3").
	Reason string
}

// Failure is one recorded restart of an app, for the restart budget.
type Failure struct {
	App string
	At  time.Time
	// Generation is the app's generation the failed instance was started
	// at, or was to start at: each generation has a restart budget of its
	// own. 0 for a failure recorded before generations were (it counts
	// against every generation).
	Generation int64
	// SpecHash is the spec the failed instance ran, or was to run.
	SpecHash string
	// Reason is what failed, in a few words ("its container exited with
	// code 3", "image … is not present and pulling it failed: …").
	Reason string
}

// Rollout names a rollout: the generation and spec it rolls out.
type Rollout struct {
	Generation int64
	SpecHash   string
}

// Input is everything Plan reads.
type Input struct {
	Apps      map[string]Desired
	Instances []Observed
	Orphans   []Orphan
	Failures  []Failure
	// FailedRollouts are, by app, the rollout that failed (its new
	// instances kept failing) and was not rolled back (no auto_rollback):
	// while it is the desired one, it stays stopped.
	FailedRollouts map[string]Rollout
	// Releases are the release records of every app.
	Releases []Release
	// Hosts are the hosts by name ("": the local engine). A host not in
	// it is up, not draining, and unconstrained.
	Hosts map[string]Host
	// Term is the current leader's term.
	Term uint64
	// StartTimeout is how long a record may stay creating or starting
	// before it is taken for stale (its leader died mid-start); zero never.
	StartTimeout time.Duration
	Now          time.Time
}

// host returns what is known of a host: a host the input does not name
// is up, not draining, and unconstrained.
func (in *Input) host(name string) Host {
	if h, ok := in.Hosts[name]; ok {
		return h
	}
	return Host{State: HostUp}
}
