package publish

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sort"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.uber.org/zap/zaptest"

	"github.com/berthhq/berth/common/bus"
	"github.com/berthhq/berth/common/msg"
	"github.com/berthhq/berth/common/spec"
	"github.com/berthhq/berth/internal/testrig"
	"github.com/berthhq/berth/scheduler/internal/store"
)

func TestMain(m *testing.M) { testrig.Main(m) }

// rig is a publisher on a throwaway Postgres and an in-process NATS with
// no buckets yet (as after a wipe), leading under a lease.
type rig struct {
	st    *store.Store
	conn  *bus.Conn
	pub   *Publisher
	names msg.Names
	lease store.Lease
}

func newRig(t *testing.T) *rig {
	t.Helper()
	conn, err := bus.Connect(context.Background(), bus.Options{URL: testrig.NATS(t), Name: t.Name()}, zaptest.NewLogger(t))
	require.NoError(t, err)
	t.Cleanup(conn.Close)
	return newRigOn(t, conn)
}

// newRigOn is newRig over a connection of the caller's.
func newRigOn(t *testing.T, conn *bus.Conn) *rig {
	t.Helper()
	ctx := context.Background()
	st, err := store.Open(ctx, testrig.Postgres(t))
	require.NoError(t, err)
	t.Cleanup(st.Close)
	_, err = st.Migrate(ctx)
	require.NoError(t, err)
	l, ok, err := st.Acquire(ctx, "test", "me", time.Minute)
	require.NoError(t, err)
	require.True(t, ok)
	names, _ := msg.NewNames("berth")
	return &rig{st: st, conn: conn, pub: New(st, conn, names, zaptest.NewLogger(t)), names: names, lease: l}
}

func (r *rig) apply(t *testing.T, name string) store.App {
	t.Helper()
	s, err := spec.Load([]byte("name: " + name + "\nimage: demo:v1\nport: 8080\nreplicas: 1\n"))
	require.NoError(t, err)
	a, _, err := r.st.Apply(context.Background(), s, nil)
	require.NoError(t, err)
	return a
}

// keys returns a bucket's keys, sorted.
func (r *rig) keys(t *testing.T, bucket string) []string {
	t.Helper()
	kv, err := r.conn.KV(context.Background(), bucket)
	require.NoError(t, err)
	keys, err := kv.Keys(context.Background())
	require.NoError(t, err)
	sort.Strings(keys)
	return keys
}

func (r *rig) instance(t *testing.T, app, id string) *msg.Instance {
	t.Helper()
	kv, err := r.conn.KV(context.Background(), r.names.InstancesBucket())
	require.NoError(t, err)
	e, err := kv.Get(context.Background(), msg.InstanceKey(app, id))
	if errors.Is(err, bus.ErrKeyNotFound) {
		return nil
	}
	require.NoError(t, err)
	m, err := msg.DecodeAs[*msg.Instance](e.Value)
	require.NoError(t, err)
	return m
}

func running(app, id string) store.Instance {
	now := time.Now()
	return store.Instance{ID: id, App: app, Generation: 1, ContainerID: "0123456789ab" + fmt.Sprintf("%04x", len(id)), Address: "127.0.0.1:30000", State: msg.StateRunning,
		Health: msg.StatusUnknown, SpecHash: "h", StartedAt: &now}
}

// events collects the events published on the events subjects.
func (r *rig) events(t *testing.T) func() []msg.Event {
	t.Helper()
	var mu sync.Mutex
	var got []msg.Event
	sub, err := r.conn.Subscribe(r.names.AllEvents(), func(_ string, data []byte) {
		e, err := msg.DecodeAs[*msg.Event](data)
		require.NoError(t, err)
		mu.Lock()
		got = append(got, *e)
		mu.Unlock()
	})
	require.NoError(t, err)
	t.Cleanup(func() { _ = sub.Drain() })
	return func() []msg.Event {
		fctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		require.NoError(t, r.conn.Flush(fctx))
		mu.Lock()
		defer mu.Unlock()
		return append([]msg.Event(nil), got...)
	}
}

