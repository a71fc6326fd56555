package metric

import (
	"context"
	"sort"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"

	"github.com/berthhq/berth/lbagent/internal/accesslog"
)

// Per-app metric names: alert rules are written against them, so they do
// not change.
const (
	RequestsName      = "berth_lbagent_requests_total"
	DurationName      = "berth_lbagent_request_duration_seconds"
	ConnectErrorsName = "berth_lbagent_upstream_connect_errors_total"
	EjectionsName     = "berth_lbagent_outlier_ejections_total"
	EjectedName       = "berth_lbagent_outlier_ejected"
)

// codeClasses are the code_class label values, by status / 100 - 1.
var codeClasses = [5]string{"1xx", "2xx", "3xx", "4xx", "5xx"}

// DurationBuckets are the request duration histogram's buckets (seconds):
// from a cached answer's millisecond to a slow report's 30 s.
var DurationBuckets = []float64{0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30}

// droppedLogEvery is how often, at most, the apps refused series are logged.
const droppedLogEvery = time.Minute

// maxRefused bounds the names of apps refused series that are kept (to
// count each once and to log them).
const maxRefused = 10000

// AppTrafficOptions configure an AppTraffic.
type AppTrafficOptions struct {
	// MaxApps caps the apps that have series (--metrics-max-apps); must be
	// positive.
	MaxApps int
	// Native also keeps a native (sparse) histogram of the request
	// durations beside the bucketed one, for scrapers that ask for the
	// protobuf format; text scrapes see the buckets alone.
	Native bool
	// Logger logs the apps refused series, at most once a droppedLogEvery.
	Logger *zap.Logger
}

// appSeries are one app's pre-resolved children: a request costs three
// atomic adds and no label lookup.
type appSeries struct {
	classes  [5]prometheus.Counter
	duration prometheus.Observer
	connect  prometheus.Counter
}

// AppTraffic exports what nginx served, per app, from the access log:
// requests by status class, the request duration histogram ($request_time)
// and failed upstream connections. Its labels are bounded: the app alone
// (and the class), for at most MaxApps apps; an app beyond the cap has no
// series and is counted in berth_lbagent_metrics_apps_dropped_total. The
// series of an app gone from the state are deleted by Retain. It is a
// prometheus.Collector; Add and Retain are safe for concurrent use.
type AppTraffic struct {
	o        AppTrafficOptions
	requests *prometheus.CounterVec
	duration *prometheus.HistogramVec
	connect  *prometheus.CounterVec
	dropped  prometheus.Counter
	refusedG prometheus.Gauge
	exported prometheus.Gauge
	// ejections and ejected are health.outlier's, for apps with series.
	ejections *prometheus.CounterVec
	ejected   *prometheus.GaugeVec
	now       func() time.Time

	mu      sync.RWMutex
	apps    map[string]*appSeries
	refused map[string]struct{}
	logged  time.Time // when refused apps were last logged
	// ejectedApps are the apps whose ejected gauge is above 0.
	ejectedApps map[string]bool
}

var (
	_ accesslog.Sink       = (*AppTraffic)(nil)
	_ prometheus.Collector = (*AppTraffic)(nil)
)

