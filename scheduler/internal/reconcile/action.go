package reconcile

import (
	"fmt"
	"time"
)

// Kind is what an action does.
type Kind string

// Action kinds.
const (
	// Start creates and starts a new instance of App at Generation; with
	// Replaces, it is the successor of that instance (a Replace or a Lost
	// of the same plan).
	Start Kind = "start"
	// Stop takes Instance out of nginx (it becomes draining); Remove
	// follows once it is drained.
	Stop Kind = "stop"
	// Remove stops a drained Instance's container (signal, then grace),
	// removes it, and deletes the record.
	Remove Kind = "remove"
	// Replace removes the container of Instance, which died, vanished or
	// stayed unhealthy on a host that answers, and deletes its record; a
	// Start of the same plan replaces it, or Wait says what its
	// replacement waits for (the restart budget holds Replace back).
	Replace Kind = "replace"
	// Migrate takes Instance, which runs the desired spec on a host it
	// must leave (draining, or no longer meeting the app's constraints),
	// out of nginx as Stop does, once its successor serves.
	Migrate Kind = "migrate"
	// Lost records Instance as lost with Host, which is down (or does not
	// answer while its container is dead): failed, out of every nginx,
	// its record kept while it may still run there. A Start of the same
	// plan replaces it, or Wait says why none starts now.
	Lost Kind = "lost"
	// Forget deletes the record of an instance lost with Host, which
	// answers again (its container is then an orphan) or left the registry.
	Forget Kind = "forget"
	// Adopt takes an orphaned container of the desired spec as an instance.
	Adopt Kind = "adopt"
	// RemoveOrphan removes a container no instance owns and nobody wants.
	RemoveOrphan Kind = "remove_orphan"
	// TripBreaker marks App failed: it crashed too often within its window.
	TripBreaker Kind = "trip_breaker"
	// Hold defers App's starts and replacements until Until (restart backoff).
	Hold Kind = "hold"
	// RollBack restores the spec of Target, the newest generation that
	// still serves, over Generation: the rollout of the desired one failed (its new
	// instances kept failing, or one was not healthy within
	// update.healthy_deadline). Instance, when set, is the instance whose
	// failure decided it.
	RollBack Kind = "roll_back"
	// FailRollout stops a failed rollout without auto_rollback: no more
	// instances of the desired spec start, the old ones keep serving.
	// Reason is the cause.
	FailRollout Kind = "fail_rollout"
	// RunRelease runs the release task of App's Generation, which has
	// none yet, on a host placement chooses: its record first, then its
	// container, waited on beside the loop. No instance of the generation
	// starts until it succeeded.
	RunRelease Kind = "run_release"
	// AdoptRelease waits on the running release of App's Generation that
	// no one here waits on (an earlier leader began it): its container,
	// ContainerID on Host, is never started again.
	AdoptRelease Kind = "adopt_release"
	// LoseRelease records the running release of App's Generation failed:
	// its container is gone (or never came), on a Host that answers or
	// is down. Another never starts for the generation.
	LoseRelease Kind = "lose_release"
)

// Action is one step for the controller.
type Action struct {
	Kind        Kind
	App         string
	Instance    string
	ContainerID string
	// Host is the host of Instance (Lost, Forget, Migrate) or of an
	// orphan's container.
	Host       string
	Generation int64
	// Target is the generation a RollBack restores.
	Target int64
	Reason string
	// Until is when a Hold ends.
	Until time.Time
	// Replaces is the instance a Start succeeds.
	Replaces string
	// Wait says why a Lost or Replace instance gets no successor in this
	// plan: what its replacement waits for, or why none is needed.
	Wait string
	// Exited says a Replace's container stopped by itself (not replaced
	// for its health): the controller records how it ended.
	Exited bool
}

func (a Action) String() string {
	s := fmt.Sprintf("%s %s/%s: %s", a.Kind, a.App, a.Instance, a.Reason)
	if a.Replaces != "" {
		s += " (replaces " + a.Replaces + ")"
	}
	if a.Wait != "" {
		s += " (" + a.Wait + ")"
	}
	return s
}

// defaultDrain bounds the drain of an instance whose app is unknown.
const defaultDrain = 10 * time.Second

// Result is a plan: the actions to take now, and when to plan again.
type Result struct {
	Actions []Action
	// Wake is the earliest moment at which time alone changes the plan (a
	// min_healthy_time reached, a healthy_deadline, the end of a backoff,
	// a drain or a start timeout); zero when nothing waits on the clock.
	Wake time.Time
}

// wakeAt keeps the earliest future moment.
func (r *Result) wakeAt(t, now time.Time) {
	if !t.After(now) {
		return
	}
	if r.Wake.IsZero() || t.Before(r.Wake) {
		r.Wake = t
	}
}
