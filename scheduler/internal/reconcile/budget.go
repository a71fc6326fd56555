package reconcile

import (
	"fmt"
	"time"
)

// budget applies the restart budget of the current generation: too many
// restarts in the window trip
// the breaker (after BackoffMax since the last one, one attempt goes
// through), and after n recent restarts starts wait initial×2^(n-1),
// capped. It reports whether planning goes on. Lost instances are still
// recorded so (a host's loss is no crash); their successors wait.
func (p *appPlan) budget() bool {
	recent, last := 0, time.Time{}
	for _, f := range p.failures {
		// Each generation starts with a fresh budget, as Nomad resets its
		// reschedule tracking on a new job version: a breaker opened by
		// one version never holds back the fix.
		if (f.Generation == p.d.Generation || f.Generation == 0) && p.in.Now.Sub(f.At) <= p.d.RestartWindow {
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
			reason := fmt.Sprintf("%d restarts within %s (budget %d): not restarting until %s", recent, p.d.RestartWindow, p.d.RestartAttempts, reopen.Format(time.RFC3339))
			p.hold(reason)
			p.add(Action{Kind: TripBreaker, Generation: p.d.Generation, Until: reopen, Reason: reason})
			p.res.wakeAt(reopen, p.in.Now)
			return false
		}
		// Half-open: let a single replacement or start through.
		p.cap = 1
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
	reason := fmt.Sprintf("restart backoff after %d restarts: next attempt at %s", recent, until.Format(time.RFC3339))
	p.hold(reason)
	p.add(Action{Kind: Hold, Generation: p.d.Generation, Until: until, Reason: reason})
	p.res.wakeAt(until, p.in.Now)
	if extra := len(p.current) - p.d.Replicas; extra > 0 && len(p.old) == 0 {
		p.stop(victims(p.current, extra), fmt.Sprintf("scaling down to %d", p.d.Replicas))
	}
	return false
}

// hold starts no successor in this plan: a dead instance stays as it is
// until the next attempt, and a lost one is recorded, waiting.
func (p *appPlan) hold(reason string) {
	kept := p.out[:0]
	for _, a := range p.out {
		switch a.Kind {
		case Replace:
			continue
		case Lost:
			if a.Wait == "" {
				a.Wait = "its replacement waits: " + reason
			}
		}
		kept = append(kept, a)
	}
	p.out, p.successors = kept, nil
}
