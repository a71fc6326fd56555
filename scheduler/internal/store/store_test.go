package store

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/berthhq/berth/common/spec"
	"github.com/berthhq/berth/internal/testrig"
	"github.com/stretchr/testify/require"
)

func TestMain(m *testing.M) { testrig.Main(m) }

// open returns a store on a fresh, migrated database.
func open(t *testing.T) *Store {
	t.Helper()
	s, err := Open(context.Background(), testrig.Postgres(t))
	require.NoError(t, err)
	t.Cleanup(s.Close)
	_, err = s.Migrate(context.Background())
	require.NoError(t, err)
	return s
}

func TestMigrate(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s, err := Open(ctx, testrig.Postgres(t))
	require.NoError(t, err)
	defer s.Close()
	require.NoError(t, s.Ping(ctx))
	st, err := s.Status(ctx)
	require.NoError(t, err)
	require.Equal(t, SchemaStatus{Current: 0, Latest: 16}, st)
	require.ErrorIs(t, s.CheckSchema(ctx), ErrSchemaBehind)

	st, err = s.Migrate(ctx)
	require.NoError(t, err)
	require.Equal(t, SchemaStatus{Current: 16, Latest: 16}, st)
	st, err = s.Migrate(ctx)
	require.NoError(t, err, "migrating twice is a no-op")
	require.Equal(t, int32(16), st.Current)
	require.NoError(t, s.CheckSchema(ctx))
}

func TestLeaseTakeoverAndFencing(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s := open(t)
	a, ok, err := s.Acquire(ctx, "scheduler", "a", time.Minute)
	require.NoError(t, err)
	require.True(t, ok)
	require.Equal(t, Lease{Name: "scheduler", Holder: "a", Term: 1}, a)

	_, ok, err = s.Acquire(ctx, "scheduler", "b", time.Minute)
	require.NoError(t, err)
	require.False(t, ok, "an unexpired lease belongs to its holder")

	again, ok, err := s.Acquire(ctx, "scheduler", "a", time.Minute)
	require.NoError(t, err)
	require.True(t, ok)
	require.Equal(t, uint64(1), again.Term, "renewing keeps the term")

	// The leader writes under its term.
	require.NoError(t, s.LeaderTx(ctx, a, func(ctx context.Context, tx *Tx) error {
		_, err := tx.AddEvent(ctx, Event{App: "web", Kind: "leader_elected", Message: "a leads"})
		return err
	}))

	// a resigns; b takes over with a new term; a's writes now fail and leave nothing.
	require.NoError(t, s.Resign(ctx, a))
	b, ok, err := s.Acquire(ctx, "scheduler", "b", time.Minute)
	require.NoError(t, err)
	require.True(t, ok)
	require.Equal(t, uint64(2), b.Term)
	err = s.LeaderTx(ctx, a, func(ctx context.Context, tx *Tx) error {
		_, err := tx.AddEvent(ctx, Event{App: "web", Kind: "stale", Message: "deposed write"})
		return err
	})
	require.ErrorIs(t, err, ErrNotLeader)
	events, err := s.Events(ctx, "web", 0, 100)
	require.NoError(t, err)
	require.Len(t, events, 1, "the deposed leader's write was not committed")
	require.Equal(t, uint64(1), events[0].Term)

	holder, live, err := s.Holder(ctx, "scheduler")
	require.NoError(t, err)
	require.True(t, live)
	require.Equal(t, b, holder)
}

func TestLeaseExpires(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s := open(t)
	a, ok, err := s.Acquire(ctx, "scheduler", "a", 300*time.Millisecond)
	require.NoError(t, err)
	require.True(t, ok)
	expired(t, s, "scheduler")
	require.ErrorIs(t, s.LeaderTx(ctx, a, func(context.Context, *Tx) error { return nil }), ErrNotLeader,
		"an expired lease cannot write even before anyone takes over")
	b, ok, err := s.Acquire(ctx, "scheduler", "b", time.Minute)
	require.NoError(t, err)
	require.True(t, ok, "an expired lease can be taken")
	require.Equal(t, uint64(2), b.Term)

	// The same holder coming back after expiry gets a new term too.
	c, ok, err := s.Acquire(ctx, "other", "c", 100*time.Millisecond)
	require.NoError(t, err)
	require.True(t, ok)
	expired(t, s, "other")
	c2, ok, err := s.Acquire(ctx, "other", "c", time.Minute)
	require.NoError(t, err)
	require.True(t, ok)
	require.Equal(t, c.Term+1, c2.Term)
}

// expired waits until the lease name has run out by the database's clock.
func expired(t *testing.T, s *Store, name string) {
	t.Helper()
	require.Eventually(t, func() bool {
		_, live, err := s.Holder(context.Background(), name)
		return err == nil && !live
	}, 5*time.Second, 10*time.Millisecond, "lease %s expires", name)
}

