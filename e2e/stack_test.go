// Package e2e runs Berth whole: the scheduler, healthd and lbagent binaries
// as real processes, with real nginx, PostgreSQL, NATS and Docker, and a
// load generator sending traffic through nginx for the whole of every
// scenario.
package e2e

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/berthhq/berth/common/bus"
	"github.com/berthhq/berth/common/msg"
	"github.com/berthhq/berth/internal/loadgen"
	"github.com/berthhq/berth/internal/testrig"
	"github.com/stretchr/testify/require"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest"
)

// binDir holds the binaries built once for every test of the package.
var binDir string

// TestMain builds the daemons once for every test. The tests that load
// the machine (the full-stack scenarios, the canary, autoscaling, the NATS
// wipe) run one at a time, as the package's serial tests do; those that
// mostly wait for something that takes wall-clock time whatever the load
// (an ACME renewal and a hosts change's minute, a host's --host-timeout, a
// NATS cluster's elections) call t.Parallel, so Go runs them together
// after the serial ones. Their loads are light and rate-limited, and each
// still requires 0 failed requests.
func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "berth-e2e-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	binDir = dir
	code := func() int {
		defer os.RemoveAll(dir)
		if err := buildBinaries(dir); err != nil {
			fmt.Fprintln(os.Stderr, "e2e: build binaries:", err)
			return 1
		}
		testrig.Main(m) // exits
		return 0
	}()
	os.Exit(code)
}

// buildBinaries compiles the daemons and the example subscriber the way
// `make build` does (static, CGO_ENABLED=0), from this source tree or, when
// BERTH_E2E_SRC names another (e.g. `git archive <commit>` unpacked), from
// that one: how a benchmark measures a "before" with today's tests.
func buildBinaries(dir string) error {
	_, file, _, _ := runtime.Caller(0)
	root := filepath.Dir(filepath.Dir(file))
	if src := os.Getenv("BERTH_E2E_SRC"); src != "" {
		root = src
		fmt.Fprintln(os.Stderr, "e2e: daemons built from", src)
	}
	cmd := exec.Command("go", "build", "-trimpath", "-o", dir+"/", "./scheduler", "./healthd", "./lbagent", "./examples/berth-watch")
	cmd.Dir = root
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	out, err := cmd.CombinedOutput()
	if err != nil {
		return fmt.Errorf("%v: %s", err, out)
	}
	return nil
}

// proc is one daemon process of the stack, its output in a log file.
type proc struct {
	name string
	// metrics is the address of its /metrics, where it has one the tests read.
	metrics string
	cmd     *exec.Cmd
	log     string
	done    chan struct{}
	err     error
}

// signal sends sig and waits up to timeout for the process to exit.
func (p *proc) stop(t testing.TB, sig syscall.Signal, timeout time.Duration) {
	t.Helper()
	select {
	case <-p.done:
		return
	default:
	}
	_ = p.cmd.Process.Signal(sig)
	select {
	case <-p.done:
	case <-time.After(timeout):
		_ = p.cmd.Process.Kill()
		<-p.done
		t.Errorf("%s did not exit within %s of %s", p.name, timeout, sig)
	}
}

// stack is one Berth installation on this machine.
type stack struct {
	t      testing.TB
	dir    string
	prefix string
	names  msg.Names
	db     string
	nats   string
	// seeds are the role credentials of the stack's own NATS (nil on a
	// NATS without auth): each daemon runs with its role's, lbagent with
	// its node's own (seeds[lbNode]).
	seeds map[string]string
	// creds is that NATS's credentials directory, whose node keys the
	// schedulers publish.
	creds string
	conn  *bus.Conn

	// replicas, above 1, is every daemon's --nats-replicas (a NATS cluster).
	replicas int

	nginx *testrig.Nginx
	// mode is lbagent's --upstream-mode: dynamic (nginx loads its Lua
	// module) or reload.
	mode       string
	confDir    string
	tmplDir    string
	httpAddr   string
	httpsAddr  string
	statusAddr string
	lbMetrics  string

	mu    sync.Mutex
	procs []*proc
	apis  map[string]string // scheduler id → API base URL
}

func newStack(t testing.TB) *stack {
	t.Helper()
	return newStackOn(t, "")
}

