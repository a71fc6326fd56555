package agent

import (
	"errors"
	"fmt"
	"os"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/berthhq/berth/common/msg"
	"github.com/berthhq/berth/common/spec"
	"github.com/berthhq/berth/lbagent/internal/state"
)

// The tests here run the agent's acts on fakes (fake_test.go), with no
// nginx: what it tests, reloads, pushes and reports for each decision.

func modes() map[string]bool { return map[string]bool{"reload": false, "dynamic": true} }

// TestSyncSkipsWhatNginxServes: a state is reloaded once; the same state
// at a later revision is a skip, reported at that revision; in dynamic
// mode an endpoint change, or a new record with the same routing, is a
// push, with no nginx -t and no reload.
func TestSyncSkipsWhatNginxServes(t *testing.T) {
	t.Parallel()
	for name, dyn := range modes() {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			r := newFakeRig(t, dyn)
			r.putApp(appMsg("web", "web.test"))
			rev := r.putInstance("web", "a", "127.0.0.1:8001", msg.StateRunning)
			require.Zero(t, r.step())
			require.Equal(t, msg.ReloadApplied, r.lastReload().Result)
			require.Equal(t, rev, r.lastAgent().AppliedRevision)
			require.Equal(t, map[string]int64{"web": 1}, r.lastAgent().Apps)
			require.Equal(t, uint64(1), r.agent.Generation())
			tests, reloads := r.nginx.counts()
			require.Equal(t, 1, tests)
			require.Equal(t, 1, reloads)
			require.Contains(t, r.config(), "# generation 1\n")

			rev = r.putInstance("web", "a", "127.0.0.1:8001", msg.StateRunning)
			require.Zero(t, r.step())
			require.Equal(t, msg.ReloadSkipped, r.lastReload().Result)
			require.Equal(t, rev, r.lastAgent().AppliedRevision)
			tests, reloads = r.nginx.counts()
			require.Equal(t, []int{1, 1}, []int{tests, reloads}, "the same state: no nginx -t, no reload")
			if !dyn {
				return
			}

			r.putInstance("web", "b", "127.0.0.1:8002", msg.StateRunning)
			again := appMsg("web", "web.test")
			again.Generation++ // a scale: the same routing
			r.putApp(again)
			require.Zero(t, r.step())
			require.Equal(t, msg.ReloadSkipped, r.lastReload().Result)
			require.Equal(t, map[string]int64{"web": 2}, r.lastAgent().Apps)
			tests, reloads = r.nginx.counts()
			require.Equal(t, []int{1, 1}, []int{tests, reloads}, "an endpoint change is pushed: no nginx -t, no reload")
			batches, addrs := r.pusher.pushed("web")
			require.Equal(t, []string{"127.0.0.1:8001", "127.0.0.1:8002"}, addrs)
			require.False(t, batches[len(batches)-1].Full, "only what changed is pushed")

			// A new app is a route change: the old workers drain, then reload.
			r.putApp(appMsg("shop", "shop.test"))
			require.Zero(t, r.step())
			require.Equal(t, msg.ReloadApplied, r.lastReload().Result)
			require.Equal(t, uint64(2), r.agent.Generation())
			require.Equal(t, []uint64{2}, r.pusher.drains, "the workers below generation 2 closed their keep-alive connections")
			batches, _ = r.pusher.pushed("web")
			require.True(t, batches[len(batches)-1].Full, "after a reload every endpoint is pushed and read back")
		})
	}
}

// TestSyncCoalescesBursts: a burst of changes inside the debounce window
// makes few reloads.
func TestSyncCoalescesBursts(t *testing.T) {
	t.Parallel()
	r := newFakeRig(t, false)
	r.run()
	r.putApp(appMsg("web", "web.test"))
	first := r.putInstance("web", "a", "127.0.0.1:8001", msg.StateRunning)
	require.Eventually(t, func() bool { _, ag := r.rep.last(); return ag != nil && ag.AppliedRevision == first }, 5*time.Second, 5*time.Millisecond)
	_, before := r.nginx.counts()

	var last uint64
	for i := range 30 {
		last = r.putInstance("web", fmt.Sprintf("x%d", i), fmt.Sprintf("127.0.0.1:%d", 30000+i), msg.StateStarting)
	}
	require.Eventually(t, func() bool { _, ag := r.rep.last(); return ag != nil && ag.AppliedRevision == last }, 5*time.Second, 5*time.Millisecond)
	_, after := r.nginx.counts()
	require.LessOrEqual(t, after-before, 2, "30 changes, %d reloads", after-before)
}

