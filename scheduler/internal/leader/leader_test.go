package leader

import (
	"context"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/berthhq/berth/internal/testrig"
	"github.com/berthhq/berth/scheduler/internal/store"
	"github.com/stretchr/testify/require"
	"go.uber.org/zap/zaptest"
)

func TestMain(m *testing.M) { testrig.Main(m) }

func openStore(t *testing.T) *store.Store {
	t.Helper()
	s, err := store.Open(context.Background(), testrig.Postgres(t))
	require.NoError(t, err)
	t.Cleanup(s.Close)
	_, err = s.Migrate(context.Background())
	require.NoError(t, err)
	return s
}

// candidate is an elector running with a listener that wakes it on NOTIFY.
type candidate struct {
	e    *Elector
	stop func()
	// listening is closed once the listener's LISTEN is in place.
	listening chan struct{}
	// tries counts the elector's finished Acquire calls.
	tries  *countingLessor
	mu     sync.Mutex
	gained time.Time
}

// countingLessor counts the Acquire calls that have returned.
type countingLessor struct {
	*store.Store
	n atomic.Int64
}

func (c *countingLessor) Acquire(ctx context.Context, name, holder string, ttl time.Duration) (store.Lease, bool, error) {
	defer c.n.Add(1)
	return c.Store.Acquire(ctx, name, holder, ttl)
}

func (c *candidate) gainedAt() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.gained
}

func start(t *testing.T, s *store.Store, holder string, ttl time.Duration, resign bool) *candidate {
	t.Helper()
	tries := &countingLessor{Store: s}
	c := &candidate{e: New(tries, "scheduler", holder, ttl, zaptest.NewLogger(t)), listening: make(chan struct{}), tries: tries}
	c.e.ResignOnStop = resign
	c.e.OnChange = func(_ store.Lease, ok bool) {
		if ok {
			c.mu.Lock()
			c.gained = time.Now()
			c.mu.Unlock()
		}
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 2)
	go func() { done <- c.e.Run(ctx) }()
	var listening sync.Once
	go func() {
		done <- s.ListenReady(ctx, []string{store.LeaseChannel}, func() { listening.Do(func() { close(c.listening) }) },
			func(string, string) { c.e.Wake() })
	}()
	var once sync.Once
	c.stop = func() {
		once.Do(func() {
			cancel()
			require.NoError(t, <-done)
			require.NoError(t, <-done)
		})
	}
	t.Cleanup(c.stop)
	return c
}

func leaderOf(cs ...*candidate) *candidate {
	for _, c := range cs {
		if _, ok := c.e.Leader(); ok {
			return c
		}
	}
	return nil
}

func TestCleanStopHandsOverInUnderASecond(t *testing.T) {
	t.Parallel()
	s := openStore(t)
	ttl := 10 * time.Second
	a := start(t, s, "a", ttl, true)
	b := start(t, s, "b", ttl, true)
	require.Eventually(t, func() bool { return leaderOf(a, b) != nil }, 5*time.Second, 10*time.Millisecond)
	for _, c := range []*candidate{a, b} {
		select {
		case <-c.listening:
		case <-time.After(5 * time.Second):
			t.Fatal("a candidate never LISTENed")
		}
	}
	first := leaderOf(a, b)
	other := b
	if first == b {
		other = a
	}
	firstLease, _ := first.e.Leader()

	stopped := time.Now()
	first.stop() // SIGTERM: resign and NOTIFY
	require.Eventually(t, func() bool { _, ok := other.e.Leader(); return ok }, time.Second, 5*time.Millisecond,
		"a follower takes over within a second of a clean stop")
	took := other.gainedAt().Sub(stopped)
	t.Logf("clean-stop failover: %s", took.Round(time.Millisecond))
	require.Less(t, took, time.Second)
	otherLease, _ := other.e.Leader()
	require.Equal(t, firstLease.Term+1, otherLease.Term)

	// The old leader's lease can no longer write.
	require.ErrorIs(t, s.LeaderTx(context.Background(), firstLease, func(context.Context, *store.Tx) error { return nil }), store.ErrNotLeader)
}

func TestCrashIsTakenOverWithinTTLPlusARenewal(t *testing.T) {
	t.Parallel()
	s := openStore(t)
	ttl := 1500 * time.Millisecond
	a := start(t, s, "a", ttl, false) // a's stop will look like a crash
	require.Eventually(t, func() bool { _, ok := a.e.Leader(); return ok }, 5*time.Second, 10*time.Millisecond)
	b := start(t, s, "b", ttl, true)
	require.Eventually(t, func() bool { return b.tries.n.Load() >= 1 }, 5*time.Second, 5*time.Millisecond, "b tries to acquire")
	require.Nil(t, leaderOf(b), "one leader at a time")

	crashed := time.Now()
	a.stop()
	require.Eventually(t, func() bool { _, ok := b.e.Leader(); return ok }, ttl+ttl/3+time.Second, 10*time.Millisecond)
	took := b.gainedAt().Sub(crashed)
	t.Logf("crash failover: %s (TTL %s, renew period %s)", took.Round(time.Millisecond), ttl, ttl/3)
	require.LessOrEqual(t, took, ttl+ttl/3+200*time.Millisecond)
}

// failing fails every Acquire after the first, like a database that went away.
type failing struct {
	*store.Store
	mu    sync.Mutex
	calls int
}

func (f *failing) Acquire(ctx context.Context, name, holder string, ttl time.Duration) (store.Lease, bool, error) {
	f.mu.Lock()
	f.calls++
	n := f.calls
	f.mu.Unlock()
	if n > 1 {
		return store.Lease{}, false, context.DeadlineExceeded
	}
	return f.Store.Acquire(ctx, name, holder, ttl)
}

func TestLeaderThatCannotRenewStopsActingBeforeItsLeaseEnds(t *testing.T) {
	t.Parallel()
	s := openStore(t)
	ttl := 900 * time.Millisecond
	e := New(&failing{Store: s}, "scheduler", "a", ttl, zaptest.NewLogger(t))
	lost := make(chan time.Time, 1)
	e.OnChange = func(_ store.Lease, ok bool) {
		if !ok {
			lost <- time.Now()
		}
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	startAt := time.Now()
	go func() { _ = e.Run(ctx) }()
	require.Eventually(t, func() bool { _, ok := e.Leader(); return ok }, 5*time.Second, 5*time.Millisecond)
	select {
	case at := <-lost:
		require.LessOrEqual(t, at.Sub(startAt), ttl+100*time.Millisecond, "it stops acting by the time its lease runs out")
	case <-time.After(5 * time.Second):
		t.Fatal("a leader that cannot renew never stopped acting")
	}
	_, ok := e.Leader()
	require.False(t, ok)
}
