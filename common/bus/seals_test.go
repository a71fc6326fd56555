package bus

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"encoding/base64"
	"fmt"
	"math"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/require"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest"

	"github.com/berthhq/berth/common/msg"
)

// shiftClock gives c's record keys a clock offset that the test can move
// while watchers run; call it before starting any.
func shiftClock(c *Conn) *atomic.Int64 {
	var off atomic.Int64
	c.seals.now = func() time.Time { return time.Now().Add(time.Duration(off.Load())) }
	return &off
}

// forgeAt seals body for where/key/op with keys' signer and any at, as a
// writer whose clock is wrong, or who stole the key, would.
func forgeAt(keys *Keys, kind, where, key, op string, at uint64, body []byte) []byte {
	atHex := []byte(fmt.Sprintf("%016x", at))
	var buf bytes.Buffer
	signedInput(&buf, kind, where, key, op, atHex, body)
	sig := ed25519.Sign(keys.signer, buf.Bytes())
	out := append([]byte(nil), body[:len(body)-1]...)
	out = append(out, `,"seal":"`...)
	out = append(out, atHex...)
	out = append(out, '.')
	out = base64.RawURLEncoding.AppendEncode(out, sig)
	return append(out, '"', '}')
}

func TestCheckAt(t *testing.T) {
	t.Parallel()
	now := time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)
	ns := func(d time.Duration) uint64 { return uint64(now.Add(d).UnixNano()) }
	tests := []struct {
		name   string
		at     uint64
		stored time.Time
		want   error
	}{
		{"now", ns(0), now, nil},
		{"4 minutes ahead: a clock within tolerance", ns(4 * time.Minute), time.Time{}, nil},
		{"an hour ahead", ns(time.Hour), time.Time{}, ErrSealAhead},
		{"2^63-1", math.MaxInt64, time.Time{}, ErrSealAhead},
		{"2^63", 1 << 63, time.Time{}, ErrSealAhead},
		{"2^64-1", math.MaxUint64, time.Time{}, ErrSealAhead},
		{"a message sealed an hour ago", ns(-time.Hour), time.Time{}, nil},
		{"stored an hour after its seal, read an hour later: its owner was down", ns(-2 * time.Hour), now.Add(-2 * time.Hour).Add(50 * time.Millisecond), nil},
		{"stored 4 minutes after its seal: clocks apart, or a fresh copy", ns(-4 * time.Minute), now, nil},
		{"stored 6 minutes after its seal: a copy", ns(-6 * time.Minute), now, ErrReplayed},
		{"stored a day after its seal: a stash", ns(-24 * time.Hour), now, ErrReplayed},
		{"stored before its seal: the writer's clock ahead of NATS", ns(time.Minute), now, nil},
		{"sealed now, stored by a NATS whose clock is 10 minutes ahead", ns(0), now.Add(10 * time.Minute), nil},
		{"sealed 6 minutes ago, stored by a NATS whose clock is 10 minutes ahead", ns(-6 * time.Minute), now.Add(10 * time.Minute), ErrReplayed},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			got, err := checkAt(tc.at, now, tc.stored, sealAhead, copyAge)
			if tc.want != nil {
				require.ErrorIs(t, err, tc.want)
				require.True(t, forgery(err), "counted like a forgery")
				return
			}
			require.NoError(t, err)
			require.Equal(t, int64(tc.at), got)
		})
	}
}

