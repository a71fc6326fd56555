// Package scaler is the autoscaler's runtime. As the leader it runs the
// pure autoscale.Decide for every autoscaled app each interval and records
// each decision (fenced, with its event); on every replica it keeps the
// sample intake fed from NATS (lbagent traffic, the leader's usage), so a
// new leader decides with the window its predecessor had; as the leader it
// reads Docker stats of the apps with a CPU or memory target and publishes
// them as berth.v1.usage.<app>.
package scaler

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"

	"github.com/berthhq/berth/common/bus"
	"github.com/berthhq/berth/common/msg"
	"github.com/berthhq/berth/common/spec"
	"github.com/berthhq/berth/scheduler/internal/autoscale"
	"github.com/berthhq/berth/scheduler/internal/docker"
	"github.com/berthhq/berth/scheduler/internal/publish"
	"github.com/berthhq/berth/scheduler/internal/store"
)

// Config tunes the autoscaler.
type Config struct {
	// Interval is how often every autoscaled app is decided; zero turns
	// the autoscaler off.
	Interval time.Duration
	// StatsInterval is how often the leader reads Docker stats of the
	// autoscaled apps that have a CPU or memory target; StatsParallel
	// bounds the readings in flight.
	StatsInterval time.Duration
	StatsParallel int
	// DefaultCPU (cores) is the CPU limit of a container whose spec sets
	// none: the base of its CPU percent.
	DefaultCPU float64
}

// Store reads the desired state the autoscaler decides from. Calls may
// come concurrently.
type Store interface {
	// List returns every app.
	List(ctx context.Context) ([]store.App, error)
	// Instances returns the instance records of app ("" for all apps).
	Instances(ctx context.Context, app string) ([]store.Instance, error)
	// Decisions returns app's ("" for all apps) decisions since since,
	// oldest first, at most limit.
	Decisions(ctx context.Context, app string, since time.Time, limit int) ([]store.Decision, error)
}

// Docker lists the scheduler's containers and reads their stats. Only the
// stats loop calls it, one call at a time.
type Docker interface {
	// List returns the containers of the scheduler's prefix.
	List(ctx context.Context) ([]docker.Container, error)
	// Stats reads the containers ids, at most parallel at once.
	Stats(ctx context.Context, ids []string, parallel int) (map[string]docker.Reading, error)
}

// Bus is the NATS the autoscaler reads samples from and publishes usage
// to. Subscribe is called once per subject when Run starts; Publish from
// the stats loop.
type Bus interface {
	// Subscribe calls handler for every message on subject.
	Subscribe(subject string, handler bus.MsgHandler) (*bus.Subscription, error)
	// Publish sends data on subject.
	Publish(ctx context.Context, subject string, data []byte) error
}

// Writer writes under the lease. Only the decision loop calls it.
type Writer interface {
	// Tx runs fn in one transaction fenced by l (store.ErrNotLeader once
	// l is lost) and publishes the events fn added after it commits.
	Tx(ctx context.Context, l store.Lease, fn func(ctx context.Context, tx *store.Tx) error) error
}

var (
	_ Store  = (*store.Store)(nil)
	_ Docker = (*docker.Client)(nil)
	_ Bus    = (*bus.Conn)(nil)
	_ Writer = (*publish.Publisher)(nil)
)

// Scaler runs the autoscaler. Create it with New; run it once with Run.
// Samples is safe to call concurrently with Run.
type Scaler struct {
	cfg    Config
	st     Store
	dk     Docker
	conn   Bus
	w      Writer
	names  msg.Names
	lease  func() (store.Lease, bool)
	wake   func()
	logger *zap.Logger

	metrics *metrics
	intake  *intake
	latest  *latest

	mu       sync.Mutex
	policies map[string]appPolicy // under mu

	// leading is set while Lead runs: its rounds read the policies then.
	leading atomic.Bool
	// term is the lease term history was rebuilt for (0 while following);
	// term, history, held and pruned belong to the decision loop.
	term    uint64
	history map[string]autoscale.History
	held    map[string]int // by app: the recommendation last reported held
	pruned  time.Time
	// readings belong to the stats loop: the previous reading by container.
	readings map[string]docker.Reading

	// gate lets Run wait for the sample handlers in flight; stopped (under
	// gate) turns later deliveries away.
	gate    sync.RWMutex
	stopped bool
}

