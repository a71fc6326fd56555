package testrig

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/berthhq/berth/common/bus"
	"github.com/berthhq/berth/common/msg"
	"github.com/stretchr/testify/require"
	"go.uber.org/zap/zaptest"
)

func TestMain(m *testing.M) { Main(m) }

func TestPostgresFreshDatabasePerTest(t *testing.T) {
	t.Parallel()
	a, b := Postgres(t), Postgres(t)
	require.NotEqual(t, a, b)
	require.Equal(t, "1", PSQL(t, a, "SELECT 1"))
	PSQL(t, a, "CREATE TABLE marker (id int)")
	require.Equal(t, "marker", PSQL(t, a, "SELECT tablename FROM pg_tables WHERE tablename = 'marker'"))
	require.Empty(t, PSQL(t, b, "SELECT tablename FROM pg_tables WHERE tablename = 'marker'"), "databases must be independent")
	require.Contains(t, a, "127.0.0.1:")
	require.Equal(t, "off", PSQL(t, a, "SHOW fsync"))
}

func TestPostgresParallelTests(t *testing.T) {
	t.Parallel()
	for i := range 4 {
		t.Run(fmt.Sprint(i), func(t *testing.T) {
			t.Parallel()
			url := Postgres(t)
			PSQL(t, url, "CREATE TABLE t (v int); INSERT INTO t VALUES (1), (2)")
			require.Equal(t, "2", PSQL(t, url, "SELECT count(*) FROM t"))
		})
	}
}

func TestNginxServesTestsAndReloads(t *testing.T) {
	t.Parallel()
	n := NewNginx(t)
	port := FreePort(t)
	server := func(body string) string {
		return fmt.Sprintf("server { listen 127.0.0.1:%d; location / { return 200 %q; } }", port, body)
	}
	n.WriteConfig(MainConfig(server("one\n")))
	n.Start()
	url := fmt.Sprintf("http://127.0.0.1:%d/", port)
	require.Equal(t, "one\n", WaitHTTP(t, url, 5*time.Second))

	n.WriteConfig(MainConfig(server("two\n")))
	require.NoError(t, n.Test())
	n.Reload()
	require.Eventually(t, func() bool { return get(t, url) == "two\n" }, 5*time.Second, 10*time.Millisecond)

	n.WriteConfig(MainConfig(server("three\n") + "\n bogus_directive on;"))
	err := n.Test()
	require.Error(t, err)
	require.Contains(t, err.Error(), `unknown directive "bogus_directive"`)
	require.Equal(t, "two\n", get(t, url), "a refused config must not disturb the running nginx")
}

func get(t *testing.T, url string) string {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		return err.Error()
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return string(body)
}

type demoReply struct {
	Instance string `json:"instance"`
	Version  string `json:"version"`
}

func TestDockerDemoImage(t *testing.T) {
	t.Parallel()
	v1, v2 := DemoImage(t, "v1"), DemoImage(t, "v2")
	require.Equal(t, "berth-demo:v1", v1)
	require.Equal(t, "berth-demo:v2", v2)

	for _, tc := range []struct{ image, version, instance string }{{v1, "v1", "one"}, {v2, "v2", "two"}} {
		t.Run(tc.version, func(t *testing.T) {
			t.Parallel()
			c := RunContainer(t, tc.image, ContainerOptions{Env: map[string]string{"DEMO_INSTANCE": tc.instance}})
			require.True(t, strings.HasPrefix(c.Addr, "127.0.0.1:"), c.Addr)
			var r demoReply
			require.NoError(t, json.Unmarshal([]byte(WaitHTTP(t, "http://"+c.Addr+"/", 20*time.Second)), &r))
			require.Equal(t, demoReply{Instance: tc.instance, Version: tc.version}, r)

			require.Equal(t, "ok\n", WaitHTTP(t, "http://"+c.Addr+"/healthz", 5*time.Second))
			resp, err := http.Post("http://"+c.Addr+"/admin/health?state=fail", "", nil)
			require.NoError(t, err)
			resp.Body.Close()
			resp, err = http.Get("http://" + c.Addr + "/healthz")
			require.NoError(t, err)
			resp.Body.Close()
			require.Equal(t, http.StatusServiceUnavailable, resp.StatusCode)
		})
	}
}

func TestDockerDemoTCPMode(t *testing.T) {
	t.Parallel()
	c := RunContainer(t, DemoImage(t, "v1"), ContainerOptions{Env: map[string]string{"DEMO_MODE": "tcp"}})
	var line string
	require.Eventually(t, func() bool {
		conn, err := net.DialTimeout("tcp", c.Addr, time.Second)
		if err != nil {
			return false
		}
		defer conn.Close()
		_ = conn.SetDeadline(time.Now().Add(time.Second))
		if _, err := conn.Write([]byte("PING\n")); err != nil {
			return false
		}
		line, err = bufio.NewReader(conn).ReadString('\n')
		return err == nil
	}, 20*time.Second, 50*time.Millisecond)
	require.Equal(t, "PONG\n", line)
}

