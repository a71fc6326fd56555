package view

import (
	"maps"
	"slices"
	"sync/atomic"
	"testing"

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
