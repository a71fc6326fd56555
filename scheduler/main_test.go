package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/cookiejar"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/berthhq/berth/common/bus"
	"github.com/berthhq/berth/common/msg"
	"github.com/berthhq/berth/internal/testrig"
	"github.com/berthhq/berth/scheduler/internal/api"
	"github.com/berthhq/berth/scheduler/internal/store"
	"github.com/stretchr/testify/require"
	"go.uber.org/zap/zaptest"
)

func TestMain(m *testing.M) { testrig.Main(m) }

// cmd runs the scheduler command line and returns its exit code and output.
func cmd(t *testing.T, args ...string) (int, string, string) {
	t.Helper()
	dir := t.TempDir()
	out, _ := os.Create(filepath.Join(dir, "out"))
	errf, _ := os.Create(filepath.Join(dir, "err"))
	code := run(args, out, errf)
	out.Close()
	errf.Close()
	o, _ := os.ReadFile(filepath.Join(dir, "out"))
	e, _ := os.ReadFile(filepath.Join(dir, "err"))
	return code, string(o), string(e)
}

type replica struct {
	api  string
	stop func()
}

func startReplica(t *testing.T, dbURL, natsURL, id string, extra ...string) *replica {
	t.Helper()
	api := fmt.Sprintf("127.0.0.1:%d", testrig.FreePort(t))
	devnull, _ := os.OpenFile(os.DevNull, os.O_WRONLY, 0)
	t.Cleanup(func() { devnull.Close() })
	c, kctx, _, done := parse(append([]string{"run", "--database-url", dbURL, "--nats-url", natsURL, "--api-listen", api,
		"--id", id, "--lease-ttl", "2s", "--resync", "1h"}, extra...), devnull, devnull)
	require.False(t, done)
	require.Equal(t, "run", kctx.Command())
	require.NoError(t, c.Run.check())
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() { errc <- serve(ctx, &c.Run, zaptest.NewLogger(t)) }()
	var once sync.Once
	r := &replica{api: "http://" + api, stop: func() {
		once.Do(func() {
			cancel()
			require.NoError(t, <-errc)
		})
	}}
	t.Cleanup(r.stop)
	testrig.WaitHTTP(t, r.api+"/healthz", 10*time.Second)
	return r
}

func appsKV(t *testing.T, natsURL string) *bus.KV {
	conn, err := bus.Connect(context.Background(), bus.Options{URL: natsURL}, zaptest.NewLogger(t))
	require.NoError(t, err)
	t.Cleanup(conn.Close)
	names, _ := msg.NewNames("berth")
	require.NoError(t, conn.EnsureBuckets(context.Background(), bus.ContractBuckets(names)))
	kv, err := conn.KV(context.Background(), names.AppsBucket())
	require.NoError(t, err)
	return kv
}

func published(kv *bus.KV, name string) *msg.App {
	e, err := kv.Get(context.Background(), name)
	if err != nil {
		return nil
	}
	a, err := msg.DecodeAs[*msg.App](e.Value)
	if err != nil {
		return nil
	}
	return a
}

func TestMigrateCommand(t *testing.T) {
	t.Parallel()
	db := testrig.Postgres(t)
	code, out, _ := cmd(t, "migrate", "status", "--database-url", db)
	require.Equal(t, 0, code)
	require.Equal(t, "schema version 0 of 16\n", out)
	code, out, _ = cmd(t, "migrate", "--database-url", db)
	require.Equal(t, 0, code)
	require.Equal(t, "schema version 16 of 16\n", out)
	// run refuses a database that is behind, unless --migrate.
	fresh := testrig.Postgres(t)
	c, _, _, _ := parse([]string{"run", "--database-url", fresh, "--nats-url", testrig.NATS(t)}, nil, nil)
	require.ErrorContains(t, serve(context.Background(), &c.Run, zaptest.NewLogger(t)), "run scheduler migrate")
}

