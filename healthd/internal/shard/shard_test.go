package shard

import (
	"fmt"
	"testing"
	"time"

	"github.com/berthhq/berth/common/msg"
	"github.com/stretchr/testify/require"
)

func keys(n int) []string {
	out := make([]string, n)
	for i := range out {
		out[i] = fmt.Sprintf("app-%d.i%d", i/10, i)
	}
	return out
}

func TestOwnerSpreadsEvenly(t *testing.T) {
	t.Parallel()
	checkers := []string{"hc-a", "hc-b", "hc-c"}
	counts := map[string]int{}
	for _, k := range keys(3000) {
		counts[Owner(k, checkers)]++
	}
	for _, c := range checkers {
		require.InDelta(t, 1000, counts[c], 150, "owners: %v", counts)
	}
	require.Empty(t, Owner("x", nil))
}

func TestOnlyTheLeaversTargetsMove(t *testing.T) {
	t.Parallel()
	before := []string{"hc-a", "hc-b", "hc-c"}
	after := []string{"hc-a", "hc-c"} // hc-b died
	moved := 0
	for _, k := range keys(2000) {
		was, is := Owner(k, before), Owner(k, after)
		if was != "hc-b" {
			require.Equal(t, was, is, "a target of a surviving checker must not move")
		} else {
			require.NotEqual(t, "hc-b", is)
			moved++
		}
	}
	require.Positive(t, moved)
}

func TestExactlyOneOwner(t *testing.T) {
	t.Parallel()
	checkers := []string{"hc-b", "hc-a"}
	for _, k := range keys(500) {
		o := Owner(k, checkers)
		require.Equal(t, o, Owner(k, []string{"hc-a", "hc-b"}), "order of the list does not matter")
	}
}

func TestLive(t *testing.T) {
	t.Parallel()
	now := time.Unix(1000, 0)
	cs := map[string]*msg.Checker{
		"hc-a":    {ID: "hc-a", HeartbeatAt: now.Add(-2 * time.Second)},
		"hc-dead": {ID: "hc-dead", HeartbeatAt: now.Add(-20 * time.Second)},
		"hc-c":    {ID: "hc-c", HeartbeatAt: now.Add(-14 * time.Second)},
	}
	require.Equal(t, []string{"hc-a", "hc-c", "me"}, Live(cs, "me", 15*time.Second, now))
	require.Equal(t, []string{"me"}, Live(nil, "me", 15*time.Second, now), "a checker alone owns everything")
}