// TestSyncIsolatesARefusedApp: an app nginx -t refuses is found by
// bisection and stands in as a placeholder answering 503, while the others
// are served. It is not tried again, nor bisected, for a change of another
// app until --resync passes; then what nginx accepts is what it serves,
// and nothing reloads. A new generation of it is tried at once.
func TestSyncIsolatesARefusedApp(t *testing.T) {
	t.Parallel()
	for name, dyn := range modes() {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			r := newFakeRig(t, dyn)
			r.nginx.refuse = []string{"/nonexistent/"}
			r.putApp(appMsg("good", "good.test"))
			r.putInstance("good", "g1", "127.0.0.1:8001", msg.StateRunning)
			require.Zero(t, r.step())

			bad := appMsg("bad", "bad.test")
			bad.Routing.TLS = &spec.TLS{Certificate: "/nonexistent/berth/bad.crt", Key: "/nonexistent/berth/bad.key"}
			r.putApp(bad)
			r.putInstance("bad", "b1", "127.0.0.1:9001", msg.StateRunning)
			require.Equal(t, time.Hour, r.step(), "decide again when the refusal expires (--resync)")
			rl := r.lastReload()
			require.Equal(t, msg.ReloadRejected, rl.Result)
			require.Equal(t, map[string]string{"bad": `nginx -t: "/nonexistent/" refused`}, rl.FailedApps)
			require.Contains(t, r.lastAgent().Errors, "bad")
			require.NotContains(t, r.config(), "/nonexistent/")
			require.Contains(t, r.config(), "bad.test", "its placeholder keeps its host answering 503")
			tests, reloads := r.nginx.counts()
			require.Equal(t, 2, reloads)
			require.Equal(t, 1+1+2+1, tests, "the first apply, the whole, both halves, the fixed")

			// Changes of the other app neither test it nor bisect for it.
			for i := range 4 {
				r.putInstance("good", "g2", fmt.Sprintf("127.0.0.1:%d", 8002+i), msg.StateRunning)
				r.step()
			}
			require.Contains(t, r.lastAgent().Errors, "bad", "still reported refused")
			t2, r2 := r.nginx.counts()
			if dyn {
				require.Equal(t, []int{tests, reloads}, []int{t2, r2}, "endpoint changes: no nginx -t, no reload")
				_, addrs := r.pusher.pushed("good")
				require.Equal(t, []string{"127.0.0.1:8001", "127.0.0.1:8005"}, addrs)
			} else {
				require.Equal(t, 4, r2-reloads)
				require.Equal(t, 4, t2-tests, "one nginx -t per reload: no bisection")
			}

			// --resync passed: tried again, refused again, and what nginx
			// accepts of the state is what it serves: nothing reloads.
			r.clock.add(time.Hour)
			t2, r2 = r.nginx.counts()
			require.Equal(t, time.Hour, r.step(), "refused anew: decide again when this refusal expires")
			t3, r3 := r.nginx.counts()
			require.Equal(t, t2+4, t3, "tried and bisected again: the whole, both halves, the fixed")
			require.Equal(t, r2, r3, "no reload")
			require.Equal(t, msg.ReloadRejected, r.lastReload().Result)
			require.Contains(t, r.lastAgent().Errors, "bad")

			// A new generation of it is tried at once, and served.
			fixed := appMsg("bad", "bad.test")
			fixed.Generation = 2
			r.putApp(fixed)
			require.Zero(t, r.step())
			if dyn {
				// Its placeholder has its routes: only its endpoints change.
				require.Equal(t, msg.ReloadSkipped, r.lastReload().Result)
				_, addrs := r.pusher.pushed("bad")
				require.Equal(t, []string{"127.0.0.1:9001"}, addrs)
			} else {
				require.Equal(t, msg.ReloadApplied, r.lastReload().Result)
			}
			require.Empty(t, r.lastAgent().Errors)
			require.Empty(t, r.agent.refused)
			require.Equal(t, map[string]int64{"bad": 2, "good": 1}, r.lastAgent().Apps)
		})
	}
}

