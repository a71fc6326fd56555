package controller

import (
	"cmp"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"maps"
	"sync"
	"time"

	"go.uber.org/zap"

	"github.com/berthhq/berth/common/logging"
	"github.com/berthhq/berth/common/msg"
	"github.com/berthhq/berth/common/spec"
	"github.com/berthhq/berth/scheduler/internal/docker"
	"github.com/berthhq/berth/scheduler/internal/image"
	"github.com/berthhq/berth/scheduler/internal/reconcile"
	"github.com/berthhq/berth/scheduler/internal/store"
)

// cycle observes, plans and acts once. It returns when to plan again at
// the latest and how many actions changed the state.
func (c *Controller) cycle(ctx context.Context, l store.Lease) (time.Time, int, error) {
	now := time.Now()
	w, err := c.observe(ctx, l, now)
	if err != nil {
		return time.Time{}, 0, err
	}
	if len(w.health) > 0 {
		if err := c.deps.Records.SetHealth(ctx, l, w.health); err != nil {
			return time.Time{}, 0, err
		}
	}
	c.metrics.observeApps(w.in)
	plan := reconcile.Plan(w.in)
	draining := 0
	for _, o := range w.in.Instances {
		if o.State == msg.StateDraining {
			draining++
		}
	}
	c.mu.Lock()
	c.draining = draining
	for id := range c.removing {
		if _, ok := w.records[id]; !ok {
			delete(c.removing, id) // removed, and observed so
		}
	}
	c.mu.Unlock()
	if ce := c.logger.Check(zap.DebugLevel, "planned"); ce != nil {
		obs := make([]string, 0, len(w.in.Instances))
		for _, o := range w.in.Instances {
			obs = append(obs, fmt.Sprintf("%s:%s:run=%t:gone=%t:%s:drained=%t", o.ID, o.State, o.ContainerRunning, o.ContainerGone, o.Health, o.Drained))
		}
		ce.Write(zap.Strings("observed", obs), zap.Int("orphans", len(w.in.Orphans)), zap.Stringers("plan", plan.Actions), zap.Time("wake", plan.Wake))
	}
	acted, err := c.act(ctx, l, w, plan.Actions)
	return plan.Wake, acted, err
}

