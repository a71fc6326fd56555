package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/berthhq/berth/common/bus"
	"github.com/berthhq/berth/common/msg"
)

// agent is one lbagent in one upstream mode, with the nginx it manages,
// on a NATS prefix of its own: the same state is written under every
// agent's prefix, and a change is put under one prefix only, so that an
// agent never works while another one is timed.
type agent struct {
	mode     string // the --upstream-mode it runs
	dir      string
	apps     *bus.KV
	insts    *bus.KV
	client   *http.Client
	httpAddr string
	metrics  string
	cmd      *exec.Cmd
	cur      string // the backend app-0000 is served by
	workers  *workerWatch
	// extra are more lbagent flags (--dynamic-routes).
	extra []string
}

func newAgent(ctx context.Context, conn *bus.Conn, dir, mode string, client *http.Client) (*agent, error) {
	names, err := msg.NewNames("bench-" + mode)
	if err != nil {
		return nil, err
	}
	if err := conn.EnsureBuckets(ctx, bus.ContractBuckets(names)); err != nil {
		return nil, err
	}
	a := &agent{mode: mode, dir: filepath.Join(dir, mode), client: client}
	if a.apps, err = conn.KV(ctx, names.AppsBucket()); err != nil {
		return nil, err
	}
	if a.insts, err = conn.KV(ctx, names.InstancesBucket()); err != nil {
		return nil, err
	}
	return a, nil
}

func (a *agent) pidFile() string { return filepath.Join(a.dir, "lb", "run", "nginx.pid") }
func (a *agent) conf() string    { return filepath.Join(a.dir, "lb", "conf", "nginx.conf") }

// start runs the lbagent binary bin on natsURL with --manage-nginx, and
// waits until its nginx answers app-0000 from backend first.
func (a *agent) start(bin, natsURL, nginxBin, first string) (time.Duration, error) {
	a.httpAddr, a.metrics = freeAddr(), freeAddr()
	if err := os.MkdirAll(a.dir, 0o755); err != nil {
		return 0, err
	}
	logf, err := os.Create(filepath.Join(a.dir, "lbagent.log"))
	if err != nil {
		return 0, err
	}
	a.cmd = exec.Command(bin, "--nats-url", natsURL, "--prefix", "bench-"+a.mode, "--node", "bench",
		"--upstream-mode", a.mode, "--manage-nginx", "--nginx-bin", nginxBin,
		"--nginx-conf", a.conf(), "--nginx-prefix", filepath.Join(a.dir, "lb"),
		"--state-dir", filepath.Join(a.dir, "state"), "--templates", filepath.Join(a.dir, "none"),
		"--listen-http", a.httpAddr, "--listen-https", freeAddr(), "--status-listen", freeAddr(), "--metrics-listen", a.metrics)
	a.cmd.Args = append(a.cmd.Args, a.extra...)
	a.cmd.Stdout, a.cmd.Stderr = logf, logf
	if err := a.cmd.Start(); err != nil {
		logf.Close()
		return 0, fmt.Errorf("start lbagent (%s): %w", a.mode, err)
	}
	logf.Close()
	start := time.Now()
	a.cur = first
	if _, err := waitBodyAt(a.client, a.httpAddr, "app-0000.bench", first, 120*time.Second); err != nil {
		return 0, fmt.Errorf("lbagent (%s): %w\n%s", a.mode, err, a.logTail())
	}
	served := time.Since(start)
	// nginx answers as soon as the first reload takes effect; lbagent
	// confirms it a little later, or, before it waited for a slow reload,
	// failed it, put the empty config back and reloaded again. Time
	// nothing until lbagent says it serves the state.
	for a.metric("berth_lbagent_applied_generation") < 1 {
		if time.Since(start) > 10*time.Minute {
			return 0, fmt.Errorf("lbagent (%s): nginx answers, but lbagent confirmed no generation in 10 min\n%s", a.mode, a.logTail())
		}
		time.Sleep(10 * time.Millisecond)
	}
	if a.metric(fmt.Sprintf(`berth_lbagent_upstream_mode{mode=%q}`, a.mode)) != 1 {
		return 0, fmt.Errorf("lbagent asked for --upstream-mode %s does not report it in berth_lbagent_upstream_mode\n%s", a.mode, a.logTail())
	}
	w, err := watchWorkers(a.pidFile())
	if err != nil {
		return 0, fmt.Errorf("lbagent (%s): %w", a.mode, err)
	}
	a.workers = w
	return served, nil
}

// stop asks lbagent to stop (it quits its nginx gracefully) and, should
// that nginx still run, quits it: a managed nginx outlives its lbagent.
func (a *agent) stop() {
	if a.cmd == nil || a.cmd.Process == nil {
		return
	}
	_ = a.cmd.Process.Signal(os.Interrupt)
	done := make(chan struct{})
	go func() { _ = a.cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(40 * time.Second):
		_ = a.cmd.Process.Kill()
		<-done
	}
	if pid, err := masterOf(a.pidFile(), filepath.Join(a.dir, "lb")); err == nil {
		quitNginx(pid)
	}
}

// change moves app-0000's single instance to the other backend and times
// the KV put until the first answer from it through this agent's nginx.
func (a *agent) change(backA, backB string) (time.Duration, error) {
	next := backA
	if a.cur == backA {
		next = backB
	}
	t0 := time.Now()
	if err := put(a.insts, "app-0000.i0", inst("app-0000", "i0", next)); err != nil {
		return 0, err
	}
	if _, err := waitBodyAt(a.client, a.httpAddr, "app-0000.bench", next, changeTimeout); err != nil {
		return 0, fmt.Errorf("%s mode: %w\n%s", a.mode, err, a.logTail())
	}
	d := time.Since(t0)
	a.cur = next
	return d, nil
}

