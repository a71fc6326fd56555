// Command lbagent benchmarks the lbagent on a large config (default 1000
// apps × 10 servers) against a floor measured in the same run:
//
//   - render: the lbagent's own render_duration_seconds histogram (mean);
//   - change-to-served: from the KV put of one instance change to nginx
//     answering from the new server set, p50 and p95 over -changes runs;
//   - floor: nginx -t + SIGHUP to the master (its pid read from its pid
//     file) + the first request answered from the new config, by hand on a
//     copy of the same config in a second nginx; the floor of earlier runs,
//     with nginx -s reload in place of the signal, is measured alongside
//     (interleaved) for comparison;
//   - burst: how many reloads a burst of -burst changes causes.
//
// Run it with: go run ./bench/lbagent (needs nginx; sends traffic to 127.0.0.1 only).
package main

import (
	"bytes"
	"context"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"

	"go.uber.org/zap"

	"github.com/berthhq/berth/common/bus"
	"github.com/berthhq/berth/common/msg"
	"github.com/berthhq/berth/common/spec"
)

func main() {
	apps := flag.Int("apps", 1000, "apps in the config")
	servers := flag.Int("servers", 10, "servers per app")
	changes := flag.Int("changes", 50, "single changes to time")
	burst := flag.Int("burst", 100, "changes in the burst")
	nginxBin := flag.String("nginx", "nginx", "nginx executable")
	flag.Parse()
	if err := run(*apps, *servers, *changes, *burst, *nginxBin); err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
}

type bench struct {
	dir      string
	names    msg.Names
	apps     *bus.KV
	insts    *bus.KV
	client   *http.Client
	httpAddr string
	metrics  string
	a, b     string // the two real backends
}

