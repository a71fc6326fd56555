// Package healthcheck owns the health checks the scheduler runs itself,
// because they need the Docker API, which only the scheduler holds:
// Docker's own HEALTHCHECK state of a container (health.type docker) and
// a command run in the container through Docker's exec API (health.type
// exec). It observes (Docker events and inspects, exec results), decides
// in pure functions (FromDocker, ExecOutcome, Step) and acts by
// publishing each instance's health to the health bucket, sealed by the
// scheduler's key, which readers take for these apps only
// (bus.HealthTrusted).
package healthcheck

import (
	"fmt"
	"strings"
	"time"

	"github.com/berthhq/berth/common/msg"
	"github.com/berthhq/berth/common/spec"
	"github.com/berthhq/berth/scheduler/internal/docker"
)

// MaxMessage bounds the failure message published with a health value:
// the end of the output, where a failing check says why.
const MaxMessage = 512

// State is what the checker knows of one instance's health.
type State struct {
	// Status is msg.StatusHealthy, StatusUnhealthy or StatusUnknown.
	Status string
	// Failure is the last failure's kind (msg.Failure…), "" after a pass.
	Failure string
	// Message says what the last check saw.
	Message string
	// Successes and Failures count results in a row.
	Successes, Failures int
	// Latency is the last check's duration.
	Latency time.Duration
	// CheckedAt is when the last check ended.
	CheckedAt time.Time
	// History is the latest results, newest first, at most
	// msg.MaxHealthHistory: every exec run; for a docker check, each
	// verdict Docker reported that differs from the one before.
	History []msg.HealthResult
	// Counts are the failures by kind since Since, of Results results.
	Counts  map[string]int64
	Results int64
	Since   time.Time
}

// record adds one result to s's history and counts. It never changes
// what another State shares with s.
func record(s State, at time.Time, latency time.Duration, failure, message string) State {
	r := msg.HealthResult{At: at, LatencyMS: float64(latency.Microseconds()) / 1000, Failure: failure, Message: message}
	h := make([]msg.HealthResult, 0, min(len(s.History)+1, msg.MaxHealthHistory))
	h = append(h, r)
	s.History = append(h, s.History[:min(len(s.History), msg.MaxHealthHistory-1)]...)
	s.Results++
	if failure != "" {
		counts := make(map[string]int64, len(s.Counts)+1)
		for k, v := range s.Counts {
			counts[k] = v
		}
		counts[failure]++
		s.Counts = counts
	}
	if s.Since.IsZero() {
		s.Since = at
	}
	return s
}

// FollowDocker is the state after Docker reported next for an instance
// whose state was prev: next's verdict, prev's history with next added
// when its verdict differs (or none was recorded yet).
func FollowDocker(prev, next State) State {
	next.History, next.Counts, next.Results, next.Since = prev.History, prev.Counts, prev.Results, prev.Since
	if len(prev.History) == 0 || !Same(prev, next) {
		next = record(next, next.CheckedAt, 0, next.Failure, next.Message)
	}
	return next
}

// Unknown is the state of an instance not yet checked.
func Unknown() State { return State{Status: msg.StatusUnknown} }

// Result is one check's outcome.
type Result struct {
	Pass    bool
	Failure string
	Message string
	Latency time.Duration
	At      time.Time
}

// FromDocker is an instance's state from Docker's health of its container
// (Container.Health and HealthLog), as seen at now. Docker applies its own
// interval, timeout and retries, so its status is the verdict: starting is
// not yet healthy (unknown), and a container without a HEALTHCHECK (""),
// which apply refuses but an image changed under its tag could still be,
// is unknown with a message that says so, never healthy.
func FromDocker(status string, log docker.HealthLog, now time.Time) State {
	s := State{CheckedAt: now, Failures: log.FailingStreak}
	switch status {
	case docker.HealthHealthy:
		s.Status, s.Successes = msg.StatusHealthy, 1
	case docker.HealthUnhealthy:
		s.Status = msg.StatusUnhealthy
		s.Failure, s.Message = dockerFailure(log)
	case docker.HealthStarting:
		s.Status = msg.StatusUnknown
		if log.FailingStreak > 0 {
			_, s.Message = dockerFailure(log)
			s.Message = "starting: " + s.Message
		}
	default:
		s.Status, s.Message = msg.StatusUnknown, "the container has no HEALTHCHECK: Docker reports no health (set health.docker.test)"
	}
	s.Message = msg.Truncate(s.Message, MaxMessage)
	return s
}

