package controller

import (
	"context"
	"fmt"
	"testing"
	"time"

	"go.uber.org/zap"

	"github.com/berthhq/berth/common/bus"
	"github.com/berthhq/berth/common/msg"
	"github.com/berthhq/berth/common/spec"
	"github.com/berthhq/berth/common/view"
	"github.com/berthhq/berth/scheduler/internal/docker"
	"github.com/berthhq/berth/scheduler/internal/store"
)

// BenchmarkCycle times the leader's whole pass (observe, plan, act) at
// 1,000 and 10,000 apps of 3 running, healthy instances (issue 30), on
// the in-memory fake of the store, the publisher and Docker: nothing to
// do, as in a resync of a converged fleet. It reports ns/app, constant
// from one size to the other when the pass is linear in the apps. The
// fake's own reads (a copy of every app, record and container, the
// records and containers sorted) are part of the time.
func BenchmarkCycle(b *testing.B) {
	for _, apps := range []int{1000, 10000} {
		b.Run(fmt.Sprintf("apps=%d", apps), func(b *testing.B) {
			f := newFake()
			health := view.NewTable(view.NoTerm[*msg.Health], func() {})
			agents := view.NewTable(view.NoTerm[*msg.Agent], func() {})
			c := New(Config{MaxParallel: 4, Resync: time.Hour, StartTimeout: time.Minute}, Deps{Desired: f, Records: f, Routing: f, Releases: f,
				Containers: fakeContainers{f}, Runtime: f, Images: f, Logs: f, Health: health, Agents: agents}, zap.NewNop())
			created := time.Now().Add(-time.Hour)
			var rows []bus.Event[*msg.Health]
			for i := range apps {
				name := fmt.Sprintf("app%06d", i)
				s, err := spec.Load([]byte(fmt.Sprintf(webSpec, "1")))
				if err != nil {
					b.Fatal(err)
				}
				s.Name = name
				a := store.App{Name: name, Spec: s, Generation: 1, DesiredReplicas: 3, UpdatedAt: created}
				f.apps[name] = a
				hash := c.SpecHash(a)
				for j := range 3 {
					id, cid := fmt.Sprintf("%s-%d", name, j), fmt.Sprintf("c%06d-%d", i, j)
					addr := fmt.Sprintf("127.0.0.1:%d", 20000+(3*i+j)%40000)
					f.records[id] = store.Instance{ID: id, App: name, Generation: 1, ContainerID: cid, Address: addr, State: msg.StateRunning,
						Health: msg.StatusHealthy, Term: 1, SpecHash: hash, CreatedAt: created, UpdatedAt: created}
					f.containers[cid] = &docker.Container{ID: cid, App: name, Instance: id, Generation: 1, SpecHash: hash, Term: 1,
						State: "running", Running: true, Address: addr, StartedAt: created}
					key := msg.InstanceKey(name, id)
					rows = append(rows, bus.Event[*msg.Health]{Key: key, Op: bus.OpPut, Value: &msg.Health{App: name, Instance: id, Status: msg.StatusHealthy}})
				}
			}
			health.Handler().Snapshot(rows, 1)
			agents.Handler().Snapshot(nil, 0)
			lease := store.Lease{Name: "bench", Holder: "me", Term: 1}
			ctx := context.Background()
			b.ReportAllocs()
			for b.Loop() {
				_, acted, err := c.cycle(ctx, lease)
				if err != nil || acted != 0 {
					b.Fatalf("a converged fleet's pass acted %d times: %v", acted, err)
				}
			}
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N)/float64(apps), "ns/app")
		})
	}
}
