package agent

import (
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/berthhq/berth/common/msg"
	"github.com/berthhq/berth/lbagent/internal/state"
)

// fakeEjector ejects one address until a time.
type fakeEjector struct {
	mu    sync.Mutex
	addr  string
	until time.Time
}

var _ Ejector = (*fakeEjector)(nil)

func (e *fakeEjector) Filter(snap state.Snapshot, now time.Time) (state.Snapshot, time.Time) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.addr == "" || !now.Before(e.until) {
		return snap, time.Time{}
	}
	out := snap
	out.Apps = slices.Clone(snap.Apps)
	for i, a := range out.Apps {
		out.Apps[i].Servers = slices.DeleteFunc(slices.Clone(a.Servers), func(s state.Server) bool { return s.Address == e.addr })
	}
	return out, e.until
}

func (e *fakeEjector) Ejected() []msg.Ejection {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.addr == "" {
		return nil
	}
	return []msg.Ejection{{App: "web", Instance: "b", Reason: "test", Until: e.until, Times: 1}}
}

// TestSyncLeavesEjectedInstancesOut: an instance the Ejector ejects leaves
// what nginx serves (a push in dynamic mode, a reload otherwise), the
// agent wakes when its ejection ends, and it is back; the agents record
// lists it meanwhile.
func TestSyncLeavesEjectedInstancesOut(t *testing.T) {
	t.Parallel()
	for name, dyn := range modes() {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			ej := &fakeEjector{}
			r := newFakeRig(t, dyn, func(c *Config) { c.Ejector = ej })
			r.putApp(appMsg("web", "web.test"))
			for _, id := range []string{"a", "b", "c"} {
				r.putInstance("web", id, "127.0.0.1:800"+string(id[0]-'a'+'1'), msg.StateRunning)
			}
			require.Zero(t, r.step())
			if !dyn {
				require.Contains(t, r.config(), "127.0.0.1:8002")
			}
			_, reloads := r.nginx.counts()

			ej.mu.Lock()
			ej.addr, ej.until = "127.0.0.1:8002", r.clock.now().Add(30*time.Second)
			ej.mu.Unlock()
			require.Equal(t, 30*time.Second, r.step(), "the agent wakes when the ejection ends")
			require.Len(t, r.lastAgent().Ejected, 1)
			_, after := r.nginx.counts()
			if dyn {
				require.Equal(t, reloads, after, "an ejection is a push")
				_, addrs := r.pusher.pushed("web")
				require.Equal(t, []string{"127.0.0.1:8001", "127.0.0.1:8003"}, addrs)
			} else {
				require.Equal(t, reloads+1, after, "an ejection is a reload")
				require.NotContains(t, r.config(), "127.0.0.1:8002")
			}

			r.clock.add(30 * time.Second)
			ej.mu.Lock()
			ej.addr = ""
			ej.mu.Unlock()
			require.Zero(t, r.step())
			require.Empty(t, r.lastAgent().Ejected)
			if dyn {
				_, addrs := r.pusher.pushed("web")
				require.Equal(t, []string{"127.0.0.1:8001", "127.0.0.1:8002", "127.0.0.1:8003"}, addrs, "back")
			} else {
				require.Contains(t, r.config(), "127.0.0.1:8002", "back")
			}
		})
	}
}