// newApp creates app name with its one instance on backend and times the
// app's put until the first answer from backend through this agent's
// nginx. The instance is put first, settle before, so that the timed
// change is the route's alone: its endpoint is known when it arrives.
func (a *agent) newApp(name, backend string) (time.Duration, error) {
	if err := put(a.insts, msg.InstanceKey(name, "i0"), inst(name, "i0", backend)); err != nil {
		return 0, err
	}
	time.Sleep(settle)
	t0 := time.Now()
	if err := put(a.apps, name, appMsg(name)); err != nil {
		return 0, err
	}
	if _, err := waitBodyAt(a.client, a.httpAddr, name+".bench", backend, changeTimeout); err != nil {
		return 0, fmt.Errorf("%s mode, new app: %w\n%s", a.mode, err, a.logTail())
	}
	return time.Since(t0), nil
}

// removeApp deletes app name (then its instance) and times the delete
// until its host answers 404 "no app is routed here".
func (a *agent) removeApp(name string) (time.Duration, error) {
	t0 := time.Now()
	if err := a.apps.Delete(context.Background(), name); err != nil {
		return 0, err
	}
	if _, err := waitBodyAt(a.client, a.httpAddr, name+".bench", notFound, changeTimeout); err != nil {
		return 0, fmt.Errorf("%s mode, removed app: %w\n%s", a.mode, err, a.logTail())
	}
	d := time.Since(t0)
	return d, a.insts.Delete(context.Background(), msg.InstanceKey(name, "i0"))
}

// notFound is what nginx answers for a host no app is routed on.
const notFound = `{"error":"not_found","message":"no app is routed here"}` + "\n"

// burst puts n instance changes as fast as NATS takes them, then samples
// the nginx workers for settle.
func (a *agent) burst(n, nApps int, settle time.Duration) error {
	for i := range n {
		name := fmt.Sprintf("app-%04d", 1+i%(nApps-1))
		if err := put(a.insts, msg.InstanceKey(name, "i1"), inst(name, "i1", fmt.Sprintf("127.0.0.%d:%d", 100+i%100, 30000+i))); err != nil {
			return err
		}
	}
	for end := time.Now().Add(settle); time.Now().Before(end); {
		a.workers.sample()
		time.Sleep(20 * time.Millisecond)
	}
	return nil
}

// reloads is the lbagent's count of reloads it made (applied or rejected).
func (a *agent) reloads() int {
	return int(a.metric(`berth_lbagent_reloads_total{result="applied"}`) + a.metric(`berth_lbagent_reloads_total{result="rejected"}`))
}

// failed is the lbagent's count of changes it failed to apply: a reload
// nginx did not confirm in time, a push that failed.
func (a *agent) failed() int {
	return int(a.metric(`berth_lbagent_reloads_total{result="failed"}`))
}

func (a *agent) pushes() int {
	return int(a.metric(`berth_lbagent_endpoint_pushes_total{result="ok"}`))
}

// mean returns the mean of a histogram and its count.
func (a *agent) mean(name string) (time.Duration, int) {
	sum, count := a.metric(name+"_sum"), a.metric(name+"_count")
	if count == 0 {
		return 0, 0
	}
	return time.Duration(sum / count * float64(time.Second)), int(count)
}

// metric reads one sample from lbagent's /metrics; 0 when absent.
func (a *agent) metric(name string) float64 {
	resp, err := a.client.Get("http://" + a.metrics + "/metrics")
	if err != nil {
		return 0
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	for _, line := range strings.Split(string(body), "\n") {
		if v, ok := strings.CutPrefix(line, name+" "); ok {
			f, _ := strconv.ParseFloat(v, 64)
			return f
		}
	}
	return 0
}

// errorLog returns the lines of its nginx's error log (level warn and up).
func (a *agent) errorLog() []string {
	data, err := os.ReadFile(filepath.Join(a.dir, "lb", "logs", "error.log"))
	if err != nil {
		return nil
	}
	var out []string
	for _, l := range strings.Split(string(data), "\n") {
		if strings.TrimSpace(l) != "" {
			out = append(out, l)
		}
	}
	return out
}

func (a *agent) logTail() string {
	data, _ := os.ReadFile(filepath.Join(a.dir, "lbagent.log"))
	return tail(string(data), 3000)
}

// memory reads the agent's and its nginx workers' memory now.
func (a *agent) memory() (mem, error) {
	var m mem
	st, err := procStatus(a.cmd.Process.Pid)
	if err != nil {
		return m, fmt.Errorf("%s lbagent: %w", a.mode, err)
	}
	m.agentRSS, m.agentHWM = st["VmRSS"], st["VmHWM"]
	master, err := masterOf(a.pidFile(), filepath.Join(a.dir, "lb"))
	if err != nil {
		return m, err
	}
	if m.master, err = readMem(master); err != nil {
		return m, fmt.Errorf("%s nginx master: %w", a.mode, err)
	}
	for _, pid := range liveWorkers(master) {
		if w, err := readMem(pid); err == nil {
			m.workers = append(m.workers, w)
		}
	}
	if len(m.workers) == 0 {
		return m, errors.New(a.mode + " nginx: no worker process found")
	}
	return m, nil
}
