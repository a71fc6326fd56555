package leader

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"

	"github.com/berthhq/berth/scheduler/internal/store"
)

// journal is the order in which the fakes started and returned.
type journal struct {
	mu      sync.Mutex
	entries []string
}

func (j *journal) add(e string) {
	j.mu.Lock()
	defer j.mu.Unlock()
	j.entries = append(j.entries, e)
}

func (j *journal) list() []string {
	j.mu.Lock()
	defer j.mu.Unlock()
	return append([]string(nil), j.entries...)
}

// fake is a leader-only service: it runs until its context ends, and
// then, when hold is set, until hold is closed. Its first fails runs
// return an error at once.
type fake struct {
	name  string
	j     *journal
	hold  chan struct{}
	fails int

	mu      sync.Mutex
	starts  int
	running int
}

func (f *fake) Run(ctx context.Context) error {
	f.mu.Lock()
	f.starts++
	f.running++
	fail := f.starts <= f.fails
	f.mu.Unlock()
	f.j.add("start " + f.name)
	defer func() {
		f.mu.Lock()
		f.running--
		f.mu.Unlock()
		f.j.add("return " + f.name)
	}()
	if fail {
		return errors.New("boom")
	}
	<-ctx.Done()
	if f.hold != nil {
		<-f.hold
	}
	return nil
}

func (f *fake) state() (starts, running int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.starts, f.running
}

func (f *fake) is(starts, running int) func() bool {
	return func() bool { s, r := f.state(); return s == starts && r == running }
}

type groupRig struct {
	g      *Group
	logs   *observer.ObservedLogs
	cancel context.CancelFunc
	done   chan error
}

func runGroup(t *testing.T, services ...*fake) *groupRig {
	t.Helper()
	core, logs := observer.New(zap.InfoLevel)
	g := NewGroup(zap.New(core))
	g.Restart = 10 * time.Millisecond
	for _, s := range services {
		g.Add(s.name, s)
	}
	ctx, cancel := context.WithCancel(context.Background())
	r := &groupRig{g: g, logs: logs, cancel: cancel, done: make(chan error, 1)}
	go func() { r.done <- g.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		for _, s := range services {
			if s.hold != nil {
				select {
				case <-s.hold:
				default:
					close(s.hold)
				}
			}
		}
		<-r.done
	})
	return r
}

const wait, tick = 5 * time.Second, time.Millisecond

func TestGroupStartsEveryServiceOnGainAndJoinsThemOnLoss(t *testing.T) {
	t.Parallel()
	j := &journal{}
	a, b, c := &fake{name: "a", j: j}, &fake{name: "b", j: j}, &fake{name: "c", j: j}
	r := runGroup(t, a, b, c)
	for _, s := range []*fake{a, b, c} {
		require.True(t, s.is(0, 0)(), "nothing runs while following")
	}

	r.g.Lead(store.Lease{Term: 1}, true)
	for _, s := range []*fake{a, b, c} {
		require.Eventually(t, s.is(1, 1), wait, tick, "%s started on gaining leadership", s.name)
	}
	r.g.Lead(store.Lease{Term: 1}, true) // a renewal: nothing changes
	r.g.Lead(store.Lease{}, false)
	for _, s := range []*fake{a, b, c} {
		require.Eventually(t, s.is(1, 0), wait, tick, "%s stopped on losing leadership", s.name)
	}
	r.g.Lead(store.Lease{Term: 2}, true)
	for _, s := range []*fake{a, b, c} {
		require.Eventually(t, s.is(2, 1), wait, tick, "%s started again on the next gain", s.name)
	}
	r.g.Lead(store.Lease{Term: 3}, true) // another term without a loss seen between
	for _, s := range []*fake{a, b, c} {
		require.Eventually(t, s.is(3, 1), wait, tick, "%s restarted for the new term", s.name)
	}
}

