package outlier

import (
	"fmt"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/berthhq/berth/common/msg"
	"github.com/berthhq/berth/common/spec"
	"github.com/berthhq/berth/lbagent/internal/accesslog"
	"github.com/berthhq/berth/lbagent/internal/state"
)

var t0 = time.Date(2026, 12, 6, 12, 0, 0, 0, time.UTC)

func cfg() *spec.Outlier {
	return &spec.Outlier{Consecutive5xx: 5, ErrorPercent: 50, MinRequests: 20, Interval: spec.Duration(10 * time.Second),
		BaseEjection: spec.Duration(30 * time.Second), MaxEjectedPercent: 50}
}

// snapOf is one app "web" with n servers i0..i(n-1) at 10.0.0.i:80.
func snapOf(o *spec.Outlier, n int) state.Snapshot {
	a := state.App{Spec: &msg.App{Name: "web", Health: &spec.Health{Type: spec.HealthHTTP, Outlier: o}}}
	for i := range n {
		a.Servers = append(a.Servers, state.Server{Instance: fmt.Sprintf("i%d", i), Address: fmt.Sprintf("10.0.0.%d:80", i), Weight: 1})
	}
	return state.Snapshot{Apps: []state.App{a}, Revision: 7}
}

func addrs(s state.Snapshot) []string {
	var out []string
	for _, sv := range s.Apps[0].Servers {
		out = append(out, sv.Address)
	}
	return out
}

func TestConsecutiveEjectsAndReturnsAfterBaseTimesN(t *testing.T) {
	t.Parallel()
	kicks := 0
	d := New(func() { kicks++ })
	snap := snapOf(cfg(), 3)
	out, ch, _, wake := d.Filter(snap, t0)
	require.Empty(t, ch)
	require.True(t, wake.IsZero())
	require.Len(t, addrs(out), 3)

	now := t0
	for i := range 4 {
		d.Observe("web", "10.0.0.1:80", true, now.Add(time.Duration(i)*time.Millisecond))
	}
	require.Equal(t, 0, kicks, "4 in a row is under consecutive_5xx 5")
	d.Observe("web", "10.0.0.1:80", false, now)
	for range 5 {
		d.Observe("web", "10.0.0.1:80", true, now)
	}
	require.Equal(t, 1, kicks, "the fifth failure in a row trips it, once")
	d.Observe("web", "10.0.0.1:80", true, now)
	require.Equal(t, 1, kicks)

	out, ch, _, wake = d.Filter(snap, now)
	require.Equal(t, []string{"10.0.0.0:80", "10.0.0.2:80"}, addrs(out))
	require.Len(t, ch, 1)
	require.True(t, ch[0].Ejected)
	require.Equal(t, "i1", ch[0].Instance)
	require.Equal(t, 1, ch[0].Times)
	require.Contains(t, ch[0].Reason, "5 failed requests in a row")
	require.Equal(t, now.Add(30*time.Second), wake, "base_ejection × 1")
	require.Len(t, snap.Apps[0].Servers, 3, "the input snapshot is not changed")
	require.Equal(t, []msg.Ejection{{App: "web", Instance: "i1", Reason: ch[0].Reason, Since: now, Until: wake, Times: 1}}, d.Ejected())
	require.Equal(t, map[string]int{"web": 1}, d.EjectedByApp())

	out, ch, _, _ = d.Filter(snap, wake.Add(-time.Millisecond))
	require.Empty(t, ch)
	require.Len(t, addrs(out), 2, "still ejected just before its end")

	now = wake
	out, ch, _, wake = d.Filter(snap, now)
	require.Len(t, addrs(out), 3, "back by itself")
	require.Equal(t, []Change{{App: "web", Instance: "i1", Address: "10.0.0.1:80", Reason: "ejection ended", Times: 1}}, ch)
	require.True(t, wake.IsZero())
	require.Empty(t, d.Ejected())

	// Tripping again soon after: ejected for twice as long.
	for range 5 {
		d.Observe("web", "10.0.0.1:80", true, now)
	}
	out, ch, _, wake = d.Filter(snap, now)
	require.Len(t, addrs(out), 2)
	require.Equal(t, 2, ch[0].Times)
	require.Equal(t, now.Add(60*time.Second), wake, "base_ejection × 2")

	// Back, then quiet for MaxMultiplier × base: the count starts again.
	now = wake
	_, _, _, _ = d.Filter(snap, now)
	now = now.Add(MaxMultiplier * 30 * time.Second)
	for range 5 {
		d.Observe("web", "10.0.0.1:80", true, now)
	}
	_, ch, _, wake = d.Filter(snap, now)
	require.Equal(t, 1, ch[0].Times)
	require.Equal(t, now.Add(30*time.Second), wake)
}

func TestErrorPercentOverTheSlidingWindow(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		every   int // one request in every `every` fails
		count   int
		spread  time.Duration // requests spread over this long
		ejected bool
	}{
		{name: "40 % of 40 is under 50 %", every: 0, count: 40, ejected: false},
		{name: "50 % of 20 ejects", every: 2, count: 20, ejected: true},
		{name: "50 % of 19 is under min_requests", every: 2, count: 19, ejected: false},
		{name: "50 % of 40 spread over 30s: never 20 in one window", every: 2, count: 40, spread: 30 * time.Second, ejected: false},
		{name: "50 % of 40 spread over 8s ejects", every: 2, count: 40, spread: 8 * time.Second, ejected: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			c := cfg()
			c.Consecutive5xx = 0
			d := New(nil)
			snap := snapOf(c, 3)
			_, _, _, _ = d.Filter(snap, t0)
			now := t0
			for i := range tt.count {
				failed := tt.every > 0 && i%tt.every == 0
				if tt.every == 0 {
					failed = i%5 < 2 // 40 %
				}
				now = t0.Add(tt.spread * time.Duration(i) / time.Duration(tt.count))
				d.Observe("web", "10.0.0.0:80", failed, now)
			}
			out, ch, _, _ := d.Filter(snap, now)
			require.Equal(t, tt.ejected, len(ch) == 1, "changes %v", ch)
			require.Equal(t, tt.ejected, len(addrs(out)) == 2)
		})
	}
}

