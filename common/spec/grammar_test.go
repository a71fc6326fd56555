package spec

import (
	"fmt"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

func TestRoutePath(t *testing.T) {
	t.Parallel()
	for in, want := range map[string]string{"/": "/", "/x": "/x", "/x/": "/x", "/a/b/": "/a/b", "//": "/"} {
		require.Equal(t, want, RoutePath(in), in)
	}
}

func TestCheckHostExactLength(t *testing.T) {
	t.Parallel()
	long := func(n int) string { // n characters in labels of at most 63
		s := strings.Repeat(strings.Repeat("a", 60)+".", 4)
		return s[:n-4] + ".com"
	}
	tests := []struct {
		name string
		host string
		ok   bool
	}{
		{"exact at the cap", long(MaxExactHostLen), true},
		{"exact over the cap", long(MaxExactHostLen + 1), false},
		{"wildcard over the exact cap", "*." + long(MaxExactHostLen+20), true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			err := CheckHost(tt.host)
			if tt.ok {
				require.NoError(t, err)
				return
			}
			require.ErrorContains(t, err, "at most 110")
		})
	}
}

func TestValidateDuplicateRoute(t *testing.T) {
	t.Parallel()
	es := Routing{Paths: []string{"/api", "/web", "/api/"}}.Validate("routing")
	require.Len(t, es, 1)
	require.Equal(t, `routing.paths[2]: "/api/" repeats routing.paths[0] (a trailing '/' names the same route)`, es[0].Error())
}

func TestValidateCapsRoutes(t *testing.T) {
	t.Parallel()
	r := Routing{}
	for i := range 20 {
		r.Hosts = append(r.Hosts, fmt.Sprintf("h%d.example.com", i))
	}
	for i := range 50 {
		r.Paths = append(r.Paths, fmt.Sprintf("/p%d", i))
	}
	require.Empty(t, r.Validate("routing"), "20 × 50 = 1000 routes: at the cap")
	r.Paths = append(r.Paths, "/one-more")
	es := r.Validate("routing")
	require.Len(t, es, 1)
	require.Equal(t, "routing: 20 hosts × 51 paths and rules make 1020 routes (each a location in every nginx); at most 1000: route fewer paths per host, or split the app", es[0].Error())
	require.Equal(t, 51, Routing{Paths: r.Paths}.Routes(), "no host: the default server's routes")
}

// TestEnvRefsAreTheApps: an app's health references name only its own
// variables, so it cannot have healthd send another app's credential.
func TestEnvRefsAreTheApps(t *testing.T) {
	t.Parallel()
	require.Equal(t, "BERTH_PROBE_WEB_API__", ProbeEnvPrefixOf("web-api"))
	for name, own := range map[string]bool{
		"BERTH_PROBE_WEB__TOKEN":    true,
		"BERTH_PROBE_WEB__A_B1":     true,
		"BERTH_PROBE_WEB__":         false,
		"BERTH_PROBE_WEB___X":       false,
		"BERTH_PROBE_WEB__X_":       false,
		"BERTH_PROBE_WEB__X__TOKEN": false, // app web--x's
		"BERTH_PROBE_WEB_TOKEN":     false,
		"BERTH_PROBE_SHOP__TOKEN":   false,
	} {
		require.Equal(t, own, OwnEnvRef("web", name), name)
	}
	require.True(t, OwnEnvRef("web--x", "BERTH_PROBE_WEB__X__TOKEN"))

	a, err := Load([]byte("name: web\nimage: web:1\nport: 8080\nhealth:\n  path: /\n  headers: {Authorization: $env:BERTH_PROBE_SHOP__TOKEN, X-Mine: $env:BERTH_PROBE_WEB__MINE}\n  body: $env:BERTH_PROBE_DB__PASSWORD\n"))
	require.Nil(t, a)
	var es Errors
	require.ErrorAs(t, err, &es)
	var paths []string
	for _, e := range es {
		paths = append(paths, e.Path)
	}
	require.ElementsMatch(t, []string{"health.body", "health.headers[Authorization]"}, paths, "%v", err)
	require.Contains(t, err.Error(), "BERTH_PROBE_WEB__")
}

// TestLiteralHealthBodyRefused: a body is published with the app to every
// NATS reader, so only a reference to healthd's environment is accepted.
func TestLiteralHealthBodyRefused(t *testing.T) {
	t.Parallel()
	_, err := Load([]byte("name: web\nimage: web:1\nport: 8080\nhealth:\n  path: /\n  method: POST\n  body: '{\"password\":\"s3cret\"}'\n"))
	require.ErrorContains(t, err, "health.body: is published to every NATS reader")
	require.ErrorContains(t, err, "BERTH_PROBE_WEB__BODY")
	require.NotContains(t, err.Error(), "s3cret", "the value is never echoed")
	_, err = Load([]byte("name: web\nimage: web:1\nport: 8080\nhealth:\n  path: /\n  method: POST\n  body: $env:BERTH_PROBE_WEB__BODY\n"))
	require.NoError(t, err)
}

