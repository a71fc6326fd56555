package publish

import (
	"context"
	"errors"
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

// TestGuardRepairsForgedKeys forges the last value of keys of both
// buckets, as the server itself can be made to (docs/nats.md, Sealed
// records): with the scheduler's credential but without its record keys,
// so nothing is sealed, it puts junk over a live instance, a deleted
// instance's key and a delete marker over an app, and copies an older
// sealed app value back. The guard writes each key again from Postgres,
// so that a reader starting afterwards finds only what the scheduler
// sealed, and the current version of each.
func TestGuardRepairsForgedKeys(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	names, _ := msg.NewNames("berth")
	url, seeds := testrig.NATSWithRoles(t, names)
	keys, err := bus.LoadKeys(seeds[bus.RoleScheduler])
	require.NoError(t, err)
	connect := func(k *bus.Keys) *bus.Conn {
		c, err := bus.Connect(ctx, bus.Options{URL: url, Name: t.Name(), NKeyFile: seeds[bus.RoleScheduler], Keys: k, Names: names}, zaptest.NewLogger(t))
		require.NoError(t, err)
		t.Cleanup(c.Close)
		return c
	}
	conn, forger := connect(keys), connect(nil)
	r := newRigOn(t, conn)
	st, l := r.st, r.lease
	r.apply(t, "web")
	require.NoError(t, r.pub.Put(ctx, l, running("web", "a")))
	require.NoError(t, r.pub.All(ctx, l.Term))
	apps, err := forger.KV(ctx, names.AppsBucket())
	require.NoError(t, err)
	old, err := apps.Get(ctx, "web") // forger verifies nothing: the sealed bytes as stored
	require.NoError(t, err)
	s2, err := spec.Load([]byte("name: web\nimage: demo:v2\nport: 8080\nreplicas: 1\n"))
	require.NoError(t, err)
	_, _, err = st.Apply(ctx, s2, nil) // generation 2
	require.NoError(t, err)
	require.NoError(t, r.pub.One(ctx, "web", l))
	r.apply(t, "api")
	require.NoError(t, r.pub.One(ctx, "api", l))

	gctx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() {
		done <- r.pub.Guard(gctx, func() (store.Lease, bool) { return l, true }, BusWatch(conn, zaptest.NewLogger(t)))
	}()
	t.Cleanup(func() { cancel(); require.NoError(t, <-done) })
	instances, err := forger.KV(ctx, names.InstancesBucket())
	require.NoError(t, err)
	// The guard's watches are up once it has deleted a forged key that
	// Postgres does not have from each bucket.
	for kv, key := range map[*bus.KV]string{apps: "probe", instances: "probe.p"} {
		_, err = kv.Put(ctx, key, []byte(`{"address":"169.254.169.254:80"}`))
		require.NoError(t, err)
		require.Eventually(t, func() bool {
			_, err := kv.Get(ctx, key)
			return errors.Is(err, bus.ErrKeyNotFound)
		}, 5*time.Second, 10*time.Millisecond, "the guard deletes %s from %s", key, kv.Bucket())
	}

	_, err = instances.Put(ctx, "web.a", []byte(`{"type":"berth.instance.v1","app":"web","id":"a","address":"169.254.169.254:80"}`))
	require.NoError(t, err)
	_, err = instances.Put(ctx, "web.ghost", []byte(`{"address":"169.254.169.254:80"}`))
	require.NoError(t, err)
	_, err = apps.Put(ctx, "web", old.Value) // an older sealed version, replayed
	require.NoError(t, err)
	require.NoError(t, apps.Delete(ctx, "api")) // an unsealed delete marker

	verified := func(bucket, key string) (bus.Entry, error) {
		kv, err := conn.KV(ctx, bucket)
		require.NoError(t, err)
		return kv.Get(ctx, key)
	}
	require.Eventually(t, func() bool {
		inst, err := verified(names.InstancesBucket(), "web.a")
		if err != nil {
			return false
		}
		m, err := msg.DecodeAs[*msg.Instance](inst.Value)
		if err != nil || m.Address != "127.0.0.1:30000" {
			return false
		}
		if _, err := verified(names.InstancesBucket(), "web.ghost"); !errors.Is(err, bus.ErrKeyNotFound) {
			return false
		}
		web, err := verified(names.AppsBucket(), "web")
		if err != nil {
			return false
		}
		a, err := msg.DecodeAs[*msg.App](web.Value)
		if err != nil || a.Generation != 2 {
			return false
		}
		_, err = verified(names.AppsBucket(), "api")
		return err == nil
	}, 5*time.Second, 20*time.Millisecond, "every forged key is written again from Postgres")
}
