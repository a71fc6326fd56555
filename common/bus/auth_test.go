package bus

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/berthhq/berth/common/msg"
	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nkeys"
	"github.com/stretchr/testify/require"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest"
	"go.uber.org/zap/zaptest/observer"
)

func TestOwnedBuckets(t *testing.T) {
	t.Parallel()
	n, err := msg.NewNames("own")
	require.NoError(t, err)
	tests := []struct {
		role string
		want []string
	}{
		{role: RoleScheduler, want: []string{"own_apps", "own_instances", "own_certificates", "own_challenges", "own_nodes"}},
		{role: RoleHealthd, want: []string{"own_health", "own_checkers"}},
		{role: RoleLBAgent, want: []string{"own_agents"}},
		{role: RoleReader, want: nil},
	}
	owners := map[string]int{}
	for _, tt := range tests {
		t.Run(tt.role, func(t *testing.T) {
			t.Parallel()
			got, err := OwnedBuckets(n, tt.role)
			require.NoError(t, err)
			var names []string
			for _, b := range got {
				names = append(names, b.Name)
				// The same settings as the contract's.
				require.Contains(t, ContractBuckets(n), b)
			}
			require.Equal(t, tt.want, names)
		})
		for _, b := range tt.want {
			owners[b]++
		}
	}
	for _, b := range n.Buckets() {
		require.Equal(t, 1, owners[b.Name], "%s has exactly one owner", b.Name)
	}
	_, err = OwnedBuckets(n, "admin")
	require.ErrorIs(t, err, ErrUnknownRole)
}

func TestPermissionsAreAllowListsUnderThePrefix(t *testing.T) {
	t.Parallel()
	n, err := msg.NewNames("perm")
	require.NoError(t, err)
	_, err = Permissions(n, "")
	require.ErrorIs(t, err, ErrUnknownRole)

	for _, role := range Roles() {
		t.Run(role, func(t *testing.T) {
			t.Parallel()
			p, err := Permissions(n, role)
			require.NoError(t, err)
			require.Empty(t, p.Publish.Deny)
			require.Empty(t, p.Subscribe.Deny)
			require.Nil(t, p.Response, "no role answers requests")
			owned, err := OwnedBuckets(n, role)
			require.NoError(t, err)
			managed, err := ManagedBuckets(n, role)
			require.NoError(t, err)
			for _, s := range p.Publish.Allow {
				require.NotContains(t, []string{">", "$JS.>", "$JS.API.>", "$KV.>", "$JS.API.STREAM.>", "$JS.API.CONSUMER.>"}, s)
				require.NotContains(t, s, "DURABLE", "no role creates a durable consumer by the legacy subject")
				// Every subject names one of this environment's buckets or
				// subjects, except the account's JetStream info and, for
				// the reader, the streams' names (nats kv ls).
				if s != "$JS.API.INFO" && (role != RoleReader || s != "$JS.API.STREAM.NAMES" && s != "$JS.API.STREAM.LIST") {
					require.True(t, strings.Contains(s, "KV_perm_") || strings.HasPrefix(s, "$KV.perm_") || strings.HasPrefix(s, "perm.v1."), s)
				}
			}
			for _, b := range n.Buckets() {
				isOwner := false
				for _, o := range owned {
					isOwner = isOwner || o.Name == b.Name
				}
				for _, s := range readSubjects(b.Name) {
					require.Contains(t, p.Publish.Allow, s, "every role reads every bucket")
				}
				manages := containsBucket(managed, b.Name)
				for _, s := range writeSubjects(b.Name) {
					switch {
					case isOwner:
						require.Contains(t, p.Publish.Allow, s)
					case manages && slices.Contains(streamSubjects(b.Name)[:2], s):
						require.Contains(t, p.Publish.Allow, s, "%s creates and updates %s", role, b.Name)
					case role == RoleScheduler && b.Name == n.HealthBucket() && s == "$KV."+b.Name+".>":
						require.Contains(t, p.Publish.Allow, s, "the scheduler writes the health of the docker and exec checks it runs")
					default:
						require.NotContains(t, p.Publish.Allow, s, "only the owner of %s writes it", b.Name)
					}
				}
			}
			if len(owned) == 0 {
				require.NotContains(t, p.Publish.Allow, "$JS.API.INFO")
			}
			require.Equal(t, "_INBOX.>", p.Subscribe.Allow[0])
			for _, s := range p.Subscribe.Allow[1:] {
				require.True(t, strings.HasPrefix(s, "perm.v1."), s)
			}
		})
	}
}

