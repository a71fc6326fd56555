package agent

import (
	"errors"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/berthhq/berth/common/msg"
)

// TestRecordTellsModeAndLastChanges: the agents record names the mode and
// the nginx version, and says when the latest reload and push were, for
// which revision, how long they took and why one failed; last_error holds
// a change that failed as a whole until one succeeds. Every record passes
// Validate (a heartbeat publishes it as it is).
func TestRecordTellsModeAndLastChanges(t *testing.T) {
	t.Parallel()
	t.Run("reload", func(t *testing.T) {
		t.Parallel()
		r := newFakeRig(t, false, func(c *Config) { c.NginxVersion = "nginx/1.22.1" })
		r.nginx.failReloads = 2 // the reload, and the one that puts the previous file back
		r.putApp(appMsg("web", "web.test"))
		rev := r.putInstance("web", "a", "127.0.0.1:8001", msg.StateRunning)
		require.Equal(t, time.Second, r.step())

		m := r.agent.agentMessage() // what the next heartbeat publishes
		require.NoError(t, m.Validate())
		require.Equal(t, msg.ModeReload, m.Mode)
		require.Equal(t, "nginx/1.22.1", m.NginxVersion)
		require.Nil(t, m.LastPush, "reload mode pushes nothing")
		require.NotNil(t, m.LastReload)
		require.Equal(t, rev, m.LastReload.Revision)
		require.Contains(t, m.LastReload.Error, "nginx is not running")
		require.Equal(t, r.clock.now(), m.LastReload.At)
		require.Contains(t, m.LastError, "nginx is not running")

		r.clock.add(time.Minute)
		require.Zero(t, r.step())
		m = r.lastAgent()
		require.NoError(t, m.Validate())
		require.Equal(t, &msg.ConfigChange{At: r.clock.now(), Revision: rev}, m.LastReload)
		require.Empty(t, m.LastError, "the reload that succeeded ends the error")
	})
	t.Run("dynamic", func(t *testing.T) {
		t.Parallel()
		r := newFakeRig(t, true)
		r.putApp(appMsg("web", "web.test"))
		first := r.putInstance("web", "a", "127.0.0.1:8001", msg.StateRunning)
		require.Zero(t, r.step())
		m := r.lastAgent()
		require.NoError(t, m.Validate())
		require.Equal(t, msg.ModeDynamic, m.Mode)
		require.Empty(t, m.NginxVersion, "none given: none named")
		require.Equal(t, &msg.ConfigChange{At: r.clock.now(), Revision: first}, m.LastReload)
		require.Equal(t, &msg.ConfigChange{At: r.clock.now(), Revision: first}, m.LastPush, "the full push after the reload")
		reloadAt := r.clock.now()

		r.clock.add(time.Minute)
		r.pusher.fail = errors.New("control endpoint: 500")
		second := r.putInstance("web", "b", "127.0.0.1:8002", msg.StateRunning)
		require.Equal(t, time.Second, r.step())
		m = r.agent.agentMessage()
		require.NoError(t, m.Validate())
		require.Equal(t, &msg.ConfigChange{At: r.clock.now(), Revision: second, Error: "control endpoint: 500"}, m.LastPush)
		require.Equal(t, reloadAt, m.LastReload.At, "a push is no reload")
		require.Equal(t, "control endpoint: 500", m.LastError)
		require.Equal(t, first, m.AppliedRevision, "nginx serves the first revision still")

		r.clock.add(time.Minute)
		r.pusher.fail = nil
		require.Zero(t, r.step())
		m = r.lastAgent()
		require.NoError(t, m.Validate())
		require.Equal(t, &msg.ConfigChange{At: r.clock.now(), Revision: second}, m.LastPush)
		require.Empty(t, m.LastError)
		require.Equal(t, second, m.AppliedRevision)
	})
}
