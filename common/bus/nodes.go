package bus

import (
	"context"
	"crypto/ed25519"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"sync"

	"github.com/nats-io/nkeys"
	"go.uber.org/zap"

	"github.com/berthhq/berth/common/msg"
)

// The node-key directory. Every lbagent node may have a key of its own
// (credentials.go, nodes/<node>.nk). A credential's trust lines are fixed
// when it is printed, so a node added later could not be trusted without
// printing every daemon's credential again. Instead the scheduler, whose
// key every daemon trusts already, publishes each node's public keys in the
// nodes bucket, sealed with its own key (msg.Node), and a connection that
// follows that bucket (NodeDirectory) trusts a node's key:
//
//   - for the agents bucket, only under the node's own key;
//   - for reloads.<node>, only on the node's own subject;
//   - for metrics.<app>, from any node (an edge node serves every app);
//   - for nothing any other role owns.
//
// The lbagent role's shared keys (its trust lines) stay trusted for all of
// these: the fallback for lbagents still started with the shared
// credential. The scheduler seals certificate keys to every key of the
// directory as well as to the shared ones (Conn.SealTo).

// ErrNodesLoading is a record sealed by a key that the lbagent role's trust
// lines do not hold, while the node-key directory has not loaded yet: the
// record may be valid, so it is not counted as forged.
var ErrNodesLoading = errors.New("bus: the node-key directory has not loaded yet")

// nodeScope says, from the names, which node a record of the lbagent role
// belongs to: its key in the agents bucket, its last token on reloads.
type nodeScope struct {
	agents  string
	reloads []string // the pattern of every node's reloads subject
}

func newNodeScope(n msg.Names) nodeScope {
	return nodeScope{agents: n.AgentsBucket(), reloads: strings.Split(n.AllReloads(), ".")}
}

// node returns the node a record of the lbagent role is bound to, and
// false when any node may write it (metrics).
func (s nodeScope) node(kind, where, key string) (string, bool) {
	if kind == kindKV {
		return key, where == s.agents
	}
	tokens := strings.Split(where, ".")
	if subjectMatch(s.reloads, tokens) {
		return tokens[len(tokens)-1], true
	}
	return "", false
}

// trusted returns the keys whose seal opens a record of role: the role's
// trust lines and, for the lbagent role, the directory's keys of the node
// the record belongs to (or of every node, for a record of no node).
func (s *sealer) trusted(role, kind, where, key string) ([]ed25519.PublicKey, error) {
	static := s.keys.trust[role]
	if role != RoleLBAgent {
		return static, nil
	}
	t := s.nodes.Load()
	if t == nil {
		return static, nil
	}
	keys, loaded := t.keysFor(s.scope.node(kind, where, key))
	if !loaded {
		return nil, fmt.Errorf("%w: cannot yet check %s %q", ErrNodesLoading, where, key)
	}
	return append(slices.Clip(static), keys...), nil
}

// nodeTrust is the directory as a connection last read it.
type nodeTrust struct {
	mu     sync.RWMutex
	keys   map[string][]ed25519.PublicKey // by node
	loaded bool
	// ready is closed once the first view is in.
	ready chan struct{}
	// changed are signalled when a node's keys change (one pending each).
	changed []chan struct{}
}

func newNodeTrust() *nodeTrust {
	return &nodeTrust{keys: map[string][]ed25519.PublicKey{}, ready: make(chan struct{})}
}

// keysFor returns node's keys (every node's when bound is false), and
// whether the directory has loaded.
func (t *nodeTrust) keysFor(node string, bound bool) ([]ed25519.PublicKey, bool) {
	t.mu.RLock()
	defer t.mu.RUnlock()
	if bound {
		return t.keys[node], t.loaded
	}
	var out []ed25519.PublicKey
	for _, node := range slices.Sorted(maps.Keys(t.keys)) {
		out = append(out, t.keys[node]...)
	}
	return out, t.loaded
}

// set replaces node's keys (none: the node is gone) and reports whether
// they changed.
func (t *nodeTrust) set(node string, keys []ed25519.PublicKey) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	same := slices.EqualFunc(t.keys[node], keys, func(a, b ed25519.PublicKey) bool { return a.Equal(b) })
	if len(keys) == 0 {
		delete(t.keys, node)
	} else {
		t.keys[node] = keys
	}
	return !same
}

// load marks the directory loaded: records of the lbagent role are
// checked from now on, and watchers waiting for it start.
func (t *nodeTrust) load() {
	t.mu.Lock()
	defer t.mu.Unlock()
	if !t.loaded {
		t.loaded = true
		close(t.ready)
	}
}

// notify signals every watcher that depends on the directory.
func (t *nodeTrust) notify() {
	t.mu.RLock()
	defer t.mu.RUnlock()
	for _, ch := range t.changed {
		select {
		case ch <- struct{}{}:
		default:
		}
	}
}

// subscribe returns a channel signalled when a node's keys change, and a
// function that stops it.
func (t *nodeTrust) subscribe() (<-chan struct{}, func()) {
	ch := make(chan struct{}, 1)
	t.mu.Lock()
	t.changed = append(t.changed, ch)
	t.mu.Unlock()
	return ch, func() {
		t.mu.Lock()
		defer t.mu.Unlock()
		t.changed = slices.DeleteFunc(t.changed, func(x chan struct{}) bool { return x == ch })
	}
}

