package spec

import (
	"fmt"
	"maps"
	"regexp"
	"regexp/syntax"
	"slices"
	"strings"
)

// Routing rules (routing.rules): locations of an app beyond its path
// prefixes, each matched as a prefix, an exact path or a regex, with an
// optional rate limit per client address and response headers.

// Match kinds of a rule.
const (
	MatchPrefix = "prefix"
	MatchExact  = "exact"
	MatchRegex  = "regex"
)

// Bounds of rules.
const (
	// MaxRules bounds routing.rules.
	MaxRules = 20
	// MaxRegexLen bounds a rule's regex.
	MaxRegexLen = 256
	// MaxResponseHeaders bounds one rule's response_headers.
	MaxResponseHeaders = 16
	// MaxRateLimitRPS bounds rate_limit.rps and rate_limit.burst.
	MaxRateLimitRPS = 100_000
	// MaxMatchHeaders bounds one rule's headers.
	MaxMatchHeaders = 4
	// MaxSplits bounds one rule's split.
	MaxSplits = 4
	// MaxHeaderMatchLen bounds an exact header match: a key of nginx's
	// map hash, whose buckets (map_hash_bucket_size 128) hold no longer
	// one. A longer value can be matched as a regex.
	MaxHeaderMatchLen = 100
)

// Rule is one location of an app with its own match and options.
type Rule struct {
	// Path is the path prefix, the exact path or the regex, per Match.
	Path string `json:"path"`
	// Match is prefix (the default), exact or regex.
	Match string `json:"match,omitempty"`
	// RateLimit limits the requests per second from one client address;
	// beyond rps plus burst, nginx answers 429.
	RateLimit *RateLimit `json:"rate_limit,omitempty"`
	// ResponseHeaders are added to every answer of this location, errors
	// included.
	ResponseHeaders map[string]string `json:"response_headers,omitempty"`
	// Headers limit the rule to requests that carry every one of them: an
	// exact value, or "~" and a regex. Another app may route the same path
	// without them (canary by header).
	Headers map[string]string `json:"headers,omitempty"`
	// Split sends a share of the rule's requests to other apps, by weight
	// in percent; the rest stay with this app.
	Split []Split `json:"split,omitempty"`
}

// Split is one share of a rule's requests that goes to another app.
type Split struct {
	// App is the app that gets them.
	App string `json:"app"`
	// Weight is the share in percent, 0–100; the weights of a rule add up
	// to at most 100.
	Weight int `json:"weight"`
}

// RateLimit is nginx's limit_req: requests per second from one client
// address, with a burst served without delay.
type RateLimit struct {
	RPS   int `json:"rps"`
	Burst int `json:"burst,omitempty"`
}

// Location is one nginx location an app's routing asks for: one of its
// paths (a prefix, with no options) or one of its rules.
type Location struct {
	// Match is MatchPrefix, MatchExact or MatchRegex.
	Match string
	// Path is the route (RoutePath) of a prefix, the exact path, or the
	// regex.
	Path string
	// Rule is the rule it comes from, nil for a plain path.
	Rule *Rule
	// Index is the rule's index in routing.rules, -1 for a plain path.
	Index int
}

// Args returns the nginx location arguments of l: "/" matches everything;
// a prefix "/api" is "= /api" and "/api/" (so not /apix); an exact path
// is "= /p"; a regex "~ re". Two locations that share an argument on one
// host are one nginx location: they conflict.
func (l Location) Args() []string {
	switch l.Match {
	case MatchExact:
		return []string{"= " + l.Path}
	case MatchRegex:
		return []string{"~ " + l.Path}
	}
	if strings.HasSuffix(l.Path, "/") {
		return []string{l.Path}
	}
	return []string{"= " + l.Path, l.Path + "/"}
}

// Label describes l in an error: "path /api", "exact path /p", "regex path ^/v".
func (l Location) Label() string {
	if l.Match == MatchPrefix {
		return "path " + l.Path
	}
	return l.Match + " path " + l.Path
}

// Locations returns the locations of r: its paths, then its rules, in
// order.
func (r Routing) Locations() []Location {
	out := make([]Location, 0, len(r.Paths)+len(r.Rules))
	for _, p := range r.Paths {
		out = append(out, Location{Match: MatchPrefix, Path: RoutePath(p), Index: -1})
	}
	for i := range r.Rules {
		rule := &r.Rules[i]
		l := Location{Match: rule.match(), Path: rule.Path, Rule: rule, Index: i}
		if l.Match == MatchPrefix {
			l.Path = RoutePath(rule.Path)
		}
		out = append(out, l)
	}
	return out
}

func (r *Rule) match() string {
	if r.Match == "" {
		return MatchPrefix
	}
	return r.Match
}

