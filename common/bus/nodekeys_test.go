package bus

import (
	"context"
	"os"
	"path/filepath"
	"slices"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nkeys"
	"github.com/stretchr/testify/require"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest"
	"go.uber.org/zap/zaptest/observer"

	"github.com/berthhq/berth/common/msg"
)

// keyEnv is an embedded NATS whose users are those of a credentials
// directory, as the scheduler's embedded NATS has them.
type keyEnv struct {
	n   msg.Names
	dir string
	srv *EmbeddedServer
	url string
}

func newKeyEnv(t *testing.T, prefix string, nodes ...string) *keyEnv {
	t.Helper()
	n, err := msg.NewNames(prefix)
	require.NoError(t, err)
	dir := filepath.Join(t.TempDir(), "creds")
	c, err := OpenCredentials(dir)
	require.NoError(t, err)
	for _, node := range nodes {
		c, err = AddNode(dir, node)
		require.NoError(t, err)
	}
	users, err := c.Users(n)
	require.NoError(t, err)
	srv, err := Embedded(EmbeddedOptions{Port: -1, StoreDir: t.TempDir(), Users: users}, zaptest.NewLogger(t, zaptest.Level(zapcore.WarnLevel)))
	require.NoError(t, err)
	t.Cleanup(srv.Shutdown)
	return &keyEnv{n: n, dir: dir, srv: srv, url: srv.URL()}
}

// credentials reads the directory, and gives the server its users again,
// as the scheduler does after every change.
func (e *keyEnv) credentials(t *testing.T) *Credentials {
	t.Helper()
	c, err := OpenCredentials(e.dir)
	require.NoError(t, err)
	users, err := c.Users(e.n)
	require.NoError(t, err)
	require.NoError(t, e.srv.SetUsers(users))
	return c
}

// path is the credential file of a role, or of a node's key.
func (e *keyEnv) path(role, node string) string {
	if node != "" {
		return filepath.Join(e.dir, nodesDir, node+".nk")
	}
	return filepath.Join(e.dir, role+".nk")
}

// daemon connects as a daemon started now with the credential file at
// path does: its seed, and its record keys as the file has them now.
func (e *keyEnv) daemon(t *testing.T, path string) roleConn {
	t.Helper()
	k, err := LoadKeys(path)
	require.NoError(t, err)
	return e.connWith(t, path, k)
}

// connWith connects with the seed at path and the record keys k.
func (e *keyEnv) connWith(t *testing.T, path string, k *Keys) roleConn {
	t.Helper()
	core, logs := observer.New(zapcore.WarnLevel)
	logger := zaptest.NewLogger(t, zaptest.Level(zapcore.WarnLevel), zaptest.WrapOptions(zap.WrapCore(func(c zapcore.Core) zapcore.Core { return zapcore.NewTee(c, core) })))
	c, err := Connect(context.Background(), Options{URL: e.url, Name: filepath.Base(path), NKeyFile: path, Keys: k, Names: e.n,
		ReconnectWait: 20 * time.Millisecond, ReconnectMax: 200 * time.Millisecond}, logger)
	require.NoError(t, err)
	t.Cleanup(c.Close)
	require.NoError(t, c.WaitConnected(ctxT(t)))
	return roleConn{Conn: c, logs: logs}
}

// publishNodes puts the node-key directory as the scheduler leader does:
// one sealed msg.Node per node of c, and a delete for every other key.
func (e *keyEnv) publishNodes(t *testing.T, sched *Conn, c *Credentials) {
	t.Helper()
	ctx := ctxT(t)
	kv, err := sched.KV(ctx, e.n.NodesBucket())
	require.NoError(t, err)
	want := c.NodeKeys()
	for node, keys := range want {
		b, err := msg.Encode(&msg.Node{Node: node, Keys: keys, UpdatedAt: time.Now().UTC()})
		require.NoError(t, err)
		_, err = kv.Put(ctx, node, b)
		require.NoError(t, err)
	}
	have, err := kv.Keys(ctx)
	require.NoError(t, err)
	for _, node := range have {
		if _, ok := want[node]; !ok {
			require.NoError(t, kv.Delete(ctx, node))
		}
	}
}

