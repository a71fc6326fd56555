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
	require.Equal(t, "routing: 20 hosts × 51 paths make 1020 routes (each a location in every nginx); at most 1000: route fewer paths per host, or split the app", es[0].Error())
	require.Equal(t, 51, Routing{Paths: r.Paths}.Routes(), "no host: the default server's routes")
}
