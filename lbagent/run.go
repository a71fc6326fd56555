package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"net/http"
	"os"
	"path/filepath"
	"time"

	"github.com/fsnotify/fsnotify"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"go.uber.org/zap"

	"github.com/berthhq/berth/common/bus"
	"github.com/berthhq/berth/common/lifecycle"
	"github.com/berthhq/berth/common/logging"
	"github.com/berthhq/berth/common/msg"
	"github.com/berthhq/berth/lbagent/internal/accesslog"
	"github.com/berthhq/berth/lbagent/internal/agent"
	"github.com/berthhq/berth/lbagent/internal/nginx"
	"github.com/berthhq/berth/lbagent/internal/render"
	"github.com/berthhq/berth/lbagent/internal/state"
	"github.com/berthhq/berth/templates"
)

// run is the whole program; main only exits with its code.
func run(args []string, stdout, stderr *os.File) int {
	c, code, done := parse(args, stdout, stderr)
	if done {
		return code
	}
	if err := c.check(); err != nil {
		fmt.Fprintf(stderr, "lbagent: invalid configuration:\n%v\n", err)
		if c.CheckConfig {
			return 1
		}
		return 2
	}
	logger, err := logging.New(logging.Options{Level: c.LogLevel, Format: c.LogFormat, Output: stderr})
	if err != nil {
		fmt.Fprintln(stderr, err)
		return 2
	}
	defer func() { _ = logger.Sync() }()
	tmplFS, tmplDir := c.templateFS(logger)
	renderer, err := render.Load(tmplFS)
	if err != nil {
		fmt.Fprintf(stderr, "lbagent: templates: %v\n", err)
		return 1
	}
	if c.CheckConfig {
		fmt.Fprintln(stdout, "lbagent: configuration and templates are valid")
		return 0
	}
	ctx, stop := lifecycle.SignalContext(context.Background(), logger, os.Exit)
	defer stop()
	if c.DryRun != "" {
		if err := dryRun(ctx, c, renderer, stdout, logger); err != nil {
			fmt.Fprintf(stderr, "lbagent: dry run: %v\n", err)
			return 1
		}
		return 0
	}
	if err := serve(ctx, c, renderer, tmplDir, logger); err != nil {
		logger.Error("lbagent stopped", zap.Error(err))
		return 1
	}
	return 0
}

// templateFS returns --templates when it exists, else the embedded copy.
func (c *cli) templateFS(logger *zap.Logger) (fs.FS, string) {
	if st, err := os.Stat(c.Templates); err == nil && st.IsDir() {
		return os.DirFS(c.Templates), c.Templates
	}
	logger.Info("templates directory not found, using the embedded templates", zap.String("templates", c.Templates))
	return templates.FS, ""
}

func (c *cli) renderOptions() render.Options {
	_, main := c.target()
	return render.Options{Node: c.node(), HTTPListen: c.ListenHTTP, HTTPSListen: c.ListenHTTPS,
		StatusListen: c.StatusListen, AccessLogSocket: c.AccessLog, Main: main}
}

