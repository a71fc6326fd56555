package state

import (
	"testing"
	"time"

	"github.com/berthhq/berth/common/bus"
	"github.com/berthhq/berth/common/msg"
	"github.com/berthhq/berth/common/spec"
	"github.com/stretchr/testify/require"
)

func app(name string, withHealth bool) *msg.App {
	a := &msg.App{Name: name, Generation: 1, Term: 1, Port: 8080, Routing: spec.Routing{Paths: []string{"/"}}}
	if withHealth {
		a.Health = &spec.Health{Type: spec.HealthHTTP}
	}
	return a
}

func inst(app, id, state, addr string) *msg.Instance {
	return &msg.Instance{App: app, ID: id, Term: 1, State: state, Address: addr, Weight: 1}
}

func health(status string) *msg.Health { return &msg.Health{Status: status} }

func TestRoutable(t *testing.T) {
	t.Parallel()
	checked, unchecked := app("web", true), app("web", false)
	disabled := app("web", true)
	no := false
	disabled.Health.Enabled = &no
	tests := []struct {
		name string
		app  *msg.App
		inst *msg.Instance
		h    *msg.Health
		want bool
	}{
		{"running and healthy", checked, inst("web", "a", msg.StateRunning, "127.0.0.1:1"), health(msg.StatusHealthy), true},
		{"running, no health yet", checked, inst("web", "a", msg.StateRunning, "127.0.0.1:1"), nil, false},
		{"running, unknown", checked, inst("web", "a", msg.StateRunning, "127.0.0.1:1"), health(msg.StatusUnknown), false},
		{"running, unhealthy", checked, inst("web", "a", msg.StateRunning, "127.0.0.1:1"), health(msg.StatusUnhealthy), false},
		{"draining though healthy", checked, inst("web", "a", msg.StateDraining, "127.0.0.1:1"), health(msg.StatusHealthy), false},
		{"starting though healthy", checked, inst("web", "a", msg.StateStarting, "127.0.0.1:1"), health(msg.StatusHealthy), false},
		{"stopped", checked, inst("web", "a", msg.StateStopped, "127.0.0.1:1"), health(msg.StatusHealthy), false},
		{"failed", unchecked, inst("web", "a", msg.StateFailed, "127.0.0.1:1"), nil, false},
		{"no check: running is enough", unchecked, inst("web", "a", msg.StateRunning, "127.0.0.1:1"), nil, true},
		{"disabled check: running is enough", disabled, inst("web", "a", msg.StateRunning, "127.0.0.1:1"), health(msg.StatusUnhealthy), true},
		{"no address", unchecked, inst("web", "a", msg.StateRunning, ""), nil, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			require.Equal(t, tt.want, Routable(tt.app, tt.inst, tt.h))
		})
	}
}

func TestBuildSortsFiltersAndKeepsEmptyApps(t *testing.T) {
	t.Parallel()
	b := inst("web", "b", msg.StateRunning, "127.0.0.1:2")
	b.Weight, b.Backup = 5, true
	v := View{
		Apps: map[string]*msg.App{"web": app("web", true), "api": app("api", false), "idle": app("idle", false)},
		Instances: map[string]*msg.Instance{
			"web.b":   b,
			"web.a":   inst("web", "a", msg.StateRunning, "127.0.0.1:1"),
			"web.c":   inst("web", "c", msg.StateRunning, "127.0.0.1:3"),
			"api.x":   inst("api", "x", msg.StateRunning, "127.0.0.1:9"),
			"ghost.z": inst("ghost", "z", msg.StateRunning, "127.0.0.1:7"),
		},
		Health: map[string]*msg.Health{
			"web.a": health(msg.StatusHealthy), "web.b": health(msg.StatusHealthy), "web.c": health(msg.StatusUnhealthy),
		},
		Revision: 42,
	}
	s := Build(v)
	require.Equal(t, uint64(42), s.Revision)
	require.Len(t, s.Apps, 3)
	require.Equal(t, "api", s.Apps[0].Spec.Name)
	require.Equal(t, []Server{{Instance: "x", Address: "127.0.0.1:9", Weight: 1}}, s.Apps[0].Servers)
	require.Equal(t, "idle", s.Apps[1].Spec.Name)
	require.Empty(t, s.Apps[1].Servers, "an app without servers keeps its route (and answers 503)")
	require.Equal(t, []Server{{Instance: "a", Address: "127.0.0.1:1", Weight: 1}, {Instance: "b", Address: "127.0.0.1:2", Weight: 5, Backup: true}}, s.Apps[2].Servers)
	require.Equal(t, 3, s.Servers())
	require.Equal(t, s, Build(v), "Build is deterministic")
}

func TestEmptyHold(t *testing.T) {
	t.Parallel()
	full := Snapshot{Apps: []App{{Servers: []Server{{Address: "127.0.0.1:1"}}}}}
	empty := Snapshot{Apps: []App{{}}}
	t0 := time.Unix(1000, 0)
	hold := 30 * time.Second

	apply, since := EmptyHold(full, empty, time.Time{}, t0, hold)
	require.False(t, apply, "a snapshot that empties everything is held")
	require.Equal(t, t0, since)
	apply, since = EmptyHold(full, empty, since, t0.Add(29*time.Second), hold)
	require.False(t, apply)
	require.Equal(t, t0, since, "the hold counts from the first sighting")
	apply, since = EmptyHold(full, empty, since, t0.Add(30*time.Second), hold)
	require.True(t, apply, "an empty state that persists is applied")
	require.True(t, since.IsZero())

	apply, since = EmptyHold(full, full, t0, t0.Add(time.Second), hold)
	require.True(t, apply)
	require.True(t, since.IsZero(), "servers coming back reset the hold")
	apply, _ = EmptyHold(empty, empty, time.Time{}, t0, hold)
	require.True(t, apply, "nothing to lose: apply")
	stoppedAll := Snapshot{Apps: []App{{}}, Instances: 3}
	apply, _ = EmptyHold(full, stoppedAll, time.Time{}, t0, hold)
	require.True(t, apply, "instances the scheduler stopped are intent, not a wipe")
}

