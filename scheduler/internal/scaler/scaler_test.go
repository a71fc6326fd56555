package scaler

import (
	"context"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"github.com/stretchr/testify/require"
	"go.uber.org/zap/zaptest"

	"github.com/berthhq/berth/common/bus"
	"github.com/berthhq/berth/common/msg"
	"github.com/berthhq/berth/common/spec"
	"github.com/berthhq/berth/scheduler/internal/docker"
	"github.com/berthhq/berth/scheduler/internal/store"
)

// fakeStore serves apps on the first List; with block set, every later
// List blocks until its context ends, then takes a while more (longer
// than the test holds a sample handler), as a query finishing would.
type fakeStore struct {
	apps    []store.App
	block   bool
	calls   atomic.Int32
	entered chan struct{} // closed when a blocking List starts
	once    sync.Once
	done    atomic.Bool // a blocking List has returned
}

func (f *fakeStore) List(ctx context.Context) ([]store.App, error) {
	if f.calls.Add(1) == 1 || !f.block {
		return f.apps, nil
	}
	f.once.Do(func() { close(f.entered) })
	<-ctx.Done()
	time.Sleep(300 * time.Millisecond) // the behaviour under test: a call that outlives the cancel
	f.done.Store(true)
	return nil, ctx.Err()
}

func (f *fakeStore) Instances(context.Context, string) ([]store.Instance, error) { return nil, nil }

func (f *fakeStore) Decisions(context.Context, string, time.Time, int) ([]store.Decision, error) {
	return nil, nil
}

// fakeDocker's List blocks until its context ends, then takes a while more.
type fakeDocker struct {
	entered chan struct{}
	once    sync.Once
	done    atomic.Bool
}

func (f *fakeDocker) List(ctx context.Context) ([]docker.Container, error) {
	f.once.Do(func() { close(f.entered) })
	<-ctx.Done()
	time.Sleep(300 * time.Millisecond) // the behaviour under test: a call that outlives the cancel
	f.done.Store(true)
	return nil, ctx.Err()
}

func (f *fakeDocker) Stats(context.Context, []string, int) (map[string]docker.Reading, error) {
	return nil, nil
}

// fakeWriter counts transactions; fn is not run (there is no database).
type fakeWriter struct{ txs atomic.Int32 }

func (f *fakeWriter) Tx(context.Context, store.Lease, func(context.Context, *store.Tx) error) error {
	f.txs.Add(1)
	return nil
}

// countingBus is a real connection that counts the messages its
// subscriptions deliver.
type countingBus struct {
	*bus.Conn
	delivered atomic.Int32
}

func (b *countingBus) Subscribe(subject string, h bus.MsgHandler) (*bus.Subscription, error) {
	return b.Conn.Subscribe(subject, func(subject string, data []byte) {
		b.delivered.Add(1)
		h(subject, data)
	})
}

var (
	_ Store  = (*fakeStore)(nil)
	_ Docker = (*fakeDocker)(nil)
	_ Writer = (*fakeWriter)(nil)
	_ Bus    = (*countingBus)(nil)
)

func connect(t *testing.T) *bus.Conn {
	t.Helper()
	srv, err := bus.Embedded(bus.EmbeddedOptions{Port: -1, StoreDir: t.TempDir()}, zaptest.NewLogger(t))
	require.NoError(t, err)
	t.Cleanup(srv.Shutdown)
	c, err := bus.Connect(context.Background(), bus.Options{URL: srv.URL(), Name: t.Name()}, zaptest.NewLogger(t))
	require.NoError(t, err)
	t.Cleanup(c.Close)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	require.NoError(t, c.WaitConnected(ctx))
	return c
}

func autoscaledApp(t *testing.T, yaml string, desired int) store.App {
	t.Helper()
	a, err := spec.Load([]byte(yaml))
	require.NoError(t, err)
	return store.App{Name: a.Name, Spec: a, Generation: 1, DesiredReplicas: desired}
}

func leading(term uint64) func() (store.Lease, bool) {
	return func() (store.Lease, bool) { return store.Lease{Term: term}, true }
}