// A NATS that comes back empty is whole again after one All: the buckets
// are created, every app and every routable instance is put, and keys no
// record owns are deleted.
func TestAllRepublishesAppsAndInstancesAndSweeps(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	r := newRig(t)
	r.apply(t, "web")
	r.apply(t, "api")
	require.NoError(t, r.pub.Put(ctx, r.lease, running("web", "a")))
	require.NoError(t, r.pub.Put(ctx, r.lease, running("api", "b")))
	creating := store.Instance{ID: "c", App: "web", Generation: 1, State: msg.StateCreating, Health: msg.StatusUnknown, SpecHash: "h"}
	require.NoError(t, r.pub.Put(ctx, r.lease, creating))
	bad := running("web", "bad")
	bad.Address = "not an address"
	require.NoError(t, r.pub.Tx(ctx, r.lease, func(ctx context.Context, tx *store.Tx) error { return tx.PutInstance(ctx, bad) }))

	// Strays: an app and an instance no record owns.
	apps, err := r.conn.KV(ctx, r.names.AppsBucket())
	require.NoError(t, err)
	_, err = apps.Put(ctx, "ghost", []byte(`{}`))
	require.NoError(t, err)
	inst, err := r.conn.KV(ctx, r.names.InstancesBucket())
	require.NoError(t, err)
	_, err = inst.Put(ctx, msg.InstanceKey("web", "zombie"), []byte(`{}`))
	require.NoError(t, err)

	require.NoError(t, r.pub.All(ctx, r.lease.Term))
	require.Equal(t, []string{"api", "web"}, r.keys(t, r.names.AppsBucket()))
	require.Equal(t, []string{msg.InstanceKey("api", "b"), msg.InstanceKey("web", "a")}, r.keys(t, r.names.InstancesBucket()),
		"a creating instance has no address yet: not published; a record the contract refuses is skipped, not fatal")
	got := r.instance(t, "web", "a")
	require.Equal(t, r.lease.Term, got.Term)
	require.Equal(t, "127.0.0.1:30000", got.Address)
	require.Equal(t, msg.StateRunning, got.State)
}

// A spec stored before the grammar refused backtracking regexes neither
// reaches NATS with them nor stops the republish: its other routes are
// published, and an app left with no route at all is skipped, not fatal.
func TestAllPublishesAroundRefusedRegexes(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	r := newRig(t)
	stored := func(name string, paths []string, rules ...spec.Rule) {
		t.Helper()
		s, err := spec.Load([]byte("name: " + name + "\nimage: demo:v1\nport: 8080\nreplicas: 1\n"))
		require.NoError(t, err)
		s.Routing.Paths, s.Routing.Rules = paths, rules
		_, _, err = r.st.Apply(ctx, s, nil)
		require.NoError(t, err)
	}
	stall := spec.Rule{Path: `^/(\w+)+$`, Match: spec.MatchRegex}
	stored("alpha", nil, stall) // nothing left to route
	stored("beta", []string{"/"}, stall, spec.Rule{Path: "/ok", Match: spec.MatchExact})
	r.apply(t, "web")
	require.NoError(t, r.pub.Tx(ctx, r.lease, func(ctx context.Context, tx *store.Tx) error { return tx.PutInstance(ctx, running("web", "a")) }))

	require.NoError(t, r.pub.All(ctx, r.lease.Term))
	require.Equal(t, []string{"beta", "web"}, r.keys(t, r.names.AppsBucket()))
	require.Equal(t, []string{msg.InstanceKey("web", "a")}, r.keys(t, r.names.InstancesBucket()))
	kv, err := r.conn.KV(ctx, r.names.AppsBucket())
	require.NoError(t, err)
	e, err := kv.Get(ctx, "beta")
	require.NoError(t, err)
	beta, err := msg.DecodeAs[*msg.App](e.Value)
	require.NoError(t, err)
	require.Equal(t, []spec.Rule{{Path: "/ok", Match: spec.MatchExact}}, beta.Routing.Rules)
}

