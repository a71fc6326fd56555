package spec

import (
	"fmt"
	"math/rand/v2"
	"slices"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// TestUpdateIsClaims: through random runs of apps created, changed and
// removed — shared hosts, share_with with and without paths, rules that
// shadow, TLS, claim times that tie, records without claim times — the
// table Update makes is the table Claims makes of all the apps.
func TestUpdateIsClaims(t *testing.T) {
	t.Parallel()
	for seed := range uint64(20) {
		rng := rand.New(rand.NewPCG(seed, 7))
		pick := func(pool []string, most int) []string {
			var out []string
			for range rng.IntN(most + 1) {
				if p := pool[rng.IntN(len(pool))]; !slices.Contains(out, p) {
					out = append(out, p)
				}
			}
			return out
		}
		hosts := []string{"a.test", "b.test", "c.test", "d.test", "*.e.test", "x.e.test"}
		paths := []string{"/", "/x", "/y", "/x/z", "/api"}
		names := make([]string, 14)
		for i := range names {
			names[i] = fmt.Sprintf("app-%02d", i)
		}
		random := func(name string) Claimant {
			r := Routing{Hosts: pick(hosts, 2), Paths: pick(paths, 3)}
			if len(r.Paths) == 0 {
				r.Paths = []string{"/"}
			}
			switch rng.IntN(6) {
			case 0:
				r.Rules = []Rule{{Path: "^/x/[0-9]+$", Match: MatchRegex}}
			case 1:
				r.Rules = []Rule{{Path: "/", Headers: map[string]string{"X-Canary": "1"}}}
			}
			for _, other := range pick(names, 3) {
				if other != name {
					r.ShareWith = append(r.ShareWith, Share{App: other, Paths: pick([]string{"/x", "/y"}, 1)})
				}
			}
			if rng.IntN(6) == 0 {
				r.TLS = &TLS{SelfSigned: true}
			}
			a := &App{Name: name, Routing: r}
			a.Default()
			c := Claimant{Name: name, Routing: &a.Routing}
			if rng.IntN(5) > 0 {
				c.Created = t0.Add(time.Duration(rng.IntN(4)) * time.Minute)
			}
			if rng.IntN(4) > 0 {
				c.Claimed = map[string]time.Time{}
				for _, h := range a.Routing.HostKeys() {
					if rng.IntN(5) > 0 {
						c.Claimed[h] = t0.Add(time.Duration(rng.IntN(4)) * time.Minute)
					}
				}
			}
			return c
		}
		cur := map[string]Claimant{}
		all := func() []Claimant {
			var out []Claimant
			for _, name := range names {
				if c, ok := cur[name]; ok {
					out = append(out, c)
				}
			}
			return out
		}
		for _, name := range names[:8] {
			cur[name] = random(name)
		}
		table := ClaimsIndexed(all())
		for step := range 150 {
			var changed []Claimant
			var removed []string
			for range 1 + rng.IntN(3) {
				name := names[rng.IntN(len(names))]
				if rng.IntN(4) == 0 {
					delete(cur, name)
					removed = append(removed, name)
					continue
				}
				c := random(name)
				cur[name] = c
				changed = append(changed, c)
			}
			// A name both changed and removed: the last word counts.
			changed = slices.DeleteFunc(changed, func(c Claimant) bool { _, ok := cur[c.Name]; return !ok })
			for i := len(changed) - 1; i >= 0; i-- {
				if cur[changed[i].Name].Routing != changed[i].Routing {
					changed = slices.Delete(changed, i, i+1)
				}
			}
			next := table.Update(changed, removed)
			require.NotNil(t, next)
			require.Nil(t, table.Update(nil, nil), "a table is updated once")
			want := Claims(all())
			require.Equal(t, want.hosts, next.hosts, "seed %d step %d: hosts", seed, step)
			require.Equal(t, want.byHost, next.byHost, "seed %d step %d", seed, step)
			require.Equal(t, want.conflicts, next.conflicts, "seed %d step %d: conflicts", seed, step)
			table = next
		}
	}
}
