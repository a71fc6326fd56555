package e2e

import (
	"fmt"
	"os/exec"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/berthhq/berth/common/msg"
	"github.com/berthhq/berth/internal/loadgen"
	"github.com/berthhq/berth/internal/testrig"
)

// hostTimeout is the scheduler's --host-timeout in TestSeveralHosts: its
// default.
const hostTimeout = 15 * time.Second

// lossApp is one app of TestSeveralHosts's host loss: its spec's
// difference from the demo's, and how many instances it runs while the
// host is down.
type lossApp struct {
	name, extra string
	maxSurge    int
	whileDown   int
}

func (a lossApp) host() string { return a.name + ".localhost" }

// spec is the demo spec under the app's name, on its own host name, with
// its max_surge (max_unavailable 1 beside a max_surge of 0).
func (a lossApp) spec(t *testing.T, img string) string {
	s := demoSpec(t, img, 6, a.extra)
	s = strings.Replace(s, "name: demo\n", "name: "+a.name+"\n", 1)
	s = strings.Replace(s, "hosts: [demo.localhost]", "hosts: ["+a.host()+"]", 1)
	s = strings.Replace(s, "max_surge: 1\n  max_unavailable: 0", fmt.Sprintf("max_surge: %d\n  max_unavailable: %d", a.maxSurge, 1-a.maxSurge), 1)
	require.Contains(t, s, fmt.Sprintf("max_surge: %d", a.maxSurge))
	return s
}

