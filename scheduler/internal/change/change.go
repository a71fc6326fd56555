// Package change describes how one stored app spec differs from another,
// for people: a one-line summary (history), the spec as the YAML users
// write, and a unified diff of two specs. It is pure and never shows a
// secret, nor its sealed form: an env secret, and the literal value of a
// secret health header or body (as the scheduler publishes health
// checks), read spec.RedactedValue, and one whose value changed (an env
// secret's spec.Sealed.ValueID) is said to have changed, and nothing more.
package change

import (
	"encoding/json"
	"fmt"
	"math"
	"reflect"
	"slices"
	"sort"
	"strings"

	"github.com/pmezard/go-difflib/difflib"
	yaml "go.yaml.in/yaml/v2"

	"github.com/berthhq/berth/common/spec"
)

// MaxSummary bounds a summary's length in bytes.
const MaxSummary = 200

// maxValue is the longest old or new value a summary quotes; longer ones
// read "changed".
const maxValue = 40

// maxEnv is the most variables a summary names.
const maxEnv = 8

// tree is a spec as JSON decodes it into Go values, secrets made safe.
type tree = map[string]any

// plain returns a as a tree whose env secrets read {secret: <redacted>}:
// with ids, also {value_id: …} (for comparing, never shown); a secret
// named in changed reads "<redacted> (changed)". nil for nil.
func plain(a *spec.App, ids bool, changed map[string]bool) tree {
	if a == nil {
		return nil
	}
	raw, err := json.Marshal(a)
	if err != nil {
		return tree{}
	}
	var t tree
	if err := json.Unmarshal(raw, &t); err != nil {
		return tree{}
	}
	env, _ := t["env"].(map[string]any)
	for k, v := range a.Env {
		if !v.IsSecret() {
			continue
		}
		s := map[string]any{"secret": spec.RedactedValue}
		if changed[k] {
			s["secret"] = spec.RedactedValue + " (changed)"
		}
		if ids && v.Sealed != nil {
			s["value_id"] = v.Sealed.ValueID
		}
		env[k] = s
	}
	if !ids {
		redactHealth(t, changed)
	}
	return t
}

// redactHealth replaces in t, as the scheduler publishes health checks,
// the literal value of each secret header (spec.SecretHeader) and a
// literal body with spec.RedactedValue, "(changed)" when changed names
// them ("header:NAME", "body"); "$env:" references are kept.
func redactHealth(t tree, changed map[string]bool) {
	h, _ := t["health"].(map[string]any)
	if h == nil {
		return
	}
	redacted := func(key string) string {
		if changed[key] {
			return spec.RedactedValue + " (changed)"
		}
		return spec.RedactedValue
	}
	if b, ok := h["body"].(string); ok && b != "" {
		if _, ref := spec.EnvRef(b); !ref {
			h["body"] = redacted("body")
		}
	}
	headers, _ := h["headers"].(map[string]any)
	for k, v := range headers {
		if s, ok := v.(string); ok && secretHeader(k, s) {
			headers[k] = redacted("header:" + k)
		}
	}
}

// secretHeader reports whether a health header's value is a literal
// credential, never shown.
func secretHeader(name, value string) bool {
	_, ref := spec.EnvRef(value)
	return !ref && spec.SecretHeader(name)
}

// secretPath reports whether a summary must not quote the values at path:
// a literal secret header or body of the health check.
func secretPath(path string, a, b any) bool {
	if path == "health.body" {
		return true
	}
	name, ok := strings.CutPrefix(path, "health.headers.")
	if !ok {
		return false
	}
	x, _ := a.(string)
	y, _ := b.(string)
	return secretHeader(name, x) || secretHeader(name, y)
}

// YAML is a as YAML, the format users write, its secrets redacted; ""
// for nil.
func YAML(a *spec.App) string { return toYAML(plain(a, false, nil)) }

func toYAML(t tree) string {
	if t == nil {
		return ""
	}
	b, err := yaml.Marshal(ordered(t, reflect.TypeFor[spec.App]()))
	if err != nil {
		return ""
	}
	return string(b)
}

// ordered is v (as JSON decodes it) with each object's fields in the
// order of their struct, t (as users read them: name, image, port, …),
// other maps' keys sorted, and whole numbers as integers.
func ordered(v any, t reflect.Type) any {
	for t != nil && t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	switch x := v.(type) {
	case map[string]any:
		var out yaml.MapSlice
		seen := map[string]bool{}
		if t != nil && t.Kind() == reflect.Struct {
			for i := range t.NumField() {
				name, _, _ := strings.Cut(t.Field(i).Tag.Get("json"), ",")
				if val, ok := x[name]; ok && !seen[name] {
					seen[name] = true
					out = append(out, yaml.MapItem{Key: name, Value: ordered(val, t.Field(i).Type)})
				}
			}
		}
		var elem reflect.Type
		if t != nil && t.Kind() == reflect.Map {
			elem = t.Elem()
		}
		keys := make([]string, 0, len(x))
		for k := range x {
			if !seen[k] {
				keys = append(keys, k)
			}
		}
		sort.Strings(keys)
		for _, k := range keys {
			out = append(out, yaml.MapItem{Key: k, Value: ordered(x[k], elem)})
		}
		return out
	case []any:
		var elem reflect.Type
		if t != nil && (t.Kind() == reflect.Slice || t.Kind() == reflect.Array) {
			elem = t.Elem()
		}
		out := make([]any, len(x))
		for i := range x {
			out[i] = ordered(x[i], elem)
		}
		return out
	case float64:
		if x == math.Trunc(x) && math.Abs(x) < 1<<53 {
			return int64(x)
		}
	}
	return v
}

