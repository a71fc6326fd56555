package agent

import (
	"bytes"
	"fmt"
	"reflect"
	"slices"
	"strings"
	"time"

	"github.com/berthhq/berth/common/msg"
	"github.com/berthhq/berth/lbagent/internal/dynamic"
	"github.com/berthhq/berth/lbagent/internal/render"
	"github.com/berthhq/berth/lbagent/internal/state"
)

// Action is what one sync does with the state to serve.
type Action string

// The actions Decide chooses among.
const (
	// Hold leaves nginx as it is: the state removes every server of every
	// app and looks like a reset rather than intent (state.EmptyHold). It
	// is applied if it persists for --empty-hold.
	Hold Action = "hold"
	// Skip changes nothing: nginx serves this state already.
	Skip Action = "skip"
	// Push (dynamic mode) installs the endpoint sets that changed in the
	// running nginx; the config stays, nothing reloads.
	Push Action = "push"
	// Adopt takes over the config nginx is found serving, which this state
	// renders byte for byte at nginx's generation (a restarted lbagent):
	// no reload, so no keep-alive connection is closed.
	Adopt Action = "adopt"
	// Reload builds a config nginx accepts (render, nginx -t, bisect the
	// apps it refuses), swaps it in, reloads nginx and confirms it.
	Reload Action = "reload"
)

// Served is what nginx serves, as this agent applied it. The zero Served
// is nothing yet.
type Served struct {
	// Generation is the config generation nginx serves; 0 before the
	// first reload or adoption.
	Generation uint64
	// Snapshot is the store's snapshot last applied: its revision is
	// reported, and the hold counts its servers.
	Snapshot state.Snapshot
	// Renderer is the template set the config was rendered with.
	Renderer *render.Renderer
	// Layout is the config's layout without what changes on every write
	// (comparable); Specs are the app records it was made of, in order.
	Layout render.Data
	Specs  []*msg.App
	// Apps is the spec generation nginx serves of each app.
	Apps map[string]int64
	// Endpoints (dynamic mode) are the sets nginx's dict holds; nil when
	// unknown, and the next push is a full one.
	Endpoints map[string]*dynamic.Endpoints
}

// Found is the config nginx serves when this agent has applied none yet
// (a restarted lbagent): the generation its status listener reports, and
// the file it reads.
type Found struct {
	Generation uint64
	Config     []byte
}

// Refusal is an app nginx refused: at its spec generation, why, when, and
// the record that stands in for it meanwhile (its last good record, or a
// placeholder answering 503), kept so that the stand-in is the same
// pointer from one sync to the next.
type Refusal struct {
	Generation int64
	Why        string
	At         time.Time
	Spec       *msg.App
	// Placeholder says Spec is a placeholder: it has no servers.
	Placeholder bool
}

// Input is everything Decide reads. Decide changes none of it.
type Input struct {
	// Now is the time of the decision.
	Now time.Time
	// Served is what nginx serves.
	Served Served
	// Snapshot is the store's snapshot, with the certificates this
	// lbagent serves (self-signed, ACME) named in its app records.
	Snapshot state.Snapshot
	// Renderer is the template set to render with.
	Renderer *render.Renderer
	// Found is the config nginx was found serving; nil when it reports
	// none, or once this agent has served one.
	Found *Found
	// Refused are the apps nginx refused, by name.
	Refused map[string]Refusal
	// EmptySince is when a state that removes every server was first
	// seen; zero if the last decision saw none.
	EmptySince time.Time
	// Built, once a Reload's build has isolated apps nginx refused, is
	// the state nginx accepted: with it, Decide says whether it still
	// needs a reload (nil before a build).
	Built *state.Snapshot
	// Render lays out the config; Dynamic is dynamic mode (endpoints live
	// in nginx's dict, pushed, not rendered).
	Render  render.Options
	Dynamic bool
	// EmptyHold is --empty-hold; Resync how long a refusal stands.
	EmptyHold, Resync time.Duration
	// Endpoints memoizes dynamic.Of from one decision to the next; nil
	// computes them afresh.
	Endpoints *dynamic.Cache
}

