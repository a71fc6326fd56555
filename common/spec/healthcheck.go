package spec

import (
	"strings"
	"time"
)

// Bounds of the checks the scheduler runs (health.type docker and exec),
// documented in docs/spec.md.
const (
	// MinDockerHealthInterval and MaxDockerHealthInterval bound
	// health.docker.interval (and its timeout and start_period from
	// above): Docker runs the test this often in the container.
	MinDockerHealthInterval = time.Second
	MaxDockerHealthInterval = time.Hour
	// MinDockerHealthTimeout bounds health.docker.timeout from below.
	MinDockerHealthTimeout = 100 * time.Millisecond
	// MaxDockerHealthRetries bounds health.docker.retries.
	MaxDockerHealthRetries = 100
	// MaxHealthCommandArgs bounds the argv of health.docker.test and
	// health.exec.command.
	MaxHealthCommandArgs = 64
	// MinExecInterval is the shortest health.interval of an exec check: each
	// run is a Docker API exec (create, start, inspect) on the instance's
	// host, not a packet.
	MinExecInterval = time.Second
)

// DockerHealth overrides the image's HEALTHCHECK, as Docker's own
// HealthConfig at container create. Every field is optional: an absent one
// keeps the image's (Docker's default when the image has none).
type DockerHealth struct {
	// Test is the command Docker runs in the container: an argv (CMD),
	// or, with Shell, one string for /bin/sh -c (CMD-SHELL). Absent: the
	// image's HEALTHCHECK command.
	Test []string `json:"test,omitempty"`
	// Shell runs Test, one string, through the image's /bin/sh.
	Shell bool `json:"shell,omitempty"`
	// Interval is the time between two runs of Test.
	Interval Duration `json:"interval,omitempty"`
	// Timeout bounds one run; a run past it fails.
	Timeout Duration `json:"timeout,omitempty"`
	// Retries is how many failures in a row make the container unhealthy.
	Retries int `json:"retries,omitempty"`
	// StartPeriod is how long failures do not count after the start.
	StartPeriod Duration `json:"start_period,omitempty"`
}

// DockerTest is d's test as Docker's HealthConfig.Test: ["CMD", argv…],
// ["CMD-SHELL", command], or nil to keep the image's.
func (d *DockerHealth) DockerTest() []string {
	if d == nil || len(d.Test) == 0 {
		return nil
	}
	if d.Shell {
		return []string{"CMD-SHELL", d.Test[0]}
	}
	return append([]string{"CMD"}, d.Test...)
}

// ExecHealth is the command an exec check runs in the container through
// the Docker API, under the health block's interval, timeout and
// thresholds. Exit 0 passes.
type ExecHealth struct {
	// Command is the argv; with Shell, one string for /bin/sh -c.
	Command []string `json:"command"`
	// Shell runs Command, one string, through the image's /bin/sh.
	Shell bool `json:"shell,omitempty"`
}

// Argv is the argv the exec runs: Command, or /bin/sh -c Command[0].
func (e *ExecHealth) Argv() []string {
	if e == nil || len(e.Command) == 0 {
		return nil
	}
	if e.Shell {
		return []string{"/bin/sh", "-c", e.Command[0]}
	}
	return append([]string(nil), e.Command...)
}

// Scheduled reports whether the scheduler, not healthd, checks h: it reads
// Docker's health (docker) or runs an exec in the container (exec).
func (h *Health) Scheduled() bool {
	return h != nil && (h.Type == HealthDocker || h.Type == HealthExec)
}

// validateScheduled checks what only a docker or exec check has, and
// refuses the probe fields neither uses.
func (h *Health) validateScheduled(path string, es *Errors) {
	for _, field := range sortedKeys(h.probeFields()) {
		if t := h.probeFields()[field]; t != "" {
			es.Add(Join(path, field), "is only for type %s", t)
		}
	}
	switch h.Type {
	case HealthDocker:
		h.Docker.validate(Join(path, "docker"), es)
	case HealthExec:
		if h.Exec == nil {
			es.Add(Join(path, "exec"), "must be set for type exec: {command: [/app/check, ready]}")
			return
		}
		checkCommand(es, Join(Join(path, "exec"), "command"), h.Exec.Command, h.Exec.Shell, "the program the exec check runs")
		if h.Interval < Duration(MinExecInterval) {
			es.Add(Join(path, "interval"), "(%s) must be at least %s for type exec: each check is a Docker exec on the instance's host", h.Interval, MinExecInterval)
		}
	}
}

