package controller

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"sync"
	"time"

	"go.uber.org/zap"

	"github.com/berthhq/berth/common/bus"
	"github.com/berthhq/berth/common/logging"
	"github.com/berthhq/berth/common/msg"
	"github.com/berthhq/berth/common/spec"
	"github.com/berthhq/berth/scheduler/internal/autoscale"
	"github.com/berthhq/berth/scheduler/internal/docker"
	"github.com/berthhq/berth/scheduler/internal/store"
)

// ScalingConfig tunes the autoscaler.
type ScalingConfig struct {
	// Interval is how often every autoscaled app is decided.
	Interval time.Duration
	// StatsInterval is how often the leader reads Docker stats of the
	// autoscaled apps that have a CPU or memory target; StatsParallel
	// bounds the readings in flight.
	StatsInterval time.Duration
	StatsParallel int
}

// Retention of stored decisions: those that changed nothing are kept long
// enough to rebuild any stabilisation window (at most an hour) on a new
// leader, changes for a week.
const (
	keepHolds   = 2 * time.Hour
	keepChanges = 7 * 24 * time.Hour
)

// scaler is the autoscaler's state. Every replica keeps the policies (for
// the intake's horizons and the API); only the leader keeps history.
type scaler struct {
	mu       sync.Mutex
	policies map[string]appPolicy
	// term is the lease term history was rebuilt for; 0 while following.
	term     uint64
	history  map[string]autoscale.History
	held     map[string]int // by app: the recommendation last reported held
	pruned   time.Time
	readings map[string]docker.Reading // by container: the previous stats reading
}

type appPolicy struct {
	policy   autoscale.Policy
	cpuLimit float64
	usage    bool // a CPU or memory target: Docker stats are needed
	app      store.App
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

// subscribeSamples feeds the intake from NATS until ctx ends.
func (c *Controller) subscribeSamples(ctx context.Context) {
	drop := func(subject string, err error) {
		c.metrics.samplesDropped.Inc()
		c.logger.Debug("sample dropped", zap.String("subject", subject), zap.Error(err))
	}
	subs := []struct {
		subject string
		handle  bus.MsgHandler
	}{
		{c.names.AllMetrics(), bus.Decoded(msg.DecodeAs[*msg.Metrics], func(subject string, m *msg.Metrics) {
			if subject != c.names.MetricsSubject(m.App) {
				drop(subject, fmt.Errorf("app %q does not match the subject", m.App))
				return
			}
			c.intake.addTraffic(m)
		}, drop)},
		{c.names.AllUsage(), bus.Decoded(msg.DecodeAs[*msg.Usage], func(subject string, m *msg.Usage) {
			if subject != c.names.UsageSubject(m.App) {
				drop(subject, fmt.Errorf("app %q does not match the subject", m.App))
				return
			}
			c.intake.addUsage(m)
		}, drop)},
	}
	for _, s := range subs {
		sub, err := c.conn.Subscribe(s.subject, s.handle)
		if err != nil {
			c.logger.Error("autoscaler intake: cannot subscribe", zap.String("subject", s.subject), zap.Error(err))
			continue
		}
		go func() {
			<-ctx.Done()
			_ = sub.Drain()
		}()
	}
}

// scaleLoop decides every autoscaled app each Interval, and keeps the
// policies current on followers too.
func (c *Controller) scaleLoop(ctx context.Context) {
	every(ctx, c.cfg.Scaling.Interval, func() {
		started := time.Now()
		if err := c.scaleRound(ctx, started); err != nil && ctx.Err() == nil {
			c.logger.Warn("autoscaler round failed, retrying next interval", zap.Error(err))
		}
		c.metrics.scaleDuration.Observe(time.Since(started).Seconds())
	})
}

// every runs fn each period until ctx ends.
func every(ctx context.Context, period time.Duration, fn func()) {
	tick := time.NewTicker(period)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
			fn()
		}
	}
}

