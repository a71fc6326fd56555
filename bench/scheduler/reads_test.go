package scheduler

import (
	"bytes"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/berthhq/berth/internal/testrig"
)

// BenchmarkControlPlaneReads times the scheduler's reads of every app
// (issue 30) on a real `scheduler run` (a follower: a lease held by no
// process keeps it from acting) at BERTH_BENCH_READ_APPS apps (default
// 1000,10000), each with 3 instances and 20 events, loaded into the test
// rig's Postgres with generate_series:
//
//   - GET /v1/apps, and its floor: the bare SELECT of the apps' rows;
//   - GET /v1/apps?summary=true, and its floor: the bare SELECTs of the
//     apps' and the instances' rows;
//   - scheduler status (the CLI process: GET with summary, decode, table);
//   - for reference, GET /v1/apps/{name} of each app one at a time, as a
//     client summarised apps before (timed over 200 apps, counted for all).
//
// The floors are timed by psql's \timing in one session (the query and
// the transfer of its rows, no connection). Each figure is the median of
// its runs; it prints each with its ratio to its floor, and at the end
// each one's time at the largest size over its time at the smallest
// (linear: the ratio of the sizes). BERTH_BENCH_EXPLAIN=1 prints the
// plans of the summary's event queries at each size.
func BenchmarkControlPlaneReads(b *testing.B) {
	sizes := []int{1000, 10000}
	if v := os.Getenv("BERTH_BENCH_READ_APPS"); v != "" {
		sizes = nil
		for _, f := range strings.Split(v, ",") {
			n, err := strconv.Atoi(strings.TrimSpace(f))
			if err != nil || n < 1 || n > 100000 {
				b.Fatalf("BERTH_BENCH_READ_APPS: %q must be whole numbers from 1 to 100000, comma-separated", v)
			}
			sizes = append(sizes, n)
		}
		slices.Sort(sizes)
	}
	db, natsURL := testrig.Postgres(b), testrig.NATS(b)
	bin := build(b)
	if out, err := exec.Command(bin, "migrate", "--database-url", db).CombinedOutput(); err != nil {
		b.Fatalf("migrate: %v: %s", err, out)
	}
	// A lease no process holds, for a day: the replica stays a follower
	// and acts on none of the apps (there is no container behind them).
	testrig.PSQL(b, db, `INSERT INTO leases (name, holder, term, expires_at) VALUES ('berth-scheduler', 'bench-nobody', 1, now() + interval '1 day')`)
	p := start(b, bin, db, natsURL, "bench-reads")
	if r := role(p); r != "follower" {
		b.Fatalf("the benchmark's replica is %s, not a follower", r)
	}

	type figure struct{ list, summary, status, floorList, floorSummary time.Duration }
	results := map[int]figure{}
	loaded := 0
	for _, n := range sizes {
		loadApps(b, db, loaded, n)
		loaded = n
		runs := max(5, min(11, 20000/n))
		// Round by round, so that a loaded machine weighs on every figure
		// alike; each call once first, to warm.
		var floorList, floorSummary, list, summary, status, cpuList, cpuSummary []time.Duration
		status1 := func() {
			var out bytes.Buffer
			cmd := exec.Command(bin, "status", "--server", p.api)
			cmd.Stdout, cmd.Stderr = &out, os.Stderr
			if err := cmd.Run(); err != nil {
				b.Fatalf("scheduler status: %v", err)
			}
			if lines := strings.Count(out.String(), "\n"); lines != n+1 {
				b.Fatalf("scheduler status printed %d lines for %d apps", lines, n)
			}
		}
		get(b, p.api+"/v1/apps", n)
		get(b, p.api+"/v1/apps?summary=true", n)
		status1()
		for range runs {
			ds := psqlTimes(b, db, 1, listSQL, instancesSQL)
			floorList, floorSummary = append(floorList, ds[0]), append(floorSummary, ds[0]+ds[1])
			d, c := timed(b, p, func() { get(b, p.api+"/v1/apps", n) })
			list, cpuList = append(list, d), append(cpuList, c)
			d, c = timed(b, p, func() { get(b, p.api+"/v1/apps?summary=true", n) })
			summary, cpuSummary = append(summary, d), append(cpuSummary, c)
			d, _ = timed(b, p, status1)
			status = append(status, d)
		}
		// The way before the summary, for reference: GET of each app, one
		// at a time (the console's Brief made 3 of its 6 queries), timed
		// over perApp apps and counted for all n.
		perApp := min(n, 200)
		start := time.Now()
		for i := range perApp {
			getOne(b, fmt.Sprintf("%s/v1/apps/app%06d", p.api, 1+i*(n/perApp)))
		}
		eachApp := time.Since(start) / time.Duration(perApp) * time.Duration(n)
		f := figure{list: median(list), summary: median(summary), status: median(status), floorList: median(floorList), floorSummary: median(floorSummary)}
		load, _ := os.ReadFile("/proc/loadavg")
		fmt.Printf("control-plane reads, %d apps x 3 instances, %d events (median of %d; load %s):\n", n, 20*n, runs, strings.Join(strings.Fields(string(load))[:3], " "))
		fmt.Printf("  floor: SELECT the apps' rows %s; and the instances' rows %s\n", f.floorList.Round(10*time.Microsecond), f.floorSummary.Round(10*time.Microsecond))
		fmt.Printf("  GET /v1/apps               %10s  %5.1fx its floor  (scheduler CPU %s a call)\n", f.list.Round(10*time.Microsecond), ratio(f.list, f.floorList), mean(cpuList))
		fmt.Printf("  GET /v1/apps?summary=true  %10s  %5.1fx its floor  (scheduler CPU %s a call)\n", f.summary.Round(10*time.Microsecond), ratio(f.summary, f.floorSummary), mean(cpuSummary))
		fmt.Printf("  scheduler status           %10s  %5.1fx the summary's floor\n", f.status.Round(10*time.Microsecond), ratio(f.status, f.floorSummary))
		fmt.Printf("  GET /v1/apps/{name} of each app, one at a time: %s (%d timed)  %5.1fx the summary\n", eachApp.Round(time.Millisecond), perApp, ratio(eachApp, f.summary))
		results[n] = f
		if os.Getenv("BERTH_BENCH_EXPLAIN") != "" {
			explain(b, db, n) // warm, after the rounds
		}
	}
	if len(sizes) > 1 {
		lo, hi := sizes[0], sizes[len(sizes)-1]
		a, z := results[lo], results[hi]
		fmt.Printf("growth from %d to %d apps (linear: %.1f): floor %.1f / %.1f, GET /v1/apps %.1f, summary %.1f, scheduler status %.1f\n",
			lo, hi, float64(hi)/float64(lo), ratio(z.floorList, a.floorList), ratio(z.floorSummary, a.floorSummary),
			ratio(z.list, a.list), ratio(z.summary, a.summary), ratio(z.status, a.status))
	}
}

