package agent

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest"
	"go.uber.org/zap/zaptest/observer"

	"github.com/berthhq/berth/common/msg"
	"github.com/berthhq/berth/internal/testrig"
)

func TestConfirmWaitScalesWithWhatNginxTakes(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name           string
		floor          time.Duration
		served, tested time.Duration
		want           time.Duration
	}{
		{name: "a config nginx tests fast: --confirm-timeout", floor: 10 * time.Second, tested: 40 * time.Millisecond, want: 10 * time.Second},
		{name: "the first reload of a big config: 3x its nginx -t", floor: 10 * time.Second, tested: 8 * time.Second, want: 24 * time.Second},
		{name: "a reload that took long to serve: 3x that", floor: 10 * time.Second, served: 9 * time.Second, tested: time.Second, want: 27 * time.Second},
		{name: "nginx -t longer than the last reload", floor: time.Second, served: 2 * time.Second, tested: 3 * time.Second, want: 9 * time.Second},
		{name: "bounded", floor: 10 * time.Second, served: time.Hour, want: confirmCeiling},
		{name: "a floor above the bound wins", floor: time.Hour, served: time.Hour, want: time.Hour},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			w := newConfirmWait(tt.floor)
			w.observe(tt.served)
			require.Equal(t, tt.want, w.deadline(tt.tested))
		})
	}
}

// stepClock is the agent's clock in TestSlowReloadIsWaitedForAndBatches:
// the real clock, moved ahead by what the slowed nginx -t costs.
type stepClock struct {
	mu    sync.Mutex
	ahead time.Duration
}

func (c *stepClock) now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return time.Now().Add(c.ahead)
}

func (c *stepClock) add(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.ahead += d
}

// bigTester is nginx -t on a config as big as a 10,000-app one: the real
// test, and the agent's clock says it took cost.
type bigTester struct {
	Tester
	clock *stepClock
	cost  time.Duration
}

func (b bigTester) Test(ctx context.Context, prefix, conf string) error {
	err := b.Tester.Test(ctx, prefix, conf)
	b.clock.add(b.cost)
	return err
}

// slowReloader is nginx's master parsing a big config: a reload is
// signalled at once, as SIGHUP is, and takes effect when the test releases
// it. It counts the reloads signalled.
type slowReloader struct {
	inner Reloader
	// asked receives each reload signalled; release lets one take effect.
	asked, release chan struct{}
	mu             sync.Mutex
	signalled      int
}

func (s *slowReloader) Reload(context.Context) error {
	s.mu.Lock()
	s.signalled++
	s.mu.Unlock()
	select {
	case s.asked <- struct{}{}:
	default: // a test that failed no longer reads: never block the agent
	}
	go func() {
		<-s.release
		_ = s.inner.Reload(context.Background())
	}()
	return nil
}

func (s *slowReloader) count() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.signalled
}

