// Package reconcile decides, as a pure function of the desired state, the
// observed instances and containers, the state of each Docker host (up,
// unreachable, down, unknown, draining, its labels) and the time, what the
// controller must do next — start (placing a replacement, with the
// instance it replaces), drain, migrate off a host, remove, replace, record
// an instance lost with its host, forget it once its host answers, adopt,
// remove an orphan, roll back, or give up on a crash-looping app — and the
// next moment at which time alone can change that answer, so the
// controller sleeps until then instead of polling. Host policy lives here,
// as Nomad's reconciler takes node state as input: what a lost host's
// instances count, which instances move, which containers can be touched.
// It does no I/O and is idempotent: planning again from the state an
// action leads to does not repeat the action.
package reconcile

import (
	"fmt"
	"sort"
	"strconv"
	"time"

	"github.com/berthhq/berth/common/msg"
)

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
	// The restart history by app: each app reads its own, not everyone's.
	failures := map[string][]Failure{}
	for _, f := range in.Failures {
		failures[f.App] = append(failures[f.App], f)
	}
	// The release records by app, likewise.
	releases := map[string][]Release{}
	running := map[string]bool{} // app/generation of a running release
	for _, rel := range in.Releases {
		releases[rel.App] = append(releases[rel.App], rel)
		if rel.State == ReleaseRunning {
			running[rel.App+"/"+strconv.FormatInt(rel.Generation, 10)] = true
		}
	}
	adopted := map[string]bool{}
	for _, name := range names {
		d, known := in.Apps[name]
		p := &appPlan{d: d, in: &in, res: &r, adopted: adopted, failures: failures[name], releases: releases[name]}
		if !known || d.Deleted {
			if !known {
				p.d = Desired{App: name, Drain: defaultDrain}
			}
			p.retire(byApp[name])
			continue
		}
		p.plan(byApp[name])
	}
	r.releases(&in)
	for _, o := range in.Orphans {
		if adopted[o.ContainerID] || in.host(o.Host).State != HostUp {
			continue // a host that does not answer: once it does
		}
		if o.Release && running[o.App+"/"+strconv.FormatInt(o.Generation, 10)] {
			continue // its release runs: waited on, or adopted
		}
		r.Actions = append(r.Actions, Action{Kind: RemoveOrphan, App: o.App, Instance: o.Instance, ContainerID: o.ContainerID, Host: o.Host,
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

	// current run the desired spec where they may stay, old another spec
	// or on a host they must leave (moves: why, by instance).
	current, old []Observed
	moves        map[string]string
	// inConfig counts draining instances some lbagent may still route to;
	// oldInConfig those of them that run another spec (a rollout's tail).
	inConfig, oldInConfig int
	// successors are the indexes in out of the Replace and Lost actions
	// whose instances want a successor, crashes first.
	successors []int
	// lost counts the instances lost with their host that may still run
	// there: recorded earlier, or Lost in this plan.
	lost int
	// cap, when not negative, bounds the starts of this plan (a
	// half-open breaker lets one through).
	cap int
	// out is this app's actions.
	out []Action
	// halted says the desired spec's rollout failed: nothing of it starts.
	halted bool
	// failures are the app's restart history (Input.Failures).
	failures []Failure
	// releases are the app's release records.
	releases []Release
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
		h := p.in.host(o.Host)
		switch {
		case o.State == msg.StateFailed:
			p.lostRecord(o, h)
		case (o.State == msg.StateDraining || active(o)) && p.lose(o, h, "", "the app was deleted: nothing replaces it"):
		case o.State == msg.StateDraining:
			p.finishDrain(o)
		case active(o):
			p.add(Action{Kind: Stop, Instance: o.ID, ContainerID: o.ContainerID, Reason: "the app was deleted"})
		}
	}
}

func (p *appPlan) plan(insts []Observed) {
	defer p.done()
	p.cap = -1
	if p.rollback(insts) {
		return
	}
	p.classify(insts)
	p.replaceUnhealthy()
	if !p.budget() {
		return
	}
	p.adopt()
	if p.halted {
		// A dead instance gets no successor of the failed spec: it is
		// removed, and the old instances serve on.
		for i := range p.out {
			if a := &p.out[i]; a.Kind == Replace {
				a.Kind, a.Reason = Remove, a.Reason+fmt.Sprintf("; not replaced: the rollout of generation %d failed", p.d.Generation)
			}
		}
		p.hold("the rollout failed")
		return
	}
	if !p.released() {
		return
	}
	if len(p.old) == 0 && p.oldInConfig == 0 {
		p.scale()
		return
	}
	p.roll()
}

// rolloutFailures is how many failures of its new instances fail a
// rollout, unless the restart budget allows fewer: a version that
// crashes at start rolls back within the restart backoff of its first
// attempts, long before its breaker would trip.
const rolloutFailures = 3

// rollback ends a failed rollout. A rollout is one while an instance of
// another spec is still active: there is a generation that serves, to go
// back to. It fails when its new instances keep failing (they stop
// before becoming healthy, crash, or cannot be pulled, created or
// started: rolloutFailures of them within the restart window), or when
// one has existed for healthy_deadline without becoming healthy (as
// Nomad's healthy_deadline is per allocation: a long rollout of healthy
// instances is not rolled back). With auto_rollback the app goes back to
// the newest generation that serves; without, the rollout stops (no new
// instance of the spec starts) until another spec is applied. It
// reports whether planning the app ends here. An instance that only
// moves (its host drains, or no longer meets the placement) runs the
// desired spec: it is no rollout.
func (p *appPlan) rollback(insts []Observed) bool {
	rolling, target := false, int64(0)
	for _, o := range insts {
		if active(o) && o.SpecHash != p.d.SpecHash {
			rolling, target = true, max(target, o.Generation)
		}
	}
	if !rolling {
		return false
	}
	if p.in.FailedRollouts[p.d.App] == (Rollout{Generation: p.d.Generation, SpecHash: p.d.SpecHash}) {
		p.add(Action{Kind: Hold, Generation: p.d.Generation,
			Reason: fmt.Sprintf("the rollout of generation %d failed: no instance of it starts until another spec is applied, or scheduler rollback", p.d.Generation)})
		p.halted = true
		return false
	}
	if n, last := p.versionFailures(); n >= min(rolloutFailures, max(p.d.RestartAttempts, 1)) {
		p.fail(target, fmt.Sprintf("generation %d failed: %d of its instances failed within %s, the last because %s", p.d.Generation, n, p.d.RestartWindow, last.Reason))
		return true
	}
	if p.d.HealthyDeadline <= 0 {
		return false
	}
	for _, o := range insts {
		if !active(o) || o.SpecHash != p.d.SpecHash || o.Health == msg.StatusHealthy {
			continue
		}
		deadline := o.CreatedAt.Add(p.d.HealthyDeadline)
		if !p.in.Now.Before(deadline) {
			why := fmt.Sprintf("generation %d had an instance not healthy within update.healthy_deadline (%s)", p.d.Generation, p.d.HealthyDeadline)
			if o.Probe != "" {
				why += "; its last probe: " + o.Probe
			}
			p.fail(target, why)
			last := &p.out[len(p.out)-1]
			last.Instance, last.ContainerID = o.ID, o.ContainerID
			return true
		}
		p.res.wakeAt(deadline, p.in.Now)
	}
	return false
}

// fail ends a failed rollout: a RollBack to target with auto_rollback,
// else a FailRollout (the next plans hold, see FailedRollouts).
func (p *appPlan) fail(target int64, why string) {
	if p.d.AutoRollback {
		p.add(Action{Kind: RollBack, Generation: p.d.Generation, Target: target, Reason: why})
		return
	}
	p.add(Action{Kind: FailRollout, Generation: p.d.Generation, Reason: why})
	p.halted = true
}

// versionFailures counts the failures of the desired spec at the current
// generation within the restart window, and returns the newest. The same
// spec applied again (its missing image pushed since, say) is tried
// again.
func (p *appPlan) versionFailures() (int, Failure) {
	n, last := 0, Failure{}
	for _, f := range p.failures {
		if f.SpecHash == p.d.SpecHash && f.Generation == p.d.Generation && p.in.Now.Sub(f.At) <= p.d.RestartWindow {
			n++
			if f.At.After(last.At) {
				last = f
			}
		}
	}
	return n, last
}

// classify finishes drains, records what a lost host ran, replaces dead
// containers and stale starts, and sorts the rest into current and old
// (another spec, or a host to leave).
func (p *appPlan) classify(insts []Observed) {
	p.current = make([]Observed, 0, len(insts))
	for _, o := range insts {
		h := p.in.host(o.Host)
		if o.State == msg.StateFailed {
			p.lostRecord(o, h)
			continue
		}
		if o.State == msg.StateDraining {
			if !p.lose(o, h, "", "it was draining: nothing replaces it") {
				p.finishDrain(o)
			}
			continue
		}
		if !active(o) {
			continue
		}
		if h.State == HostUnknown && o.ContainerGone && o.ContainerID != "" {
			// Its host has not been listed yet: its container is unseen,
			// not gone.
			o.ContainerGone, o.ContainerRunning = false, true
		}
		if (o.State == msg.StateCreating || o.State == msg.StateStarting) && o.Term != 0 && p.in.Term > o.Term {
			// A start of an earlier term: that term's leader-only services
			// were stopped before this one began (leader.Group), and its
			// writes are fenced, so nobody finishes it. Replaced at once,
			// rather than after --start-timeout; a container it made late
			// is an orphan, removed.
			o.State, o.ContainerGone = msg.StateRunning, true
		} else if (o.State == msg.StateCreating || o.State == msg.StateStarting) && p.in.StartTimeout > 0 && !o.UpdatedAt.IsZero() {
			// A start that outlived its timeout: its leader died mid-start.
			if stale := o.UpdatedAt.Add(p.in.StartTimeout); p.in.Now.Before(stale) {
				p.res.wakeAt(stale, p.in.Now)
			} else {
				o.State, o.ContainerGone = msg.StateRunning, true
			}
		}
		if o.State == msg.StateRunning {
			dead, why := o.ContainerGone || o.ContainerID != "" && !o.ContainerRunning, ""
			if dead {
				why = deadReason(o)
			}
			if p.lose(o, h, why, "") {
				continue
			}
			if dead {
				p.replace(o, why)
				p.out[len(p.out)-1].Exited = !o.ContainerGone
				continue
			}
		}
		if why := p.moving(o, h); why != "" {
			if p.moves == nil {
				p.moves = map[string]string{}
			}
			p.moves[o.ID] = why
			p.old = append(p.old, o)
			continue
		}
		if o.SpecHash == p.d.SpecHash {
			p.current = append(p.current, o)
		} else {
			p.old = append(p.old, o)
		}
	}
}

// replace replaces an instance whose container died, vanished or stayed
// unhealthy on a host that answers.
func (p *appPlan) replace(o Observed, reason string) {
	p.add(Action{Kind: Replace, Instance: o.ID, ContainerID: o.ContainerID, Host: o.Host, Generation: p.d.Generation, Reason: reason})
	// Crashes first: a lost instance's successor may wait for its host.
	i := 0
	for i < len(p.successors) && p.out[p.successors[i]].Kind == Replace {
		i++
	}
	p.successors = append(p.successors[:i], append([]int{len(p.out) - 1}, p.successors[i:]...)...)
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
				why := fmt.Sprintf("unhealthy for %s (grace %s)", p.in.Now.Sub(o.UnhealthySince).Round(time.Second), p.d.UnhealthyGrace)
				if o.Probe != "" {
					why += "; its last probe: " + o.Probe
				}
				switch h := p.in.host(o.Host); {
				case p.lose(o, h, why, ""):
				case h.State == HostUnknown:
					kept = append(kept, o) // once its host is listed
				default:
					p.replace(o, why)
				}
				continue
			}
			p.res.wakeAt(end, p.in.Now)
		}
		kept = append(kept, o)
	}
	p.current = kept
}