// listSQL and instancesSQL are the bare reads of the rows GET /v1/apps
// and its summary decode: the apps' (store.List) and every instance's
// (store.Instances).
const (
	listSQL = `SELECT name, spec, generation, desired_replicas, status, created_at, updated_at, host_claims, updated_by, restarted_generation, image_ref, previous_image_ref, image_ref_generation
		FROM apps WHERE deleted_at IS NULL ORDER BY name`
	instancesSQL = `SELECT id, app, generation, container_id, address, state, health, restarts, term, spec_hash, host, started_at, created_at, updated_at
		FROM instances ORDER BY created_at, id`
)

// loadApps adds apps from+1 to n: a spec like a real one, 3 instances of
// generation 2 (one in 10 apps with one unhealthy, one in 50 still with
// an instance of generation 1), and 20 events in time order, some of
// the kinds the rollout reads; then VACUUM ANALYZE.
func loadApps(b *testing.B, db string, from, n int) {
	b.Helper()
	start := time.Now()
	testrig.PSQL(b, db, fmt.Sprintf(`
		INSERT INTO apps (name, spec, generation, desired_replicas, updated_by, image_ref, image_ref_generation)
		SELECT 'app' || lpad(i::text, 6, '0'),
			jsonb_build_object('name', 'app' || lpad(i::text, 6, '0'), 'image', 'registry.local/team/app' || i || ':1.4.2', 'port', 8080, 'replicas', 3,
				'env', jsonb_build_object('LOG_LEVEL', 'info', 'REGION', 'eu-west-1'),
				'health', jsonb_build_object('type', 'http', 'path', '/healthz', 'interval', '5s', 'timeout', '2s'),
				'resources', jsonb_build_object('cpu', 0.5, 'memory', '256Mi'),
				'routing', jsonb_build_object('hosts', jsonb_build_array('app' || i || '.example.com'), 'paths', jsonb_build_array('/'))),
			2, 3, 'ci', 'registry.local/team/app' || i || '@sha256:' || md5(i::text) || md5(i::text), 2
		FROM generate_series(%[1]d + 1, %[2]d) i;
		INSERT INTO instances (id, app, generation, container_id, address, state, health, term, spec_hash, host, started_at, created_at)
		SELECT 'app' || lpad(i::text, 6, '0') || '-' || j,
			'app' || lpad(i::text, 6, '0'),
			CASE WHEN i %% 50 = 0 AND j = 3 THEN 1 ELSE 2 END,
			md5(i::text || j), '10.0.' || (i %% 250) || '.' || j || ':' || (30000 + i %% 30000), 'running',
			CASE WHEN i %% 10 = 0 AND j = 2 THEN 'unhealthy' ELSE 'healthy' END,
			1, CASE WHEN i %% 50 = 0 AND j = 3 THEN 'old' ELSE 'current' END, '', now() - interval '1 hour', now() - interval '1 hour'
		FROM generate_series(%[1]d + 1, %[2]d) i, generate_series(1, 3) j;
		INSERT INTO events (app, instance, kind, message, details, term, actor, at)
		SELECT 'app' || lpad(i::text, 6, '0'), '',
			(ARRAY['app_updated', 'instance_started', 'instance_healthy', 'rollout_started', 'rollout_completed',
				'instance_stopped', 'release_started', 'release_succeeded', 'instance_exited', 'rollout_rolled_back'])[1 + k %% 10],
			'event ' || k || ' of app' || i, jsonb_build_object('generation', (1 + k / 10)::text), 1, 'scheduler',
			now() - interval '1 day' + (k * interval '1 minute') + (i * interval '1 millisecond')
		FROM generate_series(%[1]d + 1, %[2]d) i, generate_series(0, 19) k;`, from, n))
	for _, t := range []string{"apps", "instances", "events"} {
		testrig.PSQL(b, db, "VACUUM ANALYZE "+t)
	}
	fmt.Printf("loaded apps %d to %d in %s\n", from+1, n, time.Since(start).Round(time.Millisecond))
}

