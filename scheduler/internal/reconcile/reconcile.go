// Package reconcile decides, as a pure function of the desired state, the
// observed instances and containers, and the time, what the controller
// must do next: start, stop (drain first), replace, adopt, or remove an
// orphan, and when to give up on a crash-looping app. It does no I/O and
// is idempotent: planning again from the state an action leads to does
// not repeat the action.
package reconcile

import (
	"fmt"
	"sort"
	"time"

	"github.com/berthhq/berth/common/msg"
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
}

// Observed is one instance as the store records it, with what Docker says.
type Observed struct {
	ID         string
	App        string
	Generation int64
	SpecHash   string
	// State is one of the msg.State… constants.
	State string
	// Health is msg.StatusHealthy, StatusUnhealthy or StatusUnknown.
	Health string
	// HealthySince is when the instance last became healthy; UnhealthySince
	// when it last became unhealthy.
	HealthySince, UnhealthySince time.Time
	// OOMKilled says its container was killed for running out of memory.
	OOMKilled bool
	CreatedAt time.Time
	// Term is the leader term that created the instance.
	Term uint64
	// ContainerID is empty before creation; ContainerRunning says what Docker reports.
	ContainerID      string
	ContainerRunning bool
	ContainerGone    bool
}

// Orphan is a Berth-labelled container that no instance record owns.
type Orphan struct {
	ContainerID string
	App         string
	Instance    string
	SpecHash    string
	Generation  int64
	Running     bool
}

// Failure is one recorded restart of an app, for the restart budget.
type Failure struct {
	App string
	At  time.Time
}

// Input is everything Plan reads.
type Input struct {
	Apps      map[string]Desired
	Instances []Observed
	Orphans   []Orphan
	Failures  []Failure
	// Term is the current leader's term.
	Term uint64
	Now  time.Time
}

// Kind is what an action does.
type Kind string

// Action kinds.
const (
	// Start creates and starts a new instance of App at Generation.
	Start Kind = "start"
	// Stop drains and stops Instance, then removes it.
	Stop Kind = "stop"
	// Replace records Instance as failed, removes its container, and
	// starts a new one in its place (subject to the restart budget).
	Replace Kind = "replace"
	// Adopt takes an orphaned container of the desired spec as an instance.
	Adopt Kind = "adopt"
	// RemoveOrphan removes a container no instance owns and nobody wants.
	RemoveOrphan Kind = "remove_orphan"
	// TripBreaker marks App failed: it crashed too often within its window.
	TripBreaker Kind = "trip_breaker"
	// Hold defers App's starts and replacements until Until (restart backoff).
	Hold Kind = "hold"
)

// Action is one step for the controller.
type Action struct {
	Kind        Kind
	App         string
	Instance    string
	ContainerID string
	Generation  int64
	Reason      string
	// Until is when a Hold ends.
	Until time.Time
}

func (a Action) String() string {
	return fmt.Sprintf("%s %s/%s: %s", a.Kind, a.App, a.Instance, a.Reason)
}

// active reports whether an instance counts toward the app's replicas.
func active(o Observed) bool {
	switch o.State {
	case msg.StatePending, msg.StateCreating, msg.StateStarting, msg.StateRunning:
		return true
	}
	return false
}

// available reports whether an instance serves: running and healthy
// (for at least min, for the new generation during a rollout).
func available(o Observed, min time.Duration, now time.Time) bool {
	return o.State == msg.StateRunning && o.Health == msg.StatusHealthy && now.Sub(o.HealthySince) >= min
}