// scaleRound refreshes the policies and, when leading, decides each app.
func (c *Controller) scaleRound(ctx context.Context, now time.Time) error {
	apps, err := c.st.List(ctx)
	if err != nil {
		return err
	}
	policies := map[string]appPolicy{}
	keep := map[string]time.Duration{}
	for _, a := range apps {
		if a.Spec == nil || a.Spec.Scaling == nil {
			continue
		}
		s := *a.Spec
		s.Default()
		p := PolicyOf(&s)
		cpu, _ := c.limits(&s)
		policies[a.Name] = appPolicy{policy: p, cpuLimit: cpu, usage: p.TargetCPUPercent > 0 || p.TargetMemoryPercent > 0, app: a}
		keep[a.Name] = p.Window
	}
	c.intake.prune(now, keep)
	sc := &c.scale
	sc.mu.Lock()
	sc.policies = policies
	sc.mu.Unlock()

	l, ok := c.lease()
	if !ok {
		sc.mu.Lock()
		sc.term, sc.history, sc.held = 0, nil, nil
		sc.mu.Unlock()
		c.metrics.resetScaling()
		return nil
	}
	if sc.term != l.Term {
		if err := c.rebuildHistory(ctx, now, policies); err != nil {
			return err
		}
		sc.term = l.Term
	}
	records, err := c.st.Instances(ctx, "")
	if err != nil {
		return err
	}
	instances := map[string][]autoscale.Instance{}
	for _, r := range records {
		switch r.State {
		case msg.StateCreating, msg.StateStarting, msg.StateRunning:
		default:
			continue // draining, stopping, failed: on their way out
		}
		started := r.CreatedAt
		if r.StartedAt != nil {
			started = *r.StartedAt
		}
		instances[r.App] = append(instances[r.App], autoscale.Instance{ID: c.intake.internID(r.App, r.ID), Ready: r.State == msg.StateRunning && r.Health == msg.StatusHealthy, StartedAt: started})
	}

	c.metrics.resetScaling()
	var holds []store.Decision
	var held []store.Event
	for _, name := range slices.Sorted(maps.Keys(policies)) {
		ap := policies[name]
		h := autoscale.Prune(ap.policy, sc.history[name], now)
		// Only samples taken since the last change count: older ones
		// describe a load spread over a different count.
		since := now.Add(-ap.policy.Window)
		if n := len(h.Changes); n > 0 && h.Changes[n-1].At.After(since) {
			since = h.Changes[n-1].At
		}
		traffic, usage := c.intake.samples(name, since)
		d := autoscale.Decide(ap.policy, autoscale.Samples{Instances: instances[name], Usage: usage, Traffic: traffic}, ap.app.DesiredReplicas, h, now)
		h.Recommendations = append(h.Recommendations, autoscale.Point{At: now, Replicas: d.Recommendation})
		sc.history[name] = h
		c.metrics.observeDecision(name, ap.policy, d)
		reasons, _ := json.Marshal(d.Reasons)
		rec := store.Decision{App: name, Current: d.Current, Desired: d.Desired, Recommendation: d.Recommendation, Reasons: reasons, Limits: d.Limits, At: now}
		if d.Desired == d.Current {
			holds = append(holds, rec)
			if d.Recommendation != d.Current && sc.held[name] != d.Recommendation {
				sc.held[name] = d.Recommendation
				held = append(held, store.Event{App: name, Kind: "scale_held",
					Message: fmt.Sprintf("%s recommends %d replicas, held at %d: %s", name, d.Recommendation, d.Current, d),
					Details: map[string]string{"current": fmt.Sprint(d.Current), "recommendation": fmt.Sprint(d.Recommendation), "limits": strings.Join(d.Limits, "; ")}})
			} else if d.Recommendation == d.Current {
				delete(sc.held, name)
			}
			continue
		}
		err := c.pub.Tx(ctx, l, func(ctx context.Context, tx *store.Tx) error {
			id, err := tx.RecordDecision(ctx, rec)
			if err != nil {
				return err
			}
			return addEvent(ctx, tx, store.Event{App: name, Kind: "app_scaled",
				Message: fmt.Sprintf("%s scaled %s", name, d),
				Details: map[string]string{"from": fmt.Sprint(d.Current), "to": fmt.Sprint(d.Desired), "recommendation": fmt.Sprint(d.Recommendation), "decision": fmt.Sprint(id)}})
		})
		switch {
		case errors.Is(err, store.ErrScaleConflict):
			c.logger.Info("app changed since the decision: deciding again next round", zap.String(logging.KeyApp, name), zap.Error(err))
			continue
		case err != nil:
			return err
		}
		h.Changes = append(h.Changes, autoscale.Change{At: now, From: d.Current, To: d.Desired})
		sc.history[name] = h
		delete(sc.held, name)
		c.metrics.scaleChange(d.Current, d.Desired)
		c.logger.Info("autoscaled", zap.String(logging.KeyApp, name), zap.Int("from", d.Current), zap.Int("to", d.Desired), zap.Stringer("decision", d))
		c.Wake()
	}
	prune := now.Sub(sc.pruned) > 10*time.Minute
	if len(holds) == 0 && len(held) == 0 && !prune {
		return nil
	}
	return c.pub.Tx(ctx, l, func(ctx context.Context, tx *store.Tx) error {
		for _, d := range holds {
			if _, err := tx.RecordDecision(ctx, d); err != nil {
				return err
			}
		}
		for _, e := range held {
			if err := addEvent(ctx, tx, e); err != nil {
				return err
			}
		}
		if prune {
			if _, err := tx.PruneDecisions(ctx, now.Add(-keepHolds), now.Add(-keepChanges)); err != nil {
				return err
			}
			sc.pruned = now
		}
		return nil
	})
}