// explain prints the plans of the summary's two event queries, as their
// store methods send them for every app (store/summary.go).
func explain(b *testing.B, db string, n int) {
	b.Helper()
	kinds := `'{rollout_rolled_back,rollout_failed,app_failed,release_started,release_succeeded,release_failed}'`
	for _, q := range []string{
		`SELECT e.id, e.app, e.kind, e.message, e.at
		FROM apps a CROSS JOIN LATERAL (
			SELECT id, app, kind, message, at FROM events
			WHERE events.app = a.name ORDER BY at DESC, id DESC LIMIT 1) e
		WHERE a.deleted_at IS NULL AND ('' = '' OR a.name = '')`,
		`SELECT e.id, e.app, e.instance, e.kind, e.message, e.details, e.term, e.at, e.actor
		FROM apps a
		CROSS JOIN (SELECT DISTINCT unnest(` + kinds + `::text[]) AS kind) k
		CROSS JOIN LATERAL (
			SELECT id, app, instance, kind, message, details, term, at, actor FROM events
			WHERE events.app = a.name AND events.kind = k.kind ORDER BY at DESC LIMIT 4) e
		WHERE a.deleted_at IS NULL AND ('' = '' OR a.name = '') AND e.details->>'generation' = a.generation::text`,
	} {
		fmt.Printf("plan at %d apps:\n%s\n", n, testrig.PSQL(b, db, "EXPLAIN (ANALYZE, BUFFERS, COSTS OFF) "+q))
	}
}

