package checker

import (
	"sync"
	"time"

	"github.com/berthhq/berth/common/msg"
	"github.com/berthhq/berth/healthd/internal/probe"
)

// HistoryLen is how many of a target's latest probes its history keeps.
const HistoryLen = msg.MaxHealthHistory

// History is one target's latest probes, in a fixed ring of HistoryLen,
// and its failures counted by kind, since the checker's first probe of it
// (Since): a checker that restarts or takes a target over starts a fresh
// one. Adding a probe allocates nothing. Safe for concurrent use: the
// runner adds, the publisher reads.
type History struct {
	mu     sync.Mutex
	ring   [HistoryLen]probed
	next   int // where the next probe goes
	n      int // probes in the ring
	probes int64
	since  time.Time
	// counts are the failures by kind, by index in msg.Failures.
	counts [16]int64
}

// probed is one probe in the ring.
type probed struct {
	at  time.Time
	res probe.Result
}

// failureIndex is each kind's index in History.counts.
var failureIndex = func() map[string]int {
	m := make(map[string]int, len(msg.Failures))
	for i, k := range msg.Failures {
		m[k] = i
	}
	return m
}()

// Add records a probe that finished at.
func (h *History) Add(r probe.Result, at time.Time) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.probes == 0 {
		h.since = at
	}
	h.probes++
	h.ring[h.next] = probed{at: at, res: r}
	h.next = (h.next + 1) % HistoryLen
	h.n = min(h.n+1, HistoryLen)
	if !r.OK {
		if i, ok := failureIndex[r.Failure]; ok && i < len(h.counts) {
			h.counts[i]++
		}
	}
}

// Failures returns how many probes failed since Since, all kinds together.
func (h *History) Failures() int64 {
	h.mu.Lock()
	defer h.mu.Unlock()
	var n int64
	for _, c := range h.counts {
		n += c
	}
	return n
}

// Snapshot is a history as the health value carries it.
type Snapshot struct {
	// Results are the latest probes, newest first, within msg's bounds.
	Results []msg.HealthResult
	// Counts are the failures by kind; nil when none failed.
	Counts map[string]int64
	// Probes counts every probe since Since.
	Probes int64
	Since  time.Time
}

// Snapshot returns the history, newest first, bounded as a health value
// allows (msg.BoundHistory).
func (h *History) Snapshot() Snapshot {
	h.mu.Lock()
	out := Snapshot{Results: make([]msg.HealthResult, 0, h.n), Probes: h.probes, Since: h.since}
	for i := 1; i <= h.n; i++ {
		e := h.ring[(h.next-i+HistoryLen)%HistoryLen]
		out.Results = append(out.Results, msg.HealthResult{At: e.at, LatencyMS: float64(e.res.Latency.Microseconds()) / 1000,
			Failure: e.res.Failure, Message: e.res.Message})
	}
	for i, c := range h.counts {
		if c > 0 && i < len(msg.Failures) {
			if out.Counts == nil {
				out.Counts = map[string]int64{}
			}
			out.Counts[msg.Failures[i]] = c
		}
	}
	h.mu.Unlock()
	out.Results = msg.BoundHistory(out.Results)
	return out
}