// newStackOn is newStack with the daemons on the NATS at natsURL; empty
// means an in-process NATS of the test's own. lbagent runs in dynamic
// upstream mode.
func newStackOn(t testing.TB, natsURL string) *stack {
	t.Helper()
	return newStackMode(t, natsURL, "dynamic")
}

// luaModules is where Debian's libnginx-mod-http-lua installs the modules.
const luaModules = "/usr/lib/nginx/modules"

// newStackMode is newStackOn with lbagent in the given upstream mode.
func newStackMode(t testing.TB, natsURL, mode string) *stack {
	t.Helper()
	return newStackWith(t, mode, func(s *stack) {
		s.nats = natsURL
		if s.nats == "" {
			// As in production: auth on, one credential per daemon's role,
			// and lbagent's node with a key of its own, which the schedulers
			// publish.
			s.nats, s.seeds, s.creds = testrig.NATSWithNodeKeys(t, s.names, lbNode)
		}
	})
}

// newStackWith is newStackMode with the stack's NATS set up by nats,
// which is given the stack with its names and sets its nats, seeds,
// creds and replicas.
func newStackWith(t testing.TB, mode string, nats func(s *stack)) *stack {
	t.Helper()
	testrig.Docker(t)
	s := &stack{t: t, dir: t.TempDir(), db: testrig.Postgres(t), apis: map[string]string{}, mode: mode}
	s.prefix = fmt.Sprintf("e2e%d", time.Now().UnixNano()%1e7)
	s.names, _ = msg.NewNames(s.prefix)
	nats(s)
	testrig.RemoveBerthContainers(t, s.prefix)
	t.Cleanup(s.dumpLogsOnFailure)

	conn, err := bus.Connect(context.Background(), bus.Options{URL: s.nats, NKeyFile: s.seeds[bus.RoleReader]}, zaptest.NewLogger(t, zaptest.Level(zapcore.WarnLevel)).Named("test"))
	require.NoError(t, err)
	t.Cleanup(conn.Close)
	s.conn = conn

	out, err := exec.Command(filepath.Join(binDir, "scheduler"), "migrate", "--database-url", s.db).CombinedOutput()
	require.NoError(t, err, "scheduler migrate: %s", out)

	// An operator's nginx with lbagent's file included (include mode), so
	// that lbagent can be restarted while nginx keeps serving.
	s.confDir = filepath.Join(s.dir, "conf.d")
	require.NoError(t, os.MkdirAll(s.confDir, 0o755))
	require.NoError(t, os.WriteFile(filepath.Join(s.confDir, "berth.conf"), nil, 0o644))
	s.nginx = testrig.NewNginx(t)
	modules := ""
	if mode == "dynamic" {
		// The operator's nginx.conf loads the Lua module (include mode).
		if _, err := os.Stat(filepath.Join(luaModules, "ngx_http_lua_module.so")); err != nil {
			t.Fatalf("nginx's Lua module is missing from %s: apt-get install libnginx-mod-http-lua lua-resty-core lua-cjson", luaModules)
		}
		modules = "load_module " + luaModules + "/ndk_http_module.so;\nload_module " + luaModules + "/ngx_http_lua_module.so;\n"
	}
	s.nginx.WriteConfig(modules + testrig.MainConfig("include "+filepath.Join(s.confDir, "berth.conf")+";"))
	s.nginx.Start()

	// A copy of the templates, which the template-reload scenario edits.
	s.tmplDir = filepath.Join(s.dir, "templates")
	require.NoError(t, os.CopyFS(s.tmplDir, os.DirFS(filepath.Join(repoRoot(), "templates"))))
	s.httpAddr = fmt.Sprintf("127.0.0.1:%d", testrig.FreePort(t))
	s.httpsAddr = fmt.Sprintf("127.0.0.1:%d", testrig.FreePort(t))
	s.statusAddr = fmt.Sprintf("127.0.0.1:%d", testrig.FreePort(t))
	s.lbMetrics = fmt.Sprintf("127.0.0.1:%d", testrig.FreePort(t))
	return s
}

func repoRoot() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Dir(filepath.Dir(file))
}