// Diff is the unified diff of prev's YAML to next's (either may be nil:
// no spec), labelled with their names (e.g. "generation 6"); "" when they
// read the same.
func Diff(prev, next *spec.App, prevName, nextName string) string {
	// A secret whose value changed reads so in next: their values are
	// never shown, and would otherwise read the same.
	changed := map[string]bool{}
	if prev != nil && next != nil {
		for k, n := range next.Env {
			if o, ok := prev.Env[k]; ok && o.IsSecret() && n.IsSecret() && !sameSecret(o, n) {
				changed[k] = true
			}
		}
		if prev.Health != nil && next.Health != nil {
			for k, v := range next.Health.Headers {
				if o, ok := prev.Health.Headers[k]; ok && o != v {
					changed["header:"+k] = true
				}
			}
			changed["body"] = prev.Health.Body != next.Health.Body
		}
	}
	a, b := YAML(prev), toYAML(plain(next, false, changed))
	if a == b {
		return ""
	}
	out, err := difflib.GetUnifiedDiffString(difflib.UnifiedDiff{
		A: difflib.SplitLines(a), B: difflib.SplitLines(b), FromFile: prevName, ToFile: nextName, Context: 3,
	})
	if err != nil {
		return ""
	}
	return out
}

// Same reports whether two stored specs are the same (secrets by value id).
func Same(a, b *spec.App) bool { return reflect.DeepEqual(plain(a, true, nil), plain(b, true, nil)) }

// sameSecret reports whether two secrets hold the same sealed value.
func sameSecret(a, b spec.EnvValue) bool {
	return a.Sealed != nil && b.Sealed != nil && a.Sealed.ValueID == b.Sealed.ValueID
}

// Fields returns the changes from prev to next, one short phrase each, in
// spec order: "image web:1→web:2", "replicas 3→5", "env: +DB_URL
// ~LOG_LEVEL ~TOKEN (secret)", "routing.hosts changed". prev nil: none.
func Fields(prev, next *spec.App) []string {
	if prev == nil || next == nil {
		return nil
	}
	a, b := plain(prev, true, nil), plain(next, true, nil)
	delete(a, "env")
	delete(b, "env")
	var leaves []string
	diffTree("", a, b, &leaves)
	order := fieldOrder()
	sort.SliceStable(leaves, func(i, j int) bool { return rank(order, leaves[i]) < rank(order, leaves[j]) })
	// What a deploy changes most reads first: image, replicas, env.
	var out []string
	for _, l := range leaves {
		if strings.HasPrefix(l, "image ") || strings.HasPrefix(l, "replicas ") {
			out = append(out, l)
		}
	}
	if e := envChanges(prev, next); e != "" {
		out = append(out, e)
	}
	for _, l := range leaves {
		if !strings.HasPrefix(l, "image ") && !strings.HasPrefix(l, "replicas ") {
			out = append(out, l)
		}
	}
	return out
}

// fieldOrder is the top-level fields of a spec in declaration order.
func fieldOrder() []string {
	t := reflect.TypeFor[spec.App]()
	out := make([]string, 0, t.NumField())
	for i := range t.NumField() {
		name, _, _ := strings.Cut(t.Field(i).Tag.Get("json"), ",")
		out = append(out, name)
	}
	return out
}

func rank(order []string, phrase string) int {
	top, _, _ := strings.Cut(phrase, " ")
	top, _, _ = strings.Cut(top, ".")
	top, _, _ = strings.Cut(top, ":")
	if i := slices.Index(order, top); i >= 0 {
		return i
	}
	return len(order)
}