// TestNextAtSaturates: whatever floor a writer saw or last at it gave, it
// never seals more than sealAhead past its clock, and never overflows.
func TestNextAtSaturates(t *testing.T) {
	t.Parallel()
	n, err := msg.NewNames("acme")
	require.NoError(t, err)
	keys := testSealers(t, n)[RoleHealthd].keys
	now := time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)
	limit := now.Add(sealAhead).UnixNano()
	tests := []struct {
		name        string
		clock       time.Time
		floor, last int64
		want        int64
	}{
		{"nothing seen", now, 0, 0, now.UnixNano()},
		{"above a floor a minute ahead (another checker's clock)", now, now.Add(time.Minute).UnixNano(), 0, now.Add(time.Minute).UnixNano() + 1},
		{"a floor at 2^63-1", now, math.MaxInt64, 0, limit},
		{"a last at at 2^63-1 (a clock set back since)", now, 0, math.MaxInt64, limit},
		{"a clock at 2^63-1", time.Unix(0, math.MaxInt64), math.MaxInt64, math.MaxInt64, math.MaxInt64},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			s := newSealer(keys, n)
			s.now = func() time.Time { return tc.clock }
			s.last.Store(tc.last)
			require.Equal(t, tc.want, s.nextAt(tc.floor))
			require.Equal(t, max(tc.want, tc.last), s.last.Load())
		})
	}

	t.Run("a far-future value of its own bucket moves no floor", func(t *testing.T) {
		t.Parallel()
		s := newSealer(keys, n)
		forged := forgeAt(keys, kindKV, n.HealthBucket(), "web.a", opPut, math.MaxInt64, []byte(`{"status":"unhealthy"}`))
		_, _, err := s.open(kindKV, n.HealthBucket(), "web.a", opPut, forged, time.Now())
		require.ErrorIs(t, err, ErrSealAhead)
		require.Zero(t, s.floor(kindKV, n.HealthBucket()))
		v, err := s.seal(kindKV, n.HealthBucket(), "web.a", opPut, []byte(`{"status":"healthy"}`))
		require.NoError(t, err)
		_, at, err := s.open(kindKV, n.HealthBucket(), "web.a", opPut, v, time.Now())
		require.NoError(t, err)
		require.InDelta(t, time.Now().UnixNano(), at, float64(time.Minute))
	})
}

// view is a running watcher of bucket over conn and what it holds.
func watchView(t *testing.T, conn *Conn, bucket string) (*stringView, *Watcher[string]) {
	t.Helper()
	v := &stringView{}
	w := NewWatcher(conn, bucket, decodeString, v, zaptest.NewLogger(t))
	return v, w
}

func (v *stringView) loaded() bool {
	v.mu.Lock()
	defer v.mu.Unlock()
	return v.ready
}

// settle starts w and waits for its first snapshot.
func settle(t *testing.T, v *stringView, w *Watcher[string]) {
	t.Helper()
	startWatcher(t, w)
	require.Eventually(t, v.loaded, 5*time.Second, 5*time.Millisecond)
}

// sealAttack is a server with the roles, their sealed connections, and
// raw connections for the attackers.
type sealAttack struct {
	env                 authEnv
	sched, health, lb   *Conn
	schedClock, lbClock *atomic.Int64
	reader              *nats.Conn
}

func newSealAttack(t *testing.T) *sealAttack {
	t.Helper()
	env := startAuthServer(t, "acme")
	a := &sealAttack{env: env}
	a.sched, a.health, a.lb = env.sealedRoles(t)
	a.schedClock, a.lbClock = shiftClock(a.sched), shiftClock(a.lb)
	var err error
	a.reader, err = nats.Connect(env.url, nkeyOpt(t, env.seeds[RoleReader]))
	require.NoError(t, err)
	t.Cleanup(a.reader.Close)
	return a
}

// raw is a plain NATS connection with role's credential.
func (a *sealAttack) raw(t *testing.T, role string) *nats.Conn {
	t.Helper()
	nc, err := nats.Connect(a.env.url, nkeyOpt(t, a.env.seeds[role]))
	require.NoError(t, err)
	t.Cleanup(nc.Close)
	return nc
}

// copyKey has the server copy the last stored message of fromBucket/from
// (value or marker, headers included) onto toBucket/to, with the reader's
// credential, and waits until it is stored there.
func (a *sealAttack) copyKey(t *testing.T, fromBucket, from, toBucket, to string) {
	t.Helper()
	req := fmt.Sprintf(`{"last_by_subj":"$KV.%s.%s"}`, fromBucket, from)
	before := a.stored(t, toBucket, to)
	require.NoError(t, a.reader.PublishRequest("$JS.API.DIRECT.GET.KV_"+fromBucket, "$KV."+toBucket+"."+to, []byte(req)))
	require.Eventually(t, func() bool { return a.stored(t, toBucket, to) > before }, 5*time.Second, 5*time.Millisecond,
		"the copy of %s/%s reached %s/%s", fromBucket, from, toBucket, to)
}

