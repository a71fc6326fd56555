package reconcile

import (
	"fmt"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/berthhq/berth/common/msg"
	"github.com/berthhq/berth/common/spec"
)

// on places an instance on a host.
func on(host string) func(*Observed) { return func(o *Observed) { o.Host = host } }

// lostRecord is an instance recorded lost with its host.
func lostRecord(o *Observed) { o.State, o.Health = msg.StateFailed, msg.StatusUnknown }

// six is 6 replicas spread 2/2/2 over h1, h2 and h3, mods applied to h1's.
func six(mods ...func(*Observed)) []Observed {
	h1 := append([]func(*Observed){on("h1")}, mods...)
	return []Observed{inst("a", "new", time.Hour, h1...), inst("b", "new", time.Hour, h1...),
		inst("c", "new", time.Hour, on("h2")), inst("d", "new", time.Hour, on("h2")),
		inst("e", "new", time.Hour, on("h3")), inst("f", "new", time.Hour, on("h3"))}
}

// web6 is app(6) with max_surge surge, holding lost instances or not.
func web6(surge int, hold bool) map[string]Desired {
	d := app(6)
	d.MaxSurge, d.HoldLost = surge, hold
	return map[string]Desired{"web": d}
}

func hosts(h1 Host) map[string]Host {
	return map[string]Host{"h1": h1, "h2": {State: HostUp}, "h3": {State: HostUp}}
}

// graced gives every app an unhealthy grace of 30 s.
func graced(apps map[string]Desired) map[string]Desired {
	for n, d := range apps {
		d.UnhealthyGrace = 30 * time.Second
		apps[n] = d
	}
	return apps
}

// unhealthyFor makes an instance unhealthy for d.
func unhealthyFor(d time.Duration) func(*Observed) {
	return func(o *Observed) { o.Health, o.UnhealthySince = msg.StatusUnhealthy, now.Add(-d) }
}

var (
	down        = Host{State: HostDown}
	unreachable = Host{State: HostUnreachable}
)

