package publisher

import (
	"context"
	"net"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest"

	"github.com/berthhq/berth/common/bus"
	"github.com/berthhq/berth/common/msg"
	"github.com/berthhq/berth/healthd/internal/checker"
	"github.com/berthhq/berth/healthd/internal/probe"
	"github.com/berthhq/berth/internal/testrig"
)

const wait, tick = 10 * time.Second, 5 * time.Millisecond

// rig is one NATS server with the contract's buckets, a connection, and a
// recorder of the health subjects.
type rig struct {
	t       *testing.T
	names   msg.Names
	conn    *bus.Conn
	mu      sync.Mutex
	changes []*msg.HealthChange
}

func newRig(t *testing.T, url string) *rig {
	t.Helper()
	names, err := msg.NewNames("t")
	require.NoError(t, err)
	conn, err := bus.Connect(context.Background(), bus.Options{URL: url, Name: t.Name(), ReconnectWait: 20 * time.Millisecond, ReconnectMax: 100 * time.Millisecond}, zaptest.NewLogger(t, zaptest.Level(zapcore.WarnLevel)))
	require.NoError(t, err)
	t.Cleanup(conn.Close)
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	require.NoError(t, conn.WaitConnected(ctx))
	require.NoError(t, conn.EnsureBuckets(ctx, bus.ContractBuckets(names)))
	r := &rig{t: t, names: names, conn: conn}
	_, err = conn.Subscribe(names.HealthSubject("*", "*"), func(_ string, data []byte) {
		m, err := msg.DecodeAs[*msg.HealthChange](data)
		if err != nil {
			t.Errorf("transition does not decode: %v", err)
			return
		}
		r.mu.Lock()
		defer r.mu.Unlock()
		r.changes = append(r.changes, m)
	})
	require.NoError(t, err)
	require.NoError(t, conn.Flush(ctx))
	return r
}

func (r *rig) publisher(id string, targets int) *Publisher {
	return New(r.conn, r.names, id, func() int { return targets }, zaptest.NewLogger(r.t, zaptest.Level(zapcore.WarnLevel)))
}

func (r *rig) kv(bucket string) *bus.KV {
	kv, err := r.conn.KV(context.Background(), bucket)
	require.NoError(r.t, err)
	return kv
}

// health returns the stored health of key and its revision, nil if none.
func (r *rig) health(key string) (*msg.Health, uint64) {
	e, err := r.kv(r.names.HealthBucket()).Get(context.Background(), key)
	if err != nil {
		require.ErrorIs(r.t, err, bus.ErrKeyNotFound)
		return nil, 0
	}
	h, err := msg.DecodeAs[*msg.Health](e.Value)
	require.NoError(r.t, err)
	return h, e.Revision
}

func (r *rig) checker(id string) *msg.Checker {
	e, err := r.kv(r.names.CheckersBucket()).Get(context.Background(), id)
	if err != nil {
		require.ErrorIs(r.t, err, bus.ErrKeyNotFound)
		return nil
	}
	c, err := msg.DecodeAs[*msg.Checker](e.Value)
	require.NoError(r.t, err)
	return c
}

// transitions returns the transitions received so far, after a round trip
// to the server so that what was published before the call has arrived.
func (r *rig) transitions() []*msg.HealthChange {
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	_ = r.conn.Flush(ctx) // a sync point only: a failure shows in what is returned
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]*msg.HealthChange(nil), r.changes...)
}

// report builds a probe report of key.
func report(key, from, to string, changed bool, res probe.Result) checker.Report {
	return checker.Report{
		Target: checker.Target{Target: probe.Target{Key: key, Address: "127.0.0.1:1"}, Generation: 7, Term: 3},
		State:  checker.State{Status: to, Successes: 2, Failures: 0, Last: res},
		From:   from, Changed: changed,
	}
}

