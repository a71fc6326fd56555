package metric

import (
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/stretchr/testify/require"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"github.com/berthhq/berth/lbagent/internal/accesslog"
)

func TestAppTrafficCounts(t *testing.T) {
	t.Parallel()
	at := NewAppTraffic(AppTrafficOptions{MaxApps: 10})
	for range 3 {
		at.Add(accesslog.Entry{App: "web", Status: 200, RequestSeconds: 0.00390625})
	}
	at.Add(accesslog.Entry{App: "web", Status: 404, RequestSeconds: 0.00048828125})
	at.Add(accesslog.Entry{App: "web", Status: 502, RequestSeconds: 0.125, ConnectErrors: 1})
	at.Add(accesslog.Entry{App: "web", Status: 200, RequestSeconds: 32, ConnectErrors: 2}) // retried twice, then answered
	at.Add(accesslog.Entry{App: "web", Status: 101, RequestSeconds: -1})                   // no request_time: not observed
	at.Add(accesslog.Entry{App: "api", Status: 301, RequestSeconds: 0.0009765625})
	at.Add(accesslog.Entry{Status: 404, RequestSeconds: 0.001}) // unrouted: no series

	want := `
# HELP berth_lbagent_requests_total Requests nginx served, by app and status class (1xx to 5xx), from the access log.
# TYPE berth_lbagent_requests_total counter
berth_lbagent_requests_total{app="api",code_class="1xx"} 0
berth_lbagent_requests_total{app="api",code_class="2xx"} 0
berth_lbagent_requests_total{app="api",code_class="3xx"} 1
berth_lbagent_requests_total{app="api",code_class="4xx"} 0
berth_lbagent_requests_total{app="api",code_class="5xx"} 0
berth_lbagent_requests_total{app="web",code_class="1xx"} 1
berth_lbagent_requests_total{app="web",code_class="2xx"} 4
berth_lbagent_requests_total{app="web",code_class="3xx"} 0
berth_lbagent_requests_total{app="web",code_class="4xx"} 1
berth_lbagent_requests_total{app="web",code_class="5xx"} 1
# HELP berth_lbagent_upstream_connect_errors_total Upstream connection attempts that failed (refused, unreachable, timed out, no live server), by app.
# TYPE berth_lbagent_upstream_connect_errors_total counter
berth_lbagent_upstream_connect_errors_total{app="api"} 0
berth_lbagent_upstream_connect_errors_total{app="web"} 3
`
	require.NoError(t, testutil.CollectAndCompare(at, strings.NewReader(want), RequestsName, ConnectErrorsName))

	wantDur := `
# HELP berth_lbagent_request_duration_seconds Request duration as nginx logs it ($request_time: first byte read from the client to last byte sent), by app.
# TYPE berth_lbagent_request_duration_seconds histogram
berth_lbagent_request_duration_seconds_bucket{app="api",le="0.001"} 1
berth_lbagent_request_duration_seconds_bucket{app="api",le="0.0025"} 1
berth_lbagent_request_duration_seconds_bucket{app="api",le="0.005"} 1
berth_lbagent_request_duration_seconds_bucket{app="api",le="0.01"} 1
berth_lbagent_request_duration_seconds_bucket{app="api",le="0.025"} 1
berth_lbagent_request_duration_seconds_bucket{app="api",le="0.05"} 1
berth_lbagent_request_duration_seconds_bucket{app="api",le="0.1"} 1
berth_lbagent_request_duration_seconds_bucket{app="api",le="0.25"} 1
berth_lbagent_request_duration_seconds_bucket{app="api",le="0.5"} 1
berth_lbagent_request_duration_seconds_bucket{app="api",le="1"} 1
berth_lbagent_request_duration_seconds_bucket{app="api",le="2.5"} 1
berth_lbagent_request_duration_seconds_bucket{app="api",le="5"} 1
berth_lbagent_request_duration_seconds_bucket{app="api",le="10"} 1
berth_lbagent_request_duration_seconds_bucket{app="api",le="30"} 1
berth_lbagent_request_duration_seconds_bucket{app="api",le="+Inf"} 1
berth_lbagent_request_duration_seconds_sum{app="api"} 0.0009765625
berth_lbagent_request_duration_seconds_count{app="api"} 1
berth_lbagent_request_duration_seconds_bucket{app="web",le="0.001"} 1
berth_lbagent_request_duration_seconds_bucket{app="web",le="0.0025"} 1
berth_lbagent_request_duration_seconds_bucket{app="web",le="0.005"} 4
berth_lbagent_request_duration_seconds_bucket{app="web",le="0.01"} 4
berth_lbagent_request_duration_seconds_bucket{app="web",le="0.025"} 4
berth_lbagent_request_duration_seconds_bucket{app="web",le="0.05"} 4
berth_lbagent_request_duration_seconds_bucket{app="web",le="0.1"} 4
berth_lbagent_request_duration_seconds_bucket{app="web",le="0.25"} 5
berth_lbagent_request_duration_seconds_bucket{app="web",le="0.5"} 5
berth_lbagent_request_duration_seconds_bucket{app="web",le="1"} 5
berth_lbagent_request_duration_seconds_bucket{app="web",le="2.5"} 5
berth_lbagent_request_duration_seconds_bucket{app="web",le="5"} 5
berth_lbagent_request_duration_seconds_bucket{app="web",le="10"} 5
berth_lbagent_request_duration_seconds_bucket{app="web",le="30"} 5
berth_lbagent_request_duration_seconds_bucket{app="web",le="+Inf"} 6
berth_lbagent_request_duration_seconds_sum{app="web"} 32.13720703125
berth_lbagent_request_duration_seconds_count{app="web"} 6
`
	require.NoError(t, testutil.CollectAndCompare(at, strings.NewReader(wantDur), DurationName))
}