// envChanges is "env: +ADDED -REMOVED ~CHANGED", a secret marked
// "(secret)" and never quoted; "" when env is the same.
func envChanges(prev, next *spec.App) string {
	var parts []string
	mark := func(sign, name string, secret bool) {
		p := sign + name
		if secret {
			p += " (secret)"
		}
		parts = append(parts, p)
	}
	names := map[string]bool{}
	for k := range prev.Env {
		names[k] = true
	}
	for k := range next.Env {
		names[k] = true
	}
	sorted := make([]string, 0, len(names))
	for k := range names {
		sorted = append(sorted, k)
	}
	sort.Strings(sorted)
	for _, k := range sorted {
		o, had := prev.Env[k]
		n, has := next.Env[k]
		switch {
		case !had:
			mark("+", k, n.IsSecret())
		case !has:
			mark("-", k, o.IsSecret())
		case o.IsSecret() != n.IsSecret():
			mark("~", k, true)
		case o.IsSecret():
			if !sameSecret(o, n) {
				mark("~", k, true)
			}
		case o.Value != n.Value:
			mark("~", k, false)
		}
	}
	if len(parts) == 0 {
		return ""
	}
	if len(parts) > maxEnv {
		parts = append(parts[:maxEnv], fmt.Sprintf("and %d more", len(parts)-maxEnv))
	}
	return "env: " + strings.Join(parts, " ")
}

// diffTree appends a phrase for each difference of a and b under path:
// objects are compared key by key, anything else (lists included) whole.
func diffTree(path string, a, b any, out *[]string) {
	am, aok := a.(map[string]any)
	bm, bok := b.(map[string]any)
	if aok && bok {
		keys := map[string]bool{}
		for k := range am {
			keys[k] = true
		}
		for k := range bm {
			keys[k] = true
		}
		sorted := make([]string, 0, len(keys))
		for k := range keys {
			sorted = append(sorted, k)
		}
		sort.Strings(sorted)
		for _, k := range sorted {
			p := k
			if path != "" {
				p = path + "." + k
			}
			diffTree(p, am[k], bm[k], out)
		}
		return
	}
	if reflect.DeepEqual(a, b) {
		return
	}
	switch {
	case a == nil:
		*out = append(*out, path+" set")
	case b == nil:
		*out = append(*out, path+" removed")
	case secretPath(path, a, b):
		*out = append(*out, path+" changed")
	default:
		x, xok := scalar(a)
		y, yok := scalar(b)
		if xok && yok {
			*out = append(*out, fmt.Sprintf("%s %s→%s", path, x, y))
		} else {
			*out = append(*out, path+" changed")
		}
	}
}

// scalar is v as a summary quotes it, when it is a short scalar.
func scalar(v any) (string, bool) {
	var s string
	switch x := v.(type) {
	case string:
		s = x
	case float64, bool:
		s = fmt.Sprint(x)
	default:
		return "", false
	}
	if s == "" || len(s) > maxValue || strings.ContainsAny(s, "\n\r") {
		return "", false
	}
	return s, true
}

// Summary is a one-line account of what made next (generation gen) out of
// prev, the previous kept generation (prevGen; nil: none kept), bounded by
// MaxSummary. backTo, when above 0 and below prevGen, is an older
// generation whose spec next equals, as rollback --to makes it: it reads
// "back to G".
func Summary(prev *spec.App, prevGen int64, next *spec.App, gen, backTo int64) string {
	switch {
	case next == nil:
		return ""
	case prev == nil && gen <= 1:
		return "created"
	case prev == nil:
		return "oldest kept generation (earlier ones pruned)"
	}
	var head []string
	if prevGen < gen-1 {
		head = append(head, "re-created after a delete")
	}
	if Same(prev, next) {
		if len(head) > 0 {
			return "re-created after a delete, same spec"
		}
		return "restart (same spec)"
	}
	if backTo > 0 && backTo < prevGen {
		head = append(head, fmt.Sprintf("back to %d", backTo))
	}
	prefix := ""
	if len(head) > 0 {
		prefix = strings.Join(head, ": ") + ": "
	}
	return bound(prefix, Fields(prev, next))
}

// bound is prefix and as many of fields as fit in MaxSummary, saying how
// many were left out.
func bound(prefix string, fields []string) string {
	for n := len(fields); n > 0; n-- {
		line := prefix + strings.Join(fields[:n], ", ")
		if n < len(fields) {
			line += fmt.Sprintf(", and %d more", len(fields)-n)
		}
		if len(line) <= MaxSummary {
			return line
		}
	}
	if len(fields) == 0 {
		return truncate(strings.TrimSuffix(prefix, ": "), MaxSummary)
	}
	return truncate(prefix+fields[0], MaxSummary)
}

// truncate cuts s to at most n bytes on a rune boundary, ending in "…".
func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	cut := n - len("…")
	for cut > 0 && !utf8Start(s[cut]) {
		cut--
	}
	return s[:cut] + "…"
}

func utf8Start(b byte) bool { return b&0xC0 != 0x80 }

// Top returns the top-level fields of the spec (their JSON names, in spec
// order) whose values differ between prev and next, env secrets compared
// by value id; every field that next sets when prev is nil.
func Top(prev, next *spec.App) []string {
	a, b := plain(prev, true, nil), plain(next, true, nil)
	var out []string
	for _, f := range fieldOrder() {
		if !reflect.DeepEqual(a[f], b[f]) {
			out = append(out, f)
		}
	}
	return out
}
