package bus

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/zap"
)

// DecodeFunc turns a stored value into T. An error drops the value: it is
// counted and logged, and the handler never sees it.
type DecodeFunc[T any] func(key string, data []byte) (T, error)

// Event is one value of a watched bucket.
type Event[T any] struct {
	// Key is the entry's key.
	Key string
	// Revision is the bucket-wide sequence of the write.
	Revision uint64
	// Op is put or delete; a delete carries the zero Value.
	Op Op
	// Value is the decoded value of a put.
	Value T
	// Sealer is the role whose key sealed it: the bucket's owner, or a
	// co-writer (the scheduler, in the health bucket), "" when seals are
	// not checked. A reader of a co-written bucket checks that the sealer
	// may write this key (HealthWriter).
	Sealer string

	// at is the seal's at, 0 when seals are not checked.
	at int64
}

// Handler receives what a Watcher sees. Calls come one at a time, in order,
// from the watcher's Run goroutine: first Snapshot, then Updates, and a new
// Snapshot after every reconnect or resync.
type Handler[T any] interface {
	// Snapshot replaces all the handler knows: every key that has a value,
	// sorted by key, and the highest revision the snapshot includes. It is
	// never a partial view: it comes after the server said the initial
	// values are complete.
	Snapshot(events []Event[T], revision uint64)
	// Update is one change after the snapshot. In a bucket that keeps one
	// value per key (History 1), a write the server has not yet delivered
	// is gone once the key is written again: the watch then sees only the
	// newer value, so a handler converges on each key's last value but may
	// miss values in between.
	Update(e Event[T])
}

// HandlerFuncs adapts two functions to Handler.
type HandlerFuncs[T any] struct {
	OnSnapshot func(events []Event[T], revision uint64)
	OnUpdate   func(e Event[T])
}

// Snapshot calls OnSnapshot.
func (h HandlerFuncs[T]) Snapshot(events []Event[T], revision uint64) { h.OnSnapshot(events, revision) }

// Update calls OnUpdate.
func (h HandlerFuncs[T]) Update(e Event[T]) { h.OnUpdate(e) }

var _ Handler[int] = HandlerFuncs[int]{}

// errResync ends one watch so that the next one delivers a fresh snapshot.
var errResync = errors.New("resync")

// Watcher follows one bucket and hands typed values to a Handler. Create it
// with NewWatcher and run it with Run.
type Watcher[T any] struct {
	conn    *Conn
	bucket  string
	decode  DecodeFunc[T]
	handler Handler[T]
	logger  *zap.Logger
	dropped atomic.Uint64
	// failed counts the watches that ended in an error (a missing bucket
	// among them): tests wait on it.
	failed atomic.Uint64

	// ResyncEvery, when positive, delivers a fresh snapshot that often, as a
	// guard against any missed update.
	ResyncEvery time.Duration
	// RetryWait is the delay before watching again after an error.
	RetryWait time.Duration
	// OnDrop, when set, is called (from Run's goroutine) with the key of
	// each value the watcher drops: undecodable, forged or replayed. The
	// owner of a bucket uses it to write such a key again at once.
	OnDrop func(key string, err error)
	// CheckEvery, when positive, is how often the watcher asks the server
	// whether the bucket it follows still exists and is the same one. A
	// bucket deleted (or wiped and created again) while the connection
	// stayed up sends its watch nothing: this check is what notices it.
	CheckEvery time.Duration

	dropLog logLimiter
	// fence remembers the seal's at of each key, so that an older sealed
	// value copied back onto its key is refused (sealed records only).
	fence *sealFence
	// created is when the bucket last watched was created: another time
	// is another bucket, whose ats the fence must not hold against it.
	created time.Time
	// nodesChanged says the node keys that seal this bucket's records
	// changed (nodes.go); nil for other buckets.
	nodesChanged <-chan struct{}
}

