package view

import (
	"maps"
	"runtime"
	"slices"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/berthhq/berth/common/bus"
	"github.com/berthhq/berth/common/msg"
	"github.com/stretchr/testify/require"
)

func TestTable(t *testing.T) {
	t.Parallel()
	var notified atomic.Int32
	tb := NewTable(InstanceTerm, func() { notified.Add(1) })
	require.False(t, tb.Loaded())
	h := tb.Handler()
	inst := func(id string, term uint64) *msg.Instance { return &msg.Instance{ID: id, Term: term} }

	h.Snapshot([]bus.Event[*msg.Instance]{{Key: "w.a", Value: inst("a", 3)}, {Key: "w.b", Value: inst("b", 3)}}, 10)
	require.True(t, tb.Loaded())
	rows, rev := tb.Rows()
	require.Len(t, rows, 2)
	require.Equal(t, uint64(10), rev)

	h.Update(bus.Event[*msg.Instance]{Key: "w.a", Revision: 11, Value: inst("a", 2)})
	rows, rev = tb.Rows()
	require.Equal(t, uint64(3), rows["w.a"].Term, "a deposed leader's write is dropped")
	require.Equal(t, uint64(11), rev, "the revision still advances")
	require.Equal(t, uint64(1), tb.Fenced())

	h.Update(bus.Event[*msg.Instance]{Key: "w.b", Revision: 12, Op: bus.OpDelete})
	h.Update(bus.Event[*msg.Instance]{Key: "w.c", Revision: 13, Value: inst("c", 4)})
	tb.Read(func(rows map[string]*msg.Instance, rev uint64) {
		require.Equal(t, []string{"w.a", "w.c"}, slices.Sorted(maps.Keys(rows)))
		require.Equal(t, uint64(13), rev)
	})
	require.Equal(t, int32(3), notified.Load(), "snapshot and each applied change notify; a fenced write does not")

	rows["w.z"] = nil // Rows is a copy
	fresh, _ := tb.Rows()
	require.NotContains(t, fresh, "w.z")
}

func TestTableForgedTerm(t *testing.T) {
	t.Parallel()
	clock := time.Unix(1_700_000_000, 0)
	tb := NewTable(InstanceTerm, nil)
	tb.fence.Now = func() time.Time { return clock }
	h := tb.Handler()
	inst := func(term uint64, addr string) *msg.Instance {
		return &msg.Instance{ID: "a", App: "web", Term: term, Address: addr}
	}
	put := func(rev, term uint64, addr string) {
		h.Update(bus.Event[*msg.Instance]{Key: "web.a", Revision: rev, Value: inst(term, addr)})
	}
	addr := func() string {
		v, ok := tb.Get("web.a")
		if !ok {
			return ""
		}
		return v.Address
	}

	tests := []struct {
		name string
		heal func(rev uint64)
	}{
		{"healed by the real writer's delete once its tombstone expires", func(rev uint64) {
			h.Update(bus.Event[*msg.Instance]{Key: "web.a", Revision: rev, Op: bus.OpDelete})
			put(rev+1, 5, "10.0.0.1:8080")
			require.Empty(t, addr(), "within the tombstone's lifetime the forged term still fences")
			clock = clock.Add(msg.DefaultTombstoneLifetime)
		}},
		{"healed by the next snapshot", func(rev uint64) {
			h.Snapshot([]bus.Event[*msg.Instance]{{Key: "web.a", Revision: rev, Value: inst(5, "10.0.0.1:8080")}}, rev)
		}},
	}
	var rev uint64
	for _, tt := range tests { // sequential: they share the table
		t.Run(tt.name, func(t *testing.T) {
			h.Snapshot(nil, rev)
			rev++
			put(rev, 5, "10.0.0.1:8080")
			rev++
			put(rev, 1<<62, "169.254.169.254:80")
			require.Equal(t, "169.254.169.254:80", addr())
			rev++
			put(rev, 5, "10.0.0.1:8080")
			require.Equal(t, "169.254.169.254:80", addr(), "the real write is fenced for now")
			rev += 10
			tt.heal(rev)
			rev += 10
			put(rev, 5, "10.0.0.2:8080")
			require.Equal(t, "10.0.0.2:8080", addr(), "the real writer's writes are applied again")
			put(rev+1, 4, "10.0.0.3:8080")
			require.Equal(t, "10.0.0.2:8080", addr(), "and fenced at the real term again")
		})
	}
}

