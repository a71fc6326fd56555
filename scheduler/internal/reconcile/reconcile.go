// Package reconcile decides, as a pure function of the desired state, the
// observed instances and containers, and the time, what the controller
// must do next — start, drain, remove, replace, adopt, remove an orphan,
// roll back, or give up on a crash-looping app — and the next moment at
// which time alone can change that answer, so the controller sleeps until
// then instead of polling. It does no I/O and is idempotent: planning
// again from the state an action leads to does not repeat the action.
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
	// Unreachable counts instances replaced while their host did not
	// answer (a partition, or an engine down): they may still run, so
	// they count toward Replicas + MaxSurge until their host answers.
	Unreachable int
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

// MoveSuffix marks the spec hash of an instance that runs the desired
// spec on a host it must leave (a drain, a placement it no longer
// meets): stale, so the rolling update replaces it, but no rollout.
const MoveSuffix = "+move"

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
	// StartTimeout is how long a record may stay creating or starting
	// before it is taken for stale (its leader died mid-start); zero never.
	StartTimeout time.Duration
	Now          time.Time
}

// Kind is what an action does.
type Kind string

// Action kinds.
const (
	// Start creates and starts a new instance of App at Generation.
	Start Kind = "start"
	// Stop takes Instance out of nginx (it becomes draining); Remove
	// follows once it is drained.
	Stop Kind = "stop"
	// Remove stops a drained Instance's container (signal, then grace),
	// removes it, and deletes the record.
	Remove Kind = "remove"
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
	// RollBack restores App's previous spec: a rollout's new instance was
	// not healthy within update.healthy_deadline.
	RollBack Kind = "roll_back"
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
// desired one, in a stable order, and when to plan again.
func Plan(in Input) Result {
	var r Result
	// Group by app in one backing array: the plan is dominated by
	// allocation otherwise.
	counts := map[string]int{}
	for _, o := range in.Instances {
		counts[o.App]++
	}
	backing := make([]Observed, len(in.Instances))
	byApp := make(map[string][]Observed, len(counts))
	off := 0
	for app, n := range counts {
		byApp[app] = backing[off : off : off+n]
		off += n
	}
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
		p := &appPlan{d: d, in: &in, res: &r, adopted: adopted}
		if !known || d.Deleted {
			if !known {
				p.d = Desired{App: name, Drain: defaultDrain}
			}
			p.retire(byApp[name])
			continue
		}
		p.plan(byApp[name])
	}
	for _, o := range in.Orphans {
		if adopted[o.ContainerID] {
			continue
		}
		r.Actions = append(r.Actions, Action{Kind: RemoveOrphan, App: o.App, Instance: o.Instance, ContainerID: o.ContainerID,
			Reason: "a Berth container no instance owns"})
	}
	return r
}

// appPlan plans one app, step by step.
type appPlan struct {
	d       Desired
	in      *Input
	res     *Result
	adopted map[string]bool

	// current run the desired spec, old another one.
	current, old []Observed
	// inConfig counts draining instances some lbagent may still route to;
	// oldInConfig those of them that run another spec (a rollout's tail).
	inConfig, oldInConfig int
	// replacing counts instances being replaced (their successors start).
	replacing int
	// out is this app's actions.
	out []Action
}

func (p *appPlan) add(a Action) {
	a.App = p.d.App
	p.out = append(p.out, a)
}

func (p *appPlan) done() { p.res.Actions = append(p.res.Actions, p.out...) }

// retire stops every instance of a deleted or unknown app.
func (p *appPlan) retire(insts []Observed) {
	defer p.done()
	for _, o := range insts {
		switch {
		case o.State == msg.StateDraining:
			p.finishDrain(o)
		case active(o):
			p.add(Action{Kind: Stop, Instance: o.ID, ContainerID: o.ContainerID, Reason: "the app was deleted"})
		}
	}
}

func (p *appPlan) plan(insts []Observed) {
	defer p.done()
	if p.rollback(insts) {
		return
	}
	p.classify(insts)
	p.replaceUnhealthy()
	if !p.budget() {
		return
	}
	p.adopt()
	if len(p.old) == 0 && p.oldInConfig == 0 {
		p.scale()
		return
	}
	p.roll()
}

