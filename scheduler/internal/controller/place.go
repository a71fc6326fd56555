package controller

import (
	"context"
	"fmt"
	"time"

	"go.uber.org/zap"

	"github.com/berthhq/berth/common/logging"
	"github.com/berthhq/berth/common/msg"
	"github.com/berthhq/berth/scheduler/internal/placement"
	"github.com/berthhq/berth/scheduler/internal/reconcile"
	"github.com/berthhq/berth/scheduler/internal/store"
)

// placed is where a plan's starts go: the host of each placed Start (by
// its index in the plan) and of each replaced instance's successor, and
// why an app's starts could not all be placed. Read-only once built.
type placed struct {
	starts      map[int]string
	successor   map[string]string
	unplaceable map[string]string
	// predecessors are the plan's Replace and Lost actions, by instance.
	predecessors map[string]reconcile.Action
}

// place decides the host of every Start action of the plan at once
// (placement.Place: spread, constraints, capacity, drains), what the
// records already reserve counted, except the instances the plan
// replaces. It reports the instances no host can take as unplaceable
// events, once for each reason.
func (c *Controller) place(ctx context.Context, l store.Lease, w world, actions []reconcile.Action) placed {
	p := placed{starts: map[int]string{}, successor: map[string]string{}, unplaceable: map[string]string{}, predecessors: map[string]reconcile.Action{}}
	count := map[string]int{}
	for _, a := range actions {
		switch a.Kind {
		case reconcile.Start, reconcile.RunRelease:
			count[a.App]++
		case reconcile.Replace, reconcile.Lost:
			p.predecessors[a.Instance] = a
		}
	}
	if len(count) == 0 {
		return p
	}
	hosts := c.deps.Hosts.Hosts()
	index := make(map[string]int, len(hosts))
	for i := range hosts {
		index[hosts[i].Name] = i
		hosts[i].Apps = map[string]int{}
	}
	for _, r := range w.records {
		i, ok := index[r.Host]
		if _, replaced := p.predecessors[r.ID]; !ok || replaced || r.State == msg.StateStopped || r.State == msg.StateFailed {
			continue
		}
		if app, ok := w.apps[r.App]; ok && app.Spec != nil {
			cpu, mem := Limits(app.Spec, c.cfg.DefaultCPU, c.cfg.DefaultMemory)
			hosts[i].ReservedCPU += cpu
			hosts[i].ReservedMemory += mem
		}
		hosts[i].Apps[r.App]++
	}
	reqs := make([]placement.Request, 0, len(count))
	for app, n := range count {
		a := w.apps[app]
		if a.Spec == nil {
			continue
		}
		cpu, mem := Limits(a.Spec, c.cfg.DefaultCPU, c.cfg.DefaultMemory)
		r := placement.Request{App: app, Count: n, CPU: cpu, Memory: mem}
		if pl := a.Spec.Placement; pl != nil {
			r.Constraints, r.SpreadBy = pl.Parsed(), pl.SpreadBy
		}
		reqs = append(reqs, r)
	}
	res := placement.Place(hosts, reqs)
	for app, u := range res.Unplaceable {
		p.unplaceable[app] = u.Reason
		if !c.seen.unplaceable(app, u.Reason, time.Now()) {
			continue
		}
		msgText := fmt.Sprintf("%d instance(s) of %s cannot be placed: %s", u.Count, app, u.Reason)
		c.logger.Warn("unplaceable", zap.String(logging.KeyApp, app), zap.Int("instances", u.Count), zap.String("reason", u.Reason))
		if err := c.deps.Records.Event(ctx, l, store.Event{App: app, Kind: msg.EventUnplaceable, Message: msgText,
			Details: map[string]string{"instances": fmt.Sprint(u.Count), "reason": msg.Truncate(u.Reason, 512)}}); err != nil {
			c.logger.Warn("unplaceable event not recorded", zap.Error(err))
		}
	}
	for app := range count {
		if _, ok := res.Unplaceable[app]; !ok {
			c.seen.unplaceable(app, "", time.Now())
		}
	}
	// Each app's hosts go to its starts in plan order, successors first
	// (the planner puts them first).
	for i, a := range actions {
		h := res.Hosts[a.App]
		if (a.Kind != reconcile.Start && a.Kind != reconcile.RunRelease) || len(h) == 0 {
			continue
		}
		p.starts[i], res.Hosts[a.App] = h[0], h[1:]
		if a.Replaces != "" {
			p.successor[a.Replaces] = h[0]
		}
	}
	return p
}