func TestCheckConfig(t *testing.T) {
	t.Parallel()
	code, _, errOut := cmd(t, "check-config", "--api-listen", "0.0.0.0:7070", "--lease-ttl", "100ms")
	require.Equal(t, 1, code)
	for _, want := range []string{"--database-url: must be set", "is not loopback: give --api-token-file", "--lease-ttl (100ms): must be between 1s and 5m"} {
		require.Contains(t, errOut, want)
	}
	code, _, _ = cmd(t, "check-config", "--database-url", "postgres://u:p@h/db")
	require.Equal(t, 0, code)

	// A NATS cluster: every member in --nats-url, and replicated buckets.
	cluster := []string{"check-config", "--database-url", "postgres://u:p@h/db", "--nats-url", "nats://n1:4222, nats://n2:4222,nats://n3:4222"}
	code, _, errOut = cmd(t, append(cluster, "--nats-replicas", "3")...)
	require.Equal(t, 0, code, errOut)
	for _, tt := range []struct {
		args []string
		want string
	}{
		{append(cluster, "--nats-replicas", "2"), "--nats-replicas 2: must be 1, 3 or 5"},
		{append(cluster, "--nats-replicas", "0"), "--nats-replicas 0: must be 1, 3 or 5"},
		{[]string{"check-config", "--database-url", "postgres://u:p@h/db", "--nats-replicas", "3"}, "--nats-replicas 3: the embedded NATS is one server"},
		{[]string{"check-config", "--database-url", "postgres://u:p@h/db", "--nats-url", "nats://n1:4222,,nats://n3:4222"}, "nats url 2 of 3: empty"},
		{[]string{"check-config", "--database-url", "postgres://u:p@h/db", "--nats-url", "nats://n1:4222,http://n2"}, `nats url 2 of 2 (http://n2): scheme "http"`},
		{[]string{"check-config", "--database-url", "postgres://u:p@h/db", "--history-keep", "1"}, "--history-keep (1): must be between 2 (the current generation and the one rollback returns to) and 10000"},
		{[]string{"check-config", "--database-url", "postgres://u:p@h/db", "--history-keep", "10001"}, "--history-keep (10001): must be between 2"},
		{[]string{"check-config", "--database-url", "postgres://u:p@h/db", "--events-keep", "1h"}, "--events-keep (1h0m0s): must be 0 (keep every event) or between 24h0m0s (the window the restart budget and failed rollouts read) and 87600h0m0s"},
	} {
		code, _, errOut = cmd(t, tt.args...)
		require.Equal(t, 1, code, "%v", tt.args)
		require.Contains(t, errOut, tt.want, "%v", tt.args)
	}

	// ACME: the flags it needs, and none of them without it.
	db := []string{"check-config", "--database-url", "postgres://u:p@h/db"}
	code, _, errOut = cmd(t, append(db, "--acme-directory", "http://ca/dir", "--acme-email", "Ops <ops@x>")...)
	require.Equal(t, 1, code)
	for _, want := range []string{"--acme-directory \"http://ca/dir\": must be an https:// URL", "--acme-email", "needs --cert-key-file: the key that encrypts"} {
		require.Contains(t, errOut, want)
	}
	code, _, errOut = cmd(t, append(db, "--cert-key-file", "/nonexistent")...)
	require.Equal(t, 1, code)
	require.Contains(t, errOut, "need --acme-directory")
	key := filepath.Join(t.TempDir(), "cert.key")
	require.NoError(t, os.WriteFile(key, []byte("MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=\n"), 0o600))
	code, _, errOut = cmd(t, append(db, "--acme-directory", "https://acme-v02.api.letsencrypt.org/directory", "--cert-key-file", key, "--acme-email", "ops@example.com")...)
	require.Equal(t, 0, code, errOut)
	code, _, errOut = cmd(t, append(db, "--acme-directory", "https://acme-v02.api.letsencrypt.org/directory", "--cert-key-file", key, "--acme-orders-per-hour", "0")...)
	require.Equal(t, 1, code)
	require.Contains(t, errOut, "--acme-orders-per-hour (0): must be between 1 and 10000")
	code, _, _ = cmd(t, "no-such-command")
	require.Equal(t, 2, code)

	// Hosts: --host-tls-dir is a directory; --network-cidr bounds
	// --network's addresses, and reaches no loopback or link-local range.
	tlsDir := t.TempDir()
	code, _, errOut = cmd(t, append(db, "--host-tls-dir", tlsDir, "--allow-loopback-hosts", "--network", "apps", "--network-cidr", "172.30.0.0/16", "--network-cidr", "fd00:b::/64")...)
	require.Equal(t, 0, code, errOut)
	for _, tt := range []struct {
		args []string
		want string
	}{
		{[]string{"--host-tls-dir", filepath.Join(tlsDir, "nope")}, "--host-tls-dir: stat"},
		{[]string{"--host-tls-dir", key}, "is not a directory"},
		{[]string{"--host-tls-dir", "/"}, "must be an absolute, clean path other than /"},
		{[]string{"--network-cidr", "172.30.0.0/16"}, "--network-cidr needs --network"},
		{[]string{"--network", "apps", "--network-cidr", "0.0.0.0/0"}, "--network-cidr 0.0.0.0/0: overlaps 0.0.0.0/8"},
		{[]string{"--network", "apps", "--network-cidr", "169.254.0.0/16"}, "overlaps 169.254.0.0/16"},
		{[]string{"--network", "apps", "--network-cidr", "::/0"}, "overlaps ::/128"},
		{[]string{"--network", "apps", "--network-cidr", "172.30.0.1/16"}, "with no host bits set"},
		{[]string{"--network", "apps", "--network-cidr", "apps"}, "must be a prefix"},
	} {
		code, _, errOut = cmd(t, append(db, tt.args...)...)
		require.Equal(t, 1, code, "%v", tt.args)
		require.Contains(t, errOut, tt.want, "%v", tt.args)
	}
}