// Plan returns the actions that bring the observed state toward the
// desired one, in a stable order.
func Plan(in Input) []Action {
	var out []Action
	byApp := map[string][]Observed{}
	for _, o := range in.Instances {
		byApp[o.App] = append(byApp[o.App], o)
	}
	names := make([]string, 0, len(in.Apps)+len(byApp))
	for n := range in.Apps {
		names = append(names, n)
	}
	for n := range byApp {
		if _, ok := in.Apps[n]; !ok {
			names = append(names, n)
		}
	}
	sort.Strings(names)
	adopted := map[string]bool{}
	for _, name := range names {
		d, known := in.Apps[name]
		insts := byApp[name]
		if !known || d.Deleted {
			for _, o := range insts {
				if active(o) {
					out = append(out, Action{Kind: Stop, App: name, Instance: o.ID, ContainerID: o.ContainerID, Reason: "the app was deleted"})
				}
			}
			continue
		}
		out = append(out, planApp(d, insts, in, adopted)...)
	}
	for _, o := range in.Orphans {
		if adopted[o.ContainerID] {
			continue
		}
		out = append(out, Action{Kind: RemoveOrphan, App: o.App, Instance: o.Instance, ContainerID: o.ContainerID,
			Reason: "a Berth container no instance owns"})
	}
	return out
}