type appPolicy struct {
	policy   autoscale.Policy
	cpuLimit float64
	usage    bool // a CPU or memory target: Docker stats are needed
	app      store.App
}

// New returns a scaler. lease reports the current leadership; wake is
// called after a decision changed an app's desired replicas (the
// controller's Wake).
func New(cfg Config, st Store, dk Docker, conn Bus, w Writer, names msg.Names, lease func() (store.Lease, bool), wake func(), logger *zap.Logger) *Scaler {
	return &Scaler{cfg: cfg, st: st, dk: dk, conn: conn, w: w, names: names, lease: lease, wake: wake, logger: logger.Named("scaler"),
		metrics: newMetrics(), intake: newIntake(), latest: newLatest(), history: map[string]autoscale.History{}, held: map[string]int{}}
}

// Run is the part of the scaler every replica runs: it takes in the
// samples, and reads the apps' policies every Interval (for the API, and
// for the decisions of a replica that comes to lead), until ctx ends.
// Then it drains the subscriptions, waits for its loop and for the sample
// handlers in flight, and returns nil: no goroutine it started outlives
// it. Lead is the leader's part.
func (s *Scaler) Run(ctx context.Context) error {
	if s.cfg.Interval <= 0 {
		<-ctx.Done()
		return nil
	}
	subs := s.subscribe()
	var wg sync.WaitGroup
	wg.Go(func() { s.policyLoop(ctx) })
	<-ctx.Done()
	for _, sub := range subs {
		if err := sub.Drain(); err != nil {
			s.logger.Warn("autoscaler intake: drain", zap.Error(err))
		}
	}
	wg.Wait()
	s.gate.Lock() // every handler in flight has returned
	s.stopped = true
	s.gate.Unlock()
	return nil
}

// Lead is the leader-only part of the scaler (run it in a leader.Group):
// it decides every autoscaled app each Interval, with the history the
// stored decisions give, and reads Docker stats each StatsInterval, until
// ctx ends. Each round still checks the lease. It returns once both loops
// have, with the decision state and gauges cleared. Leads do not overlap.
func (s *Scaler) Lead(ctx context.Context) error {
	if s.cfg.Interval <= 0 {
		<-ctx.Done()
		return nil
	}
	s.leading.Store(true)
	defer s.following()
	var wg sync.WaitGroup
	wg.Go(func() { s.scaleLoop(ctx) })
	if s.cfg.StatsInterval > 0 {
		wg.Go(func() { s.statsLoop(ctx) })
	}
	wg.Wait()
	return nil
}

// following forgets what only the leader keeps: the history, the held
// recommendations, the last stats readings, and the decision gauges.
func (s *Scaler) following() {
	s.mu.Lock()
	s.term, s.history, s.held = 0, nil, nil
	s.mu.Unlock()
	s.readings = nil
	s.metrics.resetScaling()
	s.leading.Store(false)
}