func TestReplicasPublishAndFailOver(t *testing.T) {
	t.Parallel()
	db, natsURL := testrig.Postgres(t), testrig.NATS(t)
	code, _, _ := cmd(t, "migrate", "--database-url", db)
	require.Equal(t, 0, code)
	kv := appsKV(t, natsURL)
	events := make(chan *msg.Event, 50)
	econn, err := bus.Connect(context.Background(), bus.Options{URL: natsURL}, zaptest.NewLogger(t))
	require.NoError(t, err)
	t.Cleanup(econn.Close)
	names, _ := msg.NewNames("berth")
	_, err = econn.Subscribe(names.AllEvents(), bus.Decoded(msg.DecodeAs[*msg.Event], func(_ string, e *msg.Event) { events <- e }, func(string, error) {}))
	require.NoError(t, err)
	a := startReplica(t, db, natsURL, "sched-a")
	b := startReplica(t, db, natsURL, "sched-b")

	spec := filepath.Join(t.TempDir(), "web.yaml")
	require.NoError(t, os.WriteFile(spec, []byte("name: web\nimage: web:1\nport: 8080\nreplicas: 2\nrouting: {hosts: [web.example.com]}\n"), 0o644))
	code, out, errOut := cmd(t, "apply", "-f", spec, "--server", b.api) // any replica serves the API
	require.Equal(t, 0, code, errOut)
	require.Equal(t, "web: created, generation 1\n", out)

	var term uint64
	require.Eventually(t, func() bool {
		p := published(kv, "web")
		if p == nil {
			return false
		}
		term = p.Term
		return p.Generation == 1 && p.Routing.Hosts[0] == "web.example.com"
	}, 10*time.Second, 20*time.Millisecond, "the leader publishes the app view")

	require.NoError(t, os.WriteFile(spec, []byte("name: web\nimage: web:2\nport: 8080\nreplicas: 2\nrouting: {hosts: [web.example.com]}\n"), 0o644))
	code, out, _ = cmd(t, "apply", "-f", spec, "--server", a.api)
	require.Equal(t, 0, code)
	require.Equal(t, "web: generation 2, changed: image\n", out)
	code, out, _ = cmd(t, "apply", "-f", spec, "--server", a.api)
	require.Equal(t, 0, code)
	require.Equal(t, "web: unchanged, generation 2\n", out)

	// Stop whichever leads; the other takes over and republishes under a new term.
	leaderAPI := func(r *replica) bool {
		code, out, _ := cmd(t, "status", "--server", r.api, "-o", "json")
		return code == 0 && out != ""
	}
	require.True(t, leaderAPI(a) && leaderAPI(b))
	first, second := a, b
	if p := published(kv, "web"); p != nil && readyRole(t, b.api) == "leader" {
		first, second = b, a
	}
	first.stop()
	require.Eventually(t, func() bool { return readyRole(t, second.api) == "leader" }, 2*time.Second, 10*time.Millisecond)
	code, _, _ = cmd(t, "scale", "web", "4", "--server", second.api)
	require.Equal(t, 0, code)
	require.Eventually(t, func() bool {
		p := published(kv, "web")
		return p != nil && p.Generation == 3 && p.Term > term
	}, 10*time.Second, 20*time.Millisecond, "the new leader publishes under its new term")

	code, out, _ = cmd(t, "status", "--server", second.api)
	require.Equal(t, 0, code)
	require.Contains(t, out, "web")
	code, out, _ = cmd(t, "status", "web", "--server", second.api)
	require.Equal(t, 0, code)
	require.Contains(t, out, "web: generation 3, 0 of 4 replicas running, image web:2")
	code, out, _ = cmd(t, "rollback", "web", "--server", second.api)
	require.Equal(t, 0, code, out)
	require.Contains(t, out, "rolled back")
	code, _, _ = cmd(t, "rm", "web", "--server", second.api)
	require.Equal(t, 0, code)
	require.Eventually(t, func() bool { return published(kv, "web") == nil }, 10*time.Second, 20*time.Millisecond, "a deleted app leaves the bucket")
	// The leader records app_deleted just after it deletes the key.
	require.Eventually(t, func() bool {
		code, out, _ = cmd(t, "events", "--app", "web", "--server", second.api)
		return code == 0 && strings.Contains(out, "app_deleted")
	}, 10*time.Second, 20*time.Millisecond)
	require.Contains(t, out, "app_updated")

	// The leader published each lifecycle event on NATS too.
	kinds := map[msg.EventKind]int{}
	require.Eventually(t, func() bool {
		for len(events) > 0 {
			e := <-events
			require.Equal(t, "web", e.App)
			kinds[e.Kind]++
		}
		return kinds[msg.EventAppDeleted] == 1
	}, 5*time.Second, 10*time.Millisecond)
	require.GreaterOrEqual(t, kinds[msg.EventAppUpdated], 3)
	require.Equal(t, 1, kinds[msg.EventAppDeleted])
}

