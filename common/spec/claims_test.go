package spec

import (
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

var t0 = time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)

// claimant makes an app that claimed every host at t0 plus n minutes,
// its routing defaulted as an applied spec's is.
func claimant(name string, n int, r Routing) Claimant {
	a := &App{Name: name, Routing: r}
	a.Default()
	at := t0.Add(time.Duration(n) * time.Minute)
	claimed := map[string]time.Time{}
	for _, h := range a.Routing.HostKeys() {
		claimed[h] = at
	}
	return Claimant{Name: name, Created: at, Claimed: claimed, Routing: &a.Routing}
}

// bank owns bank.test, routing / and /login.
func bank(shares ...Share) Claimant {
	return claimant("bank", 0, Routing{Hosts: []string{"bank.test"}, Paths: []string{"/", "/login"}, ShareWith: shares})
}

func granted(t *RouteTable, app, host string) []string {
	locs, _ := t.Granted(app, host)
	out := []string{}
	for _, l := range locs {
		out = append(out, l.Label()+l.Condition())
	}
	return out
}

func TestClaims(t *testing.T) {
	t.Parallel()
	cookie := Rule{Path: "/", Headers: map[string]string{"Cookie": "~."}}
	canary := Rule{Path: "/", Headers: map[string]string{"X-Canary": "1"}}
	regex := func(re string) Rule { return Rule{Path: re, Match: MatchRegex} }
	later := func(r Routing) Claimant { return claimant("evil", 5, r) }
	on := func(rules ...Rule) Routing { return Routing{Hosts: []string{"bank.test"}, Rules: rules} }
	tests := []struct {
		name   string
		apps   []Claimant
		reason string // evil's conflict on bank.test, "" for none
		field  string
		evil   []string // what evil gets on bank.test
	}{
		// The audit's takeovers, by an app the owner does not share with.
		{"regex takeover", []Claimant{bank(), later(on(regex("^/")))}, ConflictHost, "routing.hosts[0]", []string{}},
		{"header takeover", []Claimant{bank(), later(on(cookie))}, ConflictHost, "routing.hosts[0]", []string{}},
		{"tls takeover", []Claimant{bank(), later(Routing{Hosts: []string{"bank.test"}, Paths: []string{"/"}, TLS: &TLS{SelfSigned: true, RedirectHTTP: true}})}, ConflictHost, "routing.hosts[0]", []string{}},
		{"host in another case", []Claimant{bank(), later(Routing{Hosts: []string{"BANK.test"}, Paths: []string{"/x"}})}, ConflictHost, "routing.hosts[0]", []string{}},
		// A member the owner shares with routes below its "/", never over its paths.
		{"member prefix", []Claimant{bank(Share{App: "evil"}), later(Routing{Hosts: []string{"bank.test"}, Paths: []string{"/shop"}})}, "", "", []string{"path /shop"}},
		{"member path the owner has", []Claimant{bank(Share{App: "evil"}), later(Routing{Hosts: []string{"bank.test"}, Paths: []string{"/login/"}})}, ConflictRoute, "routing.paths[0]", []string{}},
		{"member regex over /", []Claimant{bank(Share{App: "evil"}), later(on(regex("^/")))}, ConflictShadow, "routing.rules[0].path", []string{}},
		{"member unanchored regex", []Claimant{bank(Share{App: "evil"}), later(on(regex("/account")))}, ConflictShadow, "routing.rules[0].path", []string{}},
		{"member regex over /login", []Claimant{bank(Share{App: "evil"}), later(on(regex("^/log")))}, ConflictShadow, "routing.rules[0].path", []string{}},
		{"member regex under /login", []Claimant{bank(Share{App: "evil"}), later(on(regex("^/login/x")))}, ConflictShadow, "routing.rules[0].path", []string{}},
		{"member regex alternative", []Claimant{bank(Share{App: "evil"}), later(on(regex("^/shop/[0-9]+$|^/")))}, ConflictShadow, "routing.rules[0].path", []string{}},
		{"member regex of its own", []Claimant{bank(Share{App: "evil"}), later(on(regex("^/shop/[0-9]+$")))}, "", "", []string{"regex path ^/shop/[0-9]+$"}},
		{"member regex beside /login", []Claimant{bank(Share{App: "evil"}), later(on(regex("^/loginx")))}, "", "", []string{"regex path ^/loginx"}},
		{"member prefix under /login", []Claimant{bank(Share{App: "evil"}), later(Routing{Hosts: []string{"bank.test"}, Paths: []string{"/login/x"}})}, ConflictShadow, "routing.paths[0]", []string{}},
		{"member exact /", []Claimant{bank(Share{App: "evil"}), later(on(Rule{Path: "/", Match: MatchExact}))}, ConflictShadow, "routing.rules[0].path", []string{}},
		{"member cookie over /", []Claimant{bank(Share{App: "evil"}), later(on(cookie))}, ConflictShadow, "routing.rules[0].path", []string{}},
		{"member header over /login", []Claimant{bank(Share{App: "evil"}), later(on(Rule{Path: "/login", Headers: map[string]string{"X-A": "1"}}))}, ConflictShadow, "routing.rules[0].path", []string{}},
		{"member header below /", []Claimant{bank(Share{App: "evil"}), later(on(Rule{Path: "/shop", Headers: map[string]string{"X-A": "1"}}))}, "", "", []string{"path /shop [x-a: 1]"}},
		// The owner names the paths a canary may take requests from.
		{"canary the owner names", []Claimant{bank(Share{App: "evil", Paths: []string{"/"}}), later(on(canary))}, "", "", []string{"path / [x-canary: 1]"}},
		{"canary over a path not named", []Claimant{bank(Share{App: "evil", Paths: []string{"/"}}), later(on(Rule{Path: "/login", Headers: map[string]string{"X-Canary": "1"}}))}, ConflictShadow, "routing.rules[0].path", []string{}},
		{"regex the owner names", []Claimant{bank(Share{App: "evil", Paths: []string{"/"}}), later(on(regex("^/a")))}, "", "", []string{"regex path ^/a"}},
		// TLS is the owner's alone.
		{"member tls", []Claimant{bank(Share{App: "evil"}), later(Routing{Hosts: []string{"bank.test"}, Paths: []string{"/shop"}, TLS: &TLS{SelfSigned: true}})}, ConflictTLS, "routing.tls", []string{}},
		{"member with the owner's files", []Claimant{
			claimant("bank", 0, Routing{Hosts: []string{"bank.test"}, Paths: []string{"/", "/login"}, TLS: &TLS{Certificate: "/c", Key: "/k"}, ShareWith: []Share{{App: "evil"}}}),
			later(Routing{Hosts: []string{"bank.test"}, Paths: []string{"/shop"}, TLS: &TLS{Certificate: "/c", Key: "/k"}})}, "", "", []string{"path /shop"}},
		// Ownership goes by when the host was claimed, not by when the app was created.
		{"an older app that claims the host later", []Claimant{bank(), {Name: "evil", Created: t0.Add(-time.Hour),
			Claimed: map[string]time.Time{}, Routing: &Routing{Hosts: []string{"bank.test"}, Paths: []string{"/x"}}}}, ConflictHost, "routing.hosts[0]", []string{}},
		{"a record without claim times", []Claimant{bank(), {Name: "evil", Created: t0.Add(time.Hour), Routing: &Routing{Hosts: []string{"bank.test"}, Paths: []string{"/x"}}}}, ConflictHost, "routing.hosts[0]", []string{}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			for _, apps := range [][]Claimant{tc.apps, slices.Concat(tc.apps[1:], tc.apps[:1])} { // whatever the order
				tab := Claims(apps)
				require.Equal(t, "bank", tab.Owner("bank.test"))
				require.Equal(t, []string{"path /", "path /login"}, granted(tab, "bank", "bank.test"), "the owner keeps everything")
				require.Empty(t, tab.Conflicts("bank"))
				require.Equal(t, tc.evil, granted(tab, "evil", "bank.test"))
				cs := tab.Conflicts("evil")
				if tc.reason == "" {
					require.Empty(t, cs)
					continue
				}
				require.Len(t, cs, 1, "%v", cs)
				require.Equal(t, tc.reason, cs[0].Reason)
				require.Equal(t, tc.field, cs[0].Field)
				require.Equal(t, "bank", cs[0].Holder)
				require.Contains(t, cs[0].Error(), "bank")
			}
		})
	}
}