// Host state is the planner's input: a down host's instances are lost and
// replaced (unless on_host_lost.replace is false, within the bound), an
// unreachable or unknown host's are left alone, lost records are counted
// or forgotten, a draining or constraint-failing host's instances
// migrate, and no orphan of a silent host is touched.
func TestPlanHosts(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name  string
		in    Input
		want  []string
		waits map[string]string // a Lost instance's Wait contains
	}{
		{"a down host's instances are lost and replaced", Input{Apps: web6(1, false), Hosts: hosts(down), Instances: six()},
			[]string{"lost a", "lost b", "start for a", "start for b"}, nil},
		{"with max_surge 0 too", Input{Apps: web6(0, false), Hosts: hosts(down), Instances: six()},
			[]string{"lost a", "lost b", "start for a", "start for b"}, nil},
		{"on_host_lost.replace false holds the bound: max_surge 1 replaces one", Input{Apps: web6(1, true), Hosts: hosts(down), Instances: six()},
			[]string{"lost a", "lost b", "start for a"},
			map[string]string{"b": "its replacement waits for its host to answer, or to leave the registry: placement.on_host_lost.replace is false, so the 2 instance(s) lost with their host count toward replicas + max_surge (7)"}},
		{"on_host_lost.replace false with max_surge 0 replaces none", Input{Apps: web6(0, true), Hosts: hosts(down), Instances: six()},
			[]string{"lost a", "lost b"}, map[string]string{"a": "placement.on_host_lost.replace is false", "b": "placement.on_host_lost.replace is false"}},
		{"lost records do not count by default", Input{Apps: web6(1, false), Hosts: hosts(down), Instances: six(lostRecord)},
			[]string{"start", "start"}, nil},
		{"lost records count under on_host_lost.replace false", Input{Apps: web6(1, true), Hosts: hosts(down),
			Instances: append(six(lostRecord), inst("g", "new", time.Minute, on("h2")))}, []string{}, nil},
		{"lost records count while their host is unknown", Input{Apps: web6(1, true), Hosts: hosts(Host{State: HostUnknown}),
			Instances: append(six(lostRecord), inst("g", "new", time.Minute, on("h2")))}, []string{}, nil},
		{"a lost record is forgotten once its host answers", Input{Apps: web6(1, true), Hosts: hosts(Host{State: HostUp}),
			Instances: append(six(lostRecord), inst("g", "new", time.Minute, on("h2")))}, []string{"forget a", "forget b", "start"}, nil},
		{"a lost record is forgotten once its host left the registry", Input{Apps: web6(1, true), Hosts: hosts(Host{State: HostDown, Gone: true}),
			Instances: append(six(lostRecord), inst("g", "new", time.Minute, on("h2")))}, []string{"forget a", "forget b", "start"}, nil},
		{"an unreachable host's running instances are left alone", Input{Apps: web6(1, false), Hosts: hosts(unreachable), Instances: six()},
			[]string{}, nil},
		{"an unreachable host's dead instance is lost, not removed", Input{Apps: web6(1, false), Hosts: hosts(unreachable),
			Instances: append(six()[1:], inst("a", "new", time.Hour, on("h1"), died))}, []string{"lost a", "start for a"}, nil},
		{"an instance unhealthy beyond the grace on an unreachable host is lost, not removed", Input{Apps: graced(web6(1, false)), Hosts: hosts(unreachable),
			Instances: six(unhealthyFor(time.Minute))}, []string{"lost a", "lost b", "start for a", "start for b"}, nil},
		{"under on_host_lost.replace false, within the bound", Input{Apps: graced(web6(1, true)), Hosts: hosts(unreachable),
			Instances: six(unhealthyFor(time.Minute))}, []string{"lost a", "lost b", "start for a"},
			map[string]string{"b": "placement.on_host_lost.replace is false"}},
		{"an instance unhealthy on a host not listed yet waits for its list", Input{Apps: graced(web6(1, false)), Hosts: hosts(Host{State: HostUnknown}),
			Instances: six(unhealthyFor(time.Minute))}, []string{}, nil},
		{"an unknown host's unseen containers are not gone", Input{Apps: web6(1, false), Hosts: hosts(Host{State: HostUnknown}), Instances: six(gone)},
			[]string{}, nil},
		{"a crash is replaced before a lost instance", Input{Apps: web6(1, true), Hosts: hosts(down),
			Instances: append(six()[:5], inst("f", "new", time.Hour, on("h3"), died))}, []string{"lost a", "lost b", "replace f", "start for f", "start for a"},
			map[string]string{"b": "placement.on_host_lost.replace is false"}},
		{"restart backoff: lost instances are recorded, their successors wait", Input{Apps: func() map[string]Desired {
			m := web6(1, false)
			d := m["web"]
			d.BackoffInitial = time.Minute
			m["web"] = d
			return m
		}(), Hosts: hosts(down), Instances: six(), Failures: []Failure{{App: "web", At: now.Add(-time.Second)}}},
			[]string{"lost a", "lost b", "hold"}, map[string]string{"a": "its replacement waits: restart backoff after 1 restarts"}},
		{"a draining instance on a down host is lost, with no successor", Input{Apps: web6(1, false), Hosts: hosts(down),
			Instances: append(six()[2:], inst("x", "new", time.Hour, on("h1"), draining(time.Second)), inst("g", "new", time.Minute, on("h2")), inst("h", "new", time.Minute, on("h3")))},
			[]string{"lost x"}, map[string]string{"x": "it was draining: nothing replaces it"}},
		{"a deleted app's instance on a down host is lost, not drained", Input{Apps: map[string]Desired{"web": func() Desired { d := app(2); d.Deleted = true; return d }()},
			Hosts: hosts(down), Instances: []Observed{inst("a", "new", time.Hour, on("h1")), inst("c", "new", time.Hour, on("h2"))}},
			[]string{"lost a", "stop c"}, map[string]string{"a": "the app was deleted"}},
		{"a scale-down needs no successor for a lost instance", Input{Apps: map[string]Desired{"web": app(4)}, Hosts: hosts(down), Instances: six()},
			[]string{"lost a", "lost b"}, map[string]string{"a": "no replacement needed: 4 of 4 replicas run"}},
		{"a draining host's instances migrate, surge first", Input{Apps: web6(1, false), Hosts: hosts(Host{State: HostUp, Draining: true}), Instances: six()},
			[]string{"start"}, nil},
		{"once the surge serves, one migrates", Input{Apps: web6(1, false), Hosts: hosts(Host{State: HostUp, Draining: true}),
			Instances: append(six(), inst("g", "new", time.Minute, on("h2")))}, []string{"migrate a"}, nil},
		{"a host failing the constraints is left, surge first", Input{Apps: func() map[string]Desired {
			m := web6(1, false)
			d := m["web"]
			d.Constraints = []spec.Constraint{{Key: "zone", Value: "b"}}
			m["web"] = d
			return m
		}(), Hosts: map[string]Host{"h1": {State: HostUp, Constrained: true, Labels: map[string]string{"zone": "a"}},
			"h2": {State: HostUp, Constrained: true, Labels: map[string]string{"zone": "b"}}, "h3": {State: HostUp, Constrained: true, Labels: map[string]string{"zone": "b"}}},
			Instances: append(six(), inst("g", "new", time.Minute, on("h2")))}, []string{"migrate a"}, nil},
		{"an unconstrained host (the local engine) never fails a constraint", Input{Apps: func() map[string]Desired {
			d := app(1)
			d.Constraints = []spec.Constraint{{Key: "zone", Value: "b"}}
			return map[string]Desired{"web": d}
		}(), Hosts: map[string]Host{"": {State: HostUp}}, Instances: []Observed{inst("a", "new", time.Hour)}}, []string{}, nil},
		{"the local engine's instances move once hosts are registered", Input{Apps: map[string]Desired{"web": app(1)},
			Hosts: map[string]Host{"": {State: HostUp, Draining: true}}, Instances: []Observed{inst("a", "new", time.Hour)}}, []string{"start"}, nil},
		{"orphans of a host that does not answer are left alone", Input{Apps: web6(1, false), Hosts: hosts(unreachable), Instances: six(),
			Orphans: []Orphan{{ContainerID: "x1", Host: "h1", App: "web", Instance: "x1", SpecHash: "new", Running: true},
				{ContainerID: "x2", Host: "h2", App: "web", Instance: "x2", SpecHash: "new", Running: true}}},
			[]string{"remove_orphan x2"}, nil},
		{"an orphan of a host that answers again is adopted where the app lacks one", Input{Apps: web6(1, true), Hosts: hosts(Host{State: HostUp}),
			Instances: six()[2:], Orphans: []Orphan{{ContainerID: "ca", Host: "h1", App: "web", Instance: "a", SpecHash: "new", Running: true},
				{ContainerID: "cb", Host: "h1", App: "web", Instance: "b", SpecHash: "new", Running: true}}},
			[]string{"adopt a", "adopt b"}, nil},
		{"an orphan on a draining host is not adopted", Input{Apps: web6(1, false), Hosts: hosts(Host{State: HostUp, Draining: true}),
			Instances: six()[2:], Orphans: []Orphan{{ContainerID: "ca", Host: "h1", App: "web", Instance: "a", SpecHash: "new", Running: true}}},
			[]string{"start", "start", "remove_orphan a"}, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			tt.in.Now = now
			got := Plan(tt.in).Actions
			require.Equal(t, tt.want, summary(got), "%v", got)
			requirePaired(t, got)
			for _, a := range got {
				require.NotEmpty(t, a.Reason, "every action says why")
				if want, ok := tt.waits[a.Instance]; ok && a.Kind == Lost {
					require.Contains(t, a.Wait, want)
				}
				if a.Kind == Lost || a.Kind == Forget || a.Kind == Migrate {
					require.Equal(t, "h1", a.Host, "%s names its host", a)
				}
			}
		})
	}
}