// dockerFailure is the kind and message of Docker's last failed test:
// exit code -1 is a test Docker could not run or that ran past its
// timeout ("Health check exceeded timeout"), anything else an exit code.
func dockerFailure(log docker.HealthLog) (string, string) {
	out := lastLines(log.Output)
	if log.ExitCode == -1 {
		return msg.FailureTimeout, msg.Truncate("docker: "+out, MaxMessage)
	}
	if out == "" {
		return msg.FailureExitCode, fmt.Sprintf("HEALTHCHECK exited %d", log.ExitCode)
	}
	return msg.FailureExitCode, fmt.Sprintf("HEALTHCHECK exited %d: %s", log.ExitCode, out)
}

// ExecOutcome is the result of one exec check: exit 0 passes; a timeout,
// a non-zero exit or an exec Docker refused fails, with the end of the
// output (or the error) as the message.
func ExecOutcome(res docker.ExecResult, err error, latency time.Duration, timeout time.Duration, now time.Time) Result {
	r := Result{Latency: latency, At: now}
	out := lastLines(res.Output)
	switch {
	case err != nil:
		r.Failure, r.Message = msg.FailureProtocol, "exec: "+err.Error()
	case res.TimedOut:
		r.Failure, r.Message = msg.FailureTimeout, fmt.Sprintf("exec ran past its timeout (%s) and was abandoned", timeout)
		if out != "" {
			r.Message += ": " + out
		}
	case res.ExitCode != 0:
		r.Failure, r.Message = msg.FailureExitCode, fmt.Sprintf("exited %d", res.ExitCode)
		if out != "" {
			r.Message += ": " + out
		}
	default:
		r.Pass = true
	}
	r.Message = msg.Truncate(r.Message, MaxMessage)
	return r
}

// Step applies one exec result under h's thresholds: healthy after
// healthy_threshold passes in a row, unhealthy after unhealthy_threshold
// failures in a row, and otherwise as before (unknown until a threshold
// is first met).
func Step(s State, r Result, h spec.Health) State {
	s = record(s, r.At, r.Latency, r.Failure, r.Message)
	s.Latency, s.CheckedAt = r.Latency, r.At
	if r.Pass {
		s.Successes++
		s.Failures = 0
		s.Failure, s.Message = "", ""
		if s.Successes >= max(h.HealthyThreshold, 1) {
			s.Status = msg.StatusHealthy
		}
	} else {
		s.Failures++
		s.Successes = 0
		s.Failure, s.Message = r.Failure, r.Message
		if s.Failures >= max(h.UnhealthyThreshold, 1) {
			s.Status = msg.StatusUnhealthy
		}
	}
	if s.Status == "" {
		s.Status = msg.StatusUnknown
	}
	return s
}

// lastLines is the end of a check's output, where it says why it failed:
// trimmed, short enough for a message of MaxMessage bytes with what says
// how the check ended, cut at a line start when it can be.
func lastLines(out string) string {
	const keep = MaxMessage - 96 // room for what says how it ended
	out = strings.TrimSpace(out)
	if len(out) <= keep {
		return out
	}
	tail := out[len(out)-keep:]
	if i := strings.IndexByte(tail, '\n'); i >= 0 && i < len(tail)-1 {
		tail = tail[i+1:]
	}
	return tail
}

// Value is the health record an instance's state publishes.
func Value(t Target, s State) *msg.Health {
	v := &msg.Health{App: t.App, Instance: t.Instance, Status: s.Status, Failure: s.Failure, Message: clean(s.Message),
		ConsecutiveSuccesses: s.Successes, ConsecutiveFailures: s.Failures,
		LatencyMS: float64(s.Latency.Microseconds()) / 1000, Checker: CheckerName, InstanceTerm: t.Term, Generation: t.Generation,
		CheckedAt: s.CheckedAt, FailureCounts: s.Counts, Probes: s.Results, HistorySince: s.Since}
	if len(s.History) > 0 {
		h := make([]msg.HealthResult, len(s.History))
		for i, r := range s.History {
			r.Message = clean(r.Message)
			h[i] = r
		}
		v.History = msg.BoundHistory(h)
	}
	return v
}

// CheckerName is the checker name the scheduler's health values carry.
const CheckerName = "scheduler"

// clean keeps a message printable: what a container writes is untrusted,
// and a health message reaches status, events and every NATS reader.
func clean(s string) string {
	return strings.Map(func(r rune) rune {
		if r == '\t' || r == '\n' {
			return ' '
		}
		if r < 0x20 || r == 0x7f || r == '\uFFFD' {
			return -1
		}
		return r
	}, s)
}

// Same reports whether two states publish the same verdict: status,
// failure kind and message. Counts and times alone are published at the
// next refresh, not at every check.
func Same(a, b State) bool {
	return a.Status == b.Status && a.Failure == b.Failure && a.Message == b.Message
}