// rollback rolls the app back, with auto_rollback, when a rollout's new
// instance has existed for healthy_deadline without becoming healthy (as
// Nomad's healthy_deadline is per allocation: a long rollout of healthy
// instances is not rolled back). Otherwise it wakes the plan at the
// earliest deadline still ahead.
func (p *appPlan) rollback(insts []Observed) bool {
	if !p.d.AutoRollback || p.d.HealthyDeadline <= 0 {
		return false
	}
	rolling := false
	for _, o := range insts {
		// An instance that only moves (MoveSuffix: its host drains, or no
		// longer meets the placement) is no rollout: nothing to roll back to.
		if active(o) && o.SpecHash != p.d.SpecHash && o.SpecHash != p.d.SpecHash+MoveSuffix {
			rolling = true
		}
	}
	if !rolling {
		return false
	}
	for _, o := range insts {
		if !active(o) || o.SpecHash != p.d.SpecHash || o.Health == msg.StatusHealthy {
			continue
		}
		deadline := o.CreatedAt.Add(p.d.HealthyDeadline)
		if !p.in.Now.Before(deadline) {
			p.add(Action{Kind: RollBack, Instance: o.ID, Generation: p.d.Generation,
				Reason: fmt.Sprintf("generation %d had an instance not healthy within update.healthy_deadline (%s)", p.d.Generation, p.d.HealthyDeadline)})
			return true
		}
		p.res.wakeAt(deadline, p.in.Now)
	}
	return false
}

// classify finishes drains, replaces dead containers and stale starts,
// and sorts the rest into current and old.
func (p *appPlan) classify(insts []Observed) {
	p.current = make([]Observed, 0, len(insts))
	for _, o := range insts {
		if o.State == msg.StateDraining {
			p.finishDrain(o)
			continue
		}
		if !active(o) {
			continue
		}
		if (o.State == msg.StateCreating || o.State == msg.StateStarting) && p.in.StartTimeout > 0 && !o.UpdatedAt.IsZero() {
			// A start that outlived its timeout: its leader died mid-start.
			if stale := o.UpdatedAt.Add(p.in.StartTimeout); p.in.Now.Before(stale) {
				p.res.wakeAt(stale, p.in.Now)
			} else {
				o.State, o.ContainerGone = msg.StateRunning, true
			}
		}
		if o.State == msg.StateRunning && (o.ContainerGone || o.ContainerID != "" && !o.ContainerRunning) {
			p.add(Action{Kind: Replace, Instance: o.ID, ContainerID: o.ContainerID, Generation: p.d.Generation, Reason: deadReason(o)})
			p.replacing++
			continue
		}
		if o.SpecHash == p.d.SpecHash {
			p.current = append(p.current, o)
		} else {
			p.old = append(p.old, o)
		}
	}
}

// finishDrain removes a draining instance once every lbagent has taken it
// out of nginx, or once the drain time is up.
func (p *appPlan) finishDrain(o Observed) {
	deadline := o.UpdatedAt.Add(p.d.Drain)
	switch {
	case o.Drained:
		p.add(Action{Kind: Remove, Instance: o.ID, ContainerID: o.ContainerID, Reason: "drained: out of every lbagent's config"})
	case o.ContainerID == "" || !p.in.Now.Before(deadline):
		p.add(Action{Kind: Remove, Instance: o.ID, ContainerID: o.ContainerID, Reason: fmt.Sprintf("drain time (%s) is up", p.d.Drain)})
	default:
		p.inConfig++
		if o.SpecHash != p.d.SpecHash {
			p.oldInConfig++
		}
		p.res.wakeAt(deadline, p.in.Now)
	}
}

// replaceUnhealthy replaces an instance that stays unhealthy beyond the
// grace (healthd already took it out of rotation): restart by
// recreation. During a rollout, the rollout's own deadline decides.
func (p *appPlan) replaceUnhealthy() {
	if p.d.UnhealthyGrace <= 0 || len(p.old) > 0 {
		return
	}
	kept := p.current[:0]
	for _, o := range p.current {
		if o.Health == msg.StatusUnhealthy && !o.UnhealthySince.IsZero() {
			end := o.UnhealthySince.Add(p.d.UnhealthyGrace)
			if !p.in.Now.Before(end) {
				p.add(Action{Kind: Replace, Instance: o.ID, ContainerID: o.ContainerID, Generation: p.d.Generation,
					Reason: fmt.Sprintf("unhealthy for %s (grace %s)", p.in.Now.Sub(o.UnhealthySince).Round(time.Second), p.d.UnhealthyGrace)})
				p.replacing++
				continue
			}
			p.res.wakeAt(end, p.in.Now)
		}
		kept = append(kept, o)
	}
	p.current = kept
}

