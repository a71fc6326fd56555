package reconcile

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/berthhq/berth/common/msg"
	"github.com/stretchr/testify/require"
)

var now = time.Unix(10_000, 0)

func app(replicas int) Desired {
	return Desired{App: "web", Generation: 2, SpecHash: "new", Replicas: replicas, MaxSurge: 1, MaxUnavailable: 0,
		MinHealthyTime: 5 * time.Second, RestartAttempts: 3, RestartWindow: 10 * time.Minute, BackoffMax: 5 * time.Minute}
}

// inst is a running instance; mods adjust it.
func inst(id, hash string, age time.Duration, mods ...func(*Observed)) Observed {
	o := Observed{ID: id, App: "web", SpecHash: hash, State: msg.StateRunning, Health: msg.StatusHealthy,
		HealthySince: now.Add(-age), CreatedAt: now.Add(-age), ContainerID: "c" + id, ContainerRunning: true, Term: 1}
	for _, m := range mods {
		m(&o)
	}
	return o
}

func unhealthy(o *Observed)   { o.Health = msg.StatusUnhealthy }
func unknown(o *Observed)     { o.Health = msg.StatusUnknown }
func starting(o *Observed)    { o.State, o.Health = msg.StateStarting, msg.StatusUnknown }
func died(o *Observed)        { o.ContainerRunning = false }
func gone(o *Observed)        { o.ContainerGone = true }
func freshHealth(o *Observed) { o.HealthySince = now.Add(-time.Second) }

// summary renders actions compactly: "start", "stop b", "replace a", …
func summary(as []Action) []string {
	out := make([]string, 0, len(as))
	for _, a := range as {
		s := string(a.Kind)
		if a.Instance != "" {
			s += " " + a.Instance
		}
		out = append(out, s)
	}
	return out
}

