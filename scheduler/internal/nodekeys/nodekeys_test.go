package nodekeys

import (
	"context"
	"errors"
	"maps"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.uber.org/zap/zaptest"

	"github.com/berthhq/berth/common/bus"
	"github.com/berthhq/berth/common/msg"
)

func TestPlan(t *testing.T) {
	t.Parallel()
	a, b := []string{"UA"}, []string{"UB", "UC"}
	tests := []struct {
		name      string
		want, pub map[string][]string
		inBucket  []string
		full      bool
		put, del  []string
	}{
		{name: "nothing", want: map[string][]string{}, pub: map[string][]string{}},
		{name: "a new node", want: map[string][]string{"lb-1": a, "lb-2": b}, pub: map[string][]string{"lb-1": a}, put: []string{"lb-2"}},
		{name: "a key rotated", want: map[string][]string{"lb-1": b}, pub: map[string][]string{"lb-1": a}, put: []string{"lb-1"}},
		{name: "a node removed", want: map[string][]string{"lb-1": a}, pub: map[string][]string{"lb-1": a, "lb-2": b}, del: []string{"lb-2"}},
		{name: "full: every entry, and what the bucket holds of no node", want: map[string][]string{"lb-1": a, "lb-2": b},
			pub: map[string][]string{"lb-1": a}, inBucket: []string{"lb-1", "lb-9", "evil"}, full: true,
			put: []string{"lb-1", "lb-2"}, del: []string{"evil", "lb-9"}},
		{name: "not full: the bucket is not read", want: map[string][]string{"lb-1": a}, pub: map[string][]string{"lb-1": a},
			inBucket: []string{"lb-9"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			put, del := Plan(tt.want, tt.pub, tt.inBucket, tt.full)
			require.Equal(t, tt.put, put)
			require.Equal(t, tt.del, del)
		})
	}
}

// bucket is the nodes bucket in memory, recording the order of writes.
type bucket struct {
	mu     sync.Mutex
	values map[string]*msg.Node
	log    []string
	fail   error
}

func (b *bucket) Put(_ context.Context, key string, value []byte) (uint64, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.fail != nil {
		return 0, b.fail
	}
	m, err := msg.DecodeAs[*msg.Node](value)
	if err != nil {
		return 0, err
	}
	b.values[key] = m
	b.log = append(b.log, "put "+key)
	return uint64(len(b.log)), nil
}

func (b *bucket) Delete(_ context.Context, key string) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	delete(b.values, key)
	b.log = append(b.log, "delete "+key)
	return nil
}

func (b *bucket) Keys(context.Context) ([]string, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return slices.Sorted(maps.Keys(b.values)), nil
}

func (b *bucket) take() []string {
	b.mu.Lock()
	defer b.mu.Unlock()
	out := b.log
	b.log = nil
	return out
}