// PolicyOf turns an app's scaling block (defaults applied) into the
// autoscaler's policy.
func PolicyOf(s *spec.App) autoscale.Policy {
	sc := s.Scaling
	p := autoscale.Policy{Min: sc.Min, Max: sc.Max, TargetCPUPercent: sc.TargetCPUPercent, TargetMemoryPercent: sc.TargetMemoryPercent,
		TargetRPSPerReplica: sc.TargetRPSPerReplica, TargetP95LatencyMS: sc.TargetP95LatencyMS, Tolerance: sc.Tolerance,
		Window: sc.Window.Std(), UpStabilization: sc.ScaleUpStabilization.Std(), DownStabilization: sc.ScaleDownStabilization.Std(),
		UpPercent: sc.ScaleUpMaxPercent, UpPods: sc.ScaleUpMaxReplicas, UpPeriod: sc.ScaleUpPeriod.Std(),
		UpCooldown: sc.ScaleUpCooldown.Std(), DownCooldown: sc.ScaleDownCooldown.Std()}
	if s.Health != nil {
		p.InitialDelay = s.Health.InitialDelay.Std()
	}
	return p
}

// subscribe feeds the intake from NATS and returns the subscriptions made.
func (s *Scaler) subscribe() []*bus.Subscription {
	drop := func(subject string, err error) {
		s.metrics.samplesDropped.Inc()
		s.logger.Debug("sample dropped", zap.String("subject", subject), zap.Error(err))
	}
	subs := []struct {
		subject string
		handle  bus.MsgHandler
	}{
		{s.names.AllMetrics(), bus.Decoded(msg.DecodeAs[*msg.Metrics], func(subject string, m *msg.Metrics) {
			if subject != s.names.MetricsSubject(m.App) {
				drop(subject, fmt.Errorf("app %q does not match the subject", m.App))
				return
			}
			now := time.Now()
			if err := s.intake.addTraffic(m, now); err != nil {
				drop(subject, err)
			} else if !s.latest.add(m, now) {
				drop(subject, fmt.Errorf("the last windows of %d apps and nodes are kept already", maxLatest))
			}
		}, drop)},
		{s.names.AllUsage(), bus.Decoded(msg.DecodeAs[*msg.Usage], func(subject string, m *msg.Usage) {
			if subject != s.names.UsageSubject(m.App) {
				drop(subject, fmt.Errorf("app %q does not match the subject", m.App))
				return
			}
			if err := s.intake.addUsage(m, time.Now()); err != nil {
				drop(subject, err)
			}
		}, drop)},
	}
	var out []*bus.Subscription
	for _, sb := range subs {
		sub, err := s.conn.Subscribe(sb.subject, s.gated(sb.handle))
		if err != nil {
			s.logger.Error("autoscaler intake: cannot subscribe", zap.String("subject", sb.subject), zap.Error(err))
			continue
		}
		out = append(out, sub)
	}
	return out
}

// gated runs h unless Run has stopped, and lets Run wait for it.
func (s *Scaler) gated(h bus.MsgHandler) bus.MsgHandler {
	return func(subject string, data []byte) {
		s.gate.RLock()
		defer s.gate.RUnlock()
		if s.stopped {
			return
		}
		h(subject, data)
	}
}

// Samples returns an autoscaled app's samples inside its window, as this
// replica holds them (every replica does), and its policy; ok is false for
// an app this replica does not know as autoscaled.
func (s *Scaler) Samples(app string, now time.Time) (traffic []autoscale.Traffic, usage []autoscale.Usage, policy autoscale.Policy, ok bool) {
	s.mu.Lock()
	ap, ok := s.policies[app]
	s.mu.Unlock()
	if !ok {
		return nil, nil, autoscale.Policy{}, false
	}
	traffic, usage = s.intake.samples(app, now.Add(-ap.policy.Window))
	return traffic, usage, ap.policy, true
}

// Traffic returns app's traffic over the last window of every lbagent
// that reported it lately, for every app, autoscaled or not; ok is false
// when none did.
func (s *Scaler) Traffic(app string, now time.Time) (Traffic, bool) {
	return s.latest.traffic(app, now)
}

// cpuLimit is the CPU limit (cores) of a container of s: the spec's, or
// the scheduler's default.
func (s *Scaler) cpuLimit(a *spec.App) float64 {
	if a.Resources.CPU != 0 {
		return a.Resources.CPU
	}
	return s.cfg.DefaultCPU
}