// stored is the stream sequence of the last message of bucket/key, 0 for none.
func (a *sealAttack) stored(t *testing.T, bucket, key string) uint64 {
	t.Helper()
	m, err := a.reader.Request("$JS.API.DIRECT.GET.KV_"+bucket+".$KV."+bucket+"."+key, nil, 2*time.Second)
	require.NoError(t, err)
	if len(m.Data) == 0 && m.Header.Get("Status") == "404" {
		return 0
	}
	v := m.Header.Values(jetstream.SequenceHeader)
	var seq uint64
	_, err = fmt.Sscan(v[len(v)-1], &seq)
	require.NoError(t, err)
	return seq
}

func has(v *stringView, key string) bool { _, ok := v.get(key); return ok }

// TestSealedRecordAttacks plays the second audit's confirmed findings on
// sealed records with the roles' real credentials: each forged or
// replayed value reaches the bucket and is refused by the watchers that
// run then and by one that starts after it, and counted like a forgery;
// the owner's own next write goes through.
func TestSealedRecordAttacks(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		play func(t *testing.T, a *sealAttack)
	}{
		{"health sealed by healthd's key at 2^63-1", func(t *testing.T, a *sealAttack) {
			n := a.env.n
			health, err := a.health.KV(ctxT(t), n.HealthBucket())
			require.NoError(t, err)
			// healthd follows its own bucket, as it does when it runs.
			own, ownW := watchView(t, a.health, n.HealthBucket())
			settle(t, own, ownW)
			lbView, lbW := watchView(t, a.lb, n.HealthBucket())
			settle(t, lbView, lbW)
			_, err = health.Put(ctxT(t), "web.a", []byte(`{"status":"healthy","n":1}`))
			require.NoError(t, err)
			require.Eventually(t, func() bool { return has(lbView, "web.a") && has(own, "web.a") }, 5*time.Second, 5*time.Millisecond)

			forged := forgeAt(a.health.seals.keys, kindKV, n.HealthBucket(), "web.a", opPut, math.MaxInt64, []byte(`{"status":"unhealthy"}`))
			_, err = a.raw(t, RoleHealthd).Request("$KV."+n.HealthBucket()+".web.a", forged, 2*time.Second)
			require.NoError(t, err)
			require.Eventually(t, func() bool { return a.lb.Forged() >= 1 && a.health.Forged() >= 1 }, 5*time.Second, 5*time.Millisecond,
				"lbagent dropped %d, healthd %d", a.lb.Forged(), a.health.Forged())

			_, err = health.Put(ctxT(t), "web.a", []byte(`{"status":"healthy","n":2}`))
			require.NoError(t, err)
			require.Eventually(t, func() bool { v, _ := lbView.get("web.a"); return v == `{"status":"healthy","n":2}` }, 5*time.Second, 5*time.Millisecond,
				"healthd's next write reaches lbagent")
			fresh, freshW := watchView(t, a.lb, n.HealthBucket())
			settle(t, fresh, freshW)
			v, _ := fresh.get("web.a")
			require.Equal(t, `{"status":"healthy","n":2}`, v)
		}},
		{"lbagent's record sealed by lbagent's key an hour ahead", func(t *testing.T, a *sealAttack) {
			n := a.env.n
			require.NoError(t, a.lb.EnsureBuckets(ctxT(t), MustOwnedBuckets(n, RoleLBAgent)))
			agents, err := a.lb.KV(ctxT(t), n.AgentsBucket())
			require.NoError(t, err)
			// The scheduler follows the agents bucket; lbagent never does.
			view, w := watchView(t, a.sched, n.AgentsBucket())
			settle(t, view, w)
			_, err = agents.Put(ctxT(t), "edge-1", []byte(`{"applied_revision":1}`))
			require.NoError(t, err)
			require.Eventually(t, func() bool { return has(view, "edge-1") }, 5*time.Second, 5*time.Millisecond)

			forged := forgeAt(a.lb.seals.keys, kindKV, n.AgentsBucket(), "edge-1", opPut, uint64(time.Now().Add(time.Hour).UnixNano()), []byte(`{"applied_revision":999999}`))
			_, err = a.raw(t, RoleLBAgent).Request("$KV."+n.AgentsBucket()+".edge-1", forged, 2*time.Second)
			require.NoError(t, err)
			require.Eventually(t, func() bool { return a.sched.Forged() >= 1 }, 5*time.Second, 5*time.Millisecond)

			_, err = agents.Put(ctxT(t), "edge-1", []byte(`{"applied_revision":2}`))
			require.NoError(t, err)
			require.Eventually(t, func() bool { v, _ := view.get("edge-1"); return v == `{"applied_revision":2}` }, 5*time.Second, 5*time.Millisecond,
				"the scheduler takes lbagent's next heartbeat")
		}},
		{"a live instance stashed, deleted, its tombstone expired, copied back", func(t *testing.T, a *sealAttack) {
			n := a.env.n
			// A copy is stale copyAge after its seal: 2 s here, so that
			// the test waits that long and not 5 minutes.
			a.lb.seals.maxCopy, a.sched.seals.maxCopy = 2*time.Second, 2*time.Second
			instances, err := a.sched.KV(ctxT(t), n.InstancesBucket())
			require.NoError(t, err)
			var ownerDrops sync.Map
			owner := NewWatcher(a.sched, n.InstancesBucket(), decodeString, &stringView{}, zaptest.NewLogger(t))
			owner.OnDrop = func(key string, _ error) { ownerDrops.Store(key, true) }
			startWatcher(t, owner)
			running, w := watchView(t, a.lb, n.InstancesBucket())
			settle(t, running, w)
			_, err = instances.Put(ctxT(t), "web.a", []byte(`{"address":"10.0.0.1:80"}`))
			require.NoError(t, err)
			put := time.Now() // after the seal
			require.Eventually(t, func() bool { return has(running, "web.a") }, 5*time.Second, 5*time.Millisecond)

			a.copyKey(t, n.InstancesBucket(), "web.a", n.HealthBucket(), "web.stash") // refused there, but stored
			require.NoError(t, instances.Delete(ctxT(t), "web.a"))
			require.Eventually(t, func() bool { return !has(running, "web.a") }, 5*time.Second, 5*time.Millisecond)

			a.lbClock.Store(int64(11 * time.Minute)) // past the 10-minute tombstone
			// The behaviour under test: the copy is stale by the server's
			// clock, which only real time moves.
			time.Sleep(time.Until(put.Add(2*time.Second + 500*time.Millisecond)))
			// The owner keeps writing (its other keys); it changes nothing.
			_, err = instances.Put(ctxT(t), "web.b", []byte(`{"address":"10.0.0.2:80"}`))
			require.NoError(t, err)
			require.Eventually(t, func() bool { return has(running, "web.b") }, 5*time.Second, 5*time.Millisecond)
			before := a.lb.Forged()
			a.copyKey(t, n.HealthBucket(), "web.stash", n.InstancesBucket(), "web.a")
			require.Eventually(t, func() bool { return a.lb.Forged() > before }, 5*time.Second, 5*time.Millisecond, "the running watcher refused the replay")
			require.False(t, has(running, "web.a"), "the deleted instance does not come back")
			fresh, freshW := watchView(t, a.lb, n.InstancesBucket())
			settle(t, fresh, freshW)
			require.False(t, has(fresh, "web.a"), "a watcher that starts now does not take it either")
			require.GreaterOrEqual(t, a.lb.Forged(), before+2)
			require.Eventually(t, func() bool { _, ok := ownerDrops.Load("web.a"); return ok }, 5*time.Second, 5*time.Millisecond,
				"the owner's watcher refuses it too, so its guard writes the key again")
		}},
		{"a deleted instance's tombstone flushed out by junk keys, then copied back", func(t *testing.T, a *sealAttack) {
			n := a.env.n
			instances, err := a.sched.KV(ctxT(t), n.InstancesBucket())
			require.NoError(t, err)
			running, w := watchView(t, a.lb, n.InstancesBucket())
			w.fence.max = 8 // 16,384 in production
			settle(t, running, w)
			_, err = instances.Put(ctxT(t), "web.a", []byte(`{"address":"10.0.0.1:80"}`))
			require.NoError(t, err)
			require.Eventually(t, func() bool { return has(running, "web.a") }, 5*time.Second, 5*time.Millisecond)
			a.copyKey(t, n.InstancesBucket(), "web.a", n.HealthBucket(), "web.stash")
			require.NoError(t, instances.Delete(ctxT(t), "web.a"))

			// Junk keys, each refused and then answered by a sealed delete,
			// as the guard does.
			for i := range 20 {
				key := fmt.Sprintf("junk.k%02d", i)
				seen := a.lb.Forged()
				require.NoError(t, a.reader.PublishRequest("$JS.API.STREAM.INFO.KV_"+n.HealthBucket(), "$KV."+n.InstancesBucket()+"."+key, nil))
				require.Eventually(t, func() bool { return a.lb.Forged() > seen }, 5*time.Second, 5*time.Millisecond, "%s reached the watcher", key)
				require.NoError(t, instances.Delete(ctxT(t), key))
			}
			before := a.lb.Forged()
			a.copyKey(t, n.HealthBucket(), "web.stash", n.InstancesBucket(), "web.a")
			require.Eventually(t, func() bool { return a.lb.Forged() > before }, 5*time.Second, 5*time.Millisecond, "the running watcher refused the replay")
			require.False(t, has(running, "web.a"), "the deleted instance does not come back")
		}},
		{"a rollup header copied into the instances bucket", func(t *testing.T, a *sealAttack) {
			n := a.env.n
			instances, err := a.sched.KV(ctxT(t), n.InstancesBucket())
			require.NoError(t, err)
			for _, k := range []string{"web.a", "web.b"} {
				_, err := instances.Put(ctxT(t), k, []byte(`{"address":"10.0.0.1:80"}`))
				require.NoError(t, err)
			}
			// healthd's credential may reconfigure its own bucket: it allows
			// rollups there and stores a message that asks for one.
			hd := a.raw(t, RoleHealthd)
			js, err := jetstream.New(hd)
			require.NoError(t, err)
			st, err := js.Stream(ctxT(t), "KV_"+n.HealthBucket())
			require.NoError(t, err)
			sc := st.CachedInfo().Config
			sc.AllowRollup = true
			_, err = js.UpdateStream(ctxT(t), sc)
			require.NoError(t, err)
			roll := nats.NewMsg("$KV." + n.HealthBucket() + ".web.roll")
			roll.Header.Set("Nats-Rollup", "all")
			roll.Data = []byte(`{}`)
			_, err = hd.RequestMsg(roll, 2*time.Second)
			require.NoError(t, err)
			_, err = hd.Request("$KV."+n.HealthBucket()+".web.plain", []byte(`{}`), 2*time.Second)
			require.NoError(t, err)

			require.NoError(t, a.reader.PublishRequest("$JS.API.DIRECT.GET.KV_"+n.HealthBucket(), "$KV."+n.InstancesBucket()+".web.x",
				[]byte(`{"last_by_subj":"$KV.`+n.HealthBucket()+`.web.roll"}`)))
			// A second copy after it, through the same stream: once it has
			// landed, the first one has been dealt with.
			a.copyKey(t, n.HealthBucket(), "web.plain", n.InstancesBucket(), "web.y")
			require.Zero(t, a.stored(t, n.InstancesBucket(), "web.x"), "the bucket refuses a rollup")
			keys, err := instances.Keys(ctxT(t))
			require.NoError(t, err)
			require.ElementsMatch(t, []string{"web.a", "web.b", "web.y"}, keys, "no value was erased")
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			tc.play(t, newSealAttack(t))
		})
	}
}

