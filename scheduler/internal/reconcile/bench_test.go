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