func TestLeaderTxRollsBackOnError(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s := open(t)
	l, _, err := s.Acquire(ctx, "scheduler", "a", time.Minute)
	require.NoError(t, err)
	boom := errors.New("boom")
	err = s.LeaderTx(ctx, l, func(ctx context.Context, tx *Tx) error {
		if _, err := tx.AddEvent(ctx, Event{App: "web", Kind: "half", Message: "x"}); err != nil {
			return err
		}
		return boom
	})
	require.ErrorIs(t, err, boom)
	events, err := s.Events(ctx, "", 0, 10)
	require.NoError(t, err)
	require.Empty(t, events)
}

func TestListenSeesResign(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	s := open(t)
	got := make(chan string, 10)
	done := make(chan error, 1)
	go func() {
		done <- s.Listen(ctx, []string{LeaseChannel}, func(ch, payload string) { got <- ch + ":" + payload })
	}()
	l, _, err := s.Acquire(ctx, "scheduler", "a", time.Minute)
	require.NoError(t, err)
	// LISTEN may not be in place yet: resign until a notification arrives.
	require.Eventually(t, func() bool {
		select {
		case m := <-got:
			require.Equal(t, LeaseChannel+":scheduler", m)
			return true
		default:
		}
		l, _, _ = s.Acquire(ctx, "scheduler", "a", time.Minute)
		require.NoError(t, s.Resign(ctx, l))
		return false
	}, 10*time.Second, 50*time.Millisecond)
	cancel()
	require.NoError(t, <-done)
}

func TestRedact(t *testing.T) {
	t.Parallel()
	require.Equal(t, "postgres://berth:REDACTED@db:5432/berth?sslmode=disable", Redact("postgres://berth:s3cret@db:5432/berth?sslmode=disable"))
	require.Equal(t, "host=db user=berth password=REDACTED dbname=x", Redact("host=db user=berth password=s3cret dbname=x"))
	require.Equal(t, "postgres://berth@db/x", Redact("postgres://berth@db/x"))
	_, err := Open(context.Background(), "postgres://berth:hunter2@127.0.0.1:1/x?connect_timeout=1")
	if err == nil {
		s, _ := Open(context.Background(), "postgres://berth:hunter2@127.0.0.1:1/x?connect_timeout=1")
		err = s.Ping(context.Background())
		s.Close()
	}
	require.Error(t, err)
	require.NotContains(t, err.Error(), "hunter2")
}

// SetHealth tells every replica which apps' recorded health changed, once
// per app, as it commits; an unknown instance changes nothing.
func TestSetHealthNotifies(t *testing.T) {
	t.Parallel()
	s := open(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	for _, name := range []string{"web", "api"} {
		a, err := spec.Load([]byte("name: " + name + "\nimage: x:1\nport: 8080\n"))
		require.NoError(t, err)
		_, _, err = s.Apply(ctx, a, nil)
		require.NoError(t, err)
	}
	l, ok, err := s.Acquire(ctx, "scheduler", "a", time.Minute)
	require.NoError(t, err)
	require.True(t, ok)
	require.NoError(t, s.LeaderTx(ctx, l, func(ctx context.Context, tx *Tx) error {
		for _, id := range []string{"w1", "w2"} {
			if err := tx.PutInstance(ctx, Instance{ID: id, App: "web", Generation: 1, State: "running", Health: "unknown"}); err != nil {
				return err
			}
		}
		return tx.PutInstance(ctx, Instance{ID: "a1", App: "api", Generation: 1, State: "running", Health: "unknown"})
	}))
	got := make(chan string, 10)
	ready := make(chan struct{})
	done := make(chan error, 1)
	go func() {
		done <- s.ListenReady(ctx, []string{InstancesChannel}, func() { close(ready) }, func(_, payload string) { got <- payload })
	}()
	<-ready
	require.NoError(t, s.LeaderTx(ctx, l, func(ctx context.Context, tx *Tx) error {
		return tx.SetHealth(ctx, map[string]string{"w1": "healthy", "w2": "unhealthy", "gone": "healthy"})
	}))
	require.Equal(t, "web", <-got)
	require.NoError(t, s.LeaderTx(ctx, l, func(ctx context.Context, tx *Tx) error {
		return tx.SetHealth(ctx, map[string]string{"gone": "healthy"})
	}))
	require.NoError(t, s.LeaderTx(ctx, l, func(ctx context.Context, tx *Tx) error {
		return tx.SetHealth(ctx, map[string]string{"a1": "healthy"})
	}))
	require.Equal(t, "api", <-got, "web once, nothing for an unknown instance, then api")
	insts, err := s.Instances(ctx, "web")
	require.NoError(t, err)
	for _, i := range insts {
		require.Equal(t, map[string]string{"w1": "healthy", "w2": "unhealthy"}[i.ID], i.Health)
	}
	cancel()
	<-done
}