func TestGroupJoinsEveryServiceBeforeTheNextGain(t *testing.T) {
	t.Parallel()
	j := &journal{}
	slow := &fake{name: "slow", j: j, hold: make(chan struct{})}
	fast := &fake{name: "fast", j: j}
	r := runGroup(t, slow, fast)

	r.g.Lead(store.Lease{Term: 1}, true)
	require.Eventually(t, slow.is(1, 1), wait, tick)
	require.Eventually(t, fast.is(1, 1), wait, tick)
	r.g.Lead(store.Lease{}, false)
	require.Eventually(t, fast.is(1, 0), wait, tick)
	r.g.Lead(store.Lease{Term: 2}, true)
	require.Never(t, func() bool { s, _ := fast.state(); return s > 1 }, 100*time.Millisecond, tick,
		"nothing starts again while a service of the last term runs")

	close(slow.hold)
	require.Eventually(t, slow.is(2, 1), wait, tick)
	require.Eventually(t, fast.is(2, 1), wait, tick)
	entries := j.list()
	require.Len(t, entries, 6)
	require.ElementsMatch(t, []string{"start slow", "start fast"}, entries[:2])
	require.Equal(t, []string{"return fast", "return slow"}, entries[2:4], "every service of term 1 returned")
	require.ElementsMatch(t, []string{"start slow", "start fast"}, entries[4:], "before any of term 2 started")
}

func TestGroupRunsAFailedServiceAgainAndStopsNothing(t *testing.T) {
	t.Parallel()
	j := &journal{}
	failing := &fake{name: "failing", j: j, fails: 2}
	other := &fake{name: "other", j: j}
	r := runGroup(t, failing, other)

	r.g.Lead(store.Lease{Term: 1}, true)
	require.Eventually(t, failing.is(3, 1), wait, tick, "run again after each failure while leading")
	require.True(t, other.is(1, 1)(), "the others keep running")
	select {
	case err := <-r.done:
		t.Fatalf("the group returned on a service's failure: %v", err)
	default:
	}
	failed := r.logs.FilterMessage("leader's service failed: running it again").All()
	require.Len(t, failed, 2)
	require.Equal(t, "failing", failed[0].ContextMap()["service"])
	require.Equal(t, "boom", failed[0].ContextMap()["error"])
}

func TestGroupStopWhileLeadingJoinsEveryService(t *testing.T) {
	t.Parallel()
	j := &journal{}
	slow := &fake{name: "slow", j: j, hold: make(chan struct{})}
	fast := &fake{name: "fast", j: j}
	r := runGroup(t, slow, fast)
	r.g.Lead(store.Lease{Term: 1}, true)
	require.Eventually(t, slow.is(1, 1), wait, tick)
	require.Eventually(t, fast.is(1, 1), wait, tick)

	r.cancel()
	require.Eventually(t, fast.is(1, 0), wait, tick)
	require.Never(t, func() bool { return len(r.done) > 0 }, 100*time.Millisecond, tick, "Run waits for every service")
	close(slow.hold)
	select {
	case err := <-r.done:
		require.NoError(t, err)
		r.done <- err // for the cleanup
	case <-time.After(wait):
		t.Fatal("Run did not return once every service had")
	}
	require.True(t, slow.is(1, 0)())
}

// lessor grants the lease to whoever asks, and records resigns.
type lessor struct {
	resigned chan struct{}
	once     sync.Once
}

func (f *lessor) Acquire(context.Context, string, string, time.Duration) (store.Lease, bool, error) {
	return store.Lease{Term: 1}, true, nil
}

func (f *lessor) Resign(context.Context, store.Lease) error {
	f.once.Do(func() { close(f.resigned) })
	return nil
}

func TestCampaignJoinsTheServicesBeforeResigning(t *testing.T) {
	t.Parallel()
	j := &journal{}
	slow := &fake{name: "slow", j: j, hold: make(chan struct{})}
	ls := &lessor{resigned: make(chan struct{})}
	el := New(ls, "scheduler", "a", time.Minute, zap.NewNop())
	g := NewGroup(zap.NewNop())
	g.Add("slow", slow)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- Campaign(ctx, el, g)
	}()
	require.Eventually(t, slow.is(1, 1), wait, tick, "the service starts once elected")

	cancel()
	require.Never(t, func() bool { return isClosed(ls.resigned) }, 100*time.Millisecond, tick,
		"no resign while a service still runs")
	_, leading := el.Leader()
	require.True(t, leading, "the lease is kept while the services finish")
	close(slow.hold)
	select {
	case <-ls.resigned:
	case <-time.After(wait):
		t.Fatal("no resign once the services had stopped")
	}
	require.NoError(t, <-done)
	_, leading = el.Leader()
	require.False(t, leading)
}

func isClosed(c chan struct{}) bool {
	select {
	case <-c:
		return true
	default:
		return false
	}
}
