package bus

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/berthhq/berth/common/msg"
	"github.com/stretchr/testify/require"
	"go.uber.org/zap/zaptest"
)

func startServer(t *testing.T, port int, dir string) *EmbeddedServer {
	t.Helper()
	s, err := Embedded(EmbeddedOptions{Port: port, StoreDir: dir}, zaptest.NewLogger(t))
	require.NoError(t, err)
	t.Cleanup(s.Shutdown)
	return s
}

func connect(t *testing.T, url string) *Conn {
	t.Helper()
	c, err := Connect(context.Background(), Options{URL: url, Name: t.Name(), ReconnectWait: 20 * time.Millisecond, ReconnectMax: 200 * time.Millisecond}, zaptest.NewLogger(t))
	require.NoError(t, err)
	t.Cleanup(c.Close)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	require.NoError(t, c.WaitConnected(ctx))
	return c
}

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func TestOptionsValidate(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		o    Options
		want string
	}{
		{name: "ok", o: Options{URL: "nats://127.0.0.1:4222"}},
		{name: "no url", o: Options{}, want: "nats url: must be set"},
		{name: "cert without key", o: Options{URL: "x", TLSCert: "c.pem"}, want: "nats tls: a client certificate and its key must be given together"},
		{name: "creds and nkey", o: Options{URL: "x", CredsFile: "a", NKeyFile: "b"}, want: "nats auth: use a creds file or an nkey file, not both"},
		{name: "negative", o: Options{URL: "x", ConnectTimeout: -1}, want: "nats timeouts: must not be negative"},
		{name: "cluster", o: Options{URL: "nats://n1:4222, nats://n2:4222,tls://n3", Replicas: 3}},
		{name: "no scheme, no port", o: Options{URL: "10.0.0.1,10.0.0.2:4333"}},
		{name: "empty member", o: Options{URL: "nats://n1:4222,,nats://n3:4222"}, want: "nats url 2 of 3: empty"},
		{name: "bad scheme", o: Options{URL: "nats://n1:4222,http://n2:4222"}, want: `nats url 2 of 2 (http://n2:4222): scheme "http"`},
		{name: "bad port", o: Options{URL: "nats://n1:99999"}, want: `port "99999": want 1-65535`},
		{name: "no host", o: Options{URL: "nats://:4222"}, want: "no host"},
		{name: "path", o: Options{URL: "nats://n1:4222/x"}, want: "no path, query or fragment"},
		{name: "twice", o: Options{URL: "nats://n1:4222,n1:4222"}, want: "nats url 2 of 2 (n1:4222): listed twice"},
		{name: "mixed websocket", o: Options{URL: "nats://n1:4222,ws://n2:8080"}, want: "cannot be mixed"},
		{name: "password redacted", o: Options{URL: "nats://u:s3cret@n1:4222,ftp://u:s3cret@n2"}, want: `nats url 2 of 2 (ftp://n2)`},
		{name: "replicas 3", o: Options{URL: "x", Replicas: 3}},
		{name: "replicas 2", o: Options{URL: "x", Replicas: 2}, want: "nats replicas (2): must be 1, 3 or 5"},
		{name: "replicas negative", o: Options{URL: "x", Replicas: -1}, want: "nats replicas (-1): must be 1, 3 or 5"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			err := tt.o.Validate()
			if tt.want == "" {
				require.NoError(t, err)
				return
			}
			require.ErrorContains(t, err, tt.want)
			require.NotContains(t, err.Error(), "s3cret")
		})
	}
}

func TestRedactURL(t *testing.T) {
	t.Parallel()
	for in, want := range map[string]string{
		"nats://n1:4222":                     "nats://n1:4222",
		"nats://u:p@n1:4222,tls://t@n2:4222": "nats://n1:4222,tls://n2:4222",
		"u:p:q@n1:4222":                      "n1:4222",
		"nats://u:p@ss@n1":                   "nats://n1",
		"ws://n1:8080, nats://a:b@n2:4222":   "ws://n1:8080, nats://n2:4222",
	} {
		require.Equal(t, want, redactURL(in), in)
	}
}

