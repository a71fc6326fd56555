package bus

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/require"
	"go.uber.org/zap/zaptest"

	"github.com/berthhq/berth/common/msg"
)

// testSealers returns a sealer per writing role under names n, and one
// that trusts the roles but holds no key of its own to sign with (a pure
// reader, as the reader role is).
func testSealers(t *testing.T, n msg.Names) map[string]*sealer {
	t.Helper()
	seeds, err := EnsureCredentials(filepath.Join(t.TempDir(), "creds"))
	require.NoError(t, err)
	out := map[string]*sealer{}
	for _, role := range Roles() {
		k, err := LoadKeys(seeds[role])
		require.NoError(t, err, role)
		out[role] = newSealer(k, n)
	}
	return out
}

func TestSealOpen(t *testing.T) {
	t.Parallel()
	n, err := msg.NewNames("acme")
	require.NoError(t, err)
	s := testSealers(t, n)
	body := []byte(`{"app":"web","id":"x"}`)
	sealed, err := s[RoleScheduler].seal(kindKV, n.InstancesBucket(), "web.x", opPut, body)
	require.NoError(t, err)

	var fields map[string]any
	require.NoError(t, json.Unmarshal(sealed, &fields), "a sealed value is still one JSON object: %s", sealed)
	require.Equal(t, "web", fields["app"])
	require.Contains(t, fields, "seal")

	for _, role := range Roles() {
		got, _, err := s[role].open(kindKV, n.InstancesBucket(), "web.x", opPut, sealed, time.Time{})
		require.NoError(t, err, "every role verifies the scheduler's record")
		require.Equal(t, string(body), string(got))
	}

	empty, err := s[RoleHealthd].seal(kindMsg, n.HealthSubject("web", "x"), "", opMsg, []byte("{}"))
	require.NoError(t, err)
	got, _, err := s[RoleReader].open(kindMsg, n.HealthSubject("web", "x"), "", opMsg, empty, time.Time{})
	require.NoError(t, err)
	require.Equal(t, "{}", string(got))

	_, err = s[RoleScheduler].seal(kindKV, n.AppsBucket(), "web", opPut, []byte(`"not an object"`))
	require.ErrorContains(t, err, "not a JSON object")

	healthSealed, err := s[RoleHealthd].seal(kindKV, n.HealthBucket(), "web.x", opPut, body)
	require.NoError(t, err)
	lbSealed, err := s[RoleLBAgent].seal(kindKV, n.InstancesBucket(), "web.x", opPut, body)
	require.NoError(t, err)
	tampered := []byte(strings.Replace(string(sealed), `"x"`, `"y"`, 1))
	flipped := append([]byte(nil), sealed...)
	flipped[len(flipped)-5] ^= 1

	refused := []struct {
		name      string
		kind, at  string
		key, op   string
		value     []byte
		wantError error
	}{
		{"unsealed", kindKV, n.InstancesBucket(), "web.x", opPut, body, ErrUnsealed},
		{"empty delete marker", kindKV, n.InstancesBucket(), "web.x", opDel, nil, ErrUnsealed},
		{"JetStream API response", kindKV, n.InstancesBucket(), "web.x", opPut, []byte(`{"type":"io.nats.jetstream.api.v1.stream_info_response"}`), ErrUnsealed},
		{"under another key", kindKV, n.InstancesBucket(), "web.y", opPut, sealed, ErrBadSeal},
		{"in another bucket", kindKV, n.HealthBucket(), "web.x", opPut, sealed, ErrBadSeal},
		{"a put read as a delete", kindKV, n.InstancesBucket(), "web.x", opDel, sealed, ErrBadSeal},
		{"as a message", kindMsg, n.InstancesBucket(), "web.x", opMsg, sealed, ErrBadSeal},
		{"copied from the health bucket", kindKV, n.InstancesBucket(), "web.x", opPut, healthSealed, ErrBadSeal},
		{"sealed by another role's valid key", kindKV, n.InstancesBucket(), "web.x", opPut, lbSealed, ErrBadSeal},
		{"body changed", kindKV, n.InstancesBucket(), "web.x", opPut, tampered, ErrBadSeal},
		{"signature changed", kindKV, n.InstancesBucket(), "web.x", opPut, flipped, ErrBadSeal},
		{"bucket outside the contract", kindKV, "other_bucket", "web.x", opPut, sealed, ErrBadSeal},
	}
	for _, tc := range refused {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			_, _, err := s[RoleLBAgent].open(tc.kind, tc.at, tc.key, tc.op, tc.value, time.Time{})
			require.ErrorIs(t, err, tc.wantError)
		})
	}

	t.Run("a reader without keys strips the seal and checks nothing", func(t *testing.T) {
		t.Parallel()
		var none *sealer
		got, at, err := none.open(kindKV, n.InstancesBucket(), "web.x", opPut, sealed, time.Time{})
		require.NoError(t, err)
		require.Zero(t, at)
		require.Equal(t, string(body), string(got))
		got, _, err = none.open(kindKV, n.InstancesBucket(), "web.x", opPut, body, time.Time{})
		require.NoError(t, err)
		require.Equal(t, string(body), string(got))
		out, err := none.seal(kindKV, n.InstancesBucket(), "web.x", opPut, body)
		require.NoError(t, err)
		require.Equal(t, string(body), string(out), "no key: nothing sealed")
	})

	t.Run("a writer seals above what it saw of its own keys", func(t *testing.T) {
		t.Parallel()
		ahead := newSealer(s[RoleScheduler].keys, n)
		ahead.now = func() time.Time { return time.Unix(0, 1_000_000) }
		behind := newSealer(s[RoleScheduler].keys, n) // the next leader, its clock behind
		behind.now = func() time.Time { return time.Unix(0, 5) }
		v, err := ahead.seal(kindKV, n.AppsBucket(), "web", opPut, body)
		require.NoError(t, err)
		_, at, err := behind.open(kindKV, n.AppsBucket(), "web", opPut, v, time.Time{})
		require.NoError(t, err)
		require.Equal(t, int64(1_000_000), at)
		next, err := behind.seal(kindKV, n.AppsBucket(), "web", opPut, body)
		require.NoError(t, err)
		_, nextAt, err := s[RoleLBAgent].open(kindKV, n.AppsBucket(), "web", opPut, next, time.Time{})
		require.NoError(t, err)
		require.Greater(t, nextAt, at)

		lb := newSealer(s[RoleLBAgent].keys, n)
		_, _, err = lb.open(kindKV, n.AppsBucket(), "web", opPut, v, time.Time{})
		require.NoError(t, err)
		require.Empty(t, lb.floors, "a role keeps no floor of keys it does not own")
	})

	t.Run("ats strictly increase", func(t *testing.T) {
		t.Parallel()
		sc := newSealer(s[RoleScheduler].keys, n)
		sc.now = func() time.Time { return time.Unix(0, 5) }
		a, err := sc.seal(kindKV, n.AppsBucket(), "web", opPut, body)
		require.NoError(t, err)
		b, err := sc.seal(kindKV, n.AppsBucket(), "web", opPut, body)
		require.NoError(t, err)
		_, atA, _, _ := splitSeal(a)
		_, atB, _, _ := splitSeal(b)
		require.Less(t, string(atA), string(atB))
	})
}