// Decision is what to do, why, and when to decide again.
type Decision struct {
	Action Action
	// Reason says why, for the log (and, for Hold, the report).
	Reason string
	// Wake is when time alone changes the decision (a hold ends, a
	// refusal expires); zero when nothing waits on the clock.
	Wake time.Time
	// EmptySince is Input.EmptySince for the next decision.
	EmptySince time.Time
	// Snapshot is the state to serve: Input.Snapshot with every app
	// refused at its current generation, within --resync, replaced by its
	// stand-in (or Input.Built).
	Snapshot state.Snapshot
	// StandIns are the apps of Snapshot that stand in for a refused one,
	// with why it was refused.
	StandIns map[string]string
	// Settled (Skip, Push) are the refusals that end: their app left, or
	// changed into something that renders as its stand-in did.
	Settled []string
	// Endpoints (dynamic mode; Skip, Push, Adopt) are every app's
	// endpoint set; Changed those to push, all of them when Full.
	Endpoints, Changed map[string]*dynamic.Endpoints
	Full               bool
	// Generation is the config generation to adopt (Adopt) or to build
	// (Reload).
	Generation uint64
}

// Decide is one step of the agent's loop: from what nginx serves, the
// state to serve and the clock, it says whether to hold, skip, push,
// adopt or reload, why, and when to decide again. It does no I/O:
// rendering is deterministic, so equal layouts through the same templates
// are the same config, and nothing needs nginx to know it.
func Decide(in Input) Decision {
	if in.Built != nil {
		return decideBuilt(in)
	}
	apply, since := state.EmptyHold(in.Served.Snapshot, in.Snapshot, in.EmptySince, in.Now, in.EmptyHold)
	if !apply {
		return Decision{Action: Hold, EmptySince: since, Wake: since.Add(in.EmptyHold + time.Millisecond),
			Reason: fmt.Sprintf("held back: the new state removes all %d servers of every app; it is applied if it persists for %s",
				in.Served.Snapshot.Servers(), in.EmptyHold)}
	}
	d := Decision{EmptySince: since, Action: Reload, Generation: in.Served.Generation + 1}
	d.Snapshot, d.StandIns, d.Wake = standIns(in.Snapshot, in.Refused, in.Now, in.Resync)
	switch {
	case in.Served.Generation == 0:
		d.adoptOrReload(in)
	case in.Renderer != in.Served.Renderer:
		d.Reason = "the templates changed"
	case !sameLayout(in.Served, d.Snapshot, in.Render, in.Dynamic):
		d.Reason = "the layout changed (apps, routes, hosts, TLS, lb settings or servers)"
		if in.Dynamic {
			d.Reason = "the layout changed (apps, routes, hosts, TLS or lb settings)"
		}
		if retried := retried(in.Refused, d.Snapshot, d.StandIns); len(retried) > 0 {
			d.Reason += "; refused before and tried again (changed, or --resync passed): " + strings.Join(retried, ", ")
		}
	default:
		d.Settled = settled(in.Refused, d.StandIns)
		d.endpoints(in, "nginx serves this state's config")
	}
	return d
}

// decideBuilt is Decide once a build isolated apps nginx refused: when
// what nginx accepts of the state is the config it serves (an app refused
// again after its refusal expired), there is nothing to reload.
func decideBuilt(in Input) Decision {
	d := Decision{Action: Reload, Reason: "nginx accepts a config other than the one it serves", EmptySince: in.EmptySince,
		Snapshot: *in.Built, Generation: in.Served.Generation + 1}
	if in.Served.Generation > 0 && in.Renderer == in.Served.Renderer && sameLayout(in.Served, *in.Built, in.Render, in.Dynamic) {
		d.endpoints(in, "what nginx accepts of this state is what it serves: the apps it refused stand in")
	}
	return d
}

// adoptOrReload decides the first sync: adopt what nginx is found serving
// when this state renders exactly it at its generation, else reload.
func (d *Decision) adoptOrReload(in Input) {
	if in.Found == nil || in.Found.Generation == 0 {
		d.Reason = "nothing served yet: nginx reports no generation to adopt"
		return
	}
	l, conflicts := render.Layout(d.Snapshot, in.Found.Generation, in.Render)
	if len(conflicts) > 0 {
		d.Reason = "nothing served yet, and apps to report refused (route conflicts): a build records them"
		return
	}
	out, err := in.Renderer.Render(l, in.Render.Main)
	if err != nil || !bytes.Equal(out, in.Found.Config) {
		d.Reason = fmt.Sprintf("nothing served yet: nginx serves another config than this state's at generation %d", in.Found.Generation)
		return
	}
	d.Action, d.Generation = Adopt, in.Found.Generation
	d.Reason = fmt.Sprintf("nginx serves this state's config at generation %d", in.Found.Generation)
	if in.Dynamic {
		d.Endpoints = endpointsOf(in.Endpoints, d.Snapshot)
		d.Changed, d.Full = d.Endpoints, true
	}
}