// TestOwnerSilent: while the owner of a bucket writes nothing (the
// scheduler down for ten resyncs), readers running and new keep every
// value it left, and when it comes back and has written some keys again
// but not yet the others, a reader that starts then takes them all.
func TestOwnerSilent(t *testing.T) {
	t.Parallel()
	a := newSealAttack(t)
	n := a.env.n
	instances, err := a.sched.KV(ctxT(t), n.InstancesBucket())
	require.NoError(t, err)
	keys := []string{"web.a", "web.b", "web.c"}
	for _, k := range keys {
		_, err := instances.Put(ctxT(t), k, []byte(`{"address":"10.0.0.1:80"}`))
		require.NoError(t, err)
	}
	running, w := watchView(t, a.lb, n.InstancesBucket())
	w.ResyncEvery = 50 * time.Millisecond // a snapshot again and again meanwhile
	settle(t, running, w)

	const resync = 30 * time.Second
	a.lbClock.Store(int64(10 * resync))
	fresh, freshW := watchView(t, a.lb, n.InstancesBucket())
	settle(t, fresh, freshW)
	for _, k := range keys {
		require.True(t, has(fresh, k), "a watcher that starts after ten silent resyncs takes %s", k)
		require.True(t, has(running, k), "a running watcher keeps %s", k)
	}

	// The scheduler is back, ten resyncs later by its clock too, and has
	// written web.a again; web.b and web.c come next.
	a.schedClock.Store(int64(10 * resync))
	_, err = instances.Put(ctxT(t), "web.a", []byte(`{"address":"10.0.0.2:80"}`))
	require.NoError(t, err)
	require.Eventually(t, func() bool { v, _ := running.get("web.a"); return v == `{"address":"10.0.0.2:80"}` }, 5*time.Second, 5*time.Millisecond)
	later, laterW := watchView(t, a.lb, n.InstancesBucket())
	settle(t, later, laterW)
	for _, k := range keys {
		require.True(t, has(later, k), "a watcher that starts while the owner writes everything again takes %s", k)
		require.True(t, has(running, k), "a running watcher keeps %s", k)
	}
	require.Zero(t, a.lb.Forged())
}

