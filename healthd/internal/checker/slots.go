package checker

import (
	"context"
	"sync"
)

// fairSlots bounds the probes in flight, and shares the slots fairly
// across apps: when one frees while probes wait, it goes to the waiting
// app that holds the fewest (the longest-waiting probe of that app first).
// An app whose instances all hang holds at most the slots it had when
// others began to wait, and gives them back one probe timeout later, so it
// cannot starve the health of every other app. Safe for concurrent use.
type fairSlots struct {
	mu      sync.Mutex
	free    int
	inUse   map[string]int
	waiting map[string][]chan struct{} // by app, oldest first
}

func newFairSlots(n int) *fairSlots {
	return &fairSlots{free: max(n, 1), inUse: map[string]int{}, waiting: map[string][]chan struct{}{}}
}

// acquire takes a slot for app, waiting for one until ctx ends; it
// reports whether it got one.
func (s *fairSlots) acquire(ctx context.Context, app string) bool {
	s.mu.Lock()
	if s.free > 0 {
		s.free--
		s.inUse[app]++
		s.mu.Unlock()
		return true
	}
	ch := make(chan struct{})
	s.waiting[app] = append(s.waiting[app], ch)
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
	q := s.waiting[app]
	for i, c := range q {
		if c == ch {
			q = append(q[:i:i], q[i+1:]...)
			break
		}
	}
	if len(q) == 0 {
		delete(s.waiting, app)
	} else {
		s.waiting[app] = q
	}
	return false
}

// release gives app's slot back, to the fairest waiter.
func (s *fairSlots) release(app string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.releaseLocked(app)
}

func (s *fairSlots) releaseLocked(app string) {
	if s.inUse[app]--; s.inUse[app] <= 0 {
		delete(s.inUse, app)
	}
	next, best := "", -1
	for a := range s.waiting {
		if n := s.inUse[a]; best < 0 || n < best || n == best && a < next {
			next, best = a, n
		}
	}
	if best < 0 {
		s.free++
		return
	}
	q := s.waiting[next]
	ch := q[0]
	if len(q) == 1 {
		delete(s.waiting, next)
	} else {
		s.waiting[next] = q[1:]
	}
	s.inUse[next]++
	close(ch)
}
