package checker

import (
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/berthhq/berth/common/msg"
	"github.com/berthhq/berth/healthd/internal/probe"
)

func TestHistoryKeepsTheLatestTwentyNewestFirst(t *testing.T) {
	t.Parallel()
	var h History
	require.Empty(t, h.Snapshot().Results)
	start := time.Date(2026, 12, 6, 12, 0, 0, 0, time.UTC)
	for i := range 45 {
		r := probe.Result{OK: true, Latency: time.Duration(i) * time.Millisecond}
		switch i % 5 {
		case 1:
			r = probe.Result{Failure: msg.FailureSlow, Latency: time.Duration(i) * time.Millisecond, Message: fmt.Sprintf("slow %d", i)}
		case 3:
			r = probe.Result{Failure: msg.FailureTimeout, Latency: time.Second, Message: "timed out"}
		}
		h.Add(r, start.Add(time.Duration(i)*time.Second))
	}
	s := h.Snapshot()
	require.Len(t, s.Results, HistoryLen)
	require.Equal(t, int64(45), s.Probes)
	require.Equal(t, start, s.Since, "since the first probe")
	require.Equal(t, map[string]int64{msg.FailureSlow: 9, msg.FailureTimeout: 9}, s.Counts, "counts since the start, not just the ring's")
	require.Equal(t, int64(18), h.Failures())
	for i, r := range s.Results {
		n := 44 - i
		require.Equal(t, start.Add(time.Duration(n)*time.Second), r.At, "newest first")
		switch n % 5 {
		case 1:
			require.Equal(t, msg.HealthResult{At: r.At, LatencyMS: float64(n), Failure: msg.FailureSlow, Message: fmt.Sprintf("slow %d", n)}, r)
		case 3:
			require.Equal(t, msg.FailureTimeout, r.Failure)
		default:
			require.Equal(t, msg.HealthResult{At: r.At, LatencyMS: float64(n)}, r)
		}
	}
}

func TestHistorySnapshotIsBoundedInBytes(t *testing.T) {
	t.Parallel()
	var h History
	at := time.Date(2026, 12, 6, 12, 0, 0, 0, time.UTC)
	for i := range HistoryLen {
		h.Add(probe.Result{Failure: msg.FailureProtocol, Latency: 123456789, Message: strings.Repeat("é", 300)}, at.Add(time.Duration(i)*time.Second))
	}
	s := h.Snapshot()
	require.Len(t, s.Results, HistoryLen, "every result is kept")
	b, err := json.Marshal(s.Results)
	require.NoError(t, err)
	require.LessOrEqual(t, len(b), msg.MaxHealthHistoryBytes)
	require.NotEmpty(t, s.Results[0].Message, "the newest keeps its message")
	require.Empty(t, s.Results[HistoryLen-1].Message, "the oldest lost its to the bound")
	require.NoError(t, (&msg.Health{App: "web", Instance: "a1", Status: msg.StatusUnhealthy, Checker: "c", CheckedAt: at,
		History: s.Results, FailureCounts: s.Counts, Probes: s.Probes, HistorySince: s.Since}).Validate())
}

func TestHistoryAddAllocatesNothing(t *testing.T) {
	var h History
	r, at := probe.Result{Failure: msg.FailureSlow, Message: "slow"}, time.Now()
	require.Zero(t, testing.AllocsPerRun(100, func() { h.Add(r, at) }))
}

func BenchmarkHistoryAdd(b *testing.B) {
	var h History
	r, at := probe.Result{OK: true, Latency: time.Millisecond}, time.Now()
	for b.Loop() {
		h.Add(r, at)
	}
}