// NewAppTraffic returns an exporter with no series yet.
func NewAppTraffic(o AppTrafficOptions) *AppTraffic {
	if o.MaxApps <= 0 {
		o.MaxApps = 1
	}
	if o.Logger == nil {
		o.Logger = zap.NewNop()
	}
	// The native histogram's settings, when it is on (zero: off).
	var factor float64
	var maxBuckets uint32
	var minReset time.Duration
	if o.Native {
		factor, maxBuckets, minReset = 1.1, 160, time.Hour
	}
	// Names are literals, as deploy/'s check of the alert rules reads them
	// (the same as RequestsName, DurationName and ConnectErrorsName).
	return &AppTraffic{
		o: o,
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "berth_lbagent_requests_total",
			Help: "Requests nginx served, by app and status class (1xx to 5xx), from the access log."}, []string{"app", "code_class"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "berth_lbagent_request_duration_seconds", Buckets: DurationBuckets,
			Help:                        "Request duration as nginx logs it ($request_time: first byte read from the client to last byte sent), by app.",
			NativeHistogramBucketFactor: factor, NativeHistogramMaxBucketNumber: maxBuckets, NativeHistogramMinResetDuration: minReset}, []string{"app"}),
		connect: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "berth_lbagent_upstream_connect_errors_total",
			Help: "Upstream connection attempts that failed (refused, unreachable, timed out, no live server), by app."}, []string{"app"}),
		dropped: prometheus.NewCounter(prometheus.CounterOpts{Name: "berth_lbagent_metrics_apps_dropped_total",
			Help: "Apps refused per-app series because --metrics-max-apps apps had them; each counted once until it is deleted or gets series."}),
		refusedG: prometheus.NewGauge(prometheus.GaugeOpts{Name: "berth_lbagent_metrics_apps_dropped",
			Help: "Apps without per-app series now because --metrics-max-apps apps have them."}),
		exported: prometheus.NewGauge(prometheus.GaugeOpts{Name: "berth_lbagent_metrics_apps",
			Help: "Apps with per-app series (at most --metrics-max-apps)."}),
		ejections: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "berth_lbagent_outlier_ejections_total",
			Help: "Instances this nginx took out of rotation for failing real traffic (health.outlier), by app."}, []string{"app"}),
		ejected: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "berth_lbagent_outlier_ejected",
			Help: "Instances out of this nginx's rotation now for failing real traffic (health.outlier), by app."}, []string{"app"}),
		now:         time.Now,
		apps:        map[string]*appSeries{},
		refused:     map[string]struct{}{},
		ejectedApps: map[string]bool{},
	}
}

// Ejection counts one outlier ejection of app, when app has series.
func (t *AppTraffic) Ejection(app string) {
	t.mu.RLock()
	defer t.mu.RUnlock()
	if _, ok := t.apps[app]; ok {
		t.ejections.WithLabelValues(app).Inc()
	}
}

// Ejected sets the ejected gauge of each app with series to its count in
// byApp (absent: 0); an app that never had one ejected has no series.
func (t *AppTraffic) Ejected(byApp map[string]int) {
	t.mu.Lock()
	defer t.mu.Unlock()
	for app := range t.ejectedApps {
		if byApp[app] == 0 {
			t.ejected.WithLabelValues(app).Set(0)
			delete(t.ejectedApps, app)
		}
	}
	for app, n := range byApp {
		if _, ok := t.apps[app]; ok && n > 0 {
			t.ejected.WithLabelValues(app).Set(float64(n))
			t.ejectedApps[app] = true
		}
	}
}

// Describe implements prometheus.Collector.
func (t *AppTraffic) Describe(ch chan<- *prometheus.Desc) {
	for _, c := range t.collectors() {
		c.Describe(ch)
	}
}

// Collect implements prometheus.Collector.
func (t *AppTraffic) Collect(ch chan<- prometheus.Metric) {
	for _, c := range t.collectors() {
		c.Collect(ch)
	}
}

func (t *AppTraffic) collectors() []prometheus.Collector {
	return []prometheus.Collector{t.requests, t.duration, t.connect, t.dropped, t.refusedG, t.exported, t.ejections, t.ejected}
}

// Add counts one access log entry: the access log receiver calls it for
// every line. An entry without an app (unrouted) or of an app beyond the
// cap is not counted.
func (t *AppTraffic) Add(e accesslog.Entry) {
	if e.App == "" {
		return
	}
	t.mu.RLock()
	s, ok := t.apps[e.App]
	if !ok {
		_, refused := t.refused[e.App]
		t.mu.RUnlock()
		if refused {
			return
		}
		if s = t.admit(e.App); s == nil {
			return
		}
	} else {
		t.mu.RUnlock()
	}
	class := e.Status/100 - 1
	if class < 0 || class > 4 {
		class = 4 // as the traffic windows count it
	}
	s.classes[class].Inc()
	if e.RequestSeconds >= 0 {
		s.duration.Observe(e.RequestSeconds)
	}
	if e.ConnectErrors > 0 {
		s.connect.Add(float64(e.ConnectErrors))
	}
}

