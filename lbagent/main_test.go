package main

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/berthhq/berth/common/bus"
	"github.com/berthhq/berth/common/msg"
	"github.com/berthhq/berth/common/spec"
	"github.com/berthhq/berth/internal/testrig"
	"github.com/berthhq/berth/lbagent/internal/render"
	"github.com/berthhq/berth/templates"
	"github.com/stretchr/testify/require"
	"go.uber.org/zap/zaptest"
)

func TestCheckConfigExitCodes(t *testing.T) {
	t.Parallel()
	devnull, err := os.OpenFile(os.DevNull, os.O_WRONLY, 0)
	require.NoError(t, err)
	defer devnull.Close()
	require.Equal(t, 0, run([]string{"--check-config", "--conf-dir", t.TempDir()}, devnull, devnull))
	require.Equal(t, 1, run([]string{"--check-config"}, devnull, devnull), "neither --nginx-conf nor --conf-dir")
	require.Equal(t, 1, run([]string{"--check-config", "--conf-dir", "/x", "--prefix", "a.b"}, devnull, devnull))
	require.Equal(t, 2, run([]string{"--no-such-flag"}, devnull, devnull))
	require.Equal(t, 0, run([]string{"--help"}, devnull, devnull))
}

// cluster is lbagent's view of a running Berth: an in-process NATS with the
// contract's buckets, written to as the scheduler and healthd would.
type cluster struct {
	t     *testing.T
	conn  *bus.Conn
	url   string
	names msg.Names
	kv    map[string]*bus.KV
}

func newCluster(t *testing.T) *cluster {
	t.Helper()
	url := testrig.NATS(t)
	conn, err := bus.Connect(context.Background(), bus.Options{URL: url}, zaptest.NewLogger(t))
	require.NoError(t, err)
	t.Cleanup(conn.Close)
	names, _ := msg.NewNames("berth")
	ctx := context.Background()
	require.NoError(t, conn.EnsureBuckets(ctx, bus.ContractBuckets(names)))
	c := &cluster{t: t, conn: conn, url: url, names: names, kv: map[string]*bus.KV{}}
	for _, b := range []string{names.AppsBucket(), names.InstancesBucket(), names.HealthBucket(), names.AgentsBucket()} {
		c.kv[b], err = conn.KV(ctx, b)
		require.NoError(t, err)
	}
	return c
}

func (c *cluster) put(bucket, key string, m msg.Message) uint64 {
	c.t.Helper()
	b, err := msg.Encode(m)
	require.NoError(c.t, err)
	rev, err := c.kv[bucket].Put(context.Background(), key, b)
	require.NoError(c.t, err)
	return rev
}

func (c *cluster) putRaw(bucket, key, value string) {
	_, err := c.kv[bucket].Put(context.Background(), key, []byte(value))
	require.NoError(c.t, err)
}

func (c *cluster) app(name string) {
	c.put(c.names.AppsBucket(), name, &msg.App{Name: name, Generation: 1, Term: 1, Port: 8080, UpdatedAt: time.Now(),
		Routing: spec.Routing{Paths: []string{"/"}},
		LB: spec.LB{Method: spec.LBRoundRobin, Keepalive: 4, MaxFails: 1, FailTimeout: spec.Duration(time.Second),
			ConnectTimeout: spec.Duration(time.Second), ReadTimeout: spec.Duration(5 * time.Second), NextUpstreamTries: 2}})
}

func (c *cluster) instance(app, id, addr, state string) uint64 {
	return c.put(c.names.InstancesBucket(), msg.InstanceKey(app, id), &msg.Instance{App: app, ID: id, Generation: 1, Term: 1,
		Address: addr, State: state, Weight: 1, UpdatedAt: time.Now()})
}

func get(url string) (int, string) {
	resp, err := http.Get(url)
	if err != nil {
		return 0, err.Error()
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func backend(t *testing.T, body string) string {
	s := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { fmt.Fprint(w, body) }))
	t.Cleanup(s.Close)
	return strings.TrimPrefix(s.URL, "http://")
}

func startLBAgent(t *testing.T, args ...string) (cancel func(), done chan error) {
	t.Helper()
	devnull, _ := os.OpenFile(os.DevNull, os.O_WRONLY, 0)
	t.Cleanup(func() { devnull.Close() })
	c, code, exited := parse(args, devnull, devnull)
	require.False(t, exited, "parse exited with %d", code)
	require.NoError(t, c.check())
	r, err := render.Load(templates.FS)
	require.NoError(t, err)
	ctx, cancelFn := context.WithCancel(context.Background())
	done = make(chan error, 1)
	go func() { done <- serve(ctx, c, r, "", zaptest.NewLogger(t)) }()
	return cancelFn, done
}