func TestLoadKeys(t *testing.T) {
	t.Parallel()
	seeds, err := EnsureCredentials(filepath.Join(t.TempDir(), "creds"))
	require.NoError(t, err)
	file, err := os.ReadFile(seeds[RoleHealthd])
	require.NoError(t, err)
	text := string(file)
	require.True(t, strings.HasPrefix(text, "SU"), "the seed comes first, where nats.go looks for it")
	for _, r := range writerRoles() {
		pub, err := SeedPublicKey(seeds[r])
		require.NoError(t, err)
		require.Contains(t, text, trustPrefix+r+" "+pub+"\n")
	}
	again, err := EnsureCredentials(filepath.Dir(seeds[RoleHealthd]))
	require.NoError(t, err)
	same, err := os.ReadFile(again[RoleHealthd])
	require.NoError(t, err)
	require.Equal(t, text, string(same), "a later call changes nothing")

	dir := t.TempDir()
	write := func(name, content string) string {
		p := filepath.Join(dir, name)
		require.NoError(t, os.WriteFile(p, []byte(content), 0o600))
		return p
	}
	seedOnly := strings.SplitN(text, "\n", 2)[0] + "\n"
	_, err = LoadKeys(write("seed-only.nk", seedOnly))
	require.ErrorContains(t, err, "no berth-trust lines")
	require.ErrorContains(t, err, "scheduler nats-credential")
	_, err = LoadKeys(write("bad-role.nk", seedOnly+trustPrefix+"root UABC\n"))
	require.ErrorContains(t, err, `role "root"`)
	_, err = LoadKeys(write("bad-key.nk", seedOnly+trustPrefix+"scheduler SUAAAA\n"))
	require.ErrorContains(t, err, "not a user public key")
	missing := strings.ReplaceAll(text, trustPrefix+RoleLBAgent, "# nothing")
	_, err = LoadKeys(write("missing.nk", missing))
	require.ErrorContains(t, err, "no trust line for the lbagent role")
	_, err = LoadKeys(seeds[RoleReader])
	require.NoError(t, err)
}

