package store

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/berthhq/berth/common/msg"
	"github.com/berthhq/berth/internal/testrig"
)

// The event-query benchmark loads N synthetic events into a fresh database
// and times the queries that run often: the leader's Restarts and
// FailedRollouts (every reconcile cycle), LatestEvents (every
// `scheduler status APP`) and LastEvents (`scheduler events --last 100`).
//
//	go test -run '^$' -bench EventQueries ./scheduler/internal/store
//	BERTH_BENCH_EVENTS=10000,100000,1000000 go test -run '^$' -bench EventQueries -timeout 30m ./scheduler/internal/store
//
// BERTH_BENCH_EVENTS lists the sizes (default 10000; -short keeps only
// those up to 10,000, so no plain or short run loads a million rows).
// The events are spread over the 30 days before now, so a table 100 times
// larger holds 100 times the events of the last 24 hours too; with
// BERTH_BENCH_EVENTS_PER_DAY=R they come at R a day instead, so that a
// larger table is a longer history and the last day holds R events at
// every size (what a cluster without event retention grows into).
// BERTH_BENCH_EXPLAIN=1 logs EXPLAIN (ANALYZE, BUFFERS) of every query at
// each size, planned for its arguments and generic (run with -v to see
// it).
//
// Each query reports its time, the rows it returned and x-floor: its time
// over the Floor's, timed on the same database just before: the
// primary-key lookup of one event through the same row decoding (Events
// after id-1, limit 1).

// benchApps is how many apps the events are spread over.
const benchApps = 100

// benchQuietApp never fails: its status reads find no failure event in
// its whole history. Most apps, most of the time, are such apps.
const benchQuietApp = "app-000"

// benchStatusKinds are the kinds `scheduler status` reads (the API's
// failureKinds).
var benchStatusKinds = []msg.EventKind{msg.EventInstanceExited, msg.EventInstanceFailed, msg.EventImagePullFailed, msg.EventInstanceCreateFailed,
	msg.EventInstanceStartFailed, msg.EventInstanceAddressRefused, msg.EventRolloutRolledBack, msg.EventRolloutFailed, msg.EventAppFailed}

func benchSizes(b *testing.B) []int {
	spec := os.Getenv("BERTH_BENCH_EVENTS")
	if spec == "" {
		spec = "10000"
	}
	var sizes []int
	for _, f := range strings.Split(spec, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || n < benchApps {
			b.Fatalf("BERTH_BENCH_EVENTS: %q is no size: a comma-separated list of event counts, each at least %d", f, benchApps)
		}
		if testing.Short() && n > 10_000 {
			b.Logf("-short: skipping %d events", n)
			continue
		}
		sizes = append(sizes, n)
	}
	return sizes
}

// benchSpan is how far back the n events go: 30 days, or n at
// BERTH_BENCH_EVENTS_PER_DAY a day.
func benchSpan(b *testing.B, n int) time.Duration {
	spec := os.Getenv("BERTH_BENCH_EVENTS_PER_DAY")
	if spec == "" {
		return 30 * 24 * time.Hour
	}
	r, err := strconv.Atoi(spec)
	if err != nil || r < 1 {
		b.Fatalf("BERTH_BENCH_EVENTS_PER_DAY: %q is no rate: events a day, at least 1", spec)
	}
	return time.Duration(float64(24*time.Hour) * float64(n) / float64(r))
}

