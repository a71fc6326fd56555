package reconcile

import (
	"fmt"
	"testing"
	"time"
)

// BenchmarkPlan plans 1000 apps of 10 instances, half of them mid-rollout.
func BenchmarkPlan(b *testing.B) {
	in := Input{Apps: map[string]Desired{}, Now: now}
	for i := range 1000 {
		name := fmt.Sprintf("app-%04d", i)
		d := app(10)
		d.App = name
		in.Apps[name] = d
		for j := range 10 {
			hash := "new"
			if i%2 == 0 && j < 5 {
				hash = "old"
			}
			o := inst(fmt.Sprintf("i%d", j), hash, time.Duration(j)*time.Minute)
			o.App = name
			in.Instances = append(in.Instances, o)
		}
	}
	b.ReportAllocs()
	for b.Loop() {
		Plan(in)
	}
}

// BenchmarkPlanFailures plans apps that each have a restart history (5
// failures in the window): planning grows with the apps, not with apps ×
// the whole history.
func BenchmarkPlanFailures(b *testing.B) {
	for _, apps := range []int{1000, 10000} {
		b.Run(fmt.Sprintf("apps=%d", apps), func(b *testing.B) {
			in := Input{Apps: map[string]Desired{}, Now: now}
			for i := range apps {
				name := fmt.Sprintf("app-%05d", i)
				d := app(2)
				d.App = name
				in.Apps[name] = d
				for j := range 2 {
					o := inst(fmt.Sprintf("i%d", j), "new", time.Hour)
					o.App = name
					in.Instances = append(in.Instances, o)
				}
				for j := range 5 {
					in.Failures = append(in.Failures, Failure{App: name, At: now.Add(-time.Duration(j+1) * time.Hour), Generation: 2, SpecHash: "new"})
				}
			}
			b.ReportAllocs()
			for b.Loop() {
				Plan(in)
			}
		})
	}
}

// BenchmarkPlanReleases plans apps with a release task whose new version's
// release runs (and an earlier one that succeeded): each app reads its own
// release records, so planning grows with the apps, not apps × records.
func BenchmarkPlanReleases(b *testing.B) {
	for _, apps := range []int{1000, 10000} {
		b.Run(fmt.Sprintf("apps=%d", apps), func(b *testing.B) {
			in := Input{Apps: map[string]Desired{}, Now: now}
			for i := range apps {
				name := fmt.Sprintf("app-%05d", i)
				d := app(2)
				d.App, d.Release, d.ReleaseHash, d.Generation = name, true, "new", 2
				in.Apps[name] = d
				for j := range 2 {
					o := inst(fmt.Sprintf("i%d", j), "old", time.Hour)
					o.App = name
					in.Instances = append(in.Instances, o)
				}
				in.Releases = append(in.Releases, Release{App: name, Generation: 1, SpecHash: "old", State: ReleaseSucceeded},
					Release{App: name, Generation: 2, SpecHash: "new", State: ReleaseRunning, Watched: true})
			}
			b.ReportAllocs()
			for b.Loop() {
				Plan(in)
			}
		})
	}
}

// BenchmarkPlanScale plans 1,000 and 10,000 apps of 3 instances each on
// one host (issue 30): every app steady but one in 10 mid-rollout (one
// instance of the old spec) and one in 50 with a dead container. It
// reports ns/app: constant from one size to the other when planning is
// linear in the apps.
func BenchmarkPlanScale(b *testing.B) {
	for _, apps := range []int{1000, 10000} {
		b.Run(fmt.Sprintf("apps=%d", apps), func(b *testing.B) {
			in := Input{Apps: map[string]Desired{}, Hosts: map[string]Host{"": {State: HostUp}}, Term: 1, Now: now}
			for i := range apps {
				name := fmt.Sprintf("app%06d", i)
				d := app(3)
				d.App = name
				in.Apps[name] = d
				for j := range 3 {
					hash := "new"
					if i%10 == 0 && j == 2 {
						hash = "old"
					}
					o := inst(fmt.Sprintf("%s-%d", name, j), hash, time.Duration(j+1)*time.Hour)
					if i%50 == 0 && j == 1 {
						died(&o)
					}
					o.App = name
					in.Instances = append(in.Instances, o)
				}
			}
			var actions int
			b.ReportAllocs()
			for b.Loop() {
				actions = len(Plan(in).Actions)
			}
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N)/float64(apps), "ns/app")
			b.ReportMetric(float64(actions), "actions")
		})
	}
}