// sealedConn connects with role's credential and its record keys.
func (e authEnv) sealedConn(t *testing.T, role string) *Conn {
	t.Helper()
	k, err := LoadKeys(e.seeds[role])
	require.NoError(t, err)
	c, err := Connect(context.Background(), Options{URL: e.url, Name: role, NKeyFile: e.seeds[role], Keys: k, Names: e.n}, zaptest.NewLogger(t))
	require.NoError(t, err)
	t.Cleanup(c.Close)
	require.NoError(t, c.WaitConnected(ctxT(t)))
	return c
}

// sealedRoles connects the scheduler, healthd and lbagent with their
// record keys, with the buckets of the first two made.
func (e authEnv) sealedRoles(t *testing.T) (sched, health, lb *Conn) {
	t.Helper()
	sched, health, lb = e.sealedConn(t, RoleScheduler), e.sealedConn(t, RoleHealthd), e.sealedConn(t, RoleLBAgent)
	require.NoError(t, sched.EnsureBuckets(ctxT(t), MustOwnedBuckets(e.n, RoleScheduler)))
	require.NoError(t, health.EnsureBuckets(ctxT(t), MustOwnedBuckets(e.n, RoleHealthd)))
	return sched, health, lb
}

// stringView is a handler that keeps the values it was given by key.
type stringView struct {
	mu     sync.Mutex
	values map[string]string
	ready  bool
}

func (v *stringView) Snapshot(evs []Event[string], _ uint64) {
	v.mu.Lock()
	defer v.mu.Unlock()
	v.values, v.ready = map[string]string{}, true
	for _, e := range evs {
		v.values[e.Key] = e.Value
	}
}

func (v *stringView) Update(e Event[string]) {
	v.mu.Lock()
	defer v.mu.Unlock()
	if e.Op == OpDelete {
		delete(v.values, e.Key)
	} else {
		v.values[e.Key] = e.Value
	}
}

func (v *stringView) get(key string) (string, bool) {
	v.mu.Lock()
	defer v.mu.Unlock()
	s, ok := v.values[key]
	return s, ok
}