// TestEmptyHoldWhileBucketsRefill replays NATS coming back empty: the
// buckets refill one by one, and no step on the way may empty nginx.
func TestEmptyHoldWhileBucketsRefill(t *testing.T) {
	t.Parallel()
	checked := func(name string) *msg.App { return app(name, true) }
	healthy := &msg.Health{App: "web", Instance: "a", Status: msg.StatusHealthy}
	unhealthy := &msg.Health{App: "web", Instance: "a", Status: msg.StatusUnhealthy}
	running := inst("web", "a", msg.StateRunning, "127.0.0.1:1")
	applied := Build(View{Apps: map[string]*msg.App{"web": checked("web")}, Instances: map[string]*msg.Instance{"web.a": running},
		Health: map[string]*msg.Health{"web.a": healthy}})
	require.Equal(t, 1, applied.Servers())
	t0 := time.Unix(1000, 0)
	tests := []struct {
		name      string
		view      View
		wantApply bool
	}{
		{name: "every bucket empty", view: View{}},
		{name: "instances back before apps", view: View{Instances: map[string]*msg.Instance{"web.a": running}}},
		{name: "apps and instances back before health", view: View{Apps: map[string]*msg.App{"web": checked("web")}, Instances: map[string]*msg.Instance{"web.a": running}}},
		{name: "everything back", view: View{Apps: map[string]*msg.App{"web": checked("web")}, Instances: map[string]*msg.Instance{"web.a": running},
			Health: map[string]*msg.Health{"web.a": healthy}}, wantApply: true},
		{name: "health back as unknown (a checker starting again)", view: View{Apps: map[string]*msg.App{"web": checked("web")}, Instances: map[string]*msg.Instance{"web.a": running},
			Health: map[string]*msg.Health{"web.a": {App: "web", Instance: "a", Status: msg.StatusUnknown}}}},
		{name: "found unhealthy is intent", view: View{Apps: map[string]*msg.App{"web": checked("web")}, Instances: map[string]*msg.Instance{"web.a": running},
			Health: map[string]*msg.Health{"web.a": unhealthy}}, wantApply: true},
		{name: "stopped is intent", view: View{Apps: map[string]*msg.App{"web": checked("web")},
			Instances: map[string]*msg.Instance{"web.a": inst("web", "a", msg.StateStopped, "127.0.0.1:1")}}, wantApply: true},
		{name: "one stopped among unsettled is intent", view: View{Apps: map[string]*msg.App{"web": checked("web")},
			Instances: map[string]*msg.Instance{"web.a": running, "web.b": inst("web", "b", msg.StateDraining, "127.0.0.1:2")}}, wantApply: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			apply, since := EmptyHold(applied, Build(tt.view), time.Time{}, t0, 30*time.Second)
			require.Equal(t, tt.wantApply, apply)
			if !apply {
				require.Equal(t, t0, since)
				apply, _ = EmptyHold(applied, Build(tt.view), since, t0.Add(30*time.Second), 30*time.Second)
				require.True(t, apply, "a state that persists for the hold is applied")
			}
		})
	}
}

func TestStoreWaitsForAllBucketsAndFences(t *testing.T) {
	t.Parallel()
	s := NewStore()
	_, ok := s.Snapshot()
	require.False(t, ok)
	s.AppsHandler().Snapshot([]bus.Event[*msg.App]{{Key: "web", Value: app("web", false)}}, 3)
	s.HealthHandler().Snapshot(nil, 0)
	s.CertificatesHandler().Snapshot(nil, 0)
	_, ok = s.Snapshot()
	require.False(t, ok, "never build from a partial initial load")
	require.False(t, s.Ready())

	running := inst("web", "a", msg.StateRunning, "127.0.0.1:1")
	running.Term = 5
	s.InstancesHandler().Snapshot([]bus.Event[*msg.Instance]{{Key: "web.a", Revision: 7, Value: running}}, 7)
	snap, ok := s.Snapshot()
	require.True(t, ok)
	require.Equal(t, uint64(7), snap.Revision)
	require.Len(t, snap.Apps[0].Servers, 1)
	<-s.Changed()

	stale := inst("web", "a", msg.StateStopped, "127.0.0.1:1")
	stale.Term = 4
	s.InstancesHandler().Update(bus.Event[*msg.Instance]{Key: "web.a", Revision: 8, Op: bus.OpPut, Value: stale})
	snap, _ = s.Snapshot()
	require.Len(t, snap.Apps[0].Servers, 1, "a deposed leader's write is ignored")
	require.Equal(t, uint64(1), s.Fenced())
	require.Equal(t, uint64(8), snap.Revision, "the revision still advances: the config reflects it")

	stopped := inst("web", "a", msg.StateStopped, "127.0.0.1:1")
	stopped.Term = 5
	s.InstancesHandler().Update(bus.Event[*msg.Instance]{Key: "web.a", Revision: 9, Op: bus.OpPut, Value: stopped})
	snap, _ = s.Snapshot()
	require.Empty(t, snap.Apps[0].Servers, "a stopped instance leaves nginx")
	select {
	case <-s.Changed():
	default:
		t.Fatal("a change must be signalled")
	}

	s.AppsHandler().Update(bus.Event[*msg.App]{Key: "web", Revision: 4, Op: bus.OpDelete})
	snap, _ = s.Snapshot()
	require.Empty(t, snap.Apps)
}
