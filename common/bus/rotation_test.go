package bus

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.uber.org/zap/zaptest"

	"github.com/berthhq/berth/common/msg"
)

// reader is a daemon that watches one bucket.
type reader struct {
	conn roleConn
	w    *Watcher[string]
	view *stringView
}

// TestRotationKeepsEveryValue walks the rotation docs/operations.md
// ("Rotating NATS keys") tells operators to follow, for a writing role's
// key and for a node's key, on an embedded NATS whose users follow the
// credentials as the scheduler's embedded NATS does, with each daemon
// started from its credential file as each step hands it out:
//
//  1. rotate: the server accepts the old and the next key; a daemon
//     restarted with its credential printed again trusts both; the old
//     writer keeps writing.
//  2. promote: the writer restarted with its credential seals with the new
//     key while one not yet restarted still seals with the old, and readers
//     take both; then the new writer seals every key again (one resync).
//  3. retire: the server refuses the old key, a reader restarted with its
//     credential printed again trusts the new key only, and a value sealed
//     with the old key is dropped.
//
// No reader drops a valid value at any step. A node's key reaches the
// readers through the node-key directory, so its readers need no restart.
func TestRotationKeepsEveryValue(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name       string
		role, node string
		bucket     func(msg.Names) string
		keys       []string
		reader     string
	}{
		{name: "healthd", role: RoleHealthd, bucket: msg.Names.HealthBucket, keys: []string{"web.a", "web.b"}, reader: RoleLBAgent},
		{name: "scheduler", role: RoleScheduler, bucket: msg.Names.AppsBucket, keys: []string{"web", "api"}, reader: RoleHealthd},
		{name: "lbagent node", role: RoleLBAgent, node: "lb-1", bucket: msg.Names.AgentsBucket, keys: []string{"lb-1"}, reader: RoleReader},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			env := newKeyEnv(t, fmt.Sprintf("rot%d", i), "lb-1")
			n, ctx := env.n, ctxT(t)
			bucket := tt.bucket(n)
			c := env.credentials(t)
			admin := env.daemon(t, env.path(RoleScheduler, "")) // makes the buckets, publishes the directory
			require.NoError(t, admin.EnsureBuckets(ctx, MustOwnedBuckets(n, RoleScheduler)))
			require.NoError(t, env.daemon(t, env.path(RoleHealthd, "")).EnsureBuckets(ctx, MustOwnedBuckets(n, RoleHealthd)))
			env.publishNodes(t, admin.Conn, c)
			published := c.NodeKeys()
			sync := func(c *Credentials) {
				t.Helper()
				if tt.node != "" {
					env.publishNodes(t, admin.Conn, c)
					published = c.NodeKeys()
				}
			}

			// readers started now, as a daemon restarted with its
			// credential printed again; they wait for every key.
			var readers []*reader
			start := func() *reader {
				t.Helper()
				rc := env.daemon(t, env.path(tt.reader, ""))
				if tt.node != "" {
					waitNodes(t, follow(t, rc.Conn, n), published)
				}
				r := &reader{conn: rc, view: &stringView{}}
				r.w = NewWatcher(rc.Conn, bucket, decodeString, r.view, zaptest.NewLogger(t))
				startWatcher(t, r.w)
				readers = append(readers, r)
				return r
			}
			put := func(w roleConn, key, value string) {
				t.Helper()
				kv, err := w.KV(ctx, bucket)
				require.NoError(t, err)
				_, err = kv.Put(ctx, key, []byte(`{"v":"`+value+`"}`))
				require.NoError(t, err)
			}
			// sees waits until each reader holds value at key.
			sees := func(rs []*reader, key, value string) {
				t.Helper()
				for _, r := range rs {
					require.Eventually(t, func() bool { v, ok := r.view.get(key); return ok && v == `{"v":"`+value+`"}` }, 5*time.Second, 5*time.Millisecond,
						"a reader sees %s=%s", key, value)
				}
			}
			last := tt.keys[len(tt.keys)-1]

			oldWriter := env.daemon(t, env.path(tt.role, tt.node))
			for _, k := range tt.keys {
				put(oldWriter, k, "v1")
			}
			r0 := start()
			sees([]*reader{r0}, last, "v1")

			// 1. rotate
			c, err := RotateKey(env.dir, tt.role, tt.node)
			require.NoError(t, err)
			env.credentials(t)
			sync(c)
			next := c.Keys()
			for _, k := range next {
				if k.Role == tt.role && k.Node == tt.node && k.State == KeyNext {
					nc, err := Connect(context.Background(), Options{URL: env.url, NKeyFile: k.Path}, zaptest.NewLogger(t))
					require.NoError(t, err, "the server accepts the next key")
					nc.Close()
				}
			}
			put(oldWriter, last, "v2")
			sees([]*reader{r0}, last, "v2")
			r1 := start()
			sees([]*reader{r1}, last, "v2")

			// 2. promote
			c, err = PromoteKey(env.dir, tt.role, tt.node)
			require.NoError(t, err)
			env.credentials(t)
			sync(c)
			newWriter := env.daemon(t, env.path(tt.role, tt.node))
			put(newWriter, tt.keys[0], "v3")
			sees([]*reader{r1}, tt.keys[0], "v3")
			put(oldWriter, last, "v3-old") // a writer not yet restarted
			sees([]*reader{r1}, last, "v3-old")
			oldWriter.Close()
			for _, k := range tt.keys { // the new writer seals every key again
				put(newWriter, k, "v4")
			}
			sees([]*reader{r1}, last, "v4")

			// 3. retire
			var retiring string
			for _, k := range c.Keys() {
				if k.Role == tt.role && k.Node == tt.node && k.State == KeyRetiring {
					retiring = copyFile(t, k.Path)
				}
			}
			require.NotEmpty(t, retiring)
			c, err = RetireKey(env.dir, tt.role, tt.node)
			require.NoError(t, err)
			env.credentials(t)
			sync(c)
			_, err = Connect(context.Background(), Options{URL: env.url, NKeyFile: retiring}, zaptest.NewLogger(t))
			require.ErrorContains(t, err, "was refused", "the server refuses the retired key")
			put(newWriter, last, "v5")
			r2 := start()
			sees([]*reader{r1, r2}, last, "v5")
			if tt.keys[0] != last {
				sees([]*reader{r2}, tt.keys[0], "v4")
			}
			if tt.node != "" {
				sees([]*reader{r0}, last, "v5") // the directory told it of every key
			}
			for _, r := range readers {
				if r != r0 || tt.node != "" {
					require.Zero(t, r.w.Dropped(), "no reader dropped a valid value")
				}
			}

			// A value the retired key seals, stored by any connection
			// that may write the bucket, is dropped.
			valid, _ := r2.view.get(tt.keys[0])
			oldKeys, err := LoadKeys(retiring)
			require.NoError(t, err)
			forger := env.connWith(t, env.path(tt.role, tt.node), oldKeys)
			put(forger, tt.keys[0], "forged")
			require.Eventually(t, func() bool { return r2.w.Dropped() == 1 }, 5*time.Second, 5*time.Millisecond)
			v, _ := r2.view.get(tt.keys[0])
			require.Equal(t, valid, v, "the reader keeps the valid value")
		})
	}
}