func TestPlan(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		in   Input
		want []string
	}{
		{"nothing to do", Input{Apps: map[string]Desired{"web": app(2)},
			Instances: []Observed{inst("a", "new", time.Hour), inst("b", "new", time.Hour)}}, []string{}},
		{"scale up from zero", Input{Apps: map[string]Desired{"web": app(3)}}, []string{"start", "start", "start"}},
		{"scale up counts instances still starting", Input{Apps: map[string]Desired{"web": app(3)},
			Instances: []Observed{inst("a", "new", time.Hour), inst("b", "new", 0, starting)}}, []string{"start"}},
		{"scale down: unhealthy first, then not yet healthy, then newest", Input{Apps: map[string]Desired{"web": app(2)},
			Instances: []Observed{inst("old", "new", 3*time.Hour), inst("newest", "new", time.Minute), inst("mid", "new", time.Hour),
				inst("sick", "new", 2*time.Hour, unhealthy), inst("boot", "new", 0, starting)}},
			[]string{"stop sick", "stop boot", "stop newest"}},
		{"scale to zero", Input{Apps: map[string]Desired{"web": app(0)},
			Instances: []Observed{inst("a", "new", time.Hour), inst("b", "new", 2*time.Hour)}}, []string{"stop a", "stop b"}},
		{"a rollout starts with a surge and keeps every old instance", Input{Apps: map[string]Desired{"web": app(2)},
			Instances: []Observed{inst("o1", "old", time.Hour), inst("o2", "old", time.Hour)}}, []string{"start"}},
		{"a new instance healthy too briefly does not count yet", Input{Apps: map[string]Desired{"web": app(2)},
			Instances: []Observed{inst("o1", "old", time.Hour), inst("o2", "old", time.Hour), inst("n1", "new", time.Minute, freshHealth)}},
			[]string{}},
		{"once the new one has proven itself, one old one goes", Input{Apps: map[string]Desired{"web": app(2)},
			Instances: []Observed{inst("o1", "old", 2*time.Hour), inst("o2", "old", time.Hour), inst("n1", "new", time.Minute)}},
			[]string{"stop o2"}},
		{"old instances that do not serve go first and at once (at the surge cap, the next start waits)", Input{Apps: map[string]Desired{"web": app(2)},
			Instances: []Observed{inst("o1", "old", time.Hour, unhealthy), inst("o2", "old", time.Hour), inst("n1", "new", 0, starting)}},
			[]string{"stop o1"}},
		{"max_unavailable lets old ones go before new ones are up", Input{Apps: map[string]Desired{"web": func() Desired {
			d := app(2)
			d.MaxSurge, d.MaxUnavailable = 0, 1
			return d
		}()}, Instances: []Observed{inst("o1", "old", time.Hour), inst("o2", "old", 2*time.Hour)}}, []string{"stop o1"}},
		{"the rollout completes", Input{Apps: map[string]Desired{"web": app(2)},
			Instances: []Observed{inst("o1", "old", time.Hour), inst("n1", "new", time.Minute), inst("n2", "new", time.Minute)}},
			[]string{"stop o1"}},
		{"a dead container is replaced", Input{Apps: map[string]Desired{"web": app(2)},
			Instances: []Observed{inst("a", "new", time.Hour, died), inst("b", "new", time.Hour)}}, []string{"replace a"}},
		{"an instance unhealthy beyond the grace is replaced", Input{Apps: map[string]Desired{"web": func() Desired { d := app(2); d.UnhealthyGrace = 30 * time.Second; return d }()},
			Instances: []Observed{inst("a", "new", time.Hour, unhealthy, func(o *Observed) { o.UnhealthySince = now.Add(-time.Minute) }), inst("b", "new", time.Hour)}},
			[]string{"replace a"}},
		{"an instance unhealthy within the grace is left to recover", Input{Apps: map[string]Desired{"web": func() Desired { d := app(2); d.UnhealthyGrace = 30 * time.Second; return d }()},
			Instances: []Observed{inst("a", "new", time.Hour, unhealthy, func(o *Observed) { o.UnhealthySince = now.Add(-10 * time.Second) }), inst("b", "new", time.Hour)}},
			[]string{}},
		{"a vanished container (stale record) is replaced", Input{Apps: map[string]Desired{"web": app(1)},
			Instances: []Observed{inst("a", "new", time.Hour, gone)}}, []string{"replace a"}},
		{"a crash-looping app trips the breaker", Input{Apps: map[string]Desired{"web": app(2)},
			Instances: []Observed{inst("a", "new", time.Hour, died), inst("b", "new", time.Hour)},
			Failures:  []Failure{{App: "web", At: now.Add(-3 * time.Minute)}, {App: "web", At: now.Add(-2 * time.Minute)}, {App: "web", At: now.Add(-time.Minute)}}},
			[]string{"trip_breaker"}},
		{"after backoff_max the breaker lets one attempt through", Input{Apps: map[string]Desired{"web": app(3)},
			Instances: []Observed{inst("a", "new", time.Hour, died), inst("b", "new", time.Hour, died)},
			Failures:  []Failure{{App: "web", At: now.Add(-9 * time.Minute)}, {App: "web", At: now.Add(-8 * time.Minute)}, {App: "web", At: now.Add(-6 * time.Minute)}}},
			[]string{"replace a", "replace b", "start", "start"}},
		{"restart backoff holds the replacement", Input{Apps: map[string]Desired{"web": func() Desired {
			d := app(2)
			d.BackoffInitial = 10 * time.Second
			return d
		}()}, Instances: []Observed{inst("a", "new", time.Hour, died), inst("b", "new", time.Hour)},
			Failures: []Failure{{App: "web", At: now.Add(-15 * time.Second)}, {App: "web", At: now.Add(-5 * time.Second)}}},
			[]string{"hold"}},
		{"after the backoff the replacement goes ahead", Input{Apps: map[string]Desired{"web": func() Desired {
			d := app(2)
			d.BackoffInitial = 10 * time.Second
			return d
		}()}, Instances: []Observed{inst("a", "new", time.Hour, died), inst("b", "new", time.Hour)},
			Failures: []Failure{{App: "web", At: now.Add(-25 * time.Second)}}},
			[]string{"replace a"}},
		{"restarts outside the window do not count", Input{Apps: map[string]Desired{"web": app(1)},
			Instances: []Observed{inst("a", "new", time.Hour, died)},
			Failures:  []Failure{{App: "web", At: now.Add(-time.Hour)}, {App: "web", At: now.Add(-time.Hour)}, {App: "web", At: now.Add(-time.Hour)}}},
			[]string{"replace a"}},
		{"an orphan of the desired spec is adopted, not recreated", Input{Apps: map[string]Desired{"web": app(2)},
			Instances: []Observed{inst("a", "new", time.Hour)},
			Orphans:   []Orphan{{ContainerID: "cx", App: "web", Instance: "x", SpecHash: "new", Running: true}}},
			[]string{"adopt x"}},
		{"orphans of an unknown app, an old spec, or beyond the count are removed", Input{Apps: map[string]Desired{"web": app(1)},
			Instances: []Observed{inst("a", "new", time.Hour)},
			Orphans: []Orphan{{ContainerID: "c1", App: "ghost", Instance: "g", SpecHash: "x", Running: true},
				{ContainerID: "c2", App: "web", Instance: "o", SpecHash: "old", Running: true},
				{ContainerID: "c3", App: "web", Instance: "extra", SpecHash: "new", Running: true}}},
			[]string{"remove_orphan g", "remove_orphan o", "remove_orphan extra"}},
		{"instances another term created are kept", Input{Apps: map[string]Desired{"web": app(2)}, Term: 5,
			Instances: []Observed{inst("a", "new", time.Hour), inst("b", "new", time.Hour, func(o *Observed) { o.Term = 4 })}}, []string{}},
		{"a deleted app's instances stop", Input{Apps: map[string]Desired{"web": func() Desired { d := app(2); d.Deleted = true; return d }()},
			Instances: []Observed{inst("a", "new", time.Hour), inst("b", "new", time.Hour, func(o *Observed) { o.State = msg.StateDraining })}},
			[]string{"stop a"}},
		{"instances of an unknown app stop", Input{Instances: []Observed{inst("a", "new", time.Hour)}}, []string{"stop a"}},
		{"unknown health neither counts as available nor blocks a scale-up", Input{Apps: map[string]Desired{"web": app(2)},
			Instances: []Observed{inst("a", "new", time.Hour, unknown)}}, []string{"start"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			tt.in.Now = now
			got := Plan(tt.in)
			require.Equal(t, tt.want, summary(got), "%v", got)
			for _, a := range got {
				require.NotEmpty(t, a.Reason, "every action says why")
			}
		})
	}
}

