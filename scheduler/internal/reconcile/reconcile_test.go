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
		MinHealthyTime: 5 * time.Second, Drain: 10 * time.Second, RestartAttempts: 3, RestartWindow: 10 * time.Minute, BackoffMax: 5 * time.Minute}
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

// draining makes an instance draining for d.
func draining(d time.Duration) func(*Observed) {
	return func(o *Observed) { o.State, o.UpdatedAt = msg.StateDraining, now.Add(-d) }
}

// rollback turns auto_rollback on with a 30 s healthy_deadline.
func rollback(d Desired) Desired {
	d.AutoRollback, d.HealthyDeadline = true, 30*time.Second
	return d
}

// summary renders actions compactly: "start", "stop b", "replace a",
// "start for a" (a successor), …
func summary(as []Action) []string {
	out := make([]string, 0, len(as))
	for _, a := range as {
		s := string(a.Kind)
		if a.Instance != "" {
			s += " " + a.Instance
		}
		if a.Replaces != "" {
			s += " for " + a.Replaces
		}
		out = append(out, s)
	}
	return out
}

// requirePaired checks what every plan promises of successors: a Start
// replaces a Replace or a Lost of the same plan, each at most once, and a
// Lost or Replace without a successor says why.
func requirePaired(t *testing.T, as []Action) {
	t.Helper()
	pred := map[string]Kind{}
	for _, a := range as {
		if a.Kind == Replace || a.Kind == Lost {
			pred[a.Instance] = a.Kind
		}
	}
	succ := map[string]int{}
	for _, a := range as {
		if a.Kind == Start && a.Replaces != "" {
			require.Contains(t, pred, a.Replaces, "%s replaces an instance of the plan", a)
			succ[a.Replaces]++
			require.Equal(t, 1, succ[a.Replaces], "%s: one successor each", a)
		}
	}
	for _, a := range as {
		switch a.Kind {
		case Lost:
			require.True(t, succ[a.Instance] == 1 || a.Wait != "", "%s has a successor or says why not", a)
			require.True(t, succ[a.Instance] == 0 || a.Wait == "", "%s: a successor and a wait", a)
		case Replace:
			require.True(t, succ[a.Instance] == 1 || a.Wait != "", "%s has a successor or says why not", a)
		}
	}
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
			Instances: []Observed{inst("a", "new", time.Hour, died), inst("b", "new", time.Hour)}}, []string{"replace a", "start for a"}},
		{"an instance unhealthy beyond the grace is replaced", Input{Apps: map[string]Desired{"web": func() Desired { d := app(2); d.UnhealthyGrace = 30 * time.Second; return d }()},
			Instances: []Observed{inst("a", "new", time.Hour, unhealthy, func(o *Observed) { o.UnhealthySince = now.Add(-time.Minute) }), inst("b", "new", time.Hour)}},
			[]string{"replace a", "start for a"}},
		{"an instance unhealthy within the grace is left to recover", Input{Apps: map[string]Desired{"web": func() Desired { d := app(2); d.UnhealthyGrace = 30 * time.Second; return d }()},
			Instances: []Observed{inst("a", "new", time.Hour, unhealthy, func(o *Observed) { o.UnhealthySince = now.Add(-10 * time.Second) }), inst("b", "new", time.Hour)}},
			[]string{}},
		{"a vanished container (stale record) is replaced", Input{Apps: map[string]Desired{"web": app(1)},
			Instances: []Observed{inst("a", "new", time.Hour, gone)}}, []string{"replace a", "start for a"}},
		{"a crash-looping app trips the breaker", Input{Apps: map[string]Desired{"web": app(2)},
			Instances: []Observed{inst("a", "new", time.Hour, died), inst("b", "new", time.Hour)},
			Failures:  []Failure{{App: "web", At: now.Add(-3 * time.Minute)}, {App: "web", At: now.Add(-2 * time.Minute)}, {App: "web", At: now.Add(-time.Minute)}}},
			[]string{"trip_breaker"}},
		{"after backoff_max the breaker lets one attempt through", Input{Apps: map[string]Desired{"web": app(3)},
			Instances: []Observed{inst("a", "new", time.Hour, died), inst("b", "new", time.Hour, died)},
			Failures:  []Failure{{App: "web", At: now.Add(-9 * time.Minute)}, {App: "web", At: now.Add(-8 * time.Minute)}, {App: "web", At: now.Add(-6 * time.Minute)}}},
			[]string{"replace a", "replace b", "start for a"}},
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
			[]string{"replace a", "start for a"}},
		{"restarts outside the window do not count", Input{Apps: map[string]Desired{"web": app(1)},
			Instances: []Observed{inst("a", "new", time.Hour, died)},
			Failures:  []Failure{{App: "web", At: now.Add(-time.Hour)}, {App: "web", At: now.Add(-time.Hour)}, {App: "web", At: now.Add(-time.Hour)}}},
			[]string{"replace a", "start for a"}},
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
			Instances: []Observed{inst("a", "new", time.Hour), inst("b", "new", time.Hour, func(o *Observed) { o.State, o.UpdatedAt = msg.StateDraining, now })}},
			[]string{"stop a"}},
		{"a draining instance of a deleted app is removed once drained", Input{Apps: map[string]Desired{"web": func() Desired { d := app(2); d.Deleted = true; return d }()},
			Instances: []Observed{inst("b", "new", time.Hour, draining(time.Second), func(o *Observed) { o.Drained = true })}},
			[]string{"remove b"}},
		{"a drained instance is removed", Input{Apps: map[string]Desired{"web": app(1)},
			Instances: []Observed{inst("a", "new", time.Hour), inst("b", "new", time.Hour, draining(time.Second), func(o *Observed) { o.Drained = true })}},
			[]string{"remove b"}},
		{"a draining instance waits for the agents within the drain time", Input{Apps: map[string]Desired{"web": app(1)},
			Instances: []Observed{inst("a", "new", time.Hour), inst("b", "new", time.Hour, draining(time.Second))}},
			[]string{}},
		{"a draining instance is removed when the drain time is up", Input{Apps: map[string]Desired{"web": app(1)},
			Instances: []Observed{inst("a", "new", time.Hour), inst("b", "new", time.Hour, draining(11*time.Second))}},
			[]string{"remove b"}},
		{"a draining instance still in some nginx counts toward max_surge", Input{Apps: map[string]Desired{"web": app(2)},
			Instances: []Observed{inst("o1", "old", time.Hour), inst("o2", "old", time.Hour, draining(time.Second)), inst("n1", "new", time.Minute)}},
			[]string{}},
		{"a drained instance no longer counts toward max_surge", Input{Apps: map[string]Desired{"web": app(2)},
			Instances: []Observed{inst("o1", "old", time.Hour), inst("o2", "old", time.Hour, draining(time.Second), func(o *Observed) { o.Drained = true }), inst("n1", "new", time.Minute)}},
			[]string{"remove o2", "start"}},
		{"a start that outlived the start timeout is replaced", Input{Apps: map[string]Desired{"web": app(1)}, StartTimeout: time.Minute,
			Instances: []Observed{inst("a", "new", 2*time.Minute, starting, func(o *Observed) { o.UpdatedAt = now.Add(-2 * time.Minute) })}},
			[]string{"replace a", "start for a"}},
		{"a start of an earlier term is replaced at once", Input{Apps: map[string]Desired{"web": app(1)}, StartTimeout: time.Minute, Term: 3,
			Instances: []Observed{inst("a", "new", time.Second, starting, func(o *Observed) { o.UpdatedAt, o.Term = now.Add(-time.Second), 2 })}},
			[]string{"replace a", "start for a"}},
		{"a start of this term waits for its timeout", Input{Apps: map[string]Desired{"web": app(1)}, StartTimeout: time.Minute, Term: 3,
			Instances: []Observed{inst("a", "new", time.Second, starting, func(o *Observed) { o.UpdatedAt, o.Term = now.Add(-time.Second), 3 })}},
			[]string{}},
		{"a rollout whose new instance missed healthy_deadline rolls back", Input{Apps: map[string]Desired{"web": rollback(app(2))},
			Instances: []Observed{inst("o1", "old", time.Hour), inst("o2", "old", time.Hour), inst("n1", "new", time.Minute, unknown)}},
			[]string{"roll_back n1"}},
		{"without auto_rollback a late instance stops the rollout", Input{Apps: map[string]Desired{"web": func() Desired { d := rollback(app(2)); d.AutoRollback = false; return d }()},
			Instances: []Observed{inst("o1", "old", time.Hour), inst("o2", "old", time.Hour), inst("n1", "new", time.Minute, unknown)}},
			[]string{"fail_rollout n1"}},
		{"a late instance outside a rollout is not a rollback", Input{Apps: map[string]Desired{"web": rollback(app(2))},
			Instances: []Observed{inst("n0", "new", time.Hour), inst("n1", "new", time.Minute, unknown)}},
			[]string{}},
		{"instances of an unknown app stop", Input{Instances: []Observed{inst("a", "new", time.Hour)}}, []string{"stop a"}},
		{"unknown health neither counts as available nor blocks a scale-up", Input{Apps: map[string]Desired{"web": app(2)},
			Instances: []Observed{inst("a", "new", time.Hour, unknown)}}, []string{"start"}},
		{"a dead instance beyond the count is removed, and nothing else stops", Input{Apps: map[string]Desired{"web": app(2)},
			Instances: []Observed{inst("a", "new", time.Hour, died), inst("b", "new", time.Hour), inst("c", "new", time.Hour)}},
			[]string{"remove a"}},
		{"a crash at the rollout's surge: removed, its replacement waits", Input{Apps: map[string]Desired{"web": app(2)},
			Instances: []Observed{inst("o1", "old", time.Hour), inst("o2", "old", time.Hour, draining(time.Second)),
				inst("n1", "new", time.Minute), inst("n2", "new", time.Minute, died)}},
			[]string{"replace n2"}},
		{"a dead instance during a rollout is replaced by the new spec", Input{Apps: map[string]Desired{"web": app(2)},
			Instances: []Observed{inst("o1", "old", time.Hour, died), inst("o2", "old", time.Hour)}},
			[]string{"replace o1", "start for o1", "start"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			tt.in.Now = now
			got := Plan(tt.in).Actions
			require.Equal(t, tt.want, summary(got), "%v", got)
			for _, a := range got {
				require.NotEmpty(t, a.Reason, "every action says why")
			}
			requirePaired(t, got)
		})
	}
}

