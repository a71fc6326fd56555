package controller

import (
	"context"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/berthhq/berth/common/msg"
	"github.com/berthhq/berth/scheduler/internal/docker"
	"github.com/berthhq/berth/scheduler/internal/placement"
	"github.com/berthhq/berth/scheduler/internal/store"
)

// fakeHosts are registered hosts whose states the test sets.
type fakeHosts struct {
	mu    sync.Mutex
	hosts []placement.Host
	down  map[string]bool
	drain map[string]bool
}

func (h *fakeHosts) Hosts() []placement.Host {
	h.mu.Lock()
	defer h.mu.Unlock()
	out := make([]placement.Host, len(h.hosts))
	for i, x := range h.hosts {
		x.Schedulable = !h.down[x.Name] && !h.drain[x.Name]
		switch {
		case h.down[x.Name]:
			x.State = store.HostDown
		case h.drain[x.Name]:
			x.State = "draining"
		}
		out[i] = x
	}
	return out
}

func (h *fakeHosts) State(name string) (string, bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.down[name] {
		return store.HostDown, h.drain[name]
	}
	return store.HostUp, h.drain[name]
}

func (h *fakeHosts) set(name string, down, drain bool) {
	h.mu.Lock()
	h.down[name], h.drain[name] = down, drain
	h.mu.Unlock()
}

// byHost counts the running instances of each host.
func byHost(f *fake) map[string]int {
	records, _ := f.snapshot()
	out := map[string]int{}
	for _, r := range records {
		if r.State == msg.StateRunning {
			out[r.Host]++
		}
	}
	return out
}

// Several hosts: 6 replicas spread 2/2/2; a host down has its instances
// replaced on the others; a drained host is emptied under the rolling
// rules; a constraint no host meets is an unplaceable event.
func TestPlacesOverHosts(t *testing.T) {
	t.Parallel()
	hosts := &fakeHosts{hosts: []placement.Host{{Name: "h1", Labels: map[string]string{"zone": "a"}}, {Name: "h2", Labels: map[string]string{"zone": "a"}},
		{Name: "h3", Labels: map[string]string{"zone": "b"}}}, down: map[string]bool{}, drain: map[string]bool{}}
	f := newFake()
	f.hosts = hosts
	f.apply(load(t, webApp(t, "v1")), 6)
	h := start(t, f, Config{})
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() { h.healthd(ctx, 20*time.Millisecond) })
	wg.Go(func() { h.lbagent(ctx, 20*time.Millisecond) })
	t.Cleanup(func() { cancel(); wg.Wait() })

	require.Eventually(t, func() bool { return h.converged("web:v1", 6, true) }, 5*time.Second, 10*time.Millisecond)
	require.Equal(t, map[string]int{"h1": 2, "h2": 2, "h3": 2}, byHost(f))

	// h3 down: its two instances may still run (a partition), so with
	// max_surge 1 only one is replaced until h3 answers: never more than
	// replicas + max_surge.
	hosts.set("h3", true, false)
	h.c.Wake()
	require.Eventually(t, func() bool {
		b := byHost(f)
		return h.converged("web:v1", 5, true) && b["h3"] == 0
	}, 5*time.Second, 10*time.Millisecond, "one of h3's instances replaced: %v", byHost(f))
	time.Sleep(100 * time.Millisecond)
	require.True(t, h.converged("web:v1", 5, true), "5 + the 2 unreachable = replicas + max_surge")
	_, events := f.snapshot()
	require.Equal(t, 2, count(events, "instance_lost"), "a host's loss is no restart of the app")
	require.Zero(t, count(events, "instance_replaced"))
	records, _ := f.snapshot()
	failed := 0
	for _, r := range records {
		if r.State == msg.StateFailed && r.Host == "h3" {
			failed++
		}
	}
	require.Equal(t, 2, failed, "the lost instances stay recorded, failed, so that a next leader counts them too")

	// A new leader (a controller started afresh on the same records)
	// still holds the app at replicas + max_surge.
	h.stop()
	h = start(t, f, Config{})
	next := h
	wg.Go(func() { next.healthd(ctx, 20*time.Millisecond) })
	wg.Go(func() { next.lbagent(ctx, 20*time.Millisecond) })
	time.Sleep(200 * time.Millisecond)
	require.True(t, h.converged("web:v1", 5, false), "the bound survives a failover: %v", byHost(f))

	// h3 back: its leftovers are gone (orphans), the sixth is placed.
	hosts.set("h3", false, false)
	h.c.Wake()
	require.Eventually(t, func() bool { return h.converged("web:v1", 6, true) }, 5*time.Second, 10*time.Millisecond)

	// h1 drained: its instances move, surge first.
	hosts.set("h1", false, true)
	h.c.Wake()
	require.Eventually(t, func() bool {
		b := byHost(f)
		return h.converged("web:v1", 6, true) && b["h1"] == 0
	}, 10*time.Second, 10*time.Millisecond, "h1 drained: %v", byHost(f))
	require.Equal(t, 6, byHost(f)["h3"]+byHost(f)["h2"], "h1's instances went to h2 and h3: %v", byHost(f))

	// A constraint no host meets: unplaceable, and nothing else moves.
	api := load(t, strings.Replace(webApp(t, "v1"), "name: web", "name: api", 1)+"placement: {constraints: [zone==c]}\n")
	f.apply(api, 2)
	h.c.Wake()
	require.Eventually(t, func() bool {
		_, events := f.snapshot()
		return count(events, "unplaceable") > 0
	}, 5*time.Second, 10*time.Millisecond)
	for range 5 { // more cycles: the same reason is not reported again
		h.c.Wake()
		time.Sleep(20 * time.Millisecond)
	}
	_, events = f.snapshot()
	require.Equal(t, 1, count(events, "unplaceable"), "reported once for the reason")
	f.mu.Lock()
	var ev store.Event
	for _, e := range f.events {
		if e.Kind == "unplaceable" {
			ev = e
		}
	}
	f.mu.Unlock()
	require.Equal(t, "api", ev.App)
	require.Contains(t, ev.Message, "2 instance(s) of api cannot be placed: no host of 3 can take it (h1: draining; h2, h3: fails zone==c)")
	require.True(t, h.converged("web:v1", 6, true), "nothing else moved")

	// web's placement changes to zone b: its instances on zone a move,
	// under the rolling rules, to h3.
	f.apply(load(t, webApp(t, "v1")+"placement: {constraints: [zone==b]}\n"), 6)
	h.c.Wake()
	require.Eventually(t, func() bool {
		return h.converged("web:v1", 6, true) && byHost(f)["h3"] == 6
	}, 10*time.Second, 10*time.Millisecond, "web moved to zone b")
}