func TestManagedNginxEndToEnd(t *testing.T) {
	t.Parallel()
	testrig.NginxBin(t)
	cl := newCluster(t)
	dir := t.TempDir()
	// nginx workers run unprivileged: they must reach the access log socket.
	require.NoError(t, os.Chmod(dir, 0o755))
	require.NoError(t, os.Chmod(filepath.Dir(dir), 0o755)) // t.TempDir's per-test parent
	httpAddr := fmt.Sprintf("127.0.0.1:%d", testrig.FreePort(t))
	metricsAddr := fmt.Sprintf("127.0.0.1:%d", testrig.FreePort(t))
	traffic := make(chan *msg.Metrics, 100)
	sub, err := cl.conn.Subscribe(cl.names.MetricsSubject("demo"), bus.Decoded(msg.DecodeAs[*msg.Metrics],
		func(_ string, m *msg.Metrics) { traffic <- m }, func(string, error) {}))
	require.NoError(t, err)
	defer func() { _ = sub.Drain() }()
	cancel, done := startLBAgent(t, "--nats-url", cl.url, "--node", "lb-e2e", "--manage-nginx",
		"--access-log-socket", filepath.Join(dir, "access.sock"), "--metrics-window", "200ms",
		"--nginx-conf", filepath.Join(dir, "conf", "nginx.conf"), "--nginx-prefix", dir, "--state-dir", filepath.Join(dir, "state"),
		"--listen-http", httpAddr, "--listen-https", fmt.Sprintf("127.0.0.1:%d", testrig.FreePort(t)),
		"--status-listen", fmt.Sprintf("127.0.0.1:%d", testrig.FreePort(t)), "--metrics-listen", metricsAddr,
		"--templates", filepath.Join(dir, "none"), "--debounce", "10ms:100ms")

	cl.app("demo")
	cl.instance("demo", "a", backend(t, "A"), msg.StateRunning)
	rev := cl.instance("demo", "b", backend(t, "B"), msg.StateRunning)
	require.Eventually(t, func() bool {
		seen := map[string]bool{}
		for range 4 {
			_, body := get("http://" + httpAddr + "/")
			seen[body] = true
		}
		return seen["A"] && seen["B"]
	}, 15*time.Second, 20*time.Millisecond, "nginx must spread traffic over both backends")

	// The applied revision reaches the agents bucket.
	require.Eventually(t, func() bool {
		e, err := cl.kv[cl.names.AgentsBucket()].Get(context.Background(), "lb-e2e")
		if err != nil {
			return false
		}
		a, err := msg.DecodeAs[*msg.Agent](e.Value)
		return err == nil && a.AppliedRevision >= rev
	}, 10*time.Second, 20*time.Millisecond)

	// Garbage on NATS is dropped and counted; nginx keeps serving.
	cl.putRaw(cl.names.InstancesBucket(), "demo.zz", `{"type":"berth.instance.v1","app":"demo","id":"zz","state":"running","address":"1.2.3.4:80; evil"}`)
	require.Eventually(t, func() bool {
		_, body := get("http://" + metricsAddr + "/metrics")
		return strings.Contains(body, "berth_lbagent_invalid_messages_total 1")
	}, 10*time.Second, 20*time.Millisecond)
	code, _ := get("http://" + httpAddr + "/")
	require.Equal(t, 200, code)
	code, _ = get("http://" + metricsAddr + "/readyz")
	require.Equal(t, 200, code)

	// nginx's access log reaches lbagent, which publishes per-app windows.
	select {
	case m := <-traffic:
		require.Equal(t, "lb-e2e", m.Node)
		require.Positive(t, m.Requests)
		require.Positive(t, m.Status.S2xx)
		require.Positive(t, m.P95MS)
	case <-time.After(10 * time.Second):
		t.Fatal("no traffic metrics published from the access log")
	}

	cl.instance("demo", "a", "127.0.0.1:1", msg.StateStopped)
	cl.instance("demo", "b", "127.0.0.1:1", msg.StateStopped)
	require.Eventually(t, func() bool {
		c, b := get("http://" + httpAddr + "/")
		return c == 503 && strings.Contains(b, "no_backend")
	},
		10*time.Second, 20*time.Millisecond)

	cancel()
	require.NoError(t, <-done)
}

func TestIncludeModeLeavesNginxServingAfterStop(t *testing.T) {
	t.Parallel()
	cl := newCluster(t)
	confDir := t.TempDir()
	httpAddr := fmt.Sprintf("127.0.0.1:%d", testrig.FreePort(t))
	statusAddr := fmt.Sprintf("127.0.0.1:%d", testrig.FreePort(t))
	// An operator's own nginx, with an http block that includes lbagent's file.
	n := testrig.NewNginx(t)
	require.NoError(t, os.WriteFile(filepath.Join(confDir, "berth.conf"), nil, 0o644))
	n.WriteConfig(testrig.MainConfig("include " + filepath.Join(confDir, "berth.conf") + ";"))
	n.Start()

	cancel, done := startLBAgent(t, "--nats-url", cl.url, "--node", "lb-inc", "--conf-dir", confDir,
		"--nginx-pid-file", filepath.Join(n.Prefix, "run", "nginx.pid"), "--state-dir", t.TempDir(),
		"--listen-http", httpAddr, "--listen-https", fmt.Sprintf("127.0.0.1:%d", testrig.FreePort(t)),
		"--status-listen", statusAddr, "--metrics-listen", "", "--templates", "/nonexistent", "--debounce", "10ms:100ms")
	cl.app("demo")
	cl.instance("demo", "a", backend(t, "A"), msg.StateRunning)
	require.Equal(t, "A", testrig.WaitHTTP(t, "http://"+httpAddr+"/", 15*time.Second))

	cancel()
	require.NoError(t, <-done)
	code, body := get("http://" + httpAddr + "/")
	require.Equal(t, 200, code, "nginx keeps serving the last good config after lbagent stops")
	require.Equal(t, "A", body)
}