// act carries out a plan's actions: removals beside the loop, the rest
// with bounded parallelism. It returns how many changed the state.
func (c *Controller) act(ctx context.Context, l store.Lease, w world, actions []reconcile.Action) (int, error) {
	var (
		wg   sync.WaitGroup
		mu   sync.Mutex
		errs []error
	)
	sem := make(chan struct{}, max(c.cfg.MaxParallel, 1))
	acted := 0
	p := c.place(ctx, l, w, actions)
	for i, a := range actions {
		host := ""
		switch a.Kind {
		case reconcile.Hold, reconcile.TripBreaker, reconcile.FailRollout:
			// A report, not a change of state.
		case reconcile.Start:
			h, ok := p.starts[i]
			if !ok {
				continue // unplaceable: reported by place
			}
			host = h
			acted++
		case reconcile.Remove:
			if c.startRemoval(ctx, l, a, w.apps[a.App], w.records[a.Instance]) {
				acted++
			}
			continue
		case reconcile.RunRelease, reconcile.AdoptRelease:
			// Begun here, waited on beside the loop: a release never
			// holds a cycle.
			began, err := c.beginRelease(ctx, l, a, w, p, i)
			if err != nil {
				mu.Lock()
				errs = append(errs, fmt.Errorf("%s: %w", a, err))
				mu.Unlock()
			}
			if began {
				acted++
			}
			continue
		default:
			acted++
		}
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			err := c.do(ctx, l, a, w, host, p)
			c.metrics.action(a.Kind, err)
			if err != nil {
				mu.Lock()
				errs = append(errs, fmt.Errorf("%s: %w", a, err))
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	return acted, errors.Join(errs...)
}

// do carries out one action; host is a Start's.
func (c *Controller) do(ctx context.Context, l store.Lease, a reconcile.Action, w world, host string, p placed) error {
	app, rec := w.apps[a.App], w.records[a.Instance]
	switch a.Kind {
	case reconcile.Start:
		return c.start(ctx, l, app, w.in.Apps[a.App].SpecHash, host, c.succession(a, p, w))
	case reconcile.Stop, reconcile.Migrate:
		return c.drain(ctx, l, rec, a.Reason)
	case reconcile.Replace:
		return c.replace(ctx, l, a, rec, p)
	case reconcile.Lost:
		return c.lose(ctx, l, a, rec, p)
	case reconcile.Forget:
		c.logger.Info("forgetting an instance lost with its host", zap.String(logging.KeyApp, a.App), zap.String(logging.KeyInstance, a.Instance),
			zap.String("host", a.Host), zap.String("reason", a.Reason))
		return c.deps.Records.Delete(ctx, l, rec)
	case reconcile.Adopt:
		return c.adopt(ctx, l, a)
	case reconcile.RemoveOrphan:
		c.logger.Info("removing orphan container", zap.String(logging.KeyApp, a.App), zap.String(logging.KeyContainer, docker.ShortID(a.ContainerID)))
		if err := c.deps.Runtime.Remove(ctx, a.ContainerID); err != nil && !errors.Is(err, docker.ErrNotFound) {
			return err
		}
		return nil
	case reconcile.LoseRelease:
		return c.loseRelease(ctx, l, a, w)
	case reconcile.TripBreaker:
		if !c.seen.report(a.App, w.in.Apps[a.App].BackoffMax, time.Now()) {
			return nil
		}
		return c.deps.Records.Event(ctx, l, store.Event{App: a.App, Kind: msg.EventAppFailed, Message: "app " + a.App + " is crash-looping: " + a.Reason,
			Details: map[string]string{"generation": fmt.Sprint(a.Generation), "until": a.Until.UTC().Format(time.RFC3339), "reason": msg.Truncate(a.Reason, 512)}})
	case reconcile.Hold:
		return nil
	case reconcile.RollBack:
		return c.rollback(ctx, l, a, app, rec)
	case reconcile.FailRollout:
		return c.failRollout(ctx, l, a, w.in.Apps[a.App].SpecHash, rec)
	}
	return fmt.Errorf("unknown action %s", a.Kind)
}

// replace removes the container and the record of an instance that died,
// vanished or stayed unhealthy on a host that answers. A container that
// stopped by itself first gets an instance_exited event: its exit code,
// whether it was OOM-killed, and its last log lines. Its successor starts
// beside it and, once running, records instance_replaced; without one (no
// host can take it, or the plan holds it back), an instance_failed event
// says now what its replacement waits for.
func (c *Controller) replace(ctx context.Context, l store.Lease, a reconcile.Action, rec store.Instance, p placed) error {
	var exited []store.Event
	if a.Exited {
		exited = append(exited, c.exited(ctx, a, rec))
	}
	if a.ContainerID != "" {
		if err := c.deps.Runtime.Remove(ctx, a.ContainerID); err != nil && !errors.Is(err, docker.ErrNotFound) {
			c.logger.Warn("remove a dead container", zap.String(logging.KeyContainer, docker.ShortID(a.ContainerID)), zap.Error(err))
		}
	}
	if _, ok := p.successor[a.Instance]; ok {
		return c.deps.Records.Delete(ctx, l, rec, exited...)
	}
	wait := a.Wait
	if wait == "" {
		wait = "its replacement waits for a host: " + cmp.Or(p.unplaceable[a.App], "none could be placed")
	}
	d := failureDetails(rec, a.Reason)
	if a.Exited {
		c.exitDetails(d, a.ContainerID)
	}
	return c.deps.Records.Delete(ctx, l, rec, append(exited, store.Event{App: a.App, Instance: a.Instance, Kind: msg.EventInstanceFailed,
		Message: fmt.Sprintf("instance %s failed: %s; %s", a.Instance, a.Reason, wait), Details: d})...)
}

// exitDetails adds what Docker reported of a dead container (its die
// event) to a failure's details: the exit code, and an OOM kill.
func (c *Controller) exitDetails(d map[string]string, container string) {
	oom, code, ok := c.seen.exited(container)
	if ok {
		d["exit_code"] = fmt.Sprint(code)
	}
	if oom {
		d["oom_killed"] = "true"
	}
}

// exited is the instance_exited event of a container that stopped by
// itself: how it ended, and what it wrote last.
func (c *Controller) exited(ctx context.Context, a reconcile.Action, rec store.Instance) store.Event {
	d := failureDetails(rec, a.Reason)
	c.exitDetails(d, a.ContainerID)
	if d["oom_killed"] == "" && (d["exit_code"] == "" || d["exit_code"] == "137") {
		// Docker's state may say OOMKilled only a moment after the die
		// event (it handles the exit and the oom event apart): ask again.
		ictx, cancel := context.WithTimeout(ctx, inspectDeadTimeout)
		if ct, err := c.deps.Containers.Inspect(ictx, a.ContainerID); err == nil && !ct.Running {
			d["exit_code"] = fmt.Sprint(ct.ExitCode)
			if ct.OOMKilled {
				d["oom_killed"] = "true"
			}
		}
		cancel()
	}
	reason := a.Reason
	if d["oom_killed"] != "" {
		reason = reconcile.OOMReason
		d["reason"] = reason
	}
	return store.Event{App: a.App, Instance: a.Instance, Kind: msg.EventInstanceExited, Message: fmt.Sprintf("instance %s exited: %s", a.Instance, reason),
		Details: d, LogTail: c.tail(ctx, a.ContainerID)}
}

// failureDetails are what the restart budget and status read of a failed
// instance: its host, generation, spec and why.
func failureDetails(rec store.Instance, reason string) map[string]string {
	return map[string]string{"host": rec.Host, "generation": fmt.Sprint(rec.Generation), "spec_hash": rec.SpecHash, "reason": msg.Truncate(reason, 512)}
}

// tailLines is how many of a failed container's last lines its event keeps.
const tailLines = 20

// tailTimeout bounds reading them: a host that does not answer costs the
// event its tail, never the replacement.
const tailTimeout = 3 * time.Second

// tail returns a container's last lines, or nil when they cannot be read.
func (c *Controller) tail(ctx context.Context, container string) []string {
	if c.deps.Logs == nil || container == "" {
		return nil
	}
	tctx, cancel := context.WithTimeout(ctx, tailTimeout)
	defer cancel()
	lines, err := c.deps.Logs.Tail(tctx, container, tailLines)
	if err != nil {
		c.logger.Debug("no log tail for a failed container", zap.String(logging.KeyContainer, docker.ShortID(container)), zap.Error(err))
		return nil
	}
	return lines
}

// lose records an instance lost with its host: failed (out of every
// nginx), its record kept with its host while it may still run there,
// and an instance_lost event saying whether a replacement starts, and
// where, or what it waits for. A host's loss is no crash of the app: it
// spends none of the restart budget.
func (c *Controller) lose(ctx context.Context, l store.Lease, a reconcile.Action, rec store.Instance, p placed) error {
	next := a.Wait
	switch host, ok := p.successor[a.Instance]; {
	case ok:
		next = "a replacement starts" + onHost(host)
	case next == "":
		next = "its replacement waits for a host: " + cmp.Or(p.unplaceable[a.App], "none could be placed")
	}
	rec.State = msg.StateFailed
	if err := c.deps.Records.Put(ctx, l, rec, store.Event{App: a.App, Instance: a.Instance, Kind: msg.EventInstanceLost,
		Message: fmt.Sprintf("instance %s lost: %s; %s", a.Instance, a.Reason, next), Details: map[string]string{"host": a.Host}}); err != nil {
		return err
	}
	return c.deps.Routing.Unpublish(ctx, a.App, a.Instance)
}

// succession is the instance_replaced event a successor records once it
// runs; nil for a start that replaces nothing. An instance lost with its
// host (down, or not answering) is replaced for the host's loss, not for
// a crash of the app: its event says so (cause host_lost), and the
// restart budget does not count it.
func (c *Controller) succession(a reconcile.Action, p placed, w world) *store.Event {
	if a.Replaces == "" {
		return nil
	}
	pred := p.predecessors[a.Replaces]
	d := failureDetails(w.records[a.Replaces], pred.Reason)
	d["host"] = pred.Host
	if pred.Exited {
		c.exitDetails(d, pred.ContainerID)
	}
	ev := &store.Event{App: a.App, Instance: a.Replaces, Kind: msg.EventInstanceReplaced, Message: "instance " + a.Replaces + " replaced: " + pred.Reason, Details: d}
	if pred.Kind == reconcile.Lost {
		ev.Details["cause"] = "host_lost"
	}
	return ev
}

// start creates, starts and records a new instance on host. A successor
// records replaced, naming itself, once it runs; a failure to start says
// what it was to replace.
func (c *Controller) start(ctx context.Context, l store.Lease, app store.App, hash, host string, replaced *store.Event) error {
	s := *app.Spec
	s.Default()
	id := newID()
	log := c.logger.With(zap.String(logging.KeyApp, app.Name), zap.String(logging.KeyInstance, id))
	if host != "" {
		log = log.With(zap.String("host", host))
	}
	rec := store.Instance{ID: id, App: app.Name, Generation: app.Generation, State: msg.StateCreating, Health: msg.StatusUnknown, SpecHash: hash, Host: host}
	if err := c.deps.Records.Put(ctx, l, rec); err != nil {
		return err
	}
	fail := func(kind msg.EventKind, message string) error {
		d := failureDetails(rec, message)
		if replaced != nil {
			message += fmt.Sprintf(" (it was to replace instance %s: %s)", replaced.Instance, replaced.Details["reason"])
		}
		return c.deps.Records.Delete(ctx, l, rec, store.Event{App: app.Name, Instance: id, Kind: kind, Message: message, Details: d})
	}
	// Secrets are opened here, on the leader, only to create the container.
	env, err := c.cfg.Secrets.Env(app.Name, s.Env)
	if err != nil {
		return fail(msg.EventInstanceCreateFailed, fmt.Sprintf("cannot start %s: its env secrets do not open: %v", app.Name, err))
	}
	// Every host runs the pinned ref: the same bytes everywhere.
	ref := cmp.Or(app.ImageRef, s.Image)
	present, err := c.deps.Images.ImagePresent(ctx, host, ref)
	if err != nil {
		return err
	}
	switch {
	case !present && image.IsID(ref):
		// No registry serves an image ID: never another image instead.
		log.Warn("the host lacks the pinned image", zap.String("image", s.Image), zap.String("image_id", ref))
		return c.failMissingID(ctx, l, rec, app, s.Image, ref, host, replaced)
	case !present:
		log.Info("pulling image", zap.String("image", ref))
		if err := c.deps.Images.Pull(ctx, host, ref, c.cfg.PullTimeout); err != nil {
			return fail(msg.EventImagePullFailed, fmt.Sprintf("cannot start %s: image %s is not present and pulling it failed: %v", app.Name, pinnedAs(s.Image, ref), err))
		}
	}
	cpu, mem := Limits(&s, c.cfg.DefaultCPU, c.cfg.DefaultMemory)
	sctx, cancel := context.WithTimeout(ctx, c.cfg.StartTimeout)
	defer cancel()
	cid, err := c.deps.Runtime.Create(sctx, docker.CreateOptions{Host: host, App: app.Name, Instance: id, Generation: app.Generation, SpecHash: hash, Term: l.Term,
		Image: ref, Command: s.Command, Env: c.cfg.Env.Env(env, c.cfg.Environ), Port: s.Port, CPU: cpu, Memory: mem, Pids: s.Resources.Pids,
		StopSignal: s.Stop.Signal, StopGrace: s.Stop.Grace.Std(), Logging: s.Logging, Health: reconcile.DockerHealth(&s)})
	if err != nil {
		return fail(msg.EventInstanceCreateFailed, fmt.Sprintf("cannot create a container for %s: %v", app.Name, err))
	}
	rec.ContainerID, rec.State = cid, msg.StateStarting
	if err := c.deps.Runtime.Start(sctx, cid); err != nil {
		_ = c.deps.Runtime.Remove(ctx, cid)
		return fail(msg.EventInstanceStartFailed, fmt.Sprintf("cannot start a container for %s: %v", app.Name, err))
	}
	ct, err := c.deps.Containers.Inspect(sctx, cid)
	if ae := (*docker.AddressError)(nil); errors.As(err, &ae) {
		c.refuseAddress(ctx, ae, app.Name, id)
		return c.deps.Records.Delete(ctx, l, rec, store.Event{App: app.Name, Instance: id, Kind: msg.EventInstanceAddressRefused,
			Message: refusedMessage(ae, app.Name, id), Details: refusedDetails(ae)})
	}
	if err != nil {
		return err
	}
	now := time.Now()
	rec.Address, rec.State, rec.StartedAt = ct.Address, msg.StateRunning, &now
	events := []store.Event{{App: app.Name, Instance: id, Kind: msg.EventInstanceStarted,
		Message: fmt.Sprintf("instance %s started at %s%s (generation %d)", id, ct.Address, onHost(host), app.Generation),
		Details: map[string]string{"container_id": docker.ShortID(cid), "address": ct.Address, "generation": fmt.Sprint(app.Generation), "host": host}}}
	if replaced != nil {
		ev := *replaced
		ev.Message += fmt.Sprintf("; replaced by instance %s at %s%s", id, ct.Address, onHost(host))
		ev.Details = maps.Clone(ev.Details)
		ev.Details["by"], ev.Details["by_host"] = id, host
		events = append(events, ev)
	}
	return c.deps.Records.Put(ctx, l, rec, events...)
}

// failMissingID records a start on a host that lacks the image ID the
// app's image is pinned to (an image only the engines held at apply): an
// image_pull_failed naming the host and the ID, which status shows.
func (c *Controller) failMissingID(ctx context.Context, l store.Lease, rec store.Instance, app store.App, name, id, host string, replaced *store.Event) error {
	message := fmt.Sprintf("cannot start %s%s: image %s is pinned to the image ID %s, which %s lacks (no registry serves an image ID): "+
		"load that image there (docker save | docker -H … load), or push it to a registry and apply again", app.Name, onHost(host), name, id, hostOrLocal(host))
	d := failureDetails(rec, message)
	d["host"], d["image_id"] = host, id
	if replaced != nil {
		message += fmt.Sprintf(" (it was to replace instance %s: %s)", replaced.Instance, replaced.Details["reason"])
	}
	return c.deps.Records.Delete(ctx, l, rec, store.Event{App: app.Name, Instance: rec.ID, Kind: msg.EventImagePullFailed, Message: message, Details: d})
}

// pinnedAs names an image and what it is pinned to.
func pinnedAs(name, ref string) string {
	if ref == name {
		return name
	}
	return name + " (pinned to " + ref + ")"
}

func hostOrLocal(host string) string {
	if host == "" {
		return "the local engine"
	}
	return "host " + host
}

// refuseAddress logs an instance whose engine reported an address that is
// not its host's, and removes its container: nginx never proxies there,
// nor healthd probes it.
func (c *Controller) refuseAddress(ctx context.Context, ae *docker.AddressError, app, instance string) {
	c.logger.Warn("instance refused: its engine reported an address that is not its host's", zap.String("host", ae.Host),
		zap.String(logging.KeyApp, app), zap.String(logging.KeyInstance, instance), zap.String("address", ae.Address),
		zap.String(logging.KeyContainer, docker.ShortID(ae.Container)), zap.String("reason", ae.Reason))
	if err := c.deps.Runtime.Remove(ctx, ae.Container); err != nil && !errors.Is(err, docker.ErrNotFound) {
		c.logger.Warn("remove the container of a refused instance", zap.String(logging.KeyContainer, docker.ShortID(ae.Container)), zap.Error(err))
	}
}

func refusedMessage(ae *docker.AddressError, app, instance string) string {
	return fmt.Sprintf("instance %s of %s refused%s: its engine reported the address %s, which is not its host's (%s); "+
		"nothing routes to it. An engine that names another machine is broken or compromised: check it", instance, app, onHost(ae.Host), ae.Address, ae.Reason)
}

func refusedDetails(ae *docker.AddressError) map[string]string {
	return map[string]string{"host": ae.Host, "address": ae.Address, "container_id": docker.ShortID(ae.Container)}
}

// onHost names a registered host in a message ("" for the local engine).
func onHost(host string) string {
	if host == "" {
		return ""
	}
	return " on host " + host
}

// adopt records a running container an earlier leader left as an instance.
func (c *Controller) adopt(ctx context.Context, l store.Lease, a reconcile.Action) error {
	ct, err := c.deps.Containers.Inspect(ctx, a.ContainerID)
	if ae := (*docker.AddressError)(nil); errors.As(err, &ae) {
		c.refuseAddress(ctx, ae, a.App, a.Instance)
		return c.deps.Records.Event(ctx, l, store.Event{App: a.App, Instance: a.Instance, Kind: msg.EventInstanceAddressRefused,
			Message: refusedMessage(ae, a.App, a.Instance) + "; its container is removed, not adopted", Details: refusedDetails(ae)})
	}
	if err != nil {
		return err
	}
	now := time.Now()
	rec := store.Instance{ID: a.Instance, App: a.App, Generation: ct.Generation, ContainerID: ct.ID, Address: ct.Address,
		State: msg.StateRunning, Health: msg.StatusUnknown, SpecHash: ct.SpecHash, StartedAt: &now, Host: ct.Host}
	return c.deps.Records.Put(ctx, l, rec, store.Event{App: a.App, Instance: a.Instance, Kind: msg.EventInstanceAdopted,
		Message: "adopted running container " + docker.ShortID(ct.ID) + ": " + a.Reason})
}

// drain takes an instance out of nginx: it becomes draining, and the
// planner removes it once every lbagent confirmed, or the drain time is up.
func (c *Controller) drain(ctx context.Context, l store.Lease, rec store.Instance, reason string) error {
	rec.State = msg.StateDraining
	return c.deps.Records.Put(ctx, l, rec, store.Event{App: rec.App, Instance: rec.ID, Kind: msg.EventInstanceDraining,
		Message: "instance " + rec.ID + " draining: " + reason})
}

// startRemoval stops and removes a drained instance beside the loop (the
// spec's grace can be long), unless its removal is already in flight. It
// reports whether it started one.
func (c *Controller) startRemoval(ctx context.Context, l store.Lease, a reconcile.Action, app store.App, rec store.Instance) bool {
	c.mu.Lock()
	if c.removing[a.Instance] {
		c.mu.Unlock()
		return false
	}
	c.removing[a.Instance] = true
	c.mu.Unlock()
	c.removals.Go(func() {
		err := c.remove(ctx, l, app, rec, a.Reason)
		c.metrics.action(a.Kind, err)
		if err != nil && ctx.Err() == nil {
			c.logger.Warn("remove failed, retrying at the next cycle", zap.String(logging.KeyApp, rec.App), zap.String(logging.KeyInstance, rec.ID), zap.Error(err))
		}
		if err != nil {
			// Retry at the next cycle. After a success the entry stays until
			// a cycle no longer observes the record: a cycle that observed
			// it just before the removal ended must not remove it twice.
			c.mu.Lock()
			delete(c.removing, a.Instance)
			c.mu.Unlock()
		}
		c.Wake()
	})
	return true
}

// remove stops a drained instance's container (its signal, then its
// grace), removes it, and deletes the record.
func (c *Controller) remove(ctx context.Context, l store.Lease, app store.App, rec store.Instance, reason string) error {
	grace, signal := 30*time.Second, "SIGTERM"
	if app.Spec != nil {
		s := *app.Spec
		s.Default()
		grace, signal = s.Stop.Grace.Std(), s.Stop.Signal
	}
	if rec.ContainerID != "" {
		sctx, cancel := context.WithTimeout(ctx, c.stopTimeout(grace))
		err := c.deps.Runtime.Stop(sctx, rec.ContainerID, signal, grace)
		cancel()
		if err != nil && !errors.Is(err, docker.ErrNotFound) {
			c.logger.Warn("stop failed, removing by force", zap.String(logging.KeyInstance, rec.ID), zap.Error(err))
		}
		if err := c.deps.Runtime.Remove(ctx, rec.ContainerID); err != nil && !errors.Is(err, docker.ErrNotFound) {
			return err
		}
	}
	return c.deps.Records.Delete(ctx, l, rec, store.Event{App: rec.App, Instance: rec.ID, Kind: msg.EventInstanceStopped,
		Message: "instance " + rec.ID + " stopped: " + reason})
}

// rollback restores the spec of the generation that serves after a
// failed rollout. Its event says why, with the last lines of the instance
// that decided it: the late one's own, or the newest that exited.
func (c *Controller) rollback(ctx context.Context, l store.Lease, a reconcile.Action, app store.App, late store.Instance) error {
	prev, err := c.deps.Desired.RollbackTo(ctx, a.App, a.Target)
	if err != nil {
		return fmt.Errorf("auto-rollback of %s: %w", a.App, err)
	}
	d := map[string]string{"from_generation": fmt.Sprint(a.Generation), "generation": fmt.Sprint(prev.Generation), "to_generation": fmt.Sprint(a.Target),
		"image": prev.Spec.Image, "cause": msg.Truncate(a.Reason, 512)}
	if app.Spec != nil {
		d["healthy_deadline"] = app.Spec.Update.HealthyDeadline.String()
	}
	return c.deps.Records.Event(ctx, l, store.Event{App: a.App, Instance: a.Instance, Kind: msg.EventRolloutRolledBack,
		Message: fmt.Sprintf("%s: rolled back to generation %d's spec as generation %d (image %s)", a.Reason, a.Target, prev.Generation, prev.Spec.Image),
		Details: d, LogTail: c.failedTail(ctx, a, late)})
}

// failRollout records a failed rollout without auto_rollback, once: the
// next plans read it back (FailedRollouts) and hold.
func (c *Controller) failRollout(ctx context.Context, l store.Lease, a reconcile.Action, hash string, late store.Instance) error {
	return c.deps.Records.Event(ctx, l, store.Event{App: a.App, Instance: a.Instance, Kind: msg.EventRolloutFailed,
		Message: a.Reason + ": the rollout stops; the instances of the generation before keep serving. Apply a fixed spec, or scheduler rollback",
		Details: map[string]string{"generation": fmt.Sprint(a.Generation), "spec_hash": hash, "cause": msg.Truncate(a.Reason, 512)},
		LogTail: c.failedTail(ctx, a, late)})
}

// failedTail is the log tail of a failed rollout: the late instance's
// container's, or the newest instance_exited's of its generation.
func (c *Controller) failedTail(ctx context.Context, a reconcile.Action, late store.Instance) []string {
	if late.ContainerID != "" {
		return c.tail(ctx, late.ContainerID)
	}
	tail, err := c.deps.Desired.LastLogTail(ctx, a.App, a.Generation)
	if err != nil {
		c.logger.Warn("no log tail for a failed rollout", zap.String(logging.KeyApp, a.App), zap.Error(err))
	}
	return tail
}

// stopTimeout bounds a stop: the flag, but never less than the grace plus
// a margin, so the spec's grace is always honoured.
func (c *Controller) stopTimeout(grace time.Duration) time.Duration {
	return max(c.cfg.StopTimeout, grace+10*time.Second)
}

// Limits are the CPU (cores) and memory (bytes) limits a container of s
// gets: the spec's, or the scheduler's defaults.
func Limits(s *spec.App, defaultCPU float64, defaultMemory int64) (cpu float64, mem int64) {
	cpu, mem = s.Resources.CPU, int64(s.Resources.Memory)
	if cpu == 0 {
		cpu = defaultCPU
	}
	if mem == 0 {
		mem = defaultMemory
	}
	return cpu, mem
}

const idAlphabet = "abcdefghijklmnopqrstuvwxyz0123456789"

// newID returns a random 8-character instance id.
func newID() string {
	b := make([]byte, 8)
	_, _ = rand.Read(b)
	for i := range b {
		b[i] = idAlphabet[int(b[i])%len(idAlphabet)]
	}
	return string(b)
}