func TestOOMReasonSuggestsMemory(t *testing.T) {
	t.Parallel()
	got := Plan(Input{Apps: map[string]Desired{"web": app(1)}, Now: now,
		Instances: []Observed{inst("a", "new", time.Hour, died, func(o *Observed) { o.OOMKilled = true })}})
	require.Len(t, got, 1)
	require.Equal(t, Replace, got[0].Kind)
	require.Contains(t, got[0].Reason, "consider raising resources.memory")
}

func TestHoldUntil(t *testing.T) {
	t.Parallel()
	d := app(1)
	d.BackoffInitial, d.BackoffMax = 5*time.Second, time.Minute
	last := now.Add(-time.Second)
	got := Plan(Input{Apps: map[string]Desired{"web": d}, Now: now,
		Failures: []Failure{{App: "web", At: now.Add(-30 * time.Second)}, {App: "web", At: last}}})
	require.Len(t, got, 1)
	require.Equal(t, Hold, got[0].Kind)
	require.Equal(t, last.Add(10*time.Second), got[0].Until, "the second restart waits twice the initial backoff")
}

// Planning again from the state the actions lead to does nothing more.
func TestPlanIsIdempotent(t *testing.T) {
	t.Parallel()
	in := Input{Apps: map[string]Desired{"web": app(3)}, Now: now, Instances: []Observed{inst("a", "new", time.Hour)}}
	for _, a := range Plan(in) {
		require.Equal(t, Start, a.Kind)
		in.Instances = append(in.Instances, inst(fmt.Sprint("n", len(in.Instances)), "new", 0, starting))
	}
	require.Empty(t, Plan(in))
}

// A whole rollout, step by step: never below replicas - max_unavailable
// serving, never above replicas + max_surge in total.
func TestRolloutInvariants(t *testing.T) {
	t.Parallel()
	d := app(4)
	var insts []Observed
	for i := range 4 {
		insts = append(insts, inst(fmt.Sprint("o", i), "old", time.Hour))
	}
	clock := now
	for step := 0; step < 40; step++ {
		acts := Plan(Input{Apps: map[string]Desired{"web": d}, Instances: insts, Now: clock})
		for _, a := range acts {
			switch a.Kind {
			case Start:
				insts = append(insts, Observed{ID: fmt.Sprint("n", step, len(insts)), App: "web", SpecHash: "new", State: msg.StateRunning,
					Health: msg.StatusHealthy, HealthySince: clock, CreatedAt: clock, ContainerRunning: true, ContainerID: "x"})
			case Stop:
				for i := range insts {
					if insts[i].ID == a.Instance {
						insts[i].State = msg.StateStopped
					}
				}
			default:
				t.Fatalf("unexpected %v", a)
			}
		}
		total, serving, newCount := 0, 0, 0
		for _, o := range insts {
			if active(o) {
				total++
				if available(o, 0, clock) {
					serving++
				}
				if o.SpecHash == "new" {
					newCount++
				}
			}
		}
		require.LessOrEqual(t, total, d.Replicas+d.MaxSurge, "step %d", step)
		require.GreaterOrEqual(t, serving, d.Replicas-d.MaxUnavailable, "step %d", step)
		if newCount == d.Replicas && total == d.Replicas {
			t.Logf("rollout done in %d steps", step+1)
			return
		}
		clock = clock.Add(3 * time.Second)
	}
	t.Fatal("the rollout never completed")
}

func TestActionString(t *testing.T) {
	t.Parallel()
	require.True(t, strings.HasPrefix(Action{Kind: Stop, App: "web", Instance: "a", Reason: "why"}.String(), "stop web/a: why"))
}