// runPublisher runs p until the test ends and returns a stop that ends Run
// and waits for it.
func runPublisher(t *testing.T, p *Publisher) (stop func()) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- p.Run(ctx) }()
	var once sync.Once
	stop = func() {
		once.Do(func() {
			cancel()
			select {
			case err := <-done:
				require.NoError(t, err)
			case <-time.After(wait):
				t.Error("Run did not return after its context ended")
			}
		})
	}
	t.Cleanup(stop)
	return stop
}

func TestProbedPutsHealthAndPublishesTransitions(t *testing.T) {
	t.Parallel()
	ok := probe.Result{OK: true, Latency: 1500 * time.Microsecond}
	bad := probe.Result{Failure: msg.FailureConnectionRefused, Message: "connection refused", Latency: 2 * time.Millisecond}
	tests := []struct {
		name string
		// reports are given in order; the last decides the stored value.
		reports     []checker.Report
		wantStatus  string
		wantFailure string
		wantChanges []string // from>to of each published transition
		wantWrites  int      // puts of the key (its revision moves with each)
	}{
		{
			name:       "first report is stored without a transition",
			reports:    []checker.Report{report("web.a", msg.StatusUnknown, msg.StatusUnknown, false, ok)},
			wantStatus: msg.StatusUnknown, wantWrites: 1,
		},
		{
			name: "a report with no change is not written again",
			reports: []checker.Report{
				report("web.a", msg.StatusUnknown, msg.StatusUnknown, false, ok),
				report("web.a", msg.StatusUnknown, msg.StatusUnknown, false, ok),
				report("web.a", msg.StatusUnknown, msg.StatusUnknown, false, bad),
			},
			wantStatus: msg.StatusUnknown, wantWrites: 1,
		},
		{
			name: "each transition is written and published",
			reports: []checker.Report{
				report("web.a", msg.StatusUnknown, msg.StatusHealthy, true, ok),
				report("web.a", msg.StatusHealthy, msg.StatusHealthy, false, ok),
				report("web.a", msg.StatusHealthy, msg.StatusUnhealthy, true, bad),
			},
			wantStatus: msg.StatusUnhealthy, wantFailure: msg.FailureConnectionRefused,
			wantChanges: []string{"unknown>healthy", "healthy>unhealthy"}, wantWrites: 2,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			r := newRig(t, testrig.NATS(t))
			p := r.publisher("hc-1", 1)
			var firstRev uint64
			for i, rep := range tt.reports {
				p.Probed(rep)
				if i == 0 {
					_, firstRev = r.health("web.a")
				}
			}
			h, rev := r.health("web.a")
			require.NotNil(t, h)
			require.Equal(t, "web", h.App)
			require.Equal(t, "a", h.Instance)
			require.Equal(t, tt.wantStatus, h.Status)
			require.Equal(t, tt.wantFailure, h.Failure)
			require.Equal(t, "hc-1", h.Checker)
			require.Equal(t, uint64(3), h.InstanceTerm, "the instance record's term is carried, so readers can fence")
			require.Equal(t, int64(7), h.Generation)
			require.Equal(t, 2, h.ConsecutiveSuccesses)
			require.WithinDuration(t, time.Now(), h.CheckedAt, 5*time.Second)
			require.Equal(t, uint64(tt.wantWrites-1), rev-firstRev, "writes of the key")

			require.Eventually(t, func() bool { return len(r.transitions()) == len(tt.wantChanges) }, wait, tick)
			var got []string
			for _, c := range r.transitions() {
				require.Equal(t, "web", c.App)
				require.Equal(t, "a", c.Instance)
				require.Equal(t, "hc-1", c.Checker)
				got = append(got, c.From+">"+c.To)
			}
			if len(tt.wantChanges) == 0 {
				got = nil
			}
			require.Equal(t, tt.wantChanges, got)
			require.Equal(t, uint64(len(tt.wantChanges)), p.Transitions.Load())
			require.Zero(t, p.Failures.Load())
		})
	}
}