// NewWatcher returns a watcher of bucket that decodes values with decode and
// delivers them to handler.
func NewWatcher[T any](conn *Conn, bucket string, decode DecodeFunc[T], handler Handler[T], logger *zap.Logger) *Watcher[T] {
	now := time.Now
	if conn.seals != nil {
		now = func() time.Time { return conn.seals.now() }
	}
	return &Watcher[T]{
		conn: conn, bucket: bucket, decode: decode, handler: handler,
		logger:    logger.Named("watch").With(zap.String("bucket", bucket)),
		RetryWait: 500 * time.Millisecond, CheckEvery: 5 * time.Second,
		fence: newSealFence(now),
	}
}

// Dropped returns how many values failed to decode and were dropped.
func (w *Watcher[T]) Dropped() uint64 { return w.dropped.Load() }

// Run watches until ctx ends. It delivers a snapshot first, then updates,
// and starts over with a fresh snapshot after NATS reconnects (a restarted
// or reset server may have lost or renumbered what the watch was following)
// and when the bucket was created again (see CheckEvery). While the bucket
// does not exist the handler hears nothing, so its consumer keeps the view
// it has; the watcher retries every RetryWait until the bucket is back.
func (w *Watcher[T]) Run(ctx context.Context) error {
	reconnected, stop := w.conn.reconnected()
	defer stop()
	// A bucket whose records lbagent nodes seal with keys of their own
	// waits for the node-key directory, and starts over when it changes.
	nodesChanged, nodesReady, stopNodes := w.conn.nodeWatch(w.bucket)
	defer stopNodes()
	if nodesReady != nil {
		select {
		case <-ctx.Done():
			return nil
		case <-nodesReady:
		}
	}
	w.nodesChanged = nodesChanged
	var lastErr string
	for {
		err := w.watchOnce(ctx, reconnected)
		if ctx.Err() != nil {
			return nil
		}
		if errors.Is(err, errResync) {
			continue
		}
		w.failed.Add(1)
		// The same error again (a bucket that is still missing) is logged
		// once at warn, then at debug, so a wait cannot flood the log.
		if text := err.Error(); text != lastErr {
			w.logger.Warn("watch failed, retrying", zap.Error(err), zap.Duration("wait", w.RetryWait))
			lastErr = text
		} else if ce := w.logger.Check(zap.DebugLevel, "watch failed again, retrying"); ce != nil {
			ce.Write(zap.Error(err), zap.Duration("wait", w.RetryWait))
		}
		select {
		case <-ctx.Done():
			return nil
		case <-reconnected:
		case <-time.After(w.RetryWait):
		}
	}
}

// errBucketReplaced ends a watch whose bucket was deleted and created again.
var errBucketReplaced = fmt.Errorf("bucket replaced: %w", errResync)

func (w *Watcher[T]) watchOnce(ctx context.Context, reconnected <-chan struct{}) error {
	// A credential that may not read the bucket (another prefix's, say)
	// fails here at once with ErrPermissionDenied, not with a timeout.
	gctx, stop := w.conn.refusals.guard(ctx, jsAPI+"STREAM.INFO."+kvStream(w.bucket))
	kv, err := w.conn.js.KeyValue(gctx, w.bucket)
	err = denial(gctx, err)
	if errors.Is(err, jetstream.ErrBucketNotFound) {
		stop()
		return fmt.Errorf("open bucket %s: %w", w.bucket, ErrBucketNotFound)
	}
	if err != nil {
		stop()
		return fmt.Errorf("open bucket %s: %w", w.bucket, err)
	}
	created, err := bucketCreated(gctx, kv)
	err = denial(gctx, err)
	stop()
	if err != nil {
		return fmt.Errorf("status of bucket %s: %w", w.bucket, err)
	}
	if !w.created.IsZero() && !created.Equal(w.created) {
		w.fence.reset() // another bucket under the same name
	}
	w.created = created
	kw, err := kv.WatchAll(ctx)
	if err != nil {
		return fmt.Errorf("watch bucket %s: %w", w.bucket, consumersErr(w.bucket, err))
	}
	defer w.stopWatch(kw)
	var resync <-chan time.Time
	if w.ResyncEvery > 0 {
		t := time.NewTimer(w.ResyncEvery)
		defer t.Stop()
		resync = t.C
	}
	var check <-chan time.Time
	if w.CheckEvery > 0 {
		t := time.NewTicker(w.CheckEvery)
		defer t.Stop()
		check = t.C
	}

	initial := map[string]Event[T]{}
	deleted := map[string]int64{} // sealed deletes in the snapshot, by key
	var snapshotRev uint64
	inSnapshot := true
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-reconnected:
			return errResync
		case <-w.nodesChanged:
			return errResync
		case <-resync:
			return errResync
		case <-check:
			if err := w.sameBucket(ctx, created); err != nil {
				return err
			}
		case e, ok := <-kw.Updates():
			if !ok {
				return fmt.Errorf("watch of bucket %s closed", w.bucket)
			}
			if e == nil { // the server's end of initial values
				if inSnapshot {
					w.fenceSnapshot(initial, deleted)
					w.handler.Snapshot(sorted(initial), snapshotRev)
					inSnapshot, initial, deleted = false, nil, nil
				}
				continue
			}
			ev, ok := w.event(e)
			if !inSnapshot {
				if ok && w.fresh(ev) {
					w.handler.Update(ev)
				}
				continue
			}
			snapshotRev = max(snapshotRev, e.Revision())
			switch {
			case !ok: // undecodable: keep no value for the key
				delete(initial, e.Key())
				delete(deleted, e.Key())
			case ev.Op == OpDelete:
				delete(initial, ev.Key)
				if ev.at != 0 {
					deleted[ev.Key] = ev.at
				}
			default:
				delete(deleted, ev.Key)
				initial[ev.Key] = ev
			}
		}
	}
}

