package store

import (
	"context"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/berthhq/berth/common/spec"
)

// BenchmarkApplyHistoryPruning is the cost of an apply that prunes the
// app's history to --history-keep 50 against the floor of the same apply
// that prunes nothing (keep 0), each on an app with 200 generations
// beside 100 other apps of 60 generations each. The two applies alternate
// (two stores on one database), so that load from elsewhere on the
// machine weighs on both alike: x-floor is what pruning adds. Every apply
// is a new generation (the image alternates). Pruned rows leave index
// entries that each later DELETE skips until vacuum: vacuum-every=0 never
// vacuums (the worst case), vacuum-every=50 does after every 50 applies,
// as autovacuum would. BERTH_BENCH_EXPLAIN=1 prints the plan of the
// pruning DELETE.
func BenchmarkApplyHistoryPruning(b *testing.B) {
	ctx := context.Background()
	specs := func(app string) [2]*spec.App {
		var out [2]*spec.App
		for i := range out {
			a, err := spec.Load(fmt.Appendf(nil, "name: %s\nimage: %s:%d\nport: 8080\nreplicas: 3\nenv: {LOG_LEVEL: info}\nrouting: {hosts: [%s.example.com]}\n", app, app, i, app))
			if err != nil {
				b.Fatal(err)
			}
			out[i] = a
		}
		return out
	}
	apply := func(s *Store, a *spec.App) {
		if _, _, err := s.Apply(ctx, a, nil); err != nil {
			b.Fatal(err)
		}
	}
	pruning := openBench(b)
	plain, err := Open(ctx, pruning.url)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(plain.Close)
	for i := range 100 {
		sp := specs(fmt.Sprintf("other-%03d", i))
		for g := range 60 {
			apply(plain, sp[g%2])
		}
	}
	for _, vacuumEvery := range []int{0, 50} {
		b.Run(fmt.Sprintf("vacuum-every=%d", vacuumEvery), func(b *testing.B) {
			floorSpec, pruneSpec := specs(fmt.Sprintf("floor-%d", vacuumEvery)), specs(fmt.Sprintf("pruned-%d", vacuumEvery))
			for g := range 200 {
				apply(plain, floorSpec[g%2])
				apply(plain, pruneSpec[g%2])
			}
			pruning.SetHistoryKeep(50)
			apply(pruning, pruneSpec[0]) // the first prunes 150 generations
			var floor, pruned time.Duration
			i := 0
			for b.Loop() {
				t0 := time.Now()
				apply(plain, floorSpec[i%2])
				t1 := time.Now()
				apply(pruning, pruneSpec[(i+1)%2])
				pruned += time.Since(t1)
				floor += t1.Sub(t0)
				i++
				// As autovacuum would, in a database with more going on.
				if vacuumEvery > 0 && i%vacuumEvery == 0 {
					b.StopTimer()
					if _, err := pruning.pool.Exec(ctx, "VACUUM app_history"); err != nil {
						b.Fatal(err)
					}
					b.StartTimer()
				}
			}
			b.ReportMetric(float64(floor.Nanoseconds())/float64(b.N), "floor-ns/apply")
			b.ReportMetric(float64(pruned.Nanoseconds())/float64(b.N), "pruning-ns/apply")
			b.ReportMetric(float64(pruned)/float64(floor), "x-floor")
			b.ReportMetric(float64(len(generations(b, pruning, pruneSpec[0].Name))), "kept")
			if os.Getenv("BERTH_BENCH_EXPLAIN") != "" {
				fmt.Fprintf(os.Stderr, "EXPLAIN the pruning DELETE (rolled back):\n%s", explainPrune(b, pruning, pruneSpec[0].Name, 50))
			}
		})
	}
}

// explainPrune is EXPLAIN ANALYZE of pruneSQL alone, in a transaction
// that is rolled back.
func explainPrune(b *testing.B, s *Store, app string, keep int) string {
	ctx := context.Background()
	tx, err := s.pool.Begin(ctx)
	if err != nil {
		b.Fatal(err)
	}
	defer func() { _ = tx.Rollback(ctx) }()
	rows, err := tx.Query(ctx, "EXPLAIN (ANALYZE, BUFFERS) "+strings.ReplaceAll(pruneSQL, "$8", "$2"), app, keep)
	if err != nil {
		b.Fatal(err)
	}
	defer rows.Close()
	var out strings.Builder
	for rows.Next() {
		var line string
		if err := rows.Scan(&line); err != nil {
			b.Fatal(err)
		}
		out.WriteString(line + "\n")
	}
	return out.String()
}
