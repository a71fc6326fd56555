package e2e

import (
	"fmt"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/berthhq/berth/common/msg"
	"github.com/berthhq/berth/internal/loadgen"
	"github.com/berthhq/berth/internal/testrig"
)

// TestSeveralHosts runs the stack over three extra Docker engines on this
// machine, each a host with its own bridge and loopback address, with
// default flags (but --allow-loopback-hosts) and load through nginx from
// a client that never retries: 6 replicas spread 2/2/2; one engine
// SIGKILLed, its instances out of rotation within a second of the host
// being marked down and replaced on the other two; the engine back, its
// leftover containers removed; a host drained; a constraint no host meets
// reported as unplaceable, disturbing nothing. 0 failed requests
// throughout.
func TestSeveralHosts(t *testing.T) {
	img := testrig.DemoImage(t, "v1")
	engines := testrig.StartEngines(t, 3)
	for _, e := range engines {
		require.NoError(t, e.Load(img))
	}
	s := newStackMode(t, "", "dynamic")
	// The engines' hosts are loopback addresses of this machine.
	s.startScheduler("sched-a", "--allow-loopback-hosts")
	s.leader(10 * time.Second)
	s.startHealthd("hc1")
	s.startLBAgent()
	zones := []string{"a", "a", "b"}
	for i, e := range engines {
		s.cli("hosts", "add", e.Name, "--docker-url", e.URL(), "--address", e.Address, "--label", "zone="+zones[i])
	}
	require.Eventually(t, func() bool {
		out := s.cli("hosts", "ls")
		return strings.Count(out, " up ") == 3
	}, 30*time.Second, 200*time.Millisecond, "every host up")

	// max_surge 2: when a host of 2 of the 6 is lost, those may still run
	// (a partition), and count toward replicas + max_surge until the host
	// answers; with 2 of surge both are replaced at once.
	spec := strings.Replace(demoSpec(t, img, 6, ""), "max_surge: 1", "max_surge: 2", 1)
	require.Contains(t, spec, "max_surge: 2")
	s.apply(spec)
	byHost := func() (map[string]int, map[string]string) {
		count, where := map[string]int{}, map[string]string{}
		for _, in := range s.instances("demo") {
			if in.State == msg.StateRunning && in.Health == msg.StatusHealthy {
				count[in.Host]++
				where[in.ID] = in.Host
			}
		}
		return count, where
	}
	// serving waits until the instances match want, and nginx serves
	// exactly the healthy ones.
	serving := func(what string, want func(map[string]int) bool) map[string]string {
		t.Helper()
		var where map[string]string
		require.Eventually(t, func() bool {
			var count map[string]int
			count, where = byHost()
			if len(where) != 6 || !want(count) {
				return false
			}
			got, _, failures, _ := s.served(demoHost, 6)
			ids := map[string]bool{}
			for id := range where {
				ids[id] = true
			}
			return failures == 0 && equalSets(got, ids)
		}, 90*time.Second, 200*time.Millisecond, "%s: %v", what, func() any { c, _ := byHost(); return c }())
		return where
	}
	where := serving("spread 2/2/2", func(c map[string]int) bool { return c["h1"] == 2 && c["h2"] == 2 && c["h3"] == 2 })
	t.Logf("placed: %v", where)

	load := s.load(demoHost)
	engines[2].Kill()
	killed := time.Now()
	lost := map[string]bool{}
	for id, h := range where {
		if h == "h3" {
			lost[id] = true
		}
	}
	// The host is marked down after --host-timeout (15 s): its instances
	// must be out of every nginx by then, or within a second of it.
	var downAt time.Time
	require.Eventually(t, func() bool {
		var hs []struct {
			Name    string    `json:"name"`
			State   string    `json:"state"`
			StateAt time.Time `json:"state_at"`
		}
		if err := getJSON(s.api()+"/v1/hosts", &hs); err != nil {
			return false
		}
		for _, h := range hs {
			if h.Name == "h3" && h.State == "down" {
				downAt = h.StateAt
				return true
			}
		}
		return false
	}, 60*time.Second, 100*time.Millisecond, "h3 marked down")
	var outAt time.Time
	require.Eventually(t, func() bool {
		got, _, _, _ := s.served(demoHost, 6)
		for id := range got {
			if lost[id] {
				return false
			}
		}
		outAt = time.Now()
		return true
	}, 10*time.Second, 20*time.Millisecond)
	t.Logf("h3 killed; marked down %s later (--host-timeout 15s); its instances out of rotation %s after that (negative: before it, by their failing health checks)",
		downAt.Sub(killed).Round(time.Millisecond), outAt.Sub(downAt).Round(time.Millisecond))
	require.Less(t, outAt.Sub(downAt), time.Second, "out of rotation within 1 s of the host being marked down")
	serving("replaced on h1 and h2", func(c map[string]int) bool { return c["h3"] == 0 && c["h1"]+c["h2"] == 6 })

	// h3 back: its leftover containers are removed as orphans.
	require.NoError(t, engines[2].Start())
	require.Eventually(t, func() bool {
		out, err := exec.Command("docker", "-H", engines[2].URL(), "ps", "-aq", "--filter", "label=berth.prefix="+s.prefix).Output()
		return err == nil && strings.TrimSpace(string(out)) == ""
	}, 90*time.Second, 500*time.Millisecond, "h3's orphans removed")

	// Drain h1 under load.
	s.cli("hosts", "drain", "h1")
	serving("h1 drained", func(c map[string]int) bool { return c["h1"] == 0 })
	res := load.Stop()
	t.Logf("load through the host loss, the orphans' removal and the drain: %s", res)
	require.NoError(t, loadgen.Check(res), "no request failed")

	// A constraint no host meets: unplaceable, and demo undisturbed.
	pinned := strings.Replace(demoSpec(t, img, 2, "placement: {constraints: [zone==nowhere]}\n"), "name: demo\n", "name: pinned\n", 1)
	pinned = strings.Replace(pinned, "hosts: [demo.localhost]", "hosts: [pinned.localhost]", 1)
	s.apply(pinned)
	var reason string
	require.Eventually(t, func() bool {
		for _, e := range s.events("pinned") {
			if e.Kind == "unplaceable" {
				reason = e.Message
				return true
			}
		}
		return false
	}, 30*time.Second, 200*time.Millisecond)
	t.Logf("unplaceable: %s", reason)
	require.Contains(t, reason, "fails zone==nowhere")
	c, _ := byHost()
	require.Equal(t, 6, c["h2"]+c["h3"], fmt.Sprintf("demo undisturbed: %v", c))
}
