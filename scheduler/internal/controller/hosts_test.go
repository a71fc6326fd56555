package controller

import (
	"context"
	"fmt"
	"slices"
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

// Several hosts: 6 replicas spread 2/2/2; a drained host is emptied under
// the rolling rules; a constraint no host meets is an unplaceable event;
// a changed constraint moves what runs. (TestHostLoss loses a host.)
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
		return count(events, msg.EventUnplaceable) > 0
	}, 5*time.Second, 10*time.Millisecond)
	h.cycles(5) // more cycles: the same reason is not reported again
	_, events := f.snapshot()
	require.Equal(t, 1, count(events, msg.EventUnplaceable), "reported once for the reason")
	f.mu.Lock()
	var ev store.Event
	for _, e := range f.events {
		if e.Kind == msg.EventUnplaceable {
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
			if e.Kind == msg.EventInstanceAddressRefused {
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

// containersOn lists the containers on a host, running or not.
func containersOn(f *fake, host string) []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []string
	for id, c := range f.containers {
		if c.Host == host {
			out = append(out, id)
		}
	}
	return out
}

// eventsOf returns the events of a kind.
func eventsOf(f *fake, kind msg.EventKind) []store.Event {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []store.Event
	for _, e := range f.events {
		if e.Kind == kind {
			out = append(out, e)
		}
	}
	return out
}

// A host of 2 of the 6 instances goes down. By default both are replaced
// at once, with max_surge 1 or 0; with placement.on_host_lost.replace
// false, lost instances count toward replicas + max_surge until the host
// answers (5 run with max_surge 1, 4 with 0), also for a new leader. An
// instance_replaced event is written for each replacement that started,
// and the instance_lost event says whether one starts, or what it waits
// for; no restart of the budget is spent. When the host answers, its
// records are forgotten, its leftover containers removed, and the app
// runs exactly its replicas.
func TestHostLoss(t *testing.T) {
	t.Parallel()
	tests := []struct {
		surge   int
		replace bool
		running int
	}{{1, true, 6}, {0, true, 6}, {1, false, 5}, {0, false, 4}}
	for _, tt := range tests {
		t.Run(fmt.Sprintf("max_surge %d, replace %t", tt.surge, tt.replace), func(t *testing.T) {
			t.Parallel()
			hosts := &fakeHosts{hosts: []placement.Host{{Name: "h1"}, {Name: "h2"}, {Name: "h3"}}, down: map[string]bool{}, drain: map[string]bool{}}
			f := newFake()
			f.hosts = hosts
			s := strings.Replace(webApp(t, "v1"), "max_surge: 1, max_unavailable: 0", fmt.Sprintf("max_surge: %d, max_unavailable: %d", tt.surge, 1-tt.surge), 1)
			if !tt.replace {
				s += "placement: {on_host_lost: {replace: false}}\n"
			}
			f.apply(load(t, s), 6)
			h := start(t, f, Config{})
			ctx, cancel := context.WithCancel(context.Background())
			var wg sync.WaitGroup
			agents := func(h *harness) {
				wg.Go(func() { h.healthd(ctx, 20*time.Millisecond) })
				wg.Go(func() { h.lbagent(ctx, 20*time.Millisecond) })
			}
			agents(h)
			t.Cleanup(func() { cancel(); wg.Wait() })
			require.Eventually(t, func() bool { return h.converged("web:v1", 6, true) }, 5*time.Second, 10*time.Millisecond)
			require.Equal(t, map[string]int{"h1": 2, "h2": 2, "h3": 2}, byHost(f))

			hosts.set("h3", true, false)
			h.c.Wake()
			require.Eventually(t, func() bool {
				return h.converged("web:v1", tt.running, true) && byHost(f)["h3"] == 0 && len(eventsOf(f, msg.EventInstanceLost)) == 2
			}, 5*time.Second, 10*time.Millisecond, "%v", byHost(f))
			h.cycles(3)
			require.True(t, h.converged("web:v1", tt.running, true), "no more than %d: %v", tt.running, byHost(f))

			replaced := eventsOf(f, msg.EventInstanceReplaced)
			require.Len(t, replaced, tt.running-4, "one instance_replaced for each replacement started")
			for _, e := range replaced {
				require.Equal(t, "host_lost", e.Details["cause"])
				require.Equal(t, "h3", e.Details["host"])
				require.Contains(t, e.Message, "host h3 is down: its engine has not answered for the host timeout; replaced by instance "+e.Details["by"])
			}
			waiting := 0
			for _, e := range eventsOf(f, msg.EventInstanceLost) {
				if strings.Contains(e.Message, "; a replacement starts on host h") {
					continue
				}
				waiting++
				require.Contains(t, e.Message, "; its replacement waits for its host to answer, or to leave the registry: placement.on_host_lost.replace is false")
			}
			require.Equal(t, 6-tt.running, waiting, "each instance not replaced says what it waits for")
			restarts, _ := f.Restarts(context.Background(), time.Time{})
			require.Empty(t, restarts["web"], "a host's loss spends none of the restart budget")
			records, _ := f.snapshot()
			failed := 0
			for _, r := range records {
				if r.State == msg.StateFailed && r.Host == "h3" {
					failed++
				}
			}
			require.Equal(t, 2, failed, "the lost instances stay recorded, failed, while they may still run")

			// A new leader (a controller afresh on the same records) holds
			// the same count.
			h.stop()
			h = start(t, f, Config{})
			agents(h)
			require.Eventually(t, func() bool { return h.converged("web:v1", tt.running, true) }, 5*time.Second, 10*time.Millisecond)
			h.cycles(3)
			require.True(t, h.converged("web:v1", tt.running, true), "the count survives a failover: %v", byHost(f))

			// h3 answers: its records are forgotten, its leftover containers
			// (running: a partition) removed, and exactly 6 run.
			leftovers := containersOn(f, "h3")
			require.Len(t, leftovers, 2)
			hosts.set("h3", false, false)
			h.c.Wake()
			require.Eventually(t, func() bool {
				records, _ := f.snapshot()
				left := 0
				for _, id := range containersOn(f, "h3") {
					if slices.Contains(leftovers, id) {
						left++
					}
				}
				return h.converged("web:v1", 6, true) && left == 0 && len(records) == 6
			}, 5*time.Second, 10*time.Millisecond, "%v", byHost(f))
			h.cycles(3)
			require.True(t, h.converged("web:v1", 6, true), "exactly replicas: %v", byHost(f))
		})
	}
}

// A dead instance whose replacement no host can take is removed with an
// instance_failed event saying what its replacement waits for, never an
// instance_replaced; a placed one is instance_replaced naming its
// successor.
func TestReplacementWithNoHost(t *testing.T) {
	t.Parallel()
	hosts := &fakeHosts{hosts: []placement.Host{{Name: "h1", Labels: map[string]string{"zone": "a"}}, {Name: "h2", Labels: map[string]string{"zone": "b"}}},
		down: map[string]bool{}, drain: map[string]bool{}}
	f := newFake()
	f.hosts = hosts
	f.apply(load(t, webApp(t, "v1")+"placement: {constraints: [zone==a]}\nrestart: {backoff_initial: 10ms}\n"), 1)
	h := start(t, f, Config{})
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() { h.healthd(ctx, 20*time.Millisecond) })
	t.Cleanup(func() { cancel(); wg.Wait() })
	require.Eventually(t, func() bool { return h.converged("web:v1", 1, true) }, 5*time.Second, 10*time.Millisecond)

	// A crash with a host for the successor: replaced, naming it.
	records, _ := f.snapshot()
	f.kill(records[0].ContainerID)
	require.Eventually(t, func() bool { return len(eventsOf(f, msg.EventInstanceReplaced)) == 1 }, 5*time.Second, 10*time.Millisecond)
	ev := eventsOf(f, msg.EventInstanceReplaced)[0]
	// The replaced instance's removal runs beside the loop, after the event.
	var now []store.Instance
	require.Eventually(t, func() bool { now, _ = f.snapshot(); return len(now) == 1 }, 5*time.Second, 10*time.Millisecond,
		"the replaced instance's record is removed")
	require.Equal(t, records[0].ID, ev.Instance)
	require.Equal(t, now[0].ID, ev.Details["by"])
	require.Equal(t, "its container exited with code 0", ev.Details["reason"])
	require.Contains(t, ev.Message, "instance "+records[0].ID+" replaced: its container exited with code 0; replaced by instance "+now[0].ID+" at ")

	// h1 drains: nothing else meets zone==a. The instance would move but
	// cannot; when it dies, its replacement waits for a host.
	require.Eventually(t, func() bool { return h.converged("web:v1", 1, true) }, 5*time.Second, 10*time.Millisecond)
	hosts.set("h1", false, true)
	h.c.Wake()
	require.Eventually(t, func() bool { return len(eventsOf(f, msg.EventUnplaceable)) == 1 }, 5*time.Second, 10*time.Millisecond)
	f.kill(now[0].ContainerID)
	require.Eventually(t, func() bool { return len(eventsOf(f, msg.EventInstanceFailed)) == 1 }, 5*time.Second, 10*time.Millisecond)
	failed := eventsOf(f, msg.EventInstanceFailed)[0]
	require.Equal(t, now[0].ID, failed.Instance)
	require.Contains(t, failed.Message, "instance "+now[0].ID+" failed: its container exited with code 0; its replacement waits for a host: no host of 2 can take it (h1: draining; h2: fails zone==a)")
	h.cycles(3)
	require.Len(t, eventsOf(f, msg.EventInstanceReplaced), 1, "nothing replaced it")
	require.Eventually(t, func() bool { r, _ := f.snapshot(); return len(r) == 0 }, 5*time.Second, 10*time.Millisecond,
		"the failed instance's record is removed, and no successor's appears")
}
