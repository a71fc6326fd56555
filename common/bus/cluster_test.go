package bus_test

import (
	"context"
	"encoding/json"
	"fmt"
	"reflect"
	"strconv"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest"
	"go.uber.org/zap/zaptest/observer"

	"github.com/berthhq/berth/common/bus"
	"github.com/berthhq/berth/common/msg"
	"github.com/berthhq/berth/internal/testrig"
)

// clusterConn connects to the cluster as role with the given replicas, its
// log recorded at info and above.
func clusterConn(t *testing.T, c *testrig.NATSCluster, url string, n msg.Names, role, name string, replicas int) (*bus.Conn, *observer.ObservedLogs) {
	t.Helper()
	core, logs := observer.New(zapcore.InfoLevel)
	logger := zap.New(zapcore.NewTee(core, zaptest.NewLogger(t, zaptest.Level(zapcore.WarnLevel)).Core()))
	conn, err := bus.Connect(context.Background(), bus.Options{URL: url, Name: name, NKeyFile: c.Seeds[role], Keys: mustKeys(t, c.Seeds[role]),
		Names: n, Replicas: replicas, ReconnectWait: 20 * time.Millisecond, ReconnectMax: 200 * time.Millisecond}, logger)
	require.NoError(t, err)
	t.Cleanup(conn.Close)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	require.NoError(t, conn.WaitConnected(ctx))
	return conn, logs
}

func mustKeys(t *testing.T, seed string) *bus.Keys {
	t.Helper()
	k, err := bus.LoadKeys(seed)
	require.NoError(t, err)
	return k
}

func bucketReplicas(t *testing.T, conn *bus.Conn, bucket string) int {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	kv, err := conn.KV(ctx, bucket)
	require.NoError(t, err)
	st, err := kv.Status(ctx)
	require.NoError(t, err)
	return st.Replicas
}

// TestBucketReplicasOnACluster: the scheduler's buckets get the replicas
// it asks for; a bucket with fewer is raised, and the raise logged; a
// daemon that asks for fewer never lowers them; and more replicas than
// the cluster has servers, or any on a server outside a cluster, are
// refused with what to do.
func TestBucketReplicasOnACluster(t *testing.T) {
	t.Parallel()
	n, err := msg.NewNames("rep")
	require.NoError(t, err)
	c := testrig.StartNATSCluster(t, n)
	owned := bus.MustOwnedBuckets(n, bus.RoleScheduler)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()

	one, _ := clusterConn(t, c, c.URL(), n, bus.RoleScheduler, "one", 1)
	require.NoError(t, one.EnsureBuckets(ctx, owned))
	for _, b := range owned {
		require.Equal(t, 1, bucketReplicas(t, one, b.Name), b.Name)
	}

	three, logs := clusterConn(t, c, c.URL(), n, bus.RoleScheduler, "three", 3)
	require.NoError(t, three.EnsureBuckets(ctx, owned))
	for _, b := range owned {
		require.Equal(t, 3, bucketReplicas(t, three, b.Name), b.Name)
		raised := logs.FilterMessageSnippet("raising the bucket's replicas").FilterField(zap.String("bucket", b.Name)).All()
		require.Len(t, raised, 1, "the raise of %s is logged", b.Name)
		require.Equal(t, map[string]any{"bucket": b.Name, "replicas": int64(1), "new_replicas": int64(3)}, raised[0].ContextMap())
	}
	// Every server holds a replica of every bucket, once the cluster has
	// copied them.
	for _, node := range c.Nodes {
		var streams []string
		require.Eventually(t, func() bool {
			streams, err = node.Streams()
			return err == nil && len(streams) == len(owned)
		}, 30*time.Second, 50*time.Millisecond, "%s holds every bucket", node.Name)
	}

	// A daemon left at the default of 1 keeps the cluster's 3.
	require.NoError(t, one.EnsureBuckets(ctx, owned))
	for _, b := range owned {
		require.Equal(t, 3, bucketReplicas(t, one, b.Name), b.Name)
	}

	five, _ := clusterConn(t, c, c.URL(), n, bus.RoleScheduler, "five", 5)
	err = five.EnsureBuckets(ctx, owned)
	require.ErrorIs(t, err, bus.ErrReplicas)
	require.ErrorContains(t, err, "cannot place 5 replicas")
	require.ErrorContains(t, err, "lower --nats-replicas")
	for _, b := range owned {
		require.Equal(t, 3, bucketReplicas(t, one, b.Name), "%s: a refused raise changes nothing", b.Name)
	}

	single := testrig.NATS(t)
	conn, err := bus.Connect(context.Background(), bus.Options{URL: single, Replicas: 3}, zaptest.NewLogger(t, zaptest.Level(zapcore.WarnLevel)))
	require.NoError(t, err)
	t.Cleanup(conn.Close)
	err = conn.EnsureBuckets(ctx, []bus.BucketConfig{{Name: "solo"}})
	require.ErrorIs(t, err, bus.ErrReplicas)
	require.ErrorContains(t, err, "not in a cluster")
	require.ErrorContains(t, err, "give --nats-replicas 1")
}