// A fresh NATS (the buckets do not exist): All creates them.
func TestAllCreatesMissingBuckets(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	r := newRig(t)
	r.apply(t, "web")
	require.NoError(t, r.pub.Tx(ctx, r.lease, func(ctx context.Context, tx *store.Tx) error { return tx.PutInstance(ctx, running("web", "a")) }))
	_, err := r.conn.KV(ctx, r.names.InstancesBucket())
	require.ErrorIs(t, err, bus.ErrBucketNotFound)
	require.NoError(t, r.pub.All(ctx, r.lease.Term))
	require.Equal(t, []string{msg.InstanceKey("web", "a")}, r.keys(t, r.names.InstancesBucket()))
	require.Equal(t, []string{"web"}, r.keys(t, r.names.AppsBucket()))
}

// An event is published once its transaction commits, with the id
// Postgres gave it; a transaction that fails, or a deposed leader's,
// publishes nothing.
func TestEventsArePublishedAfterCommitOnly(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	r := newRig(t)
	events := r.events(t)
	r.apply(t, "web")

	require.NoError(t, r.pub.Put(ctx, r.lease, running("web", "a"), store.Event{App: "web", Instance: "a", Kind: msg.EventInstanceStarted, Message: "started"}))
	boom := errors.New("boom")
	err := r.pub.Tx(ctx, r.lease, func(ctx context.Context, tx *store.Tx) error {
		if _, err := tx.AddEvent(ctx, store.Event{App: "web", Kind: "never", Message: "rolled back"}); err != nil {
			return err
		}
		return boom
	})
	require.ErrorIs(t, err, boom)
	deposed := r.lease
	deposed.Term++
	require.ErrorIs(t, r.pub.Event(ctx, deposed, store.Event{App: "web", Kind: "never", Message: "not leader"}), store.ErrNotLeader)

	require.Eventually(t, func() bool { return len(events()) >= 1 }, 2*time.Second, 10*time.Millisecond)
	got := events()
	require.Len(t, got, 1)
	require.Equal(t, msg.EventInstanceStarted, got[0].Kind)
	stored, err := r.st.Events(ctx, "web", 0, 10)
	require.NoError(t, err)
	require.Len(t, stored, 1)
	require.Equal(t, stored[0].Kind, got[0].Kind)
	require.NotEmpty(t, got[0].ID)
	require.Equal(t, r.lease.Term, got[0].Term)
}

// A dead container's instance stays failed across republishes until its
// record is deleted; Delete removes the key.
func TestFailedSurvivesAllUntilDeleted(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	r := newRig(t)
	r.apply(t, "web")
	rec := running("web", "a")
	require.NoError(t, r.pub.Put(ctx, r.lease, rec))
	before := r.pub.Revision("web", "a")
	require.NotZero(t, before)
	require.NoError(t, r.pub.Fail(ctx, r.lease, rec))
	require.Greater(t, r.pub.Revision("web", "a"), before, "the revision follows the last put")
	require.NoError(t, r.pub.All(ctx, r.lease.Term))
	require.Equal(t, msg.StateFailed, r.instance(t, "web", "a").State, "Postgres still says running; the event wins")

	require.NoError(t, r.pub.Delete(ctx, r.lease, rec, store.Event{App: "web", Instance: "a", Kind: msg.EventInstanceReplaced, Message: "replaced"}))
	require.Nil(t, r.instance(t, "web", "a"))
	require.Zero(t, r.pub.Revision("web", "a"))
	require.NoError(t, r.pub.All(ctx, r.lease.Term))
	require.Nil(t, r.instance(t, "web", "a"))
}

// A republish racing an instance's deletion never puts it back.
func TestAllNeverResurrectsADeletedInstance(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	r := newRig(t)
	r.apply(t, "web")
	for i := range 20 {
		id := "i" + string(rune('a'+i))
		rec := running("web", id)
		require.NoError(t, r.pub.Put(ctx, r.lease, rec))
		var wg sync.WaitGroup
		wg.Go(func() { require.NoError(t, r.pub.All(ctx, r.lease.Term)) })
		wg.Go(func() { require.NoError(t, r.pub.Delete(ctx, r.lease, rec)) })
		wg.Wait()
		require.Nil(t, r.instance(t, "web", id), "iteration %d", i)
	}
}

