package api

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"time"

	"go.uber.org/zap"

	"github.com/berthhq/berth/common/msg"
	"github.com/berthhq/berth/common/spec"
	"github.com/berthhq/berth/scheduler/internal/store"
)

// The states of a WaitUpdate. Every stream ends with one line whose state
// is not WaitProgress.
const (
	// WaitProgress: the rollout goes on; Progress says how far it is.
	WaitProgress = "progress"
	// WaitRolledOut: the generation serves, every replica healthy.
	WaitRolledOut = "rolled_out"
	// WaitFailed: the generation will not roll out (rolled back, failed,
	// replaced by another generation, or its app deleted); Failure says why.
	WaitFailed = "failed"
	// WaitTimeout: the timeout passed first; the rollout goes on.
	WaitTimeout = "timeout"
)

// WaitUpdate is one line of GET /v1/apps/{name}/wait (newline-delimited
// JSON): the progress of a generation's rollout, then its outcome.
type WaitUpdate struct {
	At    time.Time `json:"at"`
	State string    `json:"state"`
	// Progress says in one line how far the rollout is.
	Progress string `json:"progress"`
	// Failure says why the generation did not roll out (WaitFailed,
	// WaitTimeout); Failures are its instances' latest failures.
	Failure  string        `json:"failure,omitempty"`
	Failures []FailureView `json:"failures,omitempty"`
	Rollout  *RolloutView  `json:"rollout,omitempty"`
}

// Bounds of the wait's ?timeout=.
const (
	DefaultWaitTimeout = 10 * time.Minute
	MinWaitTimeout     = time.Second
	MaxWaitTimeout     = 24 * time.Hour
)

// waitPoll is how often a wait reads the app's status; waitHeartbeat how
// long it stays silent at most, so that a proxy between it and its
// client keeps the stream open.
const (
	waitPoll      = 500 * time.Millisecond
	waitHeartbeat = 15 * time.Second
)

// waitQuery reads ?generation= (required) and ?timeout= of a wait.
func waitQuery(r *http.Request) (gen int64, timeout time.Duration, err error) {
	var es spec.Errors
	q := r.URL.Query()
	gen, perr := strconv.ParseInt(q.Get("generation"), 10, 64)
	if perr != nil || gen < 1 {
		es = append(es, spec.FieldError{Path: "generation", Message: fmt.Sprintf("%q must be a generation number, 1 or more", msg.Truncate(q.Get("generation"), 32))})
	}
	timeout = DefaultWaitTimeout
	if v := q.Get("timeout"); v != "" {
		d, derr := time.ParseDuration(v)
		if derr != nil || d < MinWaitTimeout || d > MaxWaitTimeout {
			es = append(es, spec.FieldError{Path: "timeout", Message: fmt.Sprintf("%q must be a duration from %s to %s", msg.Truncate(v, 32), MinWaitTimeout, MaxWaitTimeout)})
		}
		timeout = d
	}
	if len(es) > 0 {
		return 0, 0, es
	}
	return gen, timeout, nil
}