func TestSealFence(t *testing.T) {
	t.Parallel()
	clock := func() time.Time { return time.Unix(0, 0) }
	type step struct {
		op   string // put, del, gone, wait
		key  string
		at   int64
		want bool
	}
	tests := []struct {
		name  string
		max   int
		steps []step
	}{
		{"newer values pass, older ones do not", 10, []step{
			{"put", "a", 10, true}, {"put", "a", 10, true}, {"put", "a", 11, true}, {"put", "a", 9, false}, {"del", "a", 5, false},
		}},
		{"a tombstone refuses an older put", 10, []step{
			{"put", "a", 10, true}, {"del", "a", 20, true}, {"put", "a", 15, false}, {"put", "a", 21, true},
		}},
		{"an expired tombstone leaves a floor", 10, []step{
			{"put", "a", 10, true}, {"del", "a", 20, true}, {"wait", "", int64(11 * time.Minute), true},
			{"put", "a", 15, false}, {"put", "b", 19, false}, {"put", "b", 25, true},
		}},
		{"tombstones flushed by junk leave a floor", 2, []step{
			{"put", "a", 10, true}, {"del", "a", 20, true},
			{"del", "j1", 30, true}, {"del", "j2", 31, true}, {"del", "j3", 32, true},
			{"put", "a", 15, false}, {"put", "a", 33, true},
		}},
		{"a key a snapshot no longer has is a tombstone", 10, []step{
			{"put", "a", 10, true}, {"gone", "a", 0, true}, {"put", "a", 9, false}, {"put", "a", 11, true},
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			base := time.Duration(0)
			f := newSealFence(func() time.Time { return clock().Add(base) })
			f.max = tc.max
			for i, s := range tc.steps {
				var got bool
				switch s.op {
				case "put":
					got = f.put(s.key, s.at)
				case "del":
					got = f.del(s.key, s.at)
				case "gone":
					f.gone(s.key)
					got = true
				case "wait":
					base += time.Duration(s.at)
					got = true
				}
				require.Equal(t, s.want, got, "step %d: %s %s %d", i, s.op, s.key, s.at)
			}
			require.LessOrEqual(t, f.tombs.Len(), tc.max)
		})
	}

	t.Run("a new bucket starts over", func(t *testing.T) {
		t.Parallel()
		f := newSealFence(clock)
		require.True(t, f.put("a", 10))
		require.True(t, f.del("a", 20))
		f.reset()
		require.True(t, f.put("a", 1))
	})
}