// One app: put with its event, or deleted with app_deleted once; each
// event names the token that made the change.
func TestOnePutsOrDeletesAnApp(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	r := newRig(t)
	events := r.events(t)
	s, err := spec.Load([]byte("name: web\nimage: demo:v1\nport: 8080\nreplicas: 1\n"))
	require.NoError(t, err)
	_, _, err = r.st.Apply(store.WithActor(ctx, "alice"), s, nil)
	require.NoError(t, err)
	require.NoError(t, r.pub.One(ctx, "web", r.lease))
	require.Equal(t, []string{"web"}, r.keys(t, r.names.AppsBucket()))
	require.NoError(t, r.st.Delete(store.WithActor(ctx, "bob"), "web"))
	require.NoError(t, r.pub.One(ctx, "web", r.lease))
	require.NoError(t, r.pub.One(ctx, "web", r.lease), "a second notification of the same delete")
	require.Empty(t, r.keys(t, r.names.AppsBucket()))
	require.Eventually(t, func() bool { return len(events()) == 2 }, 2*time.Second, 10*time.Millisecond)
	kinds := []msg.EventKind{events()[0].Kind, events()[1].Kind}
	require.Equal(t, []msg.EventKind{msg.EventAppUpdated, msg.EventAppDeleted}, kinds)
	require.Equal(t, []string{"alice", "bob"}, []string{events()[0].Actor, events()[1].Actor})
}

// TestResyncPutsOnlyWhatChanged: the periodic pass puts an instance whose
// record changed, one whose key the bucket lost, and one someone else
// wrote over, plus the keys whose re-seal turn it is; nothing else. Over
// resealEvery passes every key is put again at least once.
func TestResyncPutsOnlyWhatChanged(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	r := newRig(t)
	r.apply(t, "web")
	var ids []string
	for i := range 30 {
		id := fmt.Sprintf("i%02d", i)
		ids = append(ids, id)
		require.NoError(t, r.pub.Tx(ctx, r.lease, func(ctx context.Context, tx *store.Tx) error { return tx.PutInstance(ctx, running("web", id)) }))
	}
	require.NoError(t, r.pub.All(ctx, r.lease.Term))
	kv, err := r.conn.KV(ctx, r.names.InstancesBucket())
	require.NoError(t, err)
	revs := func() map[string]uint64 {
		out := map[string]uint64{}
		for _, id := range ids {
			e, err := kv.Get(ctx, msg.InstanceKey("web", id))
			if err == nil {
				out[id] = e.Revision
			}
		}
		return out
	}
	before := revs()
	require.Len(t, before, 30)

	changed := running("web", "i00")
	changed.State = msg.StateDraining
	require.NoError(t, r.pub.Tx(ctx, r.lease, func(ctx context.Context, tx *store.Tx) error { return tx.PutInstance(ctx, changed) }))
	require.NoError(t, kv.Delete(ctx, msg.InstanceKey("web", "i01")))
	_, err = kv.Put(ctx, msg.InstanceKey("web", "i02"), []byte(`{"someone":"else"}`))
	require.NoError(t, err)

	turn := r.pub.passes.Load() + 1
	require.NoError(t, r.pub.Resync(ctx, r.lease.Term))
	after := revs()
	for _, id := range ids {
		key := msg.InstanceKey("web", id)
		want := id == "i00" || id == "i01" || id == "i02" || bus.ResealDue(key, turn, resealEvery)
		require.Equal(t, want, after[id] != before[id], "%s put again", id)
	}
	require.Equal(t, msg.StateDraining, r.instance(t, "web", "i00").State)
	require.Equal(t, "127.0.0.1:30000", r.instance(t, "web", "i02").Address)

	// An app is put again when its view changes, not otherwise.
	apps, err := r.conn.KV(ctx, r.names.AppsBucket())
	require.NoError(t, err)
	appRev := func() uint64 {
		e, err := apps.Get(ctx, "web")
		require.NoError(t, err)
		return e.Revision
	}
	was := appRev()
	for bus.ResealDue("web", r.pub.passes.Load()+1, resealEvery) {
		require.NoError(t, r.pub.Resync(ctx, r.lease.Term))
		was = appRev()
	}
	require.NoError(t, r.pub.Resync(ctx, r.lease.Term))
	require.Equal(t, was, appRev(), "an unchanged app is not put again")
	s2, err := spec.Load([]byte("name: web\nimage: demo:v2\nport: 8080\nreplicas: 1\n"))
	require.NoError(t, err)
	_, _, err = r.st.Apply(ctx, s2, nil)
	require.NoError(t, err)
	require.NoError(t, r.pub.Resync(ctx, r.lease.Term))
	require.Greater(t, appRev(), was, "a changed app is")

	after = revs()
	for range resealEvery {
		require.NoError(t, r.pub.Resync(ctx, r.lease.Term))
	}
	last := revs()
	for _, id := range ids {
		require.Greater(t, last[id], after[id], "%s sealed again within %d resyncs", id, resealEvery)
	}
}