func TestClaimsDefaultServerAndMembers(t *testing.T) {
	t.Parallel()
	web := claimant("web", 0, Routing{Paths: []string{"/"}, ShareWith: []Share{{App: "api"}, {App: "docs"}}})
	api := claimant("api", 1, Routing{Paths: []string{"/api", "/docs"}})
	docs := claimant("docs", 2, Routing{Paths: []string{"/docs"}})
	other := claimant("other", 3, Routing{Paths: []string{"/other"}})
	tab := Claims([]Claimant{other, docs, api, web})
	require.Equal(t, "web", tab.Owner(""))
	require.Equal(t, []string{"path /api", "path /docs"}, granted(tab, "api", ""))
	require.Equal(t, []string{}, granted(tab, "docs", ""))
	require.Equal(t, []Conflict{{App: "docs", Host: "", Holder: "api", Reason: ConflictRoute, Location: &Location{Match: MatchPrefix, Path: "/docs", Index: -1}, Field: "routing.paths[0]"}}, tab.Conflicts("docs"))
	require.Equal(t, ConflictHost, tab.Conflicts("other")[0].Reason)
	require.Contains(t, tab.Conflicts("other")[0].Error(), "the default server (apps without routing.hosts) belongs to app web")
	var order []string
	for _, a := range tab.Hosts()[0].Apps {
		order = append(order, a.App)
	}
	require.Equal(t, []string{"web", "api", "docs"}, order, "owner first, then claim order")
	require.Equal(t, []string{"docs", "other"}, tab.Conflicted())
}