func readyRole(t *testing.T, api string) string {
	body := testrig.WaitHTTP(t, api+"/readyz", 5*time.Second)
	switch {
	case strings.Contains(body, `"role":"leader"`):
		return "leader"
	case strings.Contains(body, `"role":"follower"`):
		return "follower"
	}
	return body
}

func TestClientErrors(t *testing.T) {
	t.Parallel()
	db, natsURL := testrig.Postgres(t), testrig.NATS(t)
	code, _, _ := cmd(t, "migrate", "--database-url", db)
	require.Equal(t, 0, code)
	r := startReplica(t, db, natsURL, "sched-c")
	bad := filepath.Join(t.TempDir(), "bad.yaml")
	require.NoError(t, os.WriteFile(bad, []byte("name: web\nimage: web:1\nport: 99999\nroutng: {}\n"), 0o644))
	code, _, errOut := cmd(t, "apply", "-f", bad, "--server", r.api)
	require.Equal(t, 2, code)
	require.Contains(t, errOut, "routng: unknown field")
	require.Contains(t, errOut, "port: (99999) must be between 1 and 65535")

	code, _, errOut = cmd(t, "scale", "nope", "3", "--server", r.api)
	require.Equal(t, 1, code)
	require.Contains(t, errOut, "app not found")
	code, _, errOut = cmd(t, "status", "--server", "http://127.0.0.1:1")
	require.Equal(t, 1, code)
	require.Contains(t, errOut, "cannot reach the scheduler")
}