func TestAppTrafficCapAndDropAccounting(t *testing.T) {
	t.Parallel()
	core, logs := observer.New(zapcore.WarnLevel)
	at := NewAppTraffic(AppTrafficOptions{MaxApps: 2, Logger: zap.New(core)})
	now := time.Unix(1000, 0)
	at.now = func() time.Time { return now }

	for _, app := range []string{"a", "b", "c", "c", "d"} {
		at.Add(accesslog.Entry{App: app, Status: 200, RequestSeconds: 0.01})
	}
	require.Equal(t, 10, testutil.CollectAndCount(at, RequestsName), "two apps of five classes")
	require.Equal(t, 2, testutil.CollectAndCount(at, DurationName))
	require.InDelta(t, 2, testutil.ToFloat64(at.dropped), 0, "c and d refused, each counted once")
	require.InDelta(t, 2, testutil.ToFloat64(at.refusedG), 0)
	require.InDelta(t, 2, testutil.ToFloat64(at.exported), 0)
	require.InDelta(t, 1, testutil.ToFloat64(at.requests.WithLabelValues("a", "2xx")), 0)

	// Logged once, with the name; d, refused within the minute, is not logged again.
	require.Equal(t, 1, logs.Len())
	entry := logs.All()[0]
	require.Equal(t, int64(2), entry.ContextMap()["max_apps"])
	require.Equal(t, []any{"c"}, entry.ContextMap()["some_apps_refused"])
	now = now.Add(2 * time.Minute)
	at.Add(accesslog.Entry{App: "e", Status: 200})
	require.Equal(t, 2, logs.Len(), "logged again after a minute")
	require.Equal(t, []any{"c", "d", "e"}, logs.All()[1].ContextMap()["some_apps_refused"])

	// b is deleted: its series go, and a refused app that is still known
	// gets the free slot; refused apps gone from the state are forgotten.
	at.Retain([]string{"a", "d"})
	require.Equal(t, 10, testutil.CollectAndCount(at, RequestsName))
	require.Equal(t, 2, testutil.CollectAndCount(at, ConnectErrorsName))
	require.InDelta(t, 0, testutil.ToFloat64(at.refusedG), 0)
	require.InDelta(t, 3, testutil.ToFloat64(at.dropped), 0, "a counter: drops stay counted")
	var apps []string
	for app := range at.apps {
		apps = append(apps, app)
	}
	require.ElementsMatch(t, []string{"a", "d"}, apps)
	require.InDelta(t, 1, testutil.ToFloat64(at.requests.WithLabelValues("a", "2xx")), 0, "a kept its count")
	require.InDelta(t, 0, testutil.ToFloat64(at.requests.WithLabelValues("d", "2xx")), 0, "d starts at zero")
}

