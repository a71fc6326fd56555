package server

import (
	"context"

	"go.uber.org/zap"

	"github.com/berthhq/berth/common/msg"
	"github.com/berthhq/berth/scheduler/internal/healthcheck"
	"github.com/berthhq/berth/scheduler/internal/store"
)

// checkEvents records the turns to unhealthy of the scheduler's own
// health checks as instance_unhealthy events, under the current lease.
type checkEvents struct{ r *replica }

var _ healthcheck.Reporter = checkEvents{}

func (e checkEvents) Unhealthy(ctx context.Context, t healthcheck.Target, s healthcheck.State) {
	l, ok := e.r.el.Leader()
	if !ok {
		return
	}
	why := s.Failure + ": " + s.Message
	if err := e.r.pub.Event(ctx, l, store.Event{App: t.App, Instance: t.Instance, Kind: msg.EventInstanceUnhealthy,
		Message: msg.Truncate("instance "+t.Instance+" of "+t.App+" is unhealthy ("+t.Check.Type+" check): "+why, 1024),
		Details: map[string]string{"check": t.Check.Type, "failure": s.Failure, "host": t.Host}, Actor: store.ActorScheduler}); err != nil {
		e.r.logger.Warn("record an unhealthy instance", zap.String("app", t.App), zap.String("instance", t.Instance), zap.Error(err))
	}
}