// follow attaches a node-key directory to c, runs it until the test ends,
// and returns it once it has loaded.
func follow(t *testing.T, c *Conn, n msg.Names) *NodeDirectory {
	t.Helper()
	d, err := NewNodeDirectory(c, n, zaptest.NewLogger(t, zaptest.Level(zapcore.WarnLevel)))
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- d.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		require.NoError(t, <-done)
	})
	select {
	case <-d.Ready():
	case <-ctxT(t).Done():
		t.Fatal("the node-key directory did not load")
	}
	return d
}

// waitNodes waits until the directory d holds want's keys.
func waitNodes(t *testing.T, d *NodeDirectory, want map[string][]string) {
	t.Helper()
	require.Eventually(t, func() bool {
		if !slices.Equal(d.Nodes(), slices.Sorted(func(yield func(string) bool) {
			for k := range want {
				if !yield(k) {
					return
				}
			}
		})) {
			return false
		}
		for node, keys := range want {
			have, _ := d.trust.keysFor(node, true)
			if len(have) != len(keys) {
				return false
			}
		}
		return true
	}, 5*time.Second, 5*time.Millisecond, "the directory holds %v", want)
}

// TestNodeKeyWritesOnlyItsOwnRecord: an lbagent started with its node's
// own key may write its own record and reloads subject, and the server
// refuses it every other node's, the agents stream's settings and its
// purge. A record its key seals for another node, stored through a
// connection that may write any agents key (the shared lbagent credential,
// or the server itself, see Permissions), is dropped by a reader that
// follows the node-key directory, as is a message on another node's
// reloads subject; its metrics, which any node sends, are taken.
func TestNodeKeyWritesOnlyItsOwnRecord(t *testing.T) {
	t.Parallel()
	env := newKeyEnv(t, "nk", "lb-1", "lb-2")
	n, ctx := env.n, ctxT(t)
	c := env.credentials(t)
	sched := env.daemon(t, env.path(RoleScheduler, ""))
	require.NoError(t, sched.EnsureBuckets(ctx, MustOwnedBuckets(n, RoleScheduler)), "the scheduler makes the agents bucket too")
	env.publishNodes(t, sched.Conn, c)

	// A reader that follows the directory (the scheduler does, for the
	// agents and metrics; the reader role may follow reloads too).
	view := env.daemon(t, env.path(RoleReader, ""))
	dir := follow(t, view.Conn, n)
	waitNodes(t, dir, c.NodeKeys())
	agents := &stringView{}
	w := NewWatcher(view.Conn, n.AgentsBucket(), decodeString, agents, zaptest.NewLogger(t))
	startWatcher(t, w)
	reloads := subscribe(t, view, n.AllReloads())
	metrics := subscribe(t, view, n.AllMetrics())

	lb1 := env.daemon(t, env.path(RoleLBAgent, "lb-1"))
	require.Equal(t, "lb-1", lb1.Node())
	kv1, err := lb1.KV(ctx, n.AgentsBucket())
	require.NoError(t, err)

	t.Run("the server refuses another node's record", func(t *testing.T) {
		for _, tc := range []struct {
			name    string
			subject string
			op      func(ctx context.Context) error
		}{
			{"put", "$KV.nk_agents.lb-2", func(ctx context.Context) error { _, err := kv1.Put(ctx, "lb-2", []byte(`{"node":"lb-2"}`)); return err }},
			{"delete", "$KV.nk_agents.lb-2", func(ctx context.Context) error { return kv1.Delete(ctx, "lb-2") }},
			{"reload", n.ReloadsSubject("lb-2"), publishOp(lb1, n.ReloadsSubject("lb-2"))},
			{"ensure the bucket", "$JS.API.INFO", func(ctx context.Context) error {
				return lb1.EnsureBuckets(ctx, MustOwnedBuckets(n, RoleLBAgent))
			}},
			{"update the stream", "$JS.API.STREAM.UPDATE.KV_nk_agents", publishOp(lb1, "$JS.API.STREAM.UPDATE.KV_nk_agents")},
			{"create the stream", "$JS.API.STREAM.CREATE.KV_nk_agents", publishOp(lb1, "$JS.API.STREAM.CREATE.KV_nk_agents")},
			{"purge the stream", "$JS.API.STREAM.PURGE.KV_nk_agents", publishOp(lb1, "$JS.API.STREAM.PURGE.KV_nk_agents")},
			{"delete the stream", "$JS.API.STREAM.DELETE.KV_nk_agents", publishOp(lb1, "$JS.API.STREAM.DELETE.KV_nk_agents")},
		} {
			t.Run(tc.name, func(t *testing.T) {
				requireRefused(t, lb1, tc.subject, tc.op)
			})
		}
	})

	t.Run("its own record, reloads and metrics go through", func(t *testing.T) {
		_, err := kv1.Put(ctx, "lb-1", []byte(`{"node":"lb-1"}`))
		require.NoError(t, err)
		require.NoError(t, lb1.Publish(ctx, n.ReloadsSubject("lb-1"), []byte("{}")))
		require.NoError(t, lb1.Publish(ctx, n.MetricsSubject("web"), []byte("{}")))
		require.NoError(t, lb1.Flush(ctx))
		require.Eventually(t, func() bool { v, ok := agents.get("lb-1"); return ok && v == `{"node":"lb-1"}` }, 5*time.Second, 5*time.Millisecond)
		reloads.requireGot(t, n.ReloadsSubject("lb-1"))
		metrics.requireGot(t, n.MetricsSubject("web"))
		require.Zero(t, w.Dropped())
		require.Zero(t, view.Forged())
	})

	t.Run("its seal is refused for another node", func(t *testing.T) {
		lb1Keys, err := LoadKeys(env.path(RoleLBAgent, "lb-1"))
		require.NoError(t, err)
		// The shared credential may write any node's record; with lb-1's
		// record keys it stands for any copy of lb-1's seals the server
		// can be made to store.
		shared := env.connWith(t, env.path(RoleLBAgent, ""), lb1Keys)
		skv, err := shared.KV(ctx, n.AgentsBucket())
		require.NoError(t, err)
		_, err = skv.Put(ctx, "lb-2", []byte(`{"node":"lb-2","forged":true}`))
		require.NoError(t, err, "the server stores it")
		require.NoError(t, shared.Publish(ctx, n.ReloadsSubject("lb-2"), []byte(`{"forged":true}`)))
		require.NoError(t, shared.Flush(ctx))
		require.Eventually(t, func() bool { return w.Dropped() == 1 && view.Forged() >= 2 }, 5*time.Second, 5*time.Millisecond,
			"the reader drops the record and the message")
		_, ok := agents.get("lb-2")
		require.False(t, ok)
		require.Zero(t, reloads.count(n.ReloadsSubject("lb-2")))

		// lb-2's own key writes its record.
		lb2 := env.daemon(t, env.path(RoleLBAgent, "lb-2"))
		kv2, err := lb2.KV(ctx, n.AgentsBucket())
		require.NoError(t, err)
		_, err = kv2.Put(ctx, "lb-2", []byte(`{"node":"lb-2"}`))
		require.NoError(t, err)
		require.Eventually(t, func() bool { v, ok := agents.get("lb-2"); return ok && v == `{"node":"lb-2"}` }, 5*time.Second, 5*time.Millisecond)

		// A node's key seals nothing of another role's.
		forger := env.connWith(t, env.path(RoleScheduler, ""), lb1Keys)
		apps := &stringView{}
		aw := NewWatcher(view.Conn, n.AppsBucket(), decodeString, apps, zaptest.NewLogger(t))
		startWatcher(t, aw)
		fkv, err := forger.KV(ctx, n.AppsBucket())
		require.NoError(t, err)
		_, err = fkv.Put(ctx, "web", []byte(`{"forged":true}`))
		require.NoError(t, err)
		require.Eventually(t, func() bool { return aw.Dropped() == 1 }, 5*time.Second, 5*time.Millisecond)
		_, ok = apps.get("web")
		require.False(t, ok)
	})

	t.Run("the shared lbagent key still writes any record", func(t *testing.T) {
		shared := env.daemon(t, env.path(RoleLBAgent, ""))
		skv, err := shared.KV(ctx, n.AgentsBucket())
		require.NoError(t, err)
		_, err = skv.Put(ctx, "lb-3", []byte(`{"node":"lb-3"}`))
		require.NoError(t, err)
		require.Eventually(t, func() bool { _, ok := agents.get("lb-3"); return ok }, 5*time.Second, 5*time.Millisecond)
	})
}

