package scheduler

import (
	"bufio"
	"fmt"
	"io"
	"net/http"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/berthhq/berth/internal/testrig"
)

// logLines is what the benchmark's container writes at start.
const logLines = 100_000

// BenchmarkLogStream reads an app's log of 100,000 lines (100 bytes
// each) through GET /v1/apps/{name}/logs, the scheduler reading it from
// Docker, demultiplexing, merging, prefixing and stripping timestamps,
// against its floor in the same run: docker logs of the same container
// into /dev/null. Each is the best of 3 reads.
func BenchmarkLogStream(b *testing.B) {
	image := testrig.DemoImage(b, "logs") // its own tag: the log modes are newer than some v1 builds
	d := startDataplane(b, fmt.Sprintf("bl%d", time.Now().UnixNano()%1e6))
	body := fmt.Sprintf("name: web\nimage: %s\nport: 8080\nreplicas: 1\nresources: {memory: 32Mi}\nenv: {DEMO_LOG_LINES: %q}\n"+
		"logging: {max_size: 50m, max_files: 2}\n", image, fmt.Sprint(logLines))
	req, _ := httpRequest("PUT", d.p.api+"/v1/apps/web", body)
	resp, err := httpClient.Do(req)
	if err != nil || resp.StatusCode != 200 {
		b.Fatalf("apply: %v %v", err, resp)
	}
	resp.Body.Close()

	// Wait for the container and its last line.
	var id string
	for start := time.Now(); ; time.Sleep(50 * time.Millisecond) { // the poll interval
		if time.Since(start) > 2*time.Minute {
			b.Fatalf("the app's container did not log its %d lines", logLines)
		}
		ids := testrig.BerthContainers(b, d.prefix, "berth.app=web")
		if len(ids) != 1 {
			continue
		}
		id = ids[0]
		out, _ := exec.Command("docker", "logs", "--tail", "1", id).Output()
		if strings.HasPrefix(string(out), fmt.Sprintf("line %d of %d ", logLines, logLines)) {
			break
		}
	}

	floor := bestOf(3, func() (int, int64, time.Duration) {
		start := time.Now()
		cmd := exec.Command("docker", "logs", id) // stdout and stderr: /dev/null
		if err := cmd.Run(); err != nil {
			b.Fatal(err)
		}
		return logLines + 1, 0, time.Since(start)
	})
	var lines int
	var bytes int64
	ours := bestOf(3, func() (int, int64, time.Duration) {
		start := time.Now()
		resp, err := http.Get(d.p.api + "/v1/apps/web/logs")
		if err != nil || resp.StatusCode != 200 {
			b.Fatalf("GET logs: %v %v", err, resp)
		}
		defer resp.Body.Close()
		cr := &countReader{r: resp.Body}
		sc := bufio.NewScanner(cr)
		n := 0
		for sc.Scan() {
			n++
		}
		if sc.Err() != nil {
			b.Fatal(sc.Err())
		}
		took := time.Since(start)
		lines, bytes = n, cr.n
		return n, cr.n, took
	})
	if lines != logLines+1 { // the lines and the demo app's start line
		b.Fatalf("read %d lines, want %d", lines, logLines+1)
	}
	mb := float64(bytes) / 1e6
	b.ReportMetric(float64(lines)/ours.Seconds(), "lines/s")
	b.ReportMetric(mb/ours.Seconds(), "MB/s")
	b.ReportMetric(float64(lines)/floor.Seconds(), "floor-lines/s")
	fmt.Printf("log stream: GET /v1/apps/web/logs %d lines (%.1f MB) in %s: %.0f lines/s, %.1f MB/s; "+
		"floor docker logs >/dev/null in %s: %.0f lines/s; ratio %.2fx the floor's time\n",
		lines, mb, ours.Round(time.Millisecond), float64(lines)/ours.Seconds(), mb/ours.Seconds(),
		floor.Round(time.Millisecond), float64(lines)/floor.Seconds(), ours.Seconds()/floor.Seconds())
}

// bestOf runs f n times and returns its shortest time.
func bestOf(n int, f func() (int, int64, time.Duration)) time.Duration {
	var best time.Duration
	for range n {
		if _, _, d := f(); best == 0 || d < best {
			best = d
		}
	}
	return best
}

type countReader struct {
	r io.Reader
	n int64
}

func (c *countReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += int64(n)
	return n, err
}
