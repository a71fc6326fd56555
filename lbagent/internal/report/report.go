// Package report owns what the lbagent tells NATS about itself: each
// config change on <prefix>.v1.reloads.<node>, and the state nginx serves
// (the applied revision and per-app generations) as this node's key in the
// agents bucket, which the scheduler waits on before draining instances.
package report

import (
	"context"
	"errors"

	"go.uber.org/zap"

	"github.com/berthhq/berth/common/bus"
	"github.com/berthhq/berth/common/msg"
	"github.com/berthhq/berth/lbagent/internal/agent"
)

// Observer sees every reload result and applied state before it is
// published (the metrics). Calls come one at a time, from the agent's loop.
type Observer interface {
	// Reload is one config change, skipped ones included.
	Reload(r *msg.Reload)
	// Applied is the state nginx now serves.
	Applied(a *msg.Agent)
}

// Reporter publishes reload results and heartbeats the applied state. Its
// methods are called one at a time, from the agent's loop; it is not safe
// for concurrent use.
type Reporter struct {
	conn     *bus.Conn
	names    msg.Names
	node     string
	logger   *zap.Logger
	observer Observer
	agents   *bus.KV
}

var _ agent.Reporter = (*Reporter)(nil)

// New returns the reporter of node; observer may be nil.
func New(conn *bus.Conn, names msg.Names, node string, observer Observer, logger *zap.Logger) *Reporter {
	return &Reporter{conn: conn, names: names, node: node, observer: observer, logger: logger}
}

// Reload publishes a config change. A skipped one (nothing to change) is
// only observed: heartbeats carry its revision.
func (r *Reporter) Reload(ctx context.Context, m *msg.Reload) {
	if r.observer != nil {
		r.observer.Reload(m)
	}
	if m.Result == msg.ReloadSkipped {
		return
	}
	b, err := msg.Encode(m)
	if err == nil {
		err = r.conn.Publish(ctx, r.names.ReloadsSubject(r.node), b)
	}
	if err != nil {
		r.logger.Warn("publish reload result", zap.Error(err))
	}
}

// Applied puts the applied state under this node's key in the agents
// bucket. The bucket is opened on first use; while it does not exist the
// put is logged and tried again on the next call.
func (r *Reporter) Applied(ctx context.Context, m *msg.Agent) {
	if r.observer != nil {
		r.observer.Applied(m)
	}
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
		// Reading this node's last record makes the first put seal above
		// it (readers refuse an older at than the key's), even when the
		// previous lbagent of this node had a clock ahead of this one's:
		// lbagent does not watch its own bucket, so this is its only look.
		if _, err := r.agents.Get(ctx, r.node); err != nil && !errors.Is(err, bus.ErrKeyNotFound) {
			r.logger.Warn("read this node's last agent record", zap.Error(err))
		}
	}
	if _, err := r.agents.Put(ctx, r.node, b); err != nil {
		r.logger.Warn("heartbeat agent state", zap.Error(err))
	}
}
