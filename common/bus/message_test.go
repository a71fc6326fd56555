package bus

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/berthhq/berth/common/msg"
	"github.com/stretchr/testify/require"
	"go.uber.org/zap/zaptest"
)

func instanceJSON(t *testing.T, app, id string) []byte {
	t.Helper()
	b, err := msg.Encode(&msg.Instance{App: app, ID: id, Generation: 1, Term: 1, Address: "127.0.0.1:8080", State: msg.StateRunning, Weight: 1, UpdatedAt: time.Now()})
	require.NoError(t, err)
	return b
}

func TestMessageKeyMustMatch(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name, key string
		data      []byte
		ok        bool
	}{
		{"instance under its key", "web.a1", instanceJSON(t, "web", "a1"), true},
		{"instance under another app's key", "shop.a1", instanceJSON(t, "web", "a1"), false},
		{"instance under another instance's key", "web.a2", instanceJSON(t, "web", "a1"), false},
		{"instance under a bare key", "web", instanceJSON(t, "web", "a1"), false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			m, err := Message[*msg.Instance](tt.key, tt.data)
			if tt.ok {
				require.NoError(t, err)
				require.Equal(t, "a1", m.ID)
				return
			}
			require.ErrorIs(t, err, msg.ErrKeyMismatch)
			require.Nil(t, m)
		})
	}
}

// A value whose key disagrees with its message is dropped and counted by
// the watcher, as an undecodable one is: the handler never sees it.
func TestWatcherDropsValueUnderWrongKey(t *testing.T) {
	t.Parallel()
	c := connect(t, startServer(t, -1, t.TempDir()).URL())
	ctx := ctxT(t)
	require.NoError(t, c.EnsureBuckets(ctx, []BucketConfig{{Name: "insts", History: 1}}))
	kv, err := c.KV(ctx, "insts")
	require.NoError(t, err)
	_, err = kv.Put(ctx, "web.a1", instanceJSON(t, "web", "a1"))
	require.NoError(t, err)
	_, err = kv.Put(ctx, "web.a2", instanceJSON(t, "shop", "a2")) // shop's instance, routed as web's
	require.NoError(t, err)

	var mu sync.Mutex
	var keys []string
	h := HandlerFuncs[*msg.Instance]{
		OnSnapshot: func(events []Event[*msg.Instance], _ uint64) {
			mu.Lock()
			defer mu.Unlock()
			for _, e := range events {
				keys = append(keys, e.Key)
			}
		},
		OnUpdate: func(e Event[*msg.Instance]) {
			mu.Lock()
			defer mu.Unlock()
			keys = append(keys, e.Key)
		},
	}
	w := NewWatcher(c, "insts", Message[*msg.Instance], h, zaptest.NewLogger(t))
	wctx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- w.Run(wctx) }()
	t.Cleanup(func() { cancel(); <-done })

	require.Eventually(t, func() bool { mu.Lock(); defer mu.Unlock(); return len(keys) == 1 }, 10*time.Second, 10*time.Millisecond)
	_, err = kv.Put(ctx, "web.a3", instanceJSON(t, "web", "a9"))
	require.NoError(t, err)
	_, err = kv.Put(ctx, "web.a4", instanceJSON(t, "web", "a4"))
	require.NoError(t, err)
	require.Eventually(t, func() bool { mu.Lock(); defer mu.Unlock(); return len(keys) == 2 }, 10*time.Second, 10*time.Millisecond)
	mu.Lock()
	require.Equal(t, []string{"web.a1", "web.a4"}, keys)
	mu.Unlock()
	require.Equal(t, uint64(2), w.Dropped())
}
