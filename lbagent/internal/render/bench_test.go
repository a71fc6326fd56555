package render

import (
	"fmt"
	"testing"

	"github.com/berthhq/berth/lbagent/internal/state"
	"github.com/berthhq/berth/templates"
)

// BenchmarkRender1000x10 renders 1000 apps of 10 servers each, the size
// the lbagent benchmark (bench/lbagent) runs end to end.
func BenchmarkRender1000x10(b *testing.B) {
	r, err := Load(templates.FS)
	if err != nil {
		b.Fatal(err)
	}
	snap := state.Snapshot{}
	for i := range 1000 {
		a := app(fmt.Sprintf("app-%04d", i), 10, fmt.Sprintf("app-%04d.bench", i))
		snap.Apps = append(snap.Apps, a)
	}
	b.ReportAllocs()
	for b.Loop() {
		d, _ := Layout(snap, 1, opts)
		if _, err := r.Render(d, true); err != nil {
			b.Fatal(err)
		}
	}
}
