package e2e

import (
	"context"
	"fmt"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/berthhq/berth/common/lifecycle"
	"github.com/berthhq/berth/common/msg"
	"github.com/berthhq/berth/internal/loadgen"
	"github.com/berthhq/berth/internal/testrig"
)

// instancesRepublishedWithin is how soon after NATS is back berth_instances
// must hold every running instance again.
const instancesRepublishedWithin = 5 * time.Second

// wipeApp is one app of the NATS wipe test.
type wipeApp struct {
	name, host string
	replicas   int
}

// TestNATSWipe runs the stack against an external nats-server, kills it
// under load and starts it again on the same port with a new, empty
// JetStream store: every bucket is gone. nginx must keep serving every app
// with no failed request (a request net/http retried on a closed keep-alive
// counts as failed here) up to twice lbagent's empty-hold after the restart
// and beyond; berth_instances must hold every running instance again within
// a few seconds of the restart; and the watchers must have recovered: a
// scale-out after the wipe is started, health-checked and routed.
func TestNATSWipe(t *testing.T) {
	v1 := testrig.DemoImage(t, "v1")
	ns := testrig.StartNATSProcess(t)
	s := newStackOn(t, ns.URL())
	t.Cleanup(func() {
		if t.Failed() {
			out := strings.Split(strings.TrimSpace(ns.Output()), "\n")
			t.Logf("--- last lines of nats-server ---\n%s", strings.Join(out[max(0, len(out)-30):], "\n"))
		}
	})
	s.startScheduler("sched-a")
	s.leader(10 * time.Second)
	s.startHealthd("hc1")
	s.startLBAgent()

	apps := []wipeApp{{"demo", demoHost, 3}, {"shop", "shop.localhost", 2}}
	for _, a := range apps {
		spec := demoSpec(t, v1, a.replicas, "")
		spec = strings.Replace(spec, "name: demo\n", "name: "+a.name+"\n", 1)
		spec = strings.Replace(spec, "hosts: [demo.localhost]", "hosts: ["+a.host+"]", 1)
		require.Contains(t, spec, "name: "+a.name+"\n")
		require.Contains(t, spec, "hosts: ["+a.host+"]")
		s.apply(spec)
	}
	for _, a := range apps {
		s.waitServing(a.name, a.host, a.replicas, "v1", 60*time.Second)
	}
	missing, extra, err := s.instancesInKV(apps)
	require.NoError(t, err)
	require.True(t, len(missing)+len(extra) == 0, "berth_instances before the wipe: missing %v, extra %v", missing, extra)

	// Load on every app, and a record of when failures happened.
	gens := map[string]*loadgen.Run{}
	for _, a := range apps {
		gens[a.name] = loadgen.Start(context.Background(), loadgen.Config{URL: "http://" + s.httpAddr + "/", Host: a.host, Workers: 2, Rate: 60, NoRetry: s.strict()})
	}
	t.Cleanup(func() {
		for _, g := range gens {
			g.Stop()
		}
	})
	time.Sleep(2 * time.Second)

	killed := time.Now()
	tl := watchFailures(gens, killed)
	defer tl.stop()
	ns.Kill()
	ns.Restart(t.TempDir())
	back := time.Now()
	t.Logf("nats-server killed and back with an empty store after %s", back.Sub(killed).Round(time.Millisecond))

	// berth_instances holds every running instance again, within a few seconds.
	var last string
	republished := time.Duration(-1)
	for time.Since(back) < 30*time.Second {
		missing, extra, err := s.instancesInKV(apps)
		switch {
		case err != nil:
			last = err.Error()
		case len(missing)+len(extra) == 0:
			republished = time.Since(back)
		default:
			last = fmt.Sprintf("missing %v, extra %v", missing, extra)
		}
		if republished >= 0 {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	switch {
	case republished < 0:
		t.Errorf("berth_instances: not every running instance within 30s of the restart (want %s): %s", instancesRepublishedWithin, last)
	case republished > instancesRepublishedWithin:
		t.Errorf("berth_instances: every running instance after %s, want within %s", republished.Round(time.Millisecond), instancesRepublishedWithin)
	default:
		t.Logf("berth_instances: every running instance %s after the restart", republished.Round(time.Millisecond))
	}

	// Served with no failure past twice the empty-hold.
	time.Sleep(time.Until(back.Add(2*lbEmptyHold + 2*time.Second)))
	s.logBuckets(apps)
	// lbagent's record is back, in the agents bucket the scheduler manages
	// (an lbagent with a node key of its own cannot create it).
	agents, err := s.conn.KV(context.Background(), s.names.AgentsBucket())
	if err == nil {
		_, err = agents.Get(context.Background(), lbNode)
	}
	if err != nil {
		t.Errorf("lbagent's record in the agents bucket, twice the empty-hold after the restart: %v", err)
	}
	for _, a := range apps {
		got := gens[a.name].Snapshot()
		failed := got.Failed() + got.Retried
		t.Logf("%s so far: %s", a.name, got)
		if failed > 0 {
			t.Errorf("%s: %d failed requests (%d non-2xx, %d errors, %d retried on a closed keep-alive) in the %s from the kill to twice the empty-hold after the restart; when: %s",
				a.name, failed, got.Non2xx, got.Errors, got.Retried, time.Since(killed).Round(time.Second), tl.String(a.name))
		}
	}
	for _, a := range apps {
		ins, versions, failures, sample := s.served(a.host, a.replicas)
		if failures > 0 || len(ins) != a.replicas || !versions["v1"] {
			t.Errorf("%s: nginx serves %d instances %v after the wipe, want %d; %d failures (%s)", a.name, len(ins), keys(ins), a.replicas, failures, sample)
		}
	}

	// The watchers recovered: a scale-out after the wipe is started
	// (scheduler), checked (healthd) and routed (lbagent).
	s.cli("scale", "demo", "4")
	apps[0].replicas = 4
	s.waitServing("demo", demoHost, 4, "v1", 60*time.Second)
	if missing, extra, err := s.instancesInKV(apps); err != nil || len(missing)+len(extra) > 0 {
		t.Errorf("berth_instances after the scale-out: missing %v, extra %v (%v)", missing, extra, err)
	}

	tl.stop()
	for _, a := range apps {
		res := gens[a.name].Stop()
		t.Logf("%s load, whole test: %s", a.name, res)
		if failed := res.Failed() + res.Retried; failed > 0 {
			t.Errorf("%s: %d failed requests over the whole test (%d retried); when: %s", a.name, failed, res.Retried, tl.String(a.name))
		}
	}
}

// instancesInKV compares berth_instances, read through NATS, with the
// instances the scheduler says are running, for the apps given; it returns
// the keys (<app>.<instance>) missing from the bucket and those it holds
// for no running instance.
func (s *stack) instancesInKV(apps []wipeApp) (missing, extra []string, err error) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	want := map[string]bool{}
	for _, a := range apps {
		for _, in := range s.instances(a.name) {
			if in.State == msg.StateRunning {
				want[a.name+"."+in.ID] = true
			}
		}
	}
	kv, err := s.conn.KV(ctx, s.names.InstancesBucket())
	if err != nil {
		return nil, nil, fmt.Errorf("open %s: %w", s.names.InstancesBucket(), err)
	}
	got, err := kv.Keys(ctx)
	if err != nil {
		return nil, nil, err
	}
	have := map[string]bool{}
	for _, k := range got {
		have[k] = true
		if !want[k] {
			extra = append(extra, k)
		}
	}
	for k := range want {
		if !have[k] {
			missing = append(missing, k)
		}
	}
	sort.Strings(missing)
	sort.Strings(extra)
	return missing, extra, nil
}

// logBuckets logs the keys of every contract bucket, for the record of
// what came back after the wipe.
func (s *stack) logBuckets(apps []wipeApp) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	for _, b := range []string{s.names.AppsBucket(), s.names.InstancesBucket(), s.names.HealthBucket(), s.names.AgentsBucket(), s.names.CheckersBucket()} {
		kv, err := s.conn.KV(ctx, b)
		if err != nil {
			s.t.Logf("bucket %s: %v", b, err)
			continue
		}
		k, err := kv.Keys(ctx)
		sort.Strings(k)
		s.t.Logf("bucket %s: %d keys %v (%v)", b, len(k), k, err)
	}
}