// TestForgedRecordsAreDropped plays the attacks that subject permissions
// cannot stop, with healthd's valid credential: it has the server itself
// write into the instances bucket, which only the scheduler may write,
// and onto a metrics subject, which only lbagent may publish, as the
// reply to a JetStream API request (a direct get of its own bucket's
// values and delete markers, headers included, or a stream info). Each write is shown to reach the
// stream, and the lbagent's and scheduler's sealed connections act on
// none of it, while the scheduler's own sealed puts and deletes go through.
func TestForgedRecordsAreDropped(t *testing.T) {
	t.Parallel()
	env, ctx := startAuthServer(t, "acme"), ctxT(t)
	n := env.n
	sched, health, lb := env.sealedRoles(t)
	instances, err := sched.KV(ctx, n.InstancesBucket())
	require.NoError(t, err)
	_, err = instances.Put(ctx, "web.a", []byte(`{"address":"10.0.0.1:80"}`))
	require.NoError(t, err)
	_, err = instances.Put(ctx, "web.b", []byte(`{"address":"10.0.0.2:80"}`))
	require.NoError(t, err)

	view := &stringView{}
	w := NewWatcher(lb, n.InstancesBucket(), decodeString, view, zaptest.NewLogger(t))
	startWatcher(t, w)
	require.Eventually(t, func() bool { _, ok := view.get("web.b"); return ok }, 5*time.Second, 5*time.Millisecond)

	var metrics sync.Map
	sub, err := sched.Subscribe(n.AllMetrics(), func(subject string, data []byte) { metrics.Store(string(data), subject) })
	require.NoError(t, err)
	t.Cleanup(func() { _ = sub.Drain() })
	require.NoError(t, sched.Flush(ctx))

	// The attacker: healthd's credential, through nats.go itself.
	opt, err := nats.NkeyOptionFromSeed(env.seeds[RoleHealthd])
	require.NoError(t, err)
	nc, err := nats.Connect(env.url, opt)
	require.NoError(t, err)
	t.Cleanup(nc.Close)
	hkv, err := health.KV(ctx, n.HealthBucket())
	require.NoError(t, err)
	// reflect has the server answer a direct get of one of healthd's own
	// keys (its value or delete marker, headers included) into an instance
	// key: the reply subject is the requester's to choose.
	reflect := func(fromKey, toSubject string) {
		t.Helper()
		req := fmt.Sprintf(`{"last_by_subj":%q}`, "$KV."+n.HealthBucket()+"."+fromKey)
		require.NoError(t, nc.PublishRequest("$JS.API.DIRECT.GET.KV_"+n.HealthBucket(), toSubject, []byte(req)))
	}
	instanceKey := func(key string) string { return "$KV." + n.InstancesBucket() + "." + key }
	raw, err := jetstream.New(nc)
	require.NoError(t, err)
	rawKV, err := raw.KeyValue(ctx, n.InstancesBucket())
	require.NoError(t, err)
	landed := func(key string, op jetstream.KeyValueOp) {
		t.Helper()
		require.Eventually(t, func() bool {
			e, err := rawKV.Get(ctx, key)
			if op == jetstream.KeyValueDelete {
				return err != nil
			}
			return err == nil && e.Operation() == op
		}, 5*time.Second, 5*time.Millisecond, "the forged write of %s reached the stream", key)
	}

	// 1. A put of a record of its own choosing, under a new key.
	_, err = hkv.Put(ctx, "web.evil", []byte(`{"address":"169.254.169.254:80"}`))
	require.NoError(t, err)
	reflect("web.evil", instanceKey("web.evil"))
	landed("web.evil", jetstream.KeyValuePut)

	// 2. A delete marker copied over a live instance.
	_, err = hkv.Put(ctx, "web.gone", []byte(`{}`))
	require.NoError(t, err)
	require.NoError(t, hkv.Delete(ctx, "web.gone"))
	reflect("web.gone", instanceKey("web.a"))
	landed("web.a", jetstream.KeyValueDelete)

	// 3. The scheduler's own sealed record of web.b, copied under web.c.
	e, err := rawKV.Get(ctx, "web.b")
	require.NoError(t, err)
	_, err = nc.Request("$KV."+n.HealthBucket()+".web.copy", e.Value(), 2*time.Second) // healthd may write its bucket
	require.NoError(t, err)
	reflect("web.copy", instanceKey("web.c"))
	landed("web.c", jetstream.KeyValuePut)

	// 4. A JetStream API response delivered as an instance.
	require.NoError(t, nc.PublishRequest("$JS.API.STREAM.INFO.KV_"+n.HealthBucket(), instanceKey("web.api"), nil))
	landed("web.api", jetstream.KeyValuePut)

	// 5. A metrics message of its own choosing, which only lbagent may
	// publish, to the scheduler's autoscaler.
	_, err = hkv.Put(ctx, "web.metrics", []byte(`{"app":"web","requests":1000000}`))
	require.NoError(t, err)
	reflect("web.metrics", n.MetricsSubject("web"))
	require.Eventually(t, func() bool { return sched.Forged() >= 1 }, 5*time.Second, 5*time.Millisecond, "the forged metrics reached the scheduler's connection")

	// The scheduler's real writes after all of it still go through.
	_, err = instances.Put(ctx, "web.real", []byte(`{"address":"10.0.0.9:80"}`))
	require.NoError(t, err)
	require.NoError(t, instances.Delete(ctx, "web.b"))
	require.Eventually(t, func() bool {
		_, real := view.get("web.real")
		_, b := view.get("web.b")
		return real && !b
	}, 5*time.Second, 5*time.Millisecond)

	require.Eventually(t, func() bool { return lb.Forged() >= 4 }, 5*time.Second, 5*time.Millisecond, "lbagent dropped %d", lb.Forged())
	a, ok := view.get("web.a")
	require.True(t, ok, "a copied delete marker deletes nothing")
	require.Equal(t, `{"address":"10.0.0.1:80"}`, a)
	for _, key := range []string{"web.evil", "web.c", "web.api"} {
		_, ok := view.get(key)
		require.False(t, ok, "%s was forged", key)
	}
	metrics.Range(func(k, v any) bool {
		t.Errorf("a forged metrics message reached the scheduler on %v: %v", v, k)
		return true
	})

	// A snapshot taken now holds only what the scheduler sealed: the keys
	// whose last value is forged have no value, web.a included, until the
	// scheduler writes it again (its next resync).
	fresh := &stringView{}
	startWatcher(t, NewWatcher(lb, n.InstancesBucket(), decodeString, fresh, zaptest.NewLogger(t)))
	require.Eventually(t, func() bool { fresh.mu.Lock(); defer fresh.mu.Unlock(); return fresh.ready }, 5*time.Second, 5*time.Millisecond)
	fresh.mu.Lock()
	require.Equal(t, map[string]string{"web.real": `{"address":"10.0.0.9:80"}`}, fresh.values)
	fresh.mu.Unlock()
	got, err := func() (Entry, error) {
		kv, err := lb.KV(ctx, n.InstancesBucket())
		require.NoError(t, err)
		return kv.Get(ctx, "web.evil")
	}()
	require.ErrorIs(t, err, ErrBadSeal, "%+v", got)
}

