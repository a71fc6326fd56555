package msg

import (
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

func failing(n int, message string) []HealthResult {
	h := make([]HealthResult, n)
	for i := range h {
		h[i] = HealthResult{At: at.Add(-time.Duration(i) * time.Second).Add(123456789), LatencyMS: 1234.567,
			Failure: FailureConnectionRefused, Message: message}
	}
	return h
}

func TestBoundHistoryFitsTheByteBound(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		history []HealthResult
		// messages is how many of the newest results keep a message.
		messages int
	}{
		{"empty", nil, 0},
		{"short messages all fit", failing(20, "connection refused"), 20},
		{"long messages: the oldest lose theirs", failing(20, strings.Repeat("m", 1000)), 8},
		{"escaped text counts as encoded", failing(20, strings.Repeat("<\"\\", 300)), 3},
		{"more than twenty: the newest twenty", failing(50, "x"), 20},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			in := append([]HealthResult(nil), tt.history...)
			got := BoundHistory(tt.history)
			require.Equal(t, in, tt.history, "the input is not changed")
			require.Len(t, got, min(len(tt.history), MaxHealthHistory), "every result is kept")
			b, err := json.Marshal(got)
			require.NoError(t, err)
			require.LessOrEqual(t, len(b), MaxHealthHistoryBytes)
			kept := 0
			for i, r := range got {
				require.LessOrEqual(t, len(r.Message), MaxHealthResultMessage)
				require.Equal(t, tt.history[i].Failure, r.Failure, "kinds are kept")
				require.Equal(t, tt.history[i].At.Truncate(time.Millisecond), r.At, "to the millisecond")
				if r.Message != "" {
					require.Equal(t, i, kept, "messages go oldest first")
					kept++
				}
			}
			require.GreaterOrEqual(t, kept, tt.messages, "messages kept")
			require.NoError(t, (&Health{App: "web", Instance: "a1", Status: StatusUnhealthy, Checker: "c", CheckedAt: at, History: got}).Validate())
		})
	}
}

func TestHealthHistoryIsValidated(t *testing.T) {
	t.Parallel()
	ok := func() *Health {
		return &Health{App: "web", Instance: "a1", Status: StatusUnhealthy, Failure: FailureSlow, Checker: "c", CheckedAt: at,
			History:       []HealthResult{{At: at, LatencyMS: 812, Failure: FailureSlow, Message: "slow: answered in 812ms, max_response_time 500ms"}, {At: at, LatencyMS: 2}},
			FailureCounts: map[string]int64{FailureSlow: 1}, Probes: 2, HistorySince: at}
	}
	require.NoError(t, ok().Validate())
	tests := []struct {
		name   string
		change func(h *Health)
		want   string
	}{
		{"too many results", func(h *Health) { h.History = failing(21, "") }, "history: has 21 results; at most 20"},
		{"no time", func(h *Health) { h.History[0].At = time.Time{} }, "history[0].at: must be set"},
		{"negative latency", func(h *Health) { h.History[1].LatencyMS = -1 }, "history[1].latency_ms: (-1) must not be negative"},
		{"unknown kind", func(h *Health) { h.History[0].Failure = "cosmic_ray" }, `history[0].failure: "cosmic_ray" is not one of`},
		{"long message", func(h *Health) { h.History[0].Message = strings.Repeat("m", MaxHealthResultMessage+1) }, "history[0].message: has 129 bytes; at most 128"},
		{"control characters", func(h *Health) { h.History[0].Message = "a\x1bb" }, "history[0].message: must be valid UTF-8 text"},
		{"over the byte bound", func(h *Health) { h.History = failing(20, strings.Repeat("m", MaxHealthResultMessage)) }, "history: has 4"},
		{"unknown count kind", func(h *Health) { h.FailureCounts["cosmic_ray"] = 1 }, `failure_counts[cosmic_ray]: "cosmic_ray" is not one of`},
		{"negative count", func(h *Health) { h.FailureCounts[FailureSlow] = -1 }, "failure_counts[slow]: (-1) must not be negative"},
		{"too many kinds", func(h *Health) {
			for i := range 20 {
				h.FailureCounts[string(rune('a'+i))] = 1
			}
		}, "failure_counts: has 21 kinds"},
		{"negative probes", func(h *Health) { h.Probes = -1 }, "probes: (-1) must not be negative"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			h := ok()
			tt.change(h)
			err := h.Validate()
			require.Error(t, err)
			require.Contains(t, err.Error(), tt.want)
		})
	}
}

// A health value with a history decodes for a reader that knows the
// fields, and for one that predates them: they are optional, and unknown
// fields are ignored. One without a history (an older checker's) decodes
// with none.
func TestHealthHistoryIsAdditive(t *testing.T) {
	t.Parallel()
	h := &Health{App: "web", Instance: "a1", Status: StatusHealthy, Checker: "c", CheckedAt: at,
		History: []HealthResult{{At: at, LatencyMS: 2.5}}, FailureCounts: map[string]int64{FailureTimeout: 3}, Probes: 40, HistorySince: at}
	b, err := Encode(h)
	require.NoError(t, err)
	got, err := DecodeAs[*Health](b)
	require.NoError(t, err)
	require.Equal(t, h.History, got.History)
	require.Equal(t, h.FailureCounts, got.FailureCounts)

	// A v1 reader from before the history: the same struct without its fields.
	type before struct {
		Header
		App, Instance, Status, Checker string
		CheckedAt                      time.Time `json:"checked_at"`
	}
	var old before
	require.NoError(t, json.Unmarshal(b, &old))
	require.Equal(t, StatusHealthy, old.Status)

	golden, err := DecodeAs[*Health]([]byte(`{"type":"berth.health.v1","app":"web","instance":"a1","status":"healthy","consecutive_successes":1,"consecutive_failures":0,"latency_ms":1,"checker":"c","instance_term":1,"generation":1,"checked_at":"2026-11-23T12:00:00Z"}`))
	require.NoError(t, err)
	require.Empty(t, golden.History)
	require.True(t, golden.HistorySince.IsZero())
	require.NotContains(t, string(mustEncode(t, golden)), "history", "no history, no field")
}

func mustEncode(t *testing.T, m Message) []byte {
	t.Helper()
	b, err := Encode(m)
	require.NoError(t, err)
	return b
}
