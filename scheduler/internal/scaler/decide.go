package scaler

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"time"

	"go.uber.org/zap"

	"github.com/berthhq/berth/common/lifecycle"
	"github.com/berthhq/berth/common/logging"
	"github.com/berthhq/berth/common/msg"
	"github.com/berthhq/berth/scheduler/internal/autoscale"
	"github.com/berthhq/berth/scheduler/internal/store"
)

// Retention of stored decisions: those that changed nothing are kept long
// enough to rebuild any stabilisation window (at most an hour) on a new
// leader, changes for a week.
const (
	keepHolds   = 2 * time.Hour
	keepChanges = 7 * 24 * time.Hour
)

// policyLoop keeps the policies current each Interval while Lead does
// not (its rounds do then).
func (s *Scaler) policyLoop(ctx context.Context) {
	lifecycle.Every(ctx, s.cfg.Interval, func() {
		if s.leading.Load() {
			return
		}
		if _, err := s.refresh(ctx, time.Now()); err != nil && ctx.Err() == nil {
			s.logger.Warn("autoscaler could not read the apps' policies, retrying next interval", zap.Error(err))
		}
	})
}

// scaleLoop decides every autoscaled app each Interval (Lead).
func (s *Scaler) scaleLoop(ctx context.Context) {
	lifecycle.Every(ctx, s.cfg.Interval, func() {
		started := time.Now()
		if err := s.scaleRound(ctx, started); err != nil && ctx.Err() == nil {
			s.logger.Warn("autoscaler round failed, retrying next interval", zap.Error(err))
		}
		s.metrics.scaleDuration.Observe(time.Since(started).Seconds())
	})
}

// refresh reads the autoscaled apps' policies, keeps them for Samples
// and the stats loop, and prunes the samples outside their windows.
func (s *Scaler) refresh(ctx context.Context, now time.Time) (map[string]appPolicy, error) {
	apps, err := s.st.List(ctx)
	if err != nil {
		return nil, err
	}
	policies := map[string]appPolicy{}
	keep := map[string]time.Duration{}
	for _, a := range apps {
		if a.Spec == nil || a.Spec.Scaling == nil {
			continue
		}
		sp := *a.Spec
		sp.Default()
		p := PolicyOf(&sp)
		cpu := s.cpuLimit(&sp)
		policies[a.Name] = appPolicy{policy: p, cpuLimit: cpu, usage: p.TargetCPUPercent > 0 || p.TargetMemoryPercent > 0, app: a}
		keep[a.Name] = p.Window
	}
	s.intake.prune(now, keep)
	s.mu.Lock()
	s.policies = policies
	s.mu.Unlock()
	return policies, nil
}

