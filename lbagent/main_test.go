package main

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/berthhq/berth/common/bus"
	"github.com/berthhq/berth/common/msg"
	"github.com/berthhq/berth/common/spec"
	"github.com/berthhq/berth/internal/testrig"
	"github.com/berthhq/berth/lbagent/internal/render"
	"github.com/berthhq/berth/templates"
	"github.com/stretchr/testify/require"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest"
	"go.uber.org/zap/zaptest/observer"
)

func TestCheckConfigExitCodes(t *testing.T) {
	t.Parallel()
	devnull, err := os.OpenFile(os.DevNull, os.O_WRONLY, 0)
	require.NoError(t, err)
	defer devnull.Close()
	require.Equal(t, 0, run([]string{"--check-config", "--conf-dir", t.TempDir()}, devnull, devnull))
	require.Equal(t, 1, run([]string{"--check-config"}, devnull, devnull), "neither --nginx-conf nor --conf-dir")
	require.Equal(t, 1, run([]string{"--check-config", "--conf-dir", "/x", "--prefix", "a.b"}, devnull, devnull))
	require.Equal(t, 1, run([]string{"--check-config", "--conf-dir", t.TempDir(), "--reload-drain", "11s"}, devnull, devnull))
	require.Equal(t, 0, run([]string{"--check-config", "--conf-dir", t.TempDir(), "--reload-drain", "0"}, devnull, devnull))
	require.Equal(t, 1, run([]string{"--check-config", "--conf-dir", t.TempDir(), "--metrics-max-apps=-1"}, devnull, devnull))
	require.Equal(t, 1, run([]string{"--check-config", "--conf-dir", t.TempDir(), "--metrics-max-apps", "100001"}, devnull, devnull))
	require.Equal(t, 0, run([]string{"--check-config", "--conf-dir", t.TempDir(), "--metrics-max-apps", "0"}, devnull, devnull))
	require.Equal(t, 0, run([]string{"--check-config", "--conf-dir", t.TempDir(), "--nats-url", "nats://n1:4222,nats://n2:4222,nats://n3:4222", "--nats-replicas", "3"}, devnull, devnull))
	require.Equal(t, 1, run([]string{"--check-config", "--conf-dir", t.TempDir(), "--nats-replicas", "2"}, devnull, devnull))
	require.Equal(t, 1, run([]string{"--check-config", "--conf-dir", t.TempDir(), "--nats-url", "nats://n1:4222,ftp://n2"}, devnull, devnull))
	require.Equal(t, 2, run([]string{"--no-such-flag"}, devnull, devnull))
	require.Equal(t, 0, run([]string{"--help"}, devnull, devnull))
}

// TestNodeCredentialNamesTheNode: with a node's own credential, --node
// defaults to that node, and another --node is refused, naming both.
func TestNodeCredentialNamesTheNode(t *testing.T) {
	t.Parallel()
	creds, err := bus.AddNode(filepath.Join(t.TempDir(), "creds"), "lb-7")
	require.NoError(t, err)
	_, nodeKey, err := creds.File(bus.RoleLBAgent, "lb-7")
	require.NoError(t, err)
	_, shared, err := creds.File(bus.RoleLBAgent, "")
	require.NoError(t, err)
	devnull, err := os.OpenFile(os.DevNull, os.O_WRONLY, 0)
	require.NoError(t, err)
	defer devnull.Close()
	for _, tt := range []struct {
		name string
		args []string
		want string // the node, "" when refused
	}{
		{name: "the credential's node", args: []string{"--nats-nkey", nodeKey}, want: "lb-7"},
		{name: "the same --node", args: []string{"--nats-nkey", nodeKey, "--node", "lb-7"}, want: "lb-7"},
		{name: "another --node", args: []string{"--nats-nkey", nodeKey, "--node", "lb-8"}},
		{name: "the shared key", args: []string{"--nats-nkey", shared, "--node", "lb-8"}, want: "lb-8"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			c, code, exited := parse(append([]string{"--conf-dir", t.TempDir()}, tt.args...), devnull, devnull)
			require.False(t, exited, "parse exited with %d", code)
			err := c.check()
			if tt.want == "" {
				require.ErrorContains(t, err, "--nats-nkey is the key of lbagent node lb-7")
				return
			}
			require.NoError(t, err)
			require.Equal(t, tt.want, c.node())
		})
	}
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