func TestRequireSkipsOutsideCI(t *testing.T) {
	t.Setenv("CI", "")
	ft := &fakeTB{TB: t}
	func() {
		defer func() { _ = recover() }()
		Require(ft, false, "thing missing", "apt-get install thing")
	}()
	require.True(t, ft.skipped)
	require.Contains(t, ft.msg, "thing missing: apt-get install thing")
}

// fakeTB records SkipNow instead of stopping the real test.
type fakeTB struct {
	testing.TB
	skipped bool
	msg     string
}

func (f *fakeTB) Helper() {}
func (f *fakeTB) Skipf(format string, args ...any) {
	f.skipped, f.msg = true, fmt.Sprintf(format, args...)
	panic("skip")
}
func (f *fakeTB) Fatalf(format string, args ...any) {
	f.msg = fmt.Sprintf(format, args...)
	panic("fatal")
}

func TestRequireFailsInCI(t *testing.T) {
	t.Setenv("CI", "true")
	ft := &fakeTB{TB: t}
	func() {
		defer func() { _ = recover() }()
		Require(ft, false, "thing missing", "apt-get install thing")
	}()
	require.False(t, ft.skipped, "CI must never skip a missing dependency")
	require.Contains(t, ft.msg, "thing missing (CI=true, so this fails instead of skipping): apt-get install thing")
}

func TestNATSServesJetStream(t *testing.T) {
	t.Parallel()
	url := NATS(t)
	require.True(t, strings.HasPrefix(url, "nats://127.0.0.1:"), url)
	c, err := bus.Connect(context.Background(), bus.Options{URL: url}, zaptest.NewLogger(t))
	require.NoError(t, err)
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	require.NoError(t, c.EnsureBuckets(ctx, []bus.BucketConfig{{Name: "rig"}}))
	kv, err := c.KV(ctx, "rig")
	require.NoError(t, err)
	_, err = kv.Put(ctx, "k", []byte("v"))
	require.NoError(t, err)
	e, err := kv.Get(ctx, "k")
	require.NoError(t, err)
	require.Equal(t, "v", string(e.Value))
}

// TestNATSClusterLosesAndRegainsANode: the cluster elects a new meta
// leader when its leader is killed, takes writes of a 3-replica bucket
// with one server down, and the server started again on its store
// catches up.
func TestNATSClusterLosesAndRegainsANode(t *testing.T) {
	t.Parallel()
	names, err := msg.NewNames("rig")
	require.NoError(t, err)
	c := StartNATSCluster(t, names, "lb1")
	require.Len(t, strings.Split(c.URL(), ","), 3)
	require.FileExists(t, c.Seeds["lb1"])
	conn, err := bus.Connect(context.Background(), bus.Options{URL: c.URL(), Name: "rig-test", NKeyFile: c.Seeds[bus.RoleScheduler], Replicas: 3}, zaptest.NewLogger(t))
	require.NoError(t, err)
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	require.NoError(t, conn.EnsureBuckets(ctx, bus.MustOwnedBuckets(names, bus.RoleScheduler)))
	stream := "KV_" + names.AppsBucket()

	leader := c.MetaLeader()
	require.NotEmpty(t, leader)
	require.NotEmpty(t, c.StreamLeader(stream))
	require.NotEmpty(t, c.ConnectedTo("rig-test"))
	require.Empty(t, c.ConnectedTo("nobody"))
	c.Node(leader).Kill()
	require.Eventually(t, func() bool { l := c.MetaLeader(); return l != "" && l != leader }, 30*time.Second, 50*time.Millisecond, "a new meta leader")
	require.Eventually(t, func() bool { l := c.StreamLeader(stream); return l != "" && l != leader }, 30*time.Second, 50*time.Millisecond, "a new stream leader")
	require.Error(t, c.CaughtUp(leader, []string{stream}), "a stopped server is not current")

	kv, err := conn.KV(ctx, names.AppsBucket())
	require.NoError(t, err)
	_, err = kv.Put(ctx, "k", []byte("v"))
	require.NoError(t, err, "two of three servers take writes")

	c.Node(leader).Start()
	require.Eventually(t, func() bool { return c.CaughtUp(leader, []string{stream}) == nil }, 60*time.Second, 100*time.Millisecond, "caught up")
	c.Node(leader).WaitHealthy(30 * time.Second)
}
