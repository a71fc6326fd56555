// Package checker owns the decisions of health checking, as pure functions
// of their inputs and the time: the per-target state machine that turns
// probe results into healthy, unhealthy or unknown by thresholds, and the
// schedule that spreads targets evenly across their interval by a stable
// offset derived from each target's key.
package checker

import (
	"hash/fnv"
	"time"

	"github.com/berthhq/berth/common/msg"
	"github.com/berthhq/berth/healthd/internal/probe"
)

// State is what the checker knows of one target.
type State struct {
	// Status is msg.StatusUnknown, StatusHealthy or StatusUnhealthy.
	Status string
	// Successes and Failures count the latest results in a row.
	Successes, Failures int
	// Last is the latest probe result.
	Last probe.Result
	// Since is when Status last changed.
	Since time.Time
}

// NewState is a target never probed: unknown.
func NewState(now time.Time) State { return State{Status: msg.StatusUnknown, Since: now} }

// Step applies one probe result. A target becomes healthy after healthy
// consecutive passes and unhealthy after unhealthy consecutive failures,
// from any status; otherwise its status holds. changed reports a
// transition.
func Step(s State, r probe.Result, healthy, unhealthy int, now time.Time) (next State, changed bool) {
	next = s
	next.Last = r
	if r.OK {
		next.Successes, next.Failures = s.Successes+1, 0
		if next.Successes >= max(healthy, 1) {
			next.Status = msg.StatusHealthy
		}
	} else {
		next.Successes, next.Failures = 0, s.Failures+1
		if next.Failures >= max(unhealthy, 1) {
			next.Status = msg.StatusUnhealthy
		}
	}
	if next.Status != s.Status {
		next.Since = now
		return next, true
	}
	return next, false
}

// Offset is key's stable place within interval: targets hash to spots
// spread evenly over the interval, and a target keeps its spot across
// restarts and across checkers.
func Offset(key string, interval time.Duration) time.Duration {
	if interval <= 0 {
		return 0
	}
	h := fnv.New64a()
	_, _ = h.Write([]byte(key))
	return time.Duration(h.Sum64() % uint64(interval))
}

// NextDue returns the first time after now at which key is due: the
// instants offset + k×interval on the wall clock, so every checker agrees
// on when a target is probed. A target is not due before notBefore (its
// initial delay).
func NextDue(key string, interval time.Duration, now, notBefore time.Time) time.Time {
	if interval <= 0 {
		return now
	}
	off := Offset(key, interval)
	base := now.Truncate(interval).Add(off)
	for !base.After(now) {
		base = base.Add(interval)
	}
	for base.Before(notBefore) {
		base = base.Add(interval)
	}
	return base
}