// sameBucket returns nil when the bucket still exists and is the one the
// watch started on (same creation time), errBucketReplaced when it was
// created again, and ErrBucketNotFound when it is gone. A check that cannot
// reach the server says nothing: a lost connection is the reconnect's
// business, and the watch goes on.
func (w *Watcher[T]) sameBucket(ctx context.Context, created time.Time) error {
	if !w.conn.Connected() {
		return nil
	}
	cctx, cancel := context.WithTimeout(ctx, checkTimeout)
	defer cancel()
	kv, err := w.conn.js.KeyValue(cctx, w.bucket)
	if errors.Is(err, jetstream.ErrBucketNotFound) {
		return fmt.Errorf("bucket %s: %w", w.bucket, ErrBucketNotFound)
	}
	var now time.Time
	if err == nil {
		now, err = bucketCreated(cctx, kv)
	}
	if err != nil {
		if ce := w.logger.Check(zap.DebugLevel, "bucket check failed"); ce != nil {
			ce.Write(zap.Error(err))
		}
		return nil
	}
	if !now.Equal(created) {
		w.logger.Info("bucket was created again, watching the new one")
		return errBucketReplaced
	}
	return nil
}

// checkTimeout bounds one bucket check.
const checkTimeout = 2 * time.Second

// stopWait bounds how long ending a watch may hold up the watcher.
const stopWait = time.Second

// stopWatch ends a watch. The subscription is removed at once, but
// stopping then deletes the server's consumer with a request that, while
// NATS is down, waits out the client's 5 s API timeout; so it runs aside
// and the watcher waits at most stopWait for it. That request ends by
// itself: answered, timed out, or failed when the connection closes.
func (w *Watcher[T]) stopWatch(kw jetstream.KeyWatcher) {
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = kw.Stop()
	}()
	select {
	case <-done:
	case <-time.After(stopWait):
	}
}

// bucketCreated returns when the bucket's stream was created: a bucket
// deleted and created again under the same name has a new time.
func bucketCreated(ctx context.Context, kv jetstream.KeyValue) (time.Time, error) {
	st, err := kv.Status(ctx)
	if err != nil {
		return time.Time{}, err
	}
	s, ok := st.(*jetstream.KeyValueBucketStatus)
	if !ok {
		return time.Time{}, nil
	}
	return s.StreamInfo().Created, nil
}

// fresh reports whether an update's seal is not older than the key's last:
// a sealed value (or delete) copied back onto its key after a newer one is
// a replay, dropped and counted. A delete then leaves its at as the key's
// tombstone, so an older put cannot bring the key back either.
func (w *Watcher[T]) fresh(ev Event[T]) bool {
	if ev.at == 0 {
		return true
	}
	accept := w.fence.put
	if ev.Op == OpDelete {
		accept = w.fence.del
	}
	if accept(ev.Key, ev.at) {
		return true
	}
	w.drop(ev.Key, w.replayed(ev.Key, ev.at))
	return false
}