// TestSeveralHosts runs the stack over three extra Docker engines on this
// machine, each a host with its own bridge and loopback address, with
// default flags (but --allow-loopback-hosts) and load through nginx from
// a client that never retries. Three apps of 6 replicas each spread
// 2/2/2: demo (max_surge 1), surge0 (max_surge 0) and strict
// (placement.on_host_lost.replace: false, max_surge 1). One engine is
// SIGKILLed: its instances are out of rotation within a second of the
// host being marked down; demo and surge0 are back to 6 of 6 on the other
// two hosts within --host-timeout + start + health (measured in the same
// run: demo's first 6 instances from apply to serving); strict keeps its
// bound (5 = replicas + max_surge - the 2 lost) and says what it waits
// for. The engine back, its leftover containers are removed and each app
// runs exactly 6. Then a host is drained, and a constraint no host meets
// is reported as unplaceable, disturbing nothing. 0 failed requests
// throughout.
func TestSeveralHosts(t *testing.T) {
	t.Parallel() // mostly waiting (see TestMain): runs beside the other waiting tests, after the ones that load the machine
	img := testrig.DemoImage(t, "v1")
	engines := testrig.StartEngines(t, 3)
	for _, e := range engines {
		require.NoError(t, e.Load(img))
	}
	s := newStackMode(t, "", "dynamic")
	// The engines' hosts are loopback addresses of this machine.
	s.startScheduler("sched-a", "--allow-loopback-hosts", "--host-timeout", hostTimeout.String())
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

	apps := []lossApp{{name: "demo", maxSurge: 1, whileDown: 6}, {name: "surge0", maxSurge: 0, whileDown: 6},
		{name: "strict", extra: "placement: {on_host_lost: {replace: false}}\n", maxSurge: 1, whileDown: 5}}
	// byHost counts an app's running and healthy instances by host.
	byHost := func(app string) (map[string]int, map[string]string) {
		count, where := map[string]int{}, map[string]string{}
		for _, in := range s.instances(app) {
			if in.State == msg.StateRunning && in.Health == msg.StatusHealthy {
				count[in.Host]++
				where[in.ID] = in.Host
			}
		}
		return count, where
	}
	// servingNow reports whether app runs n healthy instances that want
	// accepts, and nginx serves exactly those.
	servingNow := func(a lossApp, n int, want func(map[string]int) bool) (bool, map[string]string) {
		count, where := byHost(a.name)
		if len(where) != n || !want(count) {
			return false, where
		}
		got, _, failures, _ := s.served(a.host(), n)
		ids := map[string]bool{}
		for id := range where {
			ids[id] = true
		}
		return failures == 0 && equalSets(got, ids), where
	}
	serving := func(a lossApp, n int, what string, want func(map[string]int) bool) map[string]string {
		t.Helper()
		var where map[string]string
		require.Eventually(t, func() bool {
			var ok bool
			ok, where = servingNow(a, n, want)
			return ok
		}, 90*time.Second, 200*time.Millisecond, "%s %s: %v", a.name, what, func() any { c, _ := byHost(a.name); return c }())
		return where
	}
	spread := func(c map[string]int) bool { return c["h1"] == 2 && c["h2"] == 2 && c["h3"] == 2 }

	// The floor, start + health: demo's 6 instances, from apply to served
	// by nginx, in this run.
	applied := time.Now()
	s.apply(apps[0].spec(t, img))
	var placed map[string]string
	require.Eventually(t, func() bool {
		var ok bool
		ok, placed = servingNow(apps[0], 6, spread)
		return ok
	}, 90*time.Second, 50*time.Millisecond, "demo spread 2/2/2")
	floor := time.Since(applied)
	t.Logf("start + health (demo's 6 instances, apply to serving): %s", floor.Round(time.Millisecond))
	where := map[string]map[string]string{"demo": placed}
	for _, a := range apps[1:] {
		s.apply(a.spec(t, img))
	}
	for _, a := range apps[1:] {
		where[a.name] = serving(a, 6, "spread 2/2/2", spread)
	}

	loads := map[string]*loadgen.Run{}
	for _, a := range apps {
		loads[a.name] = s.load(a.host())
	}
	engines[2].Kill()
	killed := time.Now()
	lost := map[string]bool{}
	for _, a := range apps {
		for id, h := range where[a.name] {
			if h == "h3" {
				lost[id] = true
			}
		}
	}
	require.Len(t, lost, 6)
	// From the kill on, a sampler asks nginx which instances answer: the
	// last time a lost one did is when h3's instances left rotation,
	// whatever else the test waits on meanwhile.
	var (
		sampleMu            sync.Mutex
		lastLost, sampledAt time.Time // the end of the last sample that saw one; the start of the last sample
	)
	stopSampling := make(chan struct{})
	var sampling sync.WaitGroup
	sampling.Go(func() {
		for {
			select {
			case <-stopSampling:
				return
			default:
			}
			start, seen := time.Now(), false
			for _, a := range apps {
				got, _, _, _ := s.served(a.host(), 6)
				for id := range got {
					seen = seen || lost[id]
				}
			}
			sampleMu.Lock()
			if seen {
				lastLost = time.Now()
			}
			sampledAt = start
			sampleMu.Unlock()
		}
	})
	defer func() { close(stopSampling); sampling.Wait() }()
	// Every app back at its count on h1 and h2: 6 for demo and surge0
	// (every lost instance replaced), 5 for strict (its bound), each timed
	// from the kill; and h3 marked down after --host-timeout. healthd
	// fails h3's instances first: one unhealthy beyond its grace on a host
	// that does not answer is lost then, before the mark.
	hostDown := func() (time.Time, bool) {
		var hs []struct {
			Name    string    `json:"name"`
			State   string    `json:"state"`
			StateAt time.Time `json:"state_at"`
		}
		if err := getJSON(s.api()+"/v1/hosts", &hs); err != nil {
			return time.Time{}, false
		}
		for _, h := range hs {
			if h.Name == "h3" && h.State == "down" {
				return h.StateAt, true
			}
		}
		return time.Time{}, false
	}
	var downAt time.Time
	back := map[string]time.Duration{}
	require.Eventually(t, func() bool {
		for _, a := range apps {
			if _, ok := back[a.name]; ok {
				continue
			}
			if ok, _ := servingNow(a, a.whileDown, func(c map[string]int) bool { return c["h3"] == 0 }); ok {
				back[a.name] = time.Since(killed)
			}
		}
		if downAt.IsZero() {
			downAt, _ = hostDown()
		}
		return len(back) == len(apps) && !downAt.IsZero()
	}, 90*time.Second, 50*time.Millisecond, "back at their counts: %v", back)
	// Its instances are out of every nginx by the mark, or within a second:
	// once a sample begun after the mark saw none, the last that saw one
	// says when they left.
	var outAt time.Time
	require.Eventually(t, func() bool {
		sampleMu.Lock()
		defer sampleMu.Unlock()
		outAt = lastLost
		return sampledAt.After(downAt) && lastLost.Before(sampledAt)
	}, 10*time.Second, 20*time.Millisecond)
	if outAt.IsZero() {
		outAt = killed // no sample saw one after the kill
	}
	markedAfter := downAt.Sub(killed)
	t.Logf("h3 killed; marked down %s later (--host-timeout %s); its instances out of rotation %s after that (negative: before it, by their failing health checks)",
		markedAfter.Round(time.Millisecond), hostTimeout, outAt.Sub(downAt).Round(time.Millisecond))
	require.Less(t, outAt.Sub(downAt), time.Second, "out of rotation within 1 s of the host being marked down")
	bound := hostTimeout + floor
	for _, a := range apps {
		t.Logf("%s (max_surge %d, on_host_lost.replace %t): %d of 6 serving %s after h3 was killed, %s after it was marked down; --host-timeout + start + health = %s (ratio %.2f)",
			a.name, a.maxSurge, a.extra == "", a.whileDown, back[a.name].Round(time.Millisecond), (back[a.name] - markedAfter).Round(time.Millisecond),
			bound.Round(time.Millisecond), float64(back[a.name])/float64(bound))
		// The probe's second, and one start + health more than the floor,
		// is the slack of a loaded machine.
		require.Less(t, back[a.name], bound+floor+time.Second, "%s back at its count within --host-timeout + start + health", a.name)
	}
	// What each app says: a replacement named for each lost instance, or
	// what it waits for; status claims no more than runs.
	for _, a := range apps {
		var replaced, waiting int
		for _, e := range s.events(a.name) {
			switch {
			case e.Kind == msg.EventInstanceReplaced:
				require.Equal(t, "host_lost", e.Details["cause"], "%s: %s", a.name, e.Message)
				require.Equal(t, "h3", e.Details["host"], "%s: %s", a.name, e.Message)
				t.Logf("%s: %s", a.name, e.Message)
				replaced++
			case e.Kind == "instance_lost" && strings.Contains(e.Message, "waits for its host to answer"):
				require.Contains(t, e.Message, "placement.on_host_lost.replace is false")
				waiting++
			}
		}
		require.Equal(t, a.whileDown-4, replaced, "%s: one instance_replaced for each replacement that started", a.name)
		require.Equal(t, 6-a.whileDown, waiting, "%s: each lost instance not replaced says what it waits for", a.name)
		status := s.cli("status", a.name)
		t.Logf("status while h3 is down: %s", strings.SplitN(status, "\n", 2)[0])
		require.Contains(t, status, fmt.Sprintf("%s: generation 1, %d of 6 replicas running (2 lost with their host", a.name, a.whileDown))
	}

	// h3 back: its leftover containers are removed as orphans, and each
	// app runs exactly 6, strict's sixth started now.
	require.NoError(t, engines[2].Start())
	require.Eventually(t, func() bool {
		out, err := exec.Command("docker", "-H", engines[2].URL(), "ps", "-a", "--filter", "label=berth.prefix="+s.prefix,
			"--format", `{{.Label "berth.instance"}}`).Output()
		if err != nil {
			return false
		}
		for _, id := range strings.Fields(string(out)) {
			if lost[id] {
				return false
			}
		}
		return true
	}, 90*time.Second, 500*time.Millisecond, "h3's leftover containers removed")
	for _, a := range apps {
		serving(a, 6, "exactly 6 once h3 answers", func(map[string]int) bool { return true })
		require.Len(t, containersOn(t, engines, s.prefix, a.name), 6, "%s: no container beyond its 6", a.name)
		require.Len(t, s.instances(a.name), 6, "%s: no record beyond its 6", a.name)
	}
	for _, a := range apps[1:] {
		res := loads[a.name].Stop()
		t.Logf("%s: load through the host loss and the orphans' removal: %s", a.name, res)
		require.NoError(t, loadgen.Check(res), "%s: no request failed", a.name)
		s.cli("rm", a.name)
	}

	// Drain h1 under load.
	s.cli("hosts", "drain", "h1")
	serving(apps[0], 6, "h1 drained", func(c map[string]int) bool { return c["h1"] == 0 })
	res := loads["demo"].Stop()
	t.Logf("demo: load through the host loss, the orphans' removal and the drain: %s", res)
	require.NoError(t, loadgen.Check(res), "no request failed")

	// A constraint no host meets: unplaceable, and demo undisturbed.
	pinned := strings.Replace(demoSpec(t, img, 2, "placement: {constraints: [zone==nowhere]}\n"), "name: demo\n", "name: pinned\n", 1)
	pinned = strings.Replace(pinned, "hosts: [demo.localhost]", "hosts: [pinned.localhost]", 1)
	s.apply(pinned)
	var reason string
	require.Eventually(t, func() bool {
		for _, e := range s.events("pinned") {
			if e.Kind == msg.EventUnplaceable {
				reason = e.Message
				return true
			}
		}
		return false
	}, 30*time.Second, 200*time.Millisecond)
	t.Logf("unplaceable: %s", reason)
	require.Contains(t, reason, "fails zone==nowhere")
	c, _ := byHost("demo")
	require.Equal(t, 6, c["h2"]+c["h3"], fmt.Sprintf("demo undisturbed: %v", c))
}

// containersOn lists the containers of an app of the stack's prefix on
// every test engine, running or not.
func containersOn(t *testing.T, engines []*testrig.Engine, prefix, app string) []string {
	t.Helper()
	var out []string
	for _, e := range engines {
		b, err := exec.Command("docker", "-H", e.URL(), "ps", "-aq", "--filter", "label=berth.prefix="+prefix, "--filter", "label=berth.app="+app).Output()
		require.NoError(t, err, "docker ps on %s", e.Name)
		out = slices.Concat(out, strings.Fields(string(b)))
	}
	return out
}