func TestOOMReasonSuggestsMemory(t *testing.T) {
	t.Parallel()
	got := Plan(Input{Apps: map[string]Desired{"web": app(1)}, Now: now,
		Instances: []Observed{inst("a", "new", time.Hour, died, func(o *Observed) { o.OOMKilled = true })}}).Actions
	require.Len(t, got, 2)
	require.Equal(t, Replace, got[0].Kind)
	require.Contains(t, got[0].Reason, "consider raising resources.memory")
	require.Equal(t, Start, got[1].Kind)
	require.Equal(t, "a", got[1].Replaces)
	require.Equal(t, got[0].Reason, got[1].Reason, "the successor carries why")
}

func TestHoldUntil(t *testing.T) {
	t.Parallel()
	d := app(1)
	d.BackoffInitial, d.BackoffMax = 5*time.Second, time.Minute
	last := now.Add(-time.Second)
	got := Plan(Input{Apps: map[string]Desired{"web": d}, Now: now,
		Failures: []Failure{{App: "web", At: now.Add(-30 * time.Second)}, {App: "web", At: last}}}).Actions
	require.Len(t, got, 1)
	require.Equal(t, Hold, got[0].Kind)
	require.Equal(t, last.Add(10*time.Second), got[0].Until, "the second restart waits twice the initial backoff")
}