// adopt takes orphans of this app that run the desired spec on a host
// that answers, before anything new starts.
func (p *appPlan) adopt() {
	for _, o := range p.in.Orphans {
		if o.App != p.d.App || o.SpecHash != p.d.SpecHash || !o.Running || o.Release || p.adopted[o.ContainerID] || len(p.current)+len(p.successors) >= p.d.Replicas {
			continue
		}
		h := p.in.host(o.Host)
		if h.State != HostUp || p.moving(Observed{Host: o.Host, SpecHash: o.SpecHash}, h) != "" {
			continue
		}
		p.adopted[o.ContainerID] = true
		p.add(Action{Kind: Adopt, Instance: o.Instance, ContainerID: o.ContainerID, Host: o.Host, Generation: p.d.Generation,
			Reason: "a running container of the desired spec, left by an earlier leader"})
		p.current = append(p.current, Observed{ID: o.Instance, State: msg.StateRunning, SpecHash: p.d.SpecHash, Host: o.Host})
	}
}

// scale starts or stops instances of the desired spec to the count.
func (p *appPlan) scale() {
	want, have := p.d.Replicas, len(p.current)
	n := want - have
	var bound string
	if p.d.HoldLost && p.lost > 0 && n > want+p.d.MaxSurge-have-p.lost {
		n = max(want+p.d.MaxSurge-have-p.lost, 0)
		bound = p.holdLost()
	}
	p.start(n, want-have, bound, func() string { return fmt.Sprintf("%d of %d replicas", have, want) })
	if extra := have - want; extra > 0 {
		p.stop(victims(p.current, extra), fmt.Sprintf("scaling down to %d", want))
	}
}