func TestProbedEdgeCases(t *testing.T) {
	t.Parallel()
	long := strings.Repeat("x", 2000)
	tests := []struct {
		name         string
		key          string
		message      string
		wantStored   bool
		wantMessage  int // stored message length
		wantFailures uint64
	}{
		{name: "a long message is cut to 512 bytes", key: "web.a", message: long, wantStored: true, wantMessage: 512},
		{name: "a short message is kept", key: "web.a", message: "status 503", wantStored: true, wantMessage: len("status 503")},
		{name: "a key that is not app.instance is counted and not written", key: "no-dot", message: "x", wantFailures: 1},
		{name: "a key with an invalid app is counted and not written", key: "Web!.a", message: "x", wantFailures: 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			r := newRig(t, testrig.NATS(t))
			p := r.publisher("hc-1", 1)
			p.Probed(report(tt.key, msg.StatusUnknown, msg.StatusUnhealthy, true, probe.Result{Failure: msg.FailureHTTPStatus, Message: tt.message}))
			keys, err := r.kv(r.names.HealthBucket()).Keys(context.Background())
			require.NoError(t, err)
			if !tt.wantStored {
				require.Empty(t, keys)
				require.Empty(t, r.transitions())
				require.Equal(t, tt.wantFailures, p.Failures.Load(), "counted once, by the put; the transition is skipped")
				return
			}
			h, _ := r.health(tt.key)
			require.Len(t, h.Message, tt.wantMessage)
			require.Eventually(t, func() bool { return len(r.transitions()) == 1 }, wait, tick)
			require.Len(t, r.transitions()[0].Message, tt.wantMessage)
			require.Zero(t, p.Failures.Load())
		})
	}
}

func TestRemoved(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name       string
		handedOver func(key string) bool
		wantKept   bool
	}{
		{name: "a target no checker has is deleted"},
		{name: "a target no longer handed over is deleted", handedOver: func(string) bool { return false }},
		{name: "a target handed to another checker keeps its value for nginx", handedOver: func(string) bool { return true }, wantKept: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			r := newRig(t, testrig.NATS(t))
			p := r.publisher("hc-1", 1)
			p.HandedOver = tt.handedOver
			p.Probed(report("web.a", msg.StatusUnknown, msg.StatusHealthy, true, probe.Result{OK: true}))
			p.Probed(report("web.b", msg.StatusUnknown, msg.StatusHealthy, true, probe.Result{OK: true}))
			p.Removed("web.a")
			h, _ := r.health("web.a")
			require.Equal(t, tt.wantKept, h != nil)
			other, _ := r.health("web.b")
			require.NotNil(t, other, "other targets are untouched")
			require.Zero(t, p.Failures.Load())
		})
	}
}

func TestRemovedBeforeAnyWriteTouchesNothing(t *testing.T) {
	t.Parallel()
	r := newRig(t, testrig.NATS(t))
	_, err := r.kv(r.names.HealthBucket()).Put(context.Background(), "web.a", []byte(`{}`))
	require.NoError(t, err)
	p := r.publisher("hc-1", 0)
	p.Removed("web.a") // not ours: this checker never wrote it
	_, err = r.kv(r.names.HealthBucket()).Get(context.Background(), "web.a")
	require.NoError(t, err)
}

// TestMissingBucketsAreCreated: a health bucket that is missing (NATS
// was not ready when healthd started, or came back empty) is created at
// the first put.
func TestMissingBucketsAreCreated(t *testing.T) {
	t.Parallel()
	conn, err := bus.Connect(context.Background(), bus.Options{URL: testrig.NATS(t)}, zaptest.NewLogger(t, zaptest.Level(zapcore.WarnLevel)))
	require.NoError(t, err)
	t.Cleanup(conn.Close)
	names, _ := msg.NewNames("t")
	p := New(conn, names, "hc-1", func() int { return 0 }, zaptest.NewLogger(t, zaptest.Level(zapcore.ErrorLevel)))
	p.Probed(report("web.a", msg.StatusUnknown, msg.StatusHealthy, true, probe.Result{OK: true}))
	require.Zero(t, p.Failures.Load())
	h, _ := (&rig{t: t, names: names, conn: conn}).health("web.a")
	require.NotNil(t, h)
}