func TestRegexPrefixes(t *testing.T) {
	t.Parallel()
	for re, want := range map[string][]string{
		"^/api/v[0-9]+/": {"/api/v"},
		"^/(en|fr)/":     {"/"},
		"/x$":            {""},
		"^/a|^/b/c":      {"/a", "/b/c"},
		"^/shop|/x":      {"/shop", ""},
		"^(/static)/":    {"/static/"},
		"^.*":            {""},
	} {
		require.Equal(t, want, regexPrefixes(re), re)
	}
}

func TestShareWithSpec(t *testing.T) {
	t.Parallel()
	app, err := Load([]byte("name: bank\nimage: b:1\nport: 80\nrouting:\n  hosts: [bank.test]\n  paths: [/, /login]\n  share_with: [shop, {app: canary, paths: [/]}]\n"))
	require.NoError(t, err)
	require.Equal(t, []Share{{App: "shop"}, {App: "canary", Paths: []string{"/"}}}, app.Routing.ShareWith)
	b, err := json.Marshal(app.Routing.ShareWith)
	require.NoError(t, err)
	require.JSONEq(t, `["shop", {"app": "canary", "paths": ["/"]}]`, string(b))
	var back []Share
	require.NoError(t, json.Unmarshal(b, &back))
	require.Equal(t, app.Routing.ShareWith, back)

	for spec, want := range map[string]string{
		"share_with: [bank]":                         `routing.share_with[0].app: "bank" is this app itself`,
		"share_with: [shop, shop]":                   `routing.share_with[1].app: "shop" repeats routing.share_with[0]`,
		"share_with: [Shop_1]":                       `routing.share_with[0].app: "Shop_1" is not an app name`,
		"share_with: [{app: shop, paths: [/nope]}]":  `routing.share_with[0].paths[0]: "/nope" is not a route of this app`,
		"share_with: [{app: shop, path: [/]}]":       `routing.share_with[0].path: unknown field`,
		"share_with: [3]":                            `routing.share_with[0]: must be an app name, or a mapping {app, paths}, not the number 3`,
		"share_with: [{app: shop, paths: ['/a;b']}]": `routing.share_with[0].paths[0]: "/a;b" is not a valid path`,
	} {
		_, err := Load([]byte("name: bank\nimage: b:1\nport: 80\nrouting:\n  hosts: [bank.test]\n  paths: [/, /login]\n  " + spec + "\n"))
		require.Error(t, err, spec)
		require.True(t, strings.Contains(err.Error(), want), "%s: %v", spec, err)
	}
}

// BenchmarkClaims: the route table of n apps, each on a host of its own
// and the first one's, which shares it, with 5 paths and a rule: what the
// API computes at every apply and lbagent at every render.
func BenchmarkClaims(b *testing.B) {
	for _, n := range []int{1000, 10000} {
		apps := make([]Claimant, n)
		for i := range apps {
			r := Routing{Hosts: []string{fmt.Sprintf("app-%d.example.com", i), "shared.example.com"},
				Paths: []string{fmt.Sprintf("/a%d", i), fmt.Sprintf("/b%d", i), fmt.Sprintf("/c%d", i), fmt.Sprintf("/d%d", i), fmt.Sprintf("/e%d", i)},
				Rules: []Rule{{Path: fmt.Sprintf("^/r%d/[0-9]+$", i), Match: MatchRegex}}}
			if i == 0 {
				for j := 1; j < min(n, MaxShares+1); j++ {
					r.ShareWith = append(r.ShareWith, Share{App: fmt.Sprintf("app-%d", j)})
				}
			}
			apps[i] = claimant(fmt.Sprintf("app-%d", i), i, r)
		}
		b.Run(fmt.Sprint(n), func(b *testing.B) {
			for b.Loop() {
				Claims(apps)
			}
		})
	}
}
