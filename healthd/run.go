package main

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"slices"
	"strings"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"go.uber.org/zap"

	"github.com/berthhq/berth/common/bus"
	"github.com/berthhq/berth/common/cmdline"
	"github.com/berthhq/berth/common/lifecycle"
	"github.com/berthhq/berth/common/logging"
	"github.com/berthhq/berth/common/msg"
	"github.com/berthhq/berth/common/view"
	"github.com/berthhq/berth/healthd/internal/checker"
	"github.com/berthhq/berth/healthd/internal/probe"
	"github.com/berthhq/berth/healthd/internal/publisher"
	"github.com/berthhq/berth/healthd/internal/shard"
)

func run(args []string, stdout, stderr *os.File) int {
	c, code, done := parse(args, stdout, stderr)
	if done {
		return code
	}
	if err := c.check(); err != nil {
		return cmdline.Invalid(stderr, "healthd", err, c.CheckConfig)
	}
	if c.CheckConfig {
		fmt.Fprintln(stdout, "healthd: configuration is valid")
		return 0
	}
	ctx, logger, stop, err := cmdline.Start(stderr, c.LogLevel, c.LogFormat)
	if err != nil {
		fmt.Fprintln(stderr, err)
		return cmdline.ExitUsage
	}
	defer stop()
	if c.Probe != "" {
		return probeOnce(ctx, c, stdout, stderr)
	}
	if err := serve(ctx, c, logger); err != nil {
		logger.Error("healthd stopped", zap.Error(err))
		return 1
	}
	return 0
}

// probeOnce is --probe: an operator's check of one address or a file of targets.
func probeOnce(ctx context.Context, c *cli, stdout, stderr *os.File) int {
	targets, err := c.probeTargets()
	if err != nil {
		fmt.Fprintf(stderr, "healthd: %v\n", err)
		return 2
	}
	reg, failed := probe.New(nil), 0
	for i, t := range targets {
		if errs := t.Check.Validate(fmt.Sprintf("[%d].check", i)); len(errs) > 0 {
			fmt.Fprintf(stderr, "healthd: %v\n", errs)
			return 2
		}
		pctx, cancel := context.WithTimeout(ctx, t.Check.Timeout.Std())
		res := reg.Probe(pctx, t)
		cancel()
		status := "ok"
		if !res.OK {
			status, failed = "FAIL "+res.Failure, failed+1
		}
		fmt.Fprintf(stdout, "%-40s %-8s %-26s %8.1fms %s\n", t.Key, t.Check.Type, status, float64(res.Latency.Microseconds())/1000, res.Message)
	}
	if failed > 0 {
		return 1
	}
	return 0
}