// BenchmarkSealOpen measures what sealing adds per record: seal (the
// writer's Ed25519 signature) and open (a reader's verification), each
// beside the floor every reader pays already, msg.DecodeAs of the same
// instance record.
func BenchmarkSealOpen(b *testing.B) {
	n, err := msg.NewNames("berth")
	require.NoError(b, err)
	seeds, err := EnsureCredentials(filepath.Join(b.TempDir(), "creds"))
	require.NoError(b, err)
	k, err := LoadKeys(seeds[RoleScheduler])
	require.NoError(b, err)
	s := newSealer(k, n)
	body, err := msg.Encode(&msg.Instance{App: "web", ID: "a1b2c3d4", Generation: 3, Term: 7, Address: "10.0.0.1:32768",
		State: msg.StateRunning, Weight: 1, ContainerID: strings.Repeat("f", 64), UpdatedAt: time.Now().UTC()})
	require.NoError(b, err)
	sealed, err := s.seal(kindKV, n.InstancesBucket(), "web.a1b2c3d4", opPut, body)
	require.NoError(b, err)
	b.Run("decode (floor)", func(b *testing.B) {
		for b.Loop() {
			if _, err := msg.DecodeAs[*msg.Instance](body); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("seal", func(b *testing.B) {
		for b.Loop() {
			if _, err := s.seal(kindKV, n.InstancesBucket(), "web.a1b2c3d4", opPut, body); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("open", func(b *testing.B) {
		for b.Loop() {
			if _, _, err := s.open(kindKV, n.InstancesBucket(), "web.a1b2c3d4", opPut, sealed, time.Time{}); err != nil {
				b.Fatal(err)
			}
		}
	})
}

// TestReplaysAreRefused copies older sealed values back onto their keys:
// the reader role's credential, which may only read, asks for the apps
// bucket's first value of the key with a direct get by sequence whose
// reply subject is the key (the contract's apps bucket keeps one value a
// key, so only the refusal lands there); healthd's credential puts an
// instance record it read earlier into its own bucket and copies it back,
// after the scheduler deleted the instance. A watcher that saw the newer
// values refuses both; the scheduler's next write goes through.
func TestReplaysAreRefused(t *testing.T) {
	t.Parallel()
	env, ctx := startAuthServer(t, "acme"), ctxT(t)
	n := env.n
	sched, _, lb := env.sealedRoles(t)
	apps, err := sched.KV(ctx, n.AppsBucket())
	require.NoError(t, err)
	instances, err := sched.KV(ctx, n.InstancesBucket())
	require.NoError(t, err)
	first, err := apps.Put(ctx, "web", []byte(`{"paths":["/"]}`))
	require.NoError(t, err)
	_, err = instances.Put(ctx, "web.a", []byte(`{"address":"10.0.0.1:80"}`))
	require.NoError(t, err)

	appsView, instView := &stringView{}, &stringView{}
	startWatcher(t, NewWatcher(lb, n.AppsBucket(), decodeString, appsView, zaptest.NewLogger(t)))
	startWatcher(t, NewWatcher(lb, n.InstancesBucket(), decodeString, instView, zaptest.NewLogger(t)))
	require.Eventually(t, func() bool {
		_, a := appsView.get("web")
		_, b := instView.get("web.a")
		return a && b
	}, 5*time.Second, 5*time.Millisecond)

	// What the attackers read while the values were current.
	reader, err := nats.Connect(env.url, nkeyOpt(t, env.seeds[RoleReader]))
	require.NoError(t, err)
	t.Cleanup(reader.Close)
	healthd, err := nats.Connect(env.url, nkeyOpt(t, env.seeds[RoleHealthd]))
	require.NoError(t, err)
	t.Cleanup(healthd.Close)
	rawJS, err := jetstream.New(healthd)
	require.NoError(t, err)
	rawInstances, err := rawJS.KeyValue(ctx, n.InstancesBucket())
	require.NoError(t, err)
	old, err := rawInstances.Get(ctx, "web.a")
	require.NoError(t, err)

	// The scheduler moves on: a new app version, the instance deleted.
	_, err = apps.Put(ctx, "web", []byte(`{"paths":["/v2"]}`))
	require.NoError(t, err)
	require.NoError(t, instances.Delete(ctx, "web.a"))
	require.Eventually(t, func() bool {
		v, _ := appsView.get("web")
		_, a := instView.get("web.a")
		return v == `{"paths":["/v2"]}` && !a
	}, 5*time.Second, 5*time.Millisecond)
	before := lb.Forged()

	req := fmt.Sprintf(`{"seq":%d}`, first)
	require.NoError(t, reader.PublishRequest("$JS.API.DIRECT.GET.KV_"+n.AppsBucket(), "$KV."+n.AppsBucket()+".web", []byte(req)))
	_, err = healthd.Request("$KV."+n.HealthBucket()+".web.a", old.Value(), 2*time.Second)
	require.NoError(t, err)
	require.NoError(t, healthd.PublishRequest("$JS.API.DIRECT.GET.KV_"+n.HealthBucket(), "$KV."+n.InstancesBucket()+".web.a",
		[]byte(`{"last_by_subj":"$KV.`+n.HealthBucket()+`.web.a"}`)))

	require.Eventually(t, func() bool { return lb.Forged() >= before+2 }, 5*time.Second, 5*time.Millisecond, "both replays reached the watchers and were refused")
	v, _ := appsView.get("web")
	require.Equal(t, `{"paths":["/v2"]}`, v, "the older app version is refused")
	_, back := instView.get("web.a")
	require.False(t, back, "a deleted instance does not come back")

	_, err = apps.Put(ctx, "web", []byte(`{"paths":["/v3"]}`))
	require.NoError(t, err)
	require.Eventually(t, func() bool { v, _ := appsView.get("web"); return v == `{"paths":["/v3"]}` }, 5*time.Second, 5*time.Millisecond)
}

func nkeyOpt(t *testing.T, path string) nats.Option {
	t.Helper()
	opt, err := nats.NkeyOptionFromSeed(path)
	require.NoError(t, err)
	return opt
}
