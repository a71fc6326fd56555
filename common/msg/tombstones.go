package msg

import "time"

// Tombstones are deleted keys, each remembered with a value V (a term, a
// seal's at) for a bounded time and in a bounded number, the oldest
// forgotten first: the memory both a term fence (Fence) and a seal fence
// (common/bus) keep of deletes. The zero Tombstones is ready to use. It
// is not safe for concurrent use: its owner locks.
type Tombstones[V any] struct {
	tombs map[string]tomb[V]
	queue []queued // tombstones in the order they were made, with stale entries
	head  int      // queue[:head] is consumed
	seq   uint64
}

type tomb[V any] struct {
	v    V
	made time.Time
	seq  uint64
}

type queued struct {
	key string
	seq uint64
}

// Bury makes key a tombstone holding v, made at now (a key buried again
// starts a new lifetime).
func (t *Tombstones[V]) Bury(key string, v V, now time.Time) {
	if t.tombs == nil {
		t.tombs = map[string]tomb[V]{}
	}
	t.seq++
	t.tombs[key] = tomb[V]{v: v, made: now, seq: t.seq}
	t.queue = append(t.queue, queued{key: key, seq: t.seq})
}

// Get returns key's tombstone value, if it is one.
func (t *Tombstones[V]) Get(key string) (V, bool) {
	tb, ok := t.tombs[key]
	return tb.v, ok
}

// Forget drops key's tombstone (the key was put again).
func (t *Tombstones[V]) Forget(key string) { delete(t.tombs, key) }

// Len counts the tombstones.
func (t *Tombstones[V]) Len() int { return len(t.tombs) }

// Reset forgets every tombstone.
func (t *Tombstones[V]) Reset() { t.tombs, t.queue, t.head = nil, nil, 0 }

// Expire forgets the tombstones made life or more before now, and the
// oldest while more than max are held, calling forgot (when not nil) with
// each; amortised O(1) a call.
func (t *Tombstones[V]) Expire(now time.Time, life time.Duration, max int, forgot func(key string, v V)) {
	for t.head < len(t.queue) {
		q := t.queue[t.head]
		tb, ok := t.tombs[q.key]
		switch {
		case !ok || tb.seq != q.seq: // stale: the key was put or buried again since
		case len(t.tombs) > max || now.Sub(tb.made) >= life:
			delete(t.tombs, q.key)
			if forgot != nil {
				forgot(q.key, tb.v)
			}
		default:
			t.compact()
			return
		}
		t.queue[t.head] = queued{}
		t.head++
	}
	t.queue, t.head = t.queue[:0], 0
}

// compact rewrites the queue with only its live entries once stale ones
// (keys put again, or buried again, behind a tombstone still alive at the
// front) make up most of it, so its length stays within about twice the
// tombstones held.
func (t *Tombstones[V]) compact() {
	pending := len(t.queue) - t.head
	if pending <= 2*len(t.tombs)+64 && t.head <= pending {
		return
	}
	live := make([]queued, 0, len(t.tombs))
	for _, q := range t.queue[t.head:] {
		if tb, ok := t.tombs[q.key]; ok && tb.seq == q.seq {
			live = append(live, q)
		}
	}
	t.queue, t.head = live, 0
}
