package agent

import (
	"context"
	"fmt"
	"maps"
	"os"
	"time"

	"go.uber.org/zap"

	"github.com/berthhq/berth/common/msg"
	"github.com/berthhq/berth/lbagent/internal/atomicfile"
	"github.com/berthhq/berth/lbagent/internal/dynamic"
	"github.com/berthhq/berth/lbagent/internal/render"
	"github.com/berthhq/berth/lbagent/internal/state"
)

// reload builds a config of dec's state that nginx accepts and makes
// nginx serve it. It returns how long to wait before trying again when
// the reload or the push after it failed, or before the apps nginx
// refused in this build are tried again (--resync).
func (a *Agent) reload(ctx context.Context, start time.Time, in Input, dec Decision) time.Duration {
	c := &candidate{renderer: in.Renderer, opts: a.cfg.Render, staging: a.cfg.Staging, tester: a.tester, lastGood: a.lastGood,
		rendered: a.cfg.Hooks.Rendered, now: a.now, logger: a.logger, snap: dec.Snapshot, known: dec.StandIns}
	final, failed, err := c.build(ctx, dec.Generation)
	maps.Copy(a.refused, final.refused)
	if err != nil {
		a.logger.Error("config not applied", zap.Error(err), zap.String("reason", dec.Reason))
		a.noteReload(start, in.Snapshot.Revision, err)
		a.report(ctx, start, in.Snapshot.Revision, msg.ReloadFailed, err.Error(), failed)
		return 0
	}
	if len(final.refused) > 0 {
		in.Built = &final.snap
		if again := Decide(in); again.Action != Reload {
			if retry := a.keepRefused(ctx, start, in.Snapshot, again, failed); retry > 0 {
				return retry
			}
			return wait(start, expiry(final.refused, a.cfg.Resync), 0)
		}
	}
	var eps map[string]*dynamic.Endpoints
	if a.pushes != nil {
		eps = endpointsOf(&a.pushes.cache, final.snap)
		// An app the Lua router routed until now keeps its routes in the
		// file the reload loads (the workers it replaces route it); the
		// push after the reload drops them.
		if err := a.pushes.write(ctx, dynamic.KeepRoutes(eps, a.served.Endpoints)); err != nil {
			a.logger.Error("config not applied", zap.Error(err))
			a.noteReload(start, in.Snapshot.Revision, err)
			a.report(ctx, start, in.Snapshot.Revision, msg.ReloadFailed, err.Error(), failed)
			return 0
		}
	}
	if err := a.apply(ctx, final.bytes, dec.Generation, a.waits.deadline(final.tested)); err != nil {
		// nginx -t accepted the config: what failed is the reload (nginx
		// not running yet, or gone). Try again, backing off, rather than
		// wait for the next change, which may never come.
		retry := min(time.Second<<min(a.reloadFailures, 5), 30*time.Second)
		a.reloadFailures++
		a.logger.Error("config not applied, retrying", zap.Error(err), zap.Duration("retry_in", retry))
		a.noteReload(start, in.Snapshot.Revision, err)
		a.report(ctx, start, in.Snapshot.Revision, msg.ReloadFailed, err.Error(), failed)
		return retry
	}
	a.reloadFailures = 0
	a.noteReload(start, in.Snapshot.Revision, nil)
	var pushErr error
	if a.pushes != nil {
		// The reload loaded the file; a full push makes sure of it (an
		// nginx that kept a newer dict, an adopted one) and reads it back.
		// Without it nginx's sets are unknown: the next push is full.
		if pushErr = a.pushes.push(ctx, in.Snapshot.Revision, eps, eps, true); pushErr != nil {
			eps = nil
		}
	}
	a.record(dec.Generation, in.Renderer, in.Snapshot, final.snap, eps)
	a.settleBuild(final.snap, failed)
	if pushErr != nil {
		a.logger.Error("endpoints not pushed after the reload, retrying", zap.Error(pushErr))
		a.report(ctx, start, in.Snapshot.Revision, msg.ReloadFailed, pushErr.Error(), failed)
		return time.Second
	}
	result := msg.ReloadApplied
	if len(failed) > 0 {
		result = msg.ReloadRejected
	}
	a.applied(ctx)
	a.report(ctx, start, in.Snapshot.Revision, result, "", failed)
	if h := a.cfg.Hooks.Served; h != nil {
		h(len(final.snap.Apps), final.snap.Servers())
	}
	a.logger.Info("config applied", zap.Uint64("generation", dec.Generation), zap.Uint64("revision", in.Snapshot.Revision),
		zap.Int("apps", len(in.Snapshot.Apps)), zap.Int("servers", in.Snapshot.Servers()), zap.Int("failed_apps", len(failed)),
		zap.String("reason", dec.Reason), zap.Duration("duration", a.now().Sub(start)))
	return wait(start, expiry(final.refused, a.cfg.Resync), 0)
}

