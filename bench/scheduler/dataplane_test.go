package scheduler

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/berthhq/berth/common/bus"
	"github.com/berthhq/berth/common/msg"
	"github.com/berthhq/berth/internal/testrig"
	"go.uber.org/zap"
)

// dataplane is a scheduler process managing prefix, and a view of its
// instances bucket.
type dataplane struct {
	p      *proc
	kv     *bus.KV
	prefix string
}

func startDataplane(b *testing.B, prefix string) *dataplane {
	b.Helper()
	bin := build(b)
	db, natsURL := testrig.Postgres(b), testrig.NATS(b)
	if out, err := exec.Command(bin, "migrate", "--database-url", db).CombinedOutput(); err != nil {
		b.Fatalf("migrate: %v: %s", err, out)
	}
	testrig.RemoveBerthContainers(b, prefix)
	api := fmt.Sprintf("127.0.0.1:%d", testrig.FreePort(b))
	cmd := exec.Command(bin, "run", "--database-url", db, "--nats-url", natsURL, "--api-listen", api, "--prefix", prefix,
		"--id", "bench", "--log-level", "warn", "--max-parallel", "4")
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = cmd.Process.Signal(os.Interrupt); _ = cmd.Wait() })
	p := &proc{cmd: cmd, api: "http://" + api}
	testrig.WaitHTTP(b, p.api+"/healthz", 10*time.Second)
	conn, err := bus.Connect(context.Background(), bus.Options{URL: natsURL}, zap.NewNop())
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(conn.Close)
	names, _ := msg.NewNames(prefix)
	if err := conn.EnsureBuckets(context.Background(), bus.ContractBuckets(names)); err != nil {
		b.Fatal(err)
	}
	kv, err := conn.KV(context.Background(), names.InstancesBucket())
	if err != nil {
		b.Fatal(err)
	}
	return &dataplane{p: p, kv: kv, prefix: prefix}
}

func (d *dataplane) apply(b *testing.B, image string, replicas int) {
	b.Helper()
	// A budget of 100 restarts: the kill benchmark replaces 20 instances.
	body := fmt.Sprintf("name: web\nimage: %s\nport: 8080\nreplicas: %d\nresources: {memory: 32Mi}\nstop: {grace: 2s, drain: 0s}\n"+
		"restart: {max_attempts: 100, backoff_initial: 10ms, backoff_max: 1s}\n", image, replicas)
	req, _ := httpRequest("PUT", d.p.api+"/v1/apps/web", body)
	resp, err := httpClient.Do(req)
	if err != nil || resp.StatusCode != 200 {
		b.Fatalf("apply: %v %v", err, resp)
	}
	resp.Body.Close()
}

func (d *dataplane) running() map[string]*msg.Instance {
	out := map[string]*msg.Instance{}
	keys, _ := d.kv.Keys(context.Background())
	for _, k := range keys {
		e, err := d.kv.Get(context.Background(), k)
		if err != nil {
			continue
		}
		if m, err := msg.DecodeAs[*msg.Instance](e.Value); err == nil && m.State == msg.StateRunning {
			out[m.ID] = m
		}
	}
	return out
}

// BenchmarkStartThroughput times the scheduler starting 20 instances
// against docker run of the same image 20 times, 4 at a time like the
// scheduler's --max-parallel, in the same run.
func BenchmarkStartThroughput(b *testing.B) {
	image := testrig.DemoImage(b, "v1")
	const n = 20
	// The floor.
	var ids []string
	var mu sync.Mutex
	floorStart := time.Now()
	var wg sync.WaitGroup
	sem := make(chan struct{}, 4)
	for i := 0; i < n; i++ {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			out, err := exec.Command("docker", "run", "-d", "--label", "berth.bench=floor", "-p", "127.0.0.1::8080", "-m", "32m", image).Output()
			if err != nil {
				b.Error(err)
				return
			}
			mu.Lock()
			ids = append(ids, strings.TrimSpace(string(out)))
			mu.Unlock()
		}()
	}
	wg.Wait()
	floor := time.Since(floorStart)
	_ = exec.Command("docker", append([]string{"rm", "-f"}, ids...)...).Run()

	d := startDataplane(b, fmt.Sprintf("bs%d", time.Now().UnixNano()%1e6))
	start := time.Now()
	d.apply(b, image, n)
	for len(d.running()) < n {
		if time.Since(start) > 2*time.Minute {
			b.Fatalf("only %d of %d running", len(d.running()), n)
		}
		time.Sleep(20 * time.Millisecond)
	}
	took := time.Since(start)
	b.ReportMetric(float64(n)/took.Seconds(), "starts/s")
	b.ReportMetric(float64(n)/floor.Seconds(), "floor-starts/s")
	fmt.Printf("start throughput: scheduler %d instances in %s (%.1f/s, pull check + create + start + inspect + records + publish) vs docker run x%d in %s (%.1f/s): ratio %.2fx the floor's rate\n",
		n, took.Round(time.Millisecond), float64(n)/took.Seconds(), n, floor.Round(time.Millisecond), float64(n)/floor.Seconds(), floor.Seconds()/took.Seconds())
}

// BenchmarkKillToRemoval times docker kill of an instance to its leaving
// berth_instances, over 20 kills.
func BenchmarkKillToRemoval(b *testing.B) {
	image := testrig.DemoImage(b, "v1")
	d := startDataplane(b, fmt.Sprintf("bk%d", time.Now().UnixNano()%1e6))
	d.apply(b, image, 3)
	var times []time.Duration
	for run := 0; run < 20; run++ {
		var victim *msg.Instance
		deadline := time.Now().Add(time.Minute)
		for victim == nil {
			if time.Now().After(deadline) {
				b.Fatal("instances never came up")
			}
			insts := d.running()
			if len(insts) == 3 {
				for _, m := range insts {
					victim = m
					break
				}
			} else {
				time.Sleep(20 * time.Millisecond)
			}
		}
		killed := time.Now()
		if out, err := exec.Command("docker", "kill", victim.ContainerID).CombinedOutput(); err != nil {
			b.Fatalf("kill: %v: %s", err, out)
		}
		for {
			if _, ok := d.running()[victim.ID]; !ok {
				break
			}
			if time.Since(killed) > 10*time.Second {
				b.Fatal("the killed instance never left berth_instances")
			}
			time.Sleep(2 * time.Millisecond)
		}
		times = append(times, time.Since(killed))
	}
	sort.Slice(times, func(i, j int) bool { return times[i] < times[j] })
	p50, worst := times[len(times)/2], times[len(times)-1]
	b.ReportMetric(float64(p50.Milliseconds()), "p50-ms")
	b.ReportMetric(float64(worst.Milliseconds()), "max-ms")
	fmt.Printf("docker kill -> out of berth_instances over %d kills: p50 %s, max %s (target < 1 s)\n", len(times), p50.Round(time.Millisecond), worst.Round(time.Millisecond))
}