func TestHostsCommands(t *testing.T) {
	t.Parallel()
	st, err := store.Open(context.Background(), testrig.Postgres(t))
	require.NoError(t, err)
	t.Cleanup(st.Close)
	_, err = st.Migrate(context.Background())
	require.NoError(t, err)
	srv := httptest.NewServer(api.New(api.Deps{Apps: st, Changes: st, Events: st, Decisions: st, DB: st, Claims: st, Hosts: api.HostRegistry{HostStore: st}},
		api.Options{Open: true}, zaptest.NewLogger(t)))
	t.Cleanup(srv.Close)
	code, out, _ := cmd(t, "hosts", "ls", "--server", srv.URL)
	require.Equal(t, 0, code)
	require.Contains(t, out, "no host is registered: every instance runs on the scheduler's local Docker engine")
	code, out, errOut := cmd(t, "hosts", "add", "h1", "--docker-url", "unix:///var/run/docker-h1.sock", "--address", "10.0.1.2",
		"--label", "zone=a", "--label", "disk=ssd", "--cpu", "4", "--memory", "8Gi", "--registry", "registry.corp.example", "--registry", "ghcr.io", "--server", srv.URL)
	require.Equal(t, 0, code, errOut)
	require.Contains(t, out, "h1: registered (unix:///var/run/docker-h1.sock, address 10.0.1.2, registry credentials: registry.corp.example,ghcr.io)")
	code, _, errOut = cmd(t, "hosts", "add", "h2", "--docker-url", "tcp://10.0.0.2:2375", "--address", "10.0.0.2", "--server", srv.URL)
	require.Equal(t, exitUsage, code)
	require.Contains(t, errOut, "tls: must be set for a tcp:// engine off loopback")
	code, _, errOut = cmd(t, "hosts", "add", "h2", "--docker-url", "unix:///var/run/docker-h2.sock", "--address", "127.0.1.2", "--server", srv.URL)
	require.Equal(t, exitUsage, code, "this scheduler does not allow loopback hosts")
	require.Contains(t, errOut, `address: "127.0.1.2" is loopback`)
	code, _, errOut = cmd(t, "hosts", "add", "h2", "--docker-url", "tcp://10.0.0.2:2376", "--address", "10.0.0.2",
		"--tls-ca", "/etc/ssl/ca.pem", "--tls-cert", "/etc/ssl/c.pem", "--tls-key", "/etc/berth/cert.key", "--server", srv.URL)
	require.Equal(t, exitUsage, code)
	require.Contains(t, errOut, "TLS files are refused: this scheduler has no --host-tls-dir")
	code, out, _ = cmd(t, "hosts", "ls", "--server", srv.URL)
	require.Equal(t, 0, code)
	require.Regexp(t, `h1\s+unknown\s+10.0.1.2\s+0.00/4\s+0/8Gi\s+0\s+disk=ssd,zone=a\s+registry.corp.example,ghcr.io\s+unix:///var/run/docker-h1.sock\n`, out)
	code, out, _ = cmd(t, "hosts", "drain", "h1", "--server", srv.URL)
	require.Equal(t, 0, code)
	require.Contains(t, out, "h1: draining")
	code, out, _ = cmd(t, "hosts", "ls", "--server", srv.URL)
	require.Equal(t, 0, code)
	require.Contains(t, out, "unknown,draining")
	code, out, _ = cmd(t, "hosts", "undrain", "h1", "--server", srv.URL)
	require.Equal(t, 0, code)
	require.Contains(t, out, "h1: takes instances again")
	code, out, _ = cmd(t, "hosts", "rm", "h1", "--server", srv.URL)
	require.Equal(t, 0, code)
	require.Equal(t, "h1: removed\n", out)
	code, _, errOut = cmd(t, "hosts", "rm", "h1", "--server", srv.URL)
	require.Equal(t, exitFailed, code)
	require.Contains(t, errOut, "not found")
}

func TestClientSaysPostgresIsUnreachable(t *testing.T) {
	t.Parallel()
	port := testrig.FreePort(t)
	st, err := store.Open(context.Background(), fmt.Sprintf("postgres://berth:hunter2@127.0.0.1:%d/berth?sslmode=disable", port))
	require.NoError(t, err)
	t.Cleanup(st.Close)
	srv := httptest.NewServer(api.New(api.Deps{Apps: st, Changes: st, Events: st, Decisions: st, DB: st, Claims: st}, api.Options{Open: true}, zaptest.NewLogger(t)))
	t.Cleanup(srv.Close)
	tests := []struct {
		name string
		args []string
	}{
		{"scale", []string{"scale", "web", "3"}},
		{"status", []string{"status"}},
		{"status of an app", []string{"status", "web"}},
		{"apply", []string{"apply", "-f", writeSpec(t, "name: web\nimage: web:1\nport: 8080\n")}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			code, out, errOut := cmd(t, append(tt.args, "--server", srv.URL)...)
			require.Equal(t, exitFailed, code)
			require.Empty(t, out)
			require.Equal(t, "scheduler: "+api.UnavailableMessage+"\n", errOut)
			require.NotContains(t, errOut, "hunter2")
		})
	}
}

func writeSpec(t *testing.T, src string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "app.yaml")
	require.NoError(t, os.WriteFile(p, []byte(src), 0o600))
	return p
}