func TestBackoffGrowsWithJitterAndCap(t *testing.T) {
	t.Parallel()
	for attempt := 1; attempt < 20; attempt++ {
		d := backoff(attempt, 100*time.Millisecond, 2*time.Second)
		nominal := min(100*time.Millisecond<<(attempt-1), 2*time.Second)
		require.GreaterOrEqual(t, d, nominal/2, "attempt %d", attempt)
		require.LessOrEqual(t, d, nominal, "attempt %d", attempt)
	}
}

func TestEmbeddedNeedsStoreDir(t *testing.T) {
	t.Parallel()
	_, err := Embedded(EmbeddedOptions{Port: -1}, zaptest.NewLogger(t))
	require.ErrorContains(t, err, "store dir is required")
}

func TestConnectWhileServerDownThenUp(t *testing.T) {
	t.Parallel()
	port := freePort(t)
	c, err := Connect(context.Background(), Options{URL: "nats://127.0.0.1:" + strconv.Itoa(port), ReconnectWait: 20 * time.Millisecond, ReconnectMax: 100 * time.Millisecond}, zaptest.NewLogger(t))
	require.NoError(t, err, "a daemon must be able to start before NATS")
	t.Cleanup(c.Close)
	require.False(t, c.Connected())
	startServer(t, port, t.TempDir())
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	require.NoError(t, c.WaitConnected(ctx))
}

func TestEnsureBucketsCreatesThenUpdates(t *testing.T) {
	t.Parallel()
	c := connect(t, startServer(t, -1, t.TempDir()).URL())
	ctx := ctxT(t)
	require.NoError(t, c.EnsureBuckets(ctx, []BucketConfig{
		{Name: "t_apps", History: 5},
		{Name: "t_agents", TTL: 30 * time.Second, Storage: MemoryStorage},
	}))
	apps, err := c.KV(ctx, "t_apps")
	require.NoError(t, err)
	st, err := apps.Status(ctx)
	require.NoError(t, err)
	require.Equal(t, BucketStatus{History: 5, MaxBytes: -1, MaxConsumers: -1, Replicas: 1}, st)
	agents, err := c.KV(ctx, "t_agents")
	require.NoError(t, err)
	st, err = agents.Status(ctx)
	require.NoError(t, err)
	require.Equal(t, BucketStatus{History: 1, TTL: 30 * time.Second, Memory: true, MaxBytes: -1, MaxConsumers: -1, Replicas: 1}, st)

	// Running it again with other settings updates the bucket in place.
	require.NoError(t, c.EnsureBuckets(ctx, []BucketConfig{{Name: "t_apps", History: 10, TTL: time.Hour}}))
	st, err = apps.Status(ctx)
	require.NoError(t, err)
	require.Equal(t, int64(10), st.History)
	require.Equal(t, time.Hour, st.TTL)

	_, err = c.KV(ctx, "t_missing")
	require.ErrorIs(t, err, ErrBucketNotFound)
}

func TestKVOperations(t *testing.T) {
	t.Parallel()
	c := connect(t, startServer(t, -1, t.TempDir()).URL())
	ctx := ctxT(t)
	require.NoError(t, c.EnsureBuckets(ctx, []BucketConfig{{Name: "kv"}}))
	kv, err := c.KV(ctx, "kv")
	require.NoError(t, err)

	_, err = kv.Get(ctx, "a")
	require.ErrorIs(t, err, ErrKeyNotFound)
	r1, err := kv.Create(ctx, "a", []byte("1"))
	require.NoError(t, err)
	_, err = kv.Create(ctx, "a", []byte("x"))
	require.ErrorIs(t, err, ErrKeyExists)
	r2, err := kv.Update(ctx, "a", []byte("2"), r1)
	require.NoError(t, err)
	require.Greater(t, r2, r1)
	_, err = kv.Update(ctx, "a", []byte("3"), r1)
	require.ErrorIs(t, err, ErrWrongRevision)
	e, err := kv.Get(ctx, "a")
	require.NoError(t, err)
	require.Equal(t, Entry{Key: "a", Value: []byte("2"), Revision: r2, Op: OpPut, Created: e.Created}, e)
	r3, err := kv.Put(ctx, "b.x", []byte("b"))
	require.NoError(t, err)
	require.Greater(t, r3, r2)
	keys, err := kv.Keys(ctx)
	require.NoError(t, err)
	require.ElementsMatch(t, []string{"a", "b.x"}, keys)
	require.NoError(t, kv.Delete(ctx, "a"))
	_, err = kv.Get(ctx, "a")
	require.ErrorIs(t, err, ErrKeyNotFound)
}

