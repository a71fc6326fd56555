package placement

import (
	"fmt"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/berthhq/berth/common/spec"
)

func host(name string, labels map[string]string) Host {
	return Host{Name: name, Labels: labels, CPU: 4, Memory: 8 << 30, Schedulable: true}
}

func tally(names []string) map[string]int {
	out := map[string]int{}
	for _, n := range names {
		out[n]++
	}
	return out
}

func TestSpreadsOverHostsFirst(t *testing.T) {
	t.Parallel()
	hosts := []Host{host("h1", nil), host("h2", nil), host("h3", nil)}
	res := Place(hosts, []Request{{App: "web", Count: 6, CPU: 0.25, Memory: 64 << 20}})
	require.Equal(t, map[string]int{"h1": 2, "h2": 2, "h3": 2}, tally(res.Hosts["web"]))
	require.Empty(t, res.Unplaceable)

	// Existing instances count: one more goes where the app has fewest.
	hosts[0].Apps, hosts[1].Apps = map[string]int{"web": 2}, map[string]int{"web": 2}
	res = Place(hosts, []Request{{App: "web", Count: 1, CPU: 0.25}})
	require.Equal(t, []string{"h3"}, res.Hosts["web"])
}

func TestLeastReservedWins(t *testing.T) {
	t.Parallel()
	hosts := []Host{host("h1", nil), host("h2", nil)}
	hosts[0].ReservedCPU = 3
	hosts[1].ReservedMemory = 1 << 30
	res := Place(hosts, []Request{{App: "api", Count: 1, CPU: 0.5, Memory: 256 << 20}})
	require.Equal(t, []string{"h2"}, res.Hosts["api"], "h1 is 87.5 %% reserved after, h2 18.75 %%")
}

// A host without limits is as large as the largest with one: it does not
// draw every instance.
func TestUnlimitedHostIsNotAMagnet(t *testing.T) {
	t.Parallel()
	hosts := []Host{{Name: "big", CPU: 16, Memory: 64 << 30, Schedulable: true}, {Name: "free", Schedulable: true}}
	var reqs []Request
	for i := range 20 {
		reqs = append(reqs, Request{App: fmt.Sprintf("app-%02d", i), Count: 1, CPU: 1, Memory: 1 << 30})
	}
	res := Place(hosts, reqs)
	n := map[string]int{}
	for _, hs := range res.Hosts {
		n[hs[0]]++
	}
	require.Equal(t, map[string]int{"big": 10, "free": 10}, n)
}

func TestSpreadByLabel(t *testing.T) {
	t.Parallel()
	hosts := []Host{host("a1", map[string]string{"zone": "a"}), host("a2", map[string]string{"zone": "a"}), host("b1", map[string]string{"zone": "b"})}
	res := Place(hosts, []Request{{App: "web", Count: 4, SpreadBy: "zone"}})
	byZone := map[string]int{}
	for _, h := range res.Hosts["web"] {
		byZone[h[:1]]++
	}
	require.Equal(t, map[string]int{"a": 2, "b": 2}, byZone, "zones first, then hosts within a zone")
	require.Equal(t, 1, tally(res.Hosts["web"])["a1"])
}

func TestConstraintsCapacityAndStates(t *testing.T) {
	t.Parallel()
	hosts := []Host{
		host("h1", map[string]string{"zone": "a", "disk": "ssd"}),
		host("h2", map[string]string{"zone": "b"}),
		{Name: "h3", Labels: map[string]string{"zone": "a"}, State: "draining"},
		{Name: "h4", Labels: map[string]string{"zone": "a"}, State: "down"},
	}
	zoneA, _ := spec.ParseConstraint("zone==a")
	notSSD, _ := spec.ParseConstraint("disk!=ssd")
	res := Place(hosts, []Request{
		{App: "db", Count: 2, CPU: 1, Constraints: []Constraint{zoneA}},
		{App: "web", Count: 1, Constraints: []Constraint{notSSD}},
	})
	require.Equal(t, []string{"h1", "h1"}, res.Hosts["db"], "only h1 is zone a and schedulable")
	require.Equal(t, []string{"h2"}, res.Hosts["web"], "a host without the label passes !=")

	// Capacity is never exceeded: 4 CPU on h1, 1.5 each → 2 fit.
	res = Place(hosts, []Request{{App: "big", Count: 3, CPU: 1.5, Constraints: []Constraint{zoneA}}})
	require.Equal(t, []string{"h1", "h1"}, res.Hosts["big"])
	u := res.Unplaceable["big"]
	require.Equal(t, 1, u.Count)
	require.Equal(t, "no host of 4 can take it (h1: has 1.00 of 4.00 CPU left, needs 1.50; h2: fails zone==a; h3: draining; h4: down)", u.Reason)

	res = Place(nil, []Request{{App: "x", Count: 1}})
	require.Equal(t, "no host is registered", res.Unplaceable["x"].Reason)
	zoneC, _ := spec.ParseConstraint("zone==c")
	res = Place(hosts, []Request{{App: "x", Count: 2, Constraints: []Constraint{zoneC}}})
	require.Equal(t, Unplaceable{Count: 2, Reason: "no host of 4 can take it (h1, h2: fails zone==c; h3: draining; h4: down)"}, res.Unplaceable["x"])
}

func TestLaterRequestsSeeEarlierReservations(t *testing.T) {
	t.Parallel()
	hosts := []Host{{Name: "h1", CPU: 1, Schedulable: true}, {Name: "h2", CPU: 1, Schedulable: true}}
	res := Place(hosts, []Request{{App: "b", Count: 1, CPU: 1}, {App: "a", Count: 2, CPU: 0.5}})
	require.Equal(t, map[string]int{"h1": 1, "h2": 1}, tally(res.Hosts["a"]), "a is placed first (app order)")
	require.Equal(t, 1, res.Unplaceable["b"].Count, "then b finds 0.5 CPU left on each")
}

func TestParseConstraint(t *testing.T) {
	t.Parallel()
	for _, ok := range []string{"zone==a", "disk!=ssd", "gpu==", "rack.id==r-12"} {
		c, err := spec.ParseConstraint(ok)
		require.NoError(t, err, ok)
		require.Equal(t, ok, c.String())
	}
	for _, bad := range []string{"zone=a", "zone", "==a", "zone==a;b", "zone==a b", "$x==1", "zone==${x}"} {
		_, err := spec.ParseConstraint(bad)
		require.Error(t, err, bad)
	}
}

// BenchmarkPlace1000x10Over100Hosts: issue 18's size, every app placed
// from nothing onto 100 hosts in 5 zones.
func BenchmarkPlace1000x10Over100Hosts(b *testing.B) {
	hosts := make([]Host, 100)
	for i := range hosts {
		hosts[i] = Host{Name: fmt.Sprintf("h%03d", i), Labels: map[string]string{"zone": fmt.Sprintf("z%d", i%5)}, CPU: 64, Memory: 256 << 30, Schedulable: true}
	}
	reqs := make([]Request, 1000)
	for i := range reqs {
		reqs[i] = Request{App: fmt.Sprintf("app-%04d", i), Count: 10, CPU: 0.25, Memory: 128 << 20}
		if i%2 == 0 {
			reqs[i].SpreadBy = "zone"
		}
	}
	b.ReportAllocs()
	for b.Loop() {
		res := Place(hosts, reqs)
		if len(res.Unplaceable) > 0 {
			b.Fatal(res.Unplaceable)
		}
	}
}