// failureTimeline samples the load generators and records, for each, when
// its failures (including net/http's retries) grew, relative to t0.
type failureTimeline struct {
	mu     sync.Mutex
	lines  map[string][]string
	cancel context.CancelFunc
	done   chan struct{}
}

func watchFailures(gens map[string]*loadgen.Run, t0 time.Time) *failureTimeline {
	ctx, cancel := context.WithCancel(context.Background())
	tl := &failureTimeline{lines: map[string][]string{}, cancel: cancel, done: make(chan struct{})}
	prev := map[string]int64{}
	for name, g := range gens {
		r := g.Snapshot()
		prev[name] = r.Failed() + r.Retried
	}
	go func() {
		defer close(tl.done)
		lifecycle.Every(ctx, 100*time.Millisecond, func() {
			for name, g := range gens {
				r := g.Snapshot()
				if n := r.Failed() + r.Retried; n != prev[name] {
					tl.mu.Lock()
					tl.lines[name] = append(tl.lines[name], fmt.Sprintf("+%d by %s after the kill (non-2xx %d, errors %d, retried %d)",
						n-prev[name], time.Since(t0).Round(100*time.Millisecond), r.Non2xx, r.Errors, r.Retried))
					tl.mu.Unlock()
					prev[name] = n
				}
			}
		})
	}()
	return tl
}

func (tl *failureTimeline) stop() {
	tl.cancel()
	<-tl.done
}

func (tl *failureTimeline) String(name string) string {
	tl.mu.Lock()
	defer tl.mu.Unlock()
	if len(tl.lines[name]) == 0 {
		return "none after the kill"
	}
	return strings.Join(tl.lines[name], "; ")
}