// TestCertificateKeysFollowTheDirectory: a certificate key sealed while the
// directory lists nodes lb-1 and lb-2 opens with each node's seed and with
// the shared lbagent seed; once lb-1 is removed from the credentials and the
// directory, the next seal no longer opens with lb-1's seed (the boxes it
// already had still do: they are what it was given), the directory says so
// to OnChange, and the server refuses lb-1's key.
func TestCertificateKeysFollowTheDirectory(t *testing.T) {
	t.Parallel()
	env := newKeyEnv(t, "ck", "lb-1", "lb-2")
	n, ctx := env.n, ctxT(t)
	c := env.credentials(t)
	sched := env.daemon(t, env.path(RoleScheduler, ""))
	require.NoError(t, sched.EnsureBuckets(ctx, MustOwnedBuckets(n, RoleScheduler)))

	// Before the directory loads, sealing to the lbagent role is refused:
	// a key sealed then would not open on the nodes with keys of their own.
	waiting := env.daemon(t, env.path(RoleScheduler, ""))
	_, err := NewNodeDirectory(waiting.Conn, n, zaptest.NewLogger(t))
	require.NoError(t, err)
	_, err = waiting.SealTo(RoleLBAgent, []byte("k"))
	require.ErrorIs(t, err, ErrNodesLoading)

	env.publishNodes(t, sched.Conn, c)
	d, err := NewNodeDirectory(sched.Conn, n, zaptest.NewLogger(t))
	require.NoError(t, err)
	var changes atomic.Int32
	d.OnChange = func() { changes.Add(1) }
	dctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- d.Run(dctx) }()
	t.Cleanup(func() { cancel(); require.NoError(t, <-done) })
	waitNodes(t, d, c.NodeKeys())

	open := func(path string) *Keys {
		k, err := LoadKeys(path)
		require.NoError(t, err)
		return k
	}
	lb1, lb2, shared := open(env.path(RoleLBAgent, "lb-1")), open(env.path(RoleLBAgent, "lb-2")), open(env.path(RoleLBAgent, ""))
	secret := []byte("-----BEGIN EC PRIVATE KEY-----\nMHc...\n-----END EC PRIVATE KEY-----\n")
	boxes, err := sched.SealTo(RoleLBAgent, secret)
	require.NoError(t, err)
	require.Len(t, boxes, 3, "the shared key and each node's")
	for name, k := range map[string]*Keys{"lb-1": lb1, "lb-2": lb2, "shared": shared} {
		got, err := k.OpenSealed(boxes)
		require.NoError(t, err, name)
		require.Equal(t, secret, got, name)
	}
	healthd := open(env.path(RoleHealthd, ""))
	_, err = healthd.OpenSealed(boxes)
	require.ErrorIs(t, err, ErrNotARecipient)

	before := changes.Load()
	lb1Copy := copyFile(t, env.path(RoleLBAgent, "lb-1"))
	c, err = RemoveNode(env.dir, "lb-1")
	require.NoError(t, err)
	env.credentials(t)
	env.publishNodes(t, sched.Conn, c)
	waitNodes(t, d, c.NodeKeys())
	// The directory takes the change, then calls OnChange: wait for it.
	require.Eventually(t, func() bool { return changes.Load() > before }, 5*time.Second, time.Millisecond,
		"OnChange hears of the removal (the scheduler then seals every certificate again)")

	after, err := sched.SealTo(RoleLBAgent, secret)
	require.NoError(t, err)
	require.Len(t, after, 2)
	_, err = lb1.OpenSealed(after)
	require.ErrorIs(t, err, ErrNotARecipient, "a removed node cannot open the next seal")
	got, err := lb2.OpenSealed(after)
	require.NoError(t, err)
	require.Equal(t, secret, got)
	got, err = lb1.OpenSealed(boxes)
	require.NoError(t, err, "what a node was given before stays readable to it: order new certificates")
	require.Equal(t, secret, got)

	// Its NATS user is gone too.
	_, err = Connect(context.Background(), Options{URL: env.url, NKeyFile: lb1Copy}, zaptest.NewLogger(t))
	require.ErrorContains(t, err, "was refused")
}