// TestRunJoinsItsGoroutines: Run (every replica) and Lead (the leader)
// each return only once every goroutine they started has.
func TestRunJoinsItsGoroutines(t *testing.T) {
	t.Parallel()
	names, err := msg.NewNames("berth")
	require.NoError(t, err)
	conn := &countingBus{Conn: connect(t)}
	app := autoscaledApp(t, "name: web\nimage: web:1\nport: 80\nscaling: {min: 1, max: 4, target_cpu_percent: 60}\n", 1)
	st := &fakeStore{apps: []store.App{app}, block: true, entered: make(chan struct{})}
	dk := &fakeDocker{entered: make(chan struct{})}
	s := New(Config{Interval: 20 * time.Millisecond, StatsInterval: 20 * time.Millisecond, StatsParallel: 2, DefaultCPU: 1},
		st, dk, conn, &fakeWriter{}, names, leading(1), func() {}, zaptest.NewLogger(t))

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	returned := make(chan struct{})
	var runErr, leadErr error
	go func() {
		var wg sync.WaitGroup
		wg.Go(func() { runErr = s.Run(ctx) })
		wg.Go(func() { leadErr = s.Lead(ctx) })
		wg.Wait()
		close(returned)
	}()

	// Both loops are in a call that outlives the cancel by a moment.
	for _, entered := range []chan struct{}{st.entered, dk.entered} {
		select {
		case <-entered:
		case <-time.After(5 * time.Second):
			t.Fatal("a loop never reached its blocking call")
		}
	}
	// A sample handler is in flight: it waits for the intake held here.
	s.intake.mu.Lock()
	usage, err := msg.Encode(&msg.Usage{App: "web", Term: 1, At: time.Now().UTC(), Instances: []msg.InstanceUsage{{Instance: "a1", CPUPercent: 50}}})
	require.NoError(t, err)
	require.NoError(t, conn.Publish(ctx, names.UsageSubject("web"), usage))
	require.Eventually(t, func() bool {
		if s.gate.TryLock() {
			s.gate.Unlock()
			return false
		}
		return true // the handler holds the gate
	}, 5*time.Second, time.Millisecond)

	cancel()
	select {
	case <-returned:
		t.Fatal("Run returned while a sample handler was in flight")
	case <-time.After(100 * time.Millisecond):
	}
	s.intake.mu.Unlock()
	select {
	case <-returned:
	case <-time.After(5 * time.Second):
		t.Fatal("Run did not return after ctx ended")
	}
	require.True(t, st.done.Load(), "the policy or decision loop's call returned before Run or Lead")
	require.True(t, dk.done.Load(), "the stats loop's call returned before Lead")
	require.NoError(t, runErr)
	require.NoError(t, leadErr)

	// Drained: nothing is delivered any more. A marker published after
	// the sample reaches this connection after it, so once the marker is
	// handled the sample was either dropped or queued to the handler.
	delivered := conn.delivered.Load()
	marker := make(chan struct{}, 1)
	_, err = conn.Conn.Subscribe("test.marker", func(string, []byte) { marker <- struct{}{} })
	require.NoError(t, err)
	fctx, fcancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer fcancel()
	require.NoError(t, conn.Flush(fctx)) // the marker's subscription is in place
	require.NoError(t, conn.Publish(context.Background(), names.UsageSubject("web"), usage))
	require.NoError(t, conn.Publish(context.Background(), "test.marker", []byte("x")))
	select {
	case <-marker:
	case <-time.After(5 * time.Second):
		t.Fatal("the marker never arrived")
	}
	require.Equal(t, delivered, conn.delivered.Load())
}

func TestRunReturnsWhenOff(t *testing.T) {
	t.Parallel()
	s := New(Config{}, &fakeStore{}, &fakeDocker{}, nil, &fakeWriter{}, msg.Names{}, leading(1), func() {}, zaptest.NewLogger(t))
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	require.NoError(t, s.Run(ctx))
	require.NoError(t, s.Lead(ctx))
}

func TestScaleRound(t *testing.T) {
	t.Parallel()
	const yaml = "name: web\nimage: web:1\nport: 80\nscaling: {min: 3, max: 6, target_rps_per_replica: 100}\n"
	tests := []struct {
		name    string
		desired int
		lease   func() (store.Lease, bool)
		wakes   int32
		changes float64
		txs     int32 // a change's own; the holds and the first prune together
	}{
		{name: "below min scales up and wakes the controller", desired: 1, lease: leading(1), wakes: 1, changes: 1, txs: 2},
		{name: "within bounds holds", desired: 3, lease: leading(1), txs: 1},
		{name: "follower decides nothing", desired: 1, lease: func() (store.Lease, bool) { return store.Lease{}, false }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			st := &fakeStore{apps: []store.App{autoscaledApp(t, yaml, tt.desired)}}
			w := &fakeWriter{}
			var wakes atomic.Int32
			s := New(Config{Interval: time.Second, DefaultCPU: 1}, st, &fakeDocker{}, nil, w, msg.Names{}, tt.lease, func() { wakes.Add(1) }, zaptest.NewLogger(t))
			require.NoError(t, s.scaleRound(context.Background(), time.Now()))
			require.Equal(t, tt.wakes, wakes.Load())
			require.Equal(t, tt.txs, w.txs.Load())
			require.Equal(t, tt.changes, counterValue(t, s.metrics.changes.WithLabelValues("up")))

			// Every replica keeps the policy for the API, leading or not.
			_, _, p, ok := s.Samples("web", time.Now())
			require.True(t, ok)
			require.Equal(t, 3, p.Min)
			_, _, _, ok = s.Samples("other", time.Now())
			require.False(t, ok)
		})
	}
}

func counterValue(t *testing.T, c prometheus.Counter) float64 {
	t.Helper()
	var m dto.Metric
	require.NoError(t, c.Write(&m))
	return m.GetCounter().GetValue()
}