// serve runs the agent until ctx ends, leaving nginx serving the last good
// config (a managed nginx quits gracefully with lbagent).
func serve(ctx context.Context, c *cli, renderer *render.Renderer, tmplDir string, logger *zap.Logger) error {
	names, _ := msg.NewNames(c.Prefix)
	node := c.node()
	logger = logger.With(zap.String(logging.KeyNode, node))
	conn, err := c.NATS.Connect(ctx, "lbagent-"+node, logger)
	if err != nil {
		return err
	}
	defer conn.Close()

	target, main := c.target()
	if err := os.MkdirAll(filepath.Dir(target), 0o755); err != nil {
		return fmt.Errorf("config dir: %w", err)
	}
	bin := nginx.Binary{Path: c.NginxBin, Prefix: c.NginxPrefix, Conf: target}
	store := state.NewStore()
	metrics := newMetrics()
	group := lifecycle.NewGroup(logger, 35*time.Second)

	var reloader agent.Reloader = nginx.PidFile(c.NginxPid)
	if c.Manage {
		// nginx needs a valid config before it starts: render the empty state
		// unless a previous run left one that still passes nginx -t.
		if err := ensureInitialConfig(ctx, c, renderer, bin, main); err != nil {
			return err
		}
		sup := nginx.NewSupervisor(bin, logger)
		reloader = sup
		group.Add("nginx", sup)
	}
	lo, hi, _ := c.debounce()
	rep := &natsReporter{conn: conn, names: names, node: node, logger: logger, metrics: metrics}
	a := agent.New(agent.Config{
		Node: node, Render: c.renderOptions(), Target: target, Staging: filepath.Join(c.StateDir, "staging"),
		DebounceMin: lo, DebounceMax: hi, Resync: c.Resync, EmptyHold: c.EmptyHold, ConfirmTimeout: c.Confirm,
		Heartbeat: msg.AgentTTL / 3,
		Hooks: agent.Hooks{
			Rendered: func(d time.Duration) { metrics.render.Observe(d.Seconds()) },
			Held: func(held bool) {
				if held {
					metrics.held.Set(1)
				} else {
					metrics.held.Set(0)
				}
			},
			Served: func(apps, servers int) { metrics.apps.Set(float64(apps)); metrics.servers.Set(float64(servers)) },
		},
	}, store, renderer, nginx.Binary{Path: c.NginxBin}, reloader, rep, logger)

	if err := conn.EnsureBuckets(ctx, bus.ContractBuckets(names)); err != nil {
		logger.Warn("could not ensure buckets yet; watchers wait for them", zap.Error(err))
	}
	apps := bus.NewWatcher(conn, names.AppsBucket(), decode[*msg.App], store.AppsHandler(), logger)
	insts := bus.NewWatcher(conn, names.InstancesBucket(), decode[*msg.Instance], store.InstancesHandler(), logger)
	health := bus.NewWatcher(conn, names.HealthBucket(), decode[*msg.Health], store.HealthHandler(), logger)
	metrics.generation = func() float64 { return float64(a.Generation()) }
	metrics.watchers = func() float64 { return float64(apps.Dropped() + insts.Dropped() + health.Dropped()) }
	metrics.fenced = func() float64 { return float64(store.Fenced()) }
	group.Add("watch-apps", apps)
	group.Add("watch-instances", insts)
	group.Add("watch-health", health)
	group.Add("agent", a)
	if tmplDir != "" {
		group.Add("templates", lifecycle.Func(func(ctx context.Context) error { return watchTemplates(ctx, tmplDir, a, logger) }))
	}
	if c.AccessLog != "" {
		agg := accesslog.NewAggregator(node, time.Now())
		recv := accesslog.NewReceiver(c.AccessLog, agg)
		metrics.accessInvalid = func() float64 { return float64(recv.Invalid()) }
		group.Add("access-log", recv)
		group.Add("traffic-metrics", lifecycle.Func(func(ctx context.Context) error {
			return publishTraffic(ctx, conn, names, agg, store.AppNames, c.MetricsWin, logger)
		}))
	}
	if c.Metrics != "" {
		group.Add("http", lifecycle.HTTP(&http.Server{Addr: c.Metrics, Handler: lifecycle.OpsHandler(promhttp.HandlerFor(metrics.reg, promhttp.HandlerOpts{}), store.Ready), ReadHeaderTimeout: 5 * time.Second}))
	}
	logger.Info("lbagent started", zap.String("target", target), zap.Bool("manage_nginx", c.Manage))
	return group.Run(ctx)
}

func decode[T msg.Message](_ string, data []byte) (T, error) { return msg.DecodeAs[T](data) }

