// Package view keeps a typed, in-memory copy of one KV bucket, fed by a
// bus watcher: it replaces its contents on each snapshot, applies updates,
// drops writes from a lower leader term per key (fencing, deletes included,
// in bounded memory: see msg.Fence), remembers the bucket revision it
// reflects, and says whether the first complete snapshot has arrived, so a
// reader never acts on a partial initial load.
package view

import (
	"maps"
	"sync"
	"time"

	"github.com/berthhq/berth/common/bus"
	"github.com/berthhq/berth/common/msg"
)

// Table is the copy of one bucket. It is safe for concurrent use.
type Table[T any] struct {
	term   func(T) uint64
	notify func()

	mu     sync.Mutex
	rows   map[string]T
	rev    uint64
	loaded bool
	fence  msg.Fence
	fenced uint64
	// carry, when set, keeps what a re-snapshot lacks (Carry); carried
	// holds each such key's deadline.
	carry   time.Duration
	now     func() time.Time
	carried map[string]time.Time
}

// NewTable returns an empty table. term returns a value's leader term (0:
// not fenced); notify, when not nil, is called after every change.
func NewTable[T any](term func(T) uint64, notify func()) *Table[T] {
	if notify == nil {
		notify = func() {}
	}
	return &Table[T]{term: term, notify: notify, rows: map[string]T{}}
}

// Carry makes every snapshot after the first keep, for d, the rows it
// lacks, until an update of the key (a put or a delete) or d passes
// (DropCarried). A re-snapshot (a NATS reset, a watcher that
// reconnected) can arrive before the bucket's owner has put everything
// back: a key it lacks is not known to be deleted. now is the clock (nil:
// time.Now). Call it before the table is fed.
func (t *Table[T]) Carry(d time.Duration, now func() time.Time) {
	if now == nil {
		now = time.Now
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	t.carry, t.now, t.carried = d, now, map[string]time.Time{}
}

// DropCarried drops the carried rows whose time has passed, and says
// whether it dropped any and when the next carried row's time passes
// (zero: none is left).
func (t *Table[T]) DropCarried() (dropped bool, next time.Time) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if len(t.carried) == 0 {
		return false, time.Time{}
	}
	now := t.now()
	for k, deadline := range t.carried {
		if !now.Before(deadline) {
			delete(t.carried, k)
			delete(t.rows, k)
			dropped = true
			continue
		}
		if next.IsZero() || deadline.Before(next) {
			next = deadline
		}
	}
	return dropped, next
}

// Carried counts the rows kept from before the last snapshot (Carry).
func (t *Table[T]) Carried() int {
	t.mu.Lock()
	defer t.mu.Unlock()
	return len(t.carried)
}

// Loaded reports whether a complete snapshot has arrived.
func (t *Table[T]) Loaded() bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.loaded
}

// Fenced counts writes dropped for coming from a lower term.
func (t *Table[T]) Fenced() uint64 {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.fenced
}

// Rows returns a copy of the rows and the bucket revision they reflect.
func (t *Table[T]) Rows() (map[string]T, uint64) {
	t.mu.Lock()
	defer t.mu.Unlock()
	return maps.Clone(t.rows), t.rev
}

// Get returns one row.
func (t *Table[T]) Get(key string) (T, bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	v, ok := t.rows[key]
	return v, ok
}

// Read calls f with the rows and revision under the table's lock, for
// readers that only look: f must not keep the map or call the table.
func (t *Table[T]) Read(f func(rows map[string]T, rev uint64)) {
	t.mu.Lock()
	defer t.mu.Unlock()
	f(t.rows, t.rev)
}

// Handler returns the bus handler that feeds the table.
func (t *Table[T]) Handler() bus.Handler[T] {
	return bus.HandlerFuncs[T]{OnSnapshot: t.snapshot, OnUpdate: t.update}
}

func (t *Table[T]) snapshot(evs []bus.Event[T], rev uint64) {
	t.mu.Lock()
	// A snapshot is the bucket's whole content: what the fence knew is
	// superseded, and it learns each key's term again from it. This bounds
	// how long a forged term outlives the value that carried it.
	t.fence.Reset()
	rows := make(map[string]T, len(evs))
	for _, e := range evs {
		if !t.fence.Accept(e.Key, t.term(e.Value)) {
			t.fenced++
			continue
		}
		rows[e.Key] = e.Value
	}
	if t.loaded && t.carry > 0 {
		deadline := t.now().Add(t.carry)
		for k, v := range t.rows {
			if _, ok := rows[k]; ok {
				delete(t.carried, k)
				continue
			}
			rows[k] = v
			if _, already := t.carried[k]; !already { // carried before: its first deadline stands
				t.carried[k] = deadline
			}
		}
	}
	t.rows, t.rev, t.loaded = rows, rev, true
	t.mu.Unlock()
	t.notify()
}

func (t *Table[T]) update(e bus.Event[T]) {
	t.mu.Lock()
	t.rev = max(t.rev, e.Revision)
	switch {
	case e.Op == bus.OpDelete:
		// Applied, but through the fence, which keeps the key's term for a
		// while so that a lower-term put after it is dropped (see msg.Fence).
		t.fence.Delete(e.Key)
		delete(t.rows, e.Key)
		delete(t.carried, e.Key)
	case t.fence.Accept(e.Key, t.term(e.Value)):
		t.rows[e.Key] = e.Value
		delete(t.carried, e.Key)
	default:
		t.fenced++
		t.mu.Unlock()
		return
	}
	t.mu.Unlock()
	t.notify()
}

// AppTerm, InstanceTerm and NoTerm are the term functions of the contract's tables.
func AppTerm(a *msg.App) uint64 { return a.Term }

// InstanceTerm returns an instance record's term.
func InstanceTerm(i *msg.Instance) uint64 { return i.Term }

// NoTerm is for values not written by the leader (health, checkers, agents).
func NoTerm[T any](T) uint64 { return 0 }

// KeepOnDelete returns h with deletes dropped, counted by dropped: for a
// bucket whose writers never delete (records expire by TTL and readers
// age them by their own time), where a delete can only come from another
// NATS client, and must not make a live record vanish. A snapshot still
// replaces everything.
func KeepOnDelete[T any](h bus.Handler[T], dropped func(key string)) bus.Handler[T] {
	return bus.HandlerFuncs[T]{
		OnSnapshot: h.Snapshot,
		OnUpdate: func(e bus.Event[T]) {
			if e.Op == bus.OpDelete {
				if dropped != nil {
					dropped(e.Key)
				}
				return
			}
			h.Update(e)
		},
	}
}
