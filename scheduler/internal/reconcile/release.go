package reconcile

import "fmt"

// released gates the first start of a version of an app that has a
// release task, as Heroku's release phase does: no instance of a spec
// whose release has not succeeded starts, and no old one drains. The
// first plan runs the release (RunRelease); while it runs, the app holds;
// once it failed, the rollout fails as any failed rollout does (a RollBack
// to the generation that serves with auto_rollback, else a FailRollout),
// and the instances of the version before keep serving. A release that
// succeeded for the spec at any generation (a restart's, an earlier
// apply's of the same spec), or for this generation, releases it; so does
// an instance of the spec that already runs (the release block was added
// to a running app). It reports whether planning goes on.
func (p *appPlan) released() bool {
	if !p.d.Release || p.d.Replicas == 0 {
		return true
	}
	if len(p.current) > 0 {
		return true // runs already
	}
	target := int64(0)
	for _, o := range p.old {
		if o.SpecHash == p.d.SpecHash {
			return true // runs already, moving off its host
		}
		target = max(target, o.Generation)
	}
	var this, other *Release
	for i := range p.releases {
		r := &p.releases[i]
		if r.State == ReleaseSucceeded && (r.SpecHash == p.d.ReleaseHash || r.Generation == p.d.Generation) {
			return true
		}
		if r.Generation == p.d.Generation {
			this = r
		}
		if r.State == ReleaseRunning && r.Generation != p.d.Generation {
			other = r
		}
	}
	gen := p.d.Generation
	switch {
	case this == nil && other != nil:
		// An app runs one release task at a time: one of an earlier
		// generation (this version's, before a restart; or the version
		// before, applied over while it ran) ends first, and two
		// migrations never run side by side. It released this version if
		// it was this version's and succeeds.
		p.add(Action{Kind: Hold, Generation: gen, Host: other.Host,
			Reason: fmt.Sprintf("the release task of generation %d runs%s: an app runs one release task at a time", other.Generation, onHost(other.Host))})
		p.hold("an earlier release task runs")
	case this == nil:
		p.add(Action{Kind: RunRelease, Generation: gen, Reason: fmt.Sprintf("generation %d's release task runs before its first instance starts", gen)})
		p.hold("the release task runs first")
	case this.State == ReleaseRunning:
		p.add(Action{Kind: Hold, Generation: gen, Host: this.Host,
			Reason: fmt.Sprintf("generation %d's release task runs%s: its instances start once it exits 0", gen, onHost(this.Host))})
		p.hold("the release task runs first")
	case this.State == ReleaseFailed && p.in.FailedRollouts[p.d.App] == (Rollout{Generation: gen, SpecHash: p.d.SpecHash}):
		p.add(Action{Kind: Hold, Generation: gen,
			Reason: fmt.Sprintf("the rollout of generation %d failed (%s): no instance of it starts until another spec is applied, or scheduler rollback", gen, this.Reason)})
		p.hold("the rollout failed")
	default:
		why := fmt.Sprintf("generation %d failed: %s", gen, this.Reason)
		if p.d.AutoRollback && target > 0 {
			p.add(Action{Kind: RollBack, Generation: gen, Target: target, Reason: why})
		} else {
			p.add(Action{Kind: FailRollout, Generation: gen, Reason: why})
		}
		p.hold("the rollout failed")
	}
	return false
}

// releases adopts every running release no one here waits on: an earlier
// leader began it. Its container, found by its record or by its labels on
// its host, is waited on (AdoptRelease); a host that answers without it,
// or that is down or gone, lost it (LoseRelease): it is never started
// again. A host not listed yet, or not answering, is waited for.
func (r *Result) releases(in *Input) {
	for _, rel := range in.Releases {
		if rel.State != ReleaseRunning || rel.Watched {
			continue
		}
		h := in.host(rel.Host)
		found := ""
		for _, o := range in.Orphans {
			if o.Release && o.App == rel.App && o.Generation == rel.Generation && o.Host == rel.Host && (rel.ContainerID == "" || o.ContainerID == rel.ContainerID) {
				found = o.ContainerID
			}
		}
		switch {
		case h.State == HostUp && found != "":
			r.Actions = append(r.Actions, Action{Kind: AdoptRelease, App: rel.App, Generation: rel.Generation, Host: rel.Host, ContainerID: found,
				Reason: "a release container an earlier leader started"})
		case h.State == HostUp || h.State == HostDown || h.Gone:
			why := "release container lost: its host answers without it"
			if h.State != HostUp {
				why = "release container lost: its host is down"
			}
			r.Actions = append(r.Actions, Action{Kind: LoseRelease, App: rel.App, Generation: rel.Generation, Host: rel.Host, ContainerID: rel.ContainerID, Reason: why})
		}
	}
}

// onHost names a registered host in a reason ("" for the local engine).
func onHost(host string) string {
	if host == "" {
		return ""
	}
	return " on host " + host
}
