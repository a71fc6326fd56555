package spec

import (
	"encoding/json"
	"strings"
	"time"
)

// Bounds of a release task, documented in docs/spec.md.
const (
	// DefaultReleaseTimeout is release.timeout when absent.
	DefaultReleaseTimeout = 5 * time.Minute
	MinReleaseTimeout     = time.Second
	MaxReleaseTimeout     = 2 * time.Hour
)

// Release is an app's release task, as Heroku's release phase: a one-off
// container of the new version's image, with the app's env (and Env over
// it) on the app's network, that runs Command once per new version of the
// container spec before its first instance starts. Exit 0 lets the
// rollout start; any other exit, or Timeout, fails it and the version
// before keeps serving.
type Release struct {
	// Command is the argv the container runs (not through a shell).
	Command []string `json:"command"`
	// Timeout bounds the run: past it the container is killed and the
	// release fails.
	Timeout Duration `json:"timeout"`
	// Env is laid over the app's env for the release container only.
	// Plain values: a secret the task needs goes in the app's env.
	Env map[string]string `json:"env,omitempty"`
}

// UnmarshalJSON lays the given fields over the release defaults.
func (r *Release) UnmarshalJSON(b []byte) error {
	type plain Release
	p := plain{Timeout: Duration(DefaultReleaseTimeout)}
	if err := json.Unmarshal(b, &p); err != nil {
		return err
	}
	*r = Release(p)
	return nil
}

// validate checks a release task; no problem quotes an env value.
func (r *Release) validate(path string, es *Errors) {
	if r == nil {
		return
	}
	cmd := Join(path, "command")
	switch {
	case len(r.Command) == 0:
		es.Add(cmd, "must be set: the argv the release container runs, such as [/app/migrate, up]")
	case len(r.Command) > MaxCommandArgs:
		es.Add(cmd, "has %d arguments; at most %d", len(r.Command), MaxCommandArgs)
	case r.Command[0] == "":
		es.Add(Index(cmd, 0), "must not be empty: it is the program the release container runs")
	}
	for i, arg := range r.Command {
		if i < MaxCommandArgs && (strings.ContainsRune(arg, 0) || len(arg) > MaxArgLen) {
			es.Add(Index(cmd, i), "must have no NUL byte and at most %d characters", MaxArgLen)
		}
	}
	durIn(es, Join(path, "timeout"), r.Timeout, MinReleaseTimeout, MaxReleaseTimeout)
	env := Join(path, "env")
	if len(r.Env) > MaxEnvVars {
		es.Add(env, "has %d variables; at most %d", len(r.Env), MaxEnvVars)
	}
	for _, k := range sortedKeys(r.Env) {
		p := Key(env, k)
		es.Check(p, CheckEnvName(k))
		es.Check(p, CheckEnvValue(r.Env[k]))
	}
}
