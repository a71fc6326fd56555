// Package nodekeys owns the scheduler's side of the lbagent nodes' own NATS
// keys: it reads the credentials directory (bus.Credentials) every few
// seconds and, while this replica leads, publishes the node-key directory,
// one msg.Node per node in the nodes bucket, sealed with the scheduler's
// key, from which every reader learns which key may seal which node's
// records (docs/nats.md, Sealed records). On a replica that runs the
// embedded NATS it also gives the server the directory's users after each
// change: a node added, a key rotated, promoted or retired.
package nodekeys

import (
	"context"
	"maps"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"

	"github.com/berthhq/berth/common/bus"
	"github.com/berthhq/berth/common/msg"
)

// Bucket is the nodes bucket.
type Bucket interface {
	Put(ctx context.Context, key string, value []byte) (uint64, error)
	Delete(ctx context.Context, key string) error
	Keys(ctx context.Context) ([]string, error)
}

var _ Bucket = (*bus.KV)(nil)

// Config tunes the Publisher.
type Config struct {
	// Scan is how often the credentials directory is read again: how
	// soon a new node, or a rotation step, takes effect.
	Scan time.Duration
	// Resync is how often, while leading, every node's entry is put
	// again, sealed anew.
	Resync time.Duration
}

// Deps are what the Publisher reads and writes.
type Deps struct {
	// Read reads the credentials directory.
	Read func() (*bus.Credentials, error)
	// Open opens the nodes bucket, creating it when it is missing.
	Open func(ctx context.Context) (Bucket, error)
	// Leading reports whether this replica leads.
	Leading func() bool
	// Users, when set, gives the embedded NATS the directory's users.
	Users func(*bus.Credentials) error
}

// Publisher publishes the node-key directory and keeps the embedded NATS's
// users current. Run it on every replica, and Lead in the leader's group:
// only Lead writes the directory.
type Publisher struct {
	cfg    Config
	deps   Deps
	logger *zap.Logger
	now    func() time.Time

	// leading is set while Lead runs: Run's steps wait then, as Lead's
	// own steps give the server its users between the directory's puts
	// and deletes.
	leading atomic.Bool
	// mu serialises the steps of Run and Lead; it guards every field
	// below.
	mu sync.Mutex

	// published is what this replica put while it led, nil when it has
	// not (or must read the bucket again): a full step then follows.
	published map[string][]string
	lastFull  time.Time
	usersFP   string // the keys the server was last given
	lastErr   string // the last error logged at warn
	failed    bool   // this step failed somewhere
	repair    chan struct{}

	nodes  prometheus.Gauge
	errors prometheus.Counter
	users  prometheus.Counter
}

// New returns a Publisher.
func New(cfg Config, deps Deps, logger *zap.Logger) *Publisher {
	return &Publisher{cfg: cfg, deps: deps, logger: logger.Named("nodekeys"), now: time.Now, repair: make(chan struct{}, 1),
		nodes: prometheus.NewGauge(prometheus.GaugeOpts{Name: "berth_scheduler_node_keys",
			Help: "lbagent nodes with keys of their own in the NATS credentials directory, which the leader publishes."}),
		errors: prometheus.NewCounter(prometheus.CounterOpts{Name: "berth_scheduler_node_key_errors_total",
			Help: "Failed reads of the NATS credentials directory, puts of the node-key directory and reloads of the embedded NATS's users."}),
		users: prometheus.NewCounter(prometheus.CounterOpts{Name: "berth_scheduler_nats_users_loaded_total",
			Help: "Times the embedded NATS took the credentials directory's users: at start, and after each key added, rotated or retired."}),
	}
}

// Collectors returns the Publisher's metrics.
func (p *Publisher) Collectors() []prometheus.Collector {
	return []prometheus.Collector{p.nodes, p.errors, p.users}
}

// Repair makes Lead's next step, at once, put every node's entry again
// and delete what no node owns: the guard found a value the scheduler had
// not sealed.
func (p *Publisher) Repair() {
	select {
	case p.repair <- struct{}{}:
	default:
	}
}

// Run reads the credentials directory every Scan and gives the embedded
// NATS its users, until ctx ends. Every replica runs it; while Lead runs,
// Lead's steps do this too.
func (p *Publisher) Run(ctx context.Context) error {
	t := time.NewTicker(p.cfg.Scan)
	defer t.Stop()
	for {
		if !p.leading.Load() {
			p.step(ctx, false, false)
		}
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
}

// Lead publishes the node-key directory, every entry at once and then
// each change, every Scan and at once after Repair, until ctx ends: a
// leader-only service (run it in a leader.Group). Each step still checks
// Deps.Leading. Leads do not overlap.
func (p *Publisher) Lead(ctx context.Context) error {
	p.leading.Store(true)
	defer p.leading.Store(false)
	t := time.NewTicker(p.cfg.Scan)
	defer t.Stop()
	full := true
	for {
		p.step(ctx, true, full)
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
			full = false
		case <-p.repair:
			full = true
		}
	}
}

