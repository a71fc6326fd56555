package spec

import (
	"maps"
	"slices"
)

// claimIndex is what Claims sorted its claimants into: each app's
// claimant, and each host's claimants in claim order.
type claimIndex struct {
	byName map[string]*Claimant
	byHost map[string][]*Claimant
}

// ClaimsIndexed is Claims(apps), keeping what Update needs. apps must not
// change while the table, or one Update made of it, may be updated.
func ClaimsIndexed(apps []Claimant) *RouteTable { return claims(apps, true) }

// Update returns Claims of the apps t was made of, with the claimants of
// changed put in (new apps, or new claimants of apps; by name, the first
// of a name) and the apps of removed taken out. Each host is decided by
// Claims' own rules (sortClaims, host), and only the hosts the apps of
// changed and removed claim or claimed are decided again: a host's claims
// depend on its claimants alone. So an app created at 10,000 apps costs
// its hosts' work, not the whole table's.
//
// t must come from ClaimsIndexed or Update and is updated once: Update
// takes its index, and returns nil for a t without one (call
// ClaimsIndexed). t itself stays as it was for its readers.
func (t *RouteTable) Update(changed []Claimant, removed []string) *RouteTable {
	idx := t.idx
	if idx == nil {
		return nil
	}
	t.idx = nil
	hosts, apps := idx.apply(changed, removed)

	// The hosts decided again, in a table of their own for their conflicts.
	keys := slices.Sorted(maps.Keys(hosts))
	again := &RouteTable{conflicts: map[string][]Conflict{}}
	decided := make(map[string]HostRoutes, len(keys))
	for _, h := range keys {
		cs := idx.byHost[h]
		if len(cs) == 0 {
			delete(idx.byHost, h)
			continue
		}
		sortClaims(h, cs)
		decided[h] = again.host(h, cs)
		for _, c := range cs {
			apps[c.Name] = true
		}
	}
	nt := &RouteTable{hosts: mergeHosts(t.hosts, keys, decided), conflicts: maps.Clone(t.conflicts), idx: idx}
	nt.byHost = make(map[string]int, len(nt.hosts))
	for i, hr := range nt.hosts {
		nt.byHost[hr.Host] = i
	}
	// An app's conflicts: those on the hosts not decided again, as they
	// were, and those on the hosts decided again, in Claims' order.
	for name := range apps {
		var cs []Conflict
		for _, c := range t.conflicts[name] {
			if !hosts[c.Host] {
				cs = append(cs, c)
			}
		}
		if _, ok := idx.byName[name]; ok {
			cs = append(cs, again.conflicts[name]...)
		}
		if len(cs) == 0 {
			delete(nt.conflicts, name)
			continue
		}
		sortConflicts(cs)
		nt.conflicts[name] = cs
	}
	return nt
}

// apply takes the apps of removed out of the index and puts the
// claimants of changed in, and returns the hosts they claim or claimed
// and the apps whose conflicts may change.
func (idx *claimIndex) apply(changed []Claimant, removed []string) (hosts, apps map[string]bool) {
	hosts, apps = map[string]bool{}, map[string]bool{}
	drop := func(name string) {
		old := idx.byName[name]
		if old == nil {
			return
		}
		delete(idx.byName, name)
		apps[name] = true
		for _, h := range hostKeysOf(old) {
			hosts[h] = true
			idx.byHost[h] = slices.DeleteFunc(idx.byHost[h], func(c *Claimant) bool { return c == old })
		}
	}
	for _, name := range removed {
		drop(name)
	}
	seen := map[string]bool{}
	for i := range changed {
		name := changed[i].Name
		if seen[name] {
			continue
		}
		seen[name] = true
		drop(name)
		if changed[i].Routing == nil {
			continue // Claims takes no app without routing
		}
		c := new(Claimant)
		*c = changed[i]
		idx.byName[name] = c
		apps[name] = true
		for _, h := range hostKeysOf(c) {
			hosts[h] = true
			idx.byHost[h] = append(idx.byHost[h], c)
		}
	}
	return hosts, apps
}

// mergeHosts returns old (sorted by host) with the hosts of keys (sorted)
// replaced by those decided, or left out when not decided (no claimant).
func mergeHosts(old []HostRoutes, keys []string, decided map[string]HostRoutes) []HostRoutes {
	out := make([]HostRoutes, 0, len(old)+len(decided))
	put := func(h string) {
		if hr, ok := decided[h]; ok {
			out = append(out, hr)
		}
	}
	k := 0
	for _, hr := range old {
		for ; k < len(keys) && keys[k] < hr.Host; k++ {
			put(keys[k])
		}
		if k < len(keys) && keys[k] == hr.Host {
			put(keys[k])
			k++
			continue
		}
		out = append(out, hr)
	}
	for ; k < len(keys); k++ {
		put(keys[k])
	}
	return out
}

// hostKeysOf are the host keys c claims, sorted, once each (as Claims
// files it).
func hostKeysOf(c *Claimant) []string {
	return slices.Compact(slices.Sorted(slices.Values(c.Routing.HostKeys())))
}
