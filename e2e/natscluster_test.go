package e2e

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/berthhq/berth/common/bus"
	"github.com/berthhq/berth/internal/loadgen"
	"github.com/berthhq/berth/internal/testrig"
)

// clusterStep is what one kill of a NATS cluster node did, as the cluster
// test measures and logs it.
type clusterStep struct {
	what, node string
	// ledMeta and ledInstances say whether the node was the JetStream meta
	// leader, and the leader of berth_instances' stream, when it was killed;
	// heldLBAgent whether lbagent was connected to it.
	ledMeta, ledInstances, heldLBAgent bool
	// metaElected and instancesElected are how long after the kill a new
	// leader was agreed on (when the node led); lbMoved how long lbagent
	// took to be connected to another member (when it was on the node).
	metaElected, instancesElected, lbMoved time.Duration
	// scaleOut is from the scale command, right after the kill, to nginx
	// serving every new instance.
	scaleOut time.Duration
	// caughtUp is from the restart to the node's every replica current.
	caughtUp time.Duration
	// served and failed are the requests of the step, from the kill to
	// caught up, over every app.
	served, failed int64
}

func (c clusterStep) String() string {
	led := []string{}
	if c.ledMeta {
		led = append(led, fmt.Sprintf("meta leader (new one in %s)", c.metaElected.Round(10*time.Millisecond)))
	}
	if c.ledInstances {
		led = append(led, fmt.Sprintf("instances stream leader (new one in %s)", c.instancesElected.Round(10*time.Millisecond)))
	}
	if c.heldLBAgent {
		led = append(led, fmt.Sprintf("lbagent's server (lbagent on another in %s)", c.lbMoved.Round(10*time.Millisecond)))
	}
	if len(led) == 0 && c.node != "" {
		led = append(led, "a follower")
	}
	return fmt.Sprintf("%s: killed %s, %s; scale-out served in %s; caught up %s after its restart; %d requests, %d failed",
		c.what, c.node, strings.Join(led, ", "), c.scaleOut.Round(10*time.Millisecond), c.caughtUp.Round(10*time.Millisecond), c.served, c.failed)
}

// clusterElection bounds how long a new leader may take after a kill:
// nats-server's Raft elects within its 4-9 s election timeout.
const clusterElection = 30 * time.Second