func BenchmarkEventQueries(b *testing.B) {
	for _, n := range benchSizes(b) {
		b.Run(fmt.Sprintf("events=%d", n), func(b *testing.B) {
			ctx := context.Background()
			s := openBench(b)
			now := time.Now().UTC()
			start := time.Now()
			loadEvents(b, s, n, now, benchSpan(b, n))
			b.Logf("loaded %d events in %v", n, time.Since(start).Round(time.Millisecond))
			var sizes string
			if err := s.pool.QueryRow(ctx, `SELECT 'table ' || pg_size_pretty(pg_table_size('events')) || ', ' ||
				string_agg(indexrelid::regclass || ' ' || pg_size_pretty(pg_relation_size(indexrelid)), ', ' ORDER BY indexrelid::regclass::text)
				FROM pg_index WHERE indrelid = 'events'::regclass`).Scan(&sizes); err != nil {
				b.Fatal(err)
			}
			b.Logf("sizes at %d events: %s", n, sizes)
			var lastID int64
			if err := s.pool.QueryRow(ctx, `SELECT max(id) FROM events`).Scan(&lastID); err != nil {
				b.Fatal(err)
			}
			since := now.Add(-24 * time.Hour)
			busy := "app-042"
			queries := []struct {
				name string
				run  func() (int, error)
				sql  string
				args []any
			}{
				{"Restarts", func() (int, error) {
					r, err := s.Restarts(ctx, since)
					c := 0
					for _, v := range r {
						c += len(v)
					}
					return c, err
				}, restartsSQL, []any{since, restartKinds}},
				{"FailedRollouts", func() (int, error) {
					r, err := s.FailedRollouts(ctx, since)
					return len(r), err
				}, failedRolloutsSQL, []any{since, string(msg.EventRolloutFailed)}},
				{"LatestEvents", func() (int, error) {
					r, err := s.LatestEvents(ctx, busy, benchStatusKinds, 100)
					return len(r), err
				}, latestEventsSQL, []any{busy, kindNames(benchStatusKinds), 100}},
				{"LatestEventsQuietApp", func() (int, error) {
					r, err := s.LatestEvents(ctx, benchQuietApp, benchStatusKinds, 100)
					return len(r), err
				}, latestEventsSQL, []any{benchQuietApp, kindNames(benchStatusKinds), 100}},
				{"LastEvents", func() (int, error) {
					r, err := s.LastEvents(ctx, busy, 100)
					return len(r), err
				}, lastEventsSQL, []any{busy, 100}},
				{"LastEventsAllApps", func() (int, error) {
					r, err := s.LastEvents(ctx, "", 100)
					return len(r), err
				}, lastEventsAllSQL, []any{100}},
			}
			if os.Getenv("BERTH_BENCH_EXPLAIN") != "" {
				for _, q := range queries {
					b.Logf("EXPLAIN %s at %d events (custom plan):\n%s", q.name, n, explain(b, s, "auto", q.sql, q.args...))
					b.Logf("EXPLAIN %s at %d events (generic plan):\n%s", q.name, n, explain(b, s, "force_generic_plan", q.sql, q.args...))
				}
			}
			floor := func() error {
				evs, err := s.Events(ctx, "", lastID/2-1, 1)
				if err == nil && len(evs) != 1 {
					err = fmt.Errorf("floor read %d events, want 1", len(evs))
				}
				return err
			}
			var floorNs float64
			b.Run("Floor", func(b *testing.B) {
				for b.Loop() {
					if err := floor(); err != nil {
						b.Fatal(err)
					}
				}
				floorNs = float64(b.Elapsed().Nanoseconds()) / float64(b.N)
			})
			for _, q := range queries {
				b.Run(q.name, func(b *testing.B) {
					rows := 0
					for b.Loop() {
						var err error
						if rows, err = q.run(); err != nil {
							b.Fatal(err)
						}
					}
					perOp := float64(b.Elapsed().Nanoseconds()) / float64(b.N)
					b.ReportMetric(float64(rows), "rows")
					b.ReportMetric(perOp/floorNs, "x-floor")
				})
			}
		})
	}
}

// openBench is open for a benchmark.
func openBench(b *testing.B) *Store {
	b.Helper()
	s, err := Open(context.Background(), testrig.Postgres(b))
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(s.Close)
	if _, err := s.Migrate(context.Background()); err != nil {
		b.Fatal(err)
	}
	return s
}

func kindNames(kinds []msg.EventKind) []string {
	out := make([]string, len(kinds))
	for i, k := range kinds {
		out[i] = string(k)
	}
	return out
}