// An engine that reports an address that is not its host's (here h2's,
// a binding on 10.0.0.5:5432, a database elsewhere) gets no instance into
// berth_instances: the start is refused, and so is the adoption of a
// container it runs, each an instance_address_refused event naming the
// host, the instance and the address; the containers are removed. h1's
// instance runs as usual.
func TestRefusesAForeignAddress(t *testing.T) {
	t.Parallel()
	hosts := &fakeHosts{hosts: []placement.Host{{Name: "h1"}, {Name: "h2"}}, down: map[string]bool{}, drain: map[string]bool{}}
	f := newFake()
	f.hosts = hosts
	f.lies = map[string]string{"h2": "10.0.0.5:5432"}
	s := load(t, webApp(t, "v1")+"restart: {backoff_initial: 10ms, max_attempts: 2}\n")
	f.apply(s, 2)
	f.containers["lying"] = &docker.Container{ID: "lying", Host: "h2", App: "web", Instance: "adoptme", SpecHash: desiredHash(s), Running: true,
		Name: "web:v1", Generation: 1}
	h := start(t, f, Config{})

	refused := func() []store.Event {
		f.mu.Lock()
		defer f.mu.Unlock()
		var out []store.Event
		for _, e := range f.events {
			if e.Kind == "instance_address_refused" {
				out = append(out, e)
			}
		}
		return out
	}
	require.Eventually(t, func() bool {
		evs := refused()
		adopted, started := false, false
		for _, e := range evs {
			adopted = adopted || e.Instance == "adoptme"
			started = started || e.Instance != "adoptme"
		}
		return adopted && started && byHost(f)["h1"] == 1
	}, 5*time.Second, 10*time.Millisecond, "refused: %v", refused())
	h.stop() // no start in flight below
	for _, e := range refused() {
		require.Equal(t, "web", e.App)
		require.Equal(t, map[string]string{"host": "h2", "address": "10.0.0.5:5432", "container_id": e.Details["container_id"]}, e.Details)
		require.Contains(t, e.Message, "instance "+e.Instance+" of web refused on host h2: its engine reported the address 10.0.0.5:5432, which is not its host's")
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	require.NotContains(t, f.addresses, "10.0.0.5:5432")
	for _, r := range f.records {
		require.NotEqual(t, "h2", r.Host, "no record of h2's stays: %+v", r)
	}
	for id, c := range f.containers {
		require.NotEqual(t, "h2", c.Host, "h2's containers are removed: %s", id)
	}
}