// wait streams a generation's rollout until it serves, fails or the
// timeout passes: what `apply --wait` shows. A client that goes away
// stops the wait, never the rollout.
func (a *api) wait(w http.ResponseWriter, r *http.Request) {
	gen, timeout, err := waitQuery(r)
	var fields spec.Errors
	if errors.As(err, &fields) {
		writeJSON(w, http.StatusBadRequest, Error{Error: "invalid wait request", Fields: fields})
		return
	}
	// The timeout ends the wait between reads, never a read: a read cut
	// short would end the wait on an error instead of its progress.
	ctx := r.Context()
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	name := r.PathValue("name")
	v, err := a.status(ctx, name, time.Now())
	if err != nil {
		a.fail(w, err)
		return
	}
	if gen > v.Generation {
		writeJSON(w, http.StatusNotFound, Error{Error: fmt.Sprintf("app %s has no generation %d yet: its newest is %d", name, gen, v.Generation)})
		return
	}
	sw := &streamWriter{w: w, rc: http.NewResponseController(w), contentType: "application/x-ndjson"}
	enc := json.NewEncoder(sw)
	send := func(u WaitUpdate) bool {
		u.At = time.Now().UTC()
		if err := enc.Encode(u); err != nil {
			return false
		}
		return sw.flush() == nil
	}
	tick := time.NewTicker(waitPoll)
	defer tick.Stop()
	last, lastSent := "", time.Time{}
	for {
		u := WaitUpdate{State: WaitProgress}
		if err == nil {
			u = waitUpdate(v, gen)
		} else {
			u.Progress = "cannot read the app's status: " + statusError(err)
		}
		if u.State != WaitProgress || u.Progress != last || time.Since(lastSent) >= waitHeartbeat {
			if !send(u) {
				a.logger.Debug("wait stream ended early", zap.String("app", name), zap.Int64("generation", gen))
				return
			}
			last, lastSent = u.Progress, time.Now()
		}
		if u.State != WaitProgress {
			return
		}
		select {
		case <-ctx.Done():
			return
		case <-deadline.C:
			send(WaitUpdate{State: WaitTimeout, Progress: last, Rollout: u.Rollout,
				Failure: fmt.Sprintf("generation %d is not rolled out after %s (its rollout goes on): %s", gen, timeout, last)})
			return
		case <-tick.C:
		}
		v, err = a.status(ctx, name, time.Now())
		if errors.Is(err, store.ErrNotFound) {
			send(WaitUpdate{State: WaitFailed, Progress: "deleted", Failure: fmt.Sprintf("app %s was deleted before generation %d rolled out", name, gen)})
			return
		}
	}
}

// statusError is what a wait's client is told of an error reading status
// (Postgres may be down a while; the wait goes on).
func statusError(err error) string {
	if errors.Is(err, store.ErrUnavailable) {
		return "postgres is unreachable; still waiting"
	}
	if errors.Is(err, context.DeadlineExceeded) || errors.Is(err, context.Canceled) {
		return "interrupted"
	}
	return "internal error (see the scheduler's log); still waiting"
}

// waitUpdate is the state of generation gen's rollout in an app's status.
func waitUpdate(v AppView, gen int64) WaitUpdate {
	done, failure, progress := RolloutOutcome(v, gen)
	u := WaitUpdate{State: WaitProgress, Progress: progress, Rollout: v.Rollout}
	switch {
	case failure != "":
		u.State, u.Failure = WaitFailed, failure
		for _, f := range v.Failures {
			if f.Generation == gen {
				u.Failures = append(u.Failures, f)
			}
		}
	case done:
		u.State = WaitRolledOut
	}
	return u
}

// RolloutOutcome says, from an app's status, whether generation gen is
// rolled out and healthy, why it failed (empty while it has not), and its
// progress in one line.
func RolloutOutcome(v AppView, gen int64) (done bool, failure, progress string) {
	ro := v.Rollout
	switch {
	case v.Generation > gen && ro != nil && ro.State == RolloutRolledBack && ro.FromGeneration == gen:
		return false, fmt.Sprintf("generation %d was rolled back (now generation %d): %s", gen, v.Generation, ro.Cause), "rolled back"
	case v.Generation > gen:
		return false, fmt.Sprintf("generation %d was replaced by generation %d (by %s) before it rolled out", gen, v.Generation, v.UpdatedBy), "superseded"
	case ro == nil:
		return false, "", "waiting for the rollout to start"
	case ro.State == RolloutFailed:
		return false, fmt.Sprintf("the rollout of generation %d failed and stopped: %s", gen, ro.Cause), "failed"
	}
	var desired, others int
	for _, s := range v.Serving {
		if s.Desired {
			desired += s.Instances
		} else {
			others += s.Instances
		}
	}
	parts := []string{fmt.Sprintf("%d of %d instances of generation %d serving", desired, v.DesiredReplicas, gen)}
	if ro.State == RolloutReleasing {
		parts = append([]string{"release task running"}, parts...)
	}
	if ro.Starting > 0 {
		parts = append(parts, fmt.Sprintf("%d starting", ro.Starting))
	}
	if others > 0 {
		parts = append(parts, fmt.Sprintf("%d of an earlier spec still serving", others))
	}
	if b := v.Breaker; b != nil {
		parts = append(parts, fmt.Sprintf("breaker open until %s: %s", b.Until.Local().Format(time.TimeOnly), b.Reason))
	}
	if ro.State == RolloutComplete {
		return true, "", strings.Join(parts, ", ") + ": rolled out"
	}
	return false, "", strings.Join(parts, ", ")
}