// TestSlowReloadIsWaitedForAndBatches: a config whose reload takes longer
// than --confirm-timeout (a 10,000-app one: nginx -t and the master's
// parse take seconds) is waited for, not put back and signalled again,
// and the changes that come meanwhile (a new app, an instance of the
// first) make one more reload after it: one reload per batch.
func TestSlowReloadIsWaitedForAndBatches(t *testing.T) {
	t.Parallel()
	for name, dyn := range modes() {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			clock := &stepClock{}
			slow := &slowReloader{asked: make(chan struct{}, 4), release: make(chan struct{}, 4)}
			core, logs := observer.New(zapcore.WarnLevel)
			r := newRigMode(t, dyn, func(m *rigAgent) {
				m.cfg.ConfirmTimeout = 300 * time.Millisecond
				m.tester = bigTester{Tester: m.tester, clock: clock, cost: time.Second}
				slow.inner, m.reloader = m.reloader, slow
				m.logger = zap.New(zapcore.NewTee(zaptest.NewLogger(t).Core(), core))
				m.now = clock.now
			})
			waiting := func(n int) {
				t.Helper()
				require.Eventually(t, func() bool {
					return logs.FilterMessageSnippet("reload still taking effect").Len() >= n
				}, 10*time.Second, 5*time.Millisecond, "reload %d waited for beyond --confirm-timeout", n)
			}

			// The first batch: its reload is signalled, and still not served
			// past --confirm-timeout. (The app's put may start it alone, at
			// once: then the instance joins the second batch.)
			r.putApp(appMsg("web", "web.test"))
			a, b := testrig.Backend(t, "A"), testrig.Backend(t, "B")
			r.putInstance("web", "a", a, msg.StateRunning)
			<-slow.asked
			waiting(1)

			// The second batch comes while it is taking effect.
			r.putApp(appMsg("shop", "shop.test"))
			r.putInstance("shop", "s", b, msg.StateRunning)
			last := r.putInstance("web", "a", b, msg.StateRunning)
			slow.release <- struct{}{}
			require.Eventually(t, func() bool { return r.agent.Generation() == 1 }, 10*time.Second, 5*time.Millisecond,
				"the first reload is confirmed, served after --confirm-timeout")

			// One reload for all of it, waited for too.
			<-slow.asked
			waiting(2)
			slow.release <- struct{}{}
			r.applied(last)
			r.waitFor("shop.test", 200, "B")
			r.waitFor("web.test", 200, "B")

			require.Equal(t, 2, slow.count(), "one reload per batch, none signalled while one was taking effect")
			require.Equal(t, 2, r.reloads())
			require.Equal(t, uint64(2), r.agent.Generation())
			r.rep.mu.Lock()
			defer r.rep.mu.Unlock()
			for _, rl := range r.rep.reloads {
				require.NotEqual(t, msg.ReloadFailed, rl.Result, "no reload failed: %s", rl.Error)
			}
		})
	}
}

// workingMaster is nginx's master parsing a config, on fakes: each read
// of its CPU time finds it a second further while work remains; when
// the work is done it serves the generation. Confirm answers only when
// it serves gen, else when ctx ends, as nginx.Confirm does.
type workingMaster struct {
	mu     sync.Mutex
	work   int // CPU reads left before the reload is served; -1: never
	cpu    time.Duration
	gen    uint64
	served uint64
}

func (m *workingMaster) Reload(context.Context) error { return nil }

func (m *workingMaster) MasterCPU() (time.Duration, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.work > 0 {
		m.cpu += time.Second
		if m.work--; m.work == 0 {
			m.served = m.gen
		}
	}
	return m.cpu, nil
}

func (m *workingMaster) Generation(context.Context) (uint64, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.served, nil
}

func (m *workingMaster) Confirm(ctx context.Context, gen uint64) error {
	m.mu.Lock()
	served := m.served
	m.mu.Unlock()
	if served == gen {
		return nil
	}
	<-ctx.Done()
	return fmt.Errorf("confirm generation %d: %w (last: generation %d)", gen, ctx.Err(), served)
}

// TestConfirmWaitsWhileTheMasterWorks: past the expected wait, a reload
// is waited for while nginx's master keeps working on it (its CPU time
// advances), up to the ceiling; an idle master ends the wait.
func TestConfirmWaitsWhileTheMasterWorks(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		work    int
		ceiling time.Duration
		served  bool
	}{
		{name: "served while the master works", work: 4, ceiling: time.Minute, served: true},
		{name: "an idle master: failed at the expected wait", work: 0, ceiling: time.Minute},
		{name: "a master that works past the ceiling", work: 1 << 20, ceiling: 100 * time.Millisecond},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			r := newFakeRig(t, false)
			m := &workingMaster{work: tt.work, gen: 1}
			a := r.agent
			a.status, a.reloader = m, m
			a.cfg.ConfirmTimeout = 5 * time.Millisecond
			a.waits = newConfirmWait(a.cfg.ConfirmTimeout)
			a.waits.slice, a.waits.ceiling = 5*time.Millisecond, tt.ceiling
			err := a.confirm(context.Background(), 1, a.now(), a.waits.deadline(0))
			if tt.served {
				require.NoError(t, err)
				return
			}
			require.ErrorIs(t, err, context.DeadlineExceeded)
			require.Contains(t, err.Error(), "last: generation 0")
		})
	}
}
