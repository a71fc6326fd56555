// Command healthd benchmarks healthd's probing: sustained HTTP probes per
// second per core against local targets (default 2,000 targets on
// 127.0.0.1 at a 1 s interval), compared in the same run to the floor, a
// minimal Go loop doing the same GETs with the same client settings. It
// also measures detection (a target starting to fail to its unhealthy KV
// write) and memory per target; and with --takeover, how long a second
// checker's shard takes to move to the first once the second is killed
// (crash) or stopped (it leaves).
//
// Run it with: go run ./bench/healthd (traffic stays on 127.0.0.1). At
// 30,000 targets (issue 30), one listener and one keep-alive connection per
// target would need more file descriptors than a process may have here:
//
//	go run ./bench/healthd --targets 30000 --servers 16 --per-app 3 --interval 10s --takeover
//
// spreads the targets (10,000 apps of 3) over 16 HTTP servers.
package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"go.uber.org/zap"

	"github.com/berthhq/berth/common/bus"
	"github.com/berthhq/berth/common/msg"
	"github.com/berthhq/berth/common/spec"
)

func main() {
	var o options
	flag.IntVar(&o.targets, "targets", 2000, "targets")
	flag.DurationVar(&o.dur, "duration", 10*time.Second, "how long each phase runs")
	flag.IntVar(&o.servers, "servers", 0, "HTTP servers the targets share, round robin (0: one per target)")
	flag.IntVar(&o.perApp, "per-app", 0, "targets per app (0: all in one app)")
	flag.DurationVar(&o.interval, "interval", time.Second, "every target's health.interval")
	flag.BoolVar(&o.takeover, "takeover", false, "also time a second checker's shard moving to the first when it is killed and when it stops")
	serve := flag.Int("serve", 0, "internal: serve this many targets and print their addresses")
	flag.Parse()
	if *serve > 0 {
		serveTargets(*serve)
		return
	}
	if o.servers <= 0 || o.servers > o.targets {
		o.servers = o.targets
	}
	if o.perApp <= 0 {
		o.perApp = o.targets
	}
	if err := run(o); err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
}

// serveTargets is the child process: n HTTP servers answering /healthz, so
// their CPU time is not counted against the prober.
func serveTargets(n int) {
	h := http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { _, _ = io.WriteString(w, "ok") })
	for range n {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		fmt.Println(ln.Addr().String())
		go func() { _ = http.Serve(ln, h) }()
	}
	fmt.Println("ready")
	select {}
}

