package checker

import (
	"container/heap"
	"context"
	"sync"
)

// fairSlots bounds the probes in flight, and shares the slots fairly
// across apps: when one frees while probes wait, it goes to the waiting
// app that holds the fewest (the longest-waiting probe of that app first).
// An app whose instances all hang holds at most the slots it had when
// others began to wait, and gives them back one probe timeout later, so it
// cannot starve the health of every other app. Safe for concurrent use.
//
// The waiting apps are a heap by the slots they hold (then by name), so a
// release costs O(log apps waiting): with 10,000 apps of 3 instances a
// release that scanned every waiting app took more CPU than the probes,
// and once the probes fell behind the queue never emptied again (issue 30).
type fairSlots struct {
	mu   sync.Mutex
	free int
	// apps holds every app that holds a slot or waits for one.
	apps map[string]*appSlots
	// queue is the apps with a waiter, fewest slots held first.
	queue waitQueue
}

// appSlots is one app's slots held and its waiters, oldest first; index is
// its place in the queue, -1 while none of its probes waits.
type appSlots struct {
	name    string
	inUse   int
	waiting []chan struct{}
	index   int
}

func newFairSlots(n int) *fairSlots {
	return &fairSlots{free: max(n, 1), apps: map[string]*appSlots{}}
}

// app returns app's record, made when it has none; the caller holds mu.
func (s *fairSlots) app(name string) *appSlots {
	a, ok := s.apps[name]
	if !ok {
		a = &appSlots{name: name, index: -1}
		s.apps[name] = a
	}
	return a
}

// changed puts a back in order after its slots or waiters changed, and
// forgets it once it holds and waits for nothing; the caller holds mu.
func (s *fairSlots) changed(a *appSlots) {
	switch {
	case len(a.waiting) > 0 && a.index < 0:
		heap.Push(&s.queue, a)
	case len(a.waiting) > 0:
		heap.Fix(&s.queue, a.index)
	case a.index >= 0:
		heap.Remove(&s.queue, a.index)
	}
	if a.inUse <= 0 && len(a.waiting) == 0 {
		delete(s.apps, a.name)
	}
}

// acquire takes a slot for app, waiting for one until ctx ends; it
// reports whether it got one.
func (s *fairSlots) acquire(ctx context.Context, app string) bool {
	s.mu.Lock()
	a := s.app(app)
	if s.free > 0 {
		s.free--
		a.inUse++
		s.changed(a)
		s.mu.Unlock()
		return true
	}
	ch := make(chan struct{})
	a.waiting = append(a.waiting, ch)
	s.changed(a)
	s.mu.Unlock()
	select {
	case <-ch:
		return true
	case <-ctx.Done():
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	select {
	case <-ch: // granted as ctx ended: hand it on
		s.releaseLocked(app)
		return false
	default:
	}
	a = s.apps[app] // still there: ch waits in it
	for i, c := range a.waiting {
		if c == ch {
			a.waiting = append(a.waiting[:i:i], a.waiting[i+1:]...)
			break
		}
	}
	s.changed(a)
	return false
}

// release gives app's slot back, to the fairest waiter.
func (s *fairSlots) release(app string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.releaseLocked(app)
}

func (s *fairSlots) releaseLocked(app string) {
	if a, ok := s.apps[app]; ok {
		a.inUse--
		s.changed(a)
	}
	if s.queue.Len() == 0 {
		s.free++
		return
	}
	next := s.queue[0]
	ch := next.waiting[0]
	next.waiting[0] = nil
	next.waiting = next.waiting[1:]
	next.inUse++
	s.changed(next)
	close(ch)
}

// waitingOf returns how many of app's probes wait for a slot.
func (s *fairSlots) waitingOf(app string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	if a, ok := s.apps[app]; ok {
		return len(a.waiting)
	}
	return 0
}

// waitQueue is a min-heap of the apps with a waiter, by the slots each
// holds, then by name.
type waitQueue []*appSlots

func (q waitQueue) Len() int { return len(q) }
func (q waitQueue) Less(i, j int) bool {
	if q[i].inUse != q[j].inUse {
		return q[i].inUse < q[j].inUse
	}
	return q[i].name < q[j].name
}
func (q waitQueue) Swap(i, j int) {
	q[i], q[j] = q[j], q[i]
	q[i].index, q[j].index = i, j
}
func (q *waitQueue) Push(x any) {
	a := x.(*appSlots)
	a.index = len(*q)
	*q = append(*q, a)
}
func (q *waitQueue) Pop() any {
	old := *q
	a := old[len(old)-1]
	old[len(old)-1] = nil
	a.index = -1
	*q = old[:len(old)-1]
	return a
}