// A host's loss under load, step by step as the controller would act:
// by default the app is back to its count at once with either max_surge,
// and nothing more runs once the host answers; under
// on_host_lost.replace: false, never more than replicas + max_surge
// instances may run at any step, lost ones included.
func TestHostLossSteps(t *testing.T) {
	t.Parallel()
	for _, tt := range []struct {
		surge   int
		hold    bool
		running int // once the actions of the loss are done
	}{{1, false, 6}, {0, false, 6}, {1, true, 5}, {0, true, 4}} {
		t.Run(fmt.Sprintf("max_surge %d, replace %t", tt.surge, !tt.hold), func(t *testing.T) {
			t.Parallel()
			in := Input{Apps: web6(tt.surge, tt.hold), Hosts: hosts(down), Instances: six(), Now: now}
			n := 0
			apply := func() {
				res := Plan(in)
				requirePaired(t, res.Actions)
				for _, a := range res.Actions {
					switch a.Kind {
					case Lost:
						for i := range in.Instances {
							if in.Instances[i].ID == a.Instance {
								in.Instances[i].State = msg.StateFailed
							}
						}
					case Forget:
						kept := in.Instances[:0]
						for _, o := range in.Instances {
							if o.ID != a.Instance {
								kept = append(kept, o)
							}
						}
						in.Instances = kept
						// Its container is an orphan, not running since its
						// engine restarted.
						in.Orphans = append(in.Orphans, Orphan{ContainerID: "c" + a.Instance, Host: "h1", App: "web", Instance: a.Instance, SpecHash: "new"})
					case RemoveOrphan:
						in.Orphans = nil
					case Start:
						n++
						in.Instances = append(in.Instances, inst(string(rune('m'+n)), "new", 0, on("h2")))
					default:
						t.Fatalf("unexpected %s", a)
					}
				}
				running := 0
				for _, o := range in.Instances {
					if active(o) || o.State == msg.StateFailed {
						running++
					}
				}
				if tt.hold {
					require.LessOrEqual(t, running, 6+tt.surge, "lost ones included, never above replicas + max_surge")
				}
			}
			for range 3 {
				apply()
			}
			active6 := 0
			for _, o := range in.Instances {
				if active(o) {
					active6++
				}
			}
			require.Equal(t, tt.running, active6)
			in.Hosts = hosts(Host{State: HostUp})
			for range 3 {
				apply()
			}
			active6 = 0
			for _, o := range in.Instances {
				require.True(t, active(o), "%+v", o)
				active6++
			}
			require.Equal(t, 6, active6, "exactly replicas once the host answers")
			require.Empty(t, in.Orphans, "its leftovers removed")
		})
	}
}

// An instance that only moves (its host drains) is replaced by the
// rolling rules, but a replacement that is not healthy in time rolls
// nothing back: there is no older spec to return to.
func TestMoveIsNoRollout(t *testing.T) {
	t.Parallel()
	d := Desired{App: "web", Generation: 2, SpecHash: "h", Replicas: 2, MaxSurge: 1, AutoRollback: true, HealthyDeadline: time.Minute}
	insts := []Observed{inst("old", "h", time.Hour, on("h1")), inst("ok", "h", time.Hour, on("h2")),
		inst("new", "h", 2*time.Minute, on("h2"), unhealthy)}
	in := Input{Apps: map[string]Desired{"web": d}, Instances: insts, Now: now, Hosts: map[string]Host{"h1": {State: HostUp, Draining: true}}}
	for _, a := range Plan(in).Actions {
		require.NotEqual(t, RollBack, a.Kind, "%s", a)
	}
	in.Instances[0].SpecHash = "older"
	require.Contains(t, summary(Plan(in).Actions), "roll_back new", "a real rollout still rolls back")
}