// start adds n starts (within the breaker's cap), pairing the first with
// the instances that want a successor, crashes first. Of those left
// without one, a dead instance beyond need (the app scales down) is
// removed, and any other is told why in its Wait: none is needed, or
// bound (what held the starts back).
func (p *appPlan) start(n, need int, bound string, reason func() string) {
	if p.cap >= 0 && n > p.cap {
		n = p.cap
		if bound == "" {
			bound = "its replacement waits: the restart budget's breaker lets one start through at a time"
		}
	}
	n = max(n, 0)
	for i := range n {
		a := Action{Kind: Start, Generation: p.d.Generation}
		if i < len(p.successors) {
			pred := p.out[p.successors[i]]
			a.Replaces, a.Reason = pred.Instance, pred.Reason
		} else {
			a.Reason = reason()
		}
		p.add(a)
	}
	for i, idx := range p.successors {
		if i < n {
			continue
		}
		a := &p.out[idx]
		switch {
		case a.Kind == Replace && i >= need:
			a.Kind, a.Reason = Remove, a.Reason+fmt.Sprintf("; not replaced: %d of %d replicas run", len(p.current), p.d.Replicas)
		case i >= need:
			a.Wait = fmt.Sprintf("no replacement needed: %d of %d replicas run", len(p.current), p.d.Replicas)
		default:
			a.Wait = bound
		}
	}
	p.successors = nil
}

