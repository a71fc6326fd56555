// Package publisher puts what the checker learns onto NATS: each target's
// health into the health bucket, each transition on the health subject,
// and this checker's heartbeat into the checkers bucket. It puts every
// value again after a reconnect, so that a NATS server that lost its data
// has current health, and at each refresh the values that changed and, in
// turn, a tenth of the others; it deletes the health that no checker
// probes any more (Sweep).
package publisher

import (
	"context"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"

	"github.com/berthhq/berth/common/bus"
	"github.com/berthhq/berth/common/lifecycle"
	"github.com/berthhq/berth/common/logging"
	"github.com/berthhq/berth/common/msg"
	"github.com/berthhq/berth/healthd/internal/checker"
)

// Publisher implements checker.Handler over NATS. Create it with New and
// run it with Run (heartbeats, refreshes, reconnects).
type Publisher struct {
	conn    *bus.Conn
	names   msg.Names
	id      string
	logger  *zap.Logger
	started time.Time
	targets func() int

	// Refresh is how often values are put again (see republish) and the
	// bucket swept (Sweep).
	Refresh time.Duration
	// LeaveOnStop deletes this checker's heartbeat when Run stops, so its
	// peers take its targets at once instead of after missed heartbeats.
	LeaveOnStop bool
	// beatEvery is how often Run heartbeats: a third of the checkers TTL.
	beatEvery time.Duration
	// putTimeout bounds one put of a health value, and the publish of a
	// transition.
	putTimeout time.Duration

	mu        sync.Mutex
	latest    map[string]checker.Report
	health    *bus.KV
	check     *bus.KV
	repairing map[string]bool // keys with a Repair pending
	// suspects are the keys the last Sweep found unprobed: a key is
	// deleted only when the next one finds it unprobed again.
	suspects map[string]bool
	// sent is what the last put of each key said (see republish).
	sent map[string]healthSent
	// passes counts refreshes, for the spread re-seal.
	passes atomic.Uint64
	// retry says a health put failed: Run puts again what was not put
	// (retryUnsent) after a backoff, rather than at the next refresh.
	retry chan struct{}
	// writeMu orders the writes of health values: each puts the key's
	// latest report, read under it (putLatest), or deletes it, so a
	// refresh or a repair never puts an older report after a newer one.
	writeMu writeLock

	// HandedOver reports whether a target this checker dropped is still
	// checked by another checker (set before Run).
	HandedOver func(key string) bool

	// Transitions counts published health transitions.
	Transitions atomic.Uint64
	// Failures counts puts and publishes that failed.
	Failures atomic.Uint64
}

var _ checker.Handler = (*Publisher)(nil)

// New returns a publisher for checker id; targets reports how many targets
// it checks, for its heartbeat.
func New(conn *bus.Conn, names msg.Names, id string, targets func() int, logger *zap.Logger) *Publisher {
	return &Publisher{conn: conn, names: names, id: id, targets: targets, logger: logger.Named("publisher"),
		started: time.Now().UTC(), Refresh: 30 * time.Second, LeaveOnStop: true, beatEvery: msg.CheckerTTL / 3, putTimeout: 5 * time.Second, latest: map[string]checker.Report{}, repairing: map[string]bool{},
		suspects: map[string]bool{}, sent: map[string]healthSent{}, retry: make(chan struct{}, 1), writeMu: make(writeLock, 1)}
}

// Backoff of the retries of failed health puts: from retryFirst, doubling
// while they fail, up to Refresh. A NATS cluster refuses writes to a
// bucket for the seconds it takes to elect its stream a new leader (a
// server lost); a transition must not wait a whole refresh for that.
const retryFirst = 250 * time.Millisecond

// Probed records a probe and, on a transition or a target's first report,
// puts its health and publishes the transition.
func (p *Publisher) Probed(r checker.Report) {
	p.mu.Lock()
	_, seen := p.latest[r.Target.Key]
	p.latest[r.Target.Key] = r
	p.mu.Unlock()
	if seen && !r.Changed {
		return
	}
	p.putLatest(context.Background(), r.Target.Key)
	if r.Changed {
		ctx, cancel := context.WithTimeout(context.Background(), p.putTimeout)
		defer cancel()
		p.publishChange(ctx, r, r.From)
	}
}