var timing = regexp.MustCompile(`(?m)^Time: ([0-9.]+) ms`)

// psqlTimes runs each of queries runs times in one psql session, after
// one run to warm, and returns psql's \timing of each (in order), with
// the rows sent to /dev/null.
func psqlTimes(b *testing.B, db string, runs int, queries ...string) []time.Duration {
	b.Helper()
	var script strings.Builder
	for i := range runs + 1 {
		if i == 1 {
			script.WriteString("\\timing on\n")
		}
		for _, q := range queries {
			script.WriteString(q + ";\n")
		}
	}
	cmd := exec.Command(filepath.Join(testrig.PostgresBinDir(), "psql"), "-X", "-q", "-v", "ON_ERROR_STOP=1", "-o", os.DevNull, "-d", db)
	cmd.Stdin = strings.NewReader(script.String())
	out, err := cmd.Output()
	if err != nil {
		b.Fatalf("psql: %v", err)
	}
	var ds []time.Duration
	for _, m := range timing.FindAllStringSubmatch(string(out), -1) {
		ms, _ := strconv.ParseFloat(m[1], 64)
		ds = append(ds, time.Duration(ms*float64(time.Millisecond)))
	}
	if len(ds) != runs*len(queries) {
		b.Fatalf("psql timed %d queries of %d: %s", len(ds), runs*len(queries), out)
	}
	return ds
}

// timed runs fn and returns how long it took, and the CPU time (user and
// system) the scheduler process p spent meanwhile (to 10 ms: the kernel's
// clock ticks).
func timed(b *testing.B, p *proc, fn func()) (time.Duration, time.Duration) {
	cpu0 := cpuOf(b, p)
	start := time.Now()
	fn()
	return time.Since(start), cpuOf(b, p) - cpu0
}

// cpuOf reads the CPU time p has used from /proc (utime + stime, in the
// USER_HZ ticks of 10 ms).
func cpuOf(b *testing.B, p *proc) time.Duration {
	raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", p.cmd.Process.Pid))
	if err != nil {
		b.Fatal(err)
	}
	// Fields after the command name in parentheses, which may hold spaces.
	f := strings.Fields(string(raw[bytes.LastIndexByte(raw, ')')+2:]))
	utime, _ := strconv.ParseInt(f[11], 10, 64)
	stime, _ := strconv.ParseInt(f[12], 10, 64)
	return time.Duration(utime+stime) * 10 * time.Millisecond
}

func mean(ds []time.Duration) time.Duration {
	var sum time.Duration
	for _, d := range ds {
		sum += d
	}
	return (sum / time.Duration(len(ds))).Round(100 * time.Microsecond)
}

// get reads url's whole body and checks that it lists n apps.
func get(b *testing.B, url string, n int) {
	resp, err := http.Get(url)
	if err != nil {
		b.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != 200 {
		b.Fatalf("GET %s: %v %d: %.300s", url, err, resp.StatusCode, body)
	}
	if got := bytes.Count(body, []byte(`"desired_replicas"`)); got != n {
		b.Fatalf("GET %s listed %d apps, not %d", url, got, n)
	}
}

// getOne reads url's whole body.
func getOne(b *testing.B, url string) {
	resp, err := http.Get(url)
	if err != nil {
		b.Fatal(err)
	}
	defer resp.Body.Close()
	if _, err := io.Copy(io.Discard, resp.Body); err != nil || resp.StatusCode != 200 {
		b.Fatalf("GET %s: %v %d", url, err, resp.StatusCode)
	}
}

func median(ds []time.Duration) time.Duration {
	s := slices.Clone(ds)
	slices.Sort(s)
	return s[len(s)/2]
}

func ratio(a, b time.Duration) float64 { return float64(a) / float64(b) }
