package checker

import (
	"container/heap"
	"context"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/berthhq/berth/healthd/internal/probe"
)

// Prober runs one probe; probe.Registry is one. Safe for concurrent use.
type Prober interface {
	Probe(ctx context.Context, t probe.Target) probe.Result
}

var _ Prober = probe.Registry(nil)

// Target is one instance to check, with what the publisher needs to know.
type Target struct {
	probe.Target
	// Generation and Term are the instance record's, carried into reports.
	Generation int64
	Term       uint64
	// NotBefore is when the first probe may run (start + initial_delay).
	NotBefore time.Time
}

// Report is one finished probe: the target's new state and whether its
// status changed.
type Report struct {
	Target Target
	State  State
	// From is the status before this probe; Changed is State.Status != From.
	From    string
	Changed bool
	// History is the target's history, this probe included; the same
	// for every report of the target while this runner checks it.
	History *History
}

// Handler receives reports and removals. Calls may come from many
// goroutines at once; calls for one key come one at a time.
type Handler interface {
	// Probed reports a finished probe.
	Probed(r Report)
	// Removed reports a target that is no longer checked here.
	Removed(key string)
}

// Runner probes every target at its interval with bounded concurrency. A
// slow or hanging target holds one slot for at most its timeout and never
// delays the schedule of others; a target whose previous probe is still
// running skips that turn rather than stacking probes.
type Runner struct {
	// Seed, when set before the first SetTargets, gives a new target its
	// starting state: health checking carries on across checker restarts
	// and handovers instead of starting every instance over as unknown
	// (which would take it out of nginx until it passed again).
	Seed func(t Target) (State, bool)

	// MaxTimeout, when positive, caps every probe's timeout, whatever the
	// spec says: a slot is held at most this long.
	MaxTimeout time.Duration

	prober  Prober
	handler Handler
	slots   *fairSlots
	now     func() time.Time

	mu      sync.Mutex
	entries map[string]*entry
	sets    uint64 // counts SetTargets calls (entry.set)
	queue   dueQueue
	wake    chan struct{}
}

type entry struct {
	t       Target
	state   State
	hist    *History // from the first probe: taking over 15,000 targets at once allocated 24 MB of them (issue 30)
	version int      // bumped on every change of the target, so stale queue items are skipped
	running bool
	removed bool
	set     uint64 // the last SetTargets that listed the target
}

// NewRunner returns a runner that probes with prober, at most maxConcurrent
// at a time, and reports to handler.
func NewRunner(prober Prober, handler Handler, maxConcurrent int) *Runner {
	return &Runner{prober: prober, handler: handler, slots: newFairSlots(maxConcurrent),
		now: time.Now, entries: map[string]*entry{}, wake: make(chan struct{}, 1)}
}

// Targets returns how many targets are checked.
func (r *Runner) Targets() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.entries)
}

// SetTargets replaces the set of targets. New targets start from Seed's
// state when it has one (the status last published for that instance, by
// this checker before a restart or by the checker that had it before a
// handover), else unknown; a
// changed target (address, check, interval) keeps its state and takes the
// change at its next probe; targets no longer in ts are dropped and
// reported as removed.
func (r *Runner) SetTargets(ts []Target) {
	now := r.now()
	var removed []string
	r.mu.Lock()
	r.sets++ // marks the entries in ts: the others are removed
	for _, t := range ts {
		e, ok := r.entries[t.Key]
		if !ok {
			st := NewState(now)
			if r.Seed != nil {
				if seeded, ok := r.Seed(t); ok {
					st = seeded
				}
			}
			e = &entry{t: t, state: st, set: r.sets}
			r.entries[t.Key] = e
			r.schedule(e, now)
			continue
		}
		e.set = r.sets
		if e.t.Address != t.Address || e.t.Check.Interval != t.Check.Interval || !sameCheck(e.t, t) || e.t.NotBefore != t.NotBefore {
			intervalChanged := e.t.Check.Interval != t.Check.Interval
			e.t = t
			if intervalChanged {
				r.schedule(e, now)
			}
		} else {
			e.t = t
		}
	}
	for key, e := range r.entries {
		if e.set != r.sets {
			e.removed = true
			delete(r.entries, key)
			removed = append(removed, key)
		}
	}
	r.mu.Unlock()
	for _, key := range removed {
		r.handler.Removed(key)
	}
	r.poke()
}