// refusingRig is a rig whose health bucket refuses every put for now:
// its max bytes hold no value.
func refusingRig(t *testing.T) *rig {
	t.Helper()
	conn, err := bus.Connect(context.Background(), bus.Options{URL: testrig.NATS(t)}, zaptest.NewLogger(t, zaptest.Level(zapcore.WarnLevel)))
	require.NoError(t, err)
	t.Cleanup(conn.Close)
	names, _ := msg.NewNames("t")
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	buckets := bus.MustOwnedBuckets(names, bus.RoleHealthd)
	for i := range buckets {
		buckets[i].MaxBytes = 64
	}
	require.NoError(t, conn.EnsureBuckets(ctx, buckets))
	return &rig{t: t, names: names, conn: conn}
}

// accept raises the health bucket's max bytes back to the contract's.
func (r *rig) accept() {
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	require.NoError(r.t, r.conn.EnsureBuckets(ctx, bus.MustOwnedBuckets(r.names, bus.RoleHealthd)))
}

func TestRefusedPutsAreCountedNotFatal(t *testing.T) {
	t.Parallel()
	r := refusingRig(t)
	p := r.publisher("hc-1", 0)
	p.Probed(report("web.a", msg.StatusUnknown, msg.StatusUnknown, false, probe.Result{}))
	require.Equal(t, uint64(1), p.Failures.Load())
}

// TestRunRetriesAFailedPutSoon: a health put that fails (here: the
// bucket refuses it; in a NATS cluster, its stream electing a leader) is
// put again within a backoff, not at the next refresh.
func TestRunRetriesAFailedPutSoon(t *testing.T) {
	t.Parallel()
	r := refusingRig(t)
	p := r.publisher("hc-1", 1)
	p.Refresh = time.Hour // only the retry may put it again
	runPublisher(t, p)
	p.Probed(report("web.a", msg.StatusUnknown, msg.StatusHealthy, true, probe.Result{OK: true}))
	require.Positive(t, p.Failures.Load(), "the bucket refused the put")
	h, _ := r.health("web.a")
	require.Nil(t, h)

	r.accept()
	require.Eventually(t, func() bool {
		h, _ := r.health("web.a")
		return h != nil && h.Status == msg.StatusHealthy
	}, wait, tick, "the failed put is retried")
}

func TestRunHeartbeatsAndLeaves(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name        string
		leaveOnStop bool
	}{
		{name: "leaves on stop so peers take over at once", leaveOnStop: true},
		{name: "a crash-like stop leaves the heartbeat to expire", leaveOnStop: false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			r := newRig(t, testrig.NATS(t))
			p := r.publisher("hc-1", 42)
			p.LeaveOnStop = tt.leaveOnStop
			stop := runPublisher(t, p)
			require.Eventually(t, func() bool { return r.checker("hc-1") != nil }, wait, tick)
			c := r.checker("hc-1")
			require.Equal(t, "hc-1", c.ID)
			require.Equal(t, 42, c.Targets)
			require.WithinDuration(t, time.Now(), c.HeartbeatAt, 5*time.Second)
			require.False(t, c.StartedAt.After(c.HeartbeatAt))
			stop()
			require.Equal(t, !tt.leaveOnStop, r.checker("hc-1") != nil)
		})
	}
}

