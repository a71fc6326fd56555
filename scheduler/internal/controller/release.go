package controller

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"time"

	"go.uber.org/zap"

	"github.com/berthhq/berth/common/logging"
	"github.com/berthhq/berth/common/msg"
	"github.com/berthhq/berth/common/spec"
	"github.com/berthhq/berth/scheduler/internal/docker"
	"github.com/berthhq/berth/scheduler/internal/publish"
	"github.com/berthhq/berth/scheduler/internal/reconcile"
	"github.com/berthhq/berth/scheduler/internal/store"
)

// ReleaseRecords writes release records under the leader's lease, with
// their events, published once committed. Safe for concurrent use.
type ReleaseRecords interface {
	// BeginRelease records a release running before its container
	// exists; store.ErrReleaseExists for a generation that has one.
	BeginRelease(ctx context.Context, l store.Lease, r store.Release, events ...store.Event) error
	// WatchRelease records a running release's container and that this
	// leader's term waits on it; false for one that is not running.
	WatchRelease(ctx context.Context, l store.Lease, app string, generation int64, container string) (bool, error)
	// EndRelease records how a running release ended, once; false (and
	// no event) for one that is not running.
	EndRelease(ctx context.Context, l store.Lease, r store.Release, events ...store.Event) (bool, error)
}

var _ ReleaseRecords = (*publish.Publisher)(nil)

// defaultReleasePoll is how often a release container is inspected
// besides its die event, when Config.ReleasePoll is zero.
const defaultReleasePoll = 2 * time.Second

// releaseRun is a release this leader waits on: its own run, or one it
// adopted. Its entry stays until a cycle observes its record ended, so
// that no cycle that read the record running before it ended adopts it.
type releaseRun struct {
	// container is its container's id once known; died is signalled by
	// the container's die event.
	container string
	died      chan struct{}
	done      bool
}

func releaseKey(app string, generation int64) string { return fmt.Sprintf("%s/%d", app, generation) }

// watched returns the release records as the planner sees them: whether
// this leader waits on each running one. It forgets the runs whose record
// ended.
func (c *Controller) watched(rs []store.Release) []reconcile.Release {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := make([]reconcile.Release, 0, len(rs))
	listed := make(map[string]bool, len(rs))
	for _, r := range rs {
		key := releaseKey(r.App, r.Generation)
		listed[key] = true
		run, ok := c.releases[key]
		if ok && r.State != store.ReleaseRunning {
			delete(c.releases, key)
			ok = false
		}
		out = append(out, reconcile.Release{App: r.App, Generation: r.Generation, SpecHash: r.SpecHash, State: r.State, Host: r.Host,
			ContainerID: r.ContainerID, Watched: ok && !run.done, Reason: r.Reason})
	}
	for key, run := range c.releases {
		if run.done && !listed[key] {
			delete(c.releases, key) // its record went with its app
		}
	}
	return out
}

// claimRelease marks a release as waited on here; false when it already is.
func (c *Controller) claimRelease(app string, generation int64, container string) (*releaseRun, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	key := releaseKey(app, generation)
	if run, ok := c.releases[key]; ok && !run.done {
		return nil, false
	}
	run := &releaseRun{container: container, died: make(chan struct{}, 1)}
	c.releases[key] = run
	return run, true
}

// releaseDied wakes the wait on a release container that died.
func (c *Controller) releaseDied(container string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, run := range c.releases {
		if run.container == container {
			select {
			case run.died <- struct{}{}:
			default:
			}
		}
	}
}

// releaseEvent is an event of a release: its instance is the release's
// container label (release-<gen>), its details the release's.
func releaseEvent(kind msg.EventKind, r store.Release, message string, extra map[string]string) store.Event {
	d := map[string]string{"generation": fmt.Sprint(r.Generation), "spec_hash": r.SpecHash, "host": r.Host}
	if r.ContainerID != "" {
		d["container_id"] = docker.ShortID(r.ContainerID)
	}
	maps.Copy(d, extra)
	return store.Event{App: r.App, Instance: docker.ReleaseInstance(r.Generation), Kind: kind, Message: message, Details: d}
}

