package healthcheck

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/berthhq/berth/common/msg"
	"github.com/berthhq/berth/common/spec"
	"github.com/berthhq/berth/scheduler/internal/docker"
)

func TestFromDocker(t *testing.T) {
	t.Parallel()
	now := time.Unix(1000, 0)
	for _, tc := range []struct {
		name, status          string
		log                   docker.HealthLog
		want, failure, prefix string
	}{
		{"healthy", docker.HealthHealthy, docker.HealthLog{}, msg.StatusHealthy, "", ""},
		{"starting is not yet healthy", docker.HealthStarting, docker.HealthLog{}, msg.StatusUnknown, "", ""},
		{"starting with failures says so", docker.HealthStarting, docker.HealthLog{ExitCode: 1, Output: "not ready\n", FailingStreak: 1}, msg.StatusUnknown, "", "starting: HEALTHCHECK exited 1: not ready"},
		{"unhealthy with Docker's output", docker.HealthUnhealthy, docker.HealthLog{ExitCode: 1, Output: "GET /healthz: 503\n", FailingStreak: 3}, msg.StatusUnhealthy, msg.FailureExitCode, "HEALTHCHECK exited 1: GET /healthz: 503"},
		{"unhealthy by Docker's timeout", docker.HealthUnhealthy, docker.HealthLog{ExitCode: -1, Output: "Health check exceeded timeout (1s)"}, msg.StatusUnhealthy, msg.FailureTimeout, "docker: Health check exceeded timeout (1s)"},
		{"no HEALTHCHECK is never healthy", "", docker.HealthLog{}, msg.StatusUnknown, "", "the container has no HEALTHCHECK"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			s := FromDocker(tc.status, tc.log, now)
			require.Equal(t, tc.want, s.Status)
			require.Equal(t, tc.failure, s.Failure)
			require.True(t, strings.HasPrefix(s.Message, tc.prefix), "%q", s.Message)
			require.Equal(t, now, s.CheckedAt)
			require.NoError(t, Value(Target{App: "web", Instance: "a1b2c3d4"}, s).Validate(), "a valid health record")
		})
	}
}

func TestExecOutcomeAndThresholds(t *testing.T) {
	t.Parallel()
	now := time.Unix(1000, 0)
	h := spec.Health{Type: spec.HealthExec, HealthyThreshold: 2, UnhealthyThreshold: 3}
	pass := ExecOutcome(docker.ExecResult{ExitCode: 0, Output: "ok"}, nil, time.Millisecond, time.Second, now)
	require.True(t, pass.Pass)
	fail := ExecOutcome(docker.ExecResult{ExitCode: 3, Output: strings.Repeat("noise\n", 2000) + "db down\n"}, nil, time.Millisecond, time.Second, now)
	require.False(t, fail.Pass)
	require.Equal(t, msg.FailureExitCode, fail.Failure)
	require.True(t, strings.HasPrefix(fail.Message, "exited 3: "), fail.Message)
	require.True(t, strings.HasSuffix(fail.Message, "db down"), "the end of the output is the reason: %q", fail.Message)
	require.LessOrEqual(t, len(fail.Message), MaxMessage)
	slow := ExecOutcome(docker.ExecResult{ExitCode: -1, TimedOut: true}, nil, time.Second, time.Second, now)
	require.Equal(t, msg.FailureTimeout, slow.Failure)
	require.Contains(t, slow.Message, "ran past its timeout (1s)")
	refused := ExecOutcome(docker.ExecResult{}, errors.New("no such container"), 0, time.Second, now)
	require.Equal(t, msg.FailureProtocol, refused.Failure)

	s := Unknown()
	s = Step(s, pass, h)
	require.Equal(t, msg.StatusUnknown, s.Status, "one pass of two")
	s = Step(s, pass, h)
	require.Equal(t, msg.StatusHealthy, s.Status)
	s = Step(s, fail, h)
	s = Step(s, fail, h)
	require.Equal(t, msg.StatusHealthy, s.Status, "two failures of three")
	require.Equal(t, "exited 3", s.Message[:8], "the last failure shows while still healthy")
	s = Step(s, slow, h)
	require.Equal(t, msg.StatusUnhealthy, s.Status)
	require.Equal(t, msg.FailureTimeout, s.Failure)
	require.Equal(t, 3, s.Failures)
	s = Step(s, pass, h)
	require.Equal(t, msg.StatusUnhealthy, s.Status, "one pass of two")
	require.Empty(t, s.Failure)
	s = Step(s, pass, h)
	require.Equal(t, msg.StatusHealthy, s.Status)
}

func TestValueIsCleanAndValid(t *testing.T) {
	t.Parallel()
	s := State{Status: msg.StatusUnhealthy, Failure: msg.FailureExitCode, Message: "bad\x00\x1b[31mred\xff\ttab\nline", CheckedAt: time.Unix(1, 0)}
	v := Value(Target{App: "web", Instance: "a1b2c3d4", Generation: 3, Term: 7}, s)
	require.NoError(t, v.Validate())
	require.Equal(t, "bad[31mred tab line", v.Message)
	require.Equal(t, CheckerName, v.Checker)
	require.Equal(t, int64(3), v.Generation)
	require.Equal(t, uint64(7), v.InstanceTerm)
}

// TestHistory: every exec run is in the history, newest first and at most
// msg.MaxHealthHistory, with failures counted by kind; a docker check
// records each verdict that differs from the one before; and the value
// carries them within the contract's bounds.
func TestHistory(t *testing.T) {
	t.Parallel()
	h := spec.Health{Type: spec.HealthExec, HealthyThreshold: 1, UnhealthyThreshold: 1}
	at := time.Unix(1000, 0)
	s := Unknown()
	for i := range 30 {
		res := docker.ExecResult{}
		if i%3 == 0 {
			res = docker.ExecResult{ExitCode: 1, Output: strings.Repeat("\x1b[31mwhy\n", 100)}
		}
		s = Step(s, ExecOutcome(res, nil, time.Millisecond, time.Second, at.Add(time.Duration(i)*time.Second)), h)
	}
	require.Len(t, s.History, msg.MaxHealthHistory)
	require.Equal(t, at.Add(29*time.Second), s.History[0].At, "newest first")
	require.Equal(t, int64(30), s.Results)
	require.Equal(t, map[string]int64{msg.FailureExitCode: 10}, s.Counts)
	require.Equal(t, at, s.Since)
	v := Value(Target{App: "web", Instance: "a1b2c3d4"}, s)
	require.NoError(t, v.Validate(), "within the history's bounds")
	require.Len(t, v.History, msg.MaxHealthHistory)

	d := FollowDocker(Unknown(), FromDocker(docker.HealthStarting, docker.HealthLog{}, at))
	d = FollowDocker(d, FromDocker(docker.HealthHealthy, docker.HealthLog{}, at.Add(time.Second)))
	d = FollowDocker(d, FromDocker(docker.HealthHealthy, docker.HealthLog{}, at.Add(2*time.Second)))
	d = FollowDocker(d, FromDocker(docker.HealthUnhealthy, docker.HealthLog{ExitCode: 1, Output: "503"}, at.Add(3*time.Second)))
	require.Len(t, d.History, 3, "starting, healthy, unhealthy: the repeated healthy is no new result")
	require.Equal(t, msg.FailureExitCode, d.History[0].Failure)
	require.Equal(t, map[string]int64{msg.FailureExitCode: 1}, d.Counts)
	require.NoError(t, Value(Target{App: "web", Instance: "a1b2c3d4"}, d).Validate())
}
