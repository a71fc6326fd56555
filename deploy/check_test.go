package deploy

import (
	"fmt"
	"regexp"
	"slices"
	"strings"
)

var (
	metricName = regexp.MustCompile(`\bberth_[a-z0-9_]+`)
	recorded   = regexp.MustCompile(`\bberth:[a-zA-Z0-9_:]+`)
	selector   = regexp.MustCompile(`\b(berth_[a-z0-9_]+)\s*\{([^}]*)\}`)
	quoted     = regexp.MustCompile(`"(?:[^"\\]|\\.)*"`)
	matcher    = regexp.MustCompile(`([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!~|!=|=)`)
	grouping   = regexp.MustCompile(`\b(by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)`)
	labelVals  = regexp.MustCompile(`label_values\(\s*(berth_[a-z0-9_]+)[^,]*,\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*\)`)
)

// problems says what in a PromQL expression (or any text holding some,
// such as a Grafana query) names a metric that is neither in series nor a
// recorded name in records, or a label that none of its metrics carries.
func problems(expr string, series map[string][]string, records map[string]bool) []string {
	var out []string
	names := map[string]bool{}
	for _, name := range metricName.FindAllString(expr, -1) {
		if _, ok := series[name]; !ok {
			out = append(out, fmt.Sprintf("metric %s is not registered by any daemon", name))
		}
		names[name] = true
	}
	for _, name := range recorded.FindAllString(expr, -1) {
		if !records[name] {
			out = append(out, fmt.Sprintf("recorded series %s has no recording rule", name))
		}
	}
	// Labels in a selector belong to its metric.
	for _, m := range selector.FindAllStringSubmatch(expr, -1) {
		labels, ok := series[m[1]]
		if !ok {
			continue
		}
		for _, l := range matcher.FindAllStringSubmatch(quoted.ReplaceAllString(m[2], `""`), -1) {
			if !slices.Contains(labels, l[1]) {
				out = append(out, fmt.Sprintf("%s has no label %s (it has %s)", m[1], l[1], strings.Join(labels, ", ")))
			}
		}
	}
	// Labels that group or match belong to one of the expression's metrics.
	all := map[string]bool{"instance": true, "job": true}
	for name := range names {
		for _, l := range series[name] {
			all[l] = true
		}
	}
	for _, g := range grouping.FindAllStringSubmatch(expr, -1) {
		for _, l := range strings.Split(g[2], ",") {
			if l = strings.TrimSpace(l); l != "" && !all[l] && len(names) > 0 {
				out = append(out, fmt.Sprintf("%s (%s): no metric of the expression has label %s", g[1], g[2], l))
			}
		}
	}
	for _, m := range labelVals.FindAllStringSubmatch(expr, -1) {
		if labels, ok := series[m[1]]; ok && !slices.Contains(labels, m[2]) {
			out = append(out, fmt.Sprintf("label_values: %s has no label %s", m[1], m[2]))
		}
	}
	return out
}
