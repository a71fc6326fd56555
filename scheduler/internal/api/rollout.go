package api

import (
	"context"
	"fmt"
	"sort"
	"strconv"
	"time"

	"github.com/berthhq/berth/common/msg"
	"github.com/berthhq/berth/scheduler/internal/store"
)

// Rollout states, as GET /v1/apps/{name} shows them.
const (
	// RolloutComplete: every replica runs the desired spec and is healthy.
	RolloutComplete = "complete"
	// RolloutRolling: instances of another spec still run, or the desired
	// spec's are not all up and healthy yet.
	RolloutRolling = "rolling"
	// RolloutFailed: the desired generation's rollout failed without
	// auto_rollback; it stays stopped.
	RolloutFailed = "failed"
	// RolloutRolledBack: the desired generation is the rollback of a
	// failed rollout.
	RolloutRolledBack = "rolled_back"
	// RolloutReleasing: the desired generation's release task runs; its
	// instances start once it exits 0.
	RolloutReleasing = "releasing"
)

// RolloutView is the state of an app's desired generation: whether it
// serves yet, and why not.
type RolloutView struct {
	State      string `json:"state"`
	Generation int64  `json:"generation"`
	// Cause says why a rollout failed or was rolled back; for a rolled
	// back one, FromGeneration is the generation that failed.
	Cause          string    `json:"cause,omitempty"`
	FromGeneration int64     `json:"from_generation,omitempty"`
	At             time.Time `json:"at,omitzero"`
	// Starting are the desired spec's instances on their way (pending,
	// creating, starting, or running but not healthy yet); Earlier the
	// instances of other specs still pending or running, which the rollout
	// drains as the new ones serve.
	Starting int `json:"starting,omitempty"`
	Earlier  int `json:"earlier,omitempty"`
}

// ServingView is what actually serves: the running, healthy instances of
// one spec, with the newest generation they carry and its image.
type ServingView struct {
	Generation int64  `json:"generation"`
	Image      string `json:"image,omitempty"`
	Instances  int    `json:"instances"`
	// Desired says it is the desired spec.
	Desired bool `json:"desired"`
}

// BreakerView is an open restart breaker: nothing of the generation
// starts until Until.
type BreakerView struct {
	Generation int64     `json:"generation"`
	Until      time.Time `json:"until"`
	Reason     string    `json:"reason"`
}

// FailureView is the latest failure of one instance.
type FailureView struct {
	Instance   string        `json:"instance,omitempty"`
	Generation int64         `json:"generation,omitempty"`
	Kind       msg.EventKind `json:"kind"`
	Reason     string        `json:"reason"`
	ExitCode   *int          `json:"exit_code,omitempty"`
	OOMKilled  bool          `json:"oom_killed,omitempty"`
	// LastLine is the last line its container wrote, when it exited.
	LastLine string    `json:"last_line,omitempty"`
	At       time.Time `json:"at"`
}

// failureKinds are the events an instance fails by, and the rollout and
// breaker events that status reads.
var failureKinds = []msg.EventKind{msg.EventInstanceExited, msg.EventInstanceFailed, msg.EventImagePullFailed, msg.EventInstanceCreateFailed,
	msg.EventInstanceStartFailed, msg.EventInstanceAddressRefused, msg.EventRolloutRolledBack, msg.EventRolloutFailed, msg.EventAppFailed,
	msg.EventReleaseStarted, msg.EventReleaseSucceeded, msg.EventReleaseFailed}

// maxFailures caps the failures GET /v1/apps/{name} lists.
const maxFailures = 10

// statusEvents is how many of an app's newest failure events status reads.
const statusEvents = 100

// rolloutKinds are the events decideRollout reads: those that say how
// the desired generation's rollout and release went, and its breaker.
var rolloutKinds = []msg.EventKind{msg.EventRolloutRolledBack, msg.EventRolloutFailed, msg.EventAppFailed,
	msg.EventReleaseStarted, msg.EventReleaseSucceeded, msg.EventReleaseFailed}

// replicas is what an app's instance records say of its replicas. GET
// /v1/apps/{name}, the summary of GET /v1/apps?summary=true and Brief all
// count by it, so they never disagree.
type replicas struct {
	// observed are the running instances, except on a host recorded
	// down; lost those lost with their host (state failed).
	observed, lost int
	// healthy, unhealthy and unknown tally the health of the observed.
	healthy, unhealthy, unknown int
	// ready are the desired spec's instances running and healthy;
	// starting the desired spec's on their way (pending, creating,
	// starting, or running but not healthy yet); earlier the instances of
	// other specs still pending or running.
	ready, starting, earlier int
	// groups are what serves (running and healthy), by spec hash.
	groups map[string]*servingGroup
}

// servingGroup is the running, healthy instances of one spec.
type servingGroup struct {
	gen     int64
	n       int
	desired bool
}