// admit gives app its series, or refuses it when the cap is reached; nil
// when refused.
func (t *AppTraffic) admit(app string) *appSeries {
	t.mu.Lock()
	defer t.mu.Unlock()
	if s, ok := t.apps[app]; ok { // admitted meanwhile
		return s
	}
	if len(t.apps) >= t.o.MaxApps {
		t.refuse(app)
		return nil
	}
	return t.create(app)
}

// create makes app's series; under mu.
func (t *AppTraffic) create(app string) *appSeries {
	s := &appSeries{duration: t.duration.WithLabelValues(app), connect: t.connect.WithLabelValues(app)}
	for i, c := range codeClasses {
		s.classes[i] = t.requests.WithLabelValues(app, c)
	}
	t.apps[app] = s
	if _, ok := t.refused[app]; ok {
		delete(t.refused, app)
		t.refusedG.Set(float64(len(t.refused)))
	}
	t.exported.Set(float64(len(t.apps)))
	return s
}

// refuse counts app as refused series, once, and logs the refused apps at
// most once a droppedLogEvery; under mu.
func (t *AppTraffic) refuse(app string) {
	if _, ok := t.refused[app]; ok || len(t.refused) >= maxRefused {
		return
	}
	t.refused[app] = struct{}{}
	t.dropped.Inc()
	t.refusedG.Set(float64(len(t.refused)))
	if now := t.now(); now.Sub(t.logged) >= droppedLogEvery {
		t.logged = now
		names := make([]string, 0, min(len(t.refused), 20))
		for name := range t.refused {
			if len(names) == cap(names) {
				break
			}
			names = append(names, name)
		}
		sort.Strings(names)
		t.o.Logger.Warn("apps beyond --metrics-max-apps have no per-app metrics: raise it, or accept that they are counted in no series",
			zap.Int("max_apps", t.o.MaxApps), zap.Int("apps_refused", len(t.refused)), zap.Strings("some_apps_refused", names))
	}
}

// Retain keeps the series of the apps in known (the apps the agent
// routes), deletes those of every other app, and gives apps in known that
// have none their series while the cap allows (in name order), so that an
// app's counters exist, at zero, before its first request.
func (t *AppTraffic) Retain(known []string) {
	keep := make(map[string]struct{}, len(known))
	for _, app := range known {
		keep[app] = struct{}{}
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	for app := range t.apps {
		if _, ok := keep[app]; ok {
			continue
		}
		for _, c := range codeClasses {
			t.requests.DeleteLabelValues(app, c)
		}
		t.duration.DeleteLabelValues(app)
		t.connect.DeleteLabelValues(app)
		t.ejections.DeleteLabelValues(app)
		t.ejected.DeleteLabelValues(app)
		delete(t.ejectedApps, app)
		delete(t.apps, app)
	}
	for app := range t.refused {
		if _, ok := keep[app]; !ok {
			delete(t.refused, app)
		}
	}
	sorted := append([]string(nil), known...)
	sort.Strings(sorted)
	for _, app := range sorted {
		if _, ok := t.apps[app]; ok {
			continue
		}
		if len(t.apps) >= t.o.MaxApps {
			t.refuse(app)
			continue
		}
		t.create(app)
	}
	t.refusedG.Set(float64(len(t.refused)))
	t.exported.Set(float64(len(t.apps)))
}

// Run calls Retain with the apps known returns every period, while it
// reports them loaded (ok), until ctx ends.
func (t *AppTraffic) Run(ctx context.Context, known func() (apps []string, ok bool), period time.Duration) error {
	tick := time.NewTicker(period)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-tick.C:
			if apps, ok := known(); ok {
				t.Retain(apps)
			}
		}
	}
}