// TestSyncHoldsBackAnEmptyingState: a state that removes every server,
// with no record saying why (a NATS reset), is held back for
// --empty-hold, nginx unchanged, then applied if it persists.
func TestSyncHoldsBackAnEmptyingState(t *testing.T) {
	t.Parallel()
	var held []bool
	r := newFakeRig(t, false, func(c *Config) {
		c.EmptyHold = 700 * time.Millisecond
		c.Hooks.Held = func(h bool) { held = append(held, h) }
	})
	r.putApp(appMsg("web", "web.test"))
	r.putInstance("web", "a", "127.0.0.1:8001", msg.StateRunning)
	require.Zero(t, r.step())
	served := r.config()

	r.store.InstancesHandler().Snapshot(nil, r.rev)
	require.Equal(t, 701*time.Millisecond, r.step())
	rl := r.lastReload()
	require.Equal(t, msg.ReloadFailed, rl.Result)
	require.Contains(t, rl.Error, "held back: the new state removes all 1 servers of every app")
	require.Equal(t, served, r.config(), "nginx keeps serving")
	r.clock.add(300 * time.Millisecond)
	require.Equal(t, 401*time.Millisecond, r.step(), "the hold counts from the first sighting")
	_, reloads := r.nginx.counts()
	require.Equal(t, 1, reloads)

	r.clock.add(400 * time.Millisecond)
	require.Zero(t, r.step())
	require.Equal(t, msg.ReloadApplied, r.lastReload().Result, "it persisted past --empty-hold: applied")
	require.Contains(t, r.config(), "no_backend")
	require.NotContains(t, r.config(), "127.0.0.1:8001")
	require.Equal(t, []bool{false, true, true, false}, held)
}

// TestSyncHoldsBackAfterTheCarry: a re-snapshot first carries the records
// it lacks (state.Carry), then the emptied state is held back
// (--empty-hold), then applied; on the loop and the real clock.
func TestSyncHoldsBackAfterTheCarry(t *testing.T) {
	t.Parallel()
	r := newFakeRig(t, false, func(c *Config) { c.EmptyHold = 700 * time.Millisecond })
	r.store = state.NewStoreCarrying(500*time.Millisecond, nil)
	r.agent.store = r.store
	// nginx's reloads when the hold is reported: the hold ends on the real
	// clock, perhaps before the test reads them on a busy machine.
	var atHold atomic.Int32
	atHold.Store(-1)
	r.rep.onReload = func(rl *msg.Reload) {
		if rl.Result == msg.ReloadFailed && strings.Contains(rl.Error, "held back") {
			_, n := r.nginx.counts()
			atHold.CompareAndSwap(-1, int32(n))
		}
	}
	r.load()
	r.run()
	r.putApp(appMsg("web", "web.test"))
	rev := r.putInstance("web", "a", "127.0.0.1:8001", msg.StateRunning)
	require.Eventually(t, func() bool { _, ag := r.rep.last(); return ag != nil && ag.AppliedRevision == rev }, 5*time.Second, 5*time.Millisecond)
	// One reload or two so far: the first sync may or may not take the
	// app and its instance with it.
	_, applied := r.nginx.counts()

	r.store.InstancesHandler().Snapshot(nil, 0)
	require.Eventually(t, func() bool {
		rl, _ := r.rep.last()
		return rl != nil && rl.Result == msg.ReloadFailed && strings.Contains(rl.Error, "held back")
	}, 10*time.Second, 5*time.Millisecond, "the emptied state is held back once the carry is over")
	require.EqualValues(t, applied, atHold.Load(), "nothing reloaded while carried or held")
	require.Eventually(t, func() bool { _, n := r.nginx.counts(); return n == applied+1 }, 10*time.Second, 5*time.Millisecond,
		"it persisted past --empty-hold: applied")
	require.NotContains(t, r.config(), "127.0.0.1:8001")
}

// TestSyncRetriesAFailedReload: a reload that fails after nginx -t passed
// (nginx not running yet) puts the previous file back and is tried again,
// backing off, not left until the next change.
func TestSyncRetriesAFailedReload(t *testing.T) {
	t.Parallel()
	r := newFakeRig(t, false)
	initial := r.config()
	r.nginx.failReloads = 4 // each step's reload, and the reload that puts the previous file back
	r.putApp(appMsg("web", "web.test"))
	r.putInstance("web", "w1", "127.0.0.1:8001", msg.StateRunning)
	require.Equal(t, time.Second, r.step())
	require.Equal(t, msg.ReloadFailed, r.lastReload().Result)
	require.Contains(t, r.lastReload().Error, "nginx is not running")
	require.Equal(t, initial, r.config(), "the previous file is back")
	require.Equal(t, 2*time.Second, r.step(), "backing off")
	require.Zero(t, r.step())
	require.Equal(t, msg.ReloadApplied, r.lastReload().Result)
	require.Equal(t, uint64(1), r.agent.Generation())
	require.Zero(t, r.agent.reloadFailures)
}

// TestSyncRendersNewTemplates: a template edit reloads the same state
// through the new templates; then the same state is a skip again.
func TestSyncRendersNewTemplates(t *testing.T) {
	t.Parallel()
	r := newFakeRig(t, false)
	r.putApp(appMsg("web", "web.test"))
	require.Zero(t, r.step())
	require.NotContains(t, r.config(), "edited_template")

	r.agent.SetRenderer(edited(t))
	require.Zero(t, r.step())
	require.Equal(t, msg.ReloadApplied, r.lastReload().Result)
	require.Contains(t, r.config(), "edited_template")
	require.Zero(t, r.step())
	require.Equal(t, msg.ReloadSkipped, r.lastReload().Result)
}