// probeFields are the probe-only fields h sets, each with the type it
// belongs to.
func (h *Health) probeFields() map[string]string {
	set := map[string]string{}
	for field, on := range map[string]bool{
		"path": h.Path != "", "method": h.Method != "", "headers": len(h.Headers) > 0, "body": h.Body != "",
		"expected_status": len(h.ExpectedStatus) > 0, "expected_body": h.ExpectedBody != "",
		"follow_redirects": h.FollowRedirects, "tls": h.TLS, "tls_skip_verify": h.TLSSkipVerify,
	} {
		if on {
			set[field] = HealthHTTP
		}
	}
	if h.Send != "" {
		set["send"] = HealthTCP
	}
	if h.MaxResponseTime != 0 {
		set["max_response_time"] = "http or tcp" // a probe's, timed by healthd
	}
	if h.Expect != "" {
		set["expect"] = HealthTCP
	}
	return set
}

func (d *DockerHealth) validate(path string, es *Errors) {
	if d == nil {
		return
	}
	if len(d.Test) > 0 || d.Shell {
		checkCommand(es, Join(path, "test"), d.Test, d.Shell, "the program Docker runs in the container")
	}
	if d.Interval != 0 {
		durIn(es, Join(path, "interval"), d.Interval, MinDockerHealthInterval, MaxDockerHealthInterval)
	}
	if d.Timeout != 0 {
		durIn(es, Join(path, "timeout"), d.Timeout, MinDockerHealthTimeout, MaxDockerHealthInterval)
		if d.Interval != 0 && d.Timeout >= d.Interval {
			es.Add(Join(path, "timeout"), "(%s) must be less than %s (%s)", d.Timeout, Join(path, "interval"), d.Interval)
		}
	}
	intIn(es, Join(path, "retries"), d.Retries, 0, MaxDockerHealthRetries)
	durIn(es, Join(path, "start_period"), d.StartPeriod, 0, MaxDockerHealthInterval)
}

// checkCommand checks a health command: an argv of at most
// MaxHealthCommandArgs arguments, or with shell exactly one string, the
// shell command; no NUL byte, nothing longer than MaxArgLen. what names
// the program in the error.
func checkCommand(es *Errors, path string, argv []string, shell bool, what string) {
	switch {
	case len(argv) == 0:
		es.Add(path, "must be set: an argv such as [/app/check, ready]")
		return
	case shell && len(argv) != 1:
		es.Add(path, "has %d arguments; with shell: true it is one string, the command /bin/sh -c runs", len(argv))
	case len(argv) > MaxHealthCommandArgs:
		es.Add(path, "has %d arguments; at most %d", len(argv), MaxHealthCommandArgs)
		return
	case strings.TrimSpace(argv[0]) == "":
		es.Add(Index(path, 0), "must not be empty: it is %s", what)
	case !shell && strings.ContainsAny(argv[0], " \t\n"):
		es.Add(Index(path, 0), "(%q) is a program name with spaces: write the argv as a list, or set shell: true for a shell command", argv[0])
	case !shell && (argv[0] == "CMD" || argv[0] == "CMD-SHELL" || argv[0] == "NONE"):
		es.Add(Index(path, 0), "(%q) is Docker's test form: write the argv alone (Berth adds CMD), or one string with shell: true", argv[0])
	}
	for i, arg := range argv {
		if i < MaxHealthCommandArgs && (strings.ContainsRune(arg, 0) || len(arg) > MaxArgLen) {
			es.Add(Index(path, i), "must have no NUL byte and at most %d characters", MaxArgLen)
		}
	}
}