// putLatest puts the latest report of key, if it still has one, within
// putTimeout of holding the write lock. The deadline starts once the lock
// is held: when 30,000 targets report for the first time at once, each
// put waits for the ones before it, and a deadline that counted that wait
// failed about 2,000 of them (issue 30), each then put again by a retry.
func (p *Publisher) putLatest(ctx context.Context, key string) {
	if !p.writeMu.lock(ctx) {
		return
	}
	defer p.writeMu.unlock()
	p.mu.Lock()
	r, ok := p.latest[key]
	p.mu.Unlock()
	if ok {
		ctx, cancel := context.WithTimeout(ctx, p.putTimeout)
		defer cancel()
		p.put(ctx, r)
	}
}

// writeLock is a mutex whose wait ends with a context. The refresh and
// the retries wait for it behind the probes' puts, with Run's context: a
// stop ends that wait, and the checker leaves at once. With a mutex, a
// checker stopped while it put its first 15,000 reports left seconds
// late, its peers taking its targets as late (issue 30).
type writeLock chan struct{}

// lock takes the lock, or returns false once ctx is done.
func (l writeLock) lock(ctx context.Context) bool {
	if ctx.Err() != nil {
		return false
	}
	select {
	case l <- struct{}{}:
		return true
	case <-ctx.Done():
		return false
	}
}

func (l writeLock) unlock() { <-l }

// repairWait coalesces the repairs of a burst of forged writes.
const repairWait = 50 * time.Millisecond

// Repair puts again, within repairWait, the health value of key when this
// checker probes that target: the bucket's last value of the key is not
// one healthd sealed (forged, copied or replayed; the watcher of the
// bucket calls it for each value it drops), and a reader that starts now
// would otherwise find it until the next refresh. A key this checker does
// not probe is left to the checker that does.
func (p *Publisher) Repair(key string) {
	p.mu.Lock()
	_, probed := p.latest[key]
	if !probed || p.repairing[key] {
		p.mu.Unlock()
		return
	}
	p.repairing[key] = true
	p.mu.Unlock()
	time.AfterFunc(repairWait, func() {
		p.mu.Lock()
		delete(p.repairing, key)
		p.mu.Unlock()
		p.putLatest(context.Background(), key)
		p.logger.Warn("repaired a health value that healthd had not sealed", zap.String("key", key))
	})
}