func planApp(d Desired, insts []Observed, in Input, adopted map[string]bool) []Action {
	var out []Action
	var current, old []Observed
	for _, o := range insts {
		if !active(o) {
			continue
		}
		if o.State == msg.StateRunning && (o.ContainerGone || o.ContainerID != "" && !o.ContainerRunning) {
			// A dead or vanished container: replace it (budget permitting).
			out = append(out, Action{Kind: Replace, App: d.App, Instance: o.ID, ContainerID: o.ContainerID, Generation: d.Generation,
				Reason: deadReason(o)})
			continue
		}
		if o.SpecHash == d.SpecHash {
			current = append(current, o)
		} else {
			old = append(old, o)
		}
	}
	// Out of rotation already (healthd), an instance that stays unhealthy
	// beyond the grace is replaced: restart by recreation. During a
	// rollout, the rollout's own deadline decides instead.
	if d.UnhealthyGrace > 0 && len(old) == 0 {
		kept := current[:0]
		for _, o := range current {
			if o.Health == msg.StatusUnhealthy && !o.UnhealthySince.IsZero() && in.Now.Sub(o.UnhealthySince) >= d.UnhealthyGrace {
				out = append(out, Action{Kind: Replace, App: d.App, Instance: o.ID, ContainerID: o.ContainerID, Generation: d.Generation,
					Reason: fmt.Sprintf("unhealthy for %s (grace %s)", in.Now.Sub(o.UnhealthySince).Round(time.Second), d.UnhealthyGrace)})
				continue
			}
			kept = append(kept, o)
		}
		current = kept
	}
	replacing := len(out)

	// The restart budget: too many restarts in the window trip the
	// breaker; after BackoffMax since the last one, one attempt is allowed.
	recent, last := 0, time.Time{}
	for _, f := range in.Failures {
		if f.App == d.App && in.Now.Sub(f.At) <= d.RestartWindow {
			recent++
			if f.At.After(last) {
				last = f.At
			}
		}
	}
	if d.RestartAttempts >= 0 && recent >= d.RestartAttempts && recent > 0 {
		if in.Now.Sub(last) < d.BackoffMax {
			// Open breaker: no replacement and no new start; report once per plan.
			kept := out[:0]
			for _, a := range out {
				if a.Kind != Replace {
					kept = append(kept, a)
				}
			}
			out = append(kept, Action{Kind: TripBreaker, App: d.App, Generation: d.Generation,
				Reason: fmt.Sprintf("%d restarts within %s (budget %d): not restarting until %s", recent, d.RestartWindow, d.RestartAttempts, last.Add(d.BackoffMax).Format(time.RFC3339))})
			return out
		}
		// Half-open: let a single replacement or start through.
		replacing = min(replacing, 1)
	}
	// Backoff: after n recent restarts, wait initial*2^(n-1) (capped) since the last.
	if recent > 0 && d.BackoffInitial > 0 {
		wait := d.BackoffInitial
		for i := 1; i < recent && wait < d.BackoffMax; i++ {
			wait *= 2
		}
		if d.BackoffMax > 0 {
			wait = min(wait, d.BackoffMax)
		}
		if until := last.Add(wait); in.Now.Before(until) {
			kept := out[:0]
			for _, a := range out {
				if a.Kind != Replace {
					kept = append(kept, a)
				}
			}
			// Stops still happen (scale-down, deletions); starts wait.
			out = append(kept, Action{Kind: Hold, App: d.App, Generation: d.Generation, Until: until,
				Reason: fmt.Sprintf("restart backoff after %d restarts: next attempt at %s", recent, until.Format(time.RFC3339))})
			if extra := len(current) - d.Replicas; extra > 0 && len(old) == 0 {
				for _, v := range victims(current, extra) {
					out = append(out, Action{Kind: Stop, App: d.App, Instance: v.ID, ContainerID: v.ContainerID, Reason: fmt.Sprintf("scaling down to %d", d.Replicas)})
				}
			}
			return out
		}
	}

	// Adopt orphans of this app that run the desired spec, before starting anything new.
	for _, o := range in.Orphans {
		if o.App != d.App || o.SpecHash != d.SpecHash || !o.Running || adopted[o.ContainerID] || len(current)+replacing >= d.Replicas {
			continue
		}
		adopted[o.ContainerID] = true
		out = append(out, Action{Kind: Adopt, App: d.App, Instance: o.Instance, ContainerID: o.ContainerID, Generation: d.Generation,
			Reason: "a running container of the desired spec, left by an earlier leader"})
		current = append(current, Observed{ID: o.Instance, State: msg.StateRunning, SpecHash: d.SpecHash})
	}

	want := d.Replicas
	total := len(current) + len(old) + replacing
	if len(old) == 0 {
		// Plain scaling.
		for i := len(current) + replacing; i < want; i++ {
			out = append(out, Action{Kind: Start, App: d.App, Generation: d.Generation, Reason: fmt.Sprintf("%d of %d replicas", i, want)})
		}
		if extra := len(current) + replacing - want; extra > 0 {
			for _, v := range victims(current, extra) {
				out = append(out, Action{Kind: Stop, App: d.App, Instance: v.ID, ContainerID: v.ContainerID, Reason: fmt.Sprintf("scaling down to %d", want)})
			}
		}
		return out
	}

	// Rolling update: new instances up to want, within want + max_surge in
	// total; old ones stop while enough stay available.
	surge := want + d.MaxSurge
	for n := len(current) + replacing; n < want && total < surge; n++ {
		out = append(out, Action{Kind: Start, App: d.App, Generation: d.Generation, Reason: fmt.Sprintf("rolling update to generation %d", d.Generation)})
		total++
	}
	avail := 0
	for _, o := range current {
		if available(o, d.MinHealthyTime, in.Now) {
			avail++
		}
	}
	for _, o := range old {
		if available(o, 0, in.Now) {
			avail++
		}
	}
	floor := max(want-d.MaxUnavailable, 0)
	// Stop not-serving old instances first, then serving ones while the floor holds.
	for _, o := range victims(old, len(old)) {
		serving := available(o, 0, in.Now)
		if serving && avail-1 < floor {
			break
		}
		if serving {
			avail--
		}
		out = append(out, Action{Kind: Stop, App: d.App, Instance: o.ID, ContainerID: o.ContainerID,
			Reason: fmt.Sprintf("replaced by generation %d", d.Generation)})
	}
	return out
}

func deadReason(o Observed) string {
	switch {
	case o.ContainerGone:
		return "its container no longer exists"
	case o.OOMKilled:
		return "its container was killed for running out of memory: consider raising resources.memory"
	}
	return "its container stopped"
}

// victims picks n instances to stop: unhealthy first, then not yet
// healthy, then the newest, so the longest-proven instances stay.
func victims(insts []Observed, n int) []Observed {
	rank := func(o Observed) int {
		switch {
		case o.Health == msg.StatusUnhealthy:
			return 0
		case o.State != msg.StateRunning || o.Health != msg.StatusHealthy:
			return 1
		}
		return 2
	}
	sorted := append([]Observed(nil), insts...)
	sort.SliceStable(sorted, func(i, j int) bool {
		ri, rj := rank(sorted[i]), rank(sorted[j])
		if ri != rj {
			return ri < rj
		}
		if !sorted[i].CreatedAt.Equal(sorted[j].CreatedAt) {
			return sorted[i].CreatedAt.After(sorted[j].CreatedAt)
		}
		return sorted[i].ID < sorted[j].ID
	})
	if n > len(sorted) {
		n = len(sorted)
	}
	return sorted[:n]
}
