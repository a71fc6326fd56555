package spec

import (
	"bytes"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"reflect"
)

// EnvValue is the value of one environment variable: plain text
// (`LOG_LEVEL: info`), or a secret (`DB_PASSWORD: {secret: hunter2}`)
// that the scheduler stores encrypted and shows as RedactedValue.
//
// A secret has two forms. As applied, Secret holds its plaintext; it lives
// only between decoding a spec and the scheduler sealing it, and it never
// marshals: its JSON is {"secret": "<redacted>"}, so a spec that reaches a
// log, an answer or the database unsealed carries no plaintext. As stored,
// Sealed holds it encrypted.
type EnvValue struct {
	// Value is a plain value; empty for a secret.
	Value string
	// Secret is a secret's plaintext as applied; nil otherwise.
	Secret *string
	// Sealed is a secret as the scheduler stores it; nil otherwise.
	Sealed *Sealed
}

// Sealed is a secret as the scheduler stores it: Box is the value sealed
// with the scheduler's --secret-key-file (AES-256-GCM, bound to the app
// and the variable's name), and ValueID is random, new whenever the value
// changes and kept while it does not (also when it is sealed again under a
// new key). The container spec hash takes ValueID, never anything derived
// from the plaintext, so an unchanged secret restarts nothing and a
// changed one rolls out.
type Sealed struct {
	// Box is the sealed value (base64 in JSON).
	Box []byte `json:"sealed"`
	// ValueID is 32 hex digits.
	ValueID string `json:"value_id"`
}

// PlainValue is a plain env value.
func PlainValue(v string) EnvValue { return EnvValue{Value: v} }

// SecretValue is a secret env value as applied, not sealed yet.
func SecretValue(plain string) EnvValue { return EnvValue{Secret: &plain} }

// IsSecret reports whether the value is a secret, sealed or not.
func (v EnvValue) IsSecret() bool { return v.Secret != nil || v.Sealed != nil }

// envSecretForm is the JSON object form of a secret as applied.
type envSecretForm struct {
	Secret string `json:"secret"`
}

// MarshalJSON writes a plain value as a string, a sealed secret as
// {"sealed": …, "value_id": …}, and a secret as applied as
// {"secret": "<redacted>"}: its plaintext never marshals.
func (v EnvValue) MarshalJSON() ([]byte, error) {
	switch {
	case v.Sealed != nil:
		return json.Marshal(v.Sealed)
	case v.Secret != nil:
		return json.Marshal(envSecretForm{Secret: RedactedValue})
	}
	return json.Marshal(v.Value)
}

// UnmarshalJSON reads a string, {"secret": …} or {"sealed": …,
// "value_id": …}. Which forms a spec may use is the decoder's business
// (Decode accepts no sealed value); this reads what the scheduler stored
// too. Errors never quote the value.
func (v *EnvValue) UnmarshalJSON(b []byte) error {
	b = bytes.TrimSpace(b)
	if len(b) > 0 && b[0] == '"' {
		var s string
		if err := json.Unmarshal(b, &s); err != nil {
			return errors.New("spec: env value: not a valid JSON string")
		}
		*v = EnvValue{Value: s}
		return nil
	}
	var m map[string]json.RawMessage
	if err := json.Unmarshal(b, &m); err != nil {
		return errors.New("spec: env value: must be a string, {secret: …}, or a sealed secret")
	}
	if raw, ok := m["secret"]; ok && len(m) == 1 {
		var s string
		if err := json.Unmarshal(raw, &s); err != nil {
			return errors.New("spec: env value: secret must be a string")
		}
		*v = EnvValue{Secret: &s}
		return nil
	}
	_, hasBox := m["sealed"]
	_, hasID := m["value_id"]
	if !hasBox || !hasID || len(m) != 2 {
		return errors.New("spec: env value: must be a string, {secret: …}, or a sealed secret")
	}
	var s Sealed
	if err := json.Unmarshal(b, &s); err != nil {
		return errors.New("spec: env value: a sealed secret must have sealed (base64) and value_id (text)")
	}
	*v = EnvValue{Sealed: &s}
	return nil
}

var envValueType = reflect.TypeFor[EnvValue]()