// recorder is a Handler that records what it is given.
type recorder struct {
	mu        sync.Mutex
	snapshots [][]Event[int]
	revs      []uint64
	updates   []Event[int]
	// updatesAt is len(updates) when each snapshot came.
	updatesAt []int
}

func (r *recorder) Snapshot(evs []Event[int], rev uint64) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.snapshots = append(r.snapshots, evs)
	r.revs = append(r.revs, rev)
	r.updatesAt = append(r.updatesAt, len(r.updates))
}

func (r *recorder) Update(e Event[int]) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.updates = append(r.updates, e)
}

func (r *recorder) state() (int, []Event[int]) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.snapshots), append([]Event[int](nil), r.updates...)
}

func decodeInt(_ string, data []byte) (int, error) {
	n, err := strconv.Atoi(string(data))
	if err != nil {
		return 0, fmt.Errorf("not a number: %q", data)
	}
	return n, nil
}

func runWatcher(t *testing.T, c *Conn, bucket string, h Handler[int]) *Watcher[int] {
	t.Helper()
	w := NewWatcher(c, bucket, decodeInt, h, zaptest.NewLogger(t))
	w.RetryWait = 20 * time.Millisecond
	w.CheckEvery = 50 * time.Millisecond
	startWatcher(t, w)
	return w
}

func TestWatcherSnapshotThenUpdates(t *testing.T) {
	t.Parallel()
	c := connect(t, startServer(t, -1, t.TempDir()).URL())
	ctx := ctxT(t)
	require.NoError(t, c.EnsureBuckets(ctx, []BucketConfig{{Name: "w", History: 1}}))
	kv, err := c.KV(ctx, "w")
	require.NoError(t, err)
	_, err = kv.Put(ctx, "b", []byte("2"))
	require.NoError(t, err)
	_, err = kv.Put(ctx, "a", []byte("1"))
	require.NoError(t, err)
	_, err = kv.Put(ctx, "bad", []byte("garbage"))
	require.NoError(t, err)
	_, err = kv.Put(ctx, "gone", []byte("9"))
	require.NoError(t, err)
	require.NoError(t, kv.Delete(ctx, "gone"))

	rec := &recorder{}
	w := runWatcher(t, c, "w", rec)
	require.Eventually(t, func() bool { n, _ := rec.state(); return n == 1 }, 10*time.Second, 10*time.Millisecond)
	rec.mu.Lock()
	snap, rev := rec.snapshots[0], rec.revs[0]
	rec.mu.Unlock()
	require.Len(t, snap, 2, "one batch with every decodable live value, deletes and garbage excluded")
	require.Equal(t, "a", snap[0].Key)
	require.Equal(t, 1, snap[0].Value)
	require.Equal(t, "b", snap[1].Key)
	require.Equal(t, 2, snap[1].Value)
	require.Equal(t, uint64(5), rev, "the snapshot's revision is the highest it includes, delete markers too")
	require.Equal(t, uint64(1), w.Dropped())

	// The garbage goes to a key of its own: the bucket keeps one value per
	// key, so a second write to "c" may replace the first before the
	// server's consumer reads it, and the watch would then see only the
	// garbage (beside a CPU hog, 1 run in ~50 did).
	r, err := kv.Put(ctx, "c", []byte("3"))
	require.NoError(t, err)
	_, err = kv.Put(ctx, "d", []byte("nope"))
	require.NoError(t, err)
	require.NoError(t, kv.Delete(ctx, "a"))
	require.Eventually(t, func() bool { _, u := rec.state(); return len(u) == 2 }, 10*time.Second, 10*time.Millisecond)
	_, updates := rec.state()
	require.Equal(t, Event[int]{Key: "c", Revision: r, Op: OpPut, Value: 3}, updates[0])
	require.Equal(t, "a", updates[1].Key)
	require.Equal(t, OpDelete, updates[1].Op)
	require.Equal(t, uint64(2), w.Dropped())
	n, _ := rec.state()
	require.Equal(t, 1, n, "the snapshot is delivered exactly once")
}

