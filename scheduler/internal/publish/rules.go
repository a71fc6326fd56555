package publish

import (
	"maps"
	"slices"
	"strings"

	"github.com/berthhq/berth/common/spec"
)

// servableRouting returns r without the rules whose regex, as a path or
// as a header match, the grammar refuses today: a spec stored before the
// grammar refused regexes that stall nginx (issue 24) is still published,
// with its other paths and rules, rather than failing the whole record
// (and, in a full republish, every app after it). A rule with a refused
// header regex goes whole: without its headers it would take every
// request of its path. The reasons are "field: problem" lines for the
// log. r itself is not changed.
func servableRouting(r spec.Routing) (spec.Routing, []string) {
	var reasons []string
	keep := make([]spec.Rule, 0, len(r.Rules))
	for i, rule := range r.Rules {
		if why := refusedRegex(spec.Index("routing.rules", i), rule); why != "" {
			reasons = append(reasons, why)
			continue
		}
		keep = append(keep, rule)
	}
	if len(reasons) == 0 {
		return r, nil
	}
	r.Rules = keep
	return r, reasons
}

// refusedRegex returns why rule's path regex or a header regex is
// refused, or "".
func refusedRegex(path string, rule spec.Rule) string {
	if rule.Match == spec.MatchRegex {
		if err := spec.CheckRegex(rule.Path); err != nil {
			return spec.Join(path, "path") + ": " + err.Error()
		}
	}
	for _, name := range slices.Sorted(maps.Keys(rule.Headers)) {
		if v := rule.Headers[name]; strings.HasPrefix(v, "~") {
			if err := spec.CheckHeaderMatch(v); err != nil {
				return spec.Key(spec.Join(path, "headers"), name) + ": " + err.Error()
			}
		}
	}
	return ""
}
