package scheduler

import (
	"bufio"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/berthhq/berth/internal/testrig"
)

// BenchmarkLeaderStart times a new leader's start (issue 30) at 1,000 and
// 10,000 apps x 3 instances (loaded as BenchmarkControlPlaneReads loads
// them): a real `scheduler run` starts as a follower behind a lease no
// process holds; the bench expires that lease and reads, from the
// replica's own log, the time from "became leader" to "published every
// app and instance" (the publisher's first full pass: every app and
// instance put into NATS KV, the stray keys swept). Each round is a new
// process on the same NATS, whose buckets already hold every key (as
// after a failover). The replica's Docker is a socket nothing listens
// on: its controller's passes fail at their first read of Docker and act
// on nothing (with a real engine and no containers it would start 30,000
// replacements). It prints the median of 3 rounds at each size, the
// wait from the lease's expiry to "became leader" (the follower's
// acquire poll, a third of --lease-ttl), and the growth from the
// smallest size to the largest (linear: the ratio of the sizes).
func BenchmarkLeaderStart(b *testing.B) {
	sizes := []int{1000, 10000}
	db, natsURL := testrig.Postgres(b), testrig.NATS(b)
	bin := build(b)
	if out, err := exec.Command(bin, "migrate", "--database-url", db).CombinedOutput(); err != nil {
		b.Fatalf("migrate: %v: %s", err, out)
	}
	testrig.PSQL(b, db, `INSERT INTO leases (name, holder, term, expires_at) VALUES ('berth-scheduler', 'bench-nobody', 1, now() + interval '1 day')`)
	noDocker := "unix://" + filepath.Join(b.TempDir(), "no-docker.sock")
	results := map[int]time.Duration{}
	loaded := 0
	for _, n := range sizes {
		loadApps(b, db, loaded, n)
		loaded = n
		var starts, acquires []time.Duration
		for round := range 3 {
			d, acquire := leaderStart(b, bin, db, natsURL, noDocker, fmt.Sprintf("bench-start-%d-%d", n, round), n)
			starts, acquires = append(starts, d), append(acquires, acquire)
		}
		results[n] = median(starts)
		load, _ := os.ReadFile("/proc/loadavg")
		fmt.Printf("leader start, %d apps x 3 instances (median of %d; load %s):\n", n, len(starts), strings.Join(strings.Fields(string(load))[:3], " "))
		fmt.Printf("  became leader -> first full publish  %10s  (rounds %v)\n", results[n].Round(time.Millisecond), roundAll(starts))
		fmt.Printf("  lease expired -> became leader       %10s\n", median(acquires).Round(time.Millisecond))
	}
	lo, hi := sizes[0], sizes[len(sizes)-1]
	fmt.Printf("growth from %d to %d apps (linear: %.0f): %.1f\n", lo, hi, float64(hi)/float64(lo), ratio(results[hi], results[lo]))
}

// leaderStart starts a replica as a follower, expires the lease and
// returns the time from its "became leader" to its first full publish,
// and from the expiry to "became leader"; then stops it (it resigns) and
// gives the lease back to no process.
func leaderStart(b *testing.B, bin, db, natsURL, dockerHost, id string, n int) (time.Duration, time.Duration) {
	b.Helper()
	api := fmt.Sprintf("127.0.0.1:%d", testrig.FreePort(b))
	cmd := exec.Command(bin, "run", "--database-url", db, "--nats-url", natsURL, "--api-listen", api, "--id", id,
		"--lease-ttl", leaseTTL.String(), "--log-level", "info")
	cmd.Env = append(os.Environ(), "DOCKER_HOST="+dockerHost)
	stderr, err := cmd.StderrPipe()
	if err != nil {
		b.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	defer func() { _ = cmd.Process.Kill(); _ = cmd.Wait() }()
	testrig.WaitHTTP(b, "http://"+api+"/healthz", 10*time.Second)
	type line struct {
		Msg  string    `json:"msg"`
		TS   time.Time `json:"ts"`
		Apps int       `json:"apps"`
	}
	lines := make(chan line, 1024)
	go func() {
		defer close(lines)
		sc := bufio.NewScanner(stderr)
		sc.Buffer(make([]byte, 1<<20), 1<<20)
		for sc.Scan() {
			var l line
			if json.Unmarshal(sc.Bytes(), &l) == nil && (l.Msg == "became leader" || l.Msg == "published every app and instance") {
				lines <- l
			}
		}
	}()
	expired := time.Now()
	testrig.PSQL(b, db, `UPDATE leases SET expires_at = now() - interval '1 second' WHERE name = 'berth-scheduler'`)
	var became, published time.Time
	timeout := time.After(5 * time.Minute)
	for published.IsZero() {
		select {
		case l, ok := <-lines:
			if !ok {
				b.Fatalf("replica %s exited before its first full publish", id)
			}
			switch {
			case l.Msg == "became leader":
				became = l.TS
			case !became.IsZero() && l.Apps == n:
				published = l.TS
			}
		case <-timeout:
			b.Fatalf("replica %s did not publish every app within 5 minutes", id)
		}
	}
	_ = cmd.Process.Signal(syscall.SIGTERM)
	_ = cmd.Wait()
	testrig.PSQL(b, db, `UPDATE leases SET holder = 'bench-nobody', term = term + 1, expires_at = now() + interval '1 day' WHERE name = 'berth-scheduler'`)
	return published.Sub(became), became.Sub(expired)
}

func roundAll(ds []time.Duration) []time.Duration {
	out := make([]time.Duration, len(ds))
	for i, d := range ds {
		out[i] = d.Round(time.Millisecond)
	}
	return out
}
