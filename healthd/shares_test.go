package main

import (
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/berthhq/berth/common/msg"
	"github.com/berthhq/berth/common/spec"
	"github.com/berthhq/berth/healthd/internal/checker"
	"github.com/berthhq/berth/healthd/internal/shard"
)

// fleetOf returns apps of perApp instances each, n instances in all, as
// the scheduler writes them, with an HTTP check every 10 s.
func fleetOf(n, perApp int) (map[string]*msg.App, map[string]*msg.Instance) {
	yes := true
	st, _ := spec.ParseStatusRanges("200-399")
	apps, insts := map[string]*msg.App{}, map[string]*msg.Instance{}
	for i := range n {
		name := fmt.Sprintf("app%05d", i/perApp)
		if _, ok := apps[name]; !ok {
			apps[name] = &msg.App{Name: name, Port: 8080, Health: &spec.Health{Type: spec.HealthHTTP, Enabled: &yes, Port: 8080, Path: "/healthz",
				Method: "GET", ExpectedStatus: st, Interval: spec.Duration(10 * time.Second), Timeout: spec.Duration(time.Second), HealthyThreshold: 1, UnhealthyThreshold: 3}}
		}
		id := fmt.Sprintf("t%d", i)
		insts[msg.InstanceKey(name, id)] = &msg.Instance{App: name, ID: id, Address: fmt.Sprintf("10.0.%d.%d:8080", i/250%250, i%250), State: msg.StateRunning, Generation: 1}
	}
	return apps, insts
}

func keysOf(ts []checker.Target) []string {
	out := make([]string, len(ts))
	for i, t := range ts {
		out[i] = t.Key
	}
	return out
}

// The cause of issue 30's slow takeover after a peer's stop: every pass of
// the targets loop listed every target again. A change of the live
// checkers alone must reuse the list; a change of the apps or the
// instances must list them again, and a pass with nothing changed does
// nothing.
func TestSharesListTheTargetsOnlyWhenAppsOrInstancesChanged(t *testing.T) {
	t.Parallel()
	apps, insts := fleetOf(60, 3)
	lists := 0
	s := newShares("a", func() (map[string]*msg.App, []checker.Target) {
		lists++
		return apps, checker.Targets(apps, insts, nil)
	})
	owned := func(live []string, id string) []string {
		var out []string
		for _, key := range slices.Sorted(func(yield func(string) bool) {
			for k := range insts {
				if !yield(k) {
					return
				}
			}
		}) {
			if shard.Owner(key, live) == id {
				out = append(out, key)
			}
		}
		return out
	}

	f, moved := s.Next([]string{"a", "b"})
	require.True(t, moved)
	require.Equal(t, 1, lists)
	require.Len(t, f.list, 60)
	require.Len(t, f.targets, 60)
	require.Equal(t, owned([]string{"a", "b"}, "a"), keysOf(f.mine))
	require.NotEmpty(t, owned([]string{"a", "b"}, "b"), "b must have a share for the test to mean anything")

	// A heartbeat, a tick: the same live checkers and nothing stale.
	again, moved := s.Next([]string{"a", "b"})
	require.False(t, moved)
	require.Same(t, f, again)
	require.Equal(t, 1, lists)

	// b leaves: a takes b's targets without listing them again.
	f, moved = s.Next([]string{"a"})
	require.True(t, moved)
	require.Equal(t, 1, lists, "a change of the live checkers alone must not list the targets again")
	require.Equal(t, owned([]string{"a"}, "a"), keysOf(f.mine))
	require.Len(t, f.mine, 60)
	require.Equal(t, []string{"a"}, f.live)

	// An instance added: listed again, even with the same live checkers.
	insts[msg.InstanceKey("app00000", "new")] = &msg.Instance{App: "app00000", ID: "new", Address: "10.1.0.1:8080", State: msg.StateRunning, Generation: 1}
	s.Stale()
	f, moved = s.Next([]string{"a"})
	require.True(t, moved)
	require.Equal(t, 2, lists)
	require.Len(t, f.mine, 61)
	require.True(t, f.targets["app00000.new"])
}

// A change that lands while the targets are being listed is listed at the
// next pass: the mark is taken before the read, not after.
func TestSharesChangeDuringTheListIsNotLost(t *testing.T) {
	t.Parallel()
	apps, insts := fleetOf(6, 3)
	var s *shares
	lists := 0
	s = newShares("a", func() (map[string]*msg.App, []checker.Target) {
		lists++
		ts := checker.Targets(apps, insts, nil)
		if lists == 1 {
			insts[msg.InstanceKey("app00000", "late")] = &msg.Instance{App: "app00000", ID: "late", Address: "10.1.0.1:8080", State: msg.StateRunning, Generation: 1}
			s.Stale() // the watcher's notify, after the read above
		}
		return apps, ts
	})
	f, _ := s.Next([]string{"a"})
	require.Len(t, f.mine, 6)
	f, moved := s.Next([]string{"a"})
	require.True(t, moved)
	require.Equal(t, 2, lists)
	require.Len(t, f.mine, 7)
}

// BenchmarkSharesNext is one pass of the targets loop at 30,000 targets
// (10,000 apps of 3) over two checkers: after the instances changed (the
// targets listed again, as every pass did before issue 30's fix), and
// after a peer left (the list kept, the owners asked again).
func BenchmarkSharesNext(b *testing.B) {
	apps, insts := fleetOf(30000, 3)
	list := func() (map[string]*msg.App, []checker.Target) { return apps, checker.Targets(apps, insts, nil) }
	b.Run("instances-changed", func(b *testing.B) {
		s := newShares("a", list)
		for b.Loop() {
			s.Stale()
			s.Next([]string{"a", "b"})
		}
	})
	b.Run("peer-left", func(b *testing.B) {
		s := newShares("a", list)
		s.Next([]string{"a", "b"})
		i := 0
		for b.Loop() {
			i++
			if i%2 == 0 {
				s.Next([]string{"a", "b"})
			} else {
				s.Next([]string{"a"})
			}
		}
	})
}