// countReplicas counts insts, the instance records of app. hash is the
// desired spec's hash ("" when unknown: then instances are told apart by
// generation alone); down says which hosts are recorded down; serving
// asks for the serving groups too (the summary of every app leaves them,
// and their map an app, out).
func countReplicas(app store.App, insts []store.Instance, hash string, down map[string]bool, serving bool) replicas {
	desired := func(i store.Instance) bool {
		if hash == "" {
			return i.Generation == app.Generation
		}
		return i.SpecHash == hash
	}
	r := replicas{}
	if serving {
		r.groups = map[string]*servingGroup{}
	}
	for _, i := range insts {
		switch {
		case i.State == msg.StateRunning && !down[i.Host]:
			r.observed++
			switch i.Health {
			case msg.StatusHealthy:
				r.healthy++
			case msg.StatusUnhealthy:
				r.unhealthy++
			default:
				r.unknown++
			}
		case i.State == msg.StateFailed:
			r.lost++
		}
		active := i.State == msg.StatePending || i.State == msg.StateCreating || i.State == msg.StateStarting || i.State == msg.StateRunning
		healthy := i.State == msg.StateRunning && i.Health == msg.StatusHealthy
		switch {
		case active && !desired(i):
			r.earlier++
		case active && !healthy:
			r.starting++
		}
		if !healthy {
			continue
		}
		if desired(i) {
			r.ready++
		}
		if !serving {
			continue
		}
		g := r.groups[i.SpecHash]
		if g == nil {
			g = &servingGroup{desired: desired(i)}
			r.groups[i.SpecHash] = g
		}
		g.n++
		g.gen = max(g.gen, i.Generation)
	}
	return r
}

// serving lists r's serving groups, newest generation first, with the
// image of each generation that images names.
func (r replicas) serving(images map[int64]string) []ServingView {
	var out []ServingView
	for _, g := range r.groups {
		out = append(out, ServingView{Generation: g.gen, Image: images[g.gen], Instances: g.n, Desired: g.desired})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Generation > out[j].Generation })
	return out
}

// decideRollout is the state of app's desired generation, and its open
// breaker, from its replicas r and its newest events evs (newest first;
// only rolloutKinds at app's generation count, others are skipped).
func decideRollout(app store.App, r replicas, evs []store.Event, now time.Time) (*RolloutView, *BreakerView) {
	ro := &RolloutView{State: RolloutComplete, Generation: app.Generation, Starting: r.starting, Earlier: r.earlier}
	if r.earlier > 0 || r.ready < app.DesiredReplicas {
		ro.State = RolloutRolling
	}
	var br *BreakerView
	released := false       // the desired generation's release ended
	for _, e := range evs { // newest first
		gen := detailInt(e.Details, "generation")
		switch {
		case (e.Kind == msg.EventReleaseSucceeded || e.Kind == msg.EventReleaseFailed) && gen == app.Generation:
			released = true
		case e.Kind == msg.EventReleaseStarted && gen == app.Generation && !released && ro.Cause == "" && ro.State == RolloutRolling:
			ro.State, ro.At = RolloutReleasing, e.At
		case e.Kind == msg.EventRolloutRolledBack && gen == app.Generation && ro.Cause == "":
			ro.State, ro.Cause, ro.FromGeneration, ro.At = RolloutRolledBack, e.Details["cause"], detailInt(e.Details, "from_generation"), e.At
			if ro.Cause == "" {
				ro.Cause = e.Message
			}
		case e.Kind == msg.EventRolloutFailed && gen == app.Generation && ro.Cause == "":
			ro.State, ro.Cause, ro.At = RolloutFailed, e.Details["cause"], e.At
		case e.Kind == msg.EventAppFailed && gen == app.Generation && br == nil:
			if until, err := time.Parse(time.RFC3339, e.Details["until"]); err == nil && until.After(now) {
				br = &BreakerView{Generation: gen, Until: until, Reason: e.Details["reason"]}
			}
		}
	}
	return ro, br
}

// rollout fills v's rollout, serving, breaker and failures from the
// app's replicas r and its newest failure events. logs says the caller
// may read the app's logs (each failure's last line).
func (a *api) rollout(ctx context.Context, v *AppView, app store.App, r replicas, logs bool, now time.Time) error {
	evs, err := a.d.Events.LatestEvents(ctx, app.Name, failureKinds, statusEvents)
	if err != nil {
		return err
	}
	gens := make([]int64, 0, len(r.groups))
	for _, g := range r.groups {
		gens = append(gens, g.gen)
	}
	// The image of each serving generation, read for those alone.
	images, err := a.d.History.Images(ctx, app.Name, gens)
	if err != nil {
		images = nil // status goes on without them
	}
	v.Serving = r.serving(images)
	v.Rollout, v.Breaker = decideRollout(app, r, evs, now)
	seen := map[string]bool{}
	for _, e := range evs {
		switch e.Kind {
		case msg.EventRolloutRolledBack, msg.EventRolloutFailed, msg.EventAppFailed, msg.EventReleaseStarted, msg.EventReleaseSucceeded:
			continue
		}
		if len(v.Failures) == maxFailures || seen[e.Instance] {
			continue
		}
		seen[e.Instance] = true
		f := FailureView{Instance: e.Instance, Generation: detailInt(e.Details, "generation"), Kind: e.Kind, Reason: e.Details["reason"], At: e.At,
			OOMKilled: e.Details["oom_killed"] == "true"}
		if f.Reason == "" {
			f.Reason = e.Message
		}
		if c, err := strconv.Atoi(e.Details["exit_code"]); err == nil {
			f.ExitCode = &c
		}
		if n := len(e.LogTail); n > 0 && logs {
			f.LastLine = e.LogTail[n-1]
		}
		v.Failures = append(v.Failures, f)
	}
	return nil
}

// detailInt reads a whole number from an event's details; 0 when absent.
func detailInt(d map[string]string, key string) int64 {
	n, _ := strconv.ParseInt(d[key], 10, 64)
	return n
}

// String renders a failure on one line, as status prints it.
func (f FailureView) String() string {
	s := string(f.Kind) + ": " + f.Reason
	if f.LastLine != "" {
		s += fmt.Sprintf(" — last line: %q", f.LastLine)
	}
	return s
}
