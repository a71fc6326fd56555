// Package plan decides, as a pure function, what an apply of a spec would
// do to a running app: the instances a rolling update replaces, a scale,
// a change nginx alone takes (routes and balancing, pushed or reloaded by
// lbagent), a new certificate, instances no host can take. It is what
// `scheduler apply --dry-run` and POST /v1/apps/{name}/plan show; it
// changes nothing.
package plan

import (
	"fmt"
	"slices"
	"strings"

	"github.com/berthhq/berth/common/spec"
	"github.com/berthhq/berth/scheduler/internal/change"
)

// Kinds of Action.
const (
	// KindNoChange: the spec is the current one; nothing happens.
	KindNoChange = "no_change"
	// KindCreate: a new app's instances start.
	KindCreate = "create"
	// KindReplace: instances are replaced by a rolling update.
	KindReplace = "replace"
	// KindScale: the replica count changes.
	KindScale = "scale"
	// KindRouting: nginx's routes or balancing change (lbagent pushes
	// or reloads); no instance is replaced by it.
	KindRouting = "routing"
	// KindHealth: healthd probes with the new check; no instance is
	// replaced by it.
	KindHealth = "health"
	// KindSettings: settings the scheduler reads as it goes (update,
	// restart, stop timings, scaling, placement) change; no instance is
	// replaced by them.
	KindSettings = "settings"
	// KindCertificate: a certificate is ordered for a host (ACME).
	KindCertificate = "certificate"
	// KindUnplaceable: instances no host can take.
	KindUnplaceable = "unplaceable"
	// KindRelease: the release task runs before the new containers' first
	// instance starts.
	KindRelease = "release"
)

// Action is one consequence of an apply.
type Action struct {
	// Kind is one of the Kind constants.
	Kind string `json:"kind"`
	// Message says it for people: "replace 3 instances by a rolling
	// update (max_surge 1, max_unavailable 0)".
	Message string `json:"message"`
	// Instances is how many instances it concerns (replace, create,
	// unplaceable); From and To are the replica counts of a scale.
	Instances int `json:"instances,omitempty"`
	From      int `json:"from,omitempty"`
	To        int `json:"to,omitempty"`
	// Hosts are the hosts of a certificate.
	Hosts []string `json:"hosts,omitempty"`
	// Fields are the top-level spec fields behind it.
	Fields []string `json:"fields,omitempty"`
}

// Input is what a plan is decided from. Specs are as the store keeps them
// (secrets sealed, the current ones kept where their value did not change).
type Input struct {
	// Current is the app's spec; nil for a new (or deleted) app.
	Current *spec.App
	// Next is the spec applied.
	Next *spec.App
	// CurrentReplicas and NextReplicas are the desired counts before and
	// after (an autoscaled app keeps its count within the new bounds).
	CurrentReplicas, NextReplicas int
	// CurrentHash and NextHash are the container hashes (reconcile.SpecHash,
	// with the app's restart) of the two specs.
	CurrentHash, NextHash string
	// Running are the hashes of the app's live instances (not stopped or
	// failed), one per instance.
	Running []string
	// Unplaceable is how many of the instances to place no host can take,
	// and why; 0 when all fit or nothing was placed.
	Unplaceable       int
	UnplaceableReason string
}

// Decide returns the consequences of applying in.Next, in the order they
// happen: never empty (KindNoChange when nothing changes).
func Decide(in Input) []Action {
	if in.Current != nil && change.Same(in.Current, in.Next) && in.CurrentHash == in.NextHash {
		return []Action{{Kind: KindNoChange, Message: "no change: the spec is the current one; nothing happens"}}
	}
	var out []Action
	if r := in.Next.Release; r != nil && (in.Current == nil || in.CurrentHash != in.NextHash) {
		out = append(out, Action{Kind: KindRelease, Fields: []string{"release"},
			Message: fmt.Sprintf("run the release task (%s, timeout %s) once, before the first new instance starts, unless this version was released before: "+
				"if it fails, nothing of the new version starts and the instances before keep serving", strings.Join(r.Command, " "), r.Timeout)})
	}
	if in.Current == nil {
		out = append(out, Action{Kind: KindCreate, Instances: in.NextReplicas,
			Message: fmt.Sprintf("create the app: start %d instance(s) of %s", in.NextReplicas, in.Next.Image)})
	} else {
		out = append(out, changes(in)...)
	}
	if hosts := newCertificates(in.Current, in.Next); len(hosts) > 0 {
		out = append(out, Action{Kind: KindCertificate, Hosts: hosts,
			Message: fmt.Sprintf("new certificate for %s (ACME, HTTP-01): served over plain HTTP until it is issued", strings.Join(hosts, ", "))})
	}
	if in.Unplaceable > 0 {
		out = append(out, Action{Kind: KindUnplaceable, Instances: in.Unplaceable,
			Message: fmt.Sprintf("unplaceable: %d instance(s) do not fit: %s", in.Unplaceable, in.UnplaceableReason)})
	}
	return out
}