// flakyBus is a connection whose buckets cannot be opened while down, as
// a NATS cluster's bucket refuses requests while its stream elects a
// leader.
type flakyBus struct {
	*bus.Conn
	down atomic.Bool
}

func (f *flakyBus) KV(ctx context.Context, bucket string) (*bus.KV, error) {
	if f.down.Load() {
		return nil, fmt.Errorf("open bucket %s: %w", bucket, context.DeadlineExceeded)
	}
	return f.Conn.KV(ctx, bucket)
}

// TestLoopRetriesWhatFailedSoon: a publish that fails (the first pass
// on gaining leadership, of one changed app, or the controller's write of
// one instance) is done again after a backoff, long before the next
// resync.
func TestLoopRetriesWhatFailedSoon(t *testing.T) {
	t.Parallel()
	for _, tt := range []struct {
		name      string
		startDown bool // the bucket refuses from the start: the first pass fails
		send      func(t *testing.T, r *rig, pub *Publisher, changes chan string)
		bucket    func(msg.Names) string
		want      string // the key that is put once the bucket takes writes
	}{
		{"every app on gaining leadership", true, func(*testing.T, *rig, *Publisher, chan string) {}, msg.Names.AppsBucket, "web"},
		{"one changed app", false, func(_ *testing.T, _ *rig, _ *Publisher, changes chan string) { changes <- "web" }, msg.Names.AppsBucket, "web"},
		{"an instance the controller started", false, func(t *testing.T, r *rig, pub *Publisher, _ chan string) {
			require.ErrorContains(t, pub.Put(context.Background(), r.lease, running("web", "a")), "publish instance web/a")
		}, msg.Names.InstancesBucket, "web.a"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			r := newRig(t)
			flaky := &flakyBus{Conn: r.conn}
			pub := New(r.st, flaky, r.names, zaptest.NewLogger(t))
			require.NoError(t, r.conn.EnsureBuckets(context.Background(), bus.MustOwnedBuckets(r.names, bus.RoleScheduler)))
			if tt.startDown {
				flaky.down.Store(true)
				r.apply(t, "web")
			} else {
				r.apply(t, "first")
				// An instance only Postgres has: the first pass puts it once it
				// has listed the instances, so seeing it means the pass can no
				// longer pick up what the test writes next.
				require.NoError(t, r.st.LeaderTx(context.Background(), r.lease, func(ctx context.Context, tx *store.Tx) error {
					return tx.PutInstance(ctx, running("first", "x"))
				}))
			}
			ctx, cancel := context.WithCancel(context.Background())
			changes := make(chan string)
			done := make(chan error, 1)
			go func() {
				done <- pub.Loop(ctx, func() (store.Lease, bool) { return r.lease, true }, nil, changes, time.Hour)
			}()
			t.Cleanup(func() { cancel(); require.NoError(t, <-done) })
			if !tt.startDown {
				require.Eventually(t, func() bool {
					return slices.Contains(r.keys(t, r.names.AppsBucket()), "first") && slices.Contains(r.keys(t, r.names.InstancesBucket()), "first.x")
				}, 10*time.Second, 10*time.Millisecond, "everything is published on starting")
				flaky.down.Store(true)
				r.apply(t, "web")
			}
			tt.send(t, r, pub, changes)
			require.NotContains(t, r.keys(t, tt.bucket(r.names)), tt.want, "nothing is put while the bucket refuses")
			flaky.down.Store(false)
			require.Eventually(t, func() bool { return slices.Contains(r.keys(t, tt.bucket(r.names)), tt.want) }, 10*time.Second, 10*time.Millisecond,
				"the failed publish is done again within its backoff, not at the resync an hour away")
		})
	}
}
