package render

import (
	"fmt"
	"testing"

	"github.com/berthhq/berth/common/spec"
	"github.com/berthhq/berth/lbagent/internal/state"
	"github.com/berthhq/berth/templates"
)

// BenchmarkRender1000x10 renders 1000 apps of 10 servers each, the size
// the lbagent benchmark (bench/lbagent) runs end to end.
func BenchmarkRender1000x10(b *testing.B) {
	r, snap := benchApps(b, nil)
	b.ReportAllocs()
	for b.Loop() {
		d, _ := Layout(snap, 1, opts)
		if _, err := r.Render(d, true); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkRender1000x5Rules renders 1000 apps of 10 servers with 5 rules
// each (exact, regex, a rate-limited prefix with response headers, and
// two plain prefixes): issue 17's size. Its floor is BenchmarkRender1000x10,
// the same apps with only their root path. "warm" is every render after
// the first, as lbagent renders while most records stay the same; "cold"
// forgets the route bodies first, as the first render after a start.
func BenchmarkRender1000x5Rules(b *testing.B) {
	r, snap := benchApps(b, func(a *state.App) {
		a.Spec.Routing.Rules = []spec.Rule{
			{Path: "/healthz", Match: spec.MatchExact},
			{Path: `^/img/.+\.png$`, Match: spec.MatchRegex, ResponseHeaders: map[string]string{"Cache-Control": "max-age=3600"}},
			{Path: "/api", RateLimit: &spec.RateLimit{RPS: 100, Burst: 50}, ResponseHeaders: map[string]string{"Cache-Control": "no-store", "X-Frame-Options": "DENY"}},
			{Path: "/static"},
			{Path: "/admin"},
		}
	})
	for _, cold := range []bool{false, true} {
		name := "warm"
		if cold {
			name = "cold"
		}
		b.Run(name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if cold {
					r.bodyMu.Lock()
					clear(r.bodies)
					r.bodyMu.Unlock()
					validMu.Lock()
					clear(validRegexes)
					validMu.Unlock()
				}
				d, _ := Layout(snap, 1, opts)
				if _, err := r.Render(d, true); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// benchApps loads the templates and makes 1000 apps of 10 servers each,
// each changed by with when it is set.
func benchApps(b *testing.B, with func(*state.App)) (*Renderer, state.Snapshot) {
	b.Helper()
	r, err := Load(templates.FS)
	if err != nil {
		b.Fatal(err)
	}
	snap := state.Snapshot{}
	for i := range 1000 {
		a := app(fmt.Sprintf("app-%04d", i), 10, fmt.Sprintf("app-%04d.bench", i))
		if with != nil {
			with(&a)
		}
		snap.Apps = append(snap.Apps, a)
	}
	return r, snap
}