// TestPublisherFollowsTheCredentials: the leader publishes each node's
// keys, changes only when not full, every entry after Resync, and deletes
// a removed node's entry after the server has lost its user (and adds a
// new node's before the server gains it); a follower writes nothing but
// still gives its embedded NATS the users.
func TestPublisherFollowsTheCredentials(t *testing.T) {
	t.Parallel()
	dir := filepath.Join(t.TempDir(), "creds")
	_, err := bus.AddNode(dir, "lb-1")
	require.NoError(t, err)
	kv := &bucket{values: map[string]*msg.Node{"stale": {Node: "stale", Keys: []string{"U"}}}}
	leading := true
	now := time.Unix(1000, 0)
	var reloads int
	p := New(Config{Scan: time.Second, Resync: 30 * time.Second}, Deps{
		Read:    func() (*bus.Credentials, error) { return bus.ReadCredentials(dir) },
		Open:    func(context.Context) (Bucket, error) { return kv, nil },
		Leading: func() bool { return leading },
		Users: func(c *bus.Credentials) error {
			reloads++
			kv.mu.Lock()
			kv.log = append(kv.log, "users "+strings.Join(c.Nodes(), ","))
			kv.mu.Unlock()
			return nil
		},
	}, zaptest.NewLogger(t))
	p.now = func() time.Time { return now }
	ctx := context.Background()

	p.step(ctx, leading, false)
	require.Equal(t, []string{"put lb-1", "users lb-1", "delete stale"}, kv.take(), "gaining leadership: everything, and no stale entry")
	c, err := bus.ReadCredentials(dir)
	require.NoError(t, err)
	require.Equal(t, c.NodeKeys()["lb-1"], kv.values["lb-1"].Keys)

	p.step(ctx, leading, false)
	require.Empty(t, kv.take(), "nothing changed")

	_, err = bus.AddNode(dir, "lb-2")
	require.NoError(t, err)
	p.step(ctx, leading, false)
	require.Equal(t, []string{"put lb-2", "users lb-1,lb-2"}, kv.take(), "the new node is trusted before the server lets it in")

	_, err = bus.RotateKey(dir, bus.RoleLBAgent, "lb-1")
	require.NoError(t, err)
	p.step(ctx, leading, false)
	require.Equal(t, []string{"put lb-1", "users lb-1,lb-2"}, kv.take())
	require.Len(t, kv.values["lb-1"].Keys, 2, "the active and the next key")

	_, err = bus.RemoveNode(dir, "lb-2")
	require.NoError(t, err)
	p.step(ctx, leading, false)
	require.Equal(t, []string{"users lb-1", "delete lb-2"}, kv.take(), "the server drops the node before the directory does")

	now = now.Add(30 * time.Second)
	p.step(ctx, leading, false)
	require.Equal(t, []string{"put lb-1"}, kv.take(), "every entry is sealed anew each Resync")

	p.Repair()
	<-p.repair
	p.step(ctx, leading, true)
	require.Equal(t, []string{"put lb-1"}, kv.take(), "a repair puts everything at once")

	leading = false
	_, err = bus.AddNode(dir, "lb-3")
	require.NoError(t, err)
	p.step(ctx, leading, false)
	require.Equal(t, []string{"users lb-1,lb-3"}, kv.take(), "a follower writes nothing")
	leading = true
	p.step(ctx, leading, false)
	require.Equal(t, []string{"put lb-1", "put lb-3"}, kv.take(), "leading again: everything")

	kv.fail = errors.New("nats down")
	_, err = bus.AddNode(dir, "lb-4")
	require.NoError(t, err)
	p.step(ctx, leading, false)
	require.Equal(t, []string{"users lb-1,lb-3,lb-4"}, kv.take())
	kv.fail = nil
	p.step(ctx, leading, false)
	require.Equal(t, []string{"put lb-1", "put lb-3", "put lb-4"}, kv.take(), "after a failed put, everything again")
	require.Equal(t, 6, reloads, "once for each change of the keys")
}

// TestRunAndLead: every replica gives its server the users; only Lead
// writes the directory, everything at once, and Run takes over the users
// again once Lead has returned.
func TestRunAndLead(t *testing.T) {
	t.Parallel()
	dir := filepath.Join(t.TempDir(), "creds")
	_, err := bus.AddNode(dir, "lb-1")
	require.NoError(t, err)
	kv := &bucket{values: map[string]*msg.Node{}}
	var users atomic.Int32
	p := New(Config{Scan: 10 * time.Millisecond, Resync: time.Hour}, Deps{
		Read:    func() (*bus.Credentials, error) { return bus.ReadCredentials(dir) },
		Open:    func(context.Context) (Bucket, error) { return kv, nil },
		Leading: func() bool { return true },
		Users:   func(*bus.Credentials) error { users.Add(1); return nil },
	}, zaptest.NewLogger(t))
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	runDone := make(chan error, 1)
	go func() { runDone <- p.Run(ctx) }()
	require.Eventually(t, func() bool { return users.Load() == 1 }, 5*time.Second, time.Millisecond, "a follower gives its server the users")
	require.Empty(t, kv.take(), "a follower writes nothing")

	lctx, lcancel := context.WithCancel(ctx)
	leadDone := make(chan error, 1)
	go func() { leadDone <- p.Lead(lctx) }()
	require.Eventually(t, func() bool { kv.mu.Lock(); defer kv.mu.Unlock(); return len(kv.values) == 1 }, 5*time.Second, time.Millisecond,
		"gaining leadership publishes every node")
	lcancel()
	require.NoError(t, <-leadDone)
	require.Equal(t, []string{"put lb-1"}, kv.take())

	_, err = bus.AddNode(dir, "lb-2")
	require.NoError(t, err)
	require.Eventually(t, func() bool { return users.Load() == 2 }, 5*time.Second, time.Millisecond, "Run gives the users again")
	require.Empty(t, kv.take(), "and writes nothing once Lead has returned")
	cancel()
	require.NoError(t, <-runDone)
}
