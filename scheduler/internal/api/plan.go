package api

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"net/http"

	"github.com/berthhq/berth/common/msg"
	"github.com/berthhq/berth/common/spec"
	"github.com/berthhq/berth/scheduler/internal/change"
	"github.com/berthhq/berth/scheduler/internal/placement"
	"github.com/berthhq/berth/scheduler/internal/plan"
	"github.com/berthhq/berth/scheduler/internal/reconcile"
	"github.com/berthhq/berth/scheduler/internal/secret"
	"github.com/berthhq/berth/scheduler/internal/store"
)

// PlanView is the answer of POST /v1/apps/{name}/plan: what a PUT of the
// same body would change and what would happen. A plan writes nothing.
type PlanView struct {
	App string `json:"app"`
	// New: the app does not exist (or was deleted), and the apply would
	// create it.
	New bool `json:"new"`
	// Changed: the apply would make a new generation; false, it would
	// change nothing.
	Changed bool `json:"changed"`
	// Generation is the app's current generation (0 for a new app).
	Generation int64 `json:"generation"`
	// Summary says in one line what would change (as history does).
	Summary string `json:"summary"`
	// ImageRef is what the apply would pin the image to, as it would
	// (a tag pushed again is a new digest: a new generation); ImageNote
	// says how, or why it could not.
	ImageRef  string `json:"image_ref,omitempty"`
	ImageNote string `json:"image_note,omitempty"`
	// Diff is the unified diff of the current spec's YAML to the planned
	// one, secrets redacted (a secret whose value changes reads
	// "<redacted> (changed)"); "" when nothing changes.
	Diff string `json:"diff"`
	// Actions are what would happen, in order; never empty.
	Actions []plan.Action `json:"actions"`
	// PlacementChecked says whether the instances to place were checked
	// against the registered hosts' capacity; false with no host
	// registered (the local engine) or nothing to place.
	PlacementChecked bool `json:"placement_checked"`
}

// plan answers what an apply of the body would do, checking it exactly as
// apply does (the same errors, the same scope), and writing nothing: no
// generation, no history, no notification.
func (a *api) plan(w http.ResponseWriter, r *http.Request) {
	next, ok := a.checked(w, r)
	if !ok {
		return
	}
	ctx := r.Context()
	var cur *store.App
	switch got, err := a.d.Apps.Get(ctx, next.Name); {
	case err == nil:
		cur = &got
	case !errors.Is(err, store.ErrNotFound):
		a.fail(w, err)
		return
	}
	var before *spec.App
	if cur != nil {
		before = cur.Spec
	}
	// As the store seals it: a secret whose value did not change keeps
	// its sealed value and value id, so it changes nothing.
	if err := a.o.Secrets.Seal(next, before); err != nil {
		a.fail(w, err)
		return
	}
	// Pinned as apply pins it: an unresolved image keeps the current pin
	// while the spec names the same image (store.ApplyPinned).
	pin, err := a.pin(ctx, next)
	if err != nil {
		a.fail(w, err)
		return
	}
	ref := pin.Ref
	if ref == "" && cur != nil && cur.Spec.Image == next.Image {
		ref = cur.ImageRef
	}
	repinned := cur != nil && ref != cur.ImageRef
	in := plan.Input{Current: before, Next: next, NextReplicas: store.DesiredReplicas(next, cur)}
	out := PlanView{App: next.Name, New: cur == nil, Changed: cur == nil || !change.Same(before, next) || repinned,
		ImageRef: ref, ImageNote: pinNote(next.Image, pin, ref)}
	planned := store.App{Name: next.Name, Spec: next, DesiredReplicas: in.NextReplicas, ImageRef: ref}
	live := 0
	from := "(no app)"
	if cur != nil {
		out.Generation, from = cur.Generation, fmt.Sprintf("generation %d", cur.Generation)
		in.CurrentReplicas, in.CurrentHash = cur.DesiredReplicas, a.specHash(*cur)
		planned.RestartedGeneration = cur.RestartedGeneration
		insts, err := a.d.Apps.Instances(ctx, next.Name)
		if err != nil {
			a.fail(w, err)
			return
		}
		for _, i := range insts {
			if i.State != msg.StateStopped && i.State != msg.StateFailed {
				in.Running = append(in.Running, i.SpecHash)
				live++
			}
		}
	}
	in.NextHash = a.specHash(planned)
	if out.Changed {
		// What has to find a host: every instance of a new app or of new
		// containers (the ones replaced free theirs), or a scale-up's.
		count, replacing := in.NextReplicas, cur != nil && in.CurrentHash != in.NextHash
		if cur != nil && !replacing {
			count = in.NextReplicas - live
		}
		if count > 0 {
			var err error
			in.Unplaceable, in.UnplaceableReason, out.PlacementChecked, err = a.unplaceable(ctx, next, count, replacing)
			if err != nil {
				a.fail(w, err)
				return
			}
		}
		var gen int64 = 1
		if cur != nil {
			gen = cur.Generation + 1
		}
		out.Summary = change.Summary(before, out.Generation, next, gen, 0)
		if repinned && change.Same(before, next) {
			out.Summary = store.Repinned(next.Image, cur.ImageRef, ref)
		}
		out.Diff = change.Diff(before, next, from, "planned")
	}
	out.Actions = plan.Decide(in)
	writeJSON(w, http.StatusOK, out)
}