// TestEmbeddedNATSRequiresRoles: with no --nats-url the scheduler's NATS
// requires a role credential of every client, made on first start under
// --data-dir; nats-credential prints one; a healthd credential cannot
// write instances; and listening off loopback without TLS is refused
// unless the flag for that risk is given.
func TestEmbeddedNATSRequiresRoles(t *testing.T) {
	t.Parallel()
	db := testrig.Postgres(t)
	code, _, _ := cmd(t, "migrate", "--database-url", db)
	require.Equal(t, 0, code)
	dataDir := t.TempDir()
	natsAddr := fmt.Sprintf("127.0.0.1:%d", testrig.FreePort(t))
	startReplica(t, db, "", "embedded-a", "--nats-listen", natsAddr, "--data-dir", dataDir)
	url := "nats://" + natsAddr

	_, err := bus.Connect(context.Background(), bus.Options{URL: url}, zaptest.NewLogger(t))
	require.ErrorContains(t, err, "--nats-nkey", "an anonymous client is refused, and told which flag to give")

	code, seed, errOut := cmd(t, "nats-credential", "healthd", "--data-dir", dataDir)
	require.Equal(t, 0, code, errOut)
	require.True(t, strings.HasPrefix(seed, "SU"), "a user nkey seed")
	file := filepath.Join(t.TempDir(), "healthd.nk")
	require.NoError(t, os.WriteFile(file, []byte(seed), 0o600))
	conn, err := bus.Connect(context.Background(), bus.Options{URL: url, NKeyFile: file}, zaptest.NewLogger(t))
	require.NoError(t, err)
	t.Cleanup(conn.Close)
	names, _ := msg.NewNames("berth")
	require.Eventually(t, func() bool { _, err := conn.KV(context.Background(), names.AppsBucket()); return err == nil }, 10*time.Second, 20*time.Millisecond,
		"healthd reads the buckets the scheduler made")
	kv, err := conn.KV(context.Background(), names.InstancesBucket())
	require.NoError(t, err)
	_, err = kv.Put(context.Background(), "web.evil", []byte(`{}`))
	require.ErrorIs(t, err, bus.ErrPermissionDenied, "healthd's credential cannot write an instance")

	code, conf, _ := cmd(t, "nats-config", "--data-dir", dataDir)
	require.Equal(t, 0, code)
	require.Contains(t, conf, "authorization {")
	require.NotContains(t, conf, strings.TrimSpace(seed), "the config holds public keys only")

	code, _, errOut = cmd(t, "check-config", "--database-url", "postgres://u:p@h/db", "--nats-listen", "0.0.0.0:4222")
	require.Equal(t, 1, code)
	require.Contains(t, errOut, "--allow-unencrypted-nats")
	code, _, _ = cmd(t, "check-config", "--database-url", "postgres://u:p@h/db", "--nats-listen", "0.0.0.0:4222", "--allow-unencrypted-nats")
	require.Equal(t, 0, code)
}