// Planning again from the state the actions lead to does nothing more.
// versionFails are n failures of the desired spec ("new") at generation
// gen, the newest a second ago.
func versionFails(n int, gen int64) []Failure {
	out := make([]Failure, 0, n)
	for i := range n {
		out = append(out, Failure{App: "web", At: now.Add(-time.Duration(n-i) * time.Second), Generation: gen, SpecHash: "new",
			Reason: fmt.Sprintf("its container exited with code %d", i+1)})
	}
	return out
}

// old is an instance of the generation before, which serves.
func old(id string) Observed {
	return inst(id, "old", time.Hour, func(o *Observed) { o.Generation = 1 })
}

// A rollout whose new instances crash at start (or cannot be pulled,
// created or started) fails at its third failure, within the restart
// backoff of its first attempts, long before the breaker (5 restarts).
func TestPlanFailedRollout(t *testing.T) {
	t.Parallel()
	d := func(auto bool) Desired {
		d := app(2)
		d.AutoRollback, d.RestartAttempts, d.BackoffInitial = auto, 5, 5*time.Second
		return d
	}
	t.Run("three failures roll back to the generation that serves, naming the last cause", func(t *testing.T) {
		t.Parallel()
		got := Plan(Input{Apps: map[string]Desired{"web": d(true)}, Instances: []Observed{old("o1"), old("o2")}, Failures: versionFails(3, 2), Now: now}).Actions
		require.Equal(t, []string{"roll_back"}, summary(got))
		require.Equal(t, int64(1), got[0].Target)
		require.Equal(t, int64(2), got[0].Generation)
		require.Equal(t, "generation 2 failed: 3 of its instances failed within 10m0s, the last because its container exited with code 3", got[0].Reason)
	})
	t.Run("two failures wait out the backoff", func(t *testing.T) {
		t.Parallel()
		got := Plan(Input{Apps: map[string]Desired{"web": d(true)}, Instances: []Observed{old("o1"), old("o2")}, Failures: versionFails(2, 2), Now: now}).Actions
		require.Equal(t, []string{"hold"}, summary(got))
	})
	t.Run("the budget allows fewer", func(t *testing.T) {
		t.Parallel()
		dd := d(true)
		dd.RestartAttempts = 2
		got := Plan(Input{Apps: map[string]Desired{"web": dd}, Instances: []Observed{old("o1"), old("o2")}, Failures: versionFails(2, 2), Now: now}).Actions
		require.Equal(t, []string{"roll_back"}, summary(got))
	})
	t.Run("failures of an earlier generation of the same spec do not count: applied again, it is tried again", func(t *testing.T) {
		t.Parallel()
		got := Plan(Input{Apps: map[string]Desired{"web": d(true)}, Instances: []Observed{old("o1"), old("o2")}, Failures: versionFails(3, 1), Now: now}).Actions
		require.Equal(t, []string{"start"}, summary(got))
	})
	t.Run("without auto_rollback the rollout stops and says why", func(t *testing.T) {
		t.Parallel()
		got := Plan(Input{Apps: map[string]Desired{"web": d(false)}, Instances: []Observed{old("o1"), old("o2")}, Failures: versionFails(3, 2), Now: now}).Actions
		require.Equal(t, []string{"fail_rollout"}, summary(got))
		require.Contains(t, got[0].Reason, "the last because its container exited with code 3")
	})
	t.Run("a failed rollout stays stopped: nothing of its spec starts, the old instances serve", func(t *testing.T) {
		t.Parallel()
		in := Input{Apps: map[string]Desired{"web": d(false)}, Instances: []Observed{old("o1"), old("o2"), inst("n1", "new", time.Second, starting)},
			FailedRollouts: map[string]Rollout{"web": {Generation: 2, SpecHash: "new"}}, Now: now}
		got := Plan(in).Actions
		require.Equal(t, []string{"hold"}, summary(got))
		require.Contains(t, got[0].Reason, "the rollout of generation 2 failed")
		in.Instances = append(in.Instances[:2:2], old("o3"))
		in.Apps["web"] = func() Desired { dd := d(false); dd.Replicas = 4; return dd }()
		require.Equal(t, []string{"hold"}, summary(Plan(in).Actions), "no scale-up with the failed spec either")
		in.FailedRollouts["web"] = Rollout{Generation: 1, SpecHash: "new"}
		require.Equal(t, []string{"start", "start"}, summary(Plan(in).Actions), "the same spec at a new generation is tried again")
	})
	t.Run("a failed rollout of another spec holds nothing", func(t *testing.T) {
		t.Parallel()
		got := Plan(Input{Apps: map[string]Desired{"web": d(false)}, Instances: []Observed{old("o1"), old("o2")},
			FailedRollouts: map[string]Rollout{"web": {Generation: 2, SpecHash: "older"}}, Now: now}).Actions
		require.Equal(t, []string{"start"}, summary(got))
	})
	t.Run("a new generation starts with a fresh restart budget", func(t *testing.T) {
		t.Parallel()
		// Generation 2's breaker is open (5 restarts in the window); the
		// fix, generation 3, starts at once.
		fixed := d(true)
		fixed.Generation = 3
		got := Plan(Input{Apps: map[string]Desired{"web": fixed}, Instances: []Observed{old("o1"), old("o2")}, Failures: versionFails(5, 2), Now: now}).Actions
		require.Equal(t, []string{"start"}, summary(got))
		stuck := d(true)
		stuck.AutoRollback = false
		got = Plan(Input{Apps: map[string]Desired{"web": stuck}, Instances: []Observed{inst("n1", "new", time.Hour, died)}, Failures: versionFails(5, 2), Now: now}).Actions
		require.Equal(t, []string{"trip_breaker"}, summary(got), "while the generation that crashed keeps its own")
	})
	t.Run("a dead container's exit code is its reason", func(t *testing.T) {
		t.Parallel()
		got := Plan(Input{Apps: map[string]Desired{"web": app(1)}, Instances: []Observed{inst("n1", "new", time.Hour, died, func(o *Observed) { o.Exited, o.ExitCode = true, 3 })}, Now: now}).Actions
		require.Equal(t, []string{"replace n1", "start for n1"}, summary(got))
		require.Equal(t, "its container exited with code 3", got[0].Reason)
	})
	t.Run("an instance replaced for its health names its last probe", func(t *testing.T) {
		t.Parallel()
		d := app(2)
		d.UnhealthyGrace = 5 * time.Second
		got := Plan(Input{Apps: map[string]Desired{"web": d}, Instances: []Observed{inst("a", "new", time.Hour),
			inst("b", "new", time.Hour, unhealthy, func(o *Observed) {
				o.UnhealthySince, o.Probe = now.Add(-6*time.Second), "tcp_refused: connect: connection refused"
			})}, Now: now}).Actions
		require.Equal(t, []string{"replace b", "start for b"}, summary(got))
		require.Equal(t, "unhealthy for 6s (grace 5s); its last probe: tcp_refused: connect: connection refused", got[0].Reason)
	})
	t.Run("a late instance's rollback names its last probe failure", func(t *testing.T) {
		t.Parallel()
		got := Plan(Input{Apps: map[string]Desired{"web": rollback(app(2))}, Instances: []Observed{old("o1"), old("o2"),
			inst("n1", "new", time.Minute, unhealthy, func(o *Observed) { o.Probe = "status: GET /healthz returned 503" })}, Now: now}).Actions
		require.Equal(t, []string{"roll_back n1"}, summary(got))
		require.Equal(t, int64(1), got[0].Target)
		require.Contains(t, got[0].Reason, "its last probe: status: GET /healthz returned 503")
	})
}

