package main

import (
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/stretchr/testify/require"
	"go.uber.org/zap"

	"github.com/berthhq/berth/healthd/internal/checker"
	"github.com/berthhq/berth/healthd/internal/probe"
)

// sampleCounts returns each app's probe count in the duration histogram.
func sampleCounts(t *testing.T, m *metrics) map[string]uint64 {
	t.Helper()
	mfs, err := m.reg.Gather()
	require.NoError(t, err)
	out := map[string]uint64{}
	for _, mf := range mfs {
		if mf.GetName() != "berth_healthd_probe_duration_seconds" {
			continue
		}
		for _, s := range mf.GetMetric() {
			out[s.GetLabel()[0].GetValue()] = s.GetHistogram().GetSampleCount()
		}
	}
	return out
}

func TestProbeDurationsAreBoundedByApp(t *testing.T) {
	t.Parallel()
	d := newProbeDurations(2, zap.NewNop())
	m := newMetrics(d)
	for _, key := range []string{"web.a", "web.b", "api.a", "batch.a", "cron.a", "web.a"} {
		d.observe(key, 0.01)
	}
	require.Equal(t, map[string]uint64{"web": 3, "api": 1, OtherApps: 2}, sampleCounts(t, m), "two apps of their own, the others together")
	require.Equal(t, 2.0, testutil.ToFloat64(d.dropped), "batch and cron")

	// web is no longer probed here: its series goes, and its slot goes to
	// the next app probed.
	target := func(key string) checker.Target { return checker.Target{Target: probe.Target{Key: key}} }
	d.retain(appsOf([]checker.Target{target("api.a"), target("api.b"), target("batch.a"), target("cron.a")}))
	require.Equal(t, map[string]uint64{"api": 1}, sampleCounts(t, m))
	require.Zero(t, testutil.ToFloat64(d.dropped))
	d.observe("cron.a", 0.02)
	d.observe("batch.a", 0.02)
	require.Equal(t, map[string]uint64{"api": 1, "cron": 1, OtherApps: 1}, sampleCounts(t, m))
	require.Equal(t, 1.0, testutil.ToFloat64(d.dropped))

	n, err := testutil.GatherAndCount(m.reg, "berth_healthd_probe_duration_seconds")
	require.NoError(t, err)
	require.Equal(t, 3, n, "series are bounded by --metrics-max-apps + 1")
}

func TestProbeDurationsWithNoAppSeries(t *testing.T) {
	t.Parallel()
	d := newProbeDurations(0, zap.NewNop())
	m := newMetrics(d)
	d.observe("web.a", 0.01)
	d.observe("api.a", 0.01)
	require.Equal(t, map[string]uint64{OtherApps: 2}, sampleCounts(t, m))
	require.True(t, strings.HasPrefix(OtherApps, "_"), "no app can be named so")
}

func BenchmarkProbeDurationsObserve(b *testing.B) {
	d := newProbeDurations(1000, zap.NewNop())
	for b.Loop() {
		d.observe("web.a1b2c3", 0.002)
	}
}