func (c *cluster) app(name string) { c.appAt(name, "/") }

// appAt puts app name, routed on path.
func (c *cluster) appAt(name, path string) {
	c.put(c.names.AppsBucket(), name, &msg.App{Name: name, Generation: 1, Term: 1, Port: 8080, UpdatedAt: time.Now(),
		Routing: spec.Routing{Paths: []string{path}},
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
	// Also when the test fails early: never leave lbagent (and its nginx) running.
	t.Cleanup(cancelFn)
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
	cl.instance("demo", "a", testrig.Backend(t, "A"), msg.StateRunning)
	rev := cl.instance("demo", "b", testrig.Backend(t, "B"), msg.StateRunning)
	require.Eventually(t, func() bool {
		seen := map[string]bool{}
		for range 4 {
			_, body := get("http://" + httpAddr + "/")
			seen[body] = true
		}
		return seen["A"] && seen["B"]
	}, 15*time.Second, 20*time.Millisecond, "nginx must spread traffic over both backends")

	// The applied revision reaches the agents bucket, with the nginx
	// version, the mode and the reload that applied it.
	var rec *msg.Agent
	require.Eventually(t, func() bool {
		e, err := cl.kv[cl.names.AgentsBucket()].Get(context.Background(), "lb-e2e")
		if err != nil {
			return false
		}
		rec, err = msg.DecodeAs[*msg.Agent](e.Value)
		return err == nil && rec.AppliedRevision >= rev
	}, 10*time.Second, 20*time.Millisecond)
	require.True(t, strings.HasPrefix(rec.NginxVersion, "nginx/"), "nginx -v: %q", rec.NginxVersion)
	require.Contains(t, []string{msg.ModeDynamic, msg.ModeReload}, rec.Mode)
	require.NotNil(t, rec.LastReload)
	require.Empty(t, rec.LastReload.Error)

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
	// Lines nginx logs while nobody listens on the socket are dropped (by
	// design: nginx never waits for lbagent), so keep sending requests until
	// a window with served requests arrives.
	deadline := time.After(10 * time.Second)
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for served := false; !served; {
		select {
		case m := <-traffic:
			require.Equal(t, "lb-e2e", m.Node)
			require.NoError(t, m.Validate())
			// Windows of zero requests come too: every routed app is reported.
			served = m.Requests > 0 && m.Status.S2xx > 0 && m.P95MS > 0
		case <-tick.C:
			get("http://" + httpAddr + "/")
		case <-deadline:
			t.Fatal("no traffic metrics with served requests published from the access log")
		}
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
	cl.instance("demo", "a", testrig.Backend(t, "A"), msg.StateRunning)
	require.Equal(t, "A", testrig.WaitHTTP(t, "http://"+httpAddr+"/", 15*time.Second))

	cancel()
	require.NoError(t, <-done)
	code, body := get("http://" + httpAddr + "/")
	require.Equal(t, 200, code, "nginx keeps serving the last good config after lbagent stops")
	require.Equal(t, "A", body)
}

func TestHealthTemplatesAndDryRun(t *testing.T) {
	t.Parallel()
	testrig.NginxBin(t)
	cl := newCluster(t)
	dir := t.TempDir()
	tmplDir := filepath.Join(dir, "templates")
	require.NoError(t, os.MkdirAll(tmplDir, 0o755))
	for _, name := range []string{"nginx.conf.tmpl", "http.conf.tmpl", "app.conf.tmpl"} {
		b, err := templates.FS.ReadFile(name)
		require.NoError(t, err)
		require.NoError(t, os.WriteFile(filepath.Join(tmplDir, name), b, 0o644))
	}
	httpAddr := fmt.Sprintf("127.0.0.1:%d", testrig.FreePort(t))
	conf := filepath.Join(dir, "conf", "nginx.conf")
	args := []string{"--nats-url", cl.url, "--node", "lb-tmpl", "--manage-nginx",
		"--nginx-conf", conf, "--nginx-prefix", dir, "--state-dir", filepath.Join(dir, "state"),
		"--listen-http", httpAddr, "--listen-https", fmt.Sprintf("127.0.0.1:%d", testrig.FreePort(t)),
		"--status-listen", fmt.Sprintf("127.0.0.1:%d", testrig.FreePort(t)), "--metrics-listen", "",
		"--templates", tmplDir, "--debounce", "10ms:100ms"}
	devnull, _ := os.OpenFile(os.DevNull, os.O_WRONLY, 0)
	defer devnull.Close()
	c, _, _ := parse(args, devnull, devnull)
	r, err := render.Load(os.DirFS(tmplDir))
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	done := make(chan error, 1)
	refusals, logs := observer.New(zapcore.ErrorLevel)
	logger := zaptest.NewLogger(t, zaptest.WrapOptions(zap.WrapCore(func(c zapcore.Core) zapcore.Core { return zapcore.NewTee(c, refusals) })))
	go func() { done <- serve(ctx, c, r, tmplDir, logger) }()

	// An app with a health check: only healthy instances get traffic.
	yes := true
	st, _ := spec.ParseStatusRanges("200-399")
	cl.put(cl.names.AppsBucket(), "demo", &msg.App{Name: "demo", Generation: 1, Term: 1, Port: 8080, UpdatedAt: time.Now(),
		Routing: spec.Routing{Paths: []string{"/"}},
		Health: &spec.Health{Type: spec.HealthHTTP, Enabled: &yes, Port: 8080, Path: "/healthz", Method: "GET", ExpectedStatus: st,
			Interval: spec.Duration(time.Second), Timeout: spec.Duration(500 * time.Millisecond), HealthyThreshold: 1, UnhealthyThreshold: 1},
		LB: spec.LB{Method: spec.LBRoundRobin, Keepalive: 4, MaxFails: 1, FailTimeout: spec.Duration(time.Second),
			ConnectTimeout: spec.Duration(time.Second), ReadTimeout: spec.Duration(5 * time.Second), NextUpstreamTries: 2}})
	health := func(id, status string) {
		cl.put(cl.names.HealthBucket(), msg.InstanceKey("demo", id), &msg.Health{App: "demo", Instance: id, Status: status,
			Checker: "hc", CheckedAt: time.Now()})
	}
	cl.instance("demo", "a", testrig.Backend(t, "A"), msg.StateRunning)
	cl.instance("demo", "b", testrig.Backend(t, "B"), msg.StateRunning)
	health("a", msg.StatusHealthy)
	health("b", msg.StatusUnknown)
	require.Equal(t, "A", testrig.WaitHTTP(t, "http://"+httpAddr+"/", 15*time.Second))
	for range 6 {
		_, body := get("http://" + httpAddr + "/")
		require.Equal(t, "A", body, "an instance of unknown health gets no traffic")
	}
	health("b", msg.StatusHealthy)
	health("a", msg.StatusUnhealthy)
	require.Eventually(t, func() bool {
		for range 4 {
			if _, body := get("http://" + httpAddr + "/"); body != "B" {
				return false
			}
		}
		return true
	}, 10*time.Second, 20*time.Millisecond, "an unhealthy instance is removed")

	// A template edit is applied; a broken one is refused and nginx keeps its config.
	edit := func(old, new string) {
		p := filepath.Join(tmplDir, "http.conf.tmpl")
		b, err := os.ReadFile(p)
		require.NoError(t, err)
		require.NoError(t, os.WriteFile(p, []byte(strings.Replace(string(b), old, new, 1)), 0o644))
	}
	edit("add_header X-Request-ID $berth_request_id always;", "add_header X-Request-ID $berth_request_id always;\n    add_header X-Berth-Edited yes always;")
	require.Eventually(t, func() bool {
		resp, err := http.Get("http://" + httpAddr + "/")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.Header.Get("X-Berth-Edited") == "yes"
	}, 10*time.Second, 20*time.Millisecond, "a template edit is applied")
	before, err := os.ReadFile(conf)
	require.NoError(t, err)
	edit("{{range .Upstreams}}", "{{range .Upstreams")
	require.Eventually(t, func() bool {
		return logs.FilterMessage("template edit refused, keeping the running config").Len() > 0
	}, 10*time.Second, 20*time.Millisecond, "the broken edit is loaded and refused")
	after, err := os.ReadFile(conf)
	require.NoError(t, err)
	require.Equal(t, string(before), string(after), "a broken template edit is refused")
	code, body := get("http://" + httpAddr + "/")
	require.Equal(t, 200, code)
	require.Equal(t, "B", body)

	cancel()
	require.NoError(t, <-done)
}

func TestDryRunFromFile(t *testing.T) {
	t.Parallel()
	snap := fmt.Sprintf(`{"apps":[{"type":"berth.app.v1","name":"web","generation":2,"term":1,"port":8080,
	  "lb":{"method":"least_conn","keepalive":8,"max_fails":1,"fail_timeout":"5s","connect_timeout":"1s","read_timeout":"30s","next_upstream_tries":1,"client_max_body_size":"1Mi"},
	  "routing":{"hosts":["web.example.com"],"paths":["/"]},"drain":"5s","updated_at":"2026-11-23T12:00:00Z"}],
	 "instances":[{"type":"berth.instance.v1","app":"web","id":"a1","generation":2,"term":1,"address":"127.0.0.1:%d","state":"running","weight":3,"updated_at":"2026-11-23T12:00:00Z"}],
	 "health":[]}`, 31000)
	path := filepath.Join(t.TempDir(), "snap.json")
	require.NoError(t, os.WriteFile(path, []byte(snap), 0o644))
	out, err := os.CreateTemp(t.TempDir(), "out")
	require.NoError(t, err)
	defer out.Close()
	code := run([]string{"--dry-run", path, "--conf-dir", t.TempDir(), "--templates", "/nonexistent"}, out, out)
	require.Equal(t, 0, code)
	b, err := os.ReadFile(out.Name())
	require.NoError(t, err)
	require.Contains(t, string(b), "least_conn;")
	require.Contains(t, string(b), "server 127.0.0.1:31000 weight=3 max_fails=1 fail_timeout=5s;")
	require.Contains(t, string(b), "server_name web.example.com;")

	bad := filepath.Join(t.TempDir(), "bad.json")
	require.NoError(t, os.WriteFile(bad, []byte(strings.Replace(snap, `"web.example.com"`, `"web.example.com; }"`, 1)), 0o644))
	require.Equal(t, 1, run([]string{"--dry-run", bad, "--conf-dir", t.TempDir(), "--log-level", "error"}, out, out))
}

// lbagentProcessEnv makes the test binary run lbagent itself (see TestMain),
// so that a test can SIGKILL a real lbagent process.
const lbagentProcessEnv = "BERTH_LBAGENT_TEST_RUN_LBAGENT"

func TestMain(m *testing.M) {
	if os.Getenv(lbagentProcessEnv) == "1" {
		os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
	}
	os.Exit(m.Run())
}

// lbagentProcess is lbagent running as a process of its own.
type lbagentProcess struct {
	cmd  *exec.Cmd
	done chan struct{}
	err  error // cmd.Wait's, once done is closed
}

// startLBAgentProcess runs lbagent with args and the extra environment env
// as a child process whose output is appended to logPath; it is killed when
// the test ends.
func startLBAgentProcess(t *testing.T, logPath string, env []string, args ...string) *lbagentProcess {
	t.Helper()
	exe, err := os.Executable()
	require.NoError(t, err)
	logf, err := os.OpenFile(logPath, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
	require.NoError(t, err)
	defer logf.Close()
	cmd := exec.Command(exe, args...)
	cmd.Env = append(append(os.Environ(), lbagentProcessEnv+"=1"), env...)
	cmd.Stdout, cmd.Stderr = logf, logf
	require.NoError(t, cmd.Start())
	p := &lbagentProcess{cmd: cmd, done: make(chan struct{})}
	go func() { p.err = cmd.Wait(); close(p.done) }()
	t.Cleanup(func() { _ = cmd.Process.Kill(); <-p.done })
	return p
}

// wait waits up to timeout for the process to exit and returns how it ended.
func (p *lbagentProcess) wait(t *testing.T, timeout time.Duration) error {
	t.Helper()
	select {
	case <-p.done:
		return p.err
	case <-time.After(timeout):
		t.Fatalf("lbagent %d did not exit within %s", p.cmd.Process.Pid, timeout)
		return nil
	}
}

// steadyLoad sends GETs through nginx from a few clients until stopped and
// counts every failure: each request on a fresh connection, with a body
// that net/http cannot replay, so no failure is hidden by a retry.
type steadyLoad struct {
	ok, failed atomic.Int64
	mu         sync.Mutex
	errs       []string
	stop       chan struct{}
	wg         sync.WaitGroup
}

func startSteadyLoad(url string, clients int) *steadyLoad {
	l := &steadyLoad{stop: make(chan struct{})}
	client := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
	fail := func(what string) {
		l.failed.Add(1)
		l.mu.Lock()
		if len(l.errs) < 10 {
			l.errs = append(l.errs, time.Now().Format("15:04:05.000")+" "+what)
		}
		l.mu.Unlock()
	}
	for range clients {
		l.wg.Add(1)
		go func() {
			defer l.wg.Done()
			for {
				select {
				case <-l.stop:
					return
				case <-time.After(2 * time.Millisecond):
				}
				req, err := http.NewRequest(http.MethodGet, url, io.NopCloser(strings.NewReader("")))
				if err != nil {
					fail(err.Error())
					continue
				}
				resp, err := client.Do(req)
				if err != nil {
					fail(err.Error())
					continue
				}
				_, err = io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if err != nil || resp.StatusCode != http.StatusOK {
					fail(fmt.Sprintf("status %d, body: %v", resp.StatusCode, err))
					continue
				}
				l.ok.Add(1)
			}
		}()
	}
	return l
}

func (l *steadyLoad) halt() (ok, failed int64, errs []string) {
	close(l.stop)
	l.wg.Wait()
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.ok.Load(), l.failed.Load(), l.errs
}

func TestManagedNginxOutlivesKilledLBAgent(t *testing.T) {
	t.Parallel()
	testrig.NginxBin(t)
	cl := newCluster(t)
	dir := t.TempDir()
	// Registered first, so it runs last: whatever the outcome, no nginx of
	// this test outlives it.
	t.Cleanup(func() {
		for _, pid := range testrig.NginxMasters(t, dir) {
			_ = syscall.Kill(pid, syscall.SIGQUIT)
		}
		require.Eventually(t, func() bool { return len(testrig.NginxMasters(t, dir)) == 0 }, 15*time.Second, 20*time.Millisecond)
	})
	logPath := filepath.Join(dir, "lbagent.log")
	t.Cleanup(func() {
		if t.Failed() {
			b, _ := os.ReadFile(logPath)
			t.Logf("lbagent output:\n%s", tail(string(b), 20000))
			b, _ = os.ReadFile(filepath.Join(dir, "logs", "error.log"))
			t.Logf("nginx error log:\n%s", tail(string(b), 4000))
		}
	})
	httpAddr := fmt.Sprintf("127.0.0.1:%d", testrig.FreePort(t))
	args := []string{"--nats-url", cl.url, "--node", "lb-kill", "--manage-nginx",
		"--nginx-bin", testrig.NginxBin(t), "--nginx-conf", filepath.Join(dir, "conf", "nginx.conf"), "--nginx-prefix", dir,
		"--state-dir", filepath.Join(dir, "state"), "--listen-http", httpAddr,
		"--listen-https", fmt.Sprintf("127.0.0.1:%d", testrig.FreePort(t)),
		"--status-listen", fmt.Sprintf("127.0.0.1:%d", testrig.FreePort(t)), "--metrics-listen", "",
		"--templates", filepath.Join(dir, "none"), "--debounce", "10ms:100ms"}

	first := startLBAgentProcess(t, logPath, nil, args...)
	cl.app("demo")
	cl.instance("demo", "a", testrig.Backend(t, "A"), msg.StateRunning)
	require.Equal(t, "A", testrig.WaitHTTP(t, "http://"+httpAddr+"/", 30*time.Second))
	masters := testrig.NginxMasters(t, dir)
	require.Len(t, masters, 1)
	master := masters[0]

	load := startSteadyLoad("http://"+httpAddr+"/", 4)
	served := func(n int64, why string) { // waits until n more requests were served
		t.Helper()
		from := load.ok.Load()
		require.Eventually(t, func() bool { return load.ok.Load() >= from+n }, 20*time.Second, 5*time.Millisecond, why)
	}
	served(20, "the load is flowing")
	require.NoError(t, first.cmd.Process.Signal(syscall.SIGKILL))
	require.Error(t, first.wait(t, 10*time.Second), "lbagent was killed")
	served(20, "nginx keeps serving while no lbagent runs")
	require.Equal(t, []int{master}, testrig.NginxMasters(t, dir))

	// A new lbagent adopts the running master and applies a later change.
	second := startLBAgentProcess(t, logPath, []string{"BERTH_LBAGENT_LEAVE_NGINX_RUNNING=true"}, args...)
	cl.instance("demo", "b", testrig.Backend(t, "B"), msg.StateRunning)
	require.Eventually(t, func() bool {
		for range 4 {
			if _, body := get("http://" + httpAddr + "/"); body == "B" {
				return true
			}
		}
		return false
	}, 30*time.Second, 20*time.Millisecond, "the new lbagent applies a state change to the adopted nginx")
	require.Equal(t, []int{master}, testrig.NginxMasters(t, dir), "the same master serves: adopted, not started again")

	// With --leave-nginx-running a clean stop leaves nginx serving too.
	require.NoError(t, second.cmd.Process.Signal(syscall.SIGTERM))
	require.NoError(t, second.wait(t, 40*time.Second), "a clean stop exits 0")
	served(20, "nginx serves after lbagent stopped")
	require.Equal(t, []int{master}, testrig.NginxMasters(t, dir), "--leave-nginx-running leaves nginx running")
	third := startLBAgentProcess(t, logPath, nil, args...)
	// A new backend's answer proves the third lbagent applied the change:
	// four B answers in a row do not, as the load's requests interleave
	// with these in nginx's round robin (and then a SIGTERM below could
	// reach a third lbagent that has not started yet).
	cl.instance("demo", "a", "127.0.0.1:1", msg.StateStopped)
	cl.instance("demo", "c", testrig.Backend(t, "C"), msg.StateRunning)
	require.Eventually(t, func() bool {
		_, body := get("http://" + httpAddr + "/")
		return body == "C"
	}, 30*time.Second, 20*time.Millisecond, "a third lbagent applies a change to the same nginx")
	served(20, "the load goes on after the change")
	ok, failed, errs := load.halt()
	t.Logf("requests: %d ok, %d failed", ok, failed)
	require.Zero(t, failed, "no request fails while lbagent is killed, replaced and restarted: %v", errs)
	require.Greater(t, ok, int64(100))
	require.Equal(t, []int{master}, testrig.NginxMasters(t, dir), "one master all along")

	// Without the flag a clean stop quits nginx.
	require.NoError(t, third.cmd.Process.Signal(syscall.SIGTERM))
	require.NoError(t, third.wait(t, 40*time.Second), "a clean stop exits 0")
	require.Eventually(t, func() bool { return len(testrig.NginxMasters(t, dir)) == 0 }, 10*time.Second, 20*time.Millisecond,
		"a clean stop quits nginx")
}

func tail(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[len(s)-n:]
}