// TestNATSCluster runs the stack on a 3-node NATS cluster with every
// bucket replicated 3 times (--nats-replicas 3) under load from a client
// that never retries. It SIGKILLs each node in turn, the JetStream meta
// leader first and then the leader of berth_instances' stream, scales the
// demo app out while the node is down, starts the node again on its store
// and waits until it has caught up; then it kills the node lbagent is
// connected to, the same way. Every request must succeed, each scale-out
// must be started, checked and routed during the outage, and each node
// must be current again afterwards.
func TestNATSCluster(t *testing.T) {
	t.Parallel() // mostly waiting (see TestMain): runs beside the other waiting tests, after the ones that load the machine
	v1 := testrig.DemoImage(t, "v1")
	var cl *testrig.NATSCluster
	s := newStackWith(t, "dynamic", func(s *stack) {
		cl = testrig.StartNATSCluster(t, s.names, lbNode)
		s.nats, s.seeds, s.creds, s.replicas = cl.URL(), cl.Seeds, cl.CredsDir, 3
	})
	s.startScheduler("sched-a")
	s.leader(10 * time.Second)
	s.startHealthd("hc1")
	s.startLBAgent()

	apps := []wipeApp{{"demo", demoHost, 2}, {"shop", "shop.localhost", 2}}
	for _, a := range apps {
		spec := demoSpec(t, v1, a.replicas, "")
		spec = strings.Replace(spec, "name: demo\n", "name: "+a.name+"\n", 1)
		spec = strings.Replace(spec, "hosts: [demo.localhost]", "hosts: ["+a.host+"]", 1)
		s.apply(spec)
	}
	for _, a := range apps {
		s.waitServing(a.name, a.host, a.replicas, "v1", 60*time.Second)
	}

	// Every bucket of the contract has three replicas, all current.
	var streams []string
	for _, b := range bus.ContractBuckets(s.names) {
		streams = append(streams, "KV_"+b.Name)
		replicas := 0
		require.Eventually(t, func() bool {
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			defer cancel()
			kv, err := s.conn.KV(ctx, b.Name)
			if err != nil {
				return false
			}
			st, err := kv.Status(ctx)
			replicas = st.Replicas
			return err == nil && st.Replicas == 3
		}, 30*time.Second, 100*time.Millisecond, "bucket %s: %d replicas, want 3", b.Name, replicas)
	}
	for _, n := range cl.Nodes {
		waitCaughtUp(t, cl, n.Name, streams)
	}
	instances := "KV_" + s.names.InstancesBucket()
	lbConn := "lbagent-" + lbNode

	gens := map[string]*loadgen.Run{}
	for _, a := range apps {
		gens[a.name] = loadgen.Start(context.Background(), loadgen.Config{URL: "http://" + s.httpAddr + "/", Host: a.host, Workers: 2, Rate: 60, NoRetry: s.strict()})
	}
	t.Cleanup(func() {
		for _, g := range gens {
			g.Stop()
		}
	})
	tl := watchFailures(gens, time.Now())
	defer tl.stop()

	demo := apps[0].replicas
	var steps []clusterStep
	killed := map[string]bool{}
	kill := func(what, victim string) {
		t.Helper()
		require.NotEmpty(t, victim, "%s: no node to kill", what)
		demo++
		st := killAndRestart(t, s, cl, gens, what, victim, demo, streams, instances, lbConn)
		t.Log(st)
		steps = append(steps, st)
		killed[victim] = true
	}
	unkilled := func() string {
		for _, n := range cl.Nodes {
			if !killed[n.Name] {
				return n.Name
			}
		}
		return ""
	}

	// The floor: a scale-out with every node up.
	demo++
	floor := killAndRestart(t, s, cl, gens, "0 none killed", "", demo, streams, instances, lbConn)
	t.Log(floor)
	steps = append(steps, floor)

	kill("1 meta leader", cl.MetaLeader())
	// The instances stream's leader is another node now (a leader that is
	// killed is replaced, and one that is not stays), unless a leader
	// moved back meanwhile: then the one left unkilled goes second, and an
	// extra step kills the instances leader.
	if l := cl.StreamLeader(instances); !killed[l] {
		kill("2 instances leader", l)
	} else {
		kill("2 the next node", unkilled())
	}
	if u := unkilled(); u != "" {
		kill("3 the last node", u)
	}
	if !slices.ContainsFunc(steps, func(c clusterStep) bool { return c.ledInstances }) {
		kill("3b instances leader", cl.StreamLeader(instances))
	}
	kill("4 lbagent's server", cl.ConnectedTo(lbConn))
	require.True(t, steps[len(steps)-1].heldLBAgent)

	tl.stop()
	apps[0].replicas = demo
	if missing, extra, err := s.instancesInKV(apps); err != nil || len(missing)+len(extra) > 0 {
		t.Errorf("berth_instances after the kills: missing %v, extra %v (%v)", missing, extra, err)
	}
	for _, a := range apps {
		res := gens[a.name].Stop()
		t.Logf("%s load, whole test: %s", a.name, res)
		if failed := res.Failed() + res.Retried; failed > 0 {
			t.Errorf("%s: %d failed requests over the whole test (%d retried); when: %s", a.name, failed, res.Retried, tl.String(a.name))
		}
	}
	var b strings.Builder
	b.WriteString("| step | node | led | new meta leader | new instances leader | lbagent moved | scale-out served | caught up | requests | failed |\n|---|---|---|---|---|---|---|---|---|---|\n")
	for _, st := range steps {
		led := []string{}
		for _, x := range []struct {
			yes  bool
			name string
		}{{st.ledMeta, "meta"}, {st.ledInstances, "instances"}, {st.heldLBAgent, "lbagent"}} {
			if x.yes {
				led = append(led, x.name)
			}
		}
		or := func(yes bool, d time.Duration) string {
			if !yes {
				return "-"
			}
			return d.Round(10 * time.Millisecond).String()
		}
		fmt.Fprintf(&b, "| %s | %s | %s | %s | %s | %s | %s | %s | %d | %d |\n", st.what, st.node, strings.Join(led, ", "),
			or(st.ledMeta, st.metaElected), or(st.ledInstances, st.instancesElected), or(st.heldLBAgent, st.lbMoved),
			st.scaleOut.Round(10*time.Millisecond), st.caughtUp.Round(10*time.Millisecond), st.served, st.failed)
	}
	t.Logf("NATS cluster steps:\n%s", b.String())
	s.requireNoPermissionErrors()
}