// Removed deletes the health value of a target no longer checked here,
// unless HandedOver says another checker now has it: the value must stay
// for nginx until the new owner's first report overwrites it.
func (p *Publisher) Removed(key string) {
	p.writeMu.lock(context.Background())
	defer p.writeMu.unlock()
	p.mu.Lock()
	delete(p.latest, key)
	delete(p.sent, key)
	kv := p.health
	p.mu.Unlock()
	if kv == nil || p.HandedOver != nil && p.HandedOver(key) {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := kv.Delete(ctx, key); err != nil {
		p.fail("delete health", key, err)
	}
}

// Sweep deletes, sealed, the health values of targets that no checker
// probes, so that stale health neither lingers for readers nor stays in
// the bucket to be copied back later. Its arguments are the views of the
// moment: keys are the bucket's keys that have a valid value (the health
// view), probed reports whether any live checker probes a key (its
// instance is a target), and owned whether this checker owns a key's
// shard: a key is this checker's to delete only then, so checkers never
// race over one. A key goes when it was unprobed at the previous Sweep
// too, a refresh apart, so that a view lagging by a moment (an instance
// just created) deletes nothing; and never while this checker probes it.
// With list, this checker (one of the fleet) also lists the bucket
// itself: it finds the keys whose value no reader takes (forged, or a
// copy stashed there), which no view has, deletes the unprobed ones
// whatever their shard, and purges delete markers older than
// bus.DeleteMarkerAge. It returns how many values it deleted.
func (p *Publisher) Sweep(ctx context.Context, keys []string, probed, owned func(key string) bool, list bool) int {
	p.mu.Lock()
	prev := p.suspects
	p.mu.Unlock()
	next := map[string]bool{}
	var drop []string
	consider := func(key string, mine bool) {
		if probed(key) || !mine {
			return
		}
		next[key] = true
		if prev[key] {
			drop = append(drop, key)
		}
	}
	viewed := make(map[string]bool, len(keys))
	for _, k := range keys {
		viewed[k] = true
		consider(k, owned(k))
	}
	kv, err := p.bucket(ctx, &p.health, p.names.HealthBucket())
	if err != nil {
		p.fail("open health bucket", "", err)
		return 0
	}
	if list {
		_, purged, err := kv.Sweep(ctx, func(key string, _ uint64) bool {
			if !viewed[key] {
				consider(key, true)
			}
			return true // deleted below, one at a time under writeMu
		}, bus.DeleteMarkerAge)
		if err != nil {
			p.fail("sweep health", "", err)
		} else if purged > 0 {
			p.logger.Debug("purged old delete markers", zap.Int("markers", purged))
		}
	}
	p.mu.Lock()
	p.suspects = next
	p.mu.Unlock()
	deleted := 0
	for _, key := range drop {
		if p.deleteUnprobed(ctx, kv, key) {
			deleted++
		}
	}
	if deleted > 0 {
		p.logger.Info("deleted the health of targets no checker probes", zap.Int("keys", deleted))
	}
	return deleted
}

// deleteUnprobed deletes key's health unless this checker probes it now.
func (p *Publisher) deleteUnprobed(ctx context.Context, kv *bus.KV, key string) bool {
	if !p.writeMu.lock(ctx) {
		return false
	}
	defer p.writeMu.unlock()
	p.mu.Lock()
	_, probing := p.latest[key]
	p.mu.Unlock()
	if probing {
		return false
	}
	if err := kv.Delete(ctx, key); err != nil {
		p.fail("sweep health", key, err)
		return false
	}
	return true
}

// Run heartbeats every third of the checkers TTL, refreshes every health
// value every Refresh, does both at once after a NATS reconnect, and puts
// again the values whose put failed, after a backoff (retryFirst).
//
// The heartbeat has a goroutine of its own: a refresh or a retry puts
// values one after the other, and at 30,000 targets those puts took
// longer than msg.CheckerDeadAfter, so a heartbeat that waited for them
// came too late and every peer took this checker's targets (issue 30).
func (p *Publisher) Run(ctx context.Context) error {
	reconnected, stop := p.conn.Reconnected()
	defer stop()
	refresh := time.NewTicker(p.Refresh)
	defer refresh.Stop()
	backoff := retryFirst
	var retry <-chan time.Time
	p.heartbeat(ctx)
	beatCtx, stopBeats := context.WithCancel(ctx)
	beats := make(chan struct{})
	go func() {
		defer close(beats)
		beat := time.NewTicker(p.beatEvery)
		defer beat.Stop()
		for {
			select {
			case <-beatCtx.Done():
				return
			case <-beat.C:
				p.heartbeat(beatCtx)
			}
		}
	}()
	defer func() { stopBeats(); <-beats }()
	for {
		select {
		case <-ctx.Done():
			stopBeats()
			<-beats // no heartbeat after the leave
			if p.LeaveOnStop {
				p.leave(ctx)
			}
			return nil
		case <-p.retry:
			if retry == nil {
				retry = time.After(backoff)
			}
		case <-retry:
			retry = nil
			if p.retryUnsent(ctx) {
				backoff = retryFirst
			} else {
				backoff = min(2*backoff, p.Refresh)
			}
		case <-refresh.C:
			p.republish(ctx, false)
		case <-reconnected:
			// A server that came back empty (a reset) has no buckets: create
			// them again before writing, and drop the cached handles.
			if err := p.conn.EnsureBuckets(ctx, bus.MustOwnedBuckets(p.names, bus.RoleHealthd)); err != nil {
				p.fail("ensure buckets", "", err)
			}
			p.mu.Lock()
			p.health, p.check = nil, nil
			p.mu.Unlock()
			p.logger.Info("republishing after reconnect")
			p.heartbeat(ctx)
			p.republish(ctx, true)
		}
	}
}

// leave deletes this checker's heartbeat so its peers rebalance now. It is
// best effort and bounded to 2 s: with NATS gone the peers find out from
// the missed heartbeats instead.
func (p *Publisher) leave(ctx context.Context) {
	stopCtx, stopCancel := lifecycle.CleanupContext(ctx)
	defer stopCancel()
	cctx, cancel := context.WithTimeout(stopCtx, 2*time.Second)
	defer cancel()
	kv, err := p.bucket(cctx, &p.check, p.names.CheckersBucket())
	if err == nil {
		err = kv.Delete(cctx, p.id)
	}
	if err != nil {
		p.fail("leave", p.id, err)
		return
	}
	p.logger.Info("left the checkers: peers take over the targets")
}

// healthSent is what decides a health value; the counts, latency and
// message of each probe aside, but not the failures in its history: a
// failure that changed no status (below the unhealthy threshold, a slow
// answer among passes) reaches the bucket at the next refresh.
type healthSent struct {
	status, failure string
	generation      int64
	term            uint64
	failures        int64
}

func healthSentOf(r checker.Report) healthSent {
	s := healthSent{status: r.State.Status, failure: r.State.Last.Failure, generation: r.Target.Generation, term: r.Target.Term}
	if r.History != nil {
		s.failures = r.History.Failures()
	}
	return s
}

// resealEvery is how many refreshes may pass before a value is put again
// although its status is unchanged.
const resealEvery = 10

// republish puts again the health of every target, when full (after a
// reconnect: the server may have lost anything); otherwise, at a refresh,
// only the values whose status (failure kind, generation, term) changed
// since their last put, and those whose turn it is: each value at least
// every resealEvery refreshes, at a refresh of its own. Readers take a
// stored value however long ago it was sealed, and a value that is not
// healthd's (forged, replayed, a forged delete) is put again at once by
// Repair, so putting every value every refresh cost a put and a signature
// check on every reader per target per refresh for nothing; the spread
// re-seal brings back a value a reader refused wrongly.
func (p *Publisher) republish(ctx context.Context, full bool) {
	pass := p.passes.Add(1) - 1
	p.mu.Lock()
	keys := make([]string, 0, len(p.latest))
	for k, r := range p.latest {
		if full || p.sent[k] != healthSentOf(r) || bus.ResealDue(k, pass, resealEvery) {
			keys = append(keys, k)
		}
	}
	p.mu.Unlock()
	for _, k := range keys {
		if ctx.Err() != nil {
			return
		}
		p.putLatest(ctx, k)
	}
}

// retryUnsent puts the latest report of every key whose last put failed
// (or whose status changed since), and reports whether they all went.
func (p *Publisher) retryUnsent(ctx context.Context) bool {
	p.mu.Lock()
	var keys []string
	for k, r := range p.latest {
		if p.sent[k] != healthSentOf(r) {
			keys = append(keys, k)
		}
	}
	p.mu.Unlock()
	failures := p.Failures.Load()
	for _, k := range keys {
		if ctx.Err() != nil {
			return false
		}
		p.putLatest(ctx, k)
	}
	if n := p.Failures.Load() - failures; n > 0 {
		return false
	}
	if len(keys) > 0 {
		p.logger.Info("put the health values whose put had failed", zap.Int("keys", len(keys)))
	}
	return true
}

func (p *Publisher) heartbeat(ctx context.Context) {
	kv, err := p.bucket(ctx, &p.check, p.names.CheckersBucket())
	if err != nil {
		p.fail("open checkers bucket", p.id, err)
		return
	}
	b, err := msg.Encode(&msg.Checker{ID: p.id, Targets: p.targets(), StartedAt: p.started, HeartbeatAt: time.Now().UTC()})
	if err == nil {
		_, err = kv.Put(ctx, p.id, b)
	}
	if err != nil {
		p.fail("heartbeat", p.id, err)
	}
}

func (p *Publisher) put(ctx context.Context, r checker.Report) {
	kv, err := p.bucket(ctx, &p.health, p.names.HealthBucket())
	if err != nil {
		p.fail("open health bucket", r.Target.Key, err)
		p.retrySoon()
		return
	}
	app, inst, err := msg.ParseInstanceKey(r.Target.Key)
	if err != nil {
		p.fail("health key", r.Target.Key, err)
		return
	}
	sent := healthSentOf(r) // before the snapshot: a failure added meanwhile is put again
	b, err := msg.Encode(healthValue(app, inst, p.id, r))
	if err == nil {
		_, err = kv.Put(ctx, r.Target.Key, b)
	}
	p.mu.Lock()
	if err == nil {
		p.sent[r.Target.Key] = sent
	} else {
		delete(p.sent, r.Target.Key)
	}
	p.mu.Unlock()
	if err != nil {
		p.fail("put health", r.Target.Key, err)
		p.retrySoon()
	}
}

// healthValue is the health value of a report, with the target's history
// when the report has one.
func healthValue(app, inst, checkerID string, r checker.Report) *msg.Health {
	s := r.State
	h := &msg.Health{App: app, Instance: inst, Status: s.Status, Failure: s.Last.Failure, Message: msg.Truncate(s.Last.Message, 512),
		ConsecutiveSuccesses: s.Successes, ConsecutiveFailures: s.Failures, LatencyMS: ms(s.Last.Latency), Checker: checkerID,
		InstanceTerm: r.Target.Term, Generation: r.Target.Generation, CheckedAt: time.Now().UTC()}
	if r.History != nil {
		snap := r.History.Snapshot()
		h.History, h.FailureCounts, h.Probes, h.HistorySince = snap.Results, snap.Counts, snap.Probes, snap.Since.UTC()
	}
	return h
}

// retrySoon asks Run to put again what was not put, after its backoff.
func (p *Publisher) retrySoon() {
	select {
	case p.retry <- struct{}{}:
	default: // a retry is already due
	}
}

func (p *Publisher) publishChange(ctx context.Context, r checker.Report, from string) {
	app, inst, err := msg.ParseInstanceKey(r.Target.Key)
	if err != nil {
		return
	}
	s := r.State
	b, err := msg.Encode(&msg.HealthChange{App: app, Instance: inst, From: from, To: s.Status, Failure: s.Last.Failure,
		Message: msg.Truncate(s.Last.Message, 512), LatencyMS: ms(s.Last.Latency), Checker: p.id, At: time.Now().UTC()})
	if err == nil {
		err = p.conn.Publish(ctx, p.names.HealthSubject(app, inst), b)
	}
	if err != nil {
		p.fail("publish health change", r.Target.Key, err)
		return
	}
	p.Transitions.Add(1)
	p.logger.Info("health changed", zap.String(logging.KeyApp, app), zap.String(logging.KeyInstance, inst),
		zap.String("from", from), zap.String("to", s.Status), zap.String("failure", s.Last.Failure))
}

// bucket opens a bucket once; the caller passes the field that caches it.
// A bucket that is missing is created with healthd's others: NATS was not
// ready when healthd started (a cluster still electing its leader), or
// came back empty.
func (p *Publisher) bucket(ctx context.Context, field **bus.KV, name string) (*bus.KV, error) {
	p.mu.Lock()
	kv := *field
	p.mu.Unlock()
	if kv != nil {
		return kv, nil
	}
	kv, err := bus.OwnedKV(ctx, p.conn, p.names, bus.RoleHealthd, name)
	if err != nil {
		return nil, err
	}
	p.mu.Lock()
	*field = kv
	p.mu.Unlock()
	return kv, nil
}

func (p *Publisher) fail(op, key string, err error) {
	p.Failures.Add(1)
	p.logger.Warn("publish failed", zap.String("op", op), zap.String(logging.KeyKey, key), zap.Error(err))
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }
