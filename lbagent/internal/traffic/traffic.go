// Package traffic owns publishing what nginx served: every window it takes
// each app's access log aggregate and publishes it on
// <prefix>.v1.metrics.<app>, for every app the agent routes, so an idle
// app reports zero requests rather than nothing.
package traffic

import (
	"context"
	"time"

	"go.uber.org/zap"

	"github.com/berthhq/berth/common/bus"
	"github.com/berthhq/berth/common/logging"
	"github.com/berthhq/berth/common/msg"
)

// Flusher hands over the window that ends at now: one message per app in
// known (zero requests included) and per app seen in the log. Flush is
// called from Run's goroutine only; the Flusher must be safe against the
// concurrent writer that fills it.
type Flusher interface {
	Flush(now time.Time, known []string) []*msg.Metrics
}

// Publisher publishes a window every period. Create it with New and run it
// with Run.
type Publisher struct {
	conn   *bus.Conn
	names  msg.Names
	agg    Flusher
	routed func() []string
	window time.Duration
	logger *zap.Logger
}

// New returns a publisher of agg's windows, one each window, for the apps
// routed returns (it must be safe for concurrent use).
func New(conn *bus.Conn, names msg.Names, agg Flusher, routed func() []string, window time.Duration, logger *zap.Logger) *Publisher {
	return &Publisher{conn: conn, names: names, agg: agg, routed: routed, window: window, logger: logger}
}

// Run publishes until ctx ends. A message that cannot be published is
// logged and dropped: the next window carries on.
func (p *Publisher) Run(ctx context.Context) error {
	t := time.NewTicker(p.window)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case now := <-t.C:
			p.publish(ctx, now)
		}
	}
}

func (p *Publisher) publish(ctx context.Context, now time.Time) {
	for _, m := range p.agg.Flush(now, p.routed()) {
		b, err := msg.Encode(m)
		if err == nil {
			err = p.conn.Publish(ctx, p.names.MetricsSubject(m.App), b)
		}
		if err != nil {
			p.logger.Warn("publish traffic metrics", zap.String(logging.KeyApp, m.App), zap.Error(err))
		}
	}
}