// TestHeartbeatDoesNotWaitForPuts: while a refresh's puts are held (at
// 30,000 targets they took longer than msg.CheckerDeadAfter), the
// heartbeats go on, so peers do not take this checker's targets.
func TestHeartbeatDoesNotWaitForPuts(t *testing.T) {
	t.Parallel()
	r := newRig(t, testrig.NATS(t))
	p := r.publisher("hc-1", 1)
	// The first refresh comes long before the first periodic heartbeat.
	p.Refresh, p.beatEvery = 10*time.Millisecond, 200*time.Millisecond
	// A value never put: the first refresh puts it, and waits for writeMu.
	p.latest["web.a"] = report("web.a", msg.StatusUnknown, msg.StatusHealthy, true, probe.Result{OK: true})
	p.writeMu.lock(context.Background())
	defer p.writeMu.unlock()
	runPublisher(t, p)
	require.Eventually(t, func() bool { return r.checker("hc-1") != nil }, wait, tick)
	first := r.checker("hc-1").HeartbeatAt
	require.Eventually(t, func() bool { return r.checker("hc-1").HeartbeatAt.After(first) }, wait, tick,
		"a heartbeat comes while the refresh waits to put")
	h, _ := r.health("web.a")
	require.Nil(t, h, "the refresh is still held")
}

// TestLeaveDoesNotWaitForPuts: a checker stopped while a refresh waits
// for the write lock behind the probes' puts (a start's 15,000 first
// reports) leaves at once; before, its leave waited for the lock, seconds
// at 30,000 targets (issue 30).
func TestLeaveDoesNotWaitForPuts(t *testing.T) {
	t.Parallel()
	r := newRig(t, testrig.NATS(t))
	p := r.publisher("hc-1", 1)
	p.Refresh = 10 * time.Millisecond
	// A value never put: the first refresh puts it, and waits for the lock.
	p.latest["web.a"] = report("web.a", msg.StatusUnknown, msg.StatusHealthy, true, probe.Result{OK: true})
	p.writeMu.lock(context.Background()) // a probe's put, held past the stop
	defer p.writeMu.unlock()
	stop := runPublisher(t, p)
	require.Eventually(t, func() bool { return r.checker("hc-1") != nil && p.passes.Load() > 0 }, wait, tick, "the refresh has begun")
	stop() // fails the test if Run does not return while the lock is held
	require.Nil(t, r.checker("hc-1"), "left while a put held the lock")
	h, _ := r.health("web.a")
	require.Nil(t, h, "the refresh gave up its wait")
}

// TestPutDeadlineStartsWithTheLock: a put that waits for the write lock
// longer than its deadline (30,000 first reports at once) still goes.
func TestPutDeadlineStartsWithTheLock(t *testing.T) {
	t.Parallel()
	r := newRig(t, testrig.NATS(t))
	p := r.publisher("hc-1", 1)
	p.putTimeout = 50 * time.Millisecond
	p.writeMu.lock(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		p.Probed(report("web.a", msg.StatusUnknown, msg.StatusHealthy, true, probe.Result{OK: true}))
	}()
	time.Sleep(4 * p.putTimeout) // the behaviour under test: a wait for the lock past the deadline
	p.writeMu.unlock()
	<-done
	h, _ := r.health("web.a")
	require.NotNil(t, h, "the put ran after its wait")
	require.Equal(t, msg.StatusHealthy, h.Status)
	require.Zero(t, p.Failures.Load())
}

func TestRunRefreshesEveryValue(t *testing.T) {
	t.Parallel()
	r := newRig(t, testrig.NATS(t))
	p := r.publisher("hc-1", 2)
	p.Refresh = 50 * time.Millisecond
	p.Probed(report("web.a", msg.StatusUnknown, msg.StatusHealthy, true, probe.Result{OK: true}))
	p.Probed(report("web.b", msg.StatusUnknown, msg.StatusUnhealthy, true, probe.Result{Failure: msg.FailureTimeout}))
	_, revA := r.health("web.a")
	_, revB := r.health("web.b")
	runPublisher(t, p)
	require.Eventually(t, func() bool {
		_, a := r.health("web.a")
		_, b := r.health("web.b")
		return a > revA && b > revB
	}, wait, tick, "every value is put again within resealEvery refreshes")
	h, _ := r.health("web.b")
	require.Equal(t, msg.StatusUnhealthy, h.Status, "a refresh writes the latest state, not a new one")
	require.Len(t, r.transitions(), 2, "refreshes publish no transitions")
}