// walkEnvValue is walk for an EnvValue: a string, or a mapping with the
// one field secret, a string. A spec never brings a sealed value: the
// scheduler makes those. Problems never quote the value.
func walkEnvValue(v any, path string, errs *Errors) {
	switch x := v.(type) {
	case string:
	case map[string]any:
		for _, k := range sortedKeys(x) {
			if k != "secret" {
				errs.Add(Join(path, k), "unknown field (allowed: secret, for a value Berth keeps encrypted)")
			}
		}
		s, ok := x["secret"]
		switch {
		case !ok:
			errs.Add(path, "must be a string, or {secret: …} for a value Berth keeps encrypted")
		case s == nil:
			errs.Add(Join(path, "secret"), "must be a string, not null")
		default:
			if _, ok := s.(string); !ok {
				errs.Add(Join(path, "secret"), "must be a string, not %s%s", kindName(s), boolHint(s))
			}
		}
	default:
		errs.Add(path, "must be a string, not %s%s; or {secret: …} for a value Berth keeps encrypted", kindName(v), boolHint(v))
	}
}

// boolHint is the hint for a YAML boolean where text was meant.
func boolHint(v any) string {
	if _, ok := v.(bool); ok {
		return " (in YAML, quote yes, no, on, off, true and false to keep them text)"
	}
	return ""
}

// validateEnv checks the names and values of env; no problem quotes a
// value.
func validateEnv(env map[string]EnvValue, es *Errors) {
	if len(env) > MaxEnvVars {
		es.Add("env", "has %d variables; at most %d", len(env), MaxEnvVars)
	}
	for _, k := range sortedKeys(env) {
		p, v := Key("env", k), env[k]
		es.Check(p, CheckEnvName(k))
		switch {
		case v.Sealed != nil:
			if len(v.Sealed.Box) == 0 {
				es.Add(Join(p, "sealed"), "must not be empty")
			}
			if b, err := hex.DecodeString(v.Sealed.ValueID); err != nil || len(b) != ValueIDLen {
				es.Add(Join(p, "value_id"), "must be %d hex digits", 2*ValueIDLen)
			}
		case v.Secret != nil:
			p = Join(p, "secret")
			switch {
			case *v.Secret == "":
				es.Add(p, "must not be empty (an empty value needs no secret: write %s: \"\")", k)
			case *v.Secret == RedactedValue:
				es.Add(p, "is %q, the placeholder Berth shows in place of a secret: give the secret itself", RedactedValue)
			default:
				es.Check(p, CheckEnvValue(*v.Secret))
			}
		default:
			es.Check(p, CheckEnvValue(v.Value))
		}
	}
}

// ValueIDLen is the length in bytes of a Sealed.ValueID.
const ValueIDLen = 16

// Secrets returns the names of the app's secret env variables, sorted.
func (a *App) Secrets() []string {
	var out []string
	for _, k := range sortedKeys(a.Env) {
		if a.Env[k].IsSecret() {
			out = append(out, k)
		}
	}
	return out
}

// Unsealed returns the names of the app's secrets that are not sealed
// (still plaintext), sorted: a spec holding one must not be stored.
func (a *App) Unsealed() []string {
	var out []string
	for _, k := range sortedKeys(a.Env) {
		if a.Env[k].Secret != nil {
			out = append(out, k)
		}
	}
	return out
}

// Redacted returns a copy of the app whose secrets, sealed or not, read
// RedactedValue: what the API and the CLI show. Plain values are kept;
// a.Env is not changed.
func (a *App) Redacted() *App {
	c := *a
	if len(a.Env) == 0 {
		return &c
	}
	c.Env = make(map[string]EnvValue, len(a.Env))
	for k, v := range a.Env {
		if v.IsSecret() {
			v = SecretValue(RedactedValue)
		}
		c.Env[k] = v
	}
	return &c
}

// String never prints a secret: fmt of a value, or of a spec, shows
// RedactedValue in its place.
func (v EnvValue) String() string {
	if v.IsSecret() {
		return RedactedValue
	}
	return v.Value
}

// GoString is String for %#v.
func (v EnvValue) GoString() string { return fmt.Sprintf("spec.EnvValue(%q)", v.String()) }