func run(nApps, nServers, nChanges, nBurst int, nginxBin string) error {
	dir, err := os.MkdirTemp("", "berth-bench-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	logger := zap.NewNop()
	srv, err := bus.Embedded(bus.EmbeddedOptions{Port: -1, StoreDir: filepath.Join(dir, "nats")}, logger)
	if err != nil {
		return err
	}
	defer srv.Shutdown()
	ctx := context.Background()
	conn, err := bus.Connect(ctx, bus.Options{URL: srv.URL()}, logger)
	if err != nil {
		return err
	}
	defer conn.Close()
	names, _ := msg.NewNames("berth")
	if err := conn.EnsureBuckets(ctx, bus.ContractBuckets(names)); err != nil {
		return err
	}
	b := &bench{dir: dir, names: names, client: &http.Client{Timeout: 2 * time.Second}}
	if b.apps, err = conn.KV(ctx, names.AppsBucket()); err != nil {
		return err
	}
	if b.insts, err = conn.KV(ctx, names.InstancesBucket()); err != nil {
		return err
	}
	b.a, b.b = backend("A"), backend("B")

	fmt.Printf("populating %d apps x %d servers...\n", nApps, nServers)
	for i := range nApps {
		name := fmt.Sprintf("app-%04d", i)
		if err := b.put(b.apps, name, appMsg(name)); err != nil {
			return err
		}
		for j := range nServers {
			addr := fmt.Sprintf("127.0.0.%d:%d", 2+j, 20000+i)
			if i == 0 && j == 0 {
				addr = b.a
			} else if i == 0 {
				continue // app-0000 has one server, a real backend, so answers are definite
			}
			if err := b.put(b.insts, msg.InstanceKey(name, fmt.Sprintf("i%d", j)), inst(name, fmt.Sprintf("i%d", j), addr)); err != nil {
				return err
			}
		}
	}

	b.httpAddr, b.metrics = freeAddr(), freeAddr()
	bin := filepath.Join(dir, "lbagent")
	if out, err := exec.Command("go", "build", "-o", bin, "./lbagent").CombinedOutput(); err != nil {
		return fmt.Errorf("build lbagent: %v: %s", err, out)
	}
	logf, _ := os.Create(filepath.Join(dir, "lbagent.log"))
	agent := exec.Command(bin, "--nats-url", srv.URL(), "--node", "bench", "--manage-nginx", "--nginx-bin", nginxBin,
		"--nginx-conf", filepath.Join(dir, "lb", "conf", "nginx.conf"), "--nginx-prefix", filepath.Join(dir, "lb"),
		"--state-dir", filepath.Join(dir, "state"), "--templates", filepath.Join(dir, "none"),
		"--listen-http", b.httpAddr, "--listen-https", freeAddr(), "--status-listen", freeAddr(), "--metrics-listen", b.metrics)
	agent.Stdout, agent.Stderr = logf, logf
	if err := agent.Start(); err != nil {
		return err
	}
	defer func() { _ = agent.Process.Signal(os.Interrupt); _ = agent.Wait() }()
	start := time.Now()
	if _, err := b.waitBody("app-0000.bench", "A", 120*time.Second); err != nil {
		log, _ := os.ReadFile(filepath.Join(dir, "lbagent.log"))
		return fmt.Errorf("%w\n%s", err, tail(string(log), 3000))
	}
	fmt.Printf("initial config served after %s\n", time.Since(start).Round(time.Millisecond))

	// Change-to-served through lbagent.
	var cts []time.Duration
	for i := range nChanges {
		want, addr := "B", b.b
		if i%2 == 1 {
			want, addr = "A", b.a
		}
		time.Sleep(150 * time.Millisecond) // each change on its own, as an operator's would be
		t0 := time.Now()
		if err := b.put(b.insts, "app-0000.i0", inst("app-0000", "i0", addr)); err != nil {
			return err
		}
		if _, err := b.waitBody("app-0000.bench", want, 30*time.Second); err != nil {
			return err
		}
		cts = append(cts, time.Since(t0))
	}
	renderMean, renders := b.renderMean()

	// The floor: the same config, by hand, in a second nginx.
	floor, padded, err := b.floor(nginxBin, nChanges)
	if err != nil {
		return err
	}

	// Burst.
	before := b.reloads()
	time.Sleep(300 * time.Millisecond)
	for i := range nBurst {
		name := fmt.Sprintf("app-%04d", 1+i%(nApps-1))
		if err := b.put(b.insts, msg.InstanceKey(name, "i1"), inst(name, "i1", fmt.Sprintf("127.0.0.%d:%d", 100+i%100, 30000+i))); err != nil {
			return err
		}
	}
	time.Sleep(3 * time.Second)
	burstReloads := b.reloads() - before

	p50, p95 := pct(cts, 50), pct(cts, 95)
	f50, f95 := pct(floor, 50), pct(floor, 95)
	o50, o95 := pct(padded, 50), pct(padded, 95)
	fmt.Printf("\nlbagent benchmark: %d apps x %d servers\n", nApps, nServers)
	fmt.Printf("  render (mean of %d)            %8.1f ms   target < 50 ms\n", renders, ms(renderMean))
	fmt.Printf("  floor: nginx -t + HUP + 1st    %8.1f ms p50  %8.1f ms p95\n", ms(f50), ms(f95))
	fmt.Printf("  earlier floor: -s reload       %8.1f ms p50  %8.1f ms p95   (padded by a second nginx parsing the config)\n", ms(o50), ms(o95))
	fmt.Printf("  change-to-served               %8.1f ms p50  %8.1f ms p95\n", ms(p50), ms(p95))
	fmt.Printf("  ratio to floor                 %8.2fx   p50  %8.2fx   p95   target <= 1.2x floor + 20 ms (p50 limit %.1f ms)\n",
		float64(p50)/float64(f50), float64(p95)/float64(f95), ms(time.Duration(1.2*float64(f50)))+20)
	fmt.Printf("  ratio to the earlier floor     %8.2fx   p50  %8.2fx   p95\n", float64(p50)/float64(o50), float64(p95)/float64(o95))
	fmt.Printf("  reloads for a burst of %d      %8d        target <= 3\n", nBurst, burstReloads)
	return nil
}

func (b *bench) put(kv *bus.KV, key string, m msg.Message) error {
	data, err := msg.Encode(m)
	if err != nil {
		return err
	}
	_, err = kv.Put(context.Background(), key, data)
	return err
}

func appMsg(name string) *msg.App {
	return &msg.App{Name: name, Generation: 1, Term: 1, Port: 8080, UpdatedAt: time.Now(),
		Routing: spec.Routing{Hosts: []string{name + ".bench"}, Paths: []string{"/"}},
		LB: spec.LB{Method: spec.LBRoundRobin, Keepalive: 16, MaxFails: 1, FailTimeout: spec.Duration(10 * time.Second),
			ConnectTimeout: spec.Duration(2 * time.Second), ReadTimeout: spec.Duration(60 * time.Second), NextUpstreamTries: 2, ClientMaxBodySize: 1 << 20}}
}

func inst(app, id, addr string) *msg.Instance {
	return &msg.Instance{App: app, ID: id, Generation: 1, Term: 1, Address: addr, State: msg.StateRunning, Weight: 1, UpdatedAt: time.Now()}
}

func backend(body string) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		panic(err)
	}
	go func() {
		_ = http.Serve(ln, http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { _, _ = io.WriteString(w, body) }))
	}()
	return ln.Addr().String()
}