// keepRefused acts on a build whose refused apps leave nginx serving what
// it serves (decideBuilt): no reload; in dynamic mode the endpoints that
// changed are pushed. The result is reported rejected.
func (a *Agent) keepRefused(ctx context.Context, start time.Time, snap state.Snapshot, dec Decision, failed map[string]string) time.Duration {
	if !a.pushChanged(ctx, start, snap.Revision, dec, failed) {
		return time.Second
	}
	a.served.Snapshot, a.appErrors = snap, failed
	a.applied(ctx)
	a.report(ctx, start, snap.Revision, msg.ReloadRejected, "", failed)
	return 0
}

// record notes that nginx serves generation gen, rendered by renderer from
// served, for the store's snapshot applied; eps are the endpoint sets
// nginx's dict holds (dynamic mode), nil if unknown.
func (a *Agent) record(gen uint64, renderer *render.Renderer, applied, served state.Snapshot, eps map[string]*dynamic.Endpoints) {
	a.served = newServed(gen, renderer, applied, served, eps, a.cfg.Render)
	a.servedGen.Store(gen)
}

// newServed is what nginx serves once it serves generation gen, rendered
// by renderer with o from served, for the store's snapshot applied, with
// the endpoint sets eps in its dict (dynamic mode; nil if unknown).
func newServed(gen uint64, renderer *render.Renderer, applied, served state.Snapshot, eps map[string]*dynamic.Endpoints, o render.Options) Served {
	s := Served{Generation: gen, Snapshot: applied, Renderer: renderer, Layout: comparable(served, o),
		Specs: specsOf(served), Apps: make(map[string]int64, len(served.Apps)), Endpoints: eps}
	for _, app := range served.Apps {
		s.Apps[app.Spec.Name] = app.Spec.Generation
	}
	return s
}

// settleBuild, once nginx serves a build of served, keeps the apps not
// failed as their last good records, forgets the last good records of
// apps gone and the refusals of apps no longer failed, and reports failed.
func (a *Agent) settleBuild(served state.Snapshot, failed map[string]string) {
	for _, app := range served.Apps {
		if _, bad := failed[app.Spec.Name]; !bad {
			a.lastGood[app.Spec.Name] = app
		}
	}
	for name := range a.lastGood {
		if _, present := a.served.Apps[name]; !present {
			delete(a.lastGood, name)
		}
	}
	for name := range a.refused {
		if _, still := failed[name]; !still {
			delete(a.refused, name)
		}
	}
	a.appErrors = failed
}

// apply swaps the tested config in, reloads and confirms, waiting up to
// wait for nginx to serve it (confirmWait); on a failed confirm it puts
// the previous file back and reloads again. In dynamic mode, with nginx
// serving, the workers it replaces drain their keep-alive connections
// first.
func (a *Agent) apply(ctx context.Context, conf []byte, gen uint64, wait time.Duration) error {
	drained := a.pushes != nil && a.served.Generation > 0 && a.pushes.drainKeepalive(ctx, gen, wait)
	err := a.swap(ctx, conf, gen, wait)
	if err != nil && drained {
		a.pushes.undrain(ctx, gen) // the old workers stay: let them keep connections again
	}
	return err
}

// swap writes conf to the target, keeping the previous file as
// .last-good, reloads nginx and confirms it serves gen within wait; on a
// failure it puts the previous file back and reloads again. That second
// reload comes only once wait has passed and nginx's master is idle
// (confirm): never on top of a reload still taking effect.
func (a *Agent) swap(ctx context.Context, conf []byte, gen uint64, wait time.Duration) error {
	previous, _ := os.ReadFile(a.cfg.Target)
	if err := atomicfile.Write(a.cfg.Target, conf, 0o644); err != nil {
		return err
	}
	if len(previous) > 0 {
		_ = atomicfile.Write(a.cfg.Target+".last-good", previous, 0o644)
	}
	signalled := a.now()
	err := a.reloader.Reload(ctx)
	if err == nil {
		err = a.confirm(ctx, gen, signalled, wait)
	}
	if err == nil {
		return nil
	}
	if len(previous) > 0 {
		if rerr := atomicfile.Write(a.cfg.Target, previous, 0o644); rerr == nil {
			_ = a.reloader.Reload(ctx)
		}
	}
	return fmt.Errorf("generation %d: %w", gen, err)
}