// killAndRestart SIGKILLs node victim (none when ""), scales demo to replicas at once,
// measures the elections and lbagent's move that the kill causes, waits
// until nginx serves every demo instance, then starts the node again and
// waits until it has caught up.
func killAndRestart(t *testing.T, s *stack, cl *testrig.NATSCluster, gens map[string]*loadgen.Run, what, victim string, replicas int,
	streams []string, instances, lbConn string) clusterStep {
	t.Helper()
	st := clusterStep{what: what, node: victim}
	if victim != "" {
		st.ledMeta, st.ledInstances, st.heldLBAgent = cl.MetaLeader() == victim, cl.StreamLeader(instances) == victim, cl.ConnectedTo(lbConn) == victim
	}
	before := total(gens)
	killedAt := time.Now()
	if victim != "" {
		cl.Node(victim).Kill()
	}
	s.cli("scale", "demo", fmt.Sprint(replicas))
	scaled := time.Now()

	// The elections and lbagent's move, polled together until each that
	// the kill called for has happened.
	meta, inst, lb := !st.ledMeta, !st.ledInstances, !st.heldLBAgent
	deadline := killedAt.Add(clusterElection)
	for !(meta && inst && lb) {
		if time.Now().After(deadline) {
			t.Fatalf("%s: within %s of killing %s: new meta leader %t, new instances leader %t, lbagent on another server %t",
				what, clusterElection, victim, meta, inst, lb)
		}
		if l := cl.MetaLeader(); !meta && l != "" && l != victim {
			meta, st.metaElected = true, time.Since(killedAt)
		}
		if l := cl.StreamLeader(instances); !inst && l != "" && l != victim {
			inst, st.instancesElected = true, time.Since(killedAt)
		}
		if n := cl.ConnectedTo(lbConn); !lb && n != "" && n != victim {
			lb, st.lbMoved = true, time.Since(killedAt)
		}
		time.Sleep(50 * time.Millisecond)
	}
	s.waitServing("demo", demoHost, replicas, "v1", 90*time.Second)
	st.scaleOut = time.Since(scaled)

	if victim != "" {
		restarted := time.Now()
		cl.Node(victim).Start()
		waitCaughtUp(t, cl, victim, streams)
		st.caughtUp = time.Since(restarted)
	}
	after := total(gens)
	st.served, st.failed = after.Requests-before.Requests, after.Failed()+after.Retried-before.Failed()-before.Retried
	if st.failed > 0 {
		t.Errorf("%s: %d failed requests from the kill of %s to its catch-up", what, st.failed, victim)
	}
	return st
}

// waitCaughtUp waits until node is a current member of the cluster again,
// with every one of streams current on it.
func waitCaughtUp(t *testing.T, cl *testrig.NATSCluster, node string, streams []string) {
	t.Helper()
	deadline := time.Now().Add(90 * time.Second)
	for {
		err := cl.CaughtUp(node, streams)
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("NATS node %s: not caught up within 90s: %v", node, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// total sums the load generators' results so far.
func total(gens map[string]*loadgen.Run) loadgen.Result {
	var sum loadgen.Result
	for _, g := range gens {
		r := g.Snapshot()
		sum.Requests += r.Requests
		sum.Non2xx += r.Non2xx
		sum.Errors += r.Errors
		sum.Retried += r.Retried
	}
	return sum
}