// TestEmbeddedNATSTakesNodeKeys: a node's credential printed while the
// scheduler runs is accepted by its embedded NATS and published, sealed, in
// the node-key directory within a scan; the node writes its own record
// only; a healthd key rotated with nats-key is accepted at each step and
// the old one refused once retired; and a removed node is cut off and
// leaves the directory.
func TestEmbeddedNATSTakesNodeKeys(t *testing.T) {
	t.Parallel()
	db := testrig.Postgres(t)
	code, _, _ := cmd(t, "migrate", "--database-url", db)
	require.Equal(t, 0, code)
	dataDir := t.TempDir()
	natsAddr := fmt.Sprintf("127.0.0.1:%d", testrig.FreePort(t))
	r := startReplica(t, db, "", "nodes-a", "--nats-listen", natsAddr, "--data-dir", dataDir)
	url := "nats://" + natsAddr
	// usersLoaded reads how often the embedded NATS took the credentials
	// directory's users; loaded waits until it took them once more than
	// at before: the change the test made is in force.
	usersLoaded := func() int {
		resp, err := http.Get(r.api + "/metrics")
		if err != nil {
			return -1
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		m := regexp.MustCompile(`(?m)^berth_scheduler_nats_users_loaded_total (\d+)`).FindSubmatch(b)
		if m == nil {
			return -1
		}
		n, _ := strconv.Atoi(string(m[1]))
		return n
	}
	loaded := func(before int, what string) {
		t.Helper()
		require.Eventually(t, func() bool { return usersLoaded() > before }, 30*time.Second, 20*time.Millisecond, what)
	}
	names, _ := msg.NewNames("berth")
	ctx := context.Background()
	save := func(name, content string) string {
		p := filepath.Join(t.TempDir(), name)
		require.NoError(t, os.WriteFile(p, []byte(content), 0o600))
		return p
	}
	connect := func(path string) (*bus.Conn, error) {
		o := bus.Flags{URL: url, NKeyFile: path, Replicas: 1}
		return o.Connect(ctx, filepath.Base(path), names, zaptest.NewLogger(t))
	}

	code, out, errOut := cmd(t, "nats-credential", "healthd", "--node", "lb-1", "--data-dir", dataDir)
	require.Equal(t, 2, code)
	require.Empty(t, out)
	require.Contains(t, errOut, "only lbagent has keys per node")
	code, out, errOut = cmd(t, "nats-credential", "lbagent", "--node", "lb-1", "--data-dir", dataDir)
	require.Equal(t, 0, code, errOut)
	require.Contains(t, out, "# berth-node lb-1\n")
	require.Contains(t, errOut, "within 2 s")
	lb1 := save("lb-1.nk", out)

	// The start's users, then the new node's key.
	require.Eventually(t, func() bool { return usersLoaded() >= 1 }, 30*time.Second, 20*time.Millisecond, "the embedded NATS took its users at start")
	loaded(1, "the running embedded NATS takes the new node's key")
	node, err := connect(lb1)
	require.NoError(t, err, "the new node's key is accepted")
	t.Cleanup(node.Close)
	require.Equal(t, "lb-1", node.Node())

	_, out, _ = cmd(t, "nats-credential", "reader", "--data-dir", dataDir)
	reader, err := connect(save("reader.nk", out))
	require.NoError(t, err)
	t.Cleanup(reader.Close)
	require.Eventually(t, func() bool {
		kv, err := reader.KV(ctx, names.NodesBucket())
		if err != nil {
			return false
		}
		e, err := kv.Get(ctx, "lb-1")
		if err != nil {
			return false
		}
		m, err := msg.DecodeAs[*msg.Node](e.Value)
		return err == nil && len(m.Keys) == 1
	}, 10*time.Second, 50*time.Millisecond, "the leader publishes the node's key, sealed by the scheduler")

	agents, err := node.KV(ctx, names.AgentsBucket())
	require.NoError(t, err, "the scheduler made the agents bucket")
	_, err = agents.Put(ctx, "lb-1", []byte(`{}`))
	require.NoError(t, err)
	_, err = agents.Put(ctx, "lb-2", []byte(`{}`))
	require.ErrorIs(t, err, bus.ErrPermissionDenied, "a node writes its own record only")

	// Rotating healthd's key: each step's keys are accepted within a scan.
	_, oldHealthd, _ := cmd(t, "nats-credential", "healthd", "--data-dir", dataDir)
	code, out, errOut = cmd(t, "nats-key", "promote", "healthd", "--data-dir", dataDir)
	require.Equal(t, 2, code, "out of order")
	require.Empty(t, out)
	require.Contains(t, errOut, "nats-key rotate")
	before := usersLoaded() // the next key is a user from the rotation on
	code, out, errOut = cmd(t, "nats-key", "rotate", "healthd", "--data-dir", dataDir)
	require.Equal(t, 0, code, errOut)
	require.Regexp(t, `(?m)^healthd +next +U`, out)
	require.Contains(t, errOut, "Next: print every daemon's credential again")
	code, _, errOut = cmd(t, "nats-key", "promote", "healthd", "--data-dir", dataDir)
	require.Equal(t, 0, code, errOut)
	_, newHealthd, _ := cmd(t, "nats-credential", "healthd", "--data-dir", dataDir)
	require.NotEqual(t, oldHealthd, newHealthd)
	loaded(before, "the embedded NATS takes the next key")
	newConn, err := connect(save("new-healthd.nk", newHealthd))
	require.NoError(t, err, "the promoted key is accepted")
	newConn.Close()
	oldConn, err := connect(save("old-healthd.nk", oldHealthd))
	require.NoError(t, err, "the retiring key is still accepted")
	oldConn.Close()
	before = usersLoaded()
	code, _, errOut = cmd(t, "nats-key", "retire", "healthd", "--data-dir", dataDir)
	require.Equal(t, 0, code, errOut)
	loaded(before, "the embedded NATS drops the retired key")
	_, err = connect(save("old-healthd.nk", oldHealthd))
	require.Error(t, err, "the retired key is refused")

	code, out, errOut = cmd(t, "nats-key", "rm-node", "lb-1", "--data-dir", dataDir)
	require.Equal(t, 0, code, errOut)
	require.NotContains(t, out, "lb-1")
	require.Contains(t, errOut, "order every certificate again")
	require.Eventually(t, func() bool {
		kv, err := reader.KV(ctx, names.NodesBucket())
		if err != nil {
			return false
		}
		_, err = kv.Get(ctx, "lb-1")
		return errors.Is(err, bus.ErrKeyNotFound)
	}, 10*time.Second, 50*time.Millisecond, "the removed node leaves the directory")
	_, err = connect(lb1)
	require.Error(t, err, "and the server")
}

// TestConsoleOnTheAPIListener: the web console is served at /ui/ beside
// the API, and sends a browser without a session to its login page.
func TestConsoleOnTheAPIListener(t *testing.T) {
	t.Parallel()
	db, natsURL := testrig.Postgres(t), testrig.NATS(t)
	code, _, _ := cmd(t, "migrate", "--database-url", db)
	require.Equal(t, 0, code)
	r := startReplica(t, db, natsURL, "sched-ui")
	c := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	resp, err := c.Get(r.api + "/ui/")
	require.NoError(t, err)
	resp.Body.Close()
	require.Equal(t, http.StatusSeeOther, resp.StatusCode)
	require.Equal(t, "/ui/login", resp.Header.Get("Location"))
	resp, err = c.Get(r.api + "/ui/login")
	require.NoError(t, err)
	resp.Body.Close()
	require.Equal(t, http.StatusOK, resp.StatusCode)
	require.Contains(t, resp.Header.Get("Content-Security-Policy"), "frame-ancestors 'none'")
	resp, err = c.Get(r.api + "/v1/apps")
	require.NoError(t, err)
	resp.Body.Close()
	require.Equal(t, http.StatusOK, resp.StatusCode, "the API is served as before (open on loopback)")
}

// Every replica serves the console with the same data: a follower's
// overview lists what the leader applied, and its live stream carries the
// events the leader publishes.
func TestConsoleOnEveryReplica(t *testing.T) {
	t.Parallel()
	db, natsURL := testrig.Postgres(t), testrig.NATS(t)
	code, _, _ := cmd(t, "migrate", "--database-url", db)
	require.Equal(t, 0, code)
	boot := writeFile(t, "token", "s3cret-of-the-console-test\n")
	a := startReplica(t, db, natsURL, "sched-ui-a", "--api-token-file", boot)
	b := startReplica(t, db, natsURL, "sched-ui-b", "--api-token-file", boot)
	code, out, errOut := cmd(t, "tokens", "create", "--name", "viewer", "--scope", "read", "--server", a.api, "--token-file", boot)
	require.Equal(t, 0, code, errOut)
	viewer := strings.TrimSpace(out)
	csrf := regexp.MustCompile(`name="csrf" value="([^"]+)"`)
	signIn := func(base string) *http.Client {
		jar, err := cookiejar.New(nil)
		require.NoError(t, err)
		c := &http.Client{Jar: jar, CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
		resp, err := c.Get(base + "/ui/login")
		require.NoError(t, err)
		page, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		m := csrf.FindSubmatch(page)
		require.NotNil(t, m)
		resp, err = c.PostForm(base+"/ui/login", url.Values{"csrf": {string(m[1])}, "token": {viewer}})
		require.NoError(t, err)
		resp.Body.Close()
		require.Equal(t, http.StatusSeeOther, resp.StatusCode, "signed in at %s", base)
		return c
	}
	// Both follow the live stream before the app is applied.
	streams := map[string]*bufio.Reader{}
	// A stream that never carries the event ends with this context.
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	clients := map[string]*http.Client{}
	for _, r := range []*replica{a, b} {
		c := signIn(r.api)
		clients[r.api] = c
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, r.api+"/ui/live?app=web", nil)
		require.NoError(t, err)
		resp, err := c.Do(req)
		require.NoError(t, err)
		t.Cleanup(func() { resp.Body.Close() })
		require.Equal(t, "text/event-stream", resp.Header.Get("Content-Type"))
		streams[r.api] = bufio.NewReader(resp.Body)
	}
	spec := writeFile(t, "web.yaml", "name: web\nimage: web:1\nport: 8080\nreplicas: 0\n")
	code, _, errOut = cmd(t, "apply", "-f", spec, "--server", a.api, "--token-file", boot)
	require.Equal(t, 0, code, errOut)
	for _, r := range []*replica{a, b} {
		for {
			line, err := streams[r.api].ReadString('\n')
			require.NoError(t, err, "the stream of %s", r.api)
			if strings.HasPrefix(line, "data: ") && strings.Contains(line, `"kind":"app_updated"`) {
				break
			}
		}
		resp, err := clients[r.api].Get(r.api + "/ui/")
		require.NoError(t, err)
		page, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		require.Equal(t, http.StatusOK, resp.StatusCode)
		require.Contains(t, string(page), `data-name="web"`, "the overview at %s", r.api)
		require.Contains(t, string(page), "viewer (read)")
	}
}