// copyFile copies a credential file (mode 0600) to a file of the test's,
// which outlives a removal or rotation of the original.
func copyFile(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	require.NoError(t, err)
	out := filepath.Join(t.TempDir(), filepath.Base(path))
	require.NoError(t, os.WriteFile(out, b, 0o600))
	return out
}

// rawConn connects with the seed at path as a plain nats client that does
// not reconnect, and counts its disconnects.
func (e *keyEnv) rawConn(t *testing.T, path string) (*nats.Conn, *atomic.Int32) {
	t.Helper()
	opt, err := nats.NkeyOptionFromSeed(path)
	require.NoError(t, err)
	var drops atomic.Int32
	nc, err := nats.Connect(e.url, opt, nats.Timeout(2*time.Second), nats.NoReconnect(),
		nats.DisconnectErrHandler(func(*nats.Conn, error) { drops.Add(1) }))
	require.NoError(t, err)
	t.Cleanup(nc.Close)
	return nc, &drops
}

// TestSetUsersNeverReloads: the server takes new users without reloading
// its options (nats-server's reload races with its own readers of them):
// the same users change nothing, a new node's key is taken at once and
// disconnects no one, and a removed node's live connection is closed and
// its key refused.
func TestSetUsersNeverReloads(t *testing.T) {
	t.Parallel()
	e := newKeyEnv(t, "berth", "lb1")
	loaded := e.srv.s.ConfigTime()
	sched, schedDrops := e.rawConn(t, e.path(RoleScheduler, ""))
	lb1, lb1Drops := e.rawConn(t, e.path(RoleLBAgent, "lb1"))

	e.credentials(t)
	_, err := AddNode(e.dir, "lb2")
	require.NoError(t, err)
	e.credentials(t)
	lb2, _ := e.rawConn(t, e.path(RoleLBAgent, "lb2"))
	require.NoError(t, lb2.Flush())
	require.NoError(t, sched.Flush())
	require.NoError(t, lb1.Flush())
	require.Zero(t, schedDrops.Load()+lb1Drops.Load(), "the same users or a new one: no one disconnected")

	lb1Seed := copyFile(t, e.path(RoleLBAgent, "lb1"))
	_, err = RemoveNode(e.dir, "lb1")
	require.NoError(t, err)
	e.credentials(t)
	require.Eventually(t, lb1.IsClosed, 5*time.Second, 5*time.Millisecond, "the removed node's connection is closed")
	opt, err := nats.NkeyOptionFromSeed(lb1Seed)
	require.NoError(t, err)
	_, err = nats.Connect(e.url, opt, nats.Timeout(2*time.Second))
	require.ErrorIs(t, err, nats.ErrAuthorization, "the removed node's key is refused")
	require.NoError(t, sched.Flush())
	require.NoError(t, lb2.Flush())
	require.Zero(t, schedDrops.Load(), "the scheduler's connection stays")
	require.Equal(t, loaded, e.srv.s.ConfigTime(), "no reload")
}