// nodeWatch is what a Watcher of bucket needs of the directory: a channel
// that says the trusted keys changed (its values must be opened again),
// and a wait until the directory has loaded. Both are nil for a bucket
// whose records no node key seals, or without a directory.
func (c *Conn) nodeWatch(bucket string) (changed <-chan struct{}, ready <-chan struct{}, stop func()) {
	if c.seals == nil || c.seals.buckets[bucket] != RoleLBAgent {
		return nil, nil, func() {}
	}
	t := c.seals.nodes.Load()
	if t == nil {
		return nil, nil, func() {}
	}
	changed, stop = t.subscribe()
	return changed, t.ready, stop
}

// NodeDirectory follows the node-key directory (the nodes bucket, sealed by
// the scheduler) for a connection: from its first snapshot on, the
// connection trusts each node's keys for that node's records, Watchers of
// the agents bucket deliver a snapshot only once it has loaded and a fresh
// one whenever a node's keys change, and Conn.SealTo seals to every node's
// keys. Make it before the connection's watchers start, and run it for as
// long as the connection is used.
type NodeDirectory struct {
	conn   *Conn
	bucket string
	trust  *nodeTrust
	logger *zap.Logger

	// OnChange, when set, is called from Run's goroutine after a node's
	// keys changed (added, rotated, removed), once the directory has
	// loaded: the scheduler seals every certificate again.
	OnChange func()
}

// NewNodeDirectory attaches a node-key directory to conn, which must have
// record keys: without them nothing is checked, and nothing can be sealed.
func NewNodeDirectory(conn *Conn, n msg.Names, logger *zap.Logger) (*NodeDirectory, error) {
	if conn.seals == nil {
		return nil, errors.New("bus: the node-key directory needs Berth's role credentials (--nats-nkey with trust lines)")
	}
	t := newNodeTrust()
	if !conn.seals.nodes.CompareAndSwap(nil, t) {
		return nil, errors.New("bus: the connection follows a node-key directory already")
	}
	return &NodeDirectory{conn: conn, bucket: n.NodesBucket(), trust: t, logger: logger.Named("nodes")}, nil
}

// Run follows the directory until ctx ends. A directory bucket that does
// not exist yet (a scheduler older than this daemon) counts as empty, so
// only the lbagent role's trust lines are trusted until it appears.
func (d *NodeDirectory) Run(ctx context.Context) error {
	if _, err := d.conn.KV(ctx, d.bucket); errors.Is(err, ErrBucketNotFound) {
		d.logger.Warn("no node-key directory yet: trusting the lbagent role's shared keys only until the scheduler publishes it",
			zap.String("bucket", d.bucket))
		d.trust.load()
	}
	w := NewWatcher(d.conn, d.bucket, Message[*msg.Node], HandlerFuncs[*msg.Node]{
		OnSnapshot: func(evs []Event[*msg.Node], _ uint64) {
			changed := false
			seen := map[string]bool{}
			for _, e := range evs {
				seen[e.Key] = true
				changed = d.set(e.Key, e.Value) || changed
			}
			for _, node := range d.Nodes() {
				if !seen[node] {
					changed = d.set(node, nil) || changed
				}
			}
			first := !d.loaded()
			d.trust.load()
			if changed && !first {
				d.trust.notify() // watchers waiting for the first load start with it
			}
			if changed && d.OnChange != nil {
				d.OnChange()
			}
		},
		OnUpdate: func(e Event[*msg.Node]) {
			var m *msg.Node
			if e.Op == OpPut {
				m = e.Value
			}
			d.changed(d.set(e.Key, m))
		},
	}, d.logger)
	return w.Run(ctx)
}

func (d *NodeDirectory) loaded() bool {
	select {
	case <-d.trust.ready:
		return true
	default:
		return false
	}
}

// set takes one node's entry (nil: deleted) and reports a change.
func (d *NodeDirectory) set(node string, m *msg.Node) bool {
	var keys []ed25519.PublicKey
	if m != nil {
		for _, k := range m.Keys {
			raw, err := nkeys.Decode(nkeys.PrefixByteUser, []byte(k))
			if err != nil || len(raw) != ed25519.PublicKeySize {
				d.logger.Warn("ignored a key of the node-key directory", zap.String("node", node), zap.String("key", k), zap.Error(err))
				continue
			}
			keys = append(keys, ed25519.PublicKey(raw))
		}
	}
	changed := d.trust.set(node, keys)
	if changed {
		d.logger.Info("node keys changed", zap.String("node", node), zap.Int("keys", len(keys)))
	}
	return changed
}

func (d *NodeDirectory) changed(yes bool) {
	if !yes {
		return
	}
	d.trust.notify()
	if d.OnChange != nil {
		d.OnChange()
	}
}

// Nodes returns the nodes that have keys in the directory, sorted.
func (d *NodeDirectory) Nodes() []string {
	d.trust.mu.RLock()
	defer d.trust.mu.RUnlock()
	return slices.Sorted(maps.Keys(d.trust.keys))
}

// Ready is closed once the directory has loaded.
func (d *NodeDirectory) Ready() <-chan struct{} { return d.trust.ready }
