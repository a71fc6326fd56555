// Package scheduler benchmarks the scheduler as a user runs it: real
// scheduler processes on the test rig's Postgres and NATS.
//
//	go test -run '^$' -bench . -benchtime 1x ./bench/scheduler
//
// BenchmarkFailover stops the leader 20 times by SIGTERM (clean stop) and
// 20 times by SIGKILL (crash), and times how long until another replica
// reports itself leader on /readyz. BenchmarkApply measures API apply
// throughput, sequential and with 8 concurrent clients.
// BenchmarkControlPlaneReads times the reads of every app (GET /v1/apps,
// its summary, scheduler status) at 1,000 and 10,000 apps.
package scheduler

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/berthhq/berth/internal/testrig"
)

func TestMain(m *testing.M) { testrig.Main(m) }

const leaseTTL = 2 * time.Second

type proc struct {
	cmd *exec.Cmd
	api string
}

func build(b *testing.B) string {
	b.Helper()
	bin := filepath.Join(b.TempDir(), "scheduler")
	out, err := exec.Command("go", "build", "-o", bin, "github.com/berthhq/berth/scheduler").CombinedOutput()
	if err != nil {
		b.Fatalf("build scheduler: %v: %s", err, out)
	}
	return bin
}

func start(b *testing.B, bin, db, natsURL, id string) *proc {
	b.Helper()
	api := fmt.Sprintf("127.0.0.1:%d", testrig.FreePort(b))
	cmd := exec.Command(bin, "run", "--database-url", db, "--nats-url", natsURL, "--api-listen", api, "--id", id,
		"--lease-ttl", leaseTTL.String(), "--log-level", "warn")
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	p := &proc{cmd: cmd, api: "http://" + api}
	b.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	testrig.WaitHTTP(b, p.api+"/healthz", 10*time.Second)
	return p
}

func role(p *proc) string {
	resp, err := http.Get(p.api + "/readyz")
	if err != nil {
		return "down"
	}
	defer resp.Body.Close()
	buf := make([]byte, 256)
	n, _ := resp.Body.Read(buf)
	if strings.Contains(string(buf[:n]), `"role":"leader"`) {
		return "leader"
	}
	return "follower"
}

func waitLeader(ps []*proc, timeout time.Duration) (*proc, time.Duration) {
	start := time.Now()
	for time.Since(start) < timeout {
		for _, p := range ps {
			if p != nil && role(p) == "leader" {
				return p, time.Since(start)
			}
		}
		time.Sleep(2 * time.Millisecond)
	}
	return nil, timeout
}

func BenchmarkFailover(b *testing.B) {
	bin := build(b)
	db, natsURL := testrig.Postgres(b), testrig.NATS(b)
	if out, err := exec.Command(bin, "migrate", "--database-url", db).CombinedOutput(); err != nil {
		b.Fatalf("migrate: %v: %s", err, out)
	}
	for _, mode := range []struct {
		name string
		sig  syscall.Signal
	}{{"clean-stop", syscall.SIGTERM}, {"crash", syscall.SIGKILL}} {
		b.Run(mode.name, func(b *testing.B) {
			ps := []*proc{start(b, bin, db, natsURL, "a"), start(b, bin, db, natsURL, "b")}
			var times []time.Duration
			for run := range 20 {
				leader, _ := waitLeader(ps, 3*leaseTTL)
				if leader == nil {
					b.Fatal("no leader")
				}
				time.Sleep(300 * time.Millisecond) // the follower is listening and settled
				i := 0
				if leader == ps[1] {
					i = 1
				}
				stopped := time.Now()
				_ = leader.cmd.Process.Signal(mode.sig)
				_ = leader.cmd.Wait()
				ps[i] = nil
				next, _ := waitLeader(ps, 3*leaseTTL)
				if next == nil {
					b.Fatalf("run %d: no takeover", run)
				}
				times = append(times, time.Since(stopped))
				ps[i] = start(b, bin, db, natsURL, fmt.Sprintf("r%d", run)) // a fresh follower
			}
			sort.Slice(times, func(i, j int) bool { return times[i] < times[j] })
			p50, worst := times[len(times)/2], times[len(times)-1]
			b.ReportMetric(float64(p50.Milliseconds()), "p50-ms")
			b.ReportMetric(float64(worst.Milliseconds()), "max-ms")
			fmt.Printf("failover %-10s over %d runs: p50 %s, max %s (lease TTL %s, renew every %s)\n",
				mode.name, len(times), p50.Round(time.Millisecond), worst.Round(time.Millisecond), leaseTTL, leaseTTL/3)
		})
	}
}

func BenchmarkApply(b *testing.B) {
	bin := build(b)
	db, natsURL := testrig.Postgres(b), testrig.NATS(b)
	if out, err := exec.Command(bin, "migrate", "--database-url", db).CombinedOutput(); err != nil {
		b.Fatalf("migrate: %v: %s", err, out)
	}
	p := start(b, bin, db, natsURL, "a")
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 16}}
	put := func(i int) error {
		body := fmt.Sprintf("name: app-%d\nimage: web:%d\nport: 8080\nreplicas: 2\nrouting: {hosts: [app-%d.bench.test]}\n", i%benchApps, i, i%benchApps)
		req, _ := http.NewRequestWithContext(context.Background(), "PUT", fmt.Sprintf("%s/v1/apps/app-%d", p.api, i%benchApps), strings.NewReader(body))
		resp, err := client.Do(req)
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		if resp.StatusCode != 200 {
			msg, _ := io.ReadAll(io.LimitReader(resp.Body, 1024))
			return fmt.Errorf("status %d: %s", resp.StatusCode, msg)
		}
		return nil
	}
	for _, workers := range []int{1, 8} {
		b.Run(fmt.Sprintf("clients-%d", workers), func(b *testing.B) {
			const n = 1000
			var next atomic.Int64
			var wg sync.WaitGroup
			start := time.Now()
			for range workers {
				wg.Add(1)
				go func() {
					defer wg.Done()
					for {
						i := int(next.Add(1))
						if i > n {
							return
						}
						if err := put(i); err != nil {
							b.Error(err)
							return
						}
					}
				}()
			}
			wg.Wait()
			rate := float64(n) / time.Since(start).Seconds()
			b.ReportMetric(rate, "applies/s")
			fmt.Printf("apply throughput, %d client(s): %.0f applies/s (%d applies, each a new generation with history)\n", workers, rate, n)
		})
	}
}

// benchApps is how many apps the apply benchmark spreads its applies over.
var benchApps = envInt("BERTH_BENCH_APPS", 200)

func envInt(name string, def int) int {
	if v, err := strconv.Atoi(os.Getenv(name)); err == nil && v > 0 {
		return v
	}
	return def
}