// start runs a binary of binDir until the test ends.
func (s *stack) start(name, bin string, args ...string) *proc {
	s.t.Helper()
	logPath := filepath.Join(s.dir, name+".log")
	f, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	require.NoError(s.t, err)
	cmd := exec.Command(filepath.Join(binDir, bin), args...)
	cmd.Stdout, cmd.Stderr = f, f
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	require.NoError(s.t, cmd.Start(), "start %s", name)
	p := &proc{name: name, cmd: cmd, log: logPath, done: make(chan struct{})}
	go func() {
		p.err = cmd.Wait()
		f.Close()
		close(p.done)
	}()
	s.mu.Lock()
	s.procs = append(s.procs, p)
	s.mu.Unlock()
	s.t.Cleanup(func() { p.stop(s.t, syscall.SIGTERM, 30*time.Second) })
	return p
}

// natsFlags are a daemon's NATS flags: its role's credential when the
// stack's NATS requires one (lbagent's: its node's own key), and for the
// scheduler the credentials whose node keys it publishes.
func (s *stack) natsFlags(role string) []string {
	flags := []string{"--nats-url", s.nats, "--prefix", s.prefix, "--log-level", "debug"}
	seed := s.seeds[role]
	if role == bus.RoleLBAgent && s.seeds[lbNode] != "" {
		seed = s.seeds[lbNode]
	}
	if seed != "" {
		flags = append(flags, "--nats-nkey", seed)
	}
	if role == bus.RoleScheduler && s.creds != "" {
		flags = append(flags, "--nats-credentials", s.creds)
	}
	if s.replicas > 1 {
		flags = append(flags, "--nats-replicas", strconv.Itoa(s.replicas))
	}
	return flags
}

// lbNode is the stack's lbagent node.
const lbNode = "lb1"

// startScheduler runs a scheduler replica and waits for its API.
func (s *stack) startScheduler(id string, extra ...string) *proc {
	s.t.Helper()
	api := fmt.Sprintf("127.0.0.1:%d", testrig.FreePort(s.t))
	args := append([]string{"run", "--database-url", s.db, "--api-listen", api,
		"--id", id, "--lease-ttl", "2s", "--stop-timeout", "30s"}, s.natsFlags(bus.RoleScheduler)...)
	p := s.start("scheduler-"+id, "scheduler", append(args, extra...)...)
	testrig.WaitHTTP(s.t, "http://"+api+"/healthz", 20*time.Second)
	s.mu.Lock()
	s.apis[id] = "http://" + api
	s.mu.Unlock()
	return p
}

func (s *stack) startHealthd(id string) *proc {
	s.t.Helper()
	addr := fmt.Sprintf("127.0.0.1:%d", testrig.FreePort(s.t))
	p := s.start("healthd-"+id, "healthd", append([]string{"--id", id, "--metrics-listen", addr, "--refresh", "10s"}, s.natsFlags(bus.RoleHealthd)...)...)
	testrig.WaitHTTP(s.t, "http://"+addr+"/healthz", 20*time.Second)
	p.metrics = addr
	return p
}

// lbEmptyHold is lbagent's --empty-hold in every full-stack test, shorter
// than its 30 s default to keep the tests' time sane: how long lbagent holds
// back a state in which every instance record is gone.
const lbEmptyHold = 5 * time.Second

func (s *stack) startLBAgent(extra ...string) *proc {
	s.t.Helper()
	args := append([]string{"--node", lbNode, "--conf-dir", s.confDir,
		"--nginx-pid-file", filepath.Join(s.nginx.Prefix, "run", "nginx.pid"), "--nginx-bin", s.nginx.Bin,
		"--state-dir", filepath.Join(s.dir, "lbagent-state"), "--templates", s.tmplDir,
		"--listen-http", s.httpAddr, "--listen-https", s.httpsAddr,
		"--status-listen", s.statusAddr, "--metrics-listen", s.lbMetrics, "--debounce", "20ms:300ms",
		"--empty-hold", lbEmptyHold.String(), "--upstream-mode", s.mode}, s.natsFlags(bus.RoleLBAgent)...)
	p := s.start("lbagent", "lbagent", append(args, extra...)...)
	testrig.WaitHTTP(s.t, "http://"+s.lbMetrics+"/healthz", 20*time.Second)
	return p
}

