package spec

import (
	"bytes"
	"encoding/json"
	"fmt"
	"math"
	"reflect"
	"sort"
	"strings"

	"sigs.k8s.io/yaml"
)

// MaxSpecSize is the largest spec Decode accepts.
const MaxSpecSize = 1 << 20

// Decode reads a spec written in YAML or JSON (JSON is YAML) strictly: an
// unknown field, a duplicate key, a value of the wrong kind or an
// unparseable duration, size or status list is an error. Every such
// problem is returned at once, as Errors, each with its field path. Fields
// that are absent take their defaults; fields that are present keep their
// value, even a zero one.
func Decode(b []byte) (*App, error) {
	app, errs := decode(b)
	if len(errs) > 0 {
		return nil, errs
	}
	return app, nil
}

// decode returns the structural problems of b and, when its values are at
// least of the right kinds (unknown fields aside), the spec they make, so
// Load can validate it too and report every problem in one answer.
func decode(b []byte) (*App, Errors) {
	if len(b) > MaxSpecSize {
		return nil, Errors{{Message: fmt.Sprintf("spec is %d bytes; the limit is %d", len(b), MaxSpecSize)}}
	}
	js, err := yaml.YAMLToJSONStrict(b)
	if err != nil {
		return nil, Errors{{Message: "not valid YAML or JSON: " + err.Error()}}
	}
	dec := json.NewDecoder(bytes.NewReader(js))
	dec.UseNumber()
	var tree any
	if err := dec.Decode(&tree); err != nil {
		return nil, Errors{{Message: "not valid YAML or JSON: " + err.Error()}}
	}
	if _, ok := tree.(map[string]any); !ok {
		return nil, Errors{{Message: "a spec must be a mapping of fields (name, image, port, …), not " + kindOf(tree)}}
	}
	var errs Errors
	walk(reflect.TypeFor[App](), tree, "", false, &errs)
	app := defaultApp()
	lenient := json.NewDecoder(bytes.NewReader(js))
	if len(errs) == 0 {
		lenient.DisallowUnknownFields()
	}
	if err := lenient.Decode(app); err != nil {
		if len(errs) == 0 { // the walk should have caught it
			errs = Errors{{Message: err.Error()}}
		}
		return nil, errs
	}
	app.Default()
	return app, errs
}

// Load decodes, defaults and validates a spec: what the API and the CLI
// accept. The error lists every problem, structural and semantic, at once.
func Load(b []byte) (*App, error) {
	app, errs := decode(b)
	if app != nil {
		if verr := app.Validate(); verr != nil {
			errs = append(errs, verr.(Errors)...)
		}
	}
	if len(errs) > 0 {
		return nil, errs
	}
	return app, nil
}

var (
	durationType     = reflect.TypeFor[Duration]()
	byteSizeType     = reflect.TypeFor[ByteSize]()
	logSizeType      = reflect.TypeFor[LogSize]()
	statusRangesType = reflect.TypeFor[StatusRanges]()
	shareType        = reflect.TypeFor[Share]()
)

// secretFields are the fields whose values may be secrets (env values,
// health check headers, bodies and TCP payloads): a problem under one names
// the field and the expected kind but never echoes the value.
var secretFields = map[string]bool{"env": true, "headers": true, "body": true, "send": true}

