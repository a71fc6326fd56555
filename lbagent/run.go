package main

import (
	"context"
	"fmt"
	"io/fs"
	"net/http"
	"os"
	"path/filepath"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"

	"github.com/berthhq/berth/common/bus"
	"github.com/berthhq/berth/common/cmdline"
	"github.com/berthhq/berth/common/lifecycle"
	"github.com/berthhq/berth/common/logging"
	"github.com/berthhq/berth/common/msg"
	"github.com/berthhq/berth/lbagent/internal/accesslog"
	"github.com/berthhq/berth/lbagent/internal/acmecert"
	"github.com/berthhq/berth/lbagent/internal/agent"
	"github.com/berthhq/berth/lbagent/internal/dryrun"
	"github.com/berthhq/berth/lbagent/internal/metric"
	"github.com/berthhq/berth/lbagent/internal/nginx"
	"github.com/berthhq/berth/lbagent/internal/outlier"
	"github.com/berthhq/berth/lbagent/internal/render"
	"github.com/berthhq/berth/lbagent/internal/report"
	"github.com/berthhq/berth/lbagent/internal/state"
	"github.com/berthhq/berth/lbagent/internal/templatedir"
	"github.com/berthhq/berth/lbagent/internal/traffic"
	"github.com/berthhq/berth/templates"
)