func freeAddr() string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		panic(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// waitBody polls addr with Host host every millisecond until it answers
// want, and returns how long that took.
func (b *bench) waitBody(host, want string, timeout time.Duration) (time.Duration, error) {
	return waitBodyAt(b.client, b.httpAddr, host, want, timeout)
}

func waitBodyAt(client *http.Client, addr, host, want string, timeout time.Duration) (time.Duration, error) {
	start := time.Now()
	last := ""
	for time.Since(start) < timeout {
		req, _ := http.NewRequest(http.MethodGet, "http://"+addr+"/", nil)
		req.Host = host
		if resp, err := client.Do(req); err == nil {
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if string(body) == want {
				return time.Since(start), nil
			}
			last = fmt.Sprintf("%d %q", resp.StatusCode, tail(string(body), 100))
		} else {
			last = err.Error()
		}
		time.Sleep(time.Millisecond)
	}
	return 0, fmt.Errorf("%s did not answer %q within %s (last: %s)", host, want, timeout, last)
}

var listenRe = regexp.MustCompile(`listen 127\.0\.0\.1:\d+`)
var genRe = regexp.MustCompile(`return 200 "\d+\\n";`)

// floor times, n times each, the least a config-reloading agent must do
// for one change, on a copy of lbagent's config served by a second nginx:
// write the config to a staging prefix, nginx -t it there, write it live,
// SIGHUP the master named in the live pid file (as lbagent does), and poll
// until the first answer from the new backend. Interleaved with those, it
// times the same with `nginx -s reload` in place of the signal, the floor
// of earlier runs: a second nginx that parses the whole config again only
// to read the pid file and send the same signal.
func (b *bench) floor(nginxBin string, n int) (hup, reload []time.Duration, err error) {
	conf, err := os.ReadFile(filepath.Join(b.dir, "lb", "conf", "nginx.conf"))
	if err != nil {
		return nil, nil, err
	}
	addr := freeAddr()
	ports := map[string]string{}
	conf = listenRe.ReplaceAllFunc(conf, func(m []byte) []byte {
		old := string(m)
		if _, ok := ports[old]; !ok {
			ports[old] = "listen " + freeAddr()
		}
		return []byte(ports[old])
	})
	for old, nw := range ports {
		if strings.HasSuffix(old, b.httpAddr) {
			addr = strings.TrimPrefix(nw, "listen ")
		}
	}
	prefix, staging := filepath.Join(b.dir, "floor"), filepath.Join(b.dir, "floor-staging")
	for _, p := range []string{prefix, staging} {
		for _, sub := range []string{"conf", "logs", "run", "temp"} {
			if err := os.MkdirAll(filepath.Join(p, sub), 0o755); err != nil {
				return nil, nil, err
			}
		}
	}
	live := filepath.Join(prefix, "conf", "nginx.conf")
	if err := os.WriteFile(live, conf, 0o644); err != nil {
		return nil, nil, err
	}
	cmd := exec.Command(nginxBin, "-e", "stderr", "-p", prefix, "-c", live, "-g", "daemon off;")
	if err := cmd.Start(); err != nil {
		return nil, nil, err
	}
	defer func() { _ = cmd.Process.Signal(os.Interrupt); _ = cmd.Wait() }()
	cur := b.a
	if bytes.Contains(conf, []byte(b.b)) && !bytes.Contains(conf, []byte(b.a)) {
		cur = b.b
	}
	want := map[string]string{b.a: "A", b.b: "B"}
	if _, err := waitBodyAt(b.client, addr, "app-0000.bench", want[cur], 60*time.Second); err != nil {
		return nil, nil, fmt.Errorf("floor nginx: %w", err)
	}
	pidFile := filepath.Join(prefix, "run", "nginx.pid")
	for i := range 2 * n {
		next := b.a
		if cur == b.a {
			next = b.b
		}
		conf = bytes.Replace(conf, []byte(cur), []byte(next), 1)
		conf = genRe.ReplaceAll(conf, []byte(fmt.Sprintf(`return 200 "%d\n";`, 100000+i)))
		cur = next
		time.Sleep(150 * time.Millisecond)
		t0 := time.Now()
		stagingConf := filepath.Join(staging, "conf", "nginx.conf")
		if err := os.WriteFile(stagingConf, conf, 0o644); err != nil {
			return nil, nil, err
		}
		if o, err := exec.Command(nginxBin, "-t", "-q", "-e", "stderr", "-p", staging, "-c", stagingConf).CombinedOutput(); err != nil {
			return nil, nil, fmt.Errorf("floor nginx -t: %v: %s", err, o)
		}
		if err := os.WriteFile(live, conf, 0o644); err != nil {
			return nil, nil, err
		}
		if i%2 == 0 {
			if err := hupMaster(pidFile); err != nil {
				return nil, nil, err
			}
		} else if o, err := exec.Command(nginxBin, "-e", "stderr", "-p", prefix, "-c", live, "-s", "reload").CombinedOutput(); err != nil {
			return nil, nil, fmt.Errorf("floor reload: %v: %s", err, o)
		}
		if _, err := waitBodyAt(b.client, addr, "app-0000.bench", want[cur], 30*time.Second); err != nil {
			return nil, nil, err
		}
		if i%2 == 0 {
			hup = append(hup, time.Since(t0))
		} else {
			reload = append(reload, time.Since(t0))
		}
	}
	return hup, reload, nil
}

// hupMaster sends SIGHUP to the nginx master named in pidFile, as lbagent's
// reloaders do (nginx.Supervisor, nginx.PidFile).
func hupMaster(pidFile string) error {
	data, err := os.ReadFile(pidFile)
	if err != nil {
		return fmt.Errorf("floor: read pid file: %w", err)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(data)))
	if err != nil || pid <= 1 {
		return fmt.Errorf("floor: pid file %s holds %q, not a pid", pidFile, strings.TrimSpace(string(data)))
	}
	if err := syscall.Kill(pid, syscall.SIGHUP); err != nil {
		return fmt.Errorf("floor: signal master %d: %w", pid, err)
	}
	return nil
}

// metric reads one sample from lbagent's /metrics.
func (b *bench) metric(name string) float64 {
	resp, err := b.client.Get("http://" + b.metrics + "/metrics")
	if err != nil {
		return 0
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	for _, line := range strings.Split(string(body), "\n") {
		if strings.HasPrefix(line, name+" ") {
			v, _ := strconv.ParseFloat(strings.TrimPrefix(line, name+" "), 64)
			return v
		}
	}
	return 0
}

func (b *bench) renderMean() (time.Duration, int) {
	sum, count := b.metric("berth_lbagent_render_duration_seconds_sum"), b.metric("berth_lbagent_render_duration_seconds_count")
	if count == 0 {
		return 0, 0
	}
	return time.Duration(sum / count * float64(time.Second)), int(count)
}

func (b *bench) reloads() int {
	return int(b.metric(`berth_lbagent_reloads_total{result="applied"}`) + b.metric(`berth_lbagent_reloads_total{result="rejected"}`))
}

func pct(ds []time.Duration, p int) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := append([]time.Duration(nil), ds...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	return s[(len(s)-1)*p/100]
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

func tail(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[len(s)-n:]
}