// TestSyncAdopts: a restarted lbagent that would render exactly the config
// nginx serves adopts it, with no reload (in dynamic mode it pushes every
// endpoint), and goes on from its generation. One that would render
// another, or finds no nginx, reloads.
func TestSyncAdopts(t *testing.T) {
	t.Parallel()
	for name, dyn := range modes() {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			r := newFakeRig(t, dyn)
			r.putApp(appMsg("web", "web.test"))
			rev := r.putInstance("web", "a", "127.0.0.1:8001", msg.StateRunning)
			r.nginx.served = 7
			require.NoError(t, os.WriteFile(r.nginx.target, r.renderAt(7), 0o644))
			require.Zero(t, r.step())
			require.Equal(t, msg.ReloadSkipped, r.lastReload().Result)
			require.Equal(t, rev, r.lastAgent().AppliedRevision)
			require.Equal(t, uint64(7), r.agent.Generation())
			tests, reloads := r.nginx.counts()
			require.Equal(t, []int{0, 0}, []int{tests, reloads}, "adopted: no nginx -t, no reload")
			if dyn {
				batches, addrs := r.pusher.pushed("web")
				require.Len(t, batches, 1)
				require.True(t, batches[0].Full)
				require.Equal(t, []string{"127.0.0.1:8001"}, addrs)
			}

			r.putApp(appMsg("shop", "shop.test"))
			require.Zero(t, r.step())
			require.Equal(t, msg.ReloadApplied, r.lastReload().Result)
			require.Equal(t, uint64(8), r.agent.Generation(), "it goes on from nginx's generation")
		})
	}
	for name, tune := range map[string]func(r *fakeRig){
		"another config": func(r *fakeRig) { r.nginx.served = 7 }, // the file is the first, empty config
		"no nginx":       func(r *fakeRig) { r.nginx.down = true },
		"nginx serves no generation": func(r *fakeRig) {
			require.NoError(t, os.WriteFile(r.nginx.target, r.renderAt(7), 0o644))
		},
	} {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			r := newFakeRig(t, false)
			r.putApp(appMsg("web", "web.test"))
			tune(r)
			require.Zero(t, r.step())
			require.Equal(t, msg.ReloadApplied, r.lastReload().Result)
			require.Equal(t, uint64(1), r.agent.Generation())
		})
	}
}

// TestSyncRetriesAFailedPush: a push nginx does not take is reported and
// tried again; one that fails at adoption or after a reload leaves
// nginx's endpoints unknown, and the next push is a full one.
func TestSyncRetriesAFailedPush(t *testing.T) {
	t.Parallel()
	r := newFakeRig(t, true)
	r.putApp(appMsg("web", "web.test"))
	r.putInstance("web", "a", "127.0.0.1:8001", msg.StateRunning)
	r.nginx.served = 7
	require.NoError(t, os.WriteFile(r.nginx.target, r.renderAt(7), 0o644))
	r.pusher.fail = errors.New("control endpoint: 500")

	// Not adopted (the push failed): reloaded, and the push after it failed.
	require.Equal(t, time.Second, r.step())
	require.Equal(t, msg.ReloadFailed, r.lastReload().Result)
	require.Contains(t, r.lastReload().Error, "control endpoint: 500")
	require.Equal(t, uint64(1), r.agent.Generation(), "nginx serves the reload")
	_, reloads := r.nginx.counts()
	require.Equal(t, 1, reloads)

	r.pusher.fail = nil
	require.Zero(t, r.step())
	require.Equal(t, msg.ReloadSkipped, r.lastReload().Result)
	batches, addrs := r.pusher.pushed("web")
	require.True(t, batches[len(batches)-1].Full, "nginx's endpoints were unknown: a full push")
	require.Equal(t, []string{"127.0.0.1:8001"}, addrs)
	_, reloads = r.nginx.counts()
	require.Equal(t, 1, reloads, "no second reload")

	r.pusher.fail = errors.New("control endpoint: 500")
	r.putInstance("web", "b", "127.0.0.1:8002", msg.StateRunning)
	require.Equal(t, time.Second, r.step())
	require.Equal(t, msg.ReloadFailed, r.lastReload().Result)
	r.pusher.fail = nil
	require.Zero(t, r.step())
	_, addrs = r.pusher.pushed("web")
	require.Equal(t, []string{"127.0.0.1:8001", "127.0.0.1:8002"}, addrs)
}