// rebuildHistory reads back the stored decisions a new leader's
// stabilisation windows, rate limits and cooldowns look at.
func (c *Controller) rebuildHistory(ctx context.Context, now time.Time, policies map[string]appPolicy) error {
	horizon := time.Minute
	for _, ap := range policies {
		p := ap.policy
		horizon = max(horizon, p.UpStabilization, p.DownStabilization, p.UpPeriod, p.UpCooldown, p.DownCooldown)
	}
	ds, err := c.st.Decisions(ctx, "", now.Add(-horizon), 1<<20)
	if err != nil {
		return err
	}
	history := map[string]autoscale.History{}
	for _, d := range ds {
		h := history[d.App]
		h.Recommendations = append(h.Recommendations, autoscale.Point{At: d.At, Replicas: d.Recommendation})
		if d.Desired != d.Current {
			h.Changes = append(h.Changes, autoscale.Change{At: d.At, From: d.Current, To: d.Desired})
		}
		history[d.App] = h
	}
	c.scale.history = history
	c.scale.held = map[string]int{}
	c.logger.Info("autoscaler history rebuilt", zap.Int("decisions", len(ds)), zap.Int("apps", len(history)), zap.Duration("horizon", horizon))
	return nil
}

// statsLoop reads Docker stats of the autoscaled apps' containers each
// StatsInterval while leading, and publishes them per app.
func (c *Controller) statsLoop(ctx context.Context) {
	every(ctx, c.cfg.Scaling.StatsInterval, func() {
		l, ok := c.lease()
		if !ok {
			c.scale.readings = nil
			return
		}
		if err := c.statsRound(ctx, l); err != nil && ctx.Err() == nil {
			c.logger.Warn("docker stats round incomplete", zap.Error(err))
		}
	})
}

func (c *Controller) statsRound(ctx context.Context, l store.Lease) error {
	c.scale.mu.Lock()
	need := map[string]appPolicy{}
	for name, ap := range c.scale.policies {
		if ap.usage {
			need[name] = ap
		}
	}
	c.scale.mu.Unlock()
	if len(need) == 0 {
		return nil
	}
	containers, err := c.dk.List(ctx)
	if err != nil {
		return err
	}
	var ids []string
	owner := map[string]docker.Container{}
	for _, ct := range containers {
		if _, ok := need[ct.App]; ok && ct.Running && ct.Instance != "" {
			ids = append(ids, ct.ID)
			owner[ct.ID] = ct
		}
	}
	readings, statsErr := c.dk.Stats(ctx, ids, c.cfg.Scaling.StatsParallel)
	prev := c.scale.readings
	next := make(map[string]docker.Reading, len(readings))
	out := map[string]*msg.Usage{}
	now := time.Now().UTC()
	for id, r := range readings {
		next[id] = r
		ct := owner[id]
		cpu, mem, ok := docker.Usage(prev[id], r, need[ct.App].cpuLimit)
		if !ok {
			continue // a first reading: the rate needs two
		}
		u := out[ct.App]
		if u == nil {
			u = &msg.Usage{App: ct.App, Term: l.Term, At: now}
			out[ct.App] = u
		}
		if len(u.Instances) < msg.MaxUsageInstances {
			u.Instances = append(u.Instances, msg.InstanceUsage{Instance: ct.Instance, CPUPercent: min(cpu, 1e6), MemoryPercent: min(mem, 1e6), MemoryBytes: r.MemoryBytes})
		}
	}
	c.scale.readings = next
	for app, u := range out {
		b, err := msg.Encode(u)
		if err == nil {
			err = c.conn.Publish(ctx, c.names.UsageSubject(app), b)
		}
		if err != nil {
			c.logger.Warn("publish usage", zap.String(logging.KeyApp, app), zap.Error(err))
		}
	}
	return statsErr
}

// Samples returns an autoscaled app's samples inside its window, as this
// replica holds them (every replica does), and its policy; ok is false for
// an app this replica does not know as autoscaled.
func (c *Controller) Samples(app string, now time.Time) (traffic []autoscale.Traffic, usage []autoscale.Usage, policy autoscale.Policy, ok bool) {
	c.scale.mu.Lock()
	ap, ok := c.scale.policies[app]
	c.scale.mu.Unlock()
	if !ok {
		return nil, nil, autoscale.Policy{}, false
	}
	traffic, usage = c.intake.samples(app, now.Add(-ap.policy.Window))
	return traffic, usage, ap.policy, true
}
