package spec

import (
	"encoding/json"
	"time"
)

// Defaults of the spec, as DESIGN.md and docs/spec.md give them.
const (
	DefaultHealthPath     = "/healthz"
	DefaultHealthMethod   = "GET"
	DefaultExpectedStatus = "200-399"
	// DefaultPids is resources.pids when absent: enough for a threaded
	// server, low enough that a fork bomb stays inside its container.
	DefaultPids = 512
)

func ptr[T any](v T) *T { return &v }

func d(v time.Duration) Duration { return Duration(v) }

// defaultApp is the spec before a user's fields are laid over it: every
// field whose default is not its zero value is set, so that a field the
// user writes, even as zero, keeps its value.
func defaultApp() *App {
	return &App{
		Resources: Resources{Pids: DefaultPids},
		Update: Update{MaxSurge: 1, MaxUnavailable: 0, MinHealthyTime: d(5 * time.Second),
			HealthyDeadline: d(2 * time.Minute), AutoRollback: ptr(true)},
		Restart: Restart{MaxAttempts: 5, Window: d(10 * time.Minute),
			BackoffInitial: d(5 * time.Second), BackoffMax: d(5 * time.Minute)},
		Stop: Stop{Signal: "SIGTERM", Grace: d(30 * time.Second), Drain: d(10 * time.Second)},
		LB: LB{Method: LBRoundRobin, Keepalive: 32, MaxFails: 1, FailTimeout: d(10 * time.Second),
			ConnectTimeout: d(2 * time.Second), ReadTimeout: d(60 * time.Second),
			NextUpstreamTries: 2, ClientMaxBodySize: 1 << 20},
	}
}

func defaultHealth() Health {
	return Health{Interval: d(5 * time.Second), Timeout: d(2 * time.Second),
		HealthyThreshold: 1, UnhealthyThreshold: 3}
}

func defaultScaling() Scaling {
	return Scaling{Min: 1, Max: 5, Window: d(60 * time.Second), ScaleDownStabilization: d(300 * time.Second),
		ScaleUpCooldown: d(15 * time.Second), ScaleDownCooldown: d(60 * time.Second),
		ScaleUpMaxPercent: 100, ScaleUpMaxReplicas: 4, ScaleUpPeriod: d(15 * time.Second), Tolerance: 0.1}
}

// UnmarshalJSON lays the given fields over the health defaults.
func (h *Health) UnmarshalJSON(b []byte) error {
	type plain Health
	p := plain(defaultHealth())
	if err := json.Unmarshal(b, &p); err != nil {
		return err
	}
	*h = Health(p)
	return nil
}

// UnmarshalJSON lays the given fields over the scaling defaults.
func (s *Scaling) UnmarshalJSON(b []byte) error {
	type plain Scaling
	p := plain(defaultScaling())
	if err := json.Unmarshal(b, &p); err != nil {
		return err
	}
	*s = Scaling(p)
	return nil
}

// Default fills the fields that are empty and for which empty is never a
// meaningful value: replicas (1, unless scaling is set), the health check's
// type (http), path, method, expected status, port (the app's port) and
// enabled flag, routing paths ("/"), the stop signal, the load balancing
// method, auto_rollback and resources.pids. Decode has already given every
// absent field its default, so Default matters for specs built in code. It
// is idempotent.
func (a *App) Default() {
	if a.Replicas == nil && a.Scaling == nil {
		a.Replicas = ptr(1)
	}
	if h := a.Health; h != nil {
		if h.Type == "" {
			h.Type = HealthHTTP
		}
		if h.Port == 0 {
			h.Port = a.Port
		}
		if h.Enabled == nil {
			h.Enabled = ptr(true)
		}
		if h.Type == HealthHTTP {
			if h.Path == "" {
				h.Path = DefaultHealthPath
			}
			if h.Method == "" {
				h.Method = DefaultHealthMethod
			}
			if len(h.ExpectedStatus) == 0 {
				h.ExpectedStatus, _ = ParseStatusRanges(DefaultExpectedStatus)
			}
		}
	}
	if len(a.Routing.Paths) == 0 && len(a.Routing.Rules) == 0 {
		// With rules, the app routes what they and its paths say: a rule
		// may claim "/" itself (a split, a header match).
		a.Routing.Paths = []string{"/"}
	}
	if a.Stop.Signal == "" {
		a.Stop.Signal = "SIGTERM"
	}
	if a.LB.Method == "" {
		a.LB.Method = LBRoundRobin
	}
	if a.Update.AutoRollback == nil {
		a.Update.AutoRollback = ptr(true)
	}
	if a.Resources.Pids == 0 {
		a.Resources.Pids = DefaultPids
	}
}
