package reconcile

import (
	"fmt"
	"strings"
)

// lostRecord forgets an instance lost with its host once the host
// answers again (its container is then an orphan, removed or adopted) or
// left the registry, and counts it otherwise: it may still run there.
func (p *appPlan) lostRecord(o Observed, h Host) {
	switch {
	case h.State == HostUp:
		p.add(Action{Kind: Forget, Instance: o.ID, ContainerID: o.ContainerID, Host: o.Host,
			Reason: fmt.Sprintf("host %s answers again: its container, if still there, is an orphan", hostName(o.Host))})
	case h.Gone:
		p.add(Action{Kind: Forget, Instance: o.ID, ContainerID: o.ContainerID, Host: o.Host,
			Reason: fmt.Sprintf("host %s left the registry: what ran there is forgotten", hostName(o.Host))})
	default:
		p.lost++
	}
}

// lose records as lost an instance whose host is down, or that is wrong
// (why: its container died, it stayed unhealthy) on a host that does not
// answer: it may still run there, and nothing there can be touched. wait,
// when set, says why it needs no successor. It reports whether the
// instance was lost.
func (p *appPlan) lose(o Observed, h Host, why, wait string) bool {
	if o.ContainerID == "" || h.State == HostUp || h.State == HostUnknown {
		return false
	}
	var reason string
	switch {
	case h.Gone:
		reason = fmt.Sprintf("host %s left the registry", hostName(o.Host))
	case h.State == HostDown:
		reason = fmt.Sprintf("host %s is down: its engine has not answered for the host timeout", hostName(o.Host))
	case why != "":
		reason = why + fmt.Sprintf(", and host %s does not answer", hostName(o.Host))
	default:
		return false // unreachable, and nothing wrong when last seen: left alone
	}
	p.add(Action{Kind: Lost, Instance: o.ID, ContainerID: o.ContainerID, Host: o.Host, Generation: p.d.Generation, Reason: reason, Wait: wait})
	p.lost++
	if wait == "" {
		p.successors = append(p.successors, len(p.out)-1)
	}
	return true
}

// moving says why an instance of the desired spec must leave its host
// ("" when it may stay): the host drains, or no longer meets the app's
// constraints (they changed, or the host's labels did).
func (p *appPlan) moving(o Observed, h Host) string {
	if o.SpecHash != p.d.SpecHash {
		return ""
	}
	if h.Draining {
		if o.Host == "" {
			return "it moves off the local engine: hosts are registered"
		}
		return fmt.Sprintf("it moves off host %s, which drains", o.Host)
	}
	if !h.Constrained || o.Host == "" {
		return ""
	}
	var failed []string
	for _, c := range p.d.Constraints {
		if !c.Holds(h.Labels) {
			failed = append(failed, c.String())
		}
	}
	if len(failed) == 0 {
		return ""
	}
	return fmt.Sprintf("it moves off host %s, which fails placement.constraints %s", o.Host, strings.Join(failed, ", "))
}

// holdLost says what a lost instance's replacement waits for under
// placement.on_host_lost.replace: false.
func (p *appPlan) holdLost() string {
	return fmt.Sprintf("its replacement waits for its host to answer, or to leave the registry: placement.on_host_lost.replace is false, "+
		"so the %d instance(s) lost with their host count toward replicas + max_surge (%d)", p.lost, p.d.Replicas+p.d.MaxSurge)
}

// hostName names a host in a reason.
func hostName(h string) string {
	if h == "" {
		return "(the local engine)"
	}
	return h
}