// roll is a rolling update: new instances up to the count, within count +
// max_surge in total (draining instances still in some nginx included,
// and instances lost with their host under on_host_lost.replace: false);
// old ones drain while enough instances stay available. An old instance
// that only moves off its host migrates.
func (p *appPlan) roll() {
	want := p.d.Replicas
	total := len(p.current) + len(p.old) + p.inConfig
	if p.d.HoldLost {
		total += p.lost
	}
	n := 0
	for have := len(p.current); have < want && total < want+p.d.MaxSurge; have++ {
		n++
		total++
	}
	reason := func() string {
		if len(p.old) > 0 && len(p.moves) == len(p.old) {
			return "moving instances off hosts they must leave"
		}
		return fmt.Sprintf("rolling update to generation %d", p.d.Generation)
	}
	bound := "its replacement waits: the app is at replicas + max_surge during a rolling update"
	if p.d.HoldLost && p.lost > 0 {
		bound = p.holdLost()
	}
	p.start(n, want-len(p.current), bound, reason)
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
		if why, ok := p.moves[o.ID]; ok {
			p.add(Action{Kind: Migrate, Instance: o.ID, ContainerID: o.ContainerID, Host: o.Host, Reason: why})
			continue
		}
		p.add(Action{Kind: Stop, Instance: o.ID, ContainerID: o.ContainerID, Reason: fmt.Sprintf("replaced by generation %d", p.d.Generation)})
	}
}

func (p *appPlan) stop(insts []Observed, reason string) {
	for _, v := range insts {
		p.add(Action{Kind: Stop, Instance: v.ID, ContainerID: v.ContainerID, Reason: reason})
	}
}

// OOMReason is why an OOM-killed instance is replaced.
const OOMReason = "its container was killed for running out of memory (OOMKilled): consider raising resources.memory"

func deadReason(o Observed) string {
	switch {
	case o.ContainerGone:
		return "its container no longer exists"
	case o.OOMKilled:
		return OOMReason
	case o.Exited:
		return fmt.Sprintf("its container exited with code %d", o.ExitCode)
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
