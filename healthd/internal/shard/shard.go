// Package shard decides which healthd checks which target: rendezvous
// (highest random weight) hashing over the live checkers, so each target
// has exactly one owner, and when a checker joins or leaves only the
// targets it gains or held move.
package shard

import (
	"hash/fnv"
	"sort"
	"time"

	"github.com/berthhq/berth/common/msg"
)

// Owner returns the checker that owns key among checkers, or "" when there
// is none.
func Owner(key string, checkers []string) string {
	best, bestScore := "", uint64(0)
	for _, c := range checkers {
		s := score(c, key)
		if best == "" || s > bestScore || s == bestScore && c < best {
			best, bestScore = c, s
		}
	}
	return best
}

func score(checker, key string) uint64 {
	h := fnv.New64a()
	_, _ = h.Write([]byte(checker))
	_, _ = h.Write([]byte{0})
	_, _ = h.Write([]byte(key))
	// fnv's low bits mix poorly for short, similar inputs: finish with a
	// 64-bit avalanche (splitmix64) so owners spread evenly.
	x := h.Sum64()
	x ^= x >> 30
	x *= 0xbf58476d1ce4e5b9
	x ^= x >> 27
	x *= 0x94d049bb133111eb
	x ^= x >> 31
	return x
}

// Live returns the ids of checkers whose last heartbeat is younger than
// ttl, sorted. A KV TTL expiry removes a dead checker's key silently (a
// watcher is not told), so liveness is read from heartbeat_at instead.
// self is always live: a checker never drops its own targets because its
// heartbeat is late to come back.
func Live(checkers map[string]*msg.Checker, self string, ttl time.Duration, now time.Time) []string {
	out := []string{self}
	for id, c := range checkers {
		if id != self && now.Sub(c.HeartbeatAt) < ttl {
			out = append(out, id)
		}
	}
	sort.Strings(out)
	return out
}