// TestGetTakesTheServersTime: a value copied through a direct get carries
// the original's timestamp header before the server's own; Get's copy-age
// check reads the server's, so an old stash copied back is refused.
func TestGetTakesTheServersTime(t *testing.T) {
	t.Parallel()
	a := newSealAttack(t)
	n := a.env.n
	a.lb.seals.maxCopy = time.Second
	instances, err := a.sched.KV(ctxT(t), n.InstancesBucket())
	require.NoError(t, err)
	_, err = instances.Put(ctxT(t), "web.a", []byte(`{"address":"10.0.0.1:80"}`))
	require.NoError(t, err)
	put := time.Now() // after the seal
	lbKV, err := a.lb.KV(ctxT(t), n.InstancesBucket())
	require.NoError(t, err)
	_, err = lbKV.Get(ctxT(t), "web.a")
	require.NoError(t, err)
	a.copyKey(t, n.InstancesBucket(), "web.a", n.HealthBucket(), "web.stash")
	// The behaviour under test: the copy is stale by the server's clock,
	// which only real time moves.
	time.Sleep(time.Until(put.Add(1500 * time.Millisecond)))
	a.copyKey(t, n.HealthBucket(), "web.stash", n.InstancesBucket(), "web.a")
	_, err = lbKV.Get(ctxT(t), "web.a")
	require.ErrorIs(t, err, ErrReplayed)
	_, err = lbKV.Get(ctxT(t), "web.none")
	require.ErrorIs(t, err, ErrKeyNotFound)
}