// ensureInitialConfig leaves a config a managed nginx can start with: the
// previous run's config when it still passes nginx -t (so nginx serves
// what it served before until the first sync), else the empty state.
func ensureInitialConfig(ctx context.Context, c *cli, renderer *render.Renderer, bin nginx.Binary, main bool) error {
	for _, sub := range []string{"logs", "run", "temp"} {
		if err := os.MkdirAll(filepath.Join(bin.Prefix, sub), 0o755); err != nil {
			return err
		}
	}
	if _, err := os.Stat(bin.Conf); err == nil {
		if err := bin.Test(ctx, bin.Prefix, bin.Conf); err == nil {
			return nil // nginx is not running yet, so testing in its own prefix is safe
		}
	}
	d, _ := render.Layout(state.Snapshot{}, 0, c.renderOptions())
	out, err := renderer.Render(d, main)
	if err != nil {
		return fmt.Errorf("render initial config: %w", err)
	}
	if err := os.WriteFile(bin.Conf, out, 0o644); err != nil {
		return fmt.Errorf("write initial config: %w", err)
	}
	return nil
}

// watchTemplates reloads the templates when a file in dir changes (the
// directory is watched, so editors that replace files are seen). A template
// set that does not load is logged and ignored: the running config stays.
func watchTemplates(ctx context.Context, dir string, a *agent.Agent, logger *zap.Logger) error {
	w, err := fsnotify.NewWatcher()
	if err != nil {
		return fmt.Errorf("watch templates: %w", err)
	}
	defer w.Close()
	if err := w.Add(dir); err != nil {
		return fmt.Errorf("watch templates %s: %w", dir, err)
	}
	var settle <-chan time.Time
	for {
		select {
		case <-ctx.Done():
			return nil
		case ev := <-w.Events:
			if filepath.Ext(ev.Name) == ".tmpl" {
				settle = time.After(200 * time.Millisecond)
			}
		case err := <-w.Errors:
			logger.Warn("template watch error", zap.Error(err))
		case <-settle:
			r, err := render.Load(os.DirFS(dir))
			if err != nil {
				logger.Error("template edit refused, keeping the running config", zap.Error(err))
				continue
			}
			logger.Info("templates reloaded", zap.String("templates", dir))
			a.SetRenderer(r)
		}
	}
}

// publishTraffic publishes each app's access log window on
// <prefix>.v1.metrics.<app> every window, for every app it routes (zero
// requests included).
func publishTraffic(ctx context.Context, conn *bus.Conn, names msg.Names, agg *accesslog.Aggregator, routed func() []string, window time.Duration, logger *zap.Logger) error {
	t := time.NewTicker(window)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case now := <-t.C:
			for _, m := range agg.Flush(now, routed()) {
				b, err := msg.Encode(m)
				if err == nil {
					err = conn.Publish(ctx, names.MetricsSubject(m.App), b)
				}
				if err != nil {
					logger.Warn("publish traffic metrics", zap.String(logging.KeyApp, m.App), zap.Error(err))
				}
			}
		}
	}
}

// snapshotFile is the --dry-run input format: the three buckets' values.
type snapshotFile struct {
	Apps      []*msg.App      `json:"apps"`
	Instances []*msg.Instance `json:"instances"`
	Health    []*msg.Health   `json:"health"`
}

func dryRun(ctx context.Context, c *cli, renderer *render.Renderer, stdout *os.File, logger *zap.Logger) error {
	store := state.NewStore()
	if c.DryRun == "-" {
		if err := loadLive(ctx, c, store, logger); err != nil {
			return err
		}
	} else if err := loadFile(c.DryRun, store); err != nil {
		return err
	}
	snap, _ := store.Snapshot()
	d, conflicts := render.Layout(snap, 1, c.renderOptions())
	for app, why := range conflicts {
		logger.Warn("route conflict", zap.String("app", app), zap.String("reason", why))
	}
	_, main := c.target()
	out, err := renderer.Render(d, main)
	if err != nil {
		return err
	}
	_, err = stdout.Write(out)
	return err
}