func TestWatcherEmptyBucketSnapshot(t *testing.T) {
	t.Parallel()
	c := connect(t, startServer(t, -1, t.TempDir()).URL())
	require.NoError(t, c.EnsureBuckets(ctxT(t), []BucketConfig{{Name: "empty"}}))
	rec := &recorder{}
	runWatcher(t, c, "empty", rec)
	require.Eventually(t, func() bool { n, _ := rec.state(); return n == 1 }, 10*time.Second, 10*time.Millisecond)
	rec.mu.Lock()
	defer rec.mu.Unlock()
	require.Empty(t, rec.snapshots[0])
}

func TestWatcherWaitsForBucket(t *testing.T) {
	t.Parallel()
	c := connect(t, startServer(t, -1, t.TempDir()).URL())
	rec := &recorder{}
	w := runWatcher(t, c, "later", rec)
	require.Eventually(t, func() bool { return w.failed.Load() >= 3 }, 10*time.Second, 5*time.Millisecond, "the watcher looks for the bucket")
	n, _ := rec.state()
	require.Zero(t, n)
	require.NoError(t, c.EnsureBuckets(ctxT(t), []BucketConfig{{Name: "later"}}))
	require.Eventually(t, func() bool { n, _ := rec.state(); return n == 1 }, 10*time.Second, 10*time.Millisecond)
}

func TestWatcherSurvivesServerRestart(t *testing.T) {
	t.Parallel()
	dir, port := t.TempDir(), freePort(t)
	s1, err := Embedded(EmbeddedOptions{Port: port, StoreDir: dir}, zaptest.NewLogger(t))
	require.NoError(t, err)
	c := connect(t, s1.URL())
	ctx := ctxT(t)
	require.NoError(t, c.EnsureBuckets(ctx, []BucketConfig{{Name: "r"}}))
	kv, err := c.KV(ctx, "r")
	require.NoError(t, err)
	_, err = kv.Put(ctx, "before", []byte("1"))
	require.NoError(t, err)

	rec := &recorder{}
	runWatcher(t, c, "r", rec)
	require.Eventually(t, func() bool { n, _ := rec.state(); return n == 1 }, 10*time.Second, 10*time.Millisecond)

	s1.Shutdown()
	startServer(t, port, dir) // same port, same store
	require.Eventually(t, c.Connected, 10*time.Second, 10*time.Millisecond)
	_, err = kv.Put(ctx, "after", []byte("2"))
	require.NoError(t, err)

	require.Eventually(t, func() bool {
		rec.mu.Lock()
		defer rec.mu.Unlock()
		for _, e := range rec.updates {
			if e.Key == "after" {
				return true
			}
		}
		last := rec.snapshots[len(rec.snapshots)-1]
		return len(last) == 2 && last[1].Key == "before" && last[0].Key == "after"
	}, 10*time.Second, 10*time.Millisecond, "a write after the restart must reach the watcher")
	n, _ := rec.state()
	require.GreaterOrEqual(t, n, 2, "a reconnect delivers a fresh snapshot")
}

func TestPublishSubscribeDecodedAndDrain(t *testing.T) {
	t.Parallel()
	c := connect(t, startServer(t, -1, t.TempDir()).URL())
	ctx := ctxT(t)
	var mu sync.Mutex
	var got []string
	var dropped []string
	sub, err := c.Subscribe("ev.>", Decoded(func(b []byte) (int, error) { return decodeInt("", b) },
		func(subject string, v int) {
			mu.Lock()
			defer mu.Unlock()
			got = append(got, fmt.Sprintf("%s=%d", subject, v))
		},
		func(subject string, err error) {
			mu.Lock()
			defer mu.Unlock()
			dropped = append(dropped, subject)
		}))
	require.NoError(t, err)
	require.NoError(t, c.Publish(ctx, "ev.a", []byte("1")))
	require.NoError(t, c.Publish(ctx, "ev.b.c", []byte("x")))
	require.NoError(t, c.Publish(ctx, "other", []byte("2")))
	require.NoError(t, c.Publish(ctx, "ev.d", []byte("4")))
	require.NoError(t, c.Flush(ctx))
	require.Eventually(t, func() bool { mu.Lock(); defer mu.Unlock(); return len(got) == 2 }, 5*time.Second, 5*time.Millisecond)
	require.NoError(t, sub.Drain())
	mu.Lock()
	require.Equal(t, []string{"ev.a=1", "ev.d=4"}, got)
	require.Equal(t, []string{"ev.b.c"}, dropped)
	mu.Unlock()

	dctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	require.NoError(t, c.Drain(dctx))
	require.False(t, c.Connected())
	err = c.Publish(ctx, "ev.a", []byte("1"))
	require.Error(t, err)
	require.False(t, errors.Is(err, context.Canceled))
}