// TestRunRepublishesAfterWipe restarts NATS on the same port with an empty
// store: the publisher must create the buckets again and put back its
// heartbeat and every health value it holds, without a new probe.
func TestRunRepublishesAfterWipe(t *testing.T) {
	t.Parallel()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	port := ln.Addr().(*net.TCPAddr).Port
	require.NoError(t, ln.Close())
	logger := zaptest.NewLogger(t, zaptest.Level(zapcore.WarnLevel))
	s1, err := bus.Embedded(bus.EmbeddedOptions{Port: port, StoreDir: t.TempDir()}, logger)
	require.NoError(t, err)
	t.Cleanup(s1.Shutdown)
	r := newRig(t, "nats://127.0.0.1:"+strconv.Itoa(port))
	p := r.publisher("hc-1", 1)
	p.Refresh = time.Hour // only the reconnect may republish
	p.Probed(report("web.a", msg.StatusUnknown, msg.StatusHealthy, true, probe.Result{OK: true}))
	var removed atomic.Bool
	p.HandedOver = func(string) bool { removed.Store(true); return false }
	runPublisher(t, p)
	require.Eventually(t, func() bool { return r.checker("hc-1") != nil }, wait, tick)

	s1.Shutdown()
	s2, err := bus.Embedded(bus.EmbeddedOptions{Port: port, StoreDir: t.TempDir()}, logger)
	require.NoError(t, err)
	t.Cleanup(s2.Shutdown)

	require.Eventually(t, func() bool {
		kv, err := r.conn.KV(context.Background(), r.names.HealthBucket())
		if err != nil {
			return false
		}
		e, err := kv.Get(context.Background(), "web.a")
		if err != nil {
			return false
		}
		h, err := msg.DecodeAs[*msg.Health](e.Value)
		return err == nil && h.Status == msg.StatusHealthy
	}, wait, tick, "the health value is back after the wipe")
	require.Eventually(t, func() bool {
		kv, err := r.conn.KV(context.Background(), r.names.CheckersBucket())
		if err != nil {
			return false
		}
		_, err = kv.Get(context.Background(), "hc-1")
		return err == nil
	}, wait, tick, "the heartbeat is back after the wipe")
	require.False(t, removed.Load())
}

// TestRepairPutsTheProbedValueAgain: a key whose last value healthd did not
// seal (here: junk put over it) is put again from the last report, within
// repairWait; a key this checker does not probe is left alone.
func TestRepairPutsTheProbedValueAgain(t *testing.T) {
	t.Parallel()
	r := newRig(t, testrig.NATS(t))
	p := r.publisher("hc-1", 1)
	p.Probed(report("web.a", msg.StatusUnknown, msg.StatusHealthy, true, probe.Result{OK: true}))
	kv := r.kv(r.names.HealthBucket())
	for _, key := range []string{"web.a", "web.other"} {
		_, err := kv.Put(context.Background(), key, []byte(`{"forged":true}`))
		require.NoError(t, err)
		p.Repair(key)
		p.Repair(key) // a burst makes one put
	}
	// Repair decides at once: nothing is pending for the key not probed.
	p.mu.Lock()
	require.False(t, p.repairing["web.other"])
	p.mu.Unlock()
	require.Eventually(t, func() bool {
		e, err := kv.Get(context.Background(), "web.a")
		if err != nil {
			return false
		}
		h, err := msg.DecodeAs[*msg.Health](e.Value)
		return err == nil && h.Status == msg.StatusHealthy
	}, wait, 5*time.Millisecond)
	e, err := kv.Get(context.Background(), "web.other")
	require.NoError(t, err)
	require.JSONEq(t, `{"forged":true}`, string(e.Value), "another checker's key is its business")
}