// step reads the directory once; when lead and still leading, it puts the
// entries that changed (every entry when full, after Resync, or on
// gaining leadership), then gives the server its users, then deletes the
// entries of removed nodes: a new node is trusted before it can connect,
// and a removed one is cut off before it is distrusted.
func (p *Publisher) step(ctx context.Context, lead, full bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.failed = false
	defer func() {
		if !p.failed {
			p.lastErr = ""
		}
	}()
	c, err := p.deps.Read()
	if err != nil {
		p.fail("could not read the NATS credentials directory; keeping the last node keys", err)
		return
	}
	want := c.NodeKeys()
	p.nodes.Set(float64(len(want)))
	leading := lead && p.deps.Leading()
	var kv Bucket
	var del []string
	if leading {
		now := p.now()
		full = full || p.published == nil || now.Sub(p.lastFull) >= p.cfg.Resync
		var inBucket []string
		if kv, err = p.deps.Open(ctx); err == nil && full {
			inBucket, err = kv.Keys(ctx)
		}
		if err != nil {
			p.published = nil
			p.fail("could not read the node-key directory; trying again", err)
		} else {
			var put []string
			put, del = Plan(want, p.published, inBucket, full)
			if p.put(ctx, kv, want, put) && full {
				p.lastFull = now
			}
		}
	} else {
		p.published = nil
	}
	if p.deps.Users != nil {
		p.reloadUsers(c)
	}
	if kv != nil {
		p.delete(ctx, kv, del)
	}
}

// put writes each node of nodes; false when one failed (the next step
// writes everything again).
func (p *Publisher) put(ctx context.Context, kv Bucket, want map[string][]string, nodes []string) bool {
	if p.published == nil {
		p.published = map[string][]string{}
	}
	for _, node := range nodes {
		b, err := msg.Encode(&msg.Node{Node: node, Keys: want[node], UpdatedAt: p.now().UTC()})
		if err == nil {
			_, err = kv.Put(ctx, node, b)
		}
		if err != nil {
			p.fail("could not publish a node's keys; trying again", err, zap.String("node", node))
			p.published = nil
			return false
		}
		if !slices.Equal(p.published[node], want[node]) {
			p.logger.Info("published a node's keys", zap.String("node", node), zap.Strings("keys", want[node]))
		}
		p.published[node] = want[node]
	}
	return true
}

func (p *Publisher) delete(ctx context.Context, kv Bucket, nodes []string) {
	for _, node := range nodes {
		if err := kv.Delete(ctx, node); err != nil {
			p.fail("could not remove a node's keys; trying again", err, zap.String("node", node))
			p.published = nil
			return
		}
		if p.published != nil {
			delete(p.published, node)
		}
		p.logger.Info("removed a node's keys from the node-key directory", zap.String("node", node))
	}
}

// reloadUsers gives the embedded NATS the users of c when its keys changed.
func (p *Publisher) reloadUsers(c *bus.Credentials) {
	var keys []string
	for _, k := range c.Keys() {
		keys = append(keys, k.Owner()+" "+k.Public)
	}
	slices.Sort(keys)
	fp := strings.Join(keys, "\n")
	if fp == p.usersFP {
		return
	}
	if err := p.deps.Users(c); err != nil {
		p.fail("could not give the embedded NATS its users; it keeps the previous ones", err)
		return
	}
	if p.usersFP != "" {
		p.logger.Info("the embedded NATS took the credentials directory's users", zap.Int("keys", len(keys)))
	}
	p.usersFP = fp
	p.users.Inc()
}

// fail counts an error and logs it at warn once, then at debug while it
// repeats, so that a bad file cannot flood the log every Scan.
func (p *Publisher) fail(what string, err error, fields ...zap.Field) {
	p.errors.Inc()
	p.failed = true
	fields = append(fields, zap.Error(err))
	if text := what + err.Error(); text != p.lastErr {
		p.logger.Warn(what, fields...)
		p.lastErr = text
		return
	}
	if ce := p.logger.Check(zap.DebugLevel, what); ce != nil {
		ce.Write(fields...)
	}
}

// Plan returns the nodes whose entry to put and those whose entry to
// delete: each node of want whose keys differ from what was published
// (every node of want when full), and each node published, or in the
// bucket when full, that want lacks. Both sorted.
func Plan(want, published map[string][]string, inBucket []string, full bool) (put, del []string) {
	for _, node := range slices.Sorted(maps.Keys(want)) {
		if full || !slices.Equal(published[node], want[node]) {
			put = append(put, node)
		}
	}
	gone := map[string]bool{}
	for node := range published {
		gone[node] = true
	}
	if full {
		for _, node := range inBucket {
			gone[node] = true
		}
	}
	for _, node := range slices.Sorted(maps.Keys(gone)) {
		if _, ok := want[node]; !ok {
			del = append(del, node)
		}
	}
	return put, del
}