// TestTableChurnHeap puts and deletes 500k distinct keys: the fence's
// memory must stay flat (it grew by 34 MB when terms were never forgotten).
func TestTableChurnHeap(t *testing.T) {
	if testing.Short() {
		t.Skip("500k put/delete cycles; skipped under -short")
	}
	const cycles = 500_000
	tb := NewTable(InstanceTerm, nil)
	h := tb.Handler()
	h.Snapshot(nil, 0)
	v := &msg.Instance{App: "web", Term: 3}
	keys := make([]string, cycles)
	for i := range keys {
		keys[i] = "web.k" + strconv.Itoa(i)
	}
	churn := func(from, to int) {
		for i := from; i < to; i++ {
			rev := uint64(2 * i)
			h.Update(bus.Event[*msg.Instance]{Key: keys[i], Revision: rev + 1, Value: v})
			h.Update(bus.Event[*msg.Instance]{Key: keys[i], Revision: rev + 2, Op: bus.OpDelete})
		}
	}
	heap := func() uint64 {
		runtime.GC()
		runtime.GC()
		var m runtime.MemStats
		runtime.ReadMemStats(&m)
		return m.HeapAlloc
	}
	start := heap()
	churn(0, cycles/5) // fills the tombstones to their cap
	warm := heap()
	churn(cycles/5, cycles)
	end := heap()
	runtime.KeepAlive(keys)
	t.Logf("heap: start %d, after %d cycles %d, after %d cycles %d", start, cycles/5, warm, cycles, end)
	const mb = 1 << 20
	require.Less(t, int64(end)-int64(warm), int64(mb), "flat once the tombstones are at their cap")
	require.Less(t, int64(end)-int64(start), int64(8*mb), "bounded by the tombstone cap")
	rows, _ := tb.Rows()
	require.Empty(t, rows)
	live, tombs := tb.fence.Len()
	require.Zero(t, live)
	require.LessOrEqual(t, tombs, msg.DefaultMaxTombstones)
}

func TestKeepOnDelete(t *testing.T) {
	t.Parallel()
	tb := NewTable(NoTerm[*msg.Agent], nil)
	var dropped []string
	h := KeepOnDelete(tb.Handler(), func(k string) { dropped = append(dropped, k) })
	h.Snapshot([]bus.Event[*msg.Agent]{{Key: "lb-1", Value: &msg.Agent{Node: "lb-1"}}}, 1)
	h.Update(bus.Event[*msg.Agent]{Key: "lb-1", Revision: 2, Op: bus.OpDelete})
	_, ok := tb.Get("lb-1")
	require.True(t, ok, "a delete does not make the record vanish")
	require.Equal(t, []string{"lb-1"}, dropped)
	h.Update(bus.Event[*msg.Agent]{Key: "lb-2", Revision: 3, Op: bus.OpPut, Value: &msg.Agent{Node: "lb-2"}})
	_, ok = tb.Get("lb-2")
	require.True(t, ok, "puts pass")
	h.Snapshot(nil, 4)
	_, ok = tb.Get("lb-1")
	require.False(t, ok, "a snapshot replaces everything")
}

// TestCarry: a re-snapshot keeps the rows it lacks until they are put or
// deleted again, or their time passes; the first snapshot carries nothing.
func TestCarry(t *testing.T) {
	t.Parallel()
	now := time.Unix(0, 0)
	tb := NewTable[string](func(string) uint64 { return 0 }, nil)
	tb.Carry(10*time.Second, func() time.Time { return now })
	put := func(k string) bus.Event[string] { return bus.Event[string]{Key: k, Op: bus.OpPut, Value: k} }
	keys := func() []string { rows, _ := tb.Rows(); return slices.Sorted(maps.Keys(rows)) }

	tb.Handler().Snapshot([]bus.Event[string]{put("a"), put("b"), put("c")}, 3)
	require.Zero(t, tb.Carried())
	tb.Handler().Snapshot([]bus.Event[string]{put("a")}, 4)
	require.Equal(t, []string{"a", "b", "c"}, keys(), "b and c are carried")
	require.Equal(t, 2, tb.Carried())
	tb.Handler().Update(put("b"))
	tb.Handler().Update(bus.Event[string]{Key: "c", Op: bus.OpDelete})
	require.Equal(t, []string{"a", "b"}, keys(), "a delete of a carried row is applied")
	require.Zero(t, tb.Carried(), "a put ends the carry")

	tb.Handler().Snapshot([]bus.Event[string]{put("a")}, 5)
	now = now.Add(5 * time.Second)
	tb.Handler().Snapshot([]bus.Event[string]{put("a")}, 6)
	dropped, next := tb.DropCarried()
	require.False(t, dropped)
	require.Equal(t, time.Unix(10, 0), next, "a row carried again keeps its first deadline")
	now = now.Add(5 * time.Second)
	dropped, next = tb.DropCarried()
	require.True(t, dropped)
	require.True(t, next.IsZero())
	require.Equal(t, []string{"a"}, keys())
}
