package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/berthhq/berth/scheduler/internal/api"
)

// waitFlags are the flags of the commands that can wait for their
// rollout (apply, rollback, restart, redeploy).
type waitFlags struct {
	Wait    bool          `help:"Wait until the new generation is rolled out and healthy, showing its progress: exit 0 then, 1 when it fails, is rolled back, is replaced by another generation or --timeout passes. Ctrl-C stops waiting, not the rollout." default:"false"`
	Timeout time.Duration `help:"With --wait: how long to wait at most." default:"10m"`
}

// check refuses a timeout --wait cannot use.
func (w waitFlags) check() error {
	if w.Wait && (w.Timeout < time.Second || w.Timeout > 24*time.Hour) {
		return fmt.Errorf("--timeout (%s): must be between 1s and 24h", w.Timeout)
	}
	return nil
}

// waitEvery is how often --wait reads the app's status.
const waitEvery = time.Second

// errRolloutFailed is the error of a --wait whose generation did not roll
// out; its message says why.
var errRolloutFailed = errors.New("the rollout did not take")

// waitRollout reads the app's status every every until generation gen is
// rolled out and healthy (nil), or fails, is rolled back, is superseded
// or timeout passes (an error wrapping errRolloutFailed that says why),
// and prints each change of progress on the way.
func waitRollout(ctx context.Context, cl *client, name string, gen int64, timeout, every time.Duration, out io.Writer) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	tick := time.NewTicker(every)
	defer tick.Stop()
	start, last := time.Now(), ""
	for {
		var v api.AppView
		err := cl.do(ctx, "GET", "/v1/apps/"+name, nil, &v)
		switch {
		case err != nil && ctx.Err() != nil:
		case err != nil:
			return err
		default:
			done, failure, progress := rolloutOutcome(v, gen)
			if progress != last {
				fmt.Fprintf(out, "%5.1fs  %s\n", time.Since(start).Seconds(), progress)
				last = progress
			}
			if failure != "" {
				for _, f := range v.Failures {
					if f.Generation == gen {
						fmt.Fprintf(out, "  %s: %s\n", f.Instance, f)
					}
				}
				return fmt.Errorf("%w: %s", errRolloutFailed, failure)
			}
			if done {
				return nil
			}
		}
		select {
		case <-ctx.Done():
			if errors.Is(ctx.Err(), context.DeadlineExceeded) {
				return fmt.Errorf("%w: generation %d is not rolled out after --timeout %s: %s", errRolloutFailed, gen, timeout, last)
			}
			return fmt.Errorf("stopped waiting for generation %d (its rollout goes on): %s", gen, last)
		case <-tick.C:
		}
	}
}

// rolloutOutcome says, from an app's status, whether generation gen is
// rolled out and healthy, why it failed (empty while it has not), and its
// progress in one line.
func rolloutOutcome(v api.AppView, gen int64) (done bool, failure, progress string) {
	ro := v.Rollout
	switch {
	case v.Generation > gen && ro != nil && ro.State == api.RolloutRolledBack && ro.FromGeneration == gen:
		return false, fmt.Sprintf("generation %d was rolled back (now generation %d): %s", gen, v.Generation, ro.Cause), "rolled back"
	case v.Generation > gen:
		return false, fmt.Sprintf("generation %d was replaced by generation %d (by %s) before it rolled out", gen, v.Generation, v.UpdatedBy), "superseded"
	case ro == nil:
		return false, "", "waiting for the rollout to start"
	case ro.State == api.RolloutFailed:
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
	if others > 0 {
		parts = append(parts, fmt.Sprintf("%d of an earlier spec still serving", others))
	}
	if b := v.Breaker; b != nil {
		parts = append(parts, fmt.Sprintf("breaker open until %s: %s", b.Until.Local().Format(time.TimeOnly), b.Reason))
	}
	if ro.State == api.RolloutComplete {
		return true, "", strings.Join(parts, ", ") + ": rolled out"
	}
	return false, "", strings.Join(parts, ", ")
}