// LocationKeys are the claims of one location on one host ("" for the
// default server), one per nginx location argument (Args): two apps whose
// locations share a key conflict, and the one that claimed it first
// (ClaimsBefore) keeps the location.
func LocationKeys(host string, l Location) []string {
	args := l.Args()
	cond := l.Condition()
	out := make([]string, len(args))
	for i, a := range args {
		out[i] = strings.ToLower(host) + " " + a + cond
	}
	return out
}

// Condition is the header match of l in one canonical form ("" for none):
// two rules with the same location and condition are one claim; with
// different conditions, each gets the requests its headers match.
func (l Location) Condition() string {
	if l.Rule == nil || len(l.Rule.Headers) == 0 {
		return ""
	}
	var b strings.Builder
	b.WriteString(" [")
	for i, name := range slices.Sorted(maps.Keys(l.Rule.Headers)) {
		if i > 0 {
			b.WriteString(" & ")
		}
		b.WriteString(strings.ToLower(name))
		b.WriteString(": ")
		v := l.Rule.Headers[name]
		if !strings.HasPrefix(v, "~") {
			v = strings.ToLower(v) // nginx's map compares exact values ignoring case
		}
		b.WriteString(v)
	}
	b.WriteString("]")
	return b.String()
}

// validateRules checks routing.rules; path prefixes every field path. A
// rule may not name a location that a path or an earlier rule names.
func validateRules(path string, r Routing) Errors {
	var es Errors
	rules := r.Rules
	if len(rules) > MaxRules {
		es.Add(path, "has %d rules; at most %d", len(rules), MaxRules)
	}
	seen := map[string]string{}
	for _, l := range r.Locations() {
		where := Index(path, l.Index)
		if l.Rule == nil {
			where = strings.TrimSuffix(path, "rules") + "paths"
		}
		for _, arg := range l.Args() {
			key := arg + l.Condition()
			if first, dup := seen[key]; dup && l.Rule != nil {
				es.Add(Join(where, "path"), "names the nginx location %q%s of %s again", arg, l.Condition(), first)
				break
			} else if !dup {
				seen[key] = where
			}
		}
	}
	for i, r := range rules {
		rp := Index(path, i)
		switch r.match() {
		case MatchPrefix, MatchExact:
			es.Check(Join(rp, "path"), CheckPath(r.Path))
		case MatchRegex:
			es.Check(Join(rp, "path"), CheckRegex(r.Path))
		default:
			es.Add(Join(rp, "match"), "%q is not one of prefix, exact, regex", r.Match)
		}
		if l := r.RateLimit; l != nil {
			if l.RPS < 1 || l.RPS > MaxRateLimitRPS {
				es.Add(Join(Join(rp, "rate_limit"), "rps"), "must be between 1 and %d", MaxRateLimitRPS)
			}
			if l.Burst < 0 || l.Burst > MaxRateLimitRPS {
				es.Add(Join(Join(rp, "rate_limit"), "burst"), "must be between 0 and %d", MaxRateLimitRPS)
			}
		}
		if len(r.Headers) > MaxMatchHeaders {
			es.Add(Join(rp, "headers"), "has %d headers; at most %d", len(r.Headers), MaxMatchHeaders)
		}
		for _, name := range slices.Sorted(maps.Keys(r.Headers)) {
			hp := Key(Join(rp, "headers"), name)
			if err := CheckHeaderName(name); err != nil {
				es.Check(hp, err)
				continue
			}
			es.Check(hp, CheckHeaderMatch(r.Headers[name]))
		}
		if len(r.Split) > MaxSplits {
			es.Add(Join(rp, "split"), "has %d entries; at most %d", len(r.Split), MaxSplits)
		}
		total, apps := 0, map[string]int{}
		for j, sp := range r.Split {
			sp2 := Index(Join(rp, "split"), j)
			if err := CheckName(sp.App); err != nil {
				es.Check(Join(sp2, "app"), err)
			} else if k, dup := apps[sp.App]; dup {
				es.Add(Join(sp2, "app"), "%q repeats %s", sp.App, Index(Join(rp, "split"), k))
			}
			apps[sp.App] = j
			if sp.Weight < 0 || sp.Weight > 100 {
				es.Add(Join(sp2, "weight"), "(%d) must be between 0 and 100 (percent)", sp.Weight)
			}
			total += sp.Weight
		}
		if total > 100 {
			es.Add(Join(rp, "split"), "weights add up to %d%%; at most 100", total)
		}
		if len(r.ResponseHeaders) > MaxResponseHeaders {
			es.Add(Join(rp, "response_headers"), "has %d headers; at most %d", len(r.ResponseHeaders), MaxResponseHeaders)
		}
		for _, name := range slices.Sorted(maps.Keys(r.ResponseHeaders)) {
			hp := Key(Join(rp, "response_headers"), name)
			if err := CheckHeaderName(name); err != nil {
				es.Check(hp, err)
				continue
			}
			if slices.Contains(framingHeaders, strings.ToLower(name)) {
				es.Add(hp, "is set by nginx itself (it frames the response or the connection); choose another header")
				continue
			}
			es.Check(hp, CheckResponseHeaderValue(r.ResponseHeaders[name]))
		}
	}
	return es
}