// TestGetRaisesTheFloor: an lbagent, which never watches its own bucket,
// reads its node's last record once (report.Reporter does): its next put
// then seals above it, and the scheduler takes it, even though the
// previous lbagent of the node had a clock three minutes ahead.
func TestGetRaisesTheFloor(t *testing.T) {
	t.Parallel()
	a := newSealAttack(t)
	n := a.env.n
	require.NoError(t, a.lb.EnsureBuckets(ctxT(t), MustOwnedBuckets(n, RoleLBAgent)))
	view, w := watchView(t, a.sched, n.AgentsBucket())
	settle(t, view, w)
	a.lbClock.Store(int64(3 * time.Minute))
	old, err := a.lb.KV(ctxT(t), n.AgentsBucket())
	require.NoError(t, err)
	_, err = old.Put(ctxT(t), "edge-1", []byte(`{"n":1}`))
	require.NoError(t, err)
	require.Eventually(t, func() bool { return has(view, "edge-1") }, 5*time.Second, 5*time.Millisecond)

	next := a.env.sealedConn(t, RoleLBAgent) // restarted, its clock right
	kv, err := next.KV(ctxT(t), n.AgentsBucket())
	require.NoError(t, err)
	_, err = kv.Get(ctxT(t), "edge-1")
	require.NoError(t, err)
	_, err = kv.Put(ctxT(t), "edge-1", []byte(`{"n":2}`))
	require.NoError(t, err)
	require.Eventually(t, func() bool { v, _ := view.get("edge-1"); return v == `{"n":2}` }, 5*time.Second, 5*time.Millisecond)
	require.Zero(t, a.sched.Forged())
}

