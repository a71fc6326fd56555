// Package report owns what the lbagent tells NATS about itself: each
// config change on <prefix>.v1.reloads.<node>, and the state nginx serves
// (the applied revision and per-app generations) as this node's key in the
// agents bucket, which the scheduler waits on before draining instances.
package report

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"

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
	enc      agentEncoder
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
	b, err := r.enc.encode(m)
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

// agentEncoder is msg.Encode of the agents record, byte for byte, that
// validates and encodes the per-app generations only when they are not
// those of the last record: a record is put after every push, and at
// 10,000 apps validating and encoding them (names checked and sorted
// twice) took ~10 ms of CPU beside the nginx serving the push, where the
// rest of the record takes microseconds.
type agentEncoder struct {
	apps map[string]int64 // the last record's, copied
	raw  []byte           // their JSON
}

// appsNull is where a record without apps has them; no string value of
// the record can hold it (a '"' inside a JSON string is escaped).
var appsNull = []byte(`"apps":null`)

func (e *agentEncoder) encode(m *msg.Agent) ([]byte, error) {
	if len(m.Apps) == 0 {
		return msg.Encode(m)
	}
	if e.apps == nil || !maps.Equal(e.apps, m.Apps) {
		// The whole record: its apps are validated with the rest.
		b, err := msg.Encode(m)
		if err != nil {
			return nil, err
		}
		raw, err := json.Marshal(m.Apps)
		if err != nil {
			return nil, err
		}
		e.apps, e.raw = maps.Clone(m.Apps), raw
		return b, nil
	}
	rest := *m
	rest.Apps = nil
	b, err := msg.Encode(&rest)
	if err != nil {
		return nil, err
	}
	m.Type = rest.Type
	i := bytes.Index(b, appsNull)
	if i < 0 {
		return msg.Encode(m)
	}
	out := make([]byte, 0, len(b)+len(e.raw))
	out = append(out, b[:i+len(`"apps":`)]...)
	out = append(out, e.raw...)
	out = append(out, b[i+len(appsNull):]...)
	if len(out) > msg.MaxMessageSize {
		return nil, fmt.Errorf("encode %s: %w: %d bytes", m.MessageType(), msg.ErrTooLarge, len(out))
	}
	return out, nil
}