// framingHeaders are response headers a rule may not set: nginx writes
// them, and a second one breaks the response or the connection.
var framingHeaders = []string{"connection", "content-length", "transfer-encoding", "keep-alive", "upgrade", "te", "trailer", "date", "server", "x-request-id"}

// CheckHeaderMatch checks what a rule's header must be: an exact value
// (CheckResponseHeaderValue, not starting with '~'), or "~" and a regex
// (CheckHeaderRegex).
func CheckHeaderMatch(s string) error {
	if re, ok := strings.CutPrefix(s, "~"); ok {
		return CheckHeaderRegex(re)
	}
	if s == "" {
		return fmt.Errorf("must be a value, or \"~\" and a regex")
	}
	if err := CheckHeaderValue(s); err != nil {
		return err
	}
	if strings.Contains(s, "$") {
		return fmt.Errorf("%q holds '$', which nginx reads as a variable: a header match is a literal value, or \"~\" and a regex", s)
	}
	if len(s) > MaxHeaderMatchLen {
		return fmt.Errorf("has %d characters: an exact header match has at most %d (match a longer value with \"~\" and a regex)", len(s), MaxHeaderMatchLen)
	}
	return nil
}

// CheckHeaderRegex checks the regex of a header match: CheckRegex's grammar
// without its first character rule (a header value is not a path).
func CheckHeaderRegex(s string) error {
	return checkRegex(s, false)
}

// CheckResponseHeaderValue checks a response header value as it is written
// into nginx's config: a header value (CheckHeaderValue) without '$',
// which nginx would read as a variable.
func CheckResponseHeaderValue(s string) error {
	if err := CheckHeaderValue(s); err != nil {
		return err
	}
	if strings.Contains(s, "$") {
		return fmt.Errorf("%q holds '$', which nginx reads as a variable: response header values are literal", s)
	}
	return nil
}

// regexChars are the characters a rule's regex may hold; a backslash may
// escape only one of regexEscapes.
const (
	regexChars   = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789/-._~%!&*+,=:@^$()[]|?\\"
	regexEscapes = `dDwWsSbB./-()[]*+?|^$`
)

// CheckRegex checks a rule's regex: it starts with '^' or '/', holds only
// path characters and the regex operators . * + ? | ( ) [ ] ^, with '$'
// only at the end or before ')' or '|' (never where nginx could read a
// variable name) and a backslash only before d D w W s S b B
// or an operator, at most MaxRegexLen characters, and compiles under Go's
// RE2. So nginx's PCRE reads it the same way: no braces (repetition
// counts), no flags, named groups, Unicode classes, back references or
// look-around, none of which RE2 and PCRE share, and nothing nginx's
// config parser would read as a variable, a block or the end of the
// directive.
func CheckRegex(s string) error { return checkRegex(s, true) }

func checkRegex(s string, path bool) error {
	bad := func(why string) error {
		return fmt.Errorf("%q is not an allowed regex (%s; allowed: path characters and . * + ? | ( ) [ ] ^ $ \\d \\w \\s \\b, starting with '^' or '/', at most %d characters)", s, why, MaxRegexLen)
	}
	if s == "" || len(s) > MaxRegexLen {
		return bad("empty or too long")
	}
	if path && s[0] != '^' && s[0] != '/' {
		return bad("it must start with '^' or '/'")
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !strings.ContainsRune(regexChars, rune(c)) {
			return bad(fmt.Sprintf("%q is not allowed", c))
		}
		switch {
		case c == '$' && i != len(s)-1 && s[i+1] != ')' && s[i+1] != '|':
			return bad("'$' only at the end, or before ')' or '|'")
		case c == '\\':
			if i+1 >= len(s) || !strings.ContainsRune(regexEscapes, rune(s[i+1])) {
				return bad("a backslash escapes only d D w W s S b B or an operator")
			}
			i++
		case c == '(' && i+1 < len(s) && s[i+1] == '?':
			return bad("no (? groups")
		}
	}
	if _, err := syntax.Parse(s, syntax.Perl); err != nil {
		return bad(err.Error())
	}
	if _, err := regexp.Compile(s); err != nil {
		return bad(err.Error())
	}
	if err := checkBacktracking(s); err != nil {
		return fmt.Errorf("%q can stall nginx: %w", s, err)
	}
	return nil
}