// TestConnFailsOverToAnotherMember: a connection whose server is killed
// moves to another member of the cluster, and a watch of a 3-replica
// bucket goes on: it sees the values written after the kill, including
// once the bucket's stream leader was the server killed.
func TestConnFailsOverToAnotherMember(t *testing.T) {
	t.Parallel()
	n, err := msg.NewNames("fo")
	require.NoError(t, err)
	c := testrig.StartNATSCluster(t, n)
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	// The writer is given one member only: it learns the others from the
	// cluster (discovered servers).
	writer, wlogs := clusterConn(t, c, c.Nodes[0].URL(), n, bus.RoleScheduler, "writer", 3)
	require.NoError(t, writer.EnsureBuckets(ctx, bus.MustOwnedBuckets(n, bus.RoleScheduler)))
	connected := wlogs.FilterMessage("nats connected").All()
	require.Len(t, connected, 1)
	// The members it knows when it connects, and those the cluster tells
	// it of later (a member whose routes are still forming is told after
	// the connect: beside a CPU hog, 1 run in ~30).
	require.Eventually(t, func() bool {
		if reflect.ValueOf(connected[0].ContextMap()["servers"]).Len() == len(c.Nodes) {
			return true
		}
		for _, e := range wlogs.FilterMessage("nats cluster members discovered").All() {
			if reflect.ValueOf(e.ContextMap()["servers"]).Len() == len(c.Nodes)-1 { // all but the one given
				return true
			}
		}
		return false
	}, 30*time.Second, 10*time.Millisecond, "the writer learns every member: %v", connected[0].ContextMap())
	reader, logs := clusterConn(t, c, c.URL(), n, bus.RoleReader, "reader", 0)

	got := make(chan string, 100)
	decode := func(_ string, b []byte) (string, error) {
		var v struct{ V string }
		err := json.Unmarshal(b, &v)
		return v.V, err
	}
	w := bus.NewWatcher(reader, n.AppsBucket(), decode,
		bus.HandlerFuncs[string]{
			OnSnapshot: func(evs []bus.Event[string], _ uint64) {
				for _, e := range evs {
					got <- e.Key + "=" + e.Value
				}
			},
			OnUpdate: func(e bus.Event[string]) { got <- e.Key + "=" + e.Value },
		}, zaptest.NewLogger(t, zaptest.Level(zapcore.WarnLevel)))
	wctx, stop := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- w.Run(wctx) }()
	t.Cleanup(func() { stop(); <-done })

	kv, err := writer.KV(ctx, n.AppsBucket())
	require.NoError(t, err)
	// put writes key=value, polling until the bucket has a leader that
	// accepts it (an election after a kill takes seconds).
	put := func(key, value string) {
		t.Helper()
		deadline := time.Now().Add(30 * time.Second)
		for {
			pctx, cancel := context.WithTimeout(ctx, 2*time.Second)
			_, err := kv.Put(pctx, key, []byte(`{"v":"`+value+`"}`))
			cancel()
			if err == nil {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("put %s: not accepted within 30s: %v", key, err)
			}
			time.Sleep(100 * time.Millisecond) // the poll interval
		}
	}
	expect := func(want string) {
		t.Helper()
		deadline := time.After(30 * time.Second)
		for {
			select {
			case v := <-got:
				if v == want {
					return
				}
			case <-deadline:
				t.Fatalf("the watch did not see %s", want)
			}
		}
	}
	put("k0", "v")
	expect("k0=v")

	stream := "KV_" + n.AppsBucket()
	for i, victim := range []string{c.ConnectedTo("reader"), c.StreamLeader(stream)} {
		require.NotEmpty(t, victim)
		reconnects := logs.FilterMessage("nats reconnected").Len()
		c.Node(victim).Kill()
		key := "k" + strconv.Itoa(i+1)
		put(key, "v")
		expect(key + "=v")
		now := c.ConnectedTo("reader")
		require.NotEmpty(t, now)
		require.NotEqual(t, victim, now)
		if i == 0 {
			require.Greater(t, logs.FilterMessage("nats reconnected").Len(), reconnects, "the reader moved to another member")
		}
		require.True(t, reader.Connected())
		c.Node(victim).Start()
		require.Eventually(t, func() bool { return c.CaughtUp(victim, []string{stream}) == nil }, 60*time.Second, 100*time.Millisecond,
			fmt.Sprintf("%s caught up", victim))
	}
}

