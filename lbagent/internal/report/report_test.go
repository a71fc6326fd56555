package report

import (
	"context"
	"fmt"
	"maps"
	"math/rand/v2"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.uber.org/zap/zaptest"

	"github.com/berthhq/berth/common/bus"
	"github.com/berthhq/berth/common/msg"
	"github.com/berthhq/berth/internal/testrig"
)

// observer records what it sees.
type observer struct {
	mu      sync.Mutex
	reloads []string
	applied []uint64
}

func (o *observer) Reload(r *msg.Reload) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.reloads = append(o.reloads, r.Result)
}

func (o *observer) Applied(a *msg.Agent) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.applied = append(o.applied, a.AppliedRevision)
}

var _ Observer = (*observer)(nil)

func connect(t *testing.T) (*bus.Conn, msg.Names) {
	t.Helper()
	conn, err := bus.Connect(context.Background(), bus.Options{URL: testrig.NATS(t)}, zaptest.NewLogger(t))
	require.NoError(t, err)
	t.Cleanup(conn.Close)
	names, err := msg.NewNames("t")
	require.NoError(t, err)
	return conn, names
}

func TestReload(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name        string
		result      string
		failedApps  map[string]string
		wantPublish bool
	}{
		{name: "applied is published", result: msg.ReloadApplied, wantPublish: true},
		{name: "rejected is published with its apps", result: msg.ReloadRejected, failedApps: map[string]string{"web": "nginx -t: bad"}, wantPublish: true},
		{name: "failed is published", result: msg.ReloadFailed, wantPublish: true},
		{name: "skipped is only observed", result: msg.ReloadSkipped},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			conn, names := connect(t)
			got := make(chan *msg.Reload, 4)
			sub, err := conn.Subscribe(names.ReloadsSubject("lb-1"), bus.Decoded(msg.DecodeAs[*msg.Reload],
				func(_ string, r *msg.Reload) { got <- r }, func(_ string, err error) { t.Errorf("undecodable reload: %v", err) }))
			require.NoError(t, err)
			t.Cleanup(func() { _ = sub.Drain() })
			obs := &observer{}
			r := New(conn, names, "lb-1", obs, zaptest.NewLogger(t))
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			r.Reload(ctx, &msg.Reload{Node: "lb-1", Result: tt.result, DurationMS: 12, Revision: 9, FailedApps: tt.failedApps, At: time.Now()})
			require.NoError(t, conn.Flush(ctx))
			// A second, applied reload marks the end: what came before it
			// was either published or not.
			r.Reload(ctx, &msg.Reload{Node: "lb-1", Result: msg.ReloadApplied, Revision: 10, At: time.Now()})
			first := <-got
			if tt.wantPublish {
				require.Equal(t, tt.result, first.Result)
				require.Equal(t, uint64(9), first.Revision)
				require.Equal(t, tt.failedApps, first.FailedApps)
				require.Equal(t, uint64(10), (<-got).Revision)
			} else {
				require.Equal(t, uint64(10), first.Revision, "a skipped reload is not published")
			}
			obs.mu.Lock()
			defer obs.mu.Unlock()
			require.Equal(t, []string{tt.result, msg.ReloadApplied}, obs.reloads, "the observer sees every result")
		})
	}
}

func TestApplied(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		// bucketLate creates the agents bucket only after a first Applied.
		bucketLate bool
		observer   bool
	}{
		{name: "puts the node's state", observer: true},
		{name: "without an observer"},
		{name: "waits for the agents bucket, then puts", bucketLate: true, observer: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			conn, names := connect(t)
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			ensure := func() { require.NoError(t, conn.EnsureBuckets(ctx, bus.ContractBuckets(names))) }
			if !tt.bucketLate {
				ensure()
			}
			obs := &observer{}
			var o Observer
			if tt.observer {
				o = obs
			}
			r := New(conn, names, "lb-1", o, zaptest.NewLogger(t))
			state := &msg.Agent{Node: "lb-1", AppliedRevision: 42, Apps: map[string]int64{"web": 3}, UpdatedAt: time.Now()}
			r.Applied(ctx, state)
			if tt.bucketLate {
				ensure()
				kv, err := conn.KV(ctx, names.AgentsBucket())
				require.NoError(t, err)
				_, err = kv.Get(ctx, "lb-1")
				require.ErrorIs(t, err, bus.ErrKeyNotFound, "nothing was put while the bucket was missing")
				r.Applied(ctx, state)
			}
			kv, err := conn.KV(ctx, names.AgentsBucket())
			require.NoError(t, err)
			e, err := kv.Get(ctx, "lb-1")
			require.NoError(t, err)
			got, err := msg.DecodeAs[*msg.Agent](e.Value)
			require.NoError(t, err)
			require.Equal(t, uint64(42), got.AppliedRevision)
			require.Equal(t, map[string]int64{"web": 3}, got.Apps)
			if tt.observer {
				obs.mu.Lock()
				defer obs.mu.Unlock()
				require.NotEmpty(t, obs.applied)
				require.Equal(t, uint64(42), obs.applied[0])
			}
		})
	}
}

func TestAppliedInvalidIsNotPut(t *testing.T) {
	t.Parallel()
	conn, names := connect(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	require.NoError(t, conn.EnsureBuckets(ctx, bus.ContractBuckets(names)))
	r := New(conn, names, "lb-1", nil, zaptest.NewLogger(t))
	r.Applied(ctx, &msg.Agent{Node: "Not A Node!", UpdatedAt: time.Now()})
	kv, err := conn.KV(ctx, names.AgentsBucket())
	require.NoError(t, err)
	keys, err := kv.Keys(ctx)
	require.NoError(t, err)
	require.Empty(t, keys)
}

// TestAgentEncoderIsEncode: the agents record encoded with the last
// record's apps reused is msg.Encode's, byte for byte, through random
// records whose apps change or not, with errors and invalid fields.
func TestAgentEncoderIsEncode(t *testing.T) {
	t.Parallel()
	rng := rand.New(rand.NewPCG(1, 2))
	var enc agentEncoder
	apps := map[string]int64{}
	for i := range 500 {
		if rng.IntN(3) == 0 {
			apps = maps.Clone(apps)
			for range 1 + rng.IntN(3) {
				name := fmt.Sprintf("app-%d", rng.IntN(30))
				switch rng.IntN(8) {
				case 0:
					delete(apps, name)
				case 1:
					apps["Not A Name"] = 1
				default:
					apps[name] = int64(rng.IntN(4))
				}
			}
			if rng.IntN(4) == 0 {
				delete(apps, "Not A Name")
			}
		}
		m := &msg.Agent{Node: "lb-1", AppliedRevision: uint64(i), Apps: apps, Mode: msg.ModeDynamic, UpdatedAt: time.Date(2026, 12, 6, 0, 0, i, 0, time.UTC),
			LastPush: &msg.ConfigChange{At: time.Date(2026, 12, 6, 0, 0, 0, 0, time.UTC), DurationMS: 1.5, Revision: uint64(i)}}
		if rng.IntN(10) == 0 {
			m.Errors = map[string]string{"app-1": `nginx -t: "apps":null`}
		}
		if rng.IntN(20) == 0 {
			m.Node = "Not A Node!"
		}
		mine := *m
		want, wantErr := msg.Encode(m)
		got, err := enc.encode(&mine)
		if wantErr != nil {
			require.EqualError(t, err, wantErr.Error(), "record %d", i)
			continue
		}
		require.NoError(t, err, "record %d", i)
		require.Equal(t, string(want), string(got), "record %d", i)
	}
}