// BenchmarkResealPass measures what an owner's periodic rewrite costs:
// one pass puts 10,000 instance records one after another, as the
// scheduler's resync does, into a file-backed bucket of an in-process
// server with Berth's roles, while an lbagent watches (and verifies) them.
// The floor is the same pass without seals, on a server without roles.
// "listing" is what a periodic resync pays now that it puts only what
// changed (and a tenth of the keys in turn): one listing of the bucket.
// Run with -benchtime 3x; puts/s and the share of a 30 s resync that a
// pass takes are reported.
func BenchmarkResealPass(b *testing.B) {
	const keys, resync = 10000, 30 * time.Second
	n, err := msg.NewNames("acme")
	require.NoError(b, err)
	now := time.Now().UTC()
	records := make([][]byte, keys)
	for i := range records {
		records[i], err = msg.Encode(&msg.Instance{App: "web", ID: fmt.Sprintf("i%07d", i), Generation: 3, Term: 7, Address: "10.0.0.1:32768",
			State: msg.StateRunning, Weight: 1, ContainerID: strings.Repeat("f", 64), StartedAt: &now, UpdatedAt: now})
		require.NoError(b, err)
	}
	pass := func(b *testing.B, kv *KV) {
		for i, r := range records {
			if _, err := kv.Put(context.Background(), fmt.Sprintf("web.i%07d", i), r); err != nil {
				b.Fatal(err)
			}
		}
	}
	report := func(b *testing.B) {
		perPass := b.Elapsed().Seconds() / float64(b.N)
		b.ReportMetric(float64(keys)/perPass, "puts/s")
		b.ReportMetric(100*perPass/resync.Seconds(), "%_of_resync")
	}
	b.Run("plain put (floor)", func(b *testing.B) {
		s, err := Embedded(EmbeddedOptions{Port: -1, StoreDir: b.TempDir()}, zap.NewNop())
		require.NoError(b, err)
		b.Cleanup(s.Shutdown)
		c, err := Connect(context.Background(), Options{URL: s.URL()}, zap.NewNop())
		require.NoError(b, err)
		b.Cleanup(c.Close)
		require.NoError(b, c.EnsureBuckets(context.Background(), ContractBuckets(n)))
		kv, err := c.KV(context.Background(), n.InstancesBucket())
		require.NoError(b, err)
		for b.Loop() {
			pass(b, kv)
		}
		report(b)
	})
	// sealed is a server with Berth's roles, the scheduler's instances
	// bucket, and an lbagent watching (and verifying) it.
	sealed := func(b *testing.B) (*KV, *Conn) {
		seeds, err := EnsureCredentials(filepath.Join(b.TempDir(), "creds"))
		require.NoError(b, err)
		users, err := AuthUsers(n, seeds)
		require.NoError(b, err)
		s, err := Embedded(EmbeddedOptions{Port: -1, StoreDir: b.TempDir(), Users: users}, zap.NewNop())
		require.NoError(b, err)
		b.Cleanup(s.Shutdown)
		conn := func(role string) *Conn {
			k, err := LoadKeys(seeds[role])
			require.NoError(b, err)
			c, err := Connect(context.Background(), Options{URL: s.URL(), NKeyFile: seeds[role], Keys: k, Names: n}, zap.NewNop())
			require.NoError(b, err)
			b.Cleanup(c.Close)
			return c
		}
		sched, lb := conn(RoleScheduler), conn(RoleLBAgent)
		require.NoError(b, sched.EnsureBuckets(context.Background(), MustOwnedBuckets(n, RoleScheduler)))
		kv, err := sched.KV(context.Background(), n.InstancesBucket())
		require.NoError(b, err)
		w := NewWatcher(lb, n.InstancesBucket(), decodeString, HandlerFuncs[string]{
			OnSnapshot: func([]Event[string], uint64) {}, OnUpdate: func(Event[string]) {}}, zap.NewNop())
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() { done <- w.Run(ctx) }()
		b.Cleanup(func() { cancel(); <-done })
		return kv, lb
	}
	b.Run("sealed put, one watcher verifying", func(b *testing.B) {
		kv, lb := sealed(b)
		for b.Loop() {
			pass(b, kv)
		}
		report(b)
		if lb.Forged() != 0 {
			b.Fatalf("the watcher refused %d values", lb.Forged())
		}
	})
	// What a resync costs when it puts nothing: the listing of the bucket
	// that finds stray keys and each key's revision.
	b.Run("listing", func(b *testing.B) {
		kv, _ := sealed(b)
		pass(b, kv)
		for b.Loop() {
			listed := 0
			if _, _, err := kv.Sweep(context.Background(), func(string, uint64) bool { listed++; return true }, DeleteMarkerAge); err != nil || listed != keys {
				b.Fatal(err, listed)
			}
		}
		b.ReportMetric(100*b.Elapsed().Seconds()/float64(b.N)/resync.Seconds(), "%_of_resync")
	})
}

// TestNodeReadsItsOwnRecord: an lbagent with a node key of its own, which
// no trust line names and which does not follow the node-key directory,
// reads its node's record (report.Reporter does, before its first
// heartbeat) without refusing it as forged.
func TestNodeReadsItsOwnRecord(t *testing.T) {
	t.Parallel()
	env := newKeyEnv(t, "nk", "lb-1")
	n, ctx := env.n, ctxT(t)
	sched := env.daemon(t, env.path(RoleScheduler, ""))
	require.NoError(t, sched.EnsureBuckets(ctx, MustOwnedBuckets(n, RoleScheduler)))
	env.publishNodes(t, sched.Conn, env.credentials(t))
	first := env.daemon(t, env.path(RoleLBAgent, "lb-1"))
	kv, err := first.KV(ctx, n.AgentsBucket())
	require.NoError(t, err)
	_, err = kv.Put(ctx, "lb-1", []byte(`{"node":"lb-1"}`))
	require.NoError(t, err)

	next := env.daemon(t, env.path(RoleLBAgent, "lb-1"))
	kv, err = next.KV(ctx, n.AgentsBucket())
	require.NoError(t, err)
	e, err := kv.Get(ctx, "lb-1")
	require.NoError(t, err)
	require.Equal(t, `{"node":"lb-1"}`, string(e.Value))
	require.Zero(t, next.Forged())
}