// serve runs healthd until ctx ends.
func serve(ctx context.Context, c *cli, logger *zap.Logger) error {
	names, _ := msg.NewNames(c.Prefix)
	id := c.id()
	logger = logger.With(zap.String(logging.KeyChecker, id))
	conn, err := c.NATS.Connect(ctx, "healthd-"+id, names, logger)
	if err != nil {
		return err
	}
	defer conn.Close()
	if err := conn.EnsureBuckets(ctx, bus.MustOwnedBuckets(names, bus.RoleHealthd)); err != nil {
		logger.Warn("could not ensure buckets yet; watchers wait for them", zap.Error(err))
	}

	m := newMetrics(newProbeDurations(c.MetricsMaxApps, logger.Named("metrics")))
	changed := make(chan struct{}, 1)
	notify := func() {
		select {
		case changed <- struct{}{}:
		default:
		}
	}
	// A change of the apps or the instances lists the targets again; one
	// of the checkers only reassigns them (see shares).
	var targets *shares
	stale := func() { targets.Stale(); notify() }
	apps := view.NewTable(view.AppTerm, stale)
	insts := view.NewTable(view.InstanceTerm, stale)
	checkers := view.NewTable(view.NoTerm[*msg.Checker], notify)
	targets = newShares(id, func() (map[string]*msg.App, []checker.Target) {
		a, _ := apps.Rows()
		in, _ := insts.Rows()
		return a, checker.Targets(a, in, nil)
	})
	// What is published now: a target new to this checker carries on from
	// it, and a target handed to another checker keeps it until then.
	health := view.NewTable(view.NoTerm[*msg.Health], nil)
	// Every live checker's targets and the live checkers, as the targets
	// loop last computed them (nil until every view has loaded).
	var shared atomic.Pointer[fleet]

	var runner *checker.Runner
	pub := publisher.New(conn, names, id, func() int { return runner.Targets() }, logger)
	pub.Refresh = c.Refresh
	pub.LeaveOnStop = !c.crash
	pub.HandedOver = func(key string) bool {
		f := shared.Load()
		return f != nil && f.targets[key]
	}
	runner = checker.NewRunner(instrumented{probe.New(nil), m}, pub, c.MaxConc)
	runner.MaxTimeout = c.MaxTimeout
	runner.Seed = func(t checker.Target) (checker.State, bool) {
		h, ok := health.Get(t.Key)
		if !ok || h.Generation != t.Generation {
			return checker.State{}, false
		}
		return checker.State{Status: h.Status, Successes: h.ConsecutiveSuccesses, Failures: h.ConsecutiveFailures, Since: h.CheckedAt}, true
	}
	m.targets = func() float64 { return float64(runner.Targets()) }
	m.transitions = func() float64 { return float64(pub.Transitions.Load()) }
	m.unsealed = func() float64 { return float64(conn.Forged()) }

	group := lifecycle.NewGroup(logger, 10*time.Second)
	group.Add("watch-apps", bus.NewWatcher(conn, names.AppsBucket(), bus.Message[*msg.App], apps.Handler(), logger))
	group.Add("watch-instances", bus.NewWatcher(conn, names.InstancesBucket(), bus.Message[*msg.Instance], insts.Handler(), logger))
	group.Add("watch-checkers", bus.NewWatcher(conn, names.CheckersBucket(), bus.Message[*msg.Checker], checkers.Handler(), logger))
	healthWatch := bus.NewWatcher(conn, names.HealthBucket(), bus.Message[*msg.Health], bus.MarkHealthSealer(health.Handler()), logger)
	healthWatch.OnDrop = func(key string, _ error) { pub.Repair(key) }
	group.Add("watch-health", healthWatch)
	group.Add("runner", runner)
	group.Add("publisher", pub)
	group.Add("targets", lifecycle.Func(func(ctx context.Context) error {
		// Recompute the share on every change, and every second since
		// liveness changes with time alone.
		tick := time.NewTicker(time.Second)
		defer tick.Stop()
		var was []string
		loaded := false
		for {
			select {
			case <-ctx.Done():
				return nil
			case <-changed:
			case <-tick.C:
			}
			if !loaded {
				if !apps.Loaded() || !insts.Loaded() || !checkers.Loaded() || !health.Loaded() {
					continue // never act on a partial initial load
				}
				// Once only: a table stays loaded, and asking took the health
				// table's lock, which waited up to 2 s behind its writers at
				// 30,000 targets, and held a takeover up as long (issue 30).
				loaded = true
			}
			cs, _ := checkers.Rows()
			live := shard.Live(cs, id, msg.CheckerDeadAfter, time.Now())
			m.live.Set(float64(len(live)))
			f, moved := targets.Next(live)
			if !moved {
				continue
			}
			shared.Store(f)
			runner.SetTargets(f.mine)
			m.durations.retain(appsOf(f.mine))
			if !slices.Equal(live, was) {
				logger.Info("live checkers changed: targets shared again", zap.Strings("live", live), zap.Int("targets", len(f.mine)), zap.Int("of", len(f.list)))
				was = live
			}
		}
	}))
	group.Add("instances", lifecycle.Func(func(ctx context.Context) error {
		// The sweeper exports the fleet's counts, from the health of the
		// moment: apart from the targets loop, which they would hold up.
		tick := time.NewTicker(time.Second)
		defer tick.Stop()
		for {
			select {
			case <-ctx.Done():
				return nil
			case <-tick.C:
			}
			f := shared.Load()
			if f == nil || shard.Owner(names.HealthBucket(), f.live) != id {
				m.instances.set(nil)
				continue
			}
			// Counted from a copy: counting under the table's lock held up
			// the health watcher and every reader for the whole count.
			rows, _ := health.Rows()
			m.instances.set(countInstances(f.apps, f.list, rows))
		}
	}))
	group.Add("sweep", lifecycle.Func(func(ctx context.Context) error {
		tick := time.NewTicker(c.Refresh)
		defer tick.Stop()
		for {
			select {
			case <-ctx.Done():
				return nil
			case <-tick.C:
			}
			f := shared.Load()
			if f == nil || len(f.targets) == 0 {
				// No target at all is an instances bucket not (yet)
				// republished, not a fleet without instances: sweep nothing.
				continue
			}
			rows, _ := health.Rows()
			keys := make([]string, 0, len(rows))
			for k := range rows {
				keys = append(keys, k)
			}
			// The health of a docker or exec app's instance is the
			// scheduler's to write and delete, never healthd's.
			pub.Sweep(ctx, keys, func(key string) bool { app, _, _ := strings.Cut(key, "."); return f.targets[key] || f.scheduled[app] },
				func(key string) bool { return shard.Owner(key, f.live) == id },
				shard.Owner(names.HealthBucket(), f.live) == id)
		}
	}))
	if c.Metrics != "" {
		ready := func() bool { return apps.Loaded() && insts.Loaded() && checkers.Loaded() }
		group.Add("http", lifecycle.HTTP(&http.Server{Addr: c.Metrics, Handler: lifecycle.OpsHandler(promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{}), ready), ReadHeaderTimeout: 5 * time.Second}))
	}
	logger.Info("healthd started", zap.Int("max_concurrency", c.MaxConc))
	return group.Run(ctx)
}

