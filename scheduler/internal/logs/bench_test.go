package logs

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/berthhq/berth/scheduler/internal/docker"
	"github.com/berthhq/berth/scheduler/internal/store"
)

// sliceEngines hands each container's lines from memory.
type sliceEngines map[string][]docker.LogLine

func (e sliceEngines) Logs(_ context.Context, _, id string, _ docker.LogOptions, emit func(docker.LogLine) error) error {
	for _, l := range e[id] {
		if err := emit(l); err != nil {
			return err
		}
	}
	return nil
}

// BenchmarkStream is the scheduler's own cost of a read without follow:
// 4 instances of 25,000 lines of 100 bytes merged, prefixed and written,
// against its floor in the same run, the same lines written as they are
// (no channels, no merge, no prefix).
func BenchmarkStream(b *testing.B) {
	const instances, perInstance = 4, 25_000
	e := sliceEngines{}
	var insts []store.Instance
	for n := range instances {
		id := fmt.Sprintf("inst%04d", n)
		insts = append(insts, store.Instance{ID: id, ContainerID: "c" + id})
		for i := range perInstance {
			e["c"+id] = append(e["c"+id], docker.LogLine{Time: t0.Add(time.Duration(i*instances+n) * time.Millisecond), Text: strings.Repeat("x", 99)})
		}
	}
	r := &Reader{Instances: &fakeInstances{list: insts}, Engines: e}
	var floor, ours time.Duration
	for range b.N { // interleaved: a busy machine slows both
		t := time.Now()
		w := bufio.NewWriterSize(io.Discard, 32<<10)
		for _, ls := range e {
			for _, l := range ls {
				_, _ = w.WriteString(l.Text)
				_ = w.WriteByte('\n')
			}
		}
		_ = w.Flush()
		floor += time.Since(t)
		t = time.Now()
		if err := r.Stream(context.Background(), "web", Request{Tail: -1}, io.Discard, func() error { return nil }); err != nil {
			b.Fatal(err)
		}
		ours += time.Since(t)
	}
	lines := float64(instances * perInstance * b.N)
	b.ReportMetric(lines/ours.Seconds(), "lines/s")
	b.ReportMetric(lines/floor.Seconds(), "floor-lines/s")
	b.ReportMetric(ours.Seconds()/floor.Seconds(), "x-floor")
}
