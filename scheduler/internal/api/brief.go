package api

import (
	"context"
	"time"

	"github.com/berthhq/berth/common/msg"
	"github.com/berthhq/berth/scheduler/internal/store"
)

// BriefFunc returns an app's replicas and rollout as GET /v1/apps/{name}
// computes them, without its routes, traffic, ejections or failures' last
// lines. It is safe to call concurrently.
type BriefFunc func(ctx context.Context, app store.App, now time.Time) (AppView, error)

// Brief returns the BriefFunc of the API that d and o make: the web
// console's overview shows every app by it. ObservedReplicas counts the
// running instances, on any host.
func Brief(d Deps, o Options) BriefFunc {
	a := &api{d: d, o: o}
	return func(ctx context.Context, app store.App, now time.Time) (AppView, error) {
		insts, err := d.Apps.Instances(ctx, app.Name)
		if err != nil {
			return AppView{}, err
		}
		v := view(app, false)
		for _, i := range insts {
			switch i.State {
			case msg.StateRunning:
				v.ObservedReplicas++
			case msg.StateFailed:
				v.LostReplicas++
			}
		}
		hash := ""
		if o.SpecHash != nil && app.Spec != nil {
			hash = o.SpecHash(app)
		}
		if err := a.rollout(ctx, &v, app, insts, hash, false, now); err != nil {
			return AppView{}, err
		}
		return v, nil
	}
}
