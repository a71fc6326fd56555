package bus

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.uber.org/zap/zaptest"
)

// view replays what a recorder was given into the key → value map a
// consumer would hold.
func (r *recorder) view() map[string]int {
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.snapshots) == 0 {
		return nil
	}
	out := map[string]int{}
	for _, e := range r.snapshots[len(r.snapshots)-1] {
		out[e.Key] = e.Value
	}
	// The recorder keeps every update: replay those after the last snapshot.
	for _, e := range r.updates[r.updatesAt[len(r.updatesAt)-1]:] {
		if e.Op == OpDelete {
			delete(out, e.Key)
			continue
		}
		out[e.Key] = e.Value
	}
	return out
}

// TestWatcherRecoversFromWipe loses a watched bucket and has it created
// again and refilled, as the scheduler's leader does after NATS comes back
// empty. The watcher must keep the consumer's view while the bucket is
// missing, then deliver what is republished, without being restarted.
func TestWatcherRecoversFromWipe(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		// wipe loses the bucket and returns the URL to reach NATS at.
		wipe func(t *testing.T, c *Conn, s *EmbeddedServer, port int) string
	}{
		{
			// An external server restarts on the same port with a new, empty
			// store: the client reconnects and finds no bucket.
			name: "server restarts with an empty store",
			wipe: func(t *testing.T, c *Conn, s *EmbeddedServer, port int) string {
				s.Shutdown()
				s2 := startServer(t, port, t.TempDir())
				require.Eventually(t, c.Connected, 10*time.Second, 5*time.Millisecond)
				return s2.URL()
			},
		},
		{
			// The bucket is deleted while the connection stays up: no
			// reconnect tells the watcher, and its watch goes silent.
			name: "bucket deleted while connected",
			wipe: func(t *testing.T, c *Conn, s *EmbeddedServer, _ int) string {
				require.NoError(t, c.js.DeleteKeyValue(ctxT(t), "wiped"))
				return s.URL()
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			port := freePort(t)
			s, err := Embedded(EmbeddedOptions{Port: port, StoreDir: t.TempDir()}, zaptest.NewLogger(t))
			require.NoError(t, err)
			t.Cleanup(s.Shutdown)
			c := connect(t, s.URL())
			ctx := ctxT(t)
			require.NoError(t, c.EnsureBuckets(ctx, []BucketConfig{{Name: "wiped"}}))
			kv, err := c.KV(ctx, "wiped")
			require.NoError(t, err)
			_, err = kv.Put(ctx, "old", []byte("1"))
			require.NoError(t, err)

			rec := &recorder{}
			w := runWatcher(t, c, "wiped", rec)
			require.Eventually(t, func() bool { return len(rec.view()) == 1 }, 10*time.Second, 5*time.Millisecond)
			failed := w.failed.Load()

			url := tt.wipe(t, c, s, port)
			_, err = c.KV(ctx, "wiped")
			require.ErrorIs(t, err, ErrBucketNotFound)
			// Several bucket checks and retries pass while the bucket is
			// missing; the consumer's view must survive them.
			require.Eventually(t, func() bool { return w.failed.Load() >= failed+3 }, 10*time.Second, 5*time.Millisecond, "the watcher finds the bucket missing")
			require.Equal(t, map[string]int{"old": 1}, rec.view(), "a missing bucket must not change the consumer's view")

			// The leader, on its own connection, creates the bucket again
			// and republishes.
			leader := connect(t, url)
			require.NoError(t, leader.EnsureBuckets(ctx, []BucketConfig{{Name: "wiped"}}))
			kv2, err := leader.KV(ctx, "wiped")
			require.NoError(t, err)
			_, err = kv2.Put(ctx, "a", []byte("2"))
			require.NoError(t, err)
			_, err = kv2.Put(ctx, "b", []byte("3"))
			require.NoError(t, err)
			require.Eventually(t, func() bool {
				v := rec.view()
				return len(v) == 2 && v["a"] == 2 && v["b"] == 3
			}, 10*time.Second, 5*time.Millisecond, "the republished entries must reach the watcher")

			// Later writes keep arriving.
			_, err = kv2.Put(ctx, "c", []byte("4"))
			require.NoError(t, err)
			require.Eventually(t, func() bool { return rec.view()["c"] == 4 }, 10*time.Second, 5*time.Millisecond)
		})
	}
}

// TestWatcherStopsPromptlyWhileNATSIsDown ends a watcher whose server is
// gone: ending its watch must not wait out the client's API timeout.
func TestWatcherStopsPromptlyWhileNATSIsDown(t *testing.T) {
	t.Parallel()
	s, err := Embedded(EmbeddedOptions{Port: -1, StoreDir: t.TempDir()}, zaptest.NewLogger(t))
	require.NoError(t, err)
	t.Cleanup(s.Shutdown)
	c := connect(t, s.URL())
	require.NoError(t, c.EnsureBuckets(ctxT(t), []BucketConfig{{Name: "down"}}))
	rec := &recorder{}
	w := NewWatcher(c, "down", decodeInt, rec, zaptest.NewLogger(t))
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- w.Run(ctx) }()
	require.Eventually(t, func() bool { n, _ := rec.state(); return n == 1 }, 10*time.Second, 5*time.Millisecond)
	s.Shutdown()
	require.Eventually(t, func() bool { return !c.Connected() }, 10*time.Second, 5*time.Millisecond)
	start := time.Now()
	cancel()
	select {
	case err := <-done:
		require.NoError(t, err)
	case <-time.After(4 * time.Second):
		t.Fatal("Run did not return within 4s of its context ending")
	}
	require.Less(t, time.Since(start), stopWait+500*time.Millisecond)
}