func TestPlanIsIdempotent(t *testing.T) {
	t.Parallel()
	in := Input{Apps: map[string]Desired{"web": app(3)}, Now: now, Instances: []Observed{inst("a", "new", time.Hour)}}
	for _, a := range Plan(in).Actions {
		require.Equal(t, Start, a.Kind)
		in.Instances = append(in.Instances, inst(fmt.Sprint("n", len(in.Instances)), "new", 0, starting))
	}
	require.Empty(t, Plan(in).Actions)
}

// rollout simulates a rolling update of replicas old instances against
// the planner, planning at every wake it asks for and at every outside
// event: a container starts in start, turns healthy after healthy, and an
// lbagent confirms a drain after confirm. It checks the invariants at each
// plan (never above replicas + max_surge counting draining instances still
// in nginx, never below replicas - max_unavailable serving) and returns
// how long the rollout took.
func rollout(t *testing.T, d Desired, start, healthy, confirm time.Duration) time.Duration {
	t.Helper()
	type event struct {
		at time.Time
		do func()
	}
	var insts []Observed
	for i := range d.Replicas {
		insts = append(insts, inst(fmt.Sprint("o", i), "old", time.Hour))
	}
	var events []event
	clock, started := now, 0
	find := func(id string) *Observed {
		for i := range insts {
			if insts[i].ID == id {
				return &insts[i]
			}
		}
		return nil
	}
	for step := 0; step < 200; step++ {
		res := Plan(Input{Apps: map[string]Desired{"web": d}, Instances: insts, Now: clock})
		for _, a := range res.Actions {
			switch a.Kind {
			case Start:
				started++
				id := fmt.Sprint("n", started)
				insts = append(insts, Observed{ID: id, App: "web", SpecHash: "new", State: msg.StateStarting, Health: msg.StatusUnknown,
					CreatedAt: clock, UpdatedAt: clock, ContainerID: "c" + id})
				events = append(events, event{clock.Add(start), func() {
					o := find(id)
					o.State, o.ContainerRunning = msg.StateRunning, true
				}}, event{clock.Add(start + healthy), func() {
					o := find(id)
					o.Health, o.HealthySince = msg.StatusHealthy, o.CreatedAt.Add(start+healthy)
				}})
			case Stop:
				o := find(a.Instance)
				o.State, o.UpdatedAt = msg.StateDraining, clock
				events = append(events, event{clock.Add(confirm), func() { find(a.Instance).Drained = true }})
			case Remove:
				kept := insts[:0]
				for _, o := range insts {
					if o.ID != a.Instance {
						kept = append(kept, o)
					}
				}
				insts = kept
			default:
				t.Fatalf("unexpected %v", a)
			}
		}
		total, serving, fresh, old := 0, 0, 0, 0
		for _, o := range insts {
			if active(o) || o.State == msg.StateDraining && !o.Drained {
				total++
			}
			if available(o, 0, clock) {
				serving++
			}
			if o.SpecHash == "new" && active(o) {
				fresh++
			}
			if o.SpecHash == "old" {
				old++
			}
		}
		require.LessOrEqual(t, total, d.Replicas+d.MaxSurge, "at %s", clock.Sub(now))
		require.GreaterOrEqual(t, serving, d.Replicas-d.MaxUnavailable, "at %s", clock.Sub(now))
		if fresh == d.Replicas && old == 0 {
			return clock.Sub(now)
		}
		if len(res.Actions) > 0 {
			continue // plan again from the state the actions led to, at once
		}
		// Sleep until the next outside event or the planner's wake, as the controller does.
		next := res.Wake
		for _, e := range events {
			if e.at.After(clock) && (next.IsZero() || e.at.Before(next)) {
				next = e.at
			}
		}
		require.False(t, next.IsZero(), "the rollout is stuck at %s: nothing wakes the planner", clock.Sub(now))
		clock = next
		for _, e := range events {
			if !e.at.After(clock) {
				e.do()
			}
		}
		kept := events[:0]
		for _, e := range events {
			if e.at.After(clock) {
				kept = append(kept, e)
			}
		}
		events = kept
	}
	t.Fatal("the rollout never completed")
	return 0
}

