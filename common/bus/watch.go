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
	// Update is one change after the snapshot.
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

	// ResyncEvery, when positive, delivers a fresh snapshot that often, as a
	// guard against any missed update.
	ResyncEvery time.Duration
	// RetryWait is the delay before watching again after an error.
	RetryWait time.Duration

	logMu      sync.Mutex
	lastLog    time.Time
	unreported uint64
}

// NewWatcher returns a watcher of bucket that decodes values with decode and
// delivers them to handler.
func NewWatcher[T any](conn *Conn, bucket string, decode DecodeFunc[T], handler Handler[T], logger *zap.Logger) *Watcher[T] {
	return &Watcher[T]{
		conn: conn, bucket: bucket, decode: decode, handler: handler,
		logger: logger.Named("watch").With(zap.String("bucket", bucket)), RetryWait: 500 * time.Millisecond,
	}
}

// Dropped returns how many values failed to decode and were dropped.
func (w *Watcher[T]) Dropped() uint64 { return w.dropped.Load() }

// Run watches until ctx ends. It delivers a snapshot first, then updates,
// and starts over with a fresh snapshot after NATS reconnects (a restarted
// or reset server may have lost or renumbered what the watch was following).
func (w *Watcher[T]) Run(ctx context.Context) error {
	reconnected, stop := w.conn.reconnected()
	defer stop()
	for {
		err := w.watchOnce(ctx, reconnected)
		if ctx.Err() != nil {
			return nil
		}
		if errors.Is(err, errResync) {
			continue
		}
		w.logger.Warn("watch failed, retrying", zap.Error(err), zap.Duration("wait", w.RetryWait))
		select {
		case <-ctx.Done():
			return nil
		case <-reconnected:
		case <-time.After(w.RetryWait):
		}
	}
}

func (w *Watcher[T]) watchOnce(ctx context.Context, reconnected <-chan struct{}) error {
	kv, err := w.conn.js.KeyValue(ctx, w.bucket)
	if err != nil {
		return fmt.Errorf("open bucket %s: %w", w.bucket, err)
	}
	kw, err := kv.WatchAll(ctx)
	if err != nil {
		return fmt.Errorf("watch bucket %s: %w", w.bucket, err)
	}
	defer func() { _ = kw.Stop() }()
	var resync <-chan time.Time
	if w.ResyncEvery > 0 {
		t := time.NewTimer(w.ResyncEvery)
		defer t.Stop()
		resync = t.C
	}

	initial := map[string]Event[T]{}
	var snapshotRev uint64
	inSnapshot := true
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-reconnected:
			return errResync
		case <-resync:
			return errResync
		case e, ok := <-kw.Updates():
			if !ok {
				return fmt.Errorf("watch of bucket %s closed", w.bucket)
			}
			if e == nil { // the server's end of initial values
				if inSnapshot {
					w.handler.Snapshot(sorted(initial), snapshotRev)
					inSnapshot, initial = false, nil
				}
				continue
			}
			ev, ok := w.event(e)
			if !inSnapshot {
				if ok {
					w.handler.Update(ev)
				}
				continue
			}
			snapshotRev = max(snapshotRev, e.Revision())
			switch {
			case !ok: // undecodable: keep no value for the key
				delete(initial, e.Key())
			case ev.Op == OpDelete:
				delete(initial, ev.Key)
			default:
				initial[ev.Key] = ev
			}
		}
	}
}

// event decodes one entry; false means it was dropped.
func (w *Watcher[T]) event(e jetstream.KeyValueEntry) (Event[T], bool) {
	ev := Event[T]{Key: e.Key(), Revision: e.Revision(), Op: OpPut}
	if e.Operation() != jetstream.KeyValuePut {
		ev.Op = OpDelete
		return ev, true
	}
	v, err := w.decode(e.Key(), e.Value())
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
	w.logMu.Lock()
	defer w.logMu.Unlock()
	w.unreported++
	if time.Since(w.lastLog) < 10*time.Second {
		return
	}
	w.logger.Warn("dropped undecodable value", zap.String("key", key), zap.Error(err), zap.Uint64("dropped_since_last_log", w.unreported))
	w.lastLog, w.unreported = time.Now(), 0
}

func sorted[T any](m map[string]Event[T]) []Event[T] {
	out := make([]Event[T], 0, len(m))
	for _, e := range m {
		out = append(out, e)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Key < out[j].Key })
	return out
}