// loadEvents writes n events over the span before now, oldest first
// (ids follow time, as they do in a real table), with COPY, then runs
// VACUUM ANALYZE as autovacuum would have by then. Apps take turns; one
// in 20 events is a failure kind (none of benchQuietApp's), the rest are
// the everyday kinds.
func loadEvents(b *testing.B, s *Store, n int, now time.Time, span time.Duration) {
	b.Helper()
	ctx := context.Background()
	var failures, everyday []msg.EventKind
	for _, k := range msg.EventKinds() {
		if slices.Contains(benchStatusKinds, k) || slices.Contains(restartKinds, string(k)) {
			failures = append(failures, k)
		} else {
			everyday = append(everyday, k)
		}
	}
	rng := rand.New(rand.NewPCG(1, uint64(n)))
	first := now.Add(-span)
	step := span / time.Duration(n)
	rows := pgx.CopyFromFunc(func() func() ([]any, error) {
		i := 0
		return func() ([]any, error) {
			if i == n {
				return nil, nil
			}
			app := fmt.Sprintf("app-%03d", rng.IntN(benchApps))
			kind := everyday[rng.IntN(len(everyday))]
			if app != benchQuietApp && rng.IntN(20) == 0 {
				kind = failures[rng.IntN(len(failures))]
			}
			gen := 1 + i/(n/benchApps+1)
			details := map[string]string{"generation": strconv.Itoa(gen), "spec_hash": fmt.Sprintf("%016x", gen), "reason": "synthetic"}
			var tail []string
			if kind == msg.EventInstanceExited {
				details["exit_code"] = "3"
				tail = []string{"starting", "listening on :8080", "fatal: synthetic"}
			}
			at := first.Add(time.Duration(i)*step + time.Duration(rng.Int64N(int64(step)+1)))
			i++
			return []any{app, fmt.Sprintf("%s-%d", app, gen), string(kind), "synthetic " + string(kind), details, int64(1), ActorScheduler, at, tail}, nil
		}
	}())
	got, err := s.pool.CopyFrom(ctx, pgx.Identifier{"events"},
		[]string{"app", "instance", "kind", "message", "details", "term", "actor", "at", "log_tail"}, rows)
	if err != nil {
		b.Fatalf("copy events: %v", err)
	}
	if got != int64(n) {
		b.Fatalf("copied %d events, want %d", got, n)
	}
	if _, err := s.pool.Exec(ctx, `VACUUM ANALYZE events`); err != nil {
		b.Fatal(err)
	}
}

// explain returns EXPLAIN (ANALYZE, BUFFERS) of query with args, planned
// under plan_cache_mode mode: "auto" plans for the arguments, as the first
// five runs of a prepared statement are; "force_generic_plan" plans as
// pgx's cached prepared statement may be planned from its sixth run on
// (Postgres 15 has no EXPLAIN (GENERIC_PLAN): the query is PREPAREd and
// EXECUTEd with its arguments as literals).
func explain(b *testing.B, s *Store, mode, query string, args ...any) string {
	b.Helper()
	ctx := context.Background()
	conn, err := s.pool.Acquire(ctx)
	if err != nil {
		b.Fatal(err)
	}
	defer conn.Release()
	if _, err := conn.Exec(ctx, `SELECT set_config('plan_cache_mode', $1, false)`, mode); err != nil {
		b.Fatal(err)
	}
	defer func() { _, _ = conn.Exec(ctx, `RESET plan_cache_mode`) }()
	if _, err := conn.Exec(ctx, "PREPARE bench_explain AS "+query, pgx.QueryExecModeSimpleProtocol); err != nil {
		b.Fatalf("prepare: %v", err)
	}
	defer func() { _, _ = conn.Exec(ctx, `DEALLOCATE bench_explain`, pgx.QueryExecModeSimpleProtocol) }()
	lits := make([]string, len(args))
	for i, a := range args {
		switch a := a.(type) {
		case time.Time:
			lits[i] = "'" + a.Format(time.RFC3339Nano) + "'"
		case string:
			lits[i] = "'" + strings.ReplaceAll(a, "'", "''") + "'"
		case []string:
			lits[i] = "'{" + strings.Join(a, ",") + "}'"
		case int:
			lits[i] = strconv.Itoa(a)
		default:
			b.Fatalf("explain: no literal for %T", a)
		}
	}
	rows, err := conn.Query(ctx, "EXPLAIN (ANALYZE, BUFFERS) EXECUTE bench_explain("+strings.Join(lits, ", ")+")", pgx.QueryExecModeSimpleProtocol)
	if err != nil {
		b.Fatalf("explain: %v", err)
	}
	lines, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		b.Fatalf("explain: %v", err)
	}
	return strings.Join(lines, "\n")
}