func TestTLSSelfSignedOrFiles(t *testing.T) {
	t.Parallel()
	ok := Routing{Hosts: []string{"a.example.com"}, Paths: []string{"/"}, TLS: &TLS{SelfSigned: true}}
	require.Empty(t, ok.Validate("routing"))
	both := Routing{Hosts: []string{"a.example.com"}, Paths: []string{"/"}, TLS: &TLS{SelfSigned: true, Certificate: "/c.crt", Key: "/c.key"}}
	es := both.Validate("routing")
	require.Len(t, es, 1)
	require.Equal(t, "routing.tls: has both self_signed and certificate files: choose one", es[0].Error())
	none := Routing{Paths: []string{"/"}, TLS: &TLS{}}
	require.Len(t, none.Validate("routing"), 3, "no host, no certificate, no key")
}

func TestTLSACME(t *testing.T) {
	t.Parallel()
	ok := Routing{Hosts: []string{"a.example.com", "b.example.com"}, Paths: []string{"/", "/.well-known/other"}, TLS: &TLS{ACME: true, RedirectHTTP: true}}
	require.Empty(t, ok.Validate("routing"))
	tests := []struct {
		name string
		r    Routing
		want string
	}{
		{"with files", Routing{Hosts: []string{"a.example.com"}, TLS: &TLS{ACME: true, Certificate: "/c.crt", Key: "/c.key"}}, "routing.tls: has acme with self_signed or certificate files"},
		{"with self-signed", Routing{Hosts: []string{"a.example.com"}, TLS: &TLS{ACME: true, SelfSigned: true}}, "routing.tls: has acme with self_signed"},
		{"no host", Routing{TLS: &TLS{ACME: true}}, "routing.tls: needs routing.hosts"},
		{"a wildcard", Routing{Hosts: []string{"*.example.com"}, TLS: &TLS{ACME: true}}, `routing.hosts[0]: "*.example.com": tls.acme validates hosts over HTTP-01`},
		{"the challenge path", Routing{Hosts: []string{"a.example.com"}, Paths: []string{"/.well-known/acme-challenge"}, TLS: &TLS{ACME: true}}, `routing.paths[0]: "/.well-known/acme-challenge" is under /.well-known/acme-challenge/`},
		{"under it", Routing{Hosts: []string{"a.example.com"}, Rules: []Rule{{Path: "/.well-known/acme-challenge/x", Match: MatchExact}}, TLS: &TLS{ACME: true}}, `routing.rules[0].path: "/.well-known/acme-challenge/x" is under`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			es := tt.r.Validate("routing")
			require.NotEmpty(t, es)
			require.Contains(t, es.Error(), tt.want)
		})
	}
}

func TestPlacement(t *testing.T) {
	t.Parallel()
	ok := &Placement{Constraints: []string{"zone==a", "disk!=hdd"}, SpreadBy: "rack"}
	require.Empty(t, ok.Validate("placement"))
	require.Equal(t, []Constraint{{Key: "zone", Value: "a"}, {Key: "disk", Value: "hdd", Not: true}}, ok.Parsed())
	bad := &Placement{Constraints: []string{"zone=a", "zone==a;include /etc/passwd", "zone==a", "zone==a"}, SpreadBy: "$zone"}
	es := bad.Validate("placement")
	require.Contains(t, es.Error(), `placement.constraints[0]: "zone=a": want key==value or key!=value`)
	require.Contains(t, es.Error(), `placement.constraints[1]: "zone==a;include /etc/passwd": "a;include /etc/passwd" is not a label value`)
	require.Contains(t, es.Error(), `placement.constraints[3]: "zone==a" repeats placement.constraints[2]`)
	require.Contains(t, es.Error(), `placement.spread_by: "$zone" is not a label key`)
	_, err := Load([]byte("name: web\nimage: web:1\nport: 8080\nplacement: {constraints: [zone==a], spread_by: zone, affinity: x}\n"))
	require.ErrorContains(t, err, "placement.affinity: unknown field")
}

// placement.on_host_lost: replace defaults to true, takes only a boolean,
// and an empty block (or a null replace) says nothing and is refused.
func TestPlacementOnHostLost(t *testing.T) {
	t.Parallel()
	base := "name: web\nimage: web:1\nport: 8080\n"
	tests := []struct {
		name    string
		extra   string
		replace bool
		err     string
	}{
		{"absent: replaced", "", true, ""},
		{"placement without it: replaced", "placement: {spread_by: zone}\n", true, ""},
		{"replace true", "placement: {on_host_lost: {replace: true}}\n", true, ""},
		{"replace false", "placement: {on_host_lost: {replace: false}}\n", false, ""},
		{"an empty block", "placement: {on_host_lost: {}}\n", false, "placement.on_host_lost.replace: must be set, true (the default"},
		{"a null replace", "placement: {on_host_lost: {replace: null}}\n", false, "placement.on_host_lost.replace: must be set"},
		{"a string", "placement: {on_host_lost: {replace: \"no\"}}\n", false, `placement.on_host_lost.replace: must be true or false, not the string "no"`},
		{"a number", "placement: {on_host_lost: {replace: 0}}\n", false, "placement.on_host_lost.replace: must be true or false, not the number 0"},
		{"a bare boolean", "placement: {on_host_lost: false}\n", false, "placement.on_host_lost: must be a mapping of fields, not the boolean false"},
		{"an unknown field", "placement: {on_host_lost: {replace: false, lost_after: 1m}}\n", false,
			"placement.on_host_lost.lost_after: unknown field (allowed: replace)"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			a, err := Load([]byte(base + tt.extra))
			if tt.err != "" {
				require.ErrorContains(t, err, tt.err)
				return
			}
			require.NoError(t, err)
			require.Equal(t, tt.replace, a.Placement.ReplaceLost())
		})
	}
}