// A rollout proceeds at the speed of health: each batch takes start +
// health + min_healthy_time and the drain of the last old instance, with
// no resync in between, and a draining instance stops holding back the
// next surge once the agents confirm it.
func TestRolloutPacing(t *testing.T) {
	t.Parallel()
	start, healthy, confirm := 300*time.Millisecond, 2*time.Second, 200*time.Millisecond
	for _, tt := range []struct {
		replicas, surge, unavailable int
	}{{3, 1, 0}, {10, 1, 0}, {10, 3, 0}, {4, 0, 1}, {4, 2, 1}} {
		t.Run(fmt.Sprintf("%d replicas, surge %d, unavailable %d", tt.replicas, tt.surge, tt.unavailable), func(t *testing.T) {
			t.Parallel()
			d := app(tt.replicas)
			d.MaxSurge, d.MaxUnavailable, d.MinHealthyTime = tt.surge, tt.unavailable, 2*time.Second
			took := rollout(t, d, start, healthy, confirm)
			batch := max(tt.surge, tt.unavailable)
			batches := (tt.replicas + batch - 1) / batch
			floor := time.Duration(batches) * (start + healthy + d.MinHealthyTime)
			// Each batch also waits for one confirmed drain before the next surge.
			require.LessOrEqual(t, took, floor+time.Duration(batches)*confirm, "took %s, floor %s", took, floor)
			t.Logf("took %s (floor %s)", took, floor)
		})
	}
}