// beginRelease carries out the plan's i-th action, a RunRelease (on its
// placed host; none when it is unplaceable, which place reported) or an
// AdoptRelease. It reports whether it began a wait.
func (c *Controller) beginRelease(ctx context.Context, l store.Lease, a reconcile.Action, w world, p placed, i int) (began bool, err error) {
	defer func() { c.metrics.action(a.Kind, err) }()
	if a.Kind == reconcile.AdoptRelease {
		return c.adoptRelease(ctx, l, a, w)
	}
	host, ok := p.starts[i]
	if !ok {
		return false, nil
	}
	return c.startRelease(ctx, l, a, w, host)
}

// startRelease begins the release of a generation on host: its record
// (release_started) at once, then its container beside the loop. It
// reports whether it began one.
func (c *Controller) startRelease(ctx context.Context, l store.Lease, a reconcile.Action, w world, host string) (bool, error) {
	app := w.apps[a.App]
	rel := store.Release{App: a.App, Generation: a.Generation, SpecHash: w.in.Apps[a.App].ReleaseHash, Host: host, State: store.ReleaseRunning}
	run, ok := c.claimRelease(a.App, a.Generation, "")
	if !ok {
		return false, nil
	}
	err := c.deps.Releases.BeginRelease(ctx, l, rel, releaseEvent(msg.EventReleaseStarted, rel,
		fmt.Sprintf("release task of generation %d started%s: its instances start once it exits 0", a.Generation, onHost(host)), nil))
	if err != nil {
		c.mu.Lock()
		delete(c.releases, releaseKey(a.App, a.Generation))
		c.mu.Unlock()
		if errors.Is(err, store.ErrReleaseExists) {
			return false, nil // observed next cycle
		}
		return false, err
	}
	c.releaseRuns.Go(func() {
		defer c.releaseDone(run)
		c.runRelease(ctx, l, run, app, rel)
	})
	return true, nil
}

// releaseDone marks a run over and plans again.
func (c *Controller) releaseDone(run *releaseRun) {
	c.mu.Lock()
	run.done = true
	c.mu.Unlock()
	c.Wake()
}

// runRelease creates and starts the release container of rel with the
// app's env (its secrets opened as for an instance) and the release's
// over it, then waits for it. A failure before it runs ends the release
// failed, with the cause.
func (c *Controller) runRelease(ctx context.Context, l store.Lease, run *releaseRun, app store.App, rel store.Release) {
	s := *app.Spec
	s.Default()
	log := c.logger.With(zap.String(logging.KeyApp, app.Name), zap.Int64("generation", rel.Generation))
	fail := func(reason string) { c.endRelease(ctx, l, rel, nil, reason, nil) }
	env, err := c.cfg.Secrets.Env(app.Name, s.Env)
	if err != nil {
		fail(fmt.Sprintf("release task not started: its env secrets do not open: %v", err))
		return
	}
	env = c.cfg.Env.Env(env, c.cfg.Environ)
	maps.Copy(env, s.Release.Env)
	present, err := c.deps.Images.ImagePresent(ctx, rel.Host, s.Image)
	if err == nil && !present {
		log.Info("pulling image for the release task", zap.String("image", s.Image))
		err = c.deps.Images.Pull(ctx, rel.Host, s.Image, c.cfg.PullTimeout)
	}
	if err != nil {
		if ctx.Err() != nil {
			return // leadership ended: the next leader finds it running, without a container, and records it lost
		}
		fail(fmt.Sprintf("release task not started: image %s is not present and pulling it failed: %v", s.Image, err))
		return
	}
	cpu, mem := Limits(&s, c.cfg.DefaultCPU, c.cfg.DefaultMemory)
	sctx, cancel := context.WithTimeout(ctx, c.cfg.StartTimeout)
	defer cancel()
	cid, err := c.deps.Runtime.Create(sctx, docker.CreateOptions{Host: rel.Host, App: app.Name, Instance: docker.ReleaseInstance(rel.Generation),
		Generation: rel.Generation, SpecHash: c.SpecHash(app), Term: l.Term, Image: s.Image, Command: s.Release.Command, Env: env,
		Port: s.Port, CPU: cpu, Memory: mem, Pids: s.Resources.Pids, StopSignal: s.Stop.Signal, StopGrace: s.Stop.Grace.Std(), Logging: s.Logging, Release: true})
	if err != nil {
		if ctx.Err() != nil {
			return
		}
		fail(fmt.Sprintf("release task not started: cannot create its container: %v", err))
		return
	}
	rel.ContainerID = cid
	c.mu.Lock()
	run.container = cid
	c.mu.Unlock()
	switch ok, err := c.deps.Releases.WatchRelease(ctx, l, rel.App, rel.Generation, cid); {
	case err != nil:
		// The lease is lost, or Postgres did not answer: the container
		// stays created, never started; whoever plans next finds it by
		// its labels and records the release lost.
		log.Warn("release container not recorded: not starting it", zap.Error(err))
		return
	case !ok:
		_ = c.deps.Runtime.Remove(ctx, cid) // the release ended meanwhile
		return
	}
	if err := c.deps.Runtime.Start(sctx, cid); err != nil {
		if ctx.Err() != nil {
			return
		}
		_ = c.deps.Runtime.Remove(ctx, cid)
		fail(fmt.Sprintf("release task not started: cannot start its container: %v", err))
		return
	}
	cancel()
	log.Info("release task started", zap.String(logging.KeyContainer, docker.ShortID(cid)), zap.String("host", rel.Host))
	c.awaitRelease(ctx, l, run, rel, s.Release.Timeout.Std(), time.Now())
}