// walk checks the decoded tree v against type t, adding a problem for every
// unknown field, wrong kind and unparseable scalar, with its path. secret
// is set under a secret field: problems then say the kind of v, not v.
func walk(t reflect.Type, v any, path string, secret bool, errs *Errors) {
	if v == nil { // null: the field is absent
		return
	}
	kindOf := kindOf
	if secret {
		kindOf = kindName
	}
	switch t {
	case durationType:
		s, ok := v.(string)
		if !ok {
			errs.Add(path, "must be a duration string such as \"5s\", not %s", kindOf(v))
			return
		}
		_, err := ParseDuration(s)
		errs.Check(path, err)
		return
	case logSizeType:
		if !isScalarText(v) {
			errs.Add(path, "%s, not %s", logSizeHint, kindOf(v))
			return
		}
		_, err := ParseLogSize(scalarString(v))
		errs.Check(path, err)
		return
	case byteSizeType:
		_, err := ParseByteSize(scalarString(v))
		if !isScalarText(v) {
			err = fmt.Errorf("must be a size such as \"256Mi\", not %s", kindOf(v))
		}
		errs.Check(path, err)
		return
	case shareType:
		switch v.(type) {
		case string:
		case map[string]any:
			walk(reflect.TypeFor[shareObject](), v, path, secret, errs)
		default:
			errs.Add(path, "must be an app name, or a mapping {app, paths}, not %s", kindOf(v))
		}
		return
	case statusRangesType:
		_, err := ParseStatusRanges(scalarString(v))
		if !isScalarText(v) {
			err = fmt.Errorf("must be a status list such as \"200-399,404\", not %s", kindOf(v))
		}
		errs.Check(path, err)
		return
	case envValueType:
		walkEnvValue(v, path, errs)
		return
	}
	switch t.Kind() {
	case reflect.Pointer:
		walk(t.Elem(), v, path, secret, errs)
	case reflect.Struct:
		m, ok := v.(map[string]any)
		if !ok {
			errs.Add(path, "must be a mapping of fields, not %s", kindOf(v))
			return
		}
		fields := jsonFields(t)
		for _, k := range sortedKeys(m) {
			ft, ok := fields[k]
			if !ok {
				errs.Add(Join(path, k), "unknown field%s (allowed: %s)", suggest(k, fields), strings.Join(sortedKeys(fields), ", "))
				continue
			}
			walk(ft, m[k], Join(path, k), secret || secretFields[k], errs)
		}
	case reflect.Map:
		m, ok := v.(map[string]any)
		if !ok {
			errs.Add(path, "must be a mapping, not %s", kindOf(v))
			return
		}
		for _, k := range sortedKeys(m) {
			walk(t.Elem(), m[k], Key(path, k), secret, errs)
		}
	case reflect.Slice:
		a, ok := v.([]any)
		if !ok {
			errs.Add(path, "must be a list, not %s", kindOf(v))
			return
		}
		for i, x := range a {
			walk(t.Elem(), x, Index(path, i), secret, errs)
		}
	case reflect.String:
		if _, ok := v.(string); !ok {
			hint := ""
			if _, isBool := v.(bool); isBool {
				hint = " (in YAML, quote yes, no, on, off, true and false to keep them text)"
			}
			errs.Add(path, "must be a string, not %s%s", kindOf(v), hint)
		}
	case reflect.Int, reflect.Int32, reflect.Int64:
		n, ok := v.(json.Number)
		if !ok {
			errs.Add(path, "must be a whole number, not %s", kindOf(v))
			return
		}
		i, err := n.Int64()
		if err != nil || i < math.MinInt32 || i > math.MaxInt32 {
			errs.Add(path, "must be a whole number between %d and %d, not %s", math.MinInt32, math.MaxInt32, kindOf(n))
		}
	case reflect.Float64:
		n, ok := v.(json.Number)
		if !ok {
			errs.Add(path, "must be a number, not %s", kindOf(v))
			return
		}
		if f, err := n.Float64(); err != nil || math.IsInf(f, 0) || math.IsNaN(f) {
			errs.Add(path, "must be a finite number, not %s", kindOf(n))
		}
	case reflect.Bool:
		if _, ok := v.(bool); !ok {
			errs.Add(path, "must be true or false, not %s", kindOf(v))
		}
	default:
		errs.Add(path, "cannot be decoded (unsupported type %s)", t)
	}
}

func isScalarText(v any) bool {
	switch v.(type) {
	case string, json.Number:
		return true
	}
	return false
}

func scalarString(v any) string {
	switch x := v.(type) {
	case string:
		return x
	case json.Number:
		return x.String()
	}
	return ""
}

func kindOf(v any) string {
	switch x := v.(type) {
	case nil:
		return "null"
	case string:
		if len(x) > 40 {
			x = x[:40] + "…"
		}
		return fmt.Sprintf("the string %q", x)
	case json.Number:
		return "the number " + x.String()
	case bool:
		return fmt.Sprintf("the boolean %t", x)
	case []any:
		return "a list"
	case map[string]any:
		return "a mapping"
	}
	return fmt.Sprintf("%T", v)
}