// run is the whole program; main only exits with its code.
func run(args []string, stdout, stderr *os.File) int {
	c, code, done := parse(args, stdout, stderr)
	if done {
		return code
	}
	if err := c.check(); err != nil {
		return cmdline.Invalid(stderr, "lbagent", err, c.CheckConfig)
	}
	ctx, logger, stop, err := cmdline.Start(stderr, c.LogLevel, c.LogFormat)
	if err != nil {
		fmt.Fprintln(stderr, err)
		return cmdline.ExitUsage
	}
	defer stop()
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
	if c.DryRun != "" {
		_, main := c.target()
		o := dryrun.Options{Source: c.DryRun, Render: c.renderOptions(), Main: main, Prefix: c.Prefix,
			Connect: func(ctx context.Context) (*bus.Conn, error) {
				names, _ := msg.NewNames(c.Prefix)
				return c.NATS.Connect(ctx, "lbagent-dry-run", names, logger)
			}}
		if err := dryrun.Run(ctx, renderer, o, stdout, logger); err != nil {
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
		StatusListen: c.StatusListen, AccessLogSocket: c.AccessLog, Main: main, Dynamic: c.dyn, ACME: c.acmeAddr}
}

// serve runs the agent until ctx ends, leaving nginx serving the last good
// config (a managed nginx quits gracefully with lbagent, unless
// --leave-nginx-running).
func serve(ctx context.Context, c *cli, renderer *render.Renderer, tmplDir string, logger *zap.Logger) error {
	names, _ := msg.NewNames(c.Prefix)
	node := c.node()
	logger = logger.With(zap.String(logging.KeyNode, node))
	conn, err := c.NATS.Connect(ctx, "lbagent-"+node, names, logger)
	if err != nil {
		return err
	}
	defer conn.Close()

	target, main := c.target()
	if err := os.MkdirAll(filepath.Dir(target), 0o755); err != nil {
		return fmt.Errorf("config dir: %w", err)
	}
	// ACME HTTP-01 answers: listening before the first render, which
	// names the address.
	if err := os.MkdirAll(c.StateDir, 0o755); err != nil {
		return fmt.Errorf("state dir: %w", err)
	}
	acmeLn, err := acmecert.Listen(c.ACMEListen, filepath.Join(c.StateDir, "acme-port"))
	if err != nil {
		return err
	}
	c.acmeAddr = acmeLn.Addr().String()
	responder := acmecert.NewResponder()
	bin := nginx.Binary{Path: c.NginxBin, Prefix: c.NginxPrefix, Conf: target}
	// A re-snapshot keeps the records it lacks as long as an emptied
	// state is held back: one knob for both (--empty-hold).
	store := state.NewStoreCarrying(c.EmptyHold, nil)
	group := lifecycle.NewGroup(logger, 35*time.Second)

	// The metrics read these at scrape time; the scrape endpoint starts
	// with the group, after every one of them is set.
	var (
		a       *agent.Agent
		dropped []interface{ Dropped() uint64 }
		recv    *accesslog.Receiver
	)
	metrics := metric.New(metric.Sources{
		Generation: func() uint64 { return a.Generation() },
		Dropped: func() uint64 {
			var n uint64
			for _, w := range dropped {
				n += w.Dropped()
			}
			return n
		},
		Fenced: store.Fenced,
		// A health value sealed by the role its app's check does not name
		// (bus.HealthTrusted) is a forgery too.
		Unsealed: func() uint64 { return conn.Forged() + store.Takeovers() },
		AccessInvalid: func() uint64 {
			if recv == nil {
				return 0
			}
			return recv.Invalid()
		},
	})

	dyn, err := c.dynamicMode(ctx, tmplDir, main, target, logger)
	if err != nil {
		return err
	}
	metrics.Mode(dyn != nil)

	var reloader agent.Reloader = nginx.PidFile(c.NginxPid)
	if c.Manage {
		sup := nginx.NewSupervisor(bin, logger)
		sup.LeaveRunning = c.LeaveNginx
		// A master a previous lbagent left running is adopted as it is: its
		// config was tested, and nginx -t in its prefix would overwrite its
		// pid file. Otherwise nginx needs a valid config before it starts:
		// render the empty state unless a previous run left one that still
		// passes nginx -t.
		if _, err := sup.Master(); err != nil {
			if err := ensureInitialConfig(ctx, c, renderer, bin, main); err != nil {
				return err
			}
		}
		reloader = sup
		group.Add("nginx", sup)
	}
	// Outlier ejection (health.outlier) reads the access log: without it,
	// no app is ejected. The per-app series count the ejections.
	var (
		perApp   *metric.AppTraffic
		detector *outlier.Detector
		ejector  agent.Ejector
	)
	if c.AccessLog != "" {
		if c.MetricsMaxApps > 0 {
			perApp = metric.NewAppTraffic(metric.AppTrafficOptions{MaxApps: c.MetricsMaxApps, Native: true, Logger: logger.Named("app-metrics")})
		}
		detector = outlier.New(func() { a.Kick() })
		var om outlier.Metrics
		if perApp != nil {
			om = perApp
		}
		ejector = outlier.NewEjector(detector, om, logger)
	} else {
		logger.Info("no --access-log: health.outlier ejects no instance, as it counts real traffic from the access log")
	}
	// The agents record names the nginx version (scheduler edge).
	vctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	version, err := bin.Version(vctx)
	cancel()
	if err != nil {
		logger.Warn("nginx -v failed: this lbagent's record names no nginx version", zap.Error(err))
	}
	lo, hi, _ := c.debounce()
	a = agent.New(agent.Config{
		Node: node, Render: c.renderOptions(), Target: target, Staging: filepath.Join(c.StateDir, "staging"),
		DebounceMin: lo, DebounceMax: hi, Resync: c.Resync, EmptyHold: c.EmptyHold, ConfirmTimeout: c.Confirm,
		Heartbeat: msg.AgentTTL / 3,
		Hooks: agent.Hooks{Rendered: metrics.Rendered, Held: metrics.Held, Served: metrics.Served, Pushed: metrics.Pushed,
			ConfirmWait: metrics.ConfirmWait, ReloadServed: metrics.ReloadServed},
		Pusher: dyn.pusher(), Snapshot: dyn.snapshot(), ReloadDrain: c.ReloadDrain,
		CertDir: filepath.Join(c.StateDir, "certs"), Keys: conn, Ejector: ejector, NginxVersion: version,
	}, store, renderer, nginx.Binary{Path: c.NginxBin}, reloader, report.New(conn, names, node, metrics, logger), logger)

	// With a node's own key, the scheduler makes the agents bucket: a
	// node may write its record only, not the stream's settings.
	if conn.Node() == "" {
		if err := conn.EnsureBuckets(ctx, bus.MustOwnedBuckets(names, bus.RoleLBAgent)); err != nil {
			logger.Warn("could not ensure buckets yet; watchers wait for them", zap.Error(err))
		}
	} else {
		logger.Info("connected with this node's own NATS key: it writes this node's record only", zap.String("key_node", conn.Node()))
	}
	apps := bus.NewWatcher(conn, names.AppsBucket(), bus.Message[*msg.App], store.AppsHandler(), logger)
	insts := bus.NewWatcher(conn, names.InstancesBucket(), bus.Message[*msg.Instance], store.InstancesHandler(), logger)
	health := bus.NewWatcher(conn, names.HealthBucket(), bus.Message[*msg.Health], store.HealthHandler(), logger)
	certsW := bus.NewWatcher(conn, names.CertificatesBucket(), bus.Message[*msg.Certificate], store.CertificatesHandler(), logger)
	challenges := bus.NewWatcher(conn, names.ChallengesBucket(), bus.Message[*msg.Challenge], responder.Handler(), logger)
	dropped = append(dropped, apps, insts, health, certsW, challenges)
	group.Add("watch-certificates", certsW)
	group.Add("certificates-fallback", lifecycle.Func(func(ctx context.Context) error {
		select {
		case <-ctx.Done():
		case <-time.After(certsWait):
			if store.AssumeNoCertificates() {
				logger.Warn("the certificates bucket did not load: applying changes without it; apps with tls.acme are served over plain HTTP until it does "+
					"(is the scheduler older than this lbagent, or the nats-server config older than the bucket? print it again with scheduler nats-config)",
					zap.String("bucket", names.CertificatesBucket()), zap.Duration("waited", certsWait))
			}
			<-ctx.Done() // a component that returns stops the group
		}
		return nil
	}))
	group.Add("watch-challenges", challenges)
	group.Add("acme-challenges", lifecycle.Serve(&http.Server{Handler: responder, ReadHeaderTimeout: 5 * time.Second, ReadTimeout: 10 * time.Second,
		WriteTimeout: 10 * time.Second, MaxHeaderBytes: 16 << 10}, acmeLn))
	group.Add("watch-apps", apps)
	group.Add("watch-instances", insts)
	group.Add("watch-health", health)
	group.Add("agent", a)
	if tmplDir != "" {
		group.Add("templates", templatedir.New(tmplDir, a, logger))
	}
	if c.AccessLog != "" {
		// A short datagram queue loses lines under load: say so at start,
		// and on /metrics (an alert rule watches it).
		qlen, err := accesslog.QueueLimit()
		if err != nil {
			logger.Warn("cannot read the access log socket's queue limit", zap.Error(err))
		} else if qlen < accesslog.WantQueue {
			logger.Warn("the access log socket queues few lines: under load nginx drops the rest, and traffic metrics and autoscaling count fewer requests than were served; set sysctl net.unix.max_dgram_qlen=512 before lbagent starts",
				zap.Int("max_dgram_qlen", qlen), zap.Int("want", accesslog.WantQueue))
		}
		queue := prometheus.NewGauge(prometheus.GaugeOpts{Name: "berth_lbagent_access_log_queue_limit",
			Help: "net.unix.max_dgram_qlen when lbagent started: the access log lines its socket holds before nginx drops them (512 or more wanted)."})
		queue.Set(float64(qlen))
		if err := metrics.Register(queue); err != nil {
			return fmt.Errorf("access log queue metric: %w", err)
		}
		agg := accesslog.NewAggregator(node, time.Now())
		recv = accesslog.NewReceiver(c.AccessLog, agg)
		recv.Group = c.AccessLogGroup
		recv.Export = outlier.Sink{Detector: detector}
		if perApp != nil {
			// Per-app series, counted on the receiver's goroutine; those of
			// apps gone from the state are deleted each window.
			if err := metrics.Register(perApp); err != nil {
				return fmt.Errorf("per-app metrics: %w", err)
			}
			recv.Export = accesslog.Sinks{perApp, outlier.Sink{Detector: detector}}
			group.Add("app-metrics", lifecycle.Func(func(ctx context.Context) error {
				return perApp.Run(ctx, func() ([]string, bool) { return store.AppNames(), store.Ready() }, c.MetricsWin)
			}))
		}
		group.Add("access-log", recv)
		group.Add("traffic-metrics", traffic.New(conn, names, agg, store.AppNames, c.MetricsWin, logger))
	}
	if c.Metrics != "" {
		group.Add("http", lifecycle.HTTP(&http.Server{Addr: c.Metrics, Handler: lifecycle.OpsHandler(metrics.Handler(), store.Ready), ReadHeaderTimeout: 5 * time.Second}))
	}
	logger.Info("lbagent started", zap.String("target", target), zap.Bool("manage_nginx", c.Manage))
	return group.Run(ctx)
}

// certsWait is how long lbagent waits for the certificates bucket before
// it applies changes without it (state.Store.AssumeNoCertificates).
const certsWait = 15 * time.Second

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
