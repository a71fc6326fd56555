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