// TestSweepDeletesUnprobedHealth: the health of a key no checker probes
// goes at the second sweep in a row that finds it so, and only by the
// checker that owns its shard; a key probed again meanwhile, or probed by
// this checker, stays. Listing the bucket finds keys no view has (a
// forged value, a stashed copy) and deletes them whatever their shard.
func TestSweepDeletesUnprobedHealth(t *testing.T) {
	t.Parallel()
	r := newRig(t, testrig.NATS(t))
	p := r.publisher("hc-1", 1)
	ctx := context.Background()
	p.Probed(report("web.mine", msg.StatusUnknown, msg.StatusHealthy, true, probe.Result{OK: true}))
	kv := r.kv(r.names.HealthBucket())
	view := []string{"web.probed", "web.gone", "web.peers", "web.back", "web.mine"}
	for _, key := range append(view, "web.junk") {
		if key == "web.mine" {
			continue
		}
		_, err := kv.Put(ctx, key, []byte(`{"status":"healthy"}`))
		require.NoError(t, err)
	}
	probed := map[string]bool{"web.probed": true}
	owned := func(key string) bool { return key != "web.peers" }
	isProbed := func(key string) bool { return probed[key] }

	require.Zero(t, p.Sweep(ctx, view, isProbed, owned, false), "a first sighting deletes nothing")
	probed["web.back"] = true // its instance came back
	require.Equal(t, 1, p.Sweep(ctx, view, isProbed, owned, false))
	present := func() []string {
		keys, err := kv.Keys(ctx)
		require.NoError(t, err)
		return keys
	}
	require.ElementsMatch(t, []string{"web.probed", "web.peers", "web.back", "web.mine", "web.junk"}, present(),
		"web.gone went; web.peers is another checker's shard, web.mine this checker's target")

	view = []string{"web.probed", "web.peers", "web.back", "web.mine"} // as the health view has it now
	require.Zero(t, p.Sweep(ctx, view, isProbed, owned, true))
	require.Equal(t, 1, p.Sweep(ctx, view, isProbed, owned, true), "the listing finds web.junk")
	require.ElementsMatch(t, []string{"web.probed", "web.peers", "web.back", "web.mine"}, present(),
		"the listing deletes what no view has, not what a view has (web.peers is its owner's)")
}

// TestRefreshPutsOnlyWhatChanged: a refresh puts a value whose status
// changed since its last put and those whose turn it is; after a
// reconnect (full) every value; and each value at least once in
// resealEvery refreshes.
func TestRefreshPutsOnlyWhatChanged(t *testing.T) {
	t.Parallel()
	r := newRig(t, testrig.NATS(t))
	p := r.publisher("hc-1", 20)
	ctx := context.Background()
	var keys []string
	for i := range 20 {
		key := "web.i" + strconv.Itoa(i)
		keys = append(keys, key)
		p.Probed(report(key, msg.StatusUnknown, msg.StatusHealthy, true, probe.Result{OK: true}))
	}
	revs := func() map[string]uint64 {
		out := map[string]uint64{}
		for _, k := range keys {
			_, out[k] = r.health(k)
		}
		return out
	}
	before := revs()
	// A probe that changes nothing material (no transition) is not put by
	// Probed; a refresh puts it when its status changed, here from a
	// report that did not count as a transition yet.
	p.Probed(report("web.i0", msg.StatusHealthy, msg.StatusUnhealthy, false, probe.Result{Failure: msg.FailureTimeout}))
	pass := p.passes.Load()
	p.republish(ctx, false)
	after := revs()
	for _, k := range keys {
		want := k == "web.i0" || bus.ResealDue(k, pass, resealEvery)
		require.Equal(t, want, after[k] != before[k], "%s put again", k)
	}
	p.republish(ctx, true)
	full := revs()
	for _, k := range keys {
		require.Greater(t, full[k], after[k], "a full republish puts %s", k)
	}
	for range resealEvery {
		p.republish(ctx, false)
	}
	last := revs()
	for _, k := range keys {
		require.Greater(t, last[k], full[k], "%s is sealed again within %d refreshes", k, resealEvery)
	}
}

