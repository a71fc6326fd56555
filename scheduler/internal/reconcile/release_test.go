package reconcile

import (
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// hour is how long an old instance has served.
const hour = time.Hour

// released is app with a release task; its release hash is "rel-new".
func released(d Desired) Desired {
	d.Release, d.ReleaseHash = true, "rel-"+d.SpecHash
	return d
}

func TestReleaseGatesANewVersion(t *testing.T) {
	t.Parallel()
	old := []Observed{inst("a", "old", hour, func(o *Observed) { o.Generation = 1 }), inst("b", "old", hour, func(o *Observed) { o.Generation = 1 })}
	run := func(state string, watched bool) []Release {
		return []Release{{App: "web", Generation: 2, SpecHash: "rel-new", State: state, Watched: watched, Reason: "release task exited with code 3"}}
	}
	tests := []struct {
		name     string
		d        Desired
		insts    []Observed
		releases []Release
		failed   map[string]Rollout
		want     []string
	}{
		{"first deploy: the release runs, nothing starts", released(app(2)), nil, nil, nil, []string{"run_release"}},
		{"new version: the release runs, no instance starts or drains", released(app(2)), old, nil, nil, []string{"run_release"}},
		{"while it runs: hold", released(app(2)), old, run(ReleaseRunning, true), nil, []string{"hold"}},
		{"succeeded: the rollout starts", released(app(2)), old, run(ReleaseSucceeded, false), nil, []string{"start"}},
		{"succeeded at an earlier generation (a restart): no new run", released(app(2)), old,
			[]Release{{App: "web", Generation: 1, SpecHash: "rel-new", State: ReleaseSucceeded}}, nil, []string{"start"}},
		{"another app's release counts for nothing", released(app(2)), old,
			[]Release{{App: "api", Generation: 2, SpecHash: "rel-new", State: ReleaseSucceeded}}, nil, []string{"run_release"}},
		{"the same version's release runs for an earlier generation (a restart meanwhile): waited for, not run beside it", released(app(2)), old,
			[]Release{{App: "web", Generation: 1, SpecHash: "rel-new", State: ReleaseRunning, Watched: true}}, nil, []string{"hold"}},
		{"another version's release runs: waited for too (one release of an app at a time)", released(app(2)), old,
			[]Release{{App: "web", Generation: 1, SpecHash: "rel-old", State: ReleaseRunning, Watched: true}}, nil, []string{"hold"}},
		{"another app's release runs: this one runs its own", released(app(2)), old,
			[]Release{{App: "api", Generation: 1, SpecHash: "rel-new", State: ReleaseRunning, Watched: true}}, nil, []string{"run_release"}},
		{"a failed release of an earlier generation: this one runs its own", released(app(2)), old,
			[]Release{{App: "web", Generation: 1, SpecHash: "rel-new", State: ReleaseFailed}}, nil, []string{"run_release"}},
		{"failed with auto_rollback: rolled back", rollback(released(app(2))), old, run(ReleaseFailed, false), nil, []string{"roll_back"}},
		{"failed without: the rollout fails", released(app(2)), old, run(ReleaseFailed, false), nil, []string{"fail_rollout"}},
		{"failed, recorded: holds (the old ones serve)", released(app(2)), old, run(ReleaseFailed, false),
			map[string]Rollout{"web": {Generation: 2, SpecHash: "new"}}, []string{"hold"}},
		{"first deploy failed with auto_rollback: nothing to go back to, fails", rollback(released(app(2))), nil, run(ReleaseFailed, false), nil, []string{"fail_rollout"}},
		{"first deploy failed, recorded: holds", rollback(released(app(2))), nil, run(ReleaseFailed, false),
			map[string]Rollout{"web": {Generation: 2, SpecHash: "new"}}, []string{"hold"}},
		{"an instance of the spec runs already (release block added): no release", released(app(3)), []Observed{inst("a", "new", hour)}, nil, nil, []string{"start", "start"}},
		{"no release task: the rollout starts", app(2), old, nil, nil, []string{"start"}},
		{"zero replicas: nothing to release", released(app(0)), nil, nil, nil, []string{}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			in := Input{Apps: map[string]Desired{"web": tt.d}, Instances: tt.insts, Releases: tt.releases, FailedRollouts: tt.failed, Now: now, Term: 2}
			res := Plan(in)
			require.Equal(t, tt.want, summary(res.Actions))
			for _, a := range res.Actions {
				switch a.Kind {
				case RollBack:
					require.Equal(t, int64(1), a.Target, "back to the generation that serves")
					require.Equal(t, "generation 2 failed: release task exited with code 3", a.Reason)
				case FailRollout:
					require.Equal(t, "generation 2 failed: release task exited with code 3", a.Reason)
				case RunRelease:
					require.Equal(t, int64(2), a.Generation)
				}
			}
			again := Plan(in)
			require.Equal(t, res.Actions, again.Actions, "planning again from the same state repeats nothing new")
		})
	}
}

