package publish

import (
	"context"
	"errors"
	"fmt"
	"os"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"go.uber.org/zap"

	"github.com/berthhq/berth/common/bus"
	"github.com/berthhq/berth/common/msg"
	"github.com/berthhq/berth/common/spec"
	"github.com/berthhq/berth/internal/testrig"
	"github.com/berthhq/berth/scheduler/internal/store"
)

// memStore is the publisher's store in memory: the apps and instances
// a pass reads, nothing else.
type memStore struct {
	Store // nil: a pass calls only List and Instances
	apps  []store.App
	insts []store.Instance
}

func (m *memStore) List(context.Context) ([]store.App, error) { return slices.Clone(m.apps), nil }

func (m *memStore) Instances(_ context.Context, app string) ([]store.Instance, error) {
	if app != "" {
		return nil, errors.New("memStore: one app's instances are not kept")
	}
	return slices.Clone(m.insts), nil
}

// BenchmarkRepublish times the publisher's passes (issue 30) at 1,000
// and 10,000 apps of 3 running instances, each size on an in-process
// NATS of its own, the store in memory:
//
//   - All: what a new leader and a NATS reconnect publish, every app and
//     instance put (after the first, which creates the buckets);
//   - Resync: the periodic pass over the same, unchanged state (puts only
//     the keys whose re-seal turn it is);
//   - the floor: the same bytes put by bus.KV.Put, one key after the
//     other as the pass does, with nothing read, listed or hashed.
//
// Rounds are interleaved (floor, All, Resync), so a busy machine weighs
// on each alike; each figure is the median of its rounds. It prints each
// pass with its ratio to the floor, the CPU time of the process (the
// publisher's and the NATS server's), and the growth from 1,000 to 10,000
// (linear: 10).
func BenchmarkRepublish(b *testing.B) {
	sizes := []int{1000, 10000}
	type figure struct{ all, resync, floor, cpuAll, cpuResync, cpuFloor time.Duration }
	results := map[int]figure{}
	for _, n := range sizes {
		conn, err := bus.Connect(context.Background(), bus.Options{URL: testrig.NATS(b), Name: "bench"}, zap.NewNop())
		if err != nil {
			b.Fatal(err)
		}
		names, _ := msg.NewNames("berth")
		st := fleetOf(b, n)
		p := New(st, conn, names, zap.NewNop())
		ctx := context.Background()
		if err := p.All(ctx, 1); err != nil { // creates the buckets
			b.Fatal(err)
		}
		type put struct {
			kv    *bus.KV
			key   string
			value []byte
		}
		var floor []put
		appsKV, err := conn.KV(ctx, names.AppsBucket())
		if err != nil {
			b.Fatal(err)
		}
		instsKV, err := conn.KV(ctx, names.InstancesBucket())
		if err != nil {
			b.Fatal(err)
		}
		now := time.Now()
		for _, a := range st.apps {
			v, err := msg.Encode(View(a, 1))
			if err != nil {
				b.Fatal(err)
			}
			floor = append(floor, put{appsKV, a.Name, v})
		}
		for _, r := range st.insts {
			v, err := msg.Encode(InstanceView(r, 1, now))
			if err != nil {
				b.Fatal(err)
			}
			floor = append(floor, put{instsKV, msg.InstanceKey(r.App, r.ID), v})
		}
		var all, resync, fl, cpuAll, cpuResync, cpuFloor []time.Duration
		timed := func(walls, cpus *[]time.Duration, fn func() error) {
			c0, start := cpuTime(), time.Now()
			if err := fn(); err != nil {
				b.Fatal(err)
			}
			*walls, *cpus = append(*walls, time.Since(start)), append(*cpus, cpuTime()-c0)
		}
		for range 3 {
			timed(&fl, &cpuFloor, func() error {
				for _, f := range floor {
					if _, err := f.kv.Put(ctx, f.key, f.value); err != nil {
						return err
					}
				}
				return nil
			})
			timed(&all, &cpuAll, func() error { return p.All(ctx, 1) })
			timed(&resync, &cpuResync, func() error { return p.Resync(ctx, 1) })
		}
		f := figure{all: median(all), resync: median(resync), floor: median(fl), cpuAll: median(cpuAll), cpuResync: median(cpuResync), cpuFloor: median(cpuFloor)}
		results[n] = f
		load, _ := os.ReadFile("/proc/loadavg")
		fmt.Printf("republish, %d apps x 3 instances, %d keys (median of 3; load %s):\n", n, len(floor), strings.Join(strings.Fields(string(load))[:3], " "))
		fmt.Printf("  floor: %d KV puts of the same bytes, one after the other  %10s  (%s a put; CPU %s)\n", len(floor), f.floor.Round(time.Millisecond),
			(f.floor / time.Duration(len(floor))).Round(100*time.Nanosecond), f.cpuFloor.Round(time.Millisecond))
		fmt.Printf("  All (leader's start, NATS reconnect)  %10s  %5.2fx the floor  (CPU %s, %5.2fx)\n", f.all.Round(time.Millisecond), ratio(f.all, f.floor),
			f.cpuAll.Round(time.Millisecond), ratio(f.cpuAll, f.cpuFloor))
		fmt.Printf("  Resync (nothing changed)              %10s  %5.2fx the floor  (CPU %s)\n", f.resync.Round(time.Millisecond), ratio(f.resync, f.floor), f.cpuResync.Round(time.Millisecond))
		conn.Close()
	}
	lo, hi := results[sizes[0]], results[sizes[1]]
	fmt.Printf("growth from %d to %d apps (linear: %.0f): floor %.1f, All %.1f, Resync %.1f\n", sizes[0], sizes[1], float64(sizes[1])/float64(sizes[0]),
		ratio(hi.floor, lo.floor), ratio(hi.all, lo.all), ratio(hi.resync, lo.resync))
}

// fleetOf is n apps like a real one (a host, a health check), each with 3
// running instances.
func fleetOf(b *testing.B, n int) *memStore {
	b.Helper()
	st := &memStore{}
	created := time.Now().Add(-time.Hour)
	for i := range n {
		name := fmt.Sprintf("app%06d", i)
		s, err := spec.Load(fmt.Appendf(nil, `
name: %[1]s
image: registry.local/team/%[1]s:1.4.2
port: 8080
replicas: 3
health: {type: http, path: /healthz, interval: 5s, timeout: 2s}
routing: {hosts: [%[1]s.example.com], paths: [/]}
`, name))
		if err != nil {
			b.Fatal(err)
		}
		st.apps = append(st.apps, store.App{Name: name, Spec: s, Generation: 2, DesiredReplicas: 3, CreatedAt: created, UpdatedAt: created,
			HostClaims: map[string]time.Time{name + ".example.com": created}})
		for j := range 3 {
			started := created
			st.insts = append(st.insts, store.Instance{ID: fmt.Sprintf("%s-%d", name, j), App: name, Generation: 2, ContainerID: fmt.Sprintf("%012x%d", i, j),
				Address: fmt.Sprintf("10.0.%d.%d:%d", i%250, j, 30000+i%30000), State: msg.StateRunning, Health: msg.StatusHealthy, Term: 1,
				SpecHash: "h", StartedAt: &started, CreatedAt: created})
		}
	}
	return st
}

// cpuTime is the CPU time (user and system) this process has used: the
// publisher's and the in-process NATS server's.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

func median(ds []time.Duration) time.Duration {
	s := slices.Clone(ds)
	slices.Sort(s)
	return s[len(s)/2]
}

func ratio(a, b time.Duration) float64 { return float64(a) / float64(b) }