// changes are the consequences of a change to an existing app.
func changes(in Input) []Action {
	var out []Action
	top := change.Top(in.Current, in.Next)
	stale := 0
	for _, h := range in.Running {
		if h != in.NextHash {
			stale++
		}
	}
	u := in.Next.Update
	switch {
	case stale > 0:
		why := "its containers change"
		if len(top) == 0 {
			why = "the image's tag now names another digest (pushed again)"
		}
		if in.CurrentHash == in.NextHash {
			why = "they run an earlier spec (a rollout under way)"
		}
		out = append(out, Action{Kind: KindReplace, Instances: stale, Fields: containerFields(top),
			Message: fmt.Sprintf("replace %d instance(s) by a rolling update (max_surge %d, max_unavailable %d): %s", stale, u.MaxSurge, u.MaxUnavailable, why)})
	case in.CurrentHash != in.NextHash:
		out = append(out, Action{Kind: KindReplace, Fields: containerFields(top),
			Message: "the containers change, but no instance runs: the new spec's instances start"})
	}
	if in.CurrentReplicas != in.NextReplicas {
		out = append(out, Action{Kind: KindScale, From: in.CurrentReplicas, To: in.NextReplicas,
			Message: fmt.Sprintf("scale %d→%d", in.CurrentReplicas, in.NextReplicas)})
	}
	replaced := stale > 0 || in.CurrentHash != in.NextHash
	tail := ""
	if !replaced {
		tail = "; no instance is replaced"
	}
	if f := pick(top, "routing", "lb"); len(f) > 0 {
		what := "routing"
		if !replaced {
			what = "routing only"
		}
		out = append(out, Action{Kind: KindRouting, Fields: f, Message: what + ": lbagents push the change to nginx or reload it" + tail})
	}
	if f := pick(top, "health"); len(f) > 0 {
		out = append(out, Action{Kind: KindHealth, Fields: f, Message: "health: healthd probes with the new check" + tail})
	}
	if f := pick(top, "update", "restart", "stop", "scaling", "placement", "replicas"); len(f) > 0 {
		f = slices.DeleteFunc(f, func(s string) bool { return s == "replicas" && in.CurrentReplicas != in.NextReplicas })
		if len(f) > 0 {
			out = append(out, Action{Kind: KindSettings, Fields: f, Message: "settings: " + strings.Join(f, ", ") + " change" + tail})
		}
	}
	if len(out) == 0 {
		// A changed secret under the same hash cannot be; a spec that
		// differs only where nothing reads it.
		out = append(out, Action{Kind: KindSettings, Fields: top, Message: "settings: " + strings.Join(top, ", ") + " change" + tail})
	}
	return out
}

// containerFields are the fields of top that make a container.
func containerFields(top []string) []string {
	return pick(top, "image", "command", "env", "port", "resources", "stop", "logging")
}

// pick returns the fields of top among names, in top's order.
func pick(top []string, names ...string) []string {
	var out []string
	for _, f := range top {
		if slices.Contains(names, f) {
			out = append(out, f)
		}
	}
	return out
}

// newCertificates are next's ACME hosts that cur did not have one for.
func newCertificates(cur, next *spec.App) []string {
	if next.Routing.TLS == nil || !next.Routing.TLS.ACME {
		return nil
	}
	had := map[string]bool{}
	if cur != nil && cur.Routing.TLS != nil && cur.Routing.TLS.ACME {
		for _, h := range cur.Routing.Hosts {
			had[spec.HostKey(h)] = true
		}
	}
	var out []string
	for _, h := range next.Routing.Hosts {
		if !had[spec.HostKey(h)] {
			out = append(out, h)
		}
	}
	return out
}