// instrumented counts and times probes.
type instrumented struct {
	reg probe.Registry
	m   *metrics
}

func (i instrumented) Probe(ctx context.Context, t probe.Target) probe.Result {
	res := i.reg.Probe(ctx, t)
	result := "ok"
	if !res.OK {
		result = res.Failure
	}
	i.m.probes.WithLabelValues(t.Check.Type, result).Inc()
	i.m.durations.observe(t.Key, res.Latency.Seconds())
	return res
}

type metrics struct {
	reg         *prometheus.Registry
	probes      *prometheus.CounterVec
	durations   *probeDurations
	live        prometheus.Gauge
	instances   *appInstances
	targets     func() float64
	transitions func() float64
	unsealed    func() float64
}

func newMetrics(durations *probeDurations) *metrics {
	m := &metrics{
		reg:         prometheus.NewRegistry(),
		probes:      prometheus.NewCounterVec(prometheus.CounterOpts{Name: "berth_healthd_probes_total", Help: "Probes by check type and result (ok or the failure kind)."}, []string{"type", "result"}),
		durations:   durations,
		live:        prometheus.NewGauge(prometheus.GaugeOpts{Name: "berth_healthd_live_checkers", Help: "Checkers sharing the targets, this one included."}),
		instances:   newAppInstances(),
		targets:     func() float64 { return 0 },
		transitions: func() float64 { return 0 },
		unsealed:    func() float64 { return 0 },
	}
	m.reg.MustRegister(durations.collectors()...)
	m.reg.MustRegister(m.probes, m.live, m.instances,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "berth_healthd_targets", Help: "Targets this checker probes."}, func() float64 { return m.targets() }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "berth_healthd_transitions_total", Help: "Health transitions published."}, func() float64 { return m.transitions() }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "berth_healthd_unsealed_messages_total", Help: "NATS values and messages dropped because their owner had not sealed them: forgeries (docs/nats.md, Sealed records)."}, func() float64 { return m.unsealed() }),
	)
	return m
}
