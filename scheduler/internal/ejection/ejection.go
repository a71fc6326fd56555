// Package ejection owns the scheduler's record of outlier ejections
// (health.outlier): each lbagent decides alone which instances to take out
// of its nginx's rotation and lists them in its agents record; the leader
// turns each new one into an instance_ejected event, and each that ended
// on a live lbagent into an instance_returned event.
package ejection

import (
	"context"
	"fmt"
	"time"

	"go.uber.org/zap"

	"github.com/berthhq/berth/common/msg"
	"github.com/berthhq/berth/scheduler/internal/store"
)

// key is one ejection: an lbagent's of an instance, from a time.
type key struct {
	node, app, instance string
	since               time.Time
}

// Diff compares the ejections seen before with those the live lbagents'
// records (updated within msg.AgentTTL of now) list as lasting past now,
// and returns them with an event for each new one and for each that ended
// on an lbagent still live. An lbagent gone takes its ejections with it,
// without an event (its nginx serves no one). It does no I/O.
func Diff(seen map[key]msg.Ejection, agents map[string]*msg.Agent, now time.Time) (map[key]msg.Ejection, []store.Event) {
	next := map[key]msg.Ejection{}
	live := map[string]bool{}
	var events []store.Event
	for _, a := range agents {
		if now.Sub(a.UpdatedAt) > msg.AgentTTL {
			continue
		}
		live[a.Node] = true
		for _, e := range a.Ejected {
			if !e.Until.After(now) {
				continue
			}
			k := key{node: a.Node, app: e.App, instance: e.Instance, since: e.Since}
			next[k] = e
			if _, ok := seen[k]; ok {
				continue
			}
			events = append(events, store.Event{App: e.App, Instance: e.Instance, Kind: msg.EventInstanceEjected, Actor: store.ActorScheduler,
				Message: fmt.Sprintf("instance %s ejected from lbagent %s's nginx until %s (ejection %d): %s", e.Instance, a.Node,
					e.Until.UTC().Format(time.RFC3339), e.Times, e.Reason),
				Details: map[string]string{"node": a.Node, "reason": msg.Truncate(e.Reason, 512), "until": e.Until.UTC().Format(time.RFC3339),
					"times": fmt.Sprint(e.Times)}})
		}
	}
	for k, e := range seen {
		if _, ok := next[k]; ok || !live[k.node] {
			continue
		}
		events = append(events, store.Event{App: k.app, Instance: k.instance, Kind: msg.EventInstanceReturned, Actor: store.ActorScheduler,
			Message: fmt.Sprintf("instance %s back in lbagent %s's nginx after its ejection %d", k.instance, k.node, e.Times),
			Details: map[string]string{"node": k.node, "times": fmt.Sprint(e.Times)}})
	}
	return next, events
}

// Eventer records events under the leader's lease (publish.Publisher).
type Eventer interface {
	Event(ctx context.Context, l store.Lease, events ...store.Event) error
}

// Recorder is the leader-only service that records ejections as events.
// Create it with New; Wake is safe from any goroutine.
type Recorder struct {
	agents func() map[string]*msg.Agent
	events Eventer
	leader func() (store.Lease, bool)
	logger *zap.Logger
	wake   chan struct{}
	now    func() time.Time
}

// New returns a recorder reading the lbagents' records from agents.
func New(agents func() map[string]*msg.Agent, events Eventer, leader func() (store.Lease, bool), logger *zap.Logger) *Recorder {
	return &Recorder{agents: agents, events: events, leader: leader, logger: logger.Named("ejection"), wake: make(chan struct{}, 1), now: time.Now}
}

// Wake asks for a look at the records soon (an lbagent reported).
func (r *Recorder) Wake() {
	select {
	case r.wake <- struct{}{}:
	default:
	}
}

// Run records until ctx ends. It starts knowing no ejection, so a new
// leader records those in progress again: an event twice rather than none.
func (r *Recorder) Run(ctx context.Context) error {
	tick := time.NewTicker(time.Second) // ejections end with no report
	defer tick.Stop()
	var seen map[key]msg.Ejection
	for {
		if l, ok := r.leader(); ok {
			next, events := Diff(seen, r.agents(), r.now())
			if len(events) == 0 {
				seen = next
			} else if err := r.events.Event(ctx, l, events...); err != nil {
				if ctx.Err() == nil {
					r.logger.Warn("ejection events not recorded; trying again", zap.Int("events", len(events)), zap.Error(err))
				}
			} else {
				seen = next
			}
		}
		select {
		case <-ctx.Done():
			return nil
		case <-r.wake:
		case <-tick.C:
		}
	}
}
