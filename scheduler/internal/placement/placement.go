// Package placement decides, as a pure function, on which Docker host each
// new instance runs: an app's replicas go on different hosts first (or
// different values of a label, with spread_by), and among the hosts left
// the one with the least reserved CPU and memory wins. A host takes an
// instance only while it is schedulable (up, not draining), matches every
// constraint of the app, and has the CPU and memory the instance reserves
// left; an instance no host can take is unplaceable, with the reason.
// Rollouts, restarts and autoscaling all place through Place.
package placement

import (
	"cmp"
	"fmt"
	"slices"
	"sort"
	"strings"

	"github.com/berthhq/berth/common/spec"
)

// Host is a Docker host as placement sees it.
type Host struct {
	Name   string
	Labels map[string]string
	// CPU (cores) and Memory (bytes) are what it offers; zero is no limit.
	CPU    float64
	Memory int64
	// ReservedCPU and ReservedMemory are what its instances reserve.
	ReservedCPU    float64
	ReservedMemory int64
	// Schedulable: up and not draining.
	Schedulable bool
	// Why it is not schedulable ("down", "draining"), for the reasons.
	State string
	// Apps counts the instances of each app on it.
	Apps map[string]int
}

// Request is the instances of one app to place.
type Request struct {
	App string
	// Count is how many new instances to place.
	Count int
	// CPU (cores) and Memory (bytes) are what each instance reserves.
	CPU    float64
	Memory int64
	// Constraints are host label conditions, all of which must hold.
	Constraints []Constraint
	// SpreadBy, when set, spreads the app over the values of this host
	// label before spreading it over hosts.
	SpreadBy string
}

// Constraint is a host label condition (spec.Constraint).
type Constraint = spec.Constraint

// Result is where each app's new instances go.
type Result struct {
	// Hosts are, by app, the host of each new instance, in order.
	Hosts map[string][]string
	// Unplaceable are, by app, the instances no host could take and why.
	Unplaceable map[string]Unplaceable
}

// Unplaceable is the instances of an app that could not be placed.
type Unplaceable struct {
	Count  int
	Reason string
}

// Place places every request's instances on hosts, in app order, each
// placement reserving what it takes, so later requests see it. hosts is
// not modified.
func Place(hosts []Host, reqs []Request) Result {
	res := Result{Hosts: map[string][]string{}, Unplaceable: map[string]Unplaceable{}}
	// Working copies of what placing changes.
	cpu := make([]float64, len(hosts))
	mem := make([]int64, len(hosts))
	added := make([]map[string]int, len(hosts))
	for i, h := range hosts {
		cpu[i], mem[i] = h.ReservedCPU, h.ReservedMemory
	}
	order := make([]int, len(reqs))
	for i := range order {
		order[i] = i
	}
	sort.SliceStable(order, func(a, b int) bool { return reqs[order[a]].App < reqs[order[b]].App })
	ref := reference(hosts)
	eligible := make([]int, 0, len(hosts))
	counts := make([]int, len(hosts))
	group := make([]int, len(hosts)) // spread_by group of each host
	var groups []int                 // the app's instances in each group
	for _, ri := range order {
		r := reqs[ri]
		if r.Count <= 0 {
			continue
		}
		// The hosts that may ever take this app, and its count on each.
		eligible = eligible[:0]
		for i, h := range hosts {
			if !h.Schedulable || !matches(h.Labels, r.Constraints) {
				continue
			}
			eligible = append(eligible, i)
			counts[i] = h.Apps[r.App] + added[i][r.App]
		}
		// spread_by: each eligible host's group (its label value) and the
		// app's instances in each group, every host's counting.
		groups = groups[:0]
		if r.SpreadBy != "" {
			index := map[string]int{}
			for i, h := range hosts {
				v := h.Labels[r.SpreadBy]
				g, ok := index[v]
				if !ok {
					g = len(groups)
					index[v] = g
					groups = append(groups, 0)
				}
				group[i] = g
				groups[g] += h.Apps[r.App] + added[i][r.App]
			}
		}
		for n := 0; n < r.Count; n++ {
			best := -1
			var bestGroup, bestCount int
			var bestLoad float64
			for _, i := range eligible {
				h := &hosts[i]
				if h.CPU > 0 && cpu[i]+r.CPU > h.CPU+1e-9 || h.Memory > 0 && mem[i]+r.Memory > h.Memory {
					continue
				}
				g := 0
				if r.SpreadBy != "" {
					g = groups[group[i]]
				}
				if best >= 0 && (g > bestGroup || g == bestGroup && counts[i] > bestCount) {
					continue
				}
				load := loadAfter(h, cpu[i]+r.CPU, mem[i]+r.Memory, ref)
				if best < 0 || g < bestGroup || counts[i] < bestCount || load < bestLoad || load == bestLoad && h.Name < hosts[best].Name {
					best, bestGroup, bestCount, bestLoad = i, g, counts[i], load
				}
			}
			if best < 0 {
				res.Unplaceable[r.App] = Unplaceable{Count: r.Count - n, Reason: reason(hosts, r, cpu, mem)}
				break
			}
			cpu[best] += r.CPU
			mem[best] += r.Memory
			counts[best]++
			if added[best] == nil {
				added[best] = map[string]int{}
			}
			added[best][r.App]++
			if r.SpreadBy != "" {
				groups[group[best]]++
			}
			res.Hosts[r.App] = append(res.Hosts[r.App], hosts[best].Name)
		}
	}
	return res
}