// api returns the API of a live scheduler replica (any replica serves it).
func (s *stack) api() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	ids := make([]string, 0, len(s.apis))
	for id := range s.apis {
		ids = append(ids, id)
	}
	sort.Strings(ids)
	for _, id := range ids {
		if resp, err := http.Get(s.apis[id] + "/healthz"); err == nil {
			resp.Body.Close()
			return s.apis[id]
		}
	}
	s.t.Fatal("no scheduler replica answers")
	return ""
}

// leader returns the id of the replica that leads, waiting for one.
func (s *stack) leader(timeout time.Duration) string {
	s.t.Helper()
	var id string
	require.Eventually(s.t, func() bool {
		s.mu.Lock()
		apis := make(map[string]string, len(s.apis))
		for k, v := range s.apis {
			apis[k] = v
		}
		s.mu.Unlock()
		for k, api := range apis {
			var r struct{ Role string }
			if getJSON(api+"/readyz", &r) == nil && r.Role == "leader" {
				id = k
				return true
			}
		}
		return false
	}, timeout, 20*time.Millisecond, "no scheduler became leader")
	return id
}

// cli runs the scheduler's command line against a live replica.
func (s *stack) cli(args ...string) string {
	s.t.Helper()
	out, err := exec.Command(filepath.Join(binDir, "scheduler"), append(args, "--server", s.api())...).CombinedOutput()
	require.NoError(s.t, err, "scheduler %s: %s", strings.Join(args, " "), out)
	return string(out)
}

// apply writes spec to a file and applies it.
func (s *stack) apply(spec string) {
	s.t.Helper()
	f := filepath.Join(s.dir, fmt.Sprintf("spec-%d.yaml", time.Now().UnixNano()))
	require.NoError(s.t, os.WriteFile(f, []byte(spec), 0o644))
	s.t.Logf("apply: %s", strings.TrimSpace(s.cli("apply", "-f", f)))
}

// applyWait applies spec with --wait, as a pipeline would, and returns
// what it printed and its exit code.
func (s *stack) applyWait(spec string) (string, int) {
	s.t.Helper()
	f := filepath.Join(s.dir, fmt.Sprintf("spec-%d.yaml", time.Now().UnixNano()))
	require.NoError(s.t, os.WriteFile(f, []byte(spec), 0o644))
	out, err := exec.Command(filepath.Join(binDir, "scheduler"), "apply", "-f", f, "--wait", "--timeout", "3m", "--server", s.api()).CombinedOutput()
	code := 0
	if ee := (*exec.ExitError)(nil); errors.As(err, &ee) {
		code = ee.ExitCode()
	} else {
		require.NoError(s.t, err)
	}
	s.t.Logf("apply --wait (exit %d):\n%s", code, out)
	return string(out), code
}

// applyWaitRun is an apply --wait running, its output read as it comes.
type applyWaitRun struct {
	t    testing.TB
	cmd  *exec.Cmd
	mu   sync.Mutex
	out  strings.Builder
	more chan struct{} // closed and replaced at each write
	done chan struct{}
}

func (r *applyWaitRun) Write(p []byte) (int, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.out.Write(p)
	close(r.more)
	r.more = make(chan struct{})
	return len(p), nil
}

// waitFor waits until the output holds text.
func (r *applyWaitRun) waitFor(text string, timeout time.Duration) {
	r.t.Helper()
	deadline := time.After(timeout)
	for {
		r.mu.Lock()
		got, more := r.out.String(), r.more
		r.mu.Unlock()
		if strings.Contains(got, text) {
			return
		}
		select {
		case <-more:
		case <-r.done:
			r.t.Fatalf("apply --wait ended before it printed %q:\n%s", text, got)
		case <-deadline:
			r.t.Fatalf("apply --wait did not print %q within %s:\n%s", text, timeout, got)
		}
	}
}

