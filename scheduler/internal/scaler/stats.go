package scaler

import (
	"context"
	"time"

	"go.uber.org/zap"

	"github.com/berthhq/berth/common/lifecycle"
	"github.com/berthhq/berth/common/logging"
	"github.com/berthhq/berth/common/msg"
	"github.com/berthhq/berth/scheduler/internal/docker"
	"github.com/berthhq/berth/scheduler/internal/store"
)

// statsLoop reads Docker stats of the autoscaled apps' containers each
// StatsInterval while leading, and publishes them per app.
func (s *Scaler) statsLoop(ctx context.Context) {
	lifecycle.Every(ctx, s.cfg.StatsInterval, func() {
		l, ok := s.lease()
		if !ok {
			s.readings = nil
			return
		}
		if err := s.statsRound(ctx, l); err != nil && ctx.Err() == nil {
			s.logger.Warn("docker stats round incomplete", zap.Error(err))
		}
	})
}

func (s *Scaler) statsRound(ctx context.Context, l store.Lease) error {
	s.mu.Lock()
	need := map[string]appPolicy{}
	for name, ap := range s.policies {
		if ap.usage {
			need[name] = ap
		}
	}
	s.mu.Unlock()
	if len(need) == 0 {
		return nil
	}
	containers, err := s.dk.List(ctx)
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
	readings, statsErr := s.dk.Stats(ctx, ids, s.cfg.StatsParallel)
	prev := s.readings
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
	s.readings = next
	for app, u := range out {
		b, err := msg.Encode(u)
		if err == nil {
			err = s.conn.Publish(ctx, s.names.UsageSubject(app), b)
		}
		if err != nil {
			s.logger.Warn("publish usage", zap.String(logging.KeyApp, app), zap.Error(err))
		}
	}
	return statsErr
}