// The health value carries the target's history, bounded, and its counts;
// a failure that changes no status reaches the bucket at the next refresh,
// while passes alone wait for the value's re-seal.
func TestHealthCarriesTheHistory(t *testing.T) {
	t.Parallel()
	r := newRig(t, testrig.NATS(t))
	p := r.publisher("hc-1", 1)
	ctx := context.Background()
	hist := &checker.History{}
	at := time.Date(2026, 12, 6, 12, 0, 0, 0, time.UTC)
	probed := func(res probe.Result, from, to string, changed bool) {
		at = at.Add(time.Second)
		hist.Add(res, at)
		rep := report("web.a", from, to, changed, res)
		rep.History = hist
		p.Probed(rep)
	}
	ok := probe.Result{OK: true, Latency: 1500 * time.Microsecond}
	probed(ok, msg.StatusUnknown, msg.StatusHealthy, true)
	h, rev := r.health("web.a")
	require.Equal(t, []msg.HealthResult{{At: at, LatencyMS: 1.5}}, h.History)
	require.Equal(t, int64(1), h.Probes)
	require.Equal(t, at, h.HistorySince)
	require.Empty(t, h.FailureCounts)

	// Passes change nothing the value must say at once.
	probed(ok, msg.StatusHealthy, msg.StatusHealthy, false)
	p.passes.Store(1) // a refresh that is not web.a's re-seal turn
	for bus.ResealDue("web.a", p.passes.Load(), resealEvery) {
		p.passes.Add(1)
	}
	p.republish(ctx, false)
	_, again := r.health("web.a")
	require.Equal(t, rev, again, "passes alone are not put before the re-seal")

	// A slow answer below the unhealthy threshold: no transition, put at the refresh.
	slow := probe.Result{Failure: msg.FailureSlow, Latency: 812 * time.Millisecond, Message: "slow: answered in 812ms, max_response_time 500ms"}
	probed(slow, msg.StatusHealthy, msg.StatusHealthy, false)
	_, same := r.health("web.a")
	require.Equal(t, rev, same, "a failure without a transition waits for the refresh")
	p.republish(ctx, false)
	h, rev = r.health("web.a")
	require.Greater(t, rev, same)
	require.Len(t, h.History, 3)
	require.Equal(t, msg.HealthResult{At: at, LatencyMS: 812, Failure: msg.FailureSlow, Message: slow.Message}, h.History[0], "newest first")
	require.Equal(t, map[string]int64{msg.FailureSlow: 1}, h.FailureCounts)
	require.Equal(t, int64(3), h.Probes)

	// Long messages: the value stays within its bound.
	long := probe.Result{Failure: msg.FailureProtocol, Latency: time.Second, Message: strings.Repeat("x", 500)}
	for range 30 {
		probed(long, msg.StatusUnhealthy, msg.StatusUnhealthy, false)
	}
	p.republish(ctx, false)
	e, err := r.kv(r.names.HealthBucket()).Get(ctx, "web.a")
	require.NoError(t, err)
	h, err = msg.DecodeAs[*msg.Health](e.Value)
	require.NoError(t, err)
	require.Len(t, h.History, msg.MaxHealthHistory)
	require.Equal(t, map[string]int64{msg.FailureSlow: 1, msg.FailureProtocol: 30}, h.FailureCounts)
	t.Logf("health value with a full history of failures: %d bytes", len(e.Value))
	require.LessOrEqual(t, len(e.Value), 4<<10, "a health value with a full history stays within 4 KiB")
	require.Zero(t, p.Failures.Load())
}