// budget applies the restart budget: too many restarts in the window trip
// the breaker (after BackoffMax since the last one, one attempt goes
// through), and after n recent restarts starts wait initial×2^(n-1),
// capped. It reports whether planning goes on.
func (p *appPlan) budget() bool {
	recent, last := 0, time.Time{}
	for _, f := range p.in.Failures {
		if f.App == p.d.App && p.in.Now.Sub(f.At) <= p.d.RestartWindow {
			recent++
			if f.At.After(last) {
				last = f.At
			}
		}
	}
	if recent == 0 {
		return true
	}
	if p.d.RestartAttempts >= 0 && recent >= p.d.RestartAttempts {
		if reopen := last.Add(p.d.BackoffMax); p.in.Now.Before(reopen) {
			// Open breaker: no replacement and no new start; report once per plan.
			p.dropReplacements()
			p.add(Action{Kind: TripBreaker, Generation: p.d.Generation,
				Reason: fmt.Sprintf("%d restarts within %s (budget %d): not restarting until %s", recent, p.d.RestartWindow, p.d.RestartAttempts, reopen.Format(time.RFC3339))})
			p.res.wakeAt(reopen, p.in.Now)
			return false
		}
		// Half-open: let a single replacement or start through.
		p.replacing = min(p.replacing, 1)
	}
	if p.d.BackoffInitial <= 0 {
		return true
	}
	wait := p.d.BackoffInitial
	for i := 1; i < recent && wait < p.d.BackoffMax; i++ {
		wait *= 2
	}
	if p.d.BackoffMax > 0 {
		wait = min(wait, p.d.BackoffMax)
	}
	until := last.Add(wait)
	if !p.in.Now.Before(until) {
		return true
	}
	// Stops still happen (scale-down, deletions); starts wait.
	p.dropReplacements()
	p.add(Action{Kind: Hold, Generation: p.d.Generation, Until: until,
		Reason: fmt.Sprintf("restart backoff after %d restarts: next attempt at %s", recent, until.Format(time.RFC3339))})
	p.res.wakeAt(until, p.in.Now)
	if extra := len(p.current) - p.d.Replicas; extra > 0 && len(p.old) == 0 {
		p.stop(victims(p.current, extra), fmt.Sprintf("scaling down to %d", p.d.Replicas))
	}
	return false
}

func (p *appPlan) dropReplacements() {
	kept := p.out[:0]
	for _, a := range p.out {
		if a.Kind != Replace {
			kept = append(kept, a)
		}
	}
	p.out = kept
}

// adopt takes orphans of this app that run the desired spec, before
// anything new starts.
func (p *appPlan) adopt() {
	for _, o := range p.in.Orphans {
		if o.App != p.d.App || o.SpecHash != p.d.SpecHash || !o.Running || p.adopted[o.ContainerID] || len(p.current)+p.replacing >= p.d.Replicas {
			continue
		}
		p.adopted[o.ContainerID] = true
		p.add(Action{Kind: Adopt, Instance: o.Instance, ContainerID: o.ContainerID, Generation: p.d.Generation,
			Reason: "a running container of the desired spec, left by an earlier leader"})
		p.current = append(p.current, Observed{ID: o.Instance, State: msg.StateRunning, SpecHash: p.d.SpecHash})
	}
}

// scale starts or stops instances of the desired spec to the count.
func (p *appPlan) scale() {
	want := p.d.Replicas
	for i := len(p.current) + p.replacing; i < want && i+p.d.Unreachable < want+p.d.MaxSurge; i++ {
		p.add(Action{Kind: Start, Generation: p.d.Generation, Reason: fmt.Sprintf("%d of %d replicas", i, want)})
	}
	if extra := len(p.current) + p.replacing - want; extra > 0 {
		p.stop(victims(p.current, extra), fmt.Sprintf("scaling down to %d", want))
	}
}

// roll is a rolling update: new instances up to the count, within count +
// max_surge in total (draining instances still in some nginx included);
// old ones drain while enough instances stay available.
func (p *appPlan) roll() {
	want := p.d.Replicas
	total := len(p.current) + len(p.old) + p.replacing + p.inConfig + p.d.Unreachable
	for n := len(p.current) + p.replacing; n < want && total < want+p.d.MaxSurge; n++ {
		p.add(Action{Kind: Start, Generation: p.d.Generation, Reason: fmt.Sprintf("rolling update to generation %d", p.d.Generation)})
		total++
	}
	avail := 0
	for _, o := range p.current {
		switch {
		case available(o, p.d.MinHealthyTime, p.in.Now):
			avail++
		case o.State == msg.StateRunning && o.Health == msg.StatusHealthy:
			// Healthy, not yet for min_healthy_time: plan again when it counts.
			p.res.wakeAt(o.HealthySince.Add(p.d.MinHealthyTime), p.in.Now)
		}
	}
	for _, o := range p.old {
		if available(o, 0, p.in.Now) {
			avail++
		}
	}
	floor := max(want-p.d.MaxUnavailable, 0)
	// Drain not-serving old instances first, then serving ones while the floor holds.
	for _, o := range victims(p.old, len(p.old)) {
		serving := available(o, 0, p.in.Now)
		if serving && avail-1 < floor {
			break
		}
		if serving {
			avail--
		}
		p.add(Action{Kind: Stop, Instance: o.ID, ContainerID: o.ContainerID, Reason: fmt.Sprintf("replaced by generation %d", p.d.Generation)})
	}
}

func (p *appPlan) stop(insts []Observed, reason string) {
	for _, v := range insts {
		p.add(Action{Kind: Stop, Instance: v.ID, ContainerID: v.ContainerID, Reason: reason})
	}
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