// end waits for the apply to exit and returns its output and exit code.
func (r *applyWaitRun) end() (string, int) {
	r.t.Helper()
	<-r.done
	err := r.cmd.Wait()
	code := 0
	if ee := (*exec.ExitError)(nil); errors.As(err, &ee) {
		code = ee.ExitCode()
	} else {
		require.NoError(r.t, err)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	r.t.Logf("apply --wait (exit %d):\n%s", code, r.out.String())
	return r.out.String(), code
}

// startApplyWait starts applying spec with --wait, as applyWait does,
// without waiting for it.
func (s *stack) startApplyWait(spec string) *applyWaitRun {
	s.t.Helper()
	f := filepath.Join(s.dir, fmt.Sprintf("spec-%d.yaml", time.Now().UnixNano()))
	require.NoError(s.t, os.WriteFile(f, []byte(spec), 0o644))
	r := &applyWaitRun{t: s.t, more: make(chan struct{}), done: make(chan struct{})}
	r.cmd = exec.Command(filepath.Join(binDir, "scheduler"), "apply", "-f", f, "--wait", "--timeout", "3m", "--server", s.api())
	pr, pw, err := os.Pipe()
	require.NoError(s.t, err)
	r.cmd.Stdout, r.cmd.Stderr = pw, pw
	require.NoError(s.t, r.cmd.Start())
	pw.Close()
	go func() {
		defer close(r.done)
		_, _ = io.Copy(r, pr)
		pr.Close()
	}()
	s.t.Cleanup(func() {
		select {
		case <-r.done:
		default:
			_ = r.cmd.Process.Kill()
		}
	})
	return r
}

type instanceView struct {
	ID         string `json:"id"`
	Generation int64  `json:"generation"`
	State      string `json:"state"`
	Health     string `json:"health"`
	Address    string `json:"address"`
	Host       string `json:"host"`
}

func (s *stack) instances(app string) []instanceView {
	var out []instanceView
	if err := getJSON(s.api()+"/v1/apps/"+app+"/instances", &out); err != nil {
		s.t.Logf("instances of %s: %v", app, err)
	}
	return out
}

func getJSON(url string, v any) error {
	client := &http.Client{Timeout: 2 * time.Second}
	resp, err := client.Get(url)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode/100 != 2 {
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
		return fmt.Errorf("GET %s: %d %s", url, resp.StatusCode, b)
	}
	return json.NewDecoder(resp.Body).Decode(v)
}

// served asks nginx 4n+20 times for host and returns the instances and
// versions that answered, and the failures seen.
func (s *stack) served(host string, n int) (instances, versions map[string]bool, failures int, sample string) {
	instances, versions = map[string]bool{}, map[string]bool{}
	client := &http.Client{Timeout: 2 * time.Second}
	for range 4*n + 20 {
		req, _ := http.NewRequest(http.MethodGet, "http://"+s.httpAddr+"/", nil)
		req.Host = host
		resp, err := client.Do(req)
		if err != nil {
			failures, sample = failures+1, err.Error()
			continue
		}
		raw, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
		resp.Body.Close()
		var body struct{ Instance, Version string }
		if err := json.Unmarshal(raw, &body); err != nil || resp.StatusCode != http.StatusOK {
			failures, sample = failures+1, fmt.Sprintf("%d %s", resp.StatusCode, strings.TrimSpace(string(raw)))
			continue
		}
		instances[body.Instance], versions[body.Version] = true, true
	}
	return instances, versions, failures, sample
}

// waitServing waits until the app has exactly n instances in the scheduler's
// view, all running and healthy, with no other instance left in Docker, and
// nginx's answers come from exactly those instances, all of version.
func (s *stack) waitServing(app, host string, n int, version string, timeout time.Duration) []instanceView {
	s.t.Helper()
	deadline := time.Now().Add(timeout)
	var last string
	for time.Now().Before(deadline) {
		ins := s.instances(app)
		want := map[string]bool{}
		ok := len(ins) == n
		for _, in := range ins {
			want[in.ID] = true
			ok = ok && in.State == msg.StateRunning && in.Health == msg.StatusHealthy
		}
		containers := s.containers(app)
		ok = ok && len(containers) == n
		if ok {
			got, versions, failures, sample := s.served(host, n)
			if failures == 0 && equalSets(got, want) && len(versions) == 1 && versions[version] {
				return ins
			}
			last = fmt.Sprintf("nginx served %v (versions %v, %d failures: %s), want %v of %s", keys(got), keys(versions), failures, sample, keys(want), version)
		} else {
			last = fmt.Sprintf("instances %+v, containers %d", ins, len(containers))
		}
		time.Sleep(200 * time.Millisecond)
	}
	s.t.Fatalf("%s: not serving %d healthy instances of %s within %s: %s", app, n, version, timeout, last)
	return nil
}

// containers lists the ids of the app's containers that exist in Docker.
func (s *stack) containers(app string) []string {
	return testrig.BerthContainers(s.t, s.prefix, "berth.app="+app)
}

// requireNoPermissionErrors fails the test if the NATS server refused any
// daemon anything: each role must be allowed all its daemon does.
func (s *stack) requireNoPermissionErrors() {
	s.t.Helper()
	s.mu.Lock()
	procs := append([]*proc(nil), s.procs...)
	s.mu.Unlock()
	for _, p := range procs {
		b, _ := os.ReadFile(p.log)
		for _, line := range strings.Split(string(b), "\n") {
			if strings.Contains(strings.ToLower(line), "permissions violation") || strings.Contains(line, "permission denied") && strings.Contains(line, "nats") {
				s.t.Errorf("%s was refused by NATS: %s", p.name, line)
				break
			}
		}
	}
}

func (s *stack) dumpLogsOnFailure() {
	if !s.t.Failed() {
		return
	}
	s.mu.Lock()
	procs := append([]*proc(nil), s.procs...)
	s.mu.Unlock()
	seen := map[string]bool{}
	for _, p := range procs {
		if seen[p.log] {
			continue
		}
		seen[p.log] = true
		b, _ := os.ReadFile(p.log)
		if keep := os.Getenv("BERTH_E2E_KEEP_LOGS"); keep != "" {
			_ = os.WriteFile(filepath.Join(keep, filepath.Base(p.log)), b, 0o644)
		}
		lines := strings.Split(strings.TrimSpace(string(b)), "\n")
		s.t.Logf("--- last lines of %s ---\n%s", p.name, strings.Join(lines[max(0, len(lines)-40):], "\n"))
	}
	s.t.Logf("--- nginx error log ---\n%s", s.nginx.Log())
}

// reloads reads lbagent's count of applied configs from its /metrics.
func (s *stack) reloads() int {
	resp, err := http.Get("http://" + s.lbMetrics + "/metrics")
	if err != nil {
		return -1
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	re := regexp.MustCompile(`^berth_lbagent_reloads_total\{result="applied"\} (\d+)`)
	for sc.Scan() {
		if m := re.FindStringSubmatch(sc.Text()); m != nil {
			n, _ := strconv.Atoi(m[1])
			return n
		}
	}
	return 0
}

// scenario is one line of the report: what ran and what the load saw.
type scenario struct {
	Name    string
	Result  loadgen.Result
	Reloads int
}

// strict says whether the load generators run in loadgen's no-retry mode
// (Config.NoRetry), a client like wrk: a GET lost on a keep-alive
// connection nginx closed is a failed request instead of one net/http
// quietly sends again. In dynamic mode endpoint changes reload nothing, so
// the full-stack scenarios hold every request to that; in reload mode each
// reload closes idle keep-alive connections, and the client retries.
func (s *stack) strict() bool { return s.mode == "dynamic" }

// nginxSettled waits until only the workers of nginx's current config
// accept connections: for a moment after a reload, a retiring worker still
// accepts with the config before (see testrig.Nginx.AcceptingWorkers).
func (s *stack) nginxSettled() {
	s.t.Helper()
	require.Eventually(s.t, func() bool { return s.nginx.AcceptingWorkers() == testrig.MainConfigWorkers }, 10*time.Second, 10*time.Millisecond,
		"nginx's retired workers stop accepting")
}

// nginxReloads counts the reloads the nginx master logged.
func (s *stack) nginxReloads() int {
	data, _ := os.ReadFile(filepath.Join(s.nginx.Prefix, "logs", "error.log"))
	return strings.Count(string(data), "(SIGHUP) received")
}

// load starts the load generator against the app's host through nginx.
func (s *stack) load(host string) *loadgen.Run {
	return loadgen.Start(context.Background(), loadgen.Config{URL: "http://" + s.httpAddr + "/", Host: host, Workers: 4, Rate: 200, NoRetry: s.strict()})
}

func equalSets(a, b map[string]bool) bool {
	if len(a) != len(b) {
		return false
	}
	for k := range a {
		if !b[k] {
			return false
		}
	}
	return true
}

func keys(m map[string]bool) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}