func TestEnsureCredentials(t *testing.T) {
	t.Parallel()
	dir := filepath.Join(t.TempDir(), "creds")
	seeds, err := EnsureCredentials(dir)
	require.NoError(t, err)
	st, err := os.Stat(dir)
	require.NoError(t, err)
	require.Equal(t, os.FileMode(0o700), st.Mode().Perm())
	require.Len(t, seeds, len(Roles()))
	keys := map[string]string{}
	for _, role := range Roles() {
		path := seeds[role]
		require.Equal(t, filepath.Join(dir, role+".nk"), path)
		st, err := os.Stat(path)
		require.NoError(t, err)
		require.Equal(t, os.FileMode(0o600), st.Mode().Perm(), role)
		pub, err := SeedPublicKey(path)
		require.NoError(t, err)
		require.True(t, nkeys.IsValidPublicUserKey(pub), pub)
		require.NotContains(t, keys, pub, "each role has a key of its own")
		keys[pub] = role
	}
	entries, err := os.ReadDir(dir)
	require.NoError(t, err)
	require.Len(t, entries, len(Roles())+1, "no temporary file is left behind, only the lock file")

	// Later calls, even at once, reuse the seeds.
	var wg sync.WaitGroup
	for range 4 {
		wg.Go(func() {
			again, err := EnsureCredentials(dir)
			if !assertNoError(t, err) {
				return
			}
			for _, role := range Roles() {
				pub, err := SeedPublicKey(again[role])
				if assertNoError(t, err) && keys[pub] != role {
					t.Errorf("%s: key changed", role)
				}
			}
		})
	}
	wg.Wait()

	// Concurrent first calls agree on one seed per role.
	fresh := filepath.Join(t.TempDir(), "fresh")
	var mu sync.Mutex
	seen := map[string]map[string]bool{}
	for range 8 {
		wg.Go(func() {
			got, err := EnsureCredentials(fresh)
			if !assertNoError(t, err) {
				return
			}
			for role, path := range got {
				pub, err := SeedPublicKey(path)
				if !assertNoError(t, err) {
					return
				}
				mu.Lock()
				if seen[role] == nil {
					seen[role] = map[string]bool{}
				}
				seen[role][pub] = true
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	for _, role := range Roles() {
		require.Len(t, seen[role], 1, role)
	}
}

func assertNoError(t *testing.T, err error) bool {
	t.Helper()
	if err != nil {
		t.Error(err)
		return false
	}
	return true
}

func TestEnsureCredentialsRefusesBadSeeds(t *testing.T) {
	t.Parallel()
	account, err := nkeys.CreateAccount()
	require.NoError(t, err)
	accountSeed, err := account.Seed()
	require.NoError(t, err)
	tests := []struct {
		name    string
		content []byte
		mode    os.FileMode
		want    string
	}{
		{name: "readable by others", content: nil, mode: 0o644, want: "has mode 0644: it must be readable by its owner only (chmod 600"},
		{name: "not a seed", content: []byte("hello\n"), mode: 0o600, want: "nkey seed"},
		{name: "an account seed", content: accountSeed, mode: 0o600, want: "not a user seed"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			dir := t.TempDir()
			seeds, err := EnsureCredentials(dir)
			require.NoError(t, err)
			path := seeds[RoleHealthd]
			if tt.content != nil {
				require.NoError(t, os.WriteFile(path, tt.content, tt.mode))
			}
			require.NoError(t, os.Chmod(path, tt.mode))
			_, err = EnsureCredentials(dir)
			require.ErrorContains(t, err, "nats credentials for healthd")
			require.ErrorContains(t, err, tt.want)
			_, err = SeedPublicKey(path)
			require.ErrorContains(t, err, tt.want)
		})
	}
}

func TestAuthUsers(t *testing.T) {
	t.Parallel()
	n, err := msg.NewNames("users")
	require.NoError(t, err)
	seeds, err := EnsureCredentials(t.TempDir())
	require.NoError(t, err)
	users, err := AuthUsers(n, seeds)
	require.NoError(t, err)
	require.Len(t, users, len(Roles()))
	for i, role := range Roles() {
		pub, err := SeedPublicKey(seeds[role])
		require.NoError(t, err)
		require.Equal(t, pub, users[i].Nkey, role)
		perms, err := Permissions(n, role)
		require.NoError(t, err)
		require.Equal(t, perms, users[i].Permissions, role)
	}

	only, err := AuthUsers(n, map[string]string{RoleLBAgent: seeds[RoleLBAgent]})
	require.NoError(t, err)
	require.Len(t, only, 1)

	_, err = AuthUsers(n, nil)
	require.ErrorContains(t, err, "no credentials given")
	_, err = AuthUsers(n, map[string]string{"admin": seeds[RoleReader]})
	require.ErrorIs(t, err, ErrUnknownRole)
	_, err = AuthUsers(n, map[string]string{RoleReader: seeds[RoleScheduler], RoleScheduler: seeds[RoleScheduler]})
	require.ErrorContains(t, err, "have the same key")
	_, err = AuthUsers(n, map[string]string{RoleReader: filepath.Join(t.TempDir(), "missing.nk")})
	require.ErrorIs(t, err, os.ErrNotExist)
}

// authEnv is an embedded server that requires the role credentials of one
// environment (a names prefix).
type authEnv struct {
	n     msg.Names
	url   string
	seeds map[string]string
}

func startAuthServer(t *testing.T, prefix string) authEnv {
	t.Helper()
	n, err := msg.NewNames(prefix)
	require.NoError(t, err)
	seeds, err := EnsureCredentials(filepath.Join(t.TempDir(), "creds"))
	require.NoError(t, err)
	users, err := AuthUsers(n, seeds)
	require.NoError(t, err)
	s, err := Embedded(EmbeddedOptions{Port: -1, StoreDir: t.TempDir(), Users: users}, zaptest.NewLogger(t))
	require.NoError(t, err)
	t.Cleanup(s.Shutdown)
	return authEnv{n: n, url: s.URL(), seeds: seeds}
}

// roleConn is a connection with one role's credential, and the permission
// violations the server reported to it.
type roleConn struct {
	*Conn
	logs *observer.ObservedLogs
}

// violations returns the server's permission errors this connection got.
func (r roleConn) violations() []string {
	var out []string
	for _, e := range r.logs.FilterMessage("nats async error").All() {
		if err, ok := e.ContextMap()["error"].(string); ok && strings.Contains(err, "Permissions Violation") {
			out = append(out, err)
		}
	}
	return out
}

func (e authEnv) connect(t *testing.T, role string) roleConn {
	t.Helper()
	core, logs := observer.New(zapcore.WarnLevel)
	logger := zaptest.NewLogger(t, zaptest.WrapOptions(zap.WrapCore(func(c zapcore.Core) zapcore.Core { return zapcore.NewTee(c, core) })))
	c, err := Connect(context.Background(), Options{URL: e.url, Name: role, NKeyFile: e.seeds[role], ReconnectWait: 20 * time.Millisecond, ReconnectMax: 200 * time.Millisecond}, logger)
	require.NoError(t, err)
	t.Cleanup(c.Close)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	require.NoError(t, c.WaitConnected(ctx), role)
	return roleConn{Conn: c, logs: logs}
}

// requireRefused runs op, which publishes to subject, and requires that the
// server refuse that publish with a permission error: op's own error if it
// has one, else the server's asynchronous one. A timeout is a failure.
func requireRefused(t *testing.T, c roleConn, subject string, op func(ctx context.Context) error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	gctx, stop := c.refusals.guard(ctx, subject)
	defer stop()
	start := time.Now()
	err := denial(gctx, op(gctx))
	if err == nil { // a plain publish: the refusal comes asynchronously
		select {
		case <-gctx.Done():
		case <-time.After(5 * time.Second):
		}
		err = context.Cause(gctx)
	}
	require.ErrorIs(t, err, ErrPermissionDenied, "publish to %s", subject)
	require.ErrorContains(t, err, fmt.Sprintf("Permissions Violation for Publish to %q", subject))
	require.Less(t, time.Since(start), 5*time.Second, "the refusal, not a timeout, ends the operation")
}

// publishOp publishes to subject and flushes, as a plain publisher does.
func publishOp(c roleConn, subject string) func(ctx context.Context) error {
	return func(ctx context.Context) error {
		if err := c.Publish(ctx, subject, []byte("{}")); err != nil {
			return err
		}
		return c.Flush(ctx)
	}
}

// mailbox collects the messages of one subscription.
type mailbox struct {
	mu  sync.Mutex
	got map[string]int
}

func subscribe(t *testing.T, c roleConn, subject string) *mailbox {
	t.Helper()
	in := &mailbox{got: map[string]int{}}
	sub, err := c.Subscribe(subject, func(subject string, _ []byte) {
		in.mu.Lock()
		defer in.mu.Unlock()
		in.got[subject]++
	})
	require.NoError(t, err)
	t.Cleanup(func() { _ = sub.Drain() })
	require.NoError(t, c.Flush(ctxT(t)))
	return in
}

func (in *mailbox) count(subject string) int {
	in.mu.Lock()
	defer in.mu.Unlock()
	return in.got[subject]
}

func (in *mailbox) requireGot(t *testing.T, subject string) {
	t.Helper()
	require.Eventually(t, func() bool { return in.count(subject) > 0 }, 5*time.Second, 5*time.Millisecond, subject)
}

func decodeString(_ string, data []byte) (string, error) { return string(data), nil }

// TestRolesDoTheirJobAndNothingElse runs every role against an embedded
// server that requires credentials. Each refusal is checked by the
// server's permission error, and next to it the same operation succeeds
// for the role that owns it, so each check can fail.
func TestRolesDoTheirJobAndNothingElse(t *testing.T) {
	t.Parallel()
	env := startAuthServer(t, "acme")
	n := env.n
	ctx := ctxT(t)

	t.Run("no anonymous or unknown client", func(t *testing.T) {
		_, err := nats.Connect(env.url, nats.Timeout(2*time.Second))
		require.ErrorIs(t, err, nats.ErrAuthorization)

		stranger := filepath.Join(t.TempDir(), "stranger.nk")
		require.NoError(t, ensureSeed(stranger))
		opt, err := nats.NkeyOptionFromSeed(stranger)
		require.NoError(t, err)
		_, err = nats.Connect(env.url, nats.Timeout(2*time.Second), opt)
		require.ErrorIs(t, err, nats.ErrAuthorization)

		// bus.Connect refuses to start, naming the flags.
		_, err = Connect(context.Background(), Options{URL: env.url, ReconnectWait: 20 * time.Millisecond, ReconnectMax: 100 * time.Millisecond}, zaptest.NewLogger(t))
		require.ErrorIs(t, err, nats.ErrAuthorization)
		require.ErrorContains(t, err, "none were given")
		require.ErrorContains(t, err, "--nats-nkey")
		_, err = Connect(context.Background(), Options{URL: env.url, NKeyFile: stranger}, zaptest.NewLogger(t))
		require.ErrorContains(t, err, "--nats-nkey "+stranger+" was refused")

		// The same server takes a role's credential.
		opt, err = nats.NkeyOptionFromSeed(env.seeds[RoleReader])
		require.NoError(t, err)
		nc, err := nats.Connect(env.url, nats.Timeout(2*time.Second), opt)
		require.NoError(t, err)
		nc.Close()
	})

	scheduler := env.connect(t, RoleScheduler)
	healthd := env.connect(t, RoleHealthd)
	lbagent := env.connect(t, RoleLBAgent)
	reader := env.connect(t, RoleReader)
	roles := map[string]roleConn{RoleScheduler: scheduler, RoleHealthd: healthd, RoleLBAgent: lbagent, RoleReader: reader}

	// The reader follows every plain subject from the start.
	subs := map[string]*mailbox{}
	for _, s := range []string{n.AllEvents(), n.AllHealth(), n.AllMetrics(), n.AllUsage(), n.AllReloads()} {
		subs[s] = subscribe(t, reader, s)
	}

	t.Run("only the owner creates a bucket", func(t *testing.T) {
		for _, b := range ContractBuckets(n) {
			for role, c := range roles {
				owned, err := OwnedBuckets(n, role)
				require.NoError(t, err)
				if !containsBucket(MustOwnedBuckets(n, role), b.Name) {
					// nats.go asks for the account's JetStream info, then
					// updates the stream, or creates it when there is none.
					// A role that owns no bucket is refused the first, the
					// others the update.
					subject := "$JS.API.STREAM.UPDATE.KV_" + b.Name
					if len(owned) == 0 {
						subject = "$JS.API.INFO"
					}
					requireRefused(t, c, subject, func(ctx context.Context) error {
						return c.EnsureBuckets(ctx, []BucketConfig{b})
					})
				}
			}
		}
		for role, c := range roles {
			owned := MustOwnedBuckets(n, role)
			require.NoError(t, c.EnsureBuckets(ctx, owned), role)
			require.NoError(t, c.EnsureBuckets(ctx, owned), "%s: a second start updates in place", role)
		}
	})

	t.Run("another environment's buckets are out of reach", func(t *testing.T) {
		other, err := msg.NewNames("other")
		require.NoError(t, err)
		requireRefused(t, scheduler, "$JS.API.STREAM.INFO.KV_other_apps", func(ctx context.Context) error {
			return scheduler.EnsureBuckets(ctx, ContractBuckets(other)[:1])
		})
		requireRefused(t, reader, "$JS.API.STREAM.INFO.KV_other_apps", func(ctx context.Context) error {
			_, err := reader.KV(ctx, other.AppsBucket())
			return err
		})
		// A watcher says so at once, rather than time out on each try.
		core, logs := observer.New(zapcore.WarnLevel)
		w := NewWatcher(reader.Conn, other.AppsBucket(), decodeString, HandlerFuncs[string]{
			OnSnapshot: func([]Event[string], uint64) { t.Error("a snapshot of a bucket the reader may not read") },
			OnUpdate:   func(Event[string]) {},
		}, zap.New(core))
		startWatcher(t, w)
		require.Eventually(t, func() bool {
			for _, e := range logs.FilterMessage("watch failed, retrying").All() {
				if err, _ := e.ContextMap()["error"].(string); strings.Contains(err, ErrPermissionDenied.Error()) &&
					strings.Contains(err, `Publish to "$JS.API.STREAM.INFO.KV_other_apps"`) {
					return true
				}
			}
			return false
		}, 2*time.Second, 5*time.Millisecond, "well before the 5s API timeout")
	})

	put := func(c roleConn, bucket, key, value string) {
		t.Helper()
		kv, err := c.KV(ctx, bucket)
		require.NoError(t, err)
		_, err = kv.Put(ctx, key, []byte(value))
		require.NoError(t, err, "%s put %s/%s", c.nc.Opts.Name, bucket, key)
	}

	t.Run("scheduler", func(t *testing.T) {
		put(scheduler, n.AppsBucket(), "web", "app")
		put(scheduler, n.InstancesBucket(), "web.a1", "instance")
		kv, err := scheduler.KV(ctx, n.InstancesBucket())
		require.NoError(t, err)
		_, err = kv.Create(ctx, "web.a2", []byte("instance"))
		require.NoError(t, err)
		require.NoError(t, kv.Delete(ctx, "web.a2"))
		require.NoError(t, scheduler.Publish(ctx, n.EventsSubject("web", "created"), []byte("{}")))
		require.NoError(t, scheduler.Publish(ctx, n.UsageSubject("web"), []byte("{}")))
		require.NoError(t, scheduler.Flush(ctx))
		subs[n.AllEvents()].requireGot(t, n.EventsSubject("web", "created"))
		subs[n.AllUsage()].requireGot(t, n.UsageSubject("web"))
	})

	t.Run("healthd", func(t *testing.T) {
		put(healthd, n.HealthBucket(), "web.a1", "healthy")
		put(healthd, n.CheckersBucket(), "c1", "beat")
		require.NoError(t, healthd.Publish(ctx, n.HealthSubject("web", "a1"), []byte("{}")))
		require.NoError(t, healthd.Flush(ctx))
		subs[n.AllHealth()].requireGot(t, n.HealthSubject("web", "a1"))
	})

	t.Run("lbagent", func(t *testing.T) {
		put(lbagent, n.AgentsBucket(), "node1", "applied")
		// The scheduler follows metrics, for autoscaling.
		metrics := subscribe(t, scheduler, n.AllMetrics())
		require.NoError(t, lbagent.Publish(ctx, n.ReloadsSubject("node1"), []byte("{}")))
		require.NoError(t, lbagent.Publish(ctx, n.MetricsSubject("web"), []byte("{}")))
		require.NoError(t, lbagent.Flush(ctx))
		subs[n.AllReloads()].requireGot(t, n.ReloadsSubject("node1"))
		subs[n.AllMetrics()].requireGot(t, n.MetricsSubject("web"))
		metrics.requireGot(t, n.MetricsSubject("web"))
	})

	// What each bucket holds now, by the puts above.
	want := map[string]map[string]string{
		n.AppsBucket():      {"web": "app"},
		n.InstancesBucket(): {"web.a1": "instance"},
		n.HealthBucket():    {"web.a1": "healthy"},
		n.CheckersBucket():  {"c1": "beat"},
		n.AgentsBucket():    {"node1": "applied"},
	}

	t.Run("every role reads every bucket", func(t *testing.T) {
		for role, c := range roles {
			for bucket, kvs := range want {
				kv, err := c.KV(ctx, bucket)
				require.NoError(t, err, "%s opens %s", role, bucket)
				_, err = kv.Status(ctx)
				require.NoError(t, err)
				keys, err := kv.Keys(ctx)
				require.NoError(t, err, "%s lists %s", role, bucket)
				require.Len(t, keys, len(kvs), "%s lists %s", role, bucket)
				for k, v := range kvs {
					e, err := kv.Get(ctx, k)
					require.NoError(t, err, "%s gets %s/%s", role, bucket, k)
					require.Equal(t, v, string(e.Value))
				}
			}
		}
	})

	t.Run("reader watches every bucket", func(t *testing.T) {
		type view struct {
			mu   sync.Mutex
			snap map[string]string
			upd  []string
		}
		views := map[string]*view{}
		for bucket := range want {
			v := &view{}
			views[bucket] = v
			w := NewWatcher(reader.Conn, bucket, decodeString, HandlerFuncs[string]{
				OnSnapshot: func(evs []Event[string], _ uint64) {
					v.mu.Lock()
					defer v.mu.Unlock()
					v.snap = map[string]string{}
					for _, e := range evs {
						v.snap[e.Key] = e.Value
					}
				},
				OnUpdate: func(e Event[string]) {
					v.mu.Lock()
					defer v.mu.Unlock()
					v.upd = append(v.upd, e.Key+"="+e.Value)
				},
			}, zaptest.NewLogger(t))
			startWatcher(t, w)
		}
		for bucket, kvs := range want {
			v := views[bucket]
			require.Eventually(t, func() bool {
				v.mu.Lock()
				defer v.mu.Unlock()
				return v.snap != nil
			}, 10*time.Second, 5*time.Millisecond, bucket)
			v.mu.Lock()
			require.Equal(t, kvs, v.snap, bucket)
			v.mu.Unlock()
		}
		// Then updates.
		put(scheduler, n.InstancesBucket(), "web.a3", "instance")
		put(healthd, n.HealthBucket(), "web.a3", "unknown")
		put(lbagent, n.AgentsBucket(), "node1", "applied-2")
		for bucket, upd := range map[string]string{
			n.InstancesBucket(): "web.a3=instance",
			n.HealthBucket():    "web.a3=unknown",
			n.AgentsBucket():    "node1=applied-2",
		} {
			v := views[bucket]
			require.Eventually(t, func() bool {
				v.mu.Lock()
				defer v.mu.Unlock()
				return len(v.upd) == 1 && v.upd[0] == upd
			}, 10*time.Second, 5*time.Millisecond, bucket)
		}
	})

	t.Run("a role writes only the buckets it owns", func(t *testing.T) {
		for role, c := range roles {
			owned, err := OwnedBuckets(n, role)
			require.NoError(t, err)
			for bucket := range want {
				kv, err := c.KV(ctx, bucket)
				require.NoError(t, err)
				key := "web.x-" + role
				// The scheduler writes the keys of the health bucket (the
				// docker and exec checks it runs), never its stream.
				cowrites := role == RoleScheduler && bucket == n.HealthBucket()
				if containsBucket(owned, bucket) || cowrites {
					_, err := kv.Put(ctx, key, []byte("mine"))
					require.NoError(t, err, "%s writes %s", role, bucket)
					require.NoError(t, kv.Delete(ctx, key), "%s deletes in %s", role, bucket)
					continue
				}
				subject := "$KV." + bucket + "." + key
				requireRefused(t, c, subject, func(ctx context.Context) error { _, err := kv.Put(ctx, key, []byte("x")); return err })
				requireRefused(t, c, subject, func(ctx context.Context) error { _, err := kv.Create(ctx, key, []byte("x")); return err })
				requireRefused(t, c, subject, func(ctx context.Context) error { _, err := kv.Update(ctx, key, []byte("x"), 1); return err })
				requireRefused(t, c, subject, func(ctx context.Context) error { return kv.Delete(ctx, key) })
				requireRefused(t, c, subject, func(ctx context.Context) error { return kv.kv.Purge(ctx, key) })
			}
		}
		// The cases named in the contract, spelled out.
		instances, err := reader.KV(ctx, n.InstancesBucket())
		require.NoError(t, err)
		requireRefused(t, reader, "$KV.acme_instances.web.a1", func(ctx context.Context) error {
			_, err := instances.Put(ctx, "web.a1", []byte("evil"))
			return err
		})
		health, err := lbagent.KV(ctx, n.HealthBucket())
		require.NoError(t, err)
		requireRefused(t, lbagent, "$KV.acme_health.web.a1", func(ctx context.Context) error {
			_, err := health.Put(ctx, "web.a1", []byte("healthy"))
			return err
		})
		instances, err = healthd.KV(ctx, n.InstancesBucket())
		require.NoError(t, err)
		requireRefused(t, healthd, "$KV.acme_instances.web.a1", func(ctx context.Context) error {
			return instances.Delete(ctx, "web.a1")
		})
		// Nothing was changed by the refused writes.
		for bucket, kvs := range want {
			kv, err := scheduler.KV(ctx, bucket)
			require.NoError(t, err)
			for k, v := range kvs {
				if bucket == n.AgentsBucket() {
					v = "applied-2"
				}
				e, err := kv.Get(ctx, k)
				require.NoError(t, err)
				require.Equal(t, v, string(e.Value), "%s/%s", bucket, k)
			}
		}
	})

	t.Run("a role publishes only its own subjects", func(t *testing.T) {
		owners := map[string][]string{
			n.EventsSubject("web", "created"): {RoleScheduler},
			n.UsageSubject("web"):             {RoleScheduler},
			n.HealthSubject("web", "a1"):      {RoleHealthd},
			n.MetricsSubject("web"):           {RoleLBAgent},
			n.ReloadsSubject("node1"):         {RoleLBAgent},
		}
		for subject, owner := range owners {
			for role, c := range roles {
				if owner[0] == role {
					continue // shown above, in each role's own subtest
				}
				requireRefused(t, c, subject, publishOp(c, subject))
			}
		}
		// A subject outside the contract is refused to everyone.
		for _, c := range roles {
			requireRefused(t, c, "acme.v1.admin", publishOp(c, "acme.v1.admin"))
		}
		// The refused messages never reached the subscriber: one of each,
		// from its owner.
		require.Equal(t, 1, subs[n.AllEvents()].count(n.EventsSubject("web", "created")))
		require.Equal(t, 1, subs[n.AllHealth()].count(n.HealthSubject("web", "a1")))
		require.Equal(t, 1, subs[n.AllReloads()].count(n.ReloadsSubject("node1")))
	})

	t.Run("a role subscribes only to what it follows", func(t *testing.T) {
		refused := map[string][]string{
			RoleScheduler: {">", "$KV.>", n.AllHealth(), n.AllReloads()},
			RoleHealthd:   {">", "$KV.>", n.AllEvents(), n.AllMetrics()},
			RoleLBAgent:   {">", "$KV.>", n.AllEvents(), n.AllHealth()},
			RoleReader:    {">", "$KV.>", "$JS.>", "other.v1.>"},
		}
		for role, subjects := range refused {
			for _, subject := range subjects {
				requireSubscribeRefused(t, roles[role], subject)
			}
		}
		// What each follows is allowed: the reader's subscriptions and the
		// scheduler's to metrics received their messages above, and the
		// scheduler follows events (its events --follow) and usage.
		events, usage := subscribe(t, scheduler, n.AllEvents()), subscribe(t, scheduler, n.AllUsage())
		require.NoError(t, scheduler.Publish(ctx, n.EventsSubject("web", "scaled"), []byte("{}")))
		require.NoError(t, scheduler.Publish(ctx, n.UsageSubject("api"), []byte("{}")))
		require.NoError(t, scheduler.Flush(ctx))
		events.requireGot(t, n.EventsSubject("web", "scaled"))
		usage.requireGot(t, n.UsageSubject("api"))
		// The reader follows the whole contract in one subscription.
		all := subscribe(t, reader, "acme.v1.>")
		require.NoError(t, scheduler.Publish(ctx, n.EventsSubject("web", "deleted"), []byte("{}")))
		require.NoError(t, scheduler.Flush(ctx))
		all.requireGot(t, n.EventsSubject("web", "deleted"))
	})

	t.Run("only the owner purges or deletes a bucket's stream", func(t *testing.T) {
		for _, bucket := range []string{n.AppsBucket(), n.InstancesBucket()} {
			stream := "KV_" + bucket
			for _, role := range []string{RoleHealthd, RoleLBAgent, RoleReader} {
				c := roles[role]
				s, err := c.js.Stream(ctx, stream)
				require.NoError(t, err, "%s may look at %s", role, stream)
				requireRefused(t, c, "$JS.API.STREAM.PURGE."+stream, func(ctx context.Context) error { return s.Purge(ctx) })
				requireRefused(t, c, "$JS.API.STREAM.DELETE."+stream, func(ctx context.Context) error { return c.js.DeleteStream(ctx, stream) })
				requireRefused(t, c, "$JS.API.STREAM.UPDATE."+stream, func(ctx context.Context) error {
					cfg := s.CachedInfo().Config
					cfg.MaxAge = time.Second
					_, err := c.js.UpdateStream(ctx, cfg)
					return err
				})
			}
			kv, err := reader.KV(ctx, bucket)
			require.NoError(t, err)
			keys, err := kv.Keys(ctx)
			require.NoError(t, err)
			require.NotEmpty(t, keys, "%s still holds its keys", bucket)
		}
		// The owner may.
		s, err := scheduler.js.Stream(ctx, "KV_"+n.AppsBucket())
		require.NoError(t, err)
		require.NoError(t, s.Purge(ctx))
		require.NoError(t, scheduler.js.DeleteStream(ctx, "KV_"+n.InstancesBucket()))
		_, err = reader.KV(ctx, n.InstancesBucket())
		require.ErrorIs(t, err, ErrBucketNotFound)
		// And only it creates the bucket again.
		requireRefused(t, healthd, "$JS.API.STREAM.UPDATE.KV_acme_instances", func(ctx context.Context) error {
			return healthd.EnsureBuckets(ctx, ContractBuckets(n)[1:2])
		})
		owned, err := OwnedBuckets(n, RoleScheduler)
		require.NoError(t, err)
		require.NoError(t, scheduler.EnsureBuckets(ctx, owned))
	})

	t.Run("no permission error on the way", func(t *testing.T) {
		// Every refusal above was asked for; anything else the server
		// refused would mean a role lacks a subject its job needs
		// (consumer delete when a watch stops, say). The refusals asked
		// for above each name their subject: only those are allowed here.
		for role, c := range roles {
			for _, v := range c.violations() {
				require.True(t, expectedViolation(v), "%s: %s", role, v)
			}
		}
	})
}

// requireSubscribeRefused subscribes c to subject and requires the server
// to refuse it. The server reports that asynchronously.
func requireSubscribeRefused(t *testing.T, c roleConn, subject string) {
	t.Helper()
	sub, err := c.Subscribe(subject, func(string, []byte) {})
	require.NoError(t, err)
	defer func() { _ = sub.Drain() }()
	require.NoError(t, c.Flush(ctxT(t)))
	want := fmt.Sprintf("Permissions Violation for Subscription to %q", subject)
	require.Eventually(t, func() bool {
		for _, v := range c.violations() {
			if strings.Contains(v, want) {
				return true
			}
		}
		return false
	}, 5*time.Second, 5*time.Millisecond, "%s subscribes to %s", c.nc.Opts.Name, subject)
}

// expectedViolation reports whether v is one of the refusals the test asks
// for: writes, stream admin and plain subjects, never a read, a watch or a
// reply.
func expectedViolation(v string) bool {
	for _, s := range []string{`"$KV.`, `"$JS.API.INFO"`, `"$JS.API.STREAM.UPDATE.`, `"$JS.API.STREAM.PURGE.`, `"$JS.API.STREAM.DELETE.`, `"$JS.API.STREAM.INFO.KV_other_`, `"acme.v1.`} {
		if strings.Contains(v, "Publish to "+s) {
			return true
		}
	}
	for _, s := range []string{`">"`, `"$KV.>"`, `"$JS.>"`, `"acme.v1.`, `"other.v1.>"`} {
		if strings.Contains(v, "Subscription to "+s) {
			return true
		}
	}
	return false
}

func containsBucket(bs []BucketConfig, name string) bool {
	for _, b := range bs {
		if b.Name == name {
			return true
		}
	}
	return false
}

// TestReaderFollowsBucketPastFlowControl watches a bucket larger than a
// push consumer's flow control window, so the server asks the watcher for
// flow control replies ($JS.FC…): without permission to answer, the
// snapshot would stall.
func TestReaderFollowsBucketPastFlowControl(t *testing.T) {
	t.Parallel()
	env := startAuthServer(t, "fc")
	ctx := ctxT(t)
	scheduler := env.connect(t, RoleScheduler)
	reader := env.connect(t, RoleReader)
	owned, err := OwnedBuckets(env.n, RoleScheduler)
	require.NoError(t, err)
	require.NoError(t, scheduler.EnsureBuckets(ctx, owned))
	kv, err := scheduler.KV(ctx, env.n.AppsBucket())
	require.NoError(t, err)
	// The window starts at 2 MiB and flow control is asked for at half.
	const keys, size = 400, 16 << 10
	value := []byte(strings.Repeat("x", size))
	for i := range keys {
		_, err := kv.Put(ctx, fmt.Sprintf("app%d", i), value)
		require.NoError(t, err)
	}
	got := make(chan int, 1)
	w := NewWatcher(reader.Conn, env.n.AppsBucket(), decodeString, HandlerFuncs[string]{
		OnSnapshot: func(evs []Event[string], _ uint64) { got <- len(evs) },
		OnUpdate:   func(Event[string]) {},
	}, zaptest.NewLogger(t))
	startWatcher(t, w)
	select {
	case n := <-got:
		require.Equal(t, keys, n)
	case <-time.After(15 * time.Second):
		t.Fatalf("no snapshot; permission errors: %v", reader.violations())
	}
	require.Empty(t, reader.violations())
}

func TestRefusals(t *testing.T) {
	t.Parallel()
	violation := func(text string) error { return fmt.Errorf("%w: %s", nats.ErrPermissionViolation, text) }
	tests := []struct {
		name    string
		err     error
		subject string
		ok      bool
	}{
		{name: "publish", err: violation(`Permissions Violation for Publish to "$KV.a_apps.web"`), subject: "$KV.a_apps.web", ok: true},
		{name: "quoted", err: violation(`Permissions Violation for Publish to "a.\"b\""`), subject: `a."b"`, ok: true},
		{name: "subscription", err: violation(`Permissions Violation for Subscription to "a.>"`)},
		{name: "reply", err: violation(`Permissions Violation for Publish with Reply of "_R_.x"`)},
		{name: "other error", err: fmt.Errorf("Permissions Violation for Publish to %q", "a")},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			subject, ok := deniedSubject(tt.err)
			require.Equal(t, tt.ok, ok)
			require.Equal(t, tt.subject, subject)
		})
	}

	var r refusals
	a, stopA := r.guard(context.Background(), "x", "y")
	defer stopA()
	b, stopB := r.guard(context.Background(), "z")
	r.refused("y", violation(`Permissions Violation for Publish to "y"`))
	<-a.Done()
	require.ErrorIs(t, denial(a, context.Canceled), ErrPermissionDenied)
	require.ErrorContains(t, denial(a, context.Canceled), `Publish to "y"`)
	require.NoError(t, b.Err(), "a refusal ends only the operations that publish to its subject")
	require.ErrorIs(t, denial(b, context.DeadlineExceeded), context.DeadlineExceeded)
	require.NoError(t, denial(a, nil))
	stopB()
	require.ErrorIs(t, context.Cause(b), context.Canceled, "stop releases the guard")
	r.refused("z", violation(`Permissions Violation for Publish to "z"`))
	require.NotErrorIs(t, context.Cause(b), ErrPermissionDenied)
	r.mu.Lock()
	require.Len(t, r.guards, 1)
	r.mu.Unlock()
}

// TestServerConfigCarriesTheRoles: the config `scheduler nats-config`
// prints parses into exactly the users and permissions AuthUsers gives,
// and an embedded server started from it refuses an anonymous client and
// takes a role's credential.
func TestServerConfigCarriesTheRoles(t *testing.T) {
	t.Parallel()
	names, err := msg.NewNames("acme")
	require.NoError(t, err)
	seeds, err := EnsureCredentials(filepath.Join(t.TempDir(), "creds"))
	require.NoError(t, err)
	conf, err := ServerConfig(names, seeds)
	require.NoError(t, err)
	path := filepath.Join(t.TempDir(), "nats.conf")
	require.NoError(t, os.WriteFile(path, []byte(conf), 0o600))
	opts, err := server.ProcessConfigFile(path)
	require.NoError(t, err, "%s", conf)
	want, err := AuthUsers(names, seeds)
	require.NoError(t, err)
	require.Len(t, opts.Nkeys, len(want))
	byKey := map[string]*server.NkeyUser{}
	for _, u := range opts.Nkeys {
		byKey[u.Nkey] = u
	}
	for _, w := range want {
		got := byKey[w.Nkey]
		require.NotNil(t, got, w.Nkey)
		require.Equal(t, w.Permissions.Publish.Allow, got.Permissions.Publish.Allow)
		require.Equal(t, w.Permissions.Subscribe.Allow, got.Permissions.Subscribe.Allow)
	}

	srv, err := Embedded(EmbeddedOptions{Port: -1, StoreDir: t.TempDir(), ConfigFile: path}, zaptest.NewLogger(t))
	require.NoError(t, err)
	t.Cleanup(srv.Shutdown)
	_, err = Connect(context.Background(), Options{URL: srv.URL()}, zaptest.NewLogger(t))
	require.ErrorIs(t, err, nats.ErrAuthorization)
	c, err := Connect(context.Background(), Options{URL: srv.URL(), NKeyFile: seeds[RoleReader]}, zaptest.NewLogger(t))
	require.NoError(t, err)
	c.Close()
}

// startWatcher runs w until the (sub)test ends.
func startWatcher[T any](t *testing.T, w *Watcher[T]) {
	wctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- w.Run(wctx) }()
	t.Cleanup(func() {
		cancel()
		require.NoError(t, <-done)
	})
}