// adoptRelease waits on a running release an earlier leader began: its
// container is never started again. It reports whether it adopted it.
func (c *Controller) adoptRelease(ctx context.Context, l store.Lease, a reconcile.Action, w world) (bool, error) {
	run, ok := c.claimRelease(a.App, a.Generation, a.ContainerID)
	if !ok {
		return false, nil
	}
	unclaim := func() {
		c.mu.Lock()
		delete(c.releases, releaseKey(a.App, a.Generation))
		c.mu.Unlock()
	}
	if ok, err := c.deps.Releases.WatchRelease(ctx, l, a.App, a.Generation, a.ContainerID); err != nil || !ok {
		unclaim()
		return false, err
	}
	rel := store.Release{App: a.App, Generation: a.Generation, SpecHash: w.in.Apps[a.App].ReleaseHash, Host: a.Host, ContainerID: a.ContainerID}
	for _, r := range w.in.Releases {
		if r.App == a.App && r.Generation == a.Generation {
			rel.SpecHash = r.SpecHash
		}
	}
	// The spec's timeout, or the default where the block went meanwhile.
	timeout := spec.DefaultReleaseTimeout
	if app, ok := w.apps[a.App]; ok && app.Spec != nil && app.Spec.Release != nil {
		timeout = app.Spec.Release.Timeout.Std()
	}
	c.logger.Info("adopting a release task an earlier leader started", zap.String(logging.KeyApp, a.App), zap.Int64("generation", a.Generation),
		zap.String(logging.KeyContainer, docker.ShortID(a.ContainerID)), zap.String("host", a.Host))
	c.releaseRuns.Go(func() {
		defer c.releaseDone(run)
		c.awaitRelease(ctx, l, run, rel, timeout, time.Time{})
	})
	return true, nil
}

// awaitRelease waits for a release container to exit, on its die event or
// every ReleasePoll, and records how it ended: exit 0 succeeded, any other
// code failed, with its last lines. Past timeout (counted from started,
// or from when Docker started it) it is killed and fails. A container
// that vanished, or that was created and never started (its leader died
// between the two), is lost: it is never started again. When ctx ends (the
// leadership), it returns without a record: the next leader adopts it.
func (c *Controller) awaitRelease(ctx context.Context, l store.Lease, run *releaseRun, rel store.Release, timeout time.Duration, started time.Time) {
	poll := c.cfg.ReleasePoll
	if poll <= 0 {
		poll = defaultReleasePoll
	}
	tick := time.NewTicker(poll)
	defer tick.Stop()
	var deadline <-chan time.Time
	for {
		ct, err := c.deps.Containers.Inspect(ctx, rel.ContainerID)
		switch {
		case ctx.Err() != nil:
			return
		case errors.Is(err, docker.ErrNotFound):
			c.endRelease(ctx, l, rel, nil, "release container lost: it no longer exists", nil)
			return
		case err != nil:
			c.logger.Warn("inspect a release container", zap.String(logging.KeyApp, rel.App), zap.Error(err))
		case ct.State == "created":
			c.endRelease(ctx, l, rel, nil, "release container lost: it was created and never started (its leader stopped between the two); it is not started now, so that it never runs twice", nil)
			return
		case !ct.Running:
			code := ct.ExitCode
			reason := fmt.Sprintf("release task exited with code %d", code)
			if ct.OOMKilled {
				reason += " (OOMKilled: consider raising resources.memory)"
			}
			c.endRelease(ctx, l, rel, &code, reason, c.tail(ctx, rel.ContainerID))
			return
		}
		if deadline == nil && timeout > 0 {
			if started.IsZero() && err == nil {
				started = ct.StartedAt
			}
			if started.IsZero() {
				started = time.Now()
			}
			t := time.NewTimer(time.Until(started.Add(timeout)))
			defer t.Stop()
			deadline = t.C
		}
		select {
		case <-ctx.Done():
			return
		case <-run.died:
		case <-tick.C:
		case <-deadline:
			c.timeoutRelease(ctx, l, rel, timeout)
			return
		}
	}
}

