package bus

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/require"
)

// TestBucketLimits: every contract bucket gets its MaxBytes and
// MaxConsumers; a larger cap an operator set is kept; a full bucket
// refuses a new key with ErrBucketFull, naming the bucket and what to do,
// and still takes a value no larger than the one it replaces.
func TestBucketLimits(t *testing.T) {
	t.Parallel()
	c := connect(t, startServer(t, -1, t.TempDir()).URL())
	ctx := ctxT(t)
	cfg := BucketConfig{Name: "t_small", MaxBytes: 4096, MaxConsumers: 2}
	require.NoError(t, c.EnsureBuckets(ctx, []BucketConfig{cfg}))
	kv, err := c.KV(ctx, "t_small")
	require.NoError(t, err)
	st, err := kv.Status(ctx)
	require.NoError(t, err)
	require.Equal(t, int64(4096), st.MaxBytes)
	require.Equal(t, 2, st.MaxConsumers)

	value := []byte(strings.Repeat("v", 500))
	var full error
	for i := range 20 {
		if _, err := kv.Put(ctx, fmt.Sprintf("k%02d", i), value); err != nil {
			full = err
			break
		}
	}
	require.ErrorIs(t, full, ErrBucketFull)
	require.ErrorContains(t, full, "t_small")
	require.ErrorContains(t, full, "nats stream edit KV_t_small --max-bytes")
	_, err = kv.Put(ctx, "k00", value)
	require.NoError(t, err, "a key written again with a value no larger still fits")

	// Watches beyond MaxConsumers are refused, saying so.
	v1, w1 := watchView(t, c, "t_small")
	settle(t, v1, w1)
	v2, w2 := watchView(t, c, "t_small")
	settle(t, v2, w2)
	_, third := watchView(t, c, "t_small")
	err = third.watchOnce(ctx, nil)
	require.ErrorContains(t, err, "nats stream edit KV_t_small --max-consumers")

	// An operator's larger caps survive the next start.
	js, err := jetstream.New(c.nc)
	require.NoError(t, err)
	s, err := js.Stream(ctx, "KV_t_small")
	require.NoError(t, err)
	sc := s.CachedInfo().Config
	sc.MaxBytes, sc.MaxConsumers = 1<<20, 10
	_, err = js.UpdateStream(ctx, sc)
	require.NoError(t, err)
	require.NoError(t, c.EnsureBuckets(ctx, []BucketConfig{cfg}))
	st, err = kv.Status(ctx)
	require.NoError(t, err)
	require.Equal(t, int64(1<<20), st.MaxBytes)
	require.Equal(t, 10, st.MaxConsumers)
}

// TestSweep deletes the keys keep refuses and purges delete markers older
// than the age given, and nothing else: not a value, not a newer marker,
// not a key written again after its marker.
func TestSweep(t *testing.T) {
	t.Parallel()
	env := startAuthServer(t, "acme")
	sched := env.sealedConn(t, RoleScheduler)
	ctx := ctxT(t)
	require.NoError(t, sched.EnsureBuckets(ctx, MustOwnedBuckets(env.n, RoleScheduler)))
	kv, err := sched.KV(ctx, env.n.InstancesBucket())
	require.NoError(t, err)
	for _, k := range []string{"web.keep", "web.stray", "web.old", "web.back"} {
		_, err := kv.Put(ctx, k, []byte(`{}`))
		require.NoError(t, err)
	}
	require.NoError(t, kv.Delete(ctx, "web.old"))
	require.NoError(t, kv.Delete(ctx, "web.back"))
	deleted, purged, err := kv.Sweep(ctx, func(k string, _ uint64) bool { return k != "web.stray" }, time.Hour)
	require.NoError(t, err)
	require.Equal(t, 1, deleted)
	require.Zero(t, purged, "no marker is an hour old")

	_, err = kv.Put(ctx, "web.back", []byte(`{"again":true}`))
	require.NoError(t, err)
	before, err := kv.Status(ctx)
	require.NoError(t, err)
	deleted, purged, err = kv.Sweep(ctx, func(string, uint64) bool { return true }, 0)
	require.NoError(t, err)
	require.Zero(t, deleted)
	require.Equal(t, 2, purged, "the markers of web.old and web.stray")
	after, err := kv.Status(ctx)
	require.NoError(t, err)
	require.Less(t, after.Bytes, before.Bytes)
	keys, err := kv.Keys(ctx)
	require.NoError(t, err)
	require.ElementsMatch(t, []string{"web.keep", "web.back"}, keys)
	e, err := kv.Get(ctx, "web.back")
	require.NoError(t, err)
	require.Equal(t, `{"again":true}`, string(e.Value))
	_, err = kv.Get(ctx, "web.old")
	require.ErrorIs(t, err, ErrKeyNotFound)
}