func cpuTime() time.Duration {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// procCPU is a process's user+system CPU time from /proc.
func procCPU(pid int) time.Duration {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	f := strings.Fields(string(b[strings.LastIndexByte(string(b), ')')+2:]))
	ut, _ := strconv.ParseInt(f[11], 10, 64)
	st, _ := strconv.ParseInt(f[12], 10, 64)
	return time.Duration(ut+st) * time.Second / 100 // USER_HZ
}

// metric reads one sample from a /metrics page, summing series that share the prefix.
func metric(addr, prefix string) float64 {
	resp, err := http.Get("http://" + addr + "/metrics")
	if err != nil {
		return 0
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	sum := 0.0
	for _, line := range strings.Split(string(body), "\n") {
		if strings.HasPrefix(line, prefix) {
			f := strings.Fields(line)
			v, _ := strconv.ParseFloat(f[len(f)-1], 64)
			sum += v
		}
	}
	return sum
}

// options are the bench's flags.
type options struct {
	targets, servers, perApp int
	dur, interval            time.Duration
	takeover                 bool
}

// appOf is the app and instance id of target i.
func (o options) appOf(i int) (app, id string) {
	if o.perApp >= o.targets {
		return "bench", fmt.Sprintf("t%d", i)
	}
	return fmt.Sprintf("app%05d", i/o.perApp), fmt.Sprintf("t%d", i)
}

func run(o options) error {
	n, dur := o.targets, o.dur
	child := exec.Command(os.Args[0], "-serve", fmt.Sprint(o.servers))
	out, err := child.StdoutPipe()
	if err != nil {
		return err
	}
	child.Stderr = os.Stderr
	if err := child.Start(); err != nil {
		return err
	}
	defer func() { _ = child.Process.Kill(); _ = child.Wait() }()
	var servers []string
	sc := bufio.NewScanner(out)
	for sc.Scan() && sc.Text() != "ready" {
		servers = append(servers, sc.Text())
	}
	if len(servers) != o.servers {
		return fmt.Errorf("child served %d servers, want %d", len(servers), o.servers)
	}
	addrs := make([]string, n)
	for i := range addrs {
		addrs[i] = servers[i%len(servers)]
	}

	dir, _ := os.MkdirTemp("", "berth-bench-healthd-")
	defer os.RemoveAll(dir)
	srv, err := bus.Embedded(bus.EmbeddedOptions{Port: -1, StoreDir: filepath.Join(dir, "nats")}, zap.NewNop())
	if err != nil {
		return err
	}
	defer srv.Shutdown()
	ctx := context.Background()
	conn, err := bus.Connect(ctx, bus.Options{URL: srv.URL()}, zap.NewNop())
	if err != nil {
		return err
	}
	defer conn.Close()
	names, _ := msg.NewNames("berth")
	if err := conn.EnsureBuckets(ctx, bus.ContractBuckets(names)); err != nil {
		return err
	}
	apps, _ := conn.KV(ctx, names.AppsBucket())
	insts, _ := conn.KV(ctx, names.InstancesBucket())
	health, _ := conn.KV(ctx, names.HealthBucket())
	checkers, _ := conn.KV(ctx, names.CheckersBucket())
	put := func(kv *bus.KV, key string, m msg.Message) error {
		b, err := msg.Encode(m)
		if err == nil {
			_, err = kv.Put(ctx, key, b)
		}
		return err
	}
	yes := true
	st, _ := spec.ParseStatusRanges("200-399")
	for i := 0; i < n; i += o.perApp {
		name, _ := o.appOf(i)
		if err := put(apps, name, &msg.App{Name: name, Generation: 1, Term: 1, Port: 8080, UpdatedAt: time.Now(),
			Routing: spec.Routing{Paths: []string{"/"}}, LB: spec.LB{Method: spec.LBRoundRobin, ConnectTimeout: spec.Duration(time.Second), ReadTimeout: spec.Duration(time.Second)},
			Health: &spec.Health{Type: spec.HealthHTTP, Enabled: &yes, Port: 8080, Path: "/healthz", Method: "GET", ExpectedStatus: st,
				Interval: spec.Duration(o.interval), Timeout: spec.Duration(500 * time.Millisecond), HealthyThreshold: 1, UnhealthyThreshold: 3}}); err != nil {
			return err
		}
	}

	// The real healthd binary.
	bin := filepath.Join(dir, "healthd")
	if out, err := exec.Command("go", "build", "-o", bin, "./healthd").CombinedOutput(); err != nil {
		return fmt.Errorf("build healthd: %v: %s", err, out)
	}
	metricsAddr := freeAddr()
	hd := exec.Command(bin, "--nats-url", srv.URL(), "--id", "bench", "--metrics-listen", metricsAddr, "--log-level", "info")
	logs, err := hd.StderrPipe()
	if err != nil {
		return err
	}
	if err := hd.Start(); err != nil {
		return err
	}
	var shared atomic.Pointer[logged]
	go followLog(logs, &shared)
	defer func() { _ = hd.Process.Signal(os.Interrupt); _ = hd.Wait() }()
	for i := 0; metric(metricsAddr, "berth_healthd_targets") == 0 && i < 10; i++ {
		time.Sleep(100 * time.Millisecond) // metrics listener up
	}
	heapBefore := metric(metricsAddr, "go_memstats_heap_inuse_bytes")
	for i, a := range addrs {
		app, id := o.appOf(i)
		if err := put(insts, msg.InstanceKey(app, id), &msg.Instance{App: app, ID: id, Generation: 1, Term: 1, Address: a,
			State: msg.StateRunning, Weight: 1, UpdatedAt: time.Now()}); err != nil {
			return err
		}
	}
	for metric(metricsAddr, "berth_healthd_targets") < float64(n) {
		time.Sleep(100 * time.Millisecond)
	}
	time.Sleep(max(3*time.Second, o.interval+time.Second)) // warm up: connections opened, first reports published
	p0, c0, t0 := metric(metricsAddr, "berth_healthd_probes_total"), procCPU(hd.Process.Pid), time.Now()
	time.Sleep(dur)
	probes, cpu, wall := metric(metricsAddr, "berth_healthd_probes_total")-p0, procCPU(hd.Process.Pid)-c0, time.Since(t0)
	heapAfter := metric(metricsAddr, "go_memstats_heap_inuse_bytes")

	// Detection: one instance moves to a port that refuses connections (it died).
	ln, _ := net.Listen("tcp", "127.0.0.1:0")
	dead := ln.Addr().String()
	ln.Close()
	app0, _ := o.appOf(0)
	start := time.Now()
	if err := put(insts, msg.InstanceKey(app0, "t0"), &msg.Instance{App: app0, ID: "t0", Generation: 1, Term: 1, Address: dead,
		State: msg.StateRunning, Weight: 1, UpdatedAt: time.Now()}); err != nil {
		return err
	}
	var det time.Duration
	for det == 0 && time.Since(start) < 30*time.Second {
		if e, err := health.Get(ctx, msg.InstanceKey(app0, "t0")); err == nil {
			if h, err := msg.DecodeAs[*msg.Health](e.Value); err == nil && h.Status == msg.StatusUnhealthy {
				det = time.Since(start)
			}
		}
		time.Sleep(5 * time.Millisecond)
	}
	var takeovers []string
	if o.takeover {
		for _, crash := range []bool{true, false} {
			line, err := takeover(bin, srv.URL(), metricsAddr, checkers, &shared, n, crash)
			if err != nil {
				line = "takeover: " + err.Error()
			}
			takeovers = append(takeovers, line)
		}
	}
	_ = hd.Process.Signal(os.Interrupt)

	// The floor, in this process, with the same transport settings.
	floorProbes, floorCPU, floorWall := floor(addrs, dur, o.interval)

	rate := probes / wall.Seconds()
	perCore := probes / cpu.Seconds()
	floorPerCore := float64(floorProbes) / floorCPU.Seconds()
	load, _ := os.ReadFile("/proc/loadavg")
	fmt.Printf("\nhealthd benchmark: %d HTTP targets (%d apps) on %d servers at %s on 127.0.0.1, %s measured per phase, %d cores, load %s\n",
		n, (n+o.perApp-1)/o.perApp, o.servers, o.interval, dur, runtime.NumCPU(), strings.Join(strings.Fields(string(load))[:3], " "))
	fmt.Printf("  healthd: %7.0f probes/s  %5.2f CPU-s  %7.0f probes per CPU-second   target >= 5000\n", rate, cpu.Seconds(), perCore)
	fmt.Printf("  floor:   %7.0f GETs/s    %5.2f CPU-s  %7.0f GETs per CPU-second\n", float64(floorProbes)/floorWall.Seconds(), floorCPU.Seconds(), floorPerCore)
	fmt.Printf("  ratio to floor: %.2fx (probes per CPU-second, check history on)   target >= 0.9x\n", perCore/floorPerCore)
	fmt.Printf("  detection (start failing -> unhealthy KV write): %s   target <= 3 x %s + 1s\n", det.Round(time.Millisecond), o.interval)
	fmt.Printf("  memory: %.1f KiB of Go heap per target\n", (heapAfter-heapBefore)/float64(n)/1024)
	for _, l := range takeovers {
		fmt.Println("  " + l)
	}
	return nil
}

func freeAddr() string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		panic(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// floor GETs every target once a second at its own offset with one
// keep-alive connection per target, reading the body, and nothing else.
func floor(addrs []string, dur, interval time.Duration) (int64, time.Duration, time.Duration) {
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 1, MaxIdleConns: 100000, DisableCompression: true}, Timeout: 500 * time.Millisecond}
	var count atomic.Int64
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	for i, a := range addrs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			time.Sleep(time.Duration(i) * interval / time.Duration(len(addrs)))
			t := time.NewTicker(interval)
			defer t.Stop()
			for {
				resp, err := client.Get("http://" + a + "/healthz")
				if err == nil {
					_, _ = io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
					count.Add(1)
				}
				select {
				case <-ctx.Done():
					return
				case <-t.C:
				}
			}
		}()
	}
	time.Sleep(interval + time.Second)
	p0, c0, t0 := count.Load(), cpuTime(), time.Now()
	time.Sleep(dur)
	n, cpu, wall := count.Load()-p0, cpuTime()-c0, time.Since(t0)
	cancel()
	wg.Wait()
	return n, cpu, wall
}