// TestReleaseOfAnEarlierLeader: a running release no one here waits on is
// adopted where its container is, lost where it is not, and never run again.
func TestReleaseOfAnEarlierLeader(t *testing.T) {
	t.Parallel()
	old := []Observed{inst("a", "old", hour, func(o *Observed) { o.Generation = 1 })}
	rel := Release{App: "web", Generation: 2, SpecHash: "rel-new", State: ReleaseRunning, Host: "h1", ContainerID: "r1"}
	orphan := Orphan{ContainerID: "r1", Host: "h1", App: "web", Instance: "release-2", SpecHash: "new", Generation: 2, Running: true, Release: true}
	tests := []struct {
		name    string
		rel     Release
		orphans []Orphan
		host    Host
		want    []string
	}{
		{"its container runs: adopted", rel, []Orphan{orphan}, Host{State: HostUp}, []string{"hold", "adopt_release"}},
		{"its container exited: adopted (its exit code is read)", rel, []Orphan{func() Orphan { o := orphan; o.Running = false; return o }()}, Host{State: HostUp}, []string{"hold", "adopt_release"}},
		{"no id recorded (its leader died creating it): found by its labels", func() Release { r := rel; r.ContainerID = ""; return r }(), []Orphan{orphan}, Host{State: HostUp}, []string{"hold", "adopt_release"}},
		{"gone from a host that answers: lost", rel, nil, Host{State: HostUp}, []string{"hold", "lose_release"}},
		{"its host is down: lost", rel, nil, Host{State: HostDown}, []string{"hold", "lose_release"}},
		{"its host is not listed yet: wait", rel, nil, Host{State: HostUnknown}, []string{"hold"}},
		{"its host does not answer: wait", rel, []Orphan{orphan}, Host{State: HostUnreachable}, []string{"hold"}},
		{"watched here: only hold", func() Release { r := rel; r.Watched = true; return r }(), []Orphan{orphan}, Host{State: HostUp}, []string{"hold"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			in := Input{Apps: map[string]Desired{"web": released(app(1))}, Instances: old, Orphans: tt.orphans, Releases: []Release{tt.rel},
				Hosts: map[string]Host{"h1": tt.host}, Now: now, Term: 3}
			res := Plan(in)
			require.Equal(t, tt.want, summary(res.Actions), "never a run_release, never a remove_orphan of its container")
			for _, a := range res.Actions {
				if a.Kind == AdoptRelease {
					require.Equal(t, "r1", a.ContainerID)
					require.Equal(t, "h1", a.Host)
				}
				if a.Kind == LoseRelease {
					require.Contains(t, a.Reason, "release container lost")
				}
			}
		})
	}
}

// TestReleaseContainerLeftBehind: a release container whose release ended
// is an orphan, removed; it is never adopted as an instance.
func TestReleaseContainerLeftBehind(t *testing.T) {
	t.Parallel()
	in := Input{Apps: map[string]Desired{"web": released(app(1))},
		Orphans:  []Orphan{{ContainerID: "r1", App: "web", Instance: "release-2", SpecHash: "new", Generation: 2, Running: true, Release: true}},
		Releases: []Release{{App: "web", Generation: 2, SpecHash: "rel-new", State: ReleaseSucceeded}}, Now: now}
	require.Equal(t, []string{"start", "remove_orphan release-2"}, summary(Plan(in).Actions))
}