func freePort(t *testing.T) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

// TestBucketStatusLastRevision: a bucket's status names the revision of
// its latest write, a delete included, as a watcher counts revisions.
func TestBucketStatusLastRevision(t *testing.T) {
	t.Parallel()
	c := connect(t, startServer(t, -1, t.TempDir()).URL())
	ctx := ctxT(t)
	require.NoError(t, c.EnsureBuckets(ctx, []BucketConfig{{Name: "t_revs", History: 1}}))
	kv, err := c.KV(ctx, "t_revs")
	require.NoError(t, err)
	st, err := kv.Status(ctx)
	require.NoError(t, err)
	require.Zero(t, st.LastRevision)
	_, err = kv.Put(ctx, "a", []byte("1"))
	require.NoError(t, err)
	rev, err := kv.Put(ctx, "b", []byte("2"))
	require.NoError(t, err)
	st, err = kv.Status(ctx)
	require.NoError(t, err)
	require.Equal(t, rev, st.LastRevision)
	require.NoError(t, kv.Delete(ctx, "a"))
	st, err = kv.Status(ctx)
	require.NoError(t, err)
	require.Equal(t, rev+1, st.LastRevision, "the delete marker is a revision")
}

func TestContractBuckets(t *testing.T) {
	t.Parallel()
	n, err := msg.NewNames("test")
	require.NoError(t, err)
	c := connect(t, startServer(t, -1, t.TempDir()).URL())
	ctx := ctxT(t)
	require.NoError(t, c.EnsureBuckets(ctx, ContractBuckets(n)))
	for _, b := range n.Buckets() {
		kv, err := c.KV(ctx, b.Name)
		require.NoError(t, err)
		st, err := kv.Status(ctx)
		require.NoError(t, err)
		require.Equal(t, BucketStatus{History: int64(b.History), TTL: b.TTL, Memory: b.TTL > 0, MaxBytes: b.MaxBytes, MaxConsumers: b.MaxConsumers, Replicas: 1}, st, b.Name)
		require.Positive(t, b.MaxBytes, b.Name)
		require.Positive(t, b.MaxConsumers, b.Name)
	}
}

// TestOwnedKV: a missing bucket is created with the role's others; one the
// role does not own is refused, not created.
func TestOwnedKV(t *testing.T) {
	t.Parallel()
	s := startServer(t, -1, t.TempDir())
	c := connect(t, s.URL())
	n, err := msg.NewNames("berth")
	require.NoError(t, err)
	ctx := ctxT(t)

	_, err = c.KV(ctx, n.HealthBucket())
	require.ErrorIs(t, err, ErrBucketNotFound)
	kv, err := OwnedKV(ctx, c, n, RoleHealthd, n.HealthBucket())
	require.NoError(t, err)
	_, err = kv.Put(ctx, "web.a", []byte("{}"))
	require.NoError(t, err)
	owned, err := OwnedBuckets(n, RoleHealthd)
	require.NoError(t, err)
	for _, b := range owned {
		_, err := c.KV(ctx, b.Name)
		require.NoError(t, err, "%s created with the role's others", b.Name)
	}
	again, err := OwnedKV(ctx, c, n, RoleHealthd, n.HealthBucket())
	require.NoError(t, err)
	e, err := again.Get(ctx, "web.a")
	require.NoError(t, err, "an existing bucket is opened as it is")
	require.Equal(t, []byte("{}"), e.Value)

	_, err = OwnedKV(ctx, c, n, RoleHealthd, n.AppsBucket())
	require.ErrorIs(t, err, ErrBucketNotFound, "the scheduler's bucket is not healthd's to create")

	// The scheduler's buckets come back with the agents bucket it manages
	// (NATS back empty: no lbagent with a node key may create it).
	_, err = OwnedKV(ctx, c, n, RoleScheduler, n.InstancesBucket())
	require.NoError(t, err)
	_, err = c.KV(ctx, n.AgentsBucket())
	require.NoError(t, err, "the managed agents bucket is created with the scheduler's own")
}