func sameCheck(a, b Target) bool {
	x, y := a.Check, b.Check
	return x.Type == y.Type && x.Path == y.Path && x.Timeout == y.Timeout && x.HealthyThreshold == y.HealthyThreshold &&
		x.UnhealthyThreshold == y.UnhealthyThreshold && x.Method == y.Method && slices.Equal(x.ExpectedStatus, y.ExpectedStatus)
}

// schedule queues e at its next due time; the caller holds mu.
func (r *Runner) schedule(e *entry, now time.Time) {
	e.version++
	heap.Push(&r.queue, &item{e: e, version: e.version, due: NextDue(e.t.Key, e.t.Check.Interval.Std(), now, e.t.NotBefore)})
}

func (r *Runner) poke() {
	select {
	case r.wake <- struct{}{}:
	default:
	}
}

// Run probes until ctx ends.
func (r *Runner) Run(ctx context.Context) error {
	var wg sync.WaitGroup
	defer wg.Wait()
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	for {
		now := r.now()
		var due []*entry
		next := now.Add(time.Hour)
		r.mu.Lock()
		for r.queue.Len() > 0 {
			it := r.queue[0]
			if it.e.removed || it.version != it.e.version {
				heap.Pop(&r.queue)
				continue
			}
			if it.due.After(now) {
				next = it.due
				break
			}
			heap.Pop(&r.queue)
			r.schedule(it.e, it.due) // the following turn, on the grid
			if !it.e.running {
				it.e.running = true
				due = append(due, it.e)
			}
		}
		r.mu.Unlock()
		for _, e := range due {
			wg.Add(1)
			go func() {
				defer wg.Done()
				r.probe(ctx, e)
			}()
		}
		timer.Reset(next.Sub(r.now()))
		select {
		case <-ctx.Done():
			return nil
		case <-r.wake:
		case <-timer.C:
		}
	}
}

// probe runs one probe of e, waiting for a slot, and reports it.
func (r *Runner) probe(ctx context.Context, e *entry) {
	r.mu.Lock()
	t := e.t
	r.mu.Unlock()
	app, _, _ := strings.Cut(t.Key, ".")
	if !r.slots.acquire(ctx, app) {
		return
	}
	timeout := t.Check.Timeout.Std()
	if r.MaxTimeout > 0 {
		timeout = min(timeout, r.MaxTimeout)
	}
	pctx, cancel := context.WithTimeout(ctx, timeout)
	res := r.prober.Probe(pctx, t.Target)
	cancel()
	r.slots.release(app)
	if ctx.Err() != nil {
		return
	}
	r.mu.Lock()
	e.running = false
	if e.removed {
		r.mu.Unlock()
		return
	}
	from := e.state.Status
	now := r.now()
	next, changed := Step(e.state, res, e.t.Check.HealthyThreshold, e.t.Check.UnhealthyThreshold, now)
	e.state = next
	t = e.t
	if e.hist == nil {
		e.hist = &History{}
	}
	hist := e.hist
	r.mu.Unlock()
	hist.Add(res, now)
	r.handler.Probed(Report{Target: t, State: next, From: from, Changed: changed, History: hist})
}

// item is one scheduled turn of a target.
type item struct {
	e       *entry
	version int
	due     time.Time
}

// dueQueue is a min-heap of turns by due time.
type dueQueue []*item

func (q dueQueue) Len() int           { return len(q) }
func (q dueQueue) Less(i, j int) bool { return q[i].due.Before(q[j].due) }
func (q dueQueue) Swap(i, j int)      { q[i], q[j] = q[j], q[i] }
func (q *dueQueue) Push(x any)        { *q = append(*q, x.(*item)) }
func (q *dueQueue) Pop() any {
	old := *q
	it := old[len(old)-1]
	*q = old[:len(old)-1]
	return it
}