func loadFile(path string, store *state.Store) error {
	b, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	var f snapshotFile
	if err := json.Unmarshal(b, &f); err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	var apps []bus.Event[*msg.App]
	for i, a := range f.Apps {
		if err := a.Validate(); err != nil {
			return fmt.Errorf("%s: apps[%d]: %w", path, i, err)
		}
		apps = append(apps, bus.Event[*msg.App]{Key: a.Name, Value: a})
	}
	var insts []bus.Event[*msg.Instance]
	for i, in := range f.Instances {
		if err := in.Validate(); err != nil {
			return fmt.Errorf("%s: instances[%d]: %w", path, i, err)
		}
		insts = append(insts, bus.Event[*msg.Instance]{Key: msg.InstanceKey(in.App, in.ID), Value: in})
	}
	var hs []bus.Event[*msg.Health]
	for i, h := range f.Health {
		if err := h.Validate(); err != nil {
			return fmt.Errorf("%s: health[%d]: %w", path, i, err)
		}
		hs = append(hs, bus.Event[*msg.Health]{Key: msg.InstanceKey(h.App, h.Instance), Value: h})
	}
	store.AppsHandler().Snapshot(apps, 0)
	store.InstancesHandler().Snapshot(insts, 0)
	store.HealthHandler().Snapshot(hs, 0)
	return nil
}

