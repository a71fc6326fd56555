package main

import (
	"slices"
	"sync/atomic"

	"github.com/berthhq/berth/common/msg"
	"github.com/berthhq/berth/healthd/internal/checker"
	"github.com/berthhq/berth/healthd/internal/shard"
)

// fleet is what the targets loop shares: every live checker's targets,
// the apps healthd does not probe, and the live checkers.
type fleet struct {
	targets map[string]bool
	// scheduled are the apps whose health the scheduler checks (docker,
	// exec): their keys are never healthd's to sweep.
	scheduled map[string]bool
	live      []string
	// apps and list are the apps and every live checker's targets the
	// targets were computed from, sorted by key; mine is this checker's
	// share of list. They are shared and never changed.
	apps map[string]*msg.App
	list []checker.Target
	mine []checker.Target
}

// shares computes this checker's share of the targets, for the targets
// loop. Listing the targets is linear in the fleet's instances and costs
// about 0.1 s of CPU at 30,000 of them (seconds on a loaded machine), so
// it runs again only after the apps or the instances changed (Stale). A
// change of the live checkers alone, a peer that joins, leaves or dies,
// keeps the list and only asks each target's owner again: before, every
// pass listed every target, and the targets of a peer that left waited for
// the pass under way and then a whole new one (issue 30).
type shares struct {
	id string
	// list returns the apps and every target (checker.Targets).
	list  func() (map[string]*msg.App, []checker.Target)
	stale atomic.Bool
	last  *fleet
}

func newShares(id string, list func() (map[string]*msg.App, []checker.Target)) *shares {
	return &shares{id: id, list: list}
}

// Stale says the apps or the instances changed: the next Next lists the
// targets again. Safe to call from any goroutine.
func (s *shares) Stale() { s.stale.Store(true) }

// Next returns the fleet for the live checkers (sorted, as shard.Live
// returns them), and whether it differs from the one Next returned last;
// when it does not, there is nothing to do. Calls come one at a time.
func (s *shares) Next(live []string) (*fleet, bool) {
	// Swapped before the list is read: a change during the read marks it
	// stale again, for the next pass.
	stale := s.stale.Swap(false)
	last := s.last
	if last != nil && !stale && slices.Equal(live, last.live) {
		return last, false
	}
	f := &fleet{live: live}
	if last == nil || stale {
		f.apps, f.list = s.list()
		f.targets = make(map[string]bool, len(f.list))
		for _, t := range f.list {
			f.targets[t.Key] = true
		}
		f.scheduled = map[string]bool{}
		for name, app := range f.apps {
			if app.Health.Scheduled() {
				f.scheduled[name] = true
			}
		}
	} else {
		f.apps, f.list, f.targets, f.scheduled = last.apps, last.list, last.targets, last.scheduled
	}
	// Owners first, then one slice of the right size: a target is a few
	// hundred bytes, and growing the share by appends copied it over and
	// over (most of a pass's time).
	owned, n := make([]bool, len(f.list)), 0
	for i, t := range f.list {
		if shard.Owner(t.Key, live) == s.id {
			owned[i] = true
			n++
		}
	}
	f.mine = make([]checker.Target, 0, n)
	for i, t := range f.list {
		if owned[i] {
			f.mine = append(f.mine, t)
		}
	}
	s.last = f
	return f, true
}