func matches(labels map[string]string, cs []Constraint) bool {
	for _, c := range cs {
		if !c.Holds(labels) {
			return false
		}
	}
	return true
}

// loadAfter is the larger of a host's reserved CPU and memory fractions
// once an instance is added. A host without a limit is taken to be as
// large as the largest host with one (ref), so that it neither draws
// every instance nor none.
func loadAfter(h *Host, cpu float64, mem int64, ref capacity) float64 {
	hc, hm := h.CPU, float64(h.Memory)
	if hc <= 0 {
		hc = ref.cpu
	}
	if hm <= 0 {
		hm = ref.mem
	}
	return max(cpu/hc, float64(mem)/hm)
}

// capacity is the reference size of hosts without limits.
type capacity struct{ cpu, mem float64 }

// reference is the largest CPU and memory among hosts with limits (one
// core and 1 GiB when none has any).
func reference(hosts []Host) capacity {
	ref := capacity{cpu: 1, mem: 1 << 30}
	for _, h := range hosts {
		ref.cpu = max(ref.cpu, h.CPU)
		ref.mem = max(ref.mem, float64(h.Memory))
	}
	return ref
}

// reason says why no host could take r: each host's first failing test.
func reason(hosts []Host, r Request, cpu []float64, mem []int64) string {
	if len(hosts) == 0 {
		return "no host is registered"
	}
	why := map[string][]string{}
	for i, h := range hosts {
		var w string
		switch {
		case !h.Schedulable:
			w = cmp.Or(h.State, "not schedulable")
		case !matches(h.Labels, r.Constraints):
			for _, c := range r.Constraints {
				if !c.Holds(h.Labels) {
					w = "fails " + c.String()
					break
				}
			}
		case h.CPU > 0 && cpu[i]+r.CPU > h.CPU+1e-9:
			w = fmt.Sprintf("has %.2f of %.2f CPU left, needs %.2f", max(h.CPU-cpu[i], 0), h.CPU, r.CPU)
		default:
			w = fmt.Sprintf("has %s of %s memory left, needs %s", bytes(max(h.Memory-mem[i], 0)), bytes(h.Memory), bytes(r.Memory))
		}
		why[w] = append(why[w], h.Name)
	}
	parts := make([]string, 0, len(why))
	for w, names := range why {
		slices.Sort(names)
		if len(names) > 3 {
			names = append(names[:3], fmt.Sprintf("and %d more", len(names)-3))
		}
		parts = append(parts, fmt.Sprintf("%s: %s", strings.Join(names, ", "), w))
	}
	slices.Sort(parts)
	return fmt.Sprintf("no host of %d can take it (%s)", len(hosts), strings.Join(parts, "; "))
}

func bytes(n int64) string {
	switch {
	case n >= 1<<30:
		return fmt.Sprintf("%.1fGi", float64(n)/(1<<30))
	case n >= 1<<20:
		return fmt.Sprintf("%dMi", n>>20)
	default:
		return fmt.Sprintf("%d", n)
	}
}
