package e2e

import (
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/berthhq/berth/common/msg"
	"github.com/berthhq/berth/internal/loadgen"
	"github.com/berthhq/berth/internal/testrig"
)

// releaseEventView is an event as GET /v1/events shows it, log tail included.
type releaseEventView struct {
	Kind    msg.EventKind     `json:"kind"`
	Message string            `json:"message"`
	Details map[string]string `json:"details"`
	LogTail []string          `json:"log_tail"`
}

func (s *stack) releaseEvents(app string) map[msg.EventKind][]releaseEventView {
	var evs []releaseEventView
	require.NoError(s.t, getJSON(s.api()+"/v1/events?app="+app+"&last=500", &evs))
	out := map[msg.EventKind][]releaseEventView{}
	for _, e := range evs {
		out[e.Kind] = append(out[e.Kind], e)
	}
	return out
}

// TestReleaseTask deploys from a pipeline under a load that never
// retries: v2 whose release task (the demo image's "release" mode, a
// stand-in for migrations, running 3s so that --wait shows it running) exits 3 leaves v1 serving with 0 failed
// requests, apply --wait exits 1 naming the release, and its event holds
// the exit code and the task's last lines. v2 with a release that
// succeeds then rolls out, its release having run exactly once, and a
// restart runs none.
func TestReleaseTask(t *testing.T) {
	v1, v2 := testrig.DemoImage(t, "v1"), testrig.DemoImage(t, "v2")
	s := newStackMode(t, "", "dynamic")
	s.startScheduler("sched-a")
	s.leader(10 * time.Second)
	s.startHealthd("hc1")
	s.startLBAgent()
	s.apply(demoSpec(t, v1, 2, ""))
	s.waitServing("demo", demoHost, 2, "v1", 60*time.Second)

	gen := s.load(demoHost)
	out, code := s.applyWait(demoSpec(t, v2, 2, "release: {command: [release, -lines, '30', -exit, '3', -sleep, 3s], timeout: 1m}\n"))
	require.Equal(t, 1, code, "apply --wait fails")
	require.Contains(t, out, "release task running")
	require.Contains(t, out, "generation 2 failed: release task exited with code 3")
	require.Contains(t, out, `release-2: release_failed: release task exited with code 3 — last line: "release: failed, exiting with code 3"`)
	evs := s.releaseEvents("demo")
	require.Len(t, evs[msg.EventReleaseFailed], 1)
	failed := evs[msg.EventReleaseFailed][0]
	require.Equal(t, "3", failed.Details["exit_code"])
	require.Len(t, failed.LogTail, 20, "the last 20 lines")
	require.Equal(t, "release: migration step 12 of 30", failed.LogTail[0])
	require.Equal(t, "release: failed, exiting with code 3", failed.LogTail[19])
	require.Len(t, evs[msg.EventRolloutRolledBack], 1)
	require.Equal(t, "generation 2 failed: release task exited with code 3", evs[msg.EventRolloutRolledBack][0].Details["cause"])
	for _, e := range evs[msg.EventInstanceStarted] {
		require.Equal(t, "1", e.Details["generation"], "no instance of the failed version started: %s", e.Message)
	}
	s.waitServing("demo", demoHost, 2, "v1", 30*time.Second)

	out, code = s.applyWait(demoSpec(t, v2, 2, "release: {command: [release, -lines, '2'], timeout: 1m}\n"))
	require.Equal(t, 0, code, "the release succeeds and v2 rolls out")
	s.waitServing("demo", demoHost, 2, "v2", 60*time.Second)
	res := gen.Stop()
	t.Logf("through a failed release and a good one: %s", res)
	require.NoError(t, loadgen.Check(res), "0 failed requests: v1 served while the release failed")
	require.Positive(t, res.Versions["v2"])

	s.cli("restart", "demo", "--wait", "--timeout", "2m")
	evs = s.releaseEvents("demo")
	require.Len(t, evs[msg.EventReleaseStarted], 2, "one release per version, none for the restart")
	require.Len(t, evs[msg.EventReleaseSucceeded], 1)
	require.Equal(t, "4", evs[msg.EventReleaseSucceeded][0].Details["generation"], "the good version's release ran once")
	require.Len(t, evs[msg.EventReleaseFailed], 1)
	require.Empty(t, releaseContainersLeft(t, s.prefix), "release containers are removed once they ended")
	require.True(t, strings.Contains(out, "rolled out"), "%s", out)
}

// releaseContainersLeft lists the release containers of a prefix.
func releaseContainersLeft(t *testing.T, prefix string) []string {
	t.Helper()
	out, err := exec.Command("docker", "ps", "-aq", "--filter", "label=berth.prefix="+prefix, "--filter", "label=berth.release=true").CombinedOutput()
	require.NoError(t, err, "%s", out)
	return strings.Fields(string(out))
}
