package msg

import (
	"sync"
	"time"
)

// Defaults of a Fence's tombstones.
const (
	// DefaultTombstoneLifetime is how long a deleted key's term is kept:
	// twice the longest leader lease (5m), so a deposed leader that has not
	// yet noticed its lease ended cannot resurrect what its successor deleted.
	DefaultTombstoneLifetime = 10 * time.Minute
	// DefaultMaxTombstones bounds the deleted keys a fence remembers at once
	// (a few MB at most); past it the oldest are forgotten first.
	DefaultMaxTombstones = 16384
)

// Fence drops writes from a deposed leader: it remembers the highest term
// seen per key and refuses lower ones.
//
// A delete is fenced like a put, in the same ordered stream. A KV delete
// marker carries no value and so no term: the fence cannot tell the current
// leader's delete from a deposed one's, or from anyone else's. It applies
// every delete, because refusing one would keep a removed instance routable
// (traffic to a dead address) until the next snapshot, while a wrongly
// applied delete is repaired by the current leader's next put. What the
// fence does keep is the order: Delete turns the key's term into a
// tombstone, so a put after the delete with a lower term than any seen
// before it (a deposed leader resurrecting the key) is dropped, exactly as
// if the delete had been a put at the key's term.
//
// The tombstone has a bounded lifetime (TombstoneLifetime), after which the
// key is forgotten and any put is accepted again; at most MaxTombstones are
// kept, the oldest forgotten first; Reset, called on each snapshot, drops
// everything. So the fence's memory is bounded by the live keys plus
// MaxTombstones, and a forged high term (terms are self-declared) blocks the
// real writer's puts to that key only until the key is deleted and its
// tombstone expires, or until the next snapshot re-learns the terms from
// what the bucket really holds, whichever comes first.
//
// The zero Fence is ready to use. Set its fields before the first call.
// It is safe for concurrent use.
type Fence struct {
	// TombstoneLifetime is how long a deleted key's term is kept (zero:
	// DefaultTombstoneLifetime).
	TombstoneLifetime time.Duration
	// MaxTombstones bounds the tombstones kept (zero: DefaultMaxTombstones).
	MaxTombstones int
	// Now is the clock (nil: time.Now).
	Now func() time.Time

	mu    sync.Mutex
	terms map[string]uint64    // live keys
	tombs map[string]tombstone // deleted keys
	queue []queued             // tombstones in the order they were made, with stale entries
	head  int                  // queue[:head] is consumed
	seq   uint64
}

type tombstone struct {
	term uint64
	at   time.Time
	seq  uint64
}

type queued struct {
	key string
	seq uint64
}

// Accept reports whether a write with term may be applied to key, and
// raises the key's term when it is higher. A write with term 0 (not written
// by a leader) is always accepted.
func (f *Fence) Accept(key string, term uint64) bool {
	if term == 0 {
		return true
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	now := f.now()
	f.expire(now)
	floor, live := f.terms[key]
	if !live {
		if tb, ok := f.tombs[key]; ok {
			floor = tb.term
		}
	}
	if term < floor {
		return false
	}
	if f.terms == nil {
		f.terms = map[string]uint64{}
	}
	f.terms[key] = term
	delete(f.tombs, key)
	return true
}

// Delete records that key was deleted: its term, if it has one, is kept as
// a tombstone for TombstoneLifetime, so that a lower-term put after the
// delete is still refused. A delete itself is always applied (see Fence).
func (f *Fence) Delete(key string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	now := f.now()
	term, live := f.terms[key]
	if !live {
		// Nothing fenced, or already a tombstone: a second delete does not
		// extend its lifetime.
		f.expire(now)
		return
	}
	delete(f.terms, key)
	if f.tombs == nil {
		f.tombs = map[string]tombstone{}
	}
	f.seq++
	f.tombs[key] = tombstone{term: term, at: now, seq: f.seq}
	f.queue = append(f.queue, queued{key: key, seq: f.seq})
	f.expire(now)
}

// Forget drops what the fence knows of key.
func (f *Fence) Forget(key string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	delete(f.terms, key)
	delete(f.tombs, key)
}

// Reset forgets every key and tombstone; a table calls it when a snapshot
// replaces its contents, then learns the terms again from the snapshot.
func (f *Fence) Reset() {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.terms, f.tombs, f.queue, f.head = nil, nil, nil, 0
}

// Len returns how many live keys and tombstones the fence holds.
func (f *Fence) Len() (keys, tombstones int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.terms), len(f.tombs)
}

func (f *Fence) now() time.Time {
	if f.Now != nil {
		return f.Now()
	}
	return time.Now()
}

// expire drops tombstones that are past their lifetime or over the cap,
// oldest first, and the queue entries of tombstones already gone. Called
// with mu held; amortised O(1) per call.
func (f *Fence) expire(now time.Time) {
	life := f.TombstoneLifetime
	if life <= 0 {
		life = DefaultTombstoneLifetime
	}
	limit := f.MaxTombstones
	if limit <= 0 {
		limit = DefaultMaxTombstones
	}
	for f.head < len(f.queue) {
		q := f.queue[f.head]
		tb, ok := f.tombs[q.key]
		switch {
		case !ok || tb.seq != q.seq: // stale: the key was put or deleted again since
		case len(f.tombs) > limit || now.Sub(tb.at) >= life:
			delete(f.tombs, q.key)
		default:
			f.compact()
			return
		}
		f.queue[f.head] = queued{}
		f.head++
	}
	f.queue, f.head = f.queue[:0], 0
}

// compact rewrites the queue with only its live entries once stale ones
// (keys put again, or deleted again, behind a tombstone still alive at the
// front) make up most of it, so its length stays within twice the
// tombstones held.
func (f *Fence) compact() {
	pending := len(f.queue) - f.head
	if pending <= 2*len(f.tombs)+64 && f.head <= pending {
		return
	}
	live := make([]queued, 0, len(f.tombs))
	for _, q := range f.queue[f.head:] {
		if tb, ok := f.tombs[q.key]; ok && tb.seq == q.seq {
			live = append(live, q)
		}
	}
	f.queue, f.head = live, 0
}