// specHash is the hash of app's containers, as its instances carry it.
func (a *api) specHash(app store.App) string {
	if a.o.SpecHash != nil {
		return a.o.SpecHash(app)
	}
	s := *app.Spec
	s.Default()
	return reconcile.Restarted(reconcile.Pinned(reconcile.SpecHash(&s, secret.HashEnv(s.Env)), app.ImageRef), app.RestartedGeneration)
}

// unplaceable places count new instances of next on the registered hosts,
// with what their live instances reserve (but next's own when replacing,
// as the leader counts instances a rollout replaces), and returns how
// many no host can take and why. With no host registered (the local
// engine, whose capacity is not registered) nothing is checked.
func (a *api) unplaceable(ctx context.Context, next *spec.App, count int, replacing bool) (n int, reason string, checked bool, err error) {
	hs, err := a.d.Hosts.Hosts(ctx)
	if err != nil || len(hs) == 0 {
		return 0, "", false, err
	}
	apps, err := a.d.Apps.List(ctx)
	if err != nil {
		return 0, "", false, err
	}
	res := map[string]spec.Resources{}
	for _, app := range apps {
		if app.Spec != nil {
			res[app.Name] = app.Spec.Resources
		}
	}
	insts, err := a.d.Apps.Instances(ctx, "")
	if err != nil {
		return 0, "", false, err
	}
	hosts := make([]placement.Host, len(hs))
	index := make(map[string]int, len(hs))
	for i, h := range hs {
		state := h.State
		if h.Drain {
			state = "draining"
		}
		hosts[i] = placement.Host{Name: h.Name, Labels: h.Labels, CPU: h.CPU, Memory: h.Memory, Schedulable: h.State == store.HostUp && !h.Drain,
			State: state, Apps: map[string]int{}}
		index[h.Name] = i
	}
	for _, in := range insts {
		i, ok := index[in.Host]
		if !ok || in.State == msg.StateStopped || in.State == msg.StateFailed || (replacing && in.App == next.Name) {
			continue
		}
		rs := res[in.App]
		hosts[i].ReservedCPU += cmp.Or(rs.CPU, a.o.DefaultCPU)
		hosts[i].ReservedMemory += cmp.Or(int64(rs.Memory), a.o.DefaultMemory)
		hosts[i].Apps[in.App]++
	}
	req := placement.Request{App: next.Name, Count: count, CPU: cmp.Or(next.Resources.CPU, a.o.DefaultCPU),
		Memory: cmp.Or(int64(next.Resources.Memory), a.o.DefaultMemory)}
	if pl := next.Placement; pl != nil {
		req.Constraints, req.SpreadBy = pl.Parsed(), pl.SpreadBy
	}
	u := placement.Place(hosts, []placement.Request{req}).Unplaceable[next.Name]
	return u.Count, u.Reason, true, nil
}