// fenceSnapshot checks a snapshot's sealed values and deletes against what
// the fence knows from before (a resync or reconnect keeps it), drops from
// initial each one older than its key's last (a replay stored while the
// watch was away), and turns the keys the bucket no longer holds into
// tombstones.
func (w *Watcher[T]) fenceSnapshot(initial map[string]Event[T], deleted map[string]int64) {
	for key, ev := range initial {
		if ev.at != 0 && !w.fence.put(key, ev.at) {
			w.drop(key, w.replayed(key, ev.at))
			delete(initial, key)
		}
	}
	for key, at := range deleted {
		if !w.fence.del(key, at) {
			w.drop(key, fmt.Errorf("delete: %w", w.replayed(key, at)))
		}
	}
	var gone []string
	w.fence.keys(func(key string) {
		if _, ok := initial[key]; !ok {
			gone = append(gone, key)
		}
	})
	for _, key := range gone {
		w.fence.gone(key)
	}
}

func (w *Watcher[T]) replayed(key string, at int64) error {
	return fmt.Errorf("%w: %s %q sealed at %s, before its last value or delete (sealed at %s)", ErrReplayed, w.bucket, key, stamp(at), stamp(w.fence.known(key)))
}

// event opens and decodes one entry; false means it was dropped. A delete
// counts only when its owner sealed it: a forged one in an update is
// dropped (the handler keeps the value), and in a snapshot leaves the key
// without a value, as the bucket no longer holds the last real one.
func (w *Watcher[T]) event(e jetstream.KeyValueEntry) (Event[T], bool) {
	ev := Event[T]{Key: e.Key(), Revision: e.Revision(), Op: OpPut}
	if e.Operation() != jetstream.KeyValuePut {
		ev.Op = OpDelete
		_, at, role, err := w.conn.seals.openBy(kindKV, w.bucket, e.Key(), opDel, e.Value(), e.Created())
		if err != nil {
			w.drop(e.Key(), fmt.Errorf("delete: %w", err))
			return ev, false
		}
		ev.at, ev.Sealer = at, role
		return ev, true
	}
	body, at, role, err := w.conn.seals.openBy(kindKV, w.bucket, e.Key(), opPut, e.Value(), e.Created())
	ev.at, ev.Sealer = at, role
	if err != nil {
		w.drop(e.Key(), err)
		return ev, false
	}
	v, err := w.decode(e.Key(), body)
	if err != nil {
		w.drop(e.Key(), err)
		return ev, false
	}
	ev.Value = v
	return ev, true
}

// drop counts a bad value and logs at most one line per 10s, with how many
// were dropped since the last line, so a flood of garbage cannot flood logs.
func (w *Watcher[T]) drop(key string, err error) {
	w.dropped.Add(1)
	if w.OnDrop != nil {
		w.OnDrop(key, err)
	}
	if forgery(err) {
		w.conn.forged.Add(1)
	}
	if n, ok := w.dropLog.allow(10 * time.Second); ok {
		w.logger.Warn("dropped a value: undecodable, forged or replayed", zap.String("key", key), zap.Error(err), zap.Uint64("dropped_since_last_log", n))
	}
}

// logLimiter lets one log line through per interval and counts the rest.
type logLimiter struct {
	mu         sync.Mutex
	last       time.Time
	unreported uint64
}

// allow reports whether a line may be logged now and, if so, how many
// events it stands for (this one and those held back since the last line).
func (l *logLimiter) allow(every time.Duration) (uint64, bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.unreported++
	if time.Since(l.last) < every {
		return 0, false
	}
	n := l.unreported
	l.last, l.unreported = time.Now(), 0
	return n, true
}

func sorted[T any](m map[string]Event[T]) []Event[T] {
	out := make([]Event[T], 0, len(m))
	for _, e := range m {
		out = append(out, e)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Key < out[j].Key })
	return out
}