// kindName is kindOf without the value, for fields that may hold secrets.
func kindName(v any) string {
	switch v.(type) {
	case nil:
		return "null"
	case string:
		return "a string"
	case json.Number:
		return "a number"
	case bool:
		return "a boolean"
	case []any:
		return "a list"
	case map[string]any:
		return "a mapping"
	}
	return fmt.Sprintf("%T", v)
}

// jsonFields maps the JSON names of t's fields to their types.
func jsonFields(t reflect.Type) map[string]reflect.Type {
	out := make(map[string]reflect.Type, t.NumField())
	for i := range t.NumField() {
		f := t.Field(i)
		name, _, _ := strings.Cut(f.Tag.Get("json"), ",")
		if !f.IsExported() || name == "-" || name == "" {
			continue
		}
		out[name] = f.Type
	}
	return out
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

// suggest returns ` (did you mean "x"?)` for the allowed name closest to k,
// when one is within two edits.
func suggest(k string, allowed map[string]reflect.Type) string {
	best, bestD := "", 3
	for name := range allowed {
		if d := editDistance(strings.ToLower(k), name); d < bestD || d == bestD && name < best {
			best, bestD = name, d
		}
	}
	if best == "" || len(k) > 64 {
		return ""
	}
	return fmt.Sprintf(" (did you mean %q?)", best)
}

func editDistance(a, b string) int {
	if len(a) > 64 || len(b) > 64 {
		return 99
	}
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}

// Health check secrets. A header value or body of the form "$env:NAME",
// with NAME starting with ProbeEnvPrefix, is a reference that healthd
// resolves from its own environment when it probes; the scheduler publishes
// the reference, never the secret. A literal value of a secret header (see
// SecretHeader) is published as RedactedValue, and healthd does not send it.
const (
	// ProbeEnvPrefix starts every variable a reference may name, so that a
	// spec cannot make healthd send its own credentials to an app.
	ProbeEnvPrefix = "BERTH_PROBE_"
	// RedactedValue replaces a secret header value in published views.
	RedactedValue = "<redacted>"
)

// EnvRef returns the variable a "$env:NAME" value names, and whether v is
// such a reference: NAME is ProbeEnvPrefix followed by A-Z, 0-9 and '_'.
func EnvRef(v string) (string, bool) {
	name, ok := strings.CutPrefix(v, "$env:")
	if !ok || len(name) <= len(ProbeEnvPrefix) || !strings.HasPrefix(name, ProbeEnvPrefix) {
		return "", false
	}
	for _, r := range name {
		if !(r == '_' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9') {
			return "", false
		}
	}
	return name, true
}

// ProbeEnvPrefixOf is the start of every variable app's references may
// name: ProbeEnvPrefix, the app's name in upper case with '-' as '_', and
// "__" ("web-api": BERTH_PROBE_WEB_API__). An app cannot name another's
// variables, so it cannot have healthd send another app's credential to
// its own instances.
func ProbeEnvPrefixOf(app string) string {
	return ProbeEnvPrefix + strings.ToUpper(strings.ReplaceAll(app, "-", "_")) + "__"
}

// OwnEnvRef reports whether the variable name (from EnvRef) is one of
// app's: ProbeEnvPrefixOf(app) then words of A-Z and 0-9 joined by single
// '_'. A word boundary of "__" never appears after the prefix, so no two
// apps' names overlap ("a" cannot name "a--b"'s BERTH_PROBE_A__B__X).
func OwnEnvRef(app, name string) bool {
	rest, ok := strings.CutPrefix(name, ProbeEnvPrefixOf(app))
	if !ok || rest == "" || rest[0] == '_' || rest[len(rest)-1] == '_' || strings.Contains(rest, "__") {
		return false
	}
	return true
}

// SecretHeader reports whether a header's value is a credential that must
// not be published: Authorization, Proxy-Authorization, Cookie, X-Api-Key,
// and any name containing token, secret, key, auth, password, session or
// cookie, in any case.
func SecretHeader(name string) bool {
	n := strings.ToLower(name)
	for _, w := range []string{"auth", "cookie", "token", "secret", "key", "password", "passwd", "session", "credential"} {
		if strings.Contains(n, w) {
			return true
		}
	}
	return false
}
