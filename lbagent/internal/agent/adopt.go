package agent

import (
	"context"
	"os"
	"time"

	"go.uber.org/zap"

	"github.com/berthhq/berth/common/msg"
)

// Adoption: a restarted lbagent finds nginx serving the config it left.
// When this state renders exactly that config at nginx's generation
// (Decide compares the bytes), the agent takes it over with no reload, so
// no keep-alive connection is closed; in dynamic mode it pushes every
// app's endpoints, and reloads instead when nginx takes no push.

// find reads the config nginx serves, for a sync before any was applied:
// the generation its status listener reports and the file it reads. It is
// nil when nginx reports none (not running yet, or not ours) or the file
// does not read.
func (a *Agent) find(ctx context.Context) *Found {
	sctx, cancel := context.WithTimeout(ctx, time.Second)
	gen, err := a.status.Generation(sctx)
	cancel()
	if err != nil || gen == 0 {
		a.logger.Debug("no served generation to adopt", zap.Error(err))
		return nil
	}
	current, err := os.ReadFile(a.cfg.Target)
	if err != nil {
		a.logger.Debug("the served config does not read: nothing to adopt", zap.Error(err))
		return nil
	}
	return &Found{Generation: gen, Config: current}
}

// adopt takes over the config nginx serves, as dec says. It reports false,
// having changed nothing, when nginx takes no endpoint push.
func (a *Agent) adopt(ctx context.Context, start time.Time, in Input, dec Decision) bool {
	if a.pushes != nil {
		if err := a.pushes.push(ctx, in.Snapshot.Revision, dec.Changed, dec.Endpoints, true); err != nil {
			a.logger.Warn("endpoints not pushed to the nginx found serving; reloading instead", zap.Error(err))
			return false
		}
	}
	a.record(dec.Generation, in.Renderer, in.Snapshot, dec.Snapshot, dec.Endpoints)
	for _, app := range dec.Snapshot.Apps {
		a.lastGood[app.Spec.Name] = app
	}
	a.appErrors = map[string]string{}
	if h := a.cfg.Hooks.Served; h != nil {
		h(len(dec.Snapshot.Apps), dec.Snapshot.Servers())
	}
	a.logger.Info("adopted the config nginx serves: no reload", zap.Uint64("generation", dec.Generation),
		zap.Uint64("revision", in.Snapshot.Revision), zap.String("reason", dec.Reason))
	a.applied(ctx)
	a.report(ctx, start, in.Snapshot.Revision, msg.ReloadSkipped, "", nil)
	return true
}
