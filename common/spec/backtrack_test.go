package spec

import (
	"encoding/json"
	"errors"
	"regexp/syntax"
	"strconv"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

// redos is a corpus of regex shapes that make a backtracking engine slow:
// OWASP's "evil regex" list (without braces, which the grammar refuses
// anyway), the classic shapes and the polynomial ones bench/regex
// measures, each with what the error must say. Each is anchored unless
// the case is about anchoring, so that the case is about its own shape.
var redos = []struct {
	re   string
	want string
}{
	// A repeat inside a repeat.
	{`^/(\w+)+$`, "`(\\w+)+` repeats a repeat (`\\w+`), and nginx's regex engine (PCRE) tries every way to split a text between the two (exponentially many): write `\\w+`"},
	{`^/(a+)+`, "write `a+`"},
	{`^/([a-zA-Z]+)*`, "`([a-zA-Z]+)*` repeats a repeat (`[a-zA-Z]+`)"},
	{`^/(a*)*`, "write `a*`"},
	{`^/(a+)*$`, "write `a*`"},
	{`^/(a?)+`, "`(a?)+` repeats a repeat (`a?`)"},
	{`^/(a|a?)+`, "`(a|a?)+` holds a repeat (`a?`) inside a repeat"},
	{`^/(.*a)+x`, "`(.*a)+` holds a repeat (`.*`) inside a repeat"},
	{`^/((ab)*)*`, "`((ab)*)*` repeats a repeat (`(ab)*`)"},
	{`^/(a(b(c+)+)+)`, "`(b(c+)+)+` holds a repeat (`(c+)+`) inside a repeat"},
	{`^/(\w+\s?)+$`, "holds a repeat (`\\w+`) inside a repeat"},
	{`^/(([a-z])+.)+[A-Z]([a-z])+$`, "holds a repeat (`([a-z])+`) inside a repeat"},
	{`^/([a-zA-Z0-9])(([\-.]|[_]+)?([a-zA-Z0-9]+))*(@)`, "holds a repeat"},
	{`^/(\d+/)*x`, "`(\\d+/)*` holds a repeat (`\\d+`) inside a repeat"},
	{`^/(a+?)+`, "repeats a repeat (`a+?`)"},
	// Alternatives of a repeat that match one text two ways.
	{`^/(a|a)*`, "`(a|a)*` can match \"a\" in more than one way, and nginx's regex engine (PCRE) tries every way (exponentially many on a text that fails to match): repeat `a` instead"},
	{`^/(a|aa)+`, "`(a|aa)+` can match \"aa\" in more than one way"},
	{`^/(\w|\d)+$`, "`(\\w|\\d)+` can match \"0\" in more than one way, and nginx's regex engine (PCRE) tries every way (exponentially many on a text that fails to match): repeat `[\\w\\d]` instead"},
	{`^/(a|b|ab)*`, "`(a|b|ab)*` can match \"ab\" in more than one way"},
	{`^/(.|\s)*x`, "`(.|\\s)*` can match \"\\t\" in more than one way"},
	{`^/([a-z]|[0-9]|[a-f])+$`, "repeat `[a-z0-9a-f]` instead"},
	{`^/(ab|a(b))+`, "can match \"ab\" in more than one way"},
	{`^/((a|ab)(c|bc))+`, "`((a|ab)(c|bc))+` can match \"abc\" in more than one way"},
	{`^/(a|)+`, "`(a|)+` repeats `(a|)` that can match no text"},
	{`^/(a|\b)*x`, "that can match no text"},
	{`^/(a(|b)c)+`, "`(a(|b)c)+` holds `|b`, whose empty alternative is an optional part inside a repeat"},
	{`^/(ab|c(d|))+`, "`(ab|c(d|))+` holds `d|`, whose empty alternative"},
	// Repeats in sequence.
	{`^/.*.*.*.*.*!$`, "`.*` (at character 3) and `.*` (at character 5) can both match a text such as \"aaaa\""},
	{`^/\w*\w*\w*\w*x`, "`\\w*` (at character 3) and `\\w*` (at character 6)"},
	{`^/\w*\w*x`, "`\\w*` (at character 3) and `\\w*` (at character 6)"},
	{`^/.*a.*b`, "`.*` (at character 3) and `.*` (at character 6)"},
	{`^/.*/api/.*\.json$`, "`.*` (at character 3) and `.*` (at character 10)"},
	{`^/\w+_?\w+$`, "`\\w+` (at character 3) and `\\w+` (at character 8)"},
	{`^/[a-z]+[a-z0-9]*x`, "`[a-z]+` (at character 3) and `[a-z0-9]*` (at character 9) can both match a text such as \"aaaa\""},
	{`^/\d+(-\w+)?\d+$`, "`\\d+` (at character 3) and `\\d+` (at character 13)"},
	{`^/.+/.+$`, "`.+` (at character 3) and `.+` (at character 6)"},
	{`^/.*?a.*?b`, "`.*?` (at character 3)"},
	// Unanchored: nginx tries it from every position.
	{`/img/.*\.(png|jpe?g)$`, "it is not anchored, so nginx tries it from every position of the text, and `.*` (at character 6) can match the same characters from many of them"},
	{`/ab.*c!`, "start it with `^`"},
	{`^/a|/b.*`, "it is not anchored"},
}

// ordinary are regexes users write; every one stays accepted.
var ordinary = []string{
	`^/api/v[0-9]+/`, `^/(en|fr|de)/`, `^/.*\.(png|jpg|css)$`, `^/users/[0-9]+/posts$`, `^/img/[a-z0-9-]+\.(png|jpe?g)$`,
	`^/img/.+\.(png|jpe?g)$`, `/[a-z]+\.png$`, `^/v[0-9]+/[a-z]+$`, `^/[^/]+/[^/]+$`, `^/[a-z]+-[a-z]+$`, `^/(e|en)+$`,
	`^/([a-z0-9]|-)+$`, `^/(\.|[a-z])+$`, `^/blog/[0-9]+(/[a-z-]+)?/?$`, `/x(/|$)`, `^/a\.b\b`, `^/files/.+\.pdf$`, `^/.*/edit$`,
	`^/static/.*`, `^/(api|static)/.*$`, `^/[a-z]+/[0-9]+/.*`, `^/(ab|cd)*$`, `^/(ab|a)+$`, `^/v1/`, `/healthz$`, `^/[^.]+\.html?$`,
	`^/(\d+)/(\d+)$`, `^/[[:alpha:]]+$`, `^/[]a]+$`, `^/[^]]*$`, `^/a*?b`, `^/(x[0-9]|y[0-9])+$`,
}

// ordinaryHeaders are header regexes users write (after the "~").
var ordinaryHeaders = []string{`^Mozilla.*Chrome`, `Chrome`, `^(red|blue)$`, `(iPhone|Android)`, `\.(png|jpg|css)$`, `^[0-9a-f]+$`, `Chrome/[0-9]+`, `^.*Safari`}

// TestReDoSRefusedAtApply: each shape is refused by Load as a rule's
// regex path and as a header's regex, with the field named.
func TestReDoSRefusedAtApply(t *testing.T) {
	t.Parallel()
	for _, tc := range redos {
		t.Run(tc.re, func(t *testing.T) {
			t.Parallel()
			re, err := json.Marshal(tc.re)
			require.NoError(t, err)
			hre, err := json.Marshal("~" + tc.re)
			require.NoError(t, err)
			got := problems(t, base+"routing: {rules: [{path: "+string(re)+", match: regex}, {path: /h, headers: {X-A: "+string(hre)+"}}]}\n")
			require.Len(t, got, 2, "%q", got)
			for i, field := range []string{"routing.rules[0].path", "routing.rules[1].headers[X-A]"} {
				prefix := field + ": " + strconv.Quote(tc.re) + " can stall nginx: "
				require.True(t, strings.HasPrefix(got[i], prefix), "got %q\nwant %q…", got[i], prefix)
				require.Contains(t, got[i], tc.want)
			}
		})
	}
}

// TestOrdinaryRegexesAccepted: what users write stays accepted, as a
// path and, unanchored shapes aside, as a header.
func TestOrdinaryRegexesAccepted(t *testing.T) {
	t.Parallel()
	for _, re := range ordinary {
		require.NoError(t, CheckRegex(re), re)
		require.NoError(t, CheckHeaderRegex(re), re)
	}
	for _, re := range ordinaryHeaders {
		require.NoError(t, CheckHeaderMatch("~"+re), re)
	}
	s, err := Load([]byte(base + `routing:
  rules:
    - {path: "^/api/v[0-9]+/", match: regex}
    - {path: "^/(en|fr|de)/", match: regex}
    - {path: "^/users/[0-9]+/posts$", match: regex}
    - {path: /, headers: {User-Agent: "~^Mozilla.*Chrome"}}
`))
	require.NoError(t, err)
	require.Len(t, s.Routing.Rules, 4)
}

// TestReDoSCorpusAgreesWithRegexpSyntax cross-checks the parser of
// rxparse.go with regexp/syntax's tree before Simplify: a regex whose
// tree nests a repeat inside an unbounded repeat is refused.
func TestReDoSCorpusAgreesWithRegexpSyntax(t *testing.T) {
	t.Parallel()
	for _, tc := range redos {
		if nestedInSyntax(t, tc.re) {
			require.ErrorContains(t, CheckRegex(tc.re), "repeat", tc.re)
		}
	}
	for _, re := range ordinary {
		require.False(t, nestedInSyntax(t, re), re)
	}
}

// nestedInSyntax reports whether regexp/syntax's parse of s (before
// Simplify) has a repeat under a star or a plus.
func nestedInSyntax(t *testing.T, s string) bool {
	t.Helper()
	re, err := syntax.Parse(s, syntax.Perl)
	require.NoError(t, err)
	isRepeat := func(r *syntax.Regexp) bool {
		return r.Op == syntax.OpStar || r.Op == syntax.OpPlus || r.Op == syntax.OpQuest || r.Op == syntax.OpRepeat
	}
	var walk func(r *syntax.Regexp, inLoop bool) bool
	walk = func(r *syntax.Regexp, inLoop bool) bool {
		if inLoop && isRepeat(r) {
			return true
		}
		for _, sub := range r.Sub {
			if walk(sub, inLoop || r.Op == syntax.OpStar || r.Op == syntax.OpPlus) {
				return true
			}
		}
		return false
	}
	return walk(re, false)
}

func TestParseRx(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		re    string
		chars int
		spans []string // of the top-level concat's pieces
	}{
		{`^/a\.b`, 4, []string{"^", "/", "a", `\.`, "b"}},
		{`^/[]a]+x`, 3, []string{"^", "/", "[]a]+", "x"}},
		{`^/[^]]*?`, 2, []string{"^", "/", "[^]]*?"}},
		{`^/[[:alpha:]\]]?\b`, 2, []string{"^", "/", `[[:alpha:]\]]?`, `\b`}},
		{`^/(a|bc)+$`, 4, []string{"^", "/", "(a|bc)+", "$"}},
	} {
		n, chars, err := parseRx(tc.re)
		require.NoError(t, err, tc.re)
		require.Equal(t, tc.chars, chars, tc.re)
		var spans []string
		for _, sub := range n.subs {
			spans = append(spans, snip(tc.re, sub))
		}
		require.Equal(t, tc.spans, spans, tc.re)
	}
	set, err := charSet(`[^/]`)
	require.NoError(t, err)
	require.True(t, set.meets(runeSet{'\n', '\n'}), "PCRE's [^/] matches a newline too")
	require.False(t, set.meets(runeSet{'/', '/'}))
	dot, err := charSet(`.`)
	require.NoError(t, err)
	require.False(t, dot.meets(runeSet{'\n', '\n'}))
	require.Equal(t, runeSet{'0', '9', 'a', 'f'}, runeSet{'a', 'c', '0', '9', 'b', 'f'}.normal())
	require.Equal(t, runeSet{'b', 'c'}, runeSet{'a', 'c'}.intersect(runeSet{'b', 'z'}))
	require.Equal(t, 'a', runeSet{'!', '!', '0', '9', 'a', 'a'}.sample())
	for _, bad := range []string{`^/a**`, `^/(a`, `^/[a`, `^/a\`} {
		_, _, err := parseRx(bad)
		require.Error(t, err, bad)
	}
}

// TestBacktrackBudget: a regex whose check needs more work than the
// budget is refused, not checked for long.
func TestBacktrackBudget(t *testing.T) {
	t.Parallel()
	var alts []string
	for c := 'a'; c <= 'z'; c++ {
		alts = append(alts, string(c)+"x")
	}
	re := "^/(" + strings.Join(alts, "|") + ")+$"
	require.NoError(t, checkBacktracking(re))
	require.True(t, errors.Is(checkBacktrackingWithin(re, 1000), errTooIntricate))
}

// FuzzCheckRegex: no input makes the check panic, and a regex it accepts
// has no repeat inside an unbounded repeat in regexp/syntax's tree.
func FuzzCheckRegex(f *testing.F) {
	for _, tc := range redos {
		f.Add(tc.re)
	}
	for _, re := range ordinary {
		f.Add(re)
	}
	f.Fuzz(func(t *testing.T, s string) {
		if CheckHeaderRegex(s) == nil && nestedInSyntax(t, s) {
			t.Fatalf("accepted %q, which nests a repeat", s)
		}
		_ = CheckRegex(s)
	})
}
