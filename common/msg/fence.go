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
	terms map[string]uint64 // live keys
	tombs Tombstones[uint64]
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
		if term, ok := f.tombs.Get(key); ok {
			floor = term
		}
	}
	if term < floor {
		return false
	}
	if f.terms == nil {
		f.terms = map[string]uint64{}
	}
	f.terms[key] = term
	f.tombs.Forget(key)
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
	f.tombs.Bury(key, term, now)
	f.expire(now)
}

// Forget drops what the fence knows of key.
func (f *Fence) Forget(key string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	delete(f.terms, key)
	f.tombs.Forget(key)
}

// Reset forgets every key and tombstone; a table calls it when a snapshot
// replaces its contents, then learns the terms again from the snapshot.
func (f *Fence) Reset() {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.terms = nil
	f.tombs.Reset()
}

// Len returns how many live keys and tombstones the fence holds.
func (f *Fence) Len() (keys, tombstones int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.terms), f.tombs.Len()
}

func (f *Fence) now() time.Time {
	if f.Now != nil {
		return f.Now()
	}
	return time.Now()
}

// expire drops tombstones that are past their lifetime or over the cap,
// oldest first. Called with mu held.
func (f *Fence) expire(now time.Time) {
	life := f.TombstoneLifetime
	if life <= 0 {
		life = DefaultTombstoneLifetime
	}
	limit := f.MaxTombstones
	if limit <= 0 {
		limit = DefaultMaxTombstones
	}
	f.tombs.Expire(now, life, limit, nil)
}