// logged is the first checker's share as its log last said, and when the
// bench read that line.
type logged struct {
	at      time.Time
	targets int
}

// followLog copies the first checker's log to stderr, its info lines
// aside, and records each share it logs ("live checkers changed").
func followLog(r io.Reader, last *atomic.Pointer[logged]) {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64*1024), 1<<20)
	for sc.Scan() {
		line := sc.Bytes()
		var l struct {
			Level, Msg string
			Targets    int
		}
		if json.Unmarshal(line, &l) != nil || l.Level != "info" {
			fmt.Fprintln(os.Stderr, string(line))
			continue
		}
		if strings.HasPrefix(l.Msg, "live checkers changed") {
			last.Store(&logged{at: time.Now(), targets: l.Targets})
		}
	}
}

// takeover starts a second checker beside the first (whose metrics are at
// firstMetrics and whose logged share is in shared), waits until the two
// share the n targets and the second has probed each of its share once,
// then kills it (crash) or stops it (it leaves the checkers bucket), and
// times until the first checker holds all n targets again. It returns the
// line to print.
//
// That time is read from the first checker's log, not from its /metrics:
// at 30,000 targets (10,000 apps) the page has 47,000 series, and one
// read took 0.1-1 s while the checker was busy, so a figure polled from it
// counted up to a read (0.46 s of a 0.67 s takeover), and the reads every
// 20 ms loaded the checker they timed (issue 30).
func takeover(bin, natsURL, firstMetrics string, checkers *bus.KV, shared *atomic.Pointer[logged], n int, crash bool) (string, error) {
	addr := freeAddr()
	hd := exec.Command(bin, "--nats-url", natsURL, "--id", "bench-second", "--metrics-listen", addr, "--log-level", "warn")
	hd.Stderr = os.Stderr
	if err := hd.Start(); err != nil {
		return "", err
	}
	defer func() { _ = hd.Process.Kill(); _ = hd.Wait() }()
	start := time.Now()
	for {
		a, b := metric(firstMetrics, "berth_healthd_targets "), metric(addr, "berth_healthd_targets ")
		if b > 0 && a+b == float64(n) {
			break
		}
		if time.Since(start) > time.Minute {
			return "", fmt.Errorf("the second checker never took a share: %v and %v of %d targets", a, b, n)
		}
		time.Sleep(50 * time.Millisecond)
	}
	share := metric(addr, "berth_healthd_targets ")
	// Steady state first: every target of its share probed once, and the
	// first reports published (a start's burst of puts, which a stop would
	// wait for), then the publisher's queue idle for a second.
	for metric(addr, "berth_healthd_probes_total") < share {
		if time.Since(start) > 2*time.Minute {
			return "", fmt.Errorf("the second checker never probed its %v targets", share)
		}
		time.Sleep(100 * time.Millisecond)
	}
	time.Sleep(2 * time.Second)
	how, sig := "stopped (leaves)", os.Interrupt
	if crash {
		how, sig = "killed (crash)", os.Kill
	}
	start = time.Now()
	_ = hd.Process.Signal(sig)
	// When a stopped checker's heartbeat is gone from the bucket: its
	// leave, the first part of the takeover.
	var left atomic.Pointer[time.Time]
	if !crash {
		go func() {
			for time.Since(start) < time.Minute {
				if _, err := checkers.Get(context.Background(), "bench-second"); errors.Is(err, bus.ErrKeyNotFound) {
					at := time.Now()
					left.Store(&at)
					return
				}
				time.Sleep(2 * time.Millisecond)
			}
		}()
	}
	for {
		if sh := shared.Load(); sh != nil && sh.at.After(start) && sh.targets >= n {
			if held := metric(firstMetrics, "berth_healthd_targets "); held != float64(n) {
				return "", fmt.Errorf("the first checker logged %d targets, its /metrics says %v", sh.targets, held)
			}
			leave := ""
			if at := left.Load(); at != nil {
				leave = fmt.Sprintf("; its heartbeat deleted after %s", at.Sub(start).Round(time.Millisecond))
			}
			return fmt.Sprintf("takeover, second checker %-16s its %.0f targets are the first's after %s   (dead after %s%s)", how+":", share,
				sh.at.Sub(start).Round(time.Millisecond), msg.CheckerDeadAfter, leave), nil
		}
		if time.Since(start) > time.Minute {
			return "", fmt.Errorf("the first checker did not take the second's %v targets back within a minute", share)
		}
		time.Sleep(5 * time.Millisecond)
	}
}