// TestEmbeddedRefusesAForgedSignature: a client that names a user's
// public key but signs the nonce with another key, or signs nothing, is
// refused.
func TestEmbeddedRefusesAForgedSignature(t *testing.T) {
	t.Parallel()
	e := newKeyEnv(t, "berth")
	seed, err := os.ReadFile(e.path(RoleScheduler, ""))
	require.NoError(t, err)
	kp, err := nkeys.ParseDecoratedNKey(seed)
	require.NoError(t, err)
	pub, err := kp.PublicKey()
	require.NoError(t, err)
	other, err := nkeys.CreateUser()
	require.NoError(t, err)

	for name, sign := range map[string]nats.SignatureHandler{
		"another key's signature": other.Sign,
		"no signature":            func([]byte) ([]byte, error) { return nil, nil },
		"garbage":                 func([]byte) ([]byte, error) { return []byte("not a signature"), nil },
	} {
		_, err := nats.Connect(e.url, nats.Nkey(pub, sign), nats.Timeout(2*time.Second))
		require.ErrorIs(t, err, nats.ErrAuthorization, name)
	}
	nc, err := nats.Connect(e.url, nats.Nkey(pub, kp.Sign), nats.Timeout(2*time.Second))
	require.NoError(t, err, "the key's own signature")
	nc.Close()
}
