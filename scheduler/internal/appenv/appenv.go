// Package appenv decides the environment of an app's containers: the
// spec's env, plus the scheduler's own variables that carry the passthrough
// prefix (--app-env-prefix, stripped), minus a blocklist no app may
// receive. Values are secrets: nothing here logs them.
package appenv

import (
	"path"
	"strings"
)

// Blocked can never pass through, whatever the prefix: the process
// basics and the scheduler's own configuration.
var Blocked = []string{"PATH", "HOME", "HOSTNAME", "BERTH_SCHEDULER_*"}

// Policy is a passthrough prefix and extra blocked name patterns
// (shell globs such as POSTGRES_*).
type Policy struct {
	Prefix string
	Block  []string
}

// blocked reports whether name matches Blocked or p.Block.
func (p Policy) blocked(name string) bool {
	for _, pat := range append(append([]string(nil), Blocked...), p.Block...) {
		if ok, _ := path.Match(pat, name); ok {
			return true
		}
	}
	return false
}

// Env returns the container environment: passthrough variables from
// environ ("NAME=value" lines, as os.Environ gives them) whose name starts
// with the prefix, the prefix stripped, unless the stripped name (or the
// full one) is blocked; then the spec's env, which wins.
func (p Policy) Env(spec map[string]string, environ []string) map[string]string {
	out := map[string]string{}
	if p.Prefix != "" {
		for _, kv := range environ {
			name, value, ok := strings.Cut(kv, "=")
			if !ok || !strings.HasPrefix(name, p.Prefix) || p.blocked(name) {
				continue
			}
			stripped := strings.TrimPrefix(name, p.Prefix)
			if stripped == "" || p.blocked(stripped) {
				continue
			}
			out[stripped] = value
		}
	}
	for k, v := range spec {
		out[k] = v
	}
	return out
}