// timeoutRelease kills a release container that ran past its timeout and
// records the release failed.
func (c *Controller) timeoutRelease(ctx context.Context, l store.Lease, rel store.Release, timeout time.Duration) {
	sctx, cancel := context.WithTimeout(ctx, c.stopTimeout(0))
	err := c.deps.Runtime.Stop(sctx, rel.ContainerID, "SIGKILL", 0)
	cancel()
	if err != nil && !errors.Is(err, docker.ErrNotFound) {
		c.logger.Warn("kill a release container past its timeout", zap.String(logging.KeyApp, rel.App), zap.Error(err))
	}
	c.endRelease(ctx, l, rel, nil, fmt.Sprintf("release task timed out after %s (release.timeout): its container was killed", timeout), c.tail(ctx, rel.ContainerID))
}

// endRelease records a release's end, once (succeeded for exit code 0),
// with its event, then removes its container.
func (c *Controller) endRelease(ctx context.Context, l store.Lease, rel store.Release, code *int, reason string, tail []string) {
	rel.State = store.ReleaseFailed
	kind, extra := msg.EventReleaseFailed, map[string]string{"reason": msg.Truncate(reason, 512)}
	message := fmt.Sprintf("release task of generation %d failed: %s; no instance of it starts, the instances before keep serving", rel.Generation, reason)
	if code != nil {
		extra["exit_code"] = fmt.Sprint(*code)
		if *code == 0 {
			rel.State, kind, reason = store.ReleaseSucceeded, msg.EventReleaseSucceeded, ""
			delete(extra, "reason")
			message = fmt.Sprintf("release task of generation %d exited 0: its rollout starts", rel.Generation)
		}
	}
	rel.ExitCode, rel.Reason = code, reason
	ev := releaseEvent(kind, rel, message, extra)
	ev.LogTail = tail
	log := c.logger.With(zap.String(logging.KeyApp, rel.App), zap.Int64("generation", rel.Generation))
	ended, err := c.deps.Releases.EndRelease(ctx, l, rel, ev)
	switch {
	case err != nil:
		log.Warn("release end not recorded: the next leader reads it again", zap.Error(err))
		return
	case !ended:
		log.Info("release already ended elsewhere")
	case rel.State == store.ReleaseFailed:
		log.Warn("release task failed", zap.String("reason", reason))
	default:
		log.Info("release task succeeded")
	}
	if rel.ContainerID != "" {
		if err := c.deps.Runtime.Remove(ctx, rel.ContainerID); err != nil && !errors.Is(err, docker.ErrNotFound) {
			log.Warn("remove a release container", zap.Error(err))
		}
	}
}

// loseRelease records a running release failed whose container is gone.
func (c *Controller) loseRelease(ctx context.Context, l store.Lease, a reconcile.Action, w world) error {
	rel := store.Release{App: a.App, Generation: a.Generation, Host: a.Host, ContainerID: a.ContainerID, State: store.ReleaseFailed, Reason: a.Reason}
	for _, r := range w.in.Releases {
		if r.App == a.App && r.Generation == a.Generation {
			rel.SpecHash = r.SpecHash
		}
	}
	_, err := c.deps.Releases.EndRelease(ctx, l, rel, releaseEvent(msg.EventReleaseFailed, rel,
		fmt.Sprintf("release task of generation %d failed: %s; it is never started again for the generation, no instance of it starts", a.Generation, a.Reason),
		map[string]string{"reason": msg.Truncate(a.Reason, 512)}))
	return err
}
