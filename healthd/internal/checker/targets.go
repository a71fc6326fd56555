package checker

import (
	"fmt"
	"net/netip"
	"os"
	"sort"

	"github.com/berthhq/berth/common/msg"
	"github.com/berthhq/berth/common/spec"
	"github.com/berthhq/berth/healthd/internal/probe"
)

// Targets lists what to probe: every instance that is starting or running,
// has an address, and belongs to an app with an enabled health check that
// healthd probes (http or tcp: the scheduler checks docker and exec, as it
// alone holds the Docker API), sorted by key. keep filters by key (a checker's shard); nil keeps all.
// Secret references in each check are resolved from healthd's environment
// (see ResolveSecrets).
func Targets(apps map[string]*msg.App, instances map[string]*msg.Instance, keep func(key string) bool) []Target {
	var out []Target
	for key, inst := range instances {
		if inst.State != msg.StateStarting && inst.State != msg.StateRunning || inst.Address == "" {
			continue
		}
		app, ok := apps[inst.App]
		if !ok || !app.Health.IsEnabled() || app.Health.Scheduled() || keep != nil && !keep(key) {
			continue
		}
		addr, refused := probeAddress(inst.Address, app.Port, app.Health.Port)
		t := Target{Target: probe.Target{Key: key, Address: addr, Refused: refused, Check: ResolveSecrets(app.Name, *app.Health, os.LookupEnv)},
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

// probeAddress is where the health port of an instance is reached, or why
// it is not (refused, and then addr is the instance's own address, which the
// probe does not dial). A probe only ever reaches the instance itself:
//   - a check on the app's port goes to the instance's address;
//   - a check on another port goes to the same host only when the address
//     is the container's own on a Docker network (--network): the
//     scheduler records it as the container's IP and the app's port. An
//     address with another port is a port Docker published on a host
//     address (--publish-address), whose other ports are the host's, not
//     the container's: on 127.0.0.1 they are NATS, the scheduler and
//     healthd's own host. Loopback, unspecified, link-local and multicast
//     hosts, zones and host names are never a container's address either.
func probeAddress(addr string, appPort, healthPort int) (string, string) {
	if healthPort == 0 || healthPort == appPort {
		return addr, ""
	}
	ap, err := netip.ParseAddrPort(addr)
	if err != nil {
		return addr, fmt.Sprintf("health.port %d not probed: instance address %q is not ip:port", healthPort, addr)
	}
	ip := ap.Addr().Unmap()
	if int(ap.Port()) != appPort || ip.Zone() != "" || !ip.IsGlobalUnicast() {
		return addr, fmt.Sprintf("health.port %d not probed: instance address %s is a published host port, not the container's own address; "+
			"set health.port to port (%d), or run the scheduler with --network", healthPort, addr, appPort)
	}
	return netip.AddrPortFrom(ip, uint16(healthPort)).String(), ""
}

// ResolveSecrets returns app's check h with its secrets filled in for
// probing: a header value or body "$env:NAME" (spec.EnvRef) becomes the
// value lookup gives NAME when NAME is one of app's (spec.OwnEnvRef), and a
// header is left out when its variable is unset or another app's, or when
// the scheduler published it as spec.RedactedValue (a literal secret
// healthd is never given). h itself is not changed.
func ResolveSecrets(app string, h spec.Health, lookup func(string) (string, bool)) spec.Health {
	resolve := func(name string) (string, bool) {
		if !spec.OwnEnvRef(app, name) {
			return "", false
		}
		return lookup(name)
	}
	if len(h.Headers) > 0 {
		hs := make(map[string]string, len(h.Headers))
		for k, v := range h.Headers {
			if name, ok := spec.EnvRef(v); ok {
				if v, ok = resolve(name); !ok {
					continue
				}
			} else if v == spec.RedactedValue {
				continue
			}
			hs[k] = v
		}
		h.Headers = hs
	}
	if name, ok := spec.EnvRef(h.Body); ok {
		h.Body, _ = resolve(name)
	} else if h.Body == spec.RedactedValue {
		h.Body = ""
	}
	return h
}
