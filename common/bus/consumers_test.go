package bus

import (
	"context"
	"path/filepath"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/require"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest"

	"github.com/berthhq/berth/common/msg"
)

// TestReaderConsumersEndWithTheirConnection: with the reader's credential
// a KV watch (an ordered consumer) works, but no consumer the reader makes
// outlives it: the legacy durable create subject is refused by the
// server; a durable consumer made on the subject watches use gets the
// stream's inactive threshold (ConsumerIdle), one that asks a longer one
// is refused, and the server deletes it once the reader's connection is
// gone. Berth's daemons' own watches are unchanged: each bucket's owner
// sets the limit when it ensures the bucket.
func TestReaderConsumersEndWithTheirConnection(t *testing.T) {
	t.Parallel()
	n, err := msg.NewNames("cons")
	require.NoError(t, err)
	dir := filepath.Join(t.TempDir(), "creds")
	c, err := OpenCredentials(dir)
	require.NoError(t, err)
	users, err := c.Users(n)
	require.NoError(t, err)
	// An operator's user, allowed everything, watches the server's
	// advisories; no Berth role may.
	admin := filepath.Join(t.TempDir(), "admin.nk")
	require.NoError(t, ensureSeed(admin))
	adminKey, err := SeedPublicKey(admin)
	require.NoError(t, err)
	srv, err := Embedded(EmbeddedOptions{Port: -1, StoreDir: t.TempDir(), Users: append(users, &server.NkeyUser{Nkey: adminKey})},
		zaptest.NewLogger(t, zaptest.Level(zapcore.WarnLevel)))
	require.NoError(t, err)
	t.Cleanup(srv.Shutdown)
	env := &keyEnv{n: n, dir: dir, srv: srv, url: srv.URL()}
	ctx := ctxT(t)

	sched := env.daemon(t, env.path(RoleScheduler, ""))
	require.NoError(t, sched.EnsureBuckets(ctx, MustOwnedBuckets(n, RoleScheduler)))
	apps, err := sched.KV(ctx, n.AppsBucket())
	require.NoError(t, err)
	_, err = apps.Put(ctx, "web", []byte(`{"v":1}`))
	require.NoError(t, err)
	stream := kvStream(n.AppsBucket())

	reader := env.daemon(t, env.path(RoleReader, ""))
	view := &stringView{}
	w := NewWatcher(reader.Conn, n.AppsBucket(), decodeString, view, zaptest.NewLogger(t))
	startWatcher(t, w)
	require.Eventually(t, func() bool { _, ok := view.get("web"); return ok }, 5*time.Second, 5*time.Millisecond, "the reader's watch works")

	requireRefused(t, reader, "$JS.API.CONSUMER.DURABLE.CREATE."+stream+".stash",
		publishOp(reader, "$JS.API.CONSUMER.DURABLE.CREATE."+stream+".stash"))

	// The reader, as any NATS client with its credential.
	nc, err := nats.Connect(env.url, nkeyOpt(t, env.path(RoleReader, "")))
	require.NoError(t, err)
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	require.NoError(t, err)
	_, err = js.CreateConsumer(ctx, stream, jetstream.ConsumerConfig{Durable: "forever", InactiveThreshold: time.Hour})
	require.ErrorContains(t, err, "consumer inactive threshold exceeds system limit of 5s")
	cons, err := js.CreateConsumer(ctx, stream, jetstream.ConsumerConfig{Durable: "stash"})
	require.NoError(t, err, "a durable name alone is no different on the wire from a watch's consumer")
	require.Equal(t, ConsumerIdle, cons.CachedInfo().Config.InactiveThreshold, "the server bounds it")

	// Once the reader has gone, the server deletes it.
	opNC, err := nats.Connect(env.url, nkeyOpt(t, admin))
	require.NoError(t, err)
	t.Cleanup(opNC.Close)
	deleted := make(chan struct{}, 1)
	_, err = opNC.Subscribe("$JS.EVENT.ADVISORY.CONSUMER.DELETED."+stream+".stash", func(*nats.Msg) { deleted <- struct{}{} })
	require.NoError(t, err)
	require.NoError(t, opNC.Flush())
	nc.Close()
	select {
	case <-deleted:
	case <-time.After(4 * ConsumerIdle):
		t.Fatal("the reader's durable consumer outlived it")
	}
	ojs, err := jetstream.New(opNC)
	require.NoError(t, err)
	_, err = ojs.Consumer(context.Background(), stream, "stash")
	require.ErrorIs(t, err, jetstream.ErrConsumerNotFound)

	// The reader's watch still has its consumer, and follows updates.
	_, err = apps.Put(ctx, "web", []byte(`{"v":2}`))
	require.NoError(t, err)
	require.Eventually(t, func() bool { v, _ := view.get("web"); return v == `{"v":2}` }, 5*time.Second, 5*time.Millisecond)
}