func TestAppTrafficRetainDeletesEverySeries(t *testing.T) {
	t.Parallel()
	at := NewAppTraffic(AppTrafficOptions{MaxApps: 1000, Native: true})
	at.Retain([]string{"web", "api"})
	require.Equal(t, 10, testutil.CollectAndCount(at, RequestsName), "known apps start at zero")
	at.Add(accesslog.Entry{App: "web", Status: 503, RequestSeconds: 0.1, ConnectErrors: 1})
	at.Add(accesslog.Entry{App: "gone", Status: 200, RequestSeconds: 0.1}) // a late line of a deleted app
	require.Equal(t, 15, testutil.CollectAndCount(at, RequestsName))

	at.Retain([]string{"api"})
	require.Equal(t, 5, testutil.CollectAndCount(at, RequestsName))
	require.Equal(t, 1, testutil.CollectAndCount(at, DurationName))
	require.Equal(t, 1, testutil.CollectAndCount(at, ConnectErrorsName))
	at.Retain(nil)
	require.Zero(t, testutil.CollectAndCount(at, RequestsName))
	require.Zero(t, testutil.CollectAndCount(at, DurationName))
	require.Zero(t, testutil.CollectAndCount(at, ConnectErrorsName))

	// A Set registers it beside the lbagent's own metrics.
	set := New(Sources{})
	require.NoError(t, set.Register(at))
	require.Error(t, set.Register(at), "registered once")
}

// TestAppTrafficNativeBesideBuckets: with Native, one histogram carries
// both the buckets (what a text scrape shows) and the native buckets (what
// a protobuf scrape adds).
func TestAppTrafficNativeBesideBuckets(t *testing.T) {
	t.Parallel()
	at := NewAppTraffic(AppTrafficOptions{MaxApps: 10, Native: true})
	for _, s := range []float64{0.003, 0.02, 0.02, 0.4} {
		at.Add(accesslog.Entry{App: "web", Status: 200, RequestSeconds: s})
	}
	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(at)
	families, err := reg.Gather()
	require.NoError(t, err)
	var found bool
	for _, f := range families {
		if f.GetName() != DurationName {
			continue
		}
		h := f.GetMetric()[0].GetHistogram()
		require.Len(t, h.GetBucket(), len(DurationBuckets), "the buckets")
		require.Equal(t, uint64(4), h.GetSampleCount())
		require.NotEmpty(t, h.GetPositiveSpan(), "the native buckets")
		require.Equal(t, int32(3), h.GetSchema(), "factor 1.1: schema 3")
		found = true
	}
	require.True(t, found)
}

func TestOutlierSeriesAreBoundedLikeTheOthers(t *testing.T) {
	t.Parallel()
	tr := NewAppTraffic(AppTrafficOptions{MaxApps: 1})
	tr.Retain([]string{"web"}) // api has no series: the cap of 1 is reached
	tr.Ejection("web")
	tr.Ejection("api")
	tr.Ejected(map[string]int{"web": 1, "api": 2})
	reg := prometheus.NewPedanticRegistry()
	require.NoError(t, reg.Register(tr))
	require.NoError(t, testutil.GatherAndCompare(reg, strings.NewReader(`
# HELP berth_lbagent_outlier_ejected Instances out of this nginx's rotation now for failing real traffic (health.outlier), by app.
# TYPE berth_lbagent_outlier_ejected gauge
berth_lbagent_outlier_ejected{app="web"} 1
# HELP berth_lbagent_outlier_ejections_total Instances this nginx took out of rotation for failing real traffic (health.outlier), by app.
# TYPE berth_lbagent_outlier_ejections_total counter
berth_lbagent_outlier_ejections_total{app="web"} 1
`), EjectionsName, EjectedName))
	tr.Ejected(map[string]int{})
	require.Equal(t, 0.0, testutil.ToFloat64(tr.ejected.WithLabelValues("web")), "back to 0 when it returns")
	tr.Retain(nil)
	n, err := testutil.GatherAndCount(reg, EjectionsName, EjectedName)
	require.NoError(t, err)
	require.Equal(t, 0, n, "an app gone loses its series")
}