func TestMaxEjectedPercent(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name      string
		servers   int
		percent   int
		failing   int
		wantOut   int
		wantRefus int
	}{
		{name: "3 servers at 50 %: one goes", servers: 3, percent: 50, failing: 3, wantOut: 1, wantRefus: 2},
		{name: "4 servers at 50 %: two go", servers: 4, percent: 50, failing: 3, wantOut: 2, wantRefus: 1},
		{name: "the last one never goes, even at 100 %", servers: 2, percent: 100, failing: 2, wantOut: 1, wantRefus: 1},
		{name: "a lone server stays", servers: 1, percent: 100, failing: 1, wantOut: 0, wantRefus: 1},
		{name: "10 % of 5 rounds to none", servers: 5, percent: 10, failing: 1, wantOut: 0, wantRefus: 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			c := cfg()
			c.MaxEjectedPercent = tt.percent
			d := New(nil)
			snap := snapOf(c, tt.servers)
			_, _, _, _ = d.Filter(snap, t0)
			for i := range tt.failing {
				for range 5 {
					d.Observe("web", fmt.Sprintf("10.0.0.%d:80", i), true, t0)
				}
			}
			out, ch, ref, _ := d.Filter(snap, t0)
			require.Len(t, ch, tt.wantOut)
			require.Len(t, ref, tt.wantRefus)
			require.Len(t, addrs(out), tt.servers-tt.wantOut)
			_, ch, ref, _ = d.Filter(snap, t0.Add(time.Second))
			require.Empty(t, ch)
			require.Empty(t, ref, "a refusal is reported once per trip")
		})
	}
}

func TestRefusedInstanceThatRecoversIsNotEjectedLater(t *testing.T) {
	t.Parallel()
	d := New(nil)
	snap := snapOf(cfg(), 3)
	_, _, _, _ = d.Filter(snap, t0)
	for _, a := range []string{"10.0.0.0:80", "10.0.0.1:80"} {
		for range 5 {
			d.Observe("web", a, true, t0)
		}
	}
	_, ch, ref, wake := d.Filter(snap, t0)
	require.Len(t, ch, 1)
	require.Len(t, ref, 1)
	d.Observe("web", "10.0.0.1:80", false, t0.Add(time.Second)) // it recovers
	for i := range 30 {
		d.Observe("web", "10.0.0.1:80", false, t0.Add(time.Second+time.Duration(i)*time.Millisecond))
	}
	out, ch, _, _ := d.Filter(snap, wake.Add(11*time.Second))
	require.Len(t, ch, 1, "only the first one's return")
	require.False(t, ch[0].Ejected)
	require.Len(t, addrs(out), 3)
}

func TestIgnoresUnknownAppsAndAddressesAndForgetsGoneOnes(t *testing.T) {
	t.Parallel()
	kicks := 0
	d := New(func() { kicks++ })
	noOutlier := snapOf(nil, 3)
	_, _, _, _ = d.Filter(noOutlier, t0)
	for range 10 {
		d.Observe("web", "10.0.0.0:80", true, t0)
		d.Observe("other", "10.0.0.0:80", true, t0)
	}
	snap := snapOf(cfg(), 3)
	_, _, _, _ = d.Filter(snap, t0)
	for range 10 {
		d.Observe("web", "10.9.9.9:80", true, t0) // not in rotation
		d.Observe("web", "berth_web", true, t0)   // nginx's group name
	}
	require.Equal(t, 0, kicks)
	out, ch, _, _ := d.Filter(snap, t0)
	require.Empty(t, ch)
	require.Len(t, addrs(out), 3)
	_, _, _, _ = d.Filter(state.Snapshot{}, t0)
	require.Empty(t, d.apps, "an app gone is forgotten")
}

func TestSinkReadsEveryAttempt(t *testing.T) {
	t.Parallel()
	d := New(nil)
	snap := snapOf(cfg(), 3)
	_, _, _, _ = d.Filter(snap, t0)
	s := Sink{Detector: d, Now: func() time.Time { return t0 }}
	for range 5 {
		// A refused connection to .1, then an answer from .2.
		s.Add(accesslog.Entry{App: "web", Status: 200, Upstreams: "10.0.0.1:80, 10.0.0.2:80", UpstreamStatuses: "502, 200", UpstreamConnects: "-, 0.001"})
	}
	s.Add(accesslog.Entry{App: "web", Status: 500, Upstreams: "10.0.0.2:80", UpstreamStatuses: "500", UpstreamConnects: "0.001"})
	out, ch, _, _ := d.Filter(snap, t0)
	require.Len(t, ch, 1)
	require.Equal(t, "i1", ch[0].Instance)
	require.Equal(t, []string{"10.0.0.0:80", "10.0.0.2:80"}, addrs(out))
}
