package msg

import (
	"encoding/json"
	"strconv"
	"time"

	"github.com/berthhq/berth/common/spec"
)

// Bounds of a health value's history (Health.History). A value holds at
// most MaxHealthHistory results, each message at most
// MaxHealthResultMessage bytes, and the encoded history at most
// MaxHealthHistoryBytes: BoundHistory drops the messages of the oldest
// results first to fit. Twenty results without messages always fit, so
// every result is kept.
const (
	MaxHealthHistory       = 20
	MaxHealthResultMessage = 128
	MaxHealthHistoryBytes  = 3072
)

// BoundHistory returns h (newest first) within the bounds above: at most
// MaxHealthHistory results, each message cut to MaxHealthResultMessage
// bytes, then, while the encoded history is over MaxHealthHistoryBytes,
// the messages of the oldest results dropped, then cut. It copies h
// before changing anything.
func BoundHistory(h []HealthResult) []HealthResult {
	if len(h) > MaxHealthHistory {
		h = h[:MaxHealthHistory]
	}
	out := make([]HealthResult, len(h))
	size := 1 // "[" and "]" less one comma
	sizes := make([]int, len(h))
	for i, r := range h {
		r.At = r.At.UTC().Truncate(time.Millisecond)
		r.Message = Truncate(r.Message, MaxHealthResultMessage)
		out[i] = r
		sizes[i] = resultSize(r)
		size += sizes[i] + 1
	}
	for i := len(out) - 1; i >= 0 && size > MaxHealthHistoryBytes; i-- {
		if out[i].Message == "" {
			continue
		}
		// Keep what of the message fits, else drop it.
		over := size - MaxHealthHistoryBytes
		if keep := len(out[i].Message) - over - 8; keep >= 16 { // 8: room for escapes
			out[i].Message = Truncate(out[i].Message, keep)
		} else {
			out[i].Message = ""
		}
		n := resultSize(out[i])
		size += n - sizes[i]
		sizes[i] = n
	}
	return out
}

// resultSize is r's encoded size in bytes.
func resultSize(r HealthResult) int {
	b, err := json.Marshal(r)
	if err != nil {
		return 0
	}
	return len(b)
}

// validateHistory checks a health value's history and counts, as the
// bounds above allow them.
func validateHistory(es *spec.Errors, m *Health) {
	if len(m.History) > MaxHealthHistory {
		es.Add("history", "has %d results; at most %d", len(m.History), MaxHealthHistory)
	}
	for i, r := range m.History {
		if i >= MaxHealthHistory {
			break
		}
		p := spec.Index("history", i)
		when(es, p+".at", r.At)
		if r.LatencyMS < 0 {
			es.Add(p+".latency_ms", "(%g) must not be negative", r.LatencyMS)
		}
		if r.Failure != FailureNone {
			oneOf(es, p+".failure", r.Failure, Failures)
		}
		if len(r.Message) > MaxHealthResultMessage {
			es.Add(p+".message", "has %d bytes; at most %d", len(r.Message), MaxHealthResultMessage)
		} else {
			text(es, p+".message", r.Message)
		}
	}
	if len(m.History) <= MaxHealthHistory {
		if b, err := json.Marshal(m.History); err == nil && len(b) > MaxHealthHistoryBytes {
			es.Add("history", "has %d bytes encoded; at most %d", len(b), MaxHealthHistoryBytes)
		}
	}
	if len(m.FailureCounts) > len(Failures) {
		es.Add("failure_counts", "has %d kinds; at most %d", len(m.FailureCounts), len(Failures))
		return
	}
	for _, k := range sortedKeys(m.FailureCounts) {
		oneOf(es, spec.Key("failure_counts", k), k, Failures)
		if n := m.FailureCounts[k]; n < 0 {
			es.Add(spec.Key("failure_counts", k), "(%s) must not be negative", strconv.FormatInt(n, 10))
		}
	}
	if m.Probes < 0 {
		es.Add("probes", "(%d) must not be negative", m.Probes)
	}
}
