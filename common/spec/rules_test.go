package spec

import (
	"testing"

	"github.com/stretchr/testify/require"
)

func TestRulesValidate(t *testing.T) {
	t.Parallel()
	runProblems(t, []problemCase{
		{"match kind", base + "routing: {rules: [{path: /a, match: glob}]}\n", []string{`routing.rules[0].match: "glob" is not one of prefix, exact, regex`}},
		{"paths per kind", base + "routing: {rules: [{path: api}, {path: \"/a b\", match: exact}, {path: \"^/x{2}\", match: regex}]}\n", []string{
			`routing.rules[0].path: "api" is not a valid path`, `routing.rules[1].path: "/a b" is not a valid path`, `routing.rules[2].path: "^/x{2}" is not an allowed regex`}},
		{"a location named twice", base + "routing: {paths: [/api], rules: [{path: /api/}, {path: /e, match: exact}, {path: /e, match: exact}, {path: /e}]}\n", []string{
			`routing.rules[0].path: names the nginx location "= /api" of routing.paths again`, `routing.rules[2].path: names the nginx location "= /e" of routing.rules[1] again`,
			`routing.rules[3].path: names the nginx location "= /e" of routing.rules[1] again`}},
		{"rate limit", base + "routing: {rules: [{path: /a, rate_limit: {rps: 0, burst: -1}}]}\n", []string{
			"routing.rules[0].rate_limit.rps: must be between 1 and 100000", "routing.rules[0].rate_limit.burst: must be between 0 and 100000"}},
		{"response headers", base + "routing: {rules: [{path: /a, response_headers: {\"Bad Name\": x, X-Ok: \"$http_authorization\", Content-Length: \"0\", X-B: \"a;b\"}}]}\n", []string{
			`routing.rules[0].response_headers["Bad Name"]: "Bad Name" is not a valid header name`,
			`routing.rules[0].response_headers[Content-Length]: is set by nginx itself`,
			`routing.rules[0].response_headers[X-B]: "a;b" is not a valid header value`,
			`routing.rules[0].response_headers[X-Ok]: "$http_authorization" holds '$'`}},
	})
	s, err := Load([]byte(base + "routing: {hosts: [a.example.com], paths: [/], rules: [{path: \"^/v[0-9]+/\", match: regex, rate_limit: {rps: 10, burst: 5}, response_headers: {Cache-Control: no-store}}, {path: /healthz, match: exact}]}\n"))
	require.NoError(t, err)
	require.Equal(t, 3, s.Routing.Routes())
	var keys []string
	for _, l := range s.Routing.Locations() {
		keys = append(keys, LocationKeys("A.example.com", l)...)
	}
	require.Equal(t, []string{"a.example.com /", "a.example.com ~ ^/v[0-9]+/", "a.example.com = /healthz"}, keys)
	require.Equal(t, []string{"= /api", "/api/"}, Location{Match: MatchPrefix, Path: "/api"}.Args())
}

func TestCheckRegex(t *testing.T) {
	t.Parallel()
	for _, ok := range []string{`^/api/v[0-9]+/`, `^/img/.*\.(png|jpe?g)$`, `^/[a-z]+/\d+$`, `^/a\.b\b`, `/x(/|$)`} {
		require.NoError(t, CheckRegex(ok), ok)
	}
	for _, bad := range []string{
		"", "api", "^/a{2}", "^/a}", `^/a"`, "^/a'", "^/a;", "^/a b", "^/a#", "^/$x", "^/a$$", "^/a$b", "^/(?i)a", "^/(?P<n>a)", "^/(?=a)",
		`^/\p{L}`, `^/\1`, `^/a\`, `^/a\\b`, "^/a\n", "^/é", "^/[a", "^/a)", `^/\Q`, "^/" + string(make([]byte, 300)),
		`/img/.*\.(png|jpe?g)$`, `^/(\w+)+$`, // backtracking: backtrack_test.go
	} {
		require.Error(t, CheckRegex(bad), "%q", bad)
	}
}

// TestRulesDocExample loads docs/spec.md's rules example as written.
func TestRulesDocExample(t *testing.T) {
	t.Parallel()
	s, err := Load([]byte(base + `routing:
  hosts: [shop.example.com]
  rules:
    - {path: /healthz, match: exact}
    - {path: /, split: [{app: shop-v2, weight: 10}]}
    - path: "^/img/[a-z0-9-]+\\.(png|jpe?g)$"
      match: regex
      response_headers: {Cache-Control: "public, max-age=86400"}
    - path: /api
      rate_limit: {rps: 100, burst: 50}
      response_headers: {Cache-Control: no-store}
`))
	require.NoError(t, err)
	require.Equal(t, `^/img/[a-z0-9-]+\.(png|jpe?g)$`, s.Routing.Rules[2].Path)
	require.Empty(t, s.Routing.Paths, "with rules, no default path")
	require.Equal(t, 4, s.Routing.Routes())
}