// TestQuorumLossStopsWritesUntilANodeReturns: with two of three servers
// gone the cluster has no quorum: a write fails within its deadline
// rather than hang (its outcome is unknown, as with any timeout), and once
// one server is back writes resume and a watch started before the loss
// sees them.
func TestQuorumLossStopsWritesUntilANodeReturns(t *testing.T) {
	t.Parallel()
	n, err := msg.NewNames("q")
	require.NoError(t, err)
	c := testrig.StartNATSCluster(t, n)
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	writer, _ := clusterConn(t, c, c.URL(), n, bus.RoleScheduler, "writer", 3)
	require.NoError(t, writer.EnsureBuckets(ctx, bus.MustOwnedBuckets(n, bus.RoleScheduler)))
	reader, _ := clusterConn(t, c, c.URL(), n, bus.RoleReader, "reader", 0)
	got := make(chan string, 100)
	w := bus.NewWatcher(reader, n.AppsBucket(), func(k string, _ []byte) (string, error) { return k, nil },
		bus.HandlerFuncs[string]{
			OnSnapshot: func(evs []bus.Event[string], _ uint64) {
				for _, e := range evs {
					got <- e.Key
				}
			},
			OnUpdate: func(e bus.Event[string]) { got <- e.Key },
		}, zaptest.NewLogger(t, zaptest.Level(zapcore.WarnLevel)))
	wctx, stop := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- w.Run(wctx) }()
	t.Cleanup(func() { stop(); <-done })
	kv, err := writer.KV(ctx, n.AppsBucket())
	require.NoError(t, err)

	down := []*testrig.NATSProcess{c.Nodes[0], c.Nodes[1]}
	for _, node := range down {
		node.Kill()
	}
	require.NoError(t, writer.WaitConnected(ctx), "the writer moved to the server left")
	pctx, pcancel := context.WithTimeout(ctx, 2*time.Second)
	_, err = kv.Put(pctx, "lost", []byte(`{"v":1}`))
	pcancel()
	require.Error(t, err, "no quorum: the write fails within its deadline")

	down[0].Start()
	restarted := time.Now()
	deadline := restarted.Add(60 * time.Second)
	for {
		pctx, pcancel := context.WithTimeout(ctx, 2*time.Second)
		_, err = kv.Put(pctx, "back", []byte(`{"v":2}`))
		pcancel()
		if err == nil {
			t.Logf("writes resumed %s after a second server started", time.Since(restarted).Round(10*time.Millisecond))
			break
		}
		require.True(t, time.Now().Before(deadline), "writes did not resume within 60s of a quorum: %v", err)
		time.Sleep(100 * time.Millisecond) // the poll interval
	}
	timeout := time.After(30 * time.Second)
	for {
		select {
		case k := <-got:
			if k == "back" {
				return
			}
		case <-timeout:
			t.Fatal("the watch did not see the write made once the quorum was back")
		}
	}
}