func TestWake(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		in   Input
		want time.Duration // from now; 0: no wake
	}{
		{"nothing pending", Input{Apps: map[string]Desired{"web": app(1)}, Instances: []Observed{inst("a", "new", time.Hour)}}, 0},
		{"min_healthy_time reached", Input{Apps: map[string]Desired{"web": app(2)},
			Instances: []Observed{inst("o1", "old", time.Hour), inst("o2", "old", time.Hour), inst("n1", "new", time.Minute, freshHealth)}}, 4 * time.Second},
		{"healthy_deadline", Input{Apps: map[string]Desired{"web": rollback(app(2))},
			Instances: []Observed{inst("o1", "old", time.Hour), inst("o2", "old", time.Hour), inst("n1", "new", 10*time.Second, unknown)}}, 20 * time.Second},
		{"end of a drain", Input{Apps: map[string]Desired{"web": app(1)},
			Instances: []Observed{inst("a", "new", time.Hour), inst("b", "new", time.Hour, draining(3*time.Second))}}, 7 * time.Second},
		{"start timeout", Input{Apps: map[string]Desired{"web": app(1)}, StartTimeout: time.Minute,
			Instances: []Observed{inst("a", "new", 0, starting, func(o *Observed) { o.UpdatedAt = now.Add(-20 * time.Second) })}}, 40 * time.Second},
		{"unhealthy grace", Input{Apps: map[string]Desired{"web": func() Desired { d := app(2); d.UnhealthyGrace = 30 * time.Second; return d }()},
			Instances: []Observed{inst("a", "new", time.Hour, unhealthy, func(o *Observed) { o.UnhealthySince = now.Add(-10 * time.Second) }), inst("b", "new", time.Hour)}}, 20 * time.Second},
		{"end of a restart backoff", Input{Apps: map[string]Desired{"web": func() Desired { d := app(2); d.BackoffInitial = 10 * time.Second; return d }()},
			Instances: []Observed{inst("a", "new", time.Hour, died), inst("b", "new", time.Hour)},
			Failures:  []Failure{{App: "web", At: now.Add(-3 * time.Second)}}}, 7 * time.Second},
		{"a tripped breaker half-opens", Input{Apps: map[string]Desired{"web": app(2)},
			Instances: []Observed{inst("a", "new", time.Hour, died), inst("b", "new", time.Hour)},
			Failures:  []Failure{{App: "web", At: now.Add(-3 * time.Minute)}, {App: "web", At: now.Add(-2 * time.Minute)}, {App: "web", At: now.Add(-time.Minute)}}}, 4 * time.Minute},
		{"the earliest of several", Input{Apps: map[string]Desired{"web": app(2)},
			Instances: []Observed{inst("o1", "old", time.Hour), inst("o2", "old", time.Hour, draining(9*time.Second)), inst("n1", "new", time.Minute, freshHealth)}}, time.Second},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			tt.in.Now = now
			got := Plan(tt.in)
			if tt.want == 0 {
				require.True(t, got.Wake.IsZero(), "wake %s", got.Wake.Sub(now))
				return
			}
			require.Equal(t, now.Add(tt.want), got.Wake, "wake %s", got.Wake.Sub(now))
		})
	}
}

func TestActionString(t *testing.T) {
	t.Parallel()
	require.True(t, strings.HasPrefix(Action{Kind: Stop, App: "web", Instance: "a", Reason: "why"}.String(), "stop web/a: why"))
}