// endpoints makes d a Skip, or in dynamic mode a Push of the endpoint
// sets that differ from nginx's (all of them when nginx's are unknown).
func (d *Decision) endpoints(in Input, reason string) {
	d.Action, d.Reason, d.Generation = Skip, reason, 0
	if !in.Dynamic {
		return
	}
	d.Endpoints = endpointsOf(in.Endpoints, d.Snapshot)
	d.Changed = in.Endpoints.Diff(in.Served.Endpoints, d.Endpoints)
	if d.Changed == nil {
		d.Reason += ", endpoints too"
		return
	}
	if in.Served.Endpoints == nil {
		d.Changed, d.Full = d.Endpoints, true
	}
	d.Action = Push
	d.Reason = fmt.Sprintf("%s; the endpoints of %d apps changed: pushed, no reload", reason, len(d.Changed))
}

func endpointsOf(c *dynamic.Cache, snap state.Snapshot) map[string]*dynamic.Endpoints {
	if c == nil {
		return dynamic.Of(snap)
	}
	return c.Of(snap)
}

// standIns returns snap with every app refused at its current generation
// within resync replaced by its stand-in (with the app's current servers,
// unless it is a placeholder), those apps with why, and when the first of
// their refusals expires.
func standIns(snap state.Snapshot, refused map[string]Refusal, now time.Time, resync time.Duration) (state.Snapshot, map[string]string, time.Time) {
	known := map[string]string{}
	var wake time.Time
	if len(refused) == 0 {
		return snap, known, wake
	}
	out := snap
	out.Apps = nil
	for i, app := range snap.Apps {
		r, ok := refused[app.Spec.Name]
		if !ok || r.Generation != app.Spec.Generation || now.Sub(r.At) >= resync {
			continue
		}
		if out.Apps == nil {
			out.Apps = slices.Clone(snap.Apps)
		}
		stand := state.App{Spec: r.Spec, Servers: app.Servers}
		if r.Placeholder {
			stand.Servers = nil
		}
		out.Apps[i] = stand
		known[app.Spec.Name] = r.Why
		if expires := r.At.Add(resync); wake.IsZero() || expires.Before(wake) {
			wake = expires
		}
	}
	if out.Apps == nil {
		return snap, known, wake
	}
	return out, known, wake
}

// expiry is when the first of refused expires; zero for none.
func expiry(refused map[string]Refusal, resync time.Duration) time.Time {
	var first time.Time
	for _, r := range refused {
		if t := r.At.Add(resync); first.IsZero() || t.Before(first) {
			first = t
		}
	}
	return first
}

// settled are the refusals without a stand-in, sorted.
func settled(refused map[string]Refusal, standIns map[string]string) []string {
	var out []string
	for name := range refused {
		if _, ok := standIns[name]; !ok {
			out = append(out, name)
		}
	}
	slices.Sort(out)
	return out
}

// retried are the apps of snap refused before that stand in no more.
func retried(refused map[string]Refusal, snap state.Snapshot, standIns map[string]string) []string {
	var out []string
	for _, app := range snap.Apps {
		if _, was := refused[app.Spec.Name]; was {
			if _, stands := standIns[app.Spec.Name]; !stands {
				out = append(out, app.Spec.Name)
			}
		}
	}
	return out
}

// sameLayout reports whether snap renders the config nginx serves. In
// dynamic mode the layout is made of the app records alone (servers live in
// nginx's dict), so the very records the served layout was made of, in
// the same order, are the same layout: an endpoint change is known to
// need no render without building one (the store keeps an untouched app's
// record). Otherwise the layouts are compared.
func sameLayout(served Served, snap state.Snapshot, o render.Options, dynamic bool) bool {
	if dynamic && sameSpecs(served.Specs, snap) {
		return true
	}
	return reflect.DeepEqual(comparable(snap, o), served.Layout)
}

// comparable is the layout of snap without what changes on every write
// (generation, revision): equal layouts through the same templates render
// equal configs.
func comparable(snap state.Snapshot, o render.Options) render.Data {
	d, _ := render.Layout(snap, 0, o)
	d.Revision = 0
	return d.Comparable()
}

// sameSpecs reports whether snap's app records are specs, in order.
func sameSpecs(specs []*msg.App, snap state.Snapshot) bool {
	if len(specs) != len(snap.Apps) {
		return false
	}
	for i, app := range snap.Apps {
		if app.Spec != specs[i] {
			return false
		}
	}
	return true
}

// specsOf returns the app records of snap, in order.
func specsOf(snap state.Snapshot) []*msg.App {
	out := make([]*msg.App, len(snap.Apps))
	for i, app := range snap.Apps {
		out[i] = app.Spec
	}
	return out
}
