package checker

import (
	"net"
	"sort"
	"strconv"

	"github.com/berthhq/berth/common/msg"
	"github.com/berthhq/berth/healthd/internal/probe"
)

// Targets lists what to probe: every instance that is starting or running,
// has an address, and belongs to an app with an enabled health check,
// sorted by key. keep filters by key (a checker's shard); nil keeps all.
func Targets(apps map[string]*msg.App, instances map[string]*msg.Instance, keep func(key string) bool) []Target {
	var out []Target
	for key, inst := range instances {
		if inst.State != msg.StateStarting && inst.State != msg.StateRunning || inst.Address == "" {
			continue
		}
		app, ok := apps[inst.App]
		if !ok || !app.Health.IsEnabled() || keep != nil && !keep(key) {
			continue
		}
		t := Target{Target: probe.Target{Key: key, Address: probeAddress(inst.Address, app.Port, app.Health.Port), Check: *app.Health},
			Generation: inst.Generation, Term: inst.Term}
		switch {
		case inst.StartedAt != nil:
			t.NotBefore = inst.StartedAt.Add(app.Health.InitialDelay.Std())
		case app.Health.InitialDelay > 0:
			t.NotBefore = inst.UpdatedAt.Add(app.Health.InitialDelay.Std())
		}
		out = append(out, t)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Key < out[j].Key })
	return out
}

// probeAddress is where the health port of an instance is reached: its
// address when the check uses the app's port, else the same host on the
// health port (a container address on a Docker network).
func probeAddress(addr string, appPort, healthPort int) string {
	if healthPort == 0 || healthPort == appPort {
		return addr
	}
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return addr
	}
	return net.JoinHostPort(host, strconv.Itoa(healthPort))
}