// scaleRound refreshes the policies and, when leading, decides each app.
func (s *Scaler) scaleRound(ctx context.Context, now time.Time) error {
	policies, err := s.refresh(ctx, now)
	if err != nil {
		return err
	}
	l, ok := s.lease()
	if !ok {
		s.mu.Lock()
		s.term, s.history, s.held = 0, nil, nil
		s.mu.Unlock()
		s.metrics.resetScaling()
		return nil
	}
	if s.term != l.Term {
		if err := s.rebuildHistory(ctx, now, policies); err != nil {
			return err
		}
		s.term = l.Term
	}
	records, err := s.st.Instances(ctx, "")
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
		instances[r.App] = append(instances[r.App], autoscale.Instance{ID: s.intake.internID(r.App, r.ID), Ready: r.State == msg.StateRunning && r.Health == msg.StatusHealthy, StartedAt: started})
	}

	s.metrics.resetScaling()
	var holds []store.Decision
	var held []store.Event
	for _, name := range slices.Sorted(maps.Keys(policies)) {
		ap := policies[name]
		h := autoscale.Prune(ap.policy, s.history[name], now)
		// Only samples taken since the last change count: older ones
		// describe a load spread over a different count.
		since := now.Add(-ap.policy.Window)
		if n := len(h.Changes); n > 0 && h.Changes[n-1].At.After(since) {
			since = h.Changes[n-1].At
		}
		traffic, usage := s.intake.samples(name, since)
		d := autoscale.Decide(ap.policy, autoscale.Samples{Instances: instances[name], Usage: usage, Traffic: traffic}, ap.app.DesiredReplicas, h, now)
		h.Recommendations = append(h.Recommendations, autoscale.Point{At: now, Replicas: d.Recommendation})
		s.history[name] = h
		s.metrics.observeDecision(name, ap.policy, d)
		reasons, _ := json.Marshal(d.Reasons)
		rec := store.Decision{App: name, Current: d.Current, Desired: d.Desired, Recommendation: d.Recommendation, Reasons: reasons, Limits: d.Limits, At: now}
		if d.Desired == d.Current {
			holds = append(holds, rec)
			if d.Recommendation != d.Current && s.held[name] != d.Recommendation {
				s.held[name] = d.Recommendation
				held = append(held, store.Event{App: name, Kind: msg.EventScaleHeld, Actor: store.ActorAutoscaler,
					Message: fmt.Sprintf("%s recommends %d replicas, held at %d: %s", name, d.Recommendation, d.Current, d),
					Details: map[string]string{"current": fmt.Sprint(d.Current), "recommendation": fmt.Sprint(d.Recommendation), "limits": strings.Join(d.Limits, "; ")}})
			} else if d.Recommendation == d.Current {
				delete(s.held, name)
			}
			continue
		}
		err := s.w.Tx(ctx, l, func(ctx context.Context, tx *store.Tx) error {
			id, err := tx.RecordDecision(ctx, rec)
			if err != nil {
				return err
			}
			return addEvent(ctx, tx, store.Event{App: name, Kind: msg.EventAppScaled, Actor: store.ActorAutoscaler,
				Message: fmt.Sprintf("%s scaled %s", name, d),
				Details: map[string]string{"from": fmt.Sprint(d.Current), "to": fmt.Sprint(d.Desired), "recommendation": fmt.Sprint(d.Recommendation), "decision": fmt.Sprint(id)}})
		})
		switch {
		case errors.Is(err, store.ErrScaleConflict):
			s.logger.Info("app changed since the decision: deciding again next round", zap.String(logging.KeyApp, name), zap.Error(err))
			continue
		case err != nil:
			return err
		}
		h.Changes = append(h.Changes, autoscale.Change{At: now, From: d.Current, To: d.Desired})
		s.history[name] = h
		delete(s.held, name)
		s.metrics.scaleChange(d.Current, d.Desired)
		s.logger.Info("autoscaled", zap.String(logging.KeyApp, name), zap.Int("from", d.Current), zap.Int("to", d.Desired), zap.Stringer("decision", d))
		s.wake()
	}
	prune := now.Sub(s.pruned) > 10*time.Minute
	if len(holds) == 0 && len(held) == 0 && !prune {
		return nil
	}
	return s.w.Tx(ctx, l, func(ctx context.Context, tx *store.Tx) error {
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
			s.pruned = now
		}
		return nil
	})
}

// rebuildHistory reads back the stored decisions a new leader's
// stabilisation windows, rate limits and cooldowns look at.
func (s *Scaler) rebuildHistory(ctx context.Context, now time.Time, policies map[string]appPolicy) error {
	horizon := time.Minute
	for _, ap := range policies {
		p := ap.policy
		horizon = max(horizon, p.UpStabilization, p.DownStabilization, p.UpPeriod, p.UpCooldown, p.DownCooldown)
	}
	ds, err := s.st.Decisions(ctx, "", now.Add(-horizon), 1<<20)
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
	s.history = history
	s.held = map[string]int{}
	s.logger.Info("autoscaler history rebuilt", zap.Int("decisions", len(ds)), zap.Int("apps", len(history)), zap.Duration("horizon", horizon))
	return nil
}

// addEvent records e in tx; the writer publishes it once tx commits.
func addEvent(ctx context.Context, tx *store.Tx, e store.Event) error {
	_, err := tx.AddEvent(ctx, e)
	return err
}