func loadLive(ctx context.Context, c *cli, store *state.Store, logger *zap.Logger) error {
	names, _ := msg.NewNames(c.Prefix)
	conn, err := c.NATS.Connect(ctx, "lbagent-dry-run", logger)
	if err != nil {
		return err
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	watchers := []lifecycle.Component{
		bus.NewWatcher(conn, names.AppsBucket(), decode[*msg.App], store.AppsHandler(), logger),
		bus.NewWatcher(conn, names.InstancesBucket(), decode[*msg.Instance], store.InstancesHandler(), logger),
		bus.NewWatcher(conn, names.HealthBucket(), decode[*msg.Health], store.HealthHandler(), logger),
	}
	for _, w := range watchers {
		go func() { _ = w.Run(ctx) }()
	}
	for !store.Ready() {
		select {
		case <-ctx.Done():
			return errors.New("NATS state did not load within 15s")
		case <-store.Changed():
		case <-time.After(50 * time.Millisecond):
		}
	}
	return nil
}

// natsReporter publishes reload results and heartbeats the applied state.
type natsReporter struct {
	conn    *bus.Conn
	names   msg.Names
	node    string
	logger  *zap.Logger
	metrics *metrics
	agents  *bus.KV
}

func (r *natsReporter) Reload(ctx context.Context, m *msg.Reload) {
	r.metrics.observe(m)
	if m.Result == msg.ReloadSkipped {
		return // not a config change: heartbeats carry the revision
	}
	b, err := msg.Encode(m)
	if err == nil {
		err = r.conn.Publish(ctx, r.names.ReloadsSubject(r.node), b)
	}
	if err != nil {
		r.logger.Warn("publish reload result", zap.Error(err))
	}
}

func (r *natsReporter) Applied(ctx context.Context, m *msg.Agent) {
	r.metrics.applied(m)
	b, err := msg.Encode(m)
	if err != nil {
		r.logger.Warn("encode agent state", zap.Error(err))
		return
	}
	if r.agents == nil {
		if r.agents, err = r.conn.KV(ctx, r.names.AgentsBucket()); err != nil {
			r.logger.Warn("open agents bucket", zap.Error(err))
			return
		}
	}
	if _, err := r.agents.Put(ctx, r.node, b); err != nil {
		r.logger.Warn("heartbeat agent state", zap.Error(err))
	}
}

// metrics are the lbagent's Prometheus metrics.
type metrics struct {
	reg           *prometheus.Registry
	reloads       *prometheus.CounterVec
	duration      prometheus.Histogram
	generation    func() float64
	revision      prometheus.Gauge
	lastSuccess   prometheus.Gauge
	appErrors     *prometheus.CounterVec
	apps          prometheus.Gauge
	servers       prometheus.Gauge
	render        prometheus.Histogram
	held          prometheus.Gauge
	watchers      func() float64
	fenced        func() float64
	accessInvalid func() float64
}

func newMetrics() *metrics {
	m := &metrics{
		reg:           prometheus.NewRegistry(),
		reloads:       prometheus.NewCounterVec(prometheus.CounterOpts{Name: "berth_lbagent_reloads_total", Help: "Config changes by result: applied, skipped, rejected, failed."}, []string{"result"}),
		duration:      prometheus.NewHistogram(prometheus.HistogramOpts{Name: "berth_lbagent_reload_duration_seconds", Help: "Render to confirmed-served time of applied changes.", Buckets: prometheus.ExponentialBuckets(0.005, 2, 12)}),
		generation:    func() float64 { return 0 },
		revision:      prometheus.NewGauge(prometheus.GaugeOpts{Name: "berth_lbagent_applied_revision", Help: "Instances bucket revision nginx's config reflects."}),
		lastSuccess:   prometheus.NewGauge(prometheus.GaugeOpts{Name: "berth_lbagent_last_success_timestamp_seconds", Help: "When a config was last applied."}),
		appErrors:     prometheus.NewCounterVec(prometheus.CounterOpts{Name: "berth_lbagent_nginx_test_failures_total", Help: "Apps whose config nginx -t refused."}, []string{"app"}),
		apps:          prometheus.NewGauge(prometheus.GaugeOpts{Name: "berth_lbagent_apps", Help: "Apps in the applied config."}),
		servers:       prometheus.NewGauge(prometheus.GaugeOpts{Name: "berth_lbagent_servers", Help: "Upstream servers in the applied config."}),
		render:        prometheus.NewHistogram(prometheus.HistogramOpts{Name: "berth_lbagent_render_duration_seconds", Help: "Time to render the whole config.", Buckets: prometheus.ExponentialBuckets(0.0005, 2, 14)}),
		held:          prometheus.NewGauge(prometheus.GaugeOpts{Name: "berth_lbagent_snapshot_held", Help: "1 while a snapshot that removes every server is held back."}),
		watchers:      func() float64 { return 0 },
		fenced:        func() float64 { return 0 },
		accessInvalid: func() float64 { return 0 },
	}
	m.reg.MustRegister(m.reloads, m.duration, m.revision,
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "berth_lbagent_applied_generation", Help: "Config generation nginx serves."}, func() float64 { return m.generation() }), m.lastSuccess, m.appErrors, m.apps, m.servers, m.render, m.held,
		prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "berth_lbagent_invalid_messages_total", Help: "NATS values dropped because they failed to decode or validate."}, func() float64 { return m.watchers() }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "berth_lbagent_access_log_invalid_total", Help: "Access log datagrams that failed to parse."}, func() float64 { return m.accessInvalid() }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "berth_lbagent_fenced_writes_total", Help: "Writes dropped because they came from a lower leader term."}, func() float64 { return m.fenced() }),
	)
	return m
}

func (m *metrics) observe(r *msg.Reload) {
	m.reloads.WithLabelValues(r.Result).Inc()
	for app := range r.FailedApps {
		m.appErrors.WithLabelValues(app).Inc()
	}
	if r.Result == msg.ReloadApplied || r.Result == msg.ReloadRejected {
		m.duration.Observe(r.DurationMS / 1000)
		m.lastSuccess.Set(float64(r.At.Unix()))
	}
}

func (m *metrics) applied(a *msg.Agent) {
	m.revision.Set(float64(a.AppliedRevision))
}

// opsHandler serves /metrics, /healthz and /readyz (ready once every
