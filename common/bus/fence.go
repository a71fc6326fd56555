package bus

import (
	"time"

	"github.com/berthhq/berth/common/msg"
)

// sealFence is what a Watcher remembers of one bucket's seals, so that an
// older sealed value copied back onto its key (a replay) is refused: the
// at of each key's last value, and of each deleted key (a tombstone) for
// lifetime. A key it does not know is taken unless its at is below floor,
// the highest at of the tombstones it has forgotten: a replay of a value
// sealed before its key's delete has an at below that delete's, so
// forgetting a tombstone (its lifetime over, or more than max of them: a
// flood of junk keys that the owner's guard deletes one by one) never lets
// it through. The floor can refuse a real write only from a writer whose
// clock is behind the one that deleted, and the owner, which sees the
// refusal, writes again above the floor (sealer.observe).
//
// A fence outlives the watch's snapshots: a key a new snapshot no longer
// has turns into a tombstone, and only a bucket created again (new
// values, new ats) starts it over (reset). Its memory is the bucket's
// live keys plus max tombstones. It is used from the watcher's goroutine
// only.
type sealFence struct {
	lifetime time.Duration
	max      int
	now      func() time.Time

	live  map[string]int64
	tombs msg.Tombstones[int64]
	floor int64
}

func newSealFence(now func() time.Time) *sealFence {
	return &sealFence{lifetime: msg.DefaultTombstoneLifetime, max: msg.DefaultMaxTombstones, now: now, live: map[string]int64{}}
}

// known returns the at a write of key must not be below: its last value's,
// its tombstone's, or the floor when the fence does not know it.
func (f *sealFence) known(key string) int64 {
	f.expire()
	if at, ok := f.live[key]; ok {
		return at
	}
	if at, ok := f.tombs.Get(key); ok {
		return at
	}
	return f.floor
}

// put reports whether a put of key sealed at at is not a replay, and then
// remembers at as the key's.
func (f *sealFence) put(key string, at int64) bool {
	if at < f.known(key) {
		return false
	}
	f.forgetTomb(key)
	f.live[key] = at
	return true
}

// del reports whether a delete of key sealed at at is not a replay, and
// then keeps at as the key's tombstone.
func (f *sealFence) del(key string, at int64) bool {
	if at < f.known(key) {
		return false
	}
	delete(f.live, key)
	f.bury(key, at)
	return true
}

// gone turns a live key that a snapshot no longer holds (deleted or
// purged while the watch was away) into a tombstone.
func (f *sealFence) gone(key string) {
	if at, ok := f.live[key]; ok {
		delete(f.live, key)
		f.bury(key, at)
	}
}

// keys calls fn with each live key.
func (f *sealFence) keys(fn func(key string)) {
	for k := range f.live {
		fn(k)
	}
}

// reset forgets everything: the bucket was created again.
func (f *sealFence) reset() {
	f.live, f.floor = map[string]int64{}, 0
	f.tombs.Reset()
}

func (f *sealFence) bury(key string, at int64) {
	f.tombs.Bury(key, at, f.now())
	f.expire()
}

func (f *sealFence) forgetTomb(key string) { f.tombs.Forget(key) }

// expire forgets the tombstones past their lifetime or over max, oldest
// first, raising the floor to their ats.
func (f *sealFence) expire() {
	f.tombs.Expire(f.now(), f.lifetime, f.max, func(_ string, at int64) { f.floor = max(f.floor, at) })
}
