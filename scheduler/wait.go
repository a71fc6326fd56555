package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/url"
	"strconv"
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

// reconnectEvery is how long --wait waits before it opens the stream
// again, after it broke (the scheduler it asked restarted, say).
const reconnectEvery = time.Second

// errRolloutFailed is the error of a --wait whose generation did not roll
// out; its message says why.
var errRolloutFailed = errors.New("the rollout did not take")

// waitRollout follows generation gen's rollout through the API's stream
// (GET /v1/apps/{name}/wait) until it is rolled out and healthy (nil), or
// fails, is rolled back, is superseded or timeout passes (an error
// wrapping errRolloutFailed that says why), and prints each change of
// progress on the way. A stream that breaks is opened again, for the time
// left, every reconnect.
func waitRollout(ctx context.Context, cl *client, name string, gen int64, timeout, reconnect time.Duration, out io.Writer) error {
	start := time.Now()
	deadline := start.Add(timeout)
	// The scheduler ends the stream at the timeout; this is a backstop.
	ctx, cancel := context.WithDeadline(ctx, deadline.Add(5*time.Second))
	defer cancel()
	last := ""
	for {
		left := time.Until(deadline).Round(time.Second)
		if left < api.MinWaitTimeout {
			return fmt.Errorf("%w: generation %d is not rolled out after --timeout %s: %s", errRolloutFailed, gen, timeout, last)
		}
		q := url.Values{"generation": {strconv.FormatInt(gen, 10)}, "timeout": {left.String()}}
		end, err := followWait(ctx, cl, "/v1/apps/"+name+"/wait?"+q.Encode(), func(u api.WaitUpdate) {
			if u.Progress != last && u.State != api.WaitTimeout {
				fmt.Fprintf(out, "%5.1fs  %s\n", time.Since(start).Seconds(), u.Progress)
				last = u.Progress
			}
		})
		var ae *apiError
		switch {
		case ctx.Err() != nil:
			return fmt.Errorf("stopped waiting for generation %d (its rollout goes on): %s", gen, last)
		case errors.As(err, &ae):
			return err
		case err != nil:
			fmt.Fprintf(out, "%5.1fs  lost the scheduler's stream (%v); asking again\n", time.Since(start).Seconds(), err)
		case end.State == api.WaitRolledOut:
			return nil
		case end.State == api.WaitFailed:
			for _, f := range end.Failures {
				fmt.Fprintf(out, "  %s: %s\n", f.Instance, f)
			}
			return fmt.Errorf("%w: %s", errRolloutFailed, end.Failure)
		case end.State == api.WaitTimeout:
			return fmt.Errorf("%w: generation %d is not rolled out after --timeout %s: %s", errRolloutFailed, gen, timeout, last)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("stopped waiting for generation %d (its rollout goes on): %s", gen, last)
		case <-time.After(reconnect):
		}
	}
}

// followWait reads a wait stream at path, calling progress with every
// line, and returns its last line: one whose state ends the wait, or an
// error when the stream broke before one came.
func followWait(ctx context.Context, cl *client, path string, progress func(api.WaitUpdate)) (api.WaitUpdate, error) {
	body, err := cl.stream(ctx, path)
	if err != nil {
		return api.WaitUpdate{}, err
	}
	defer body.Close()
	sc := bufio.NewScanner(body)
	sc.Buffer(make([]byte, 64<<10), 4<<20)
	for sc.Scan() {
		var u api.WaitUpdate
		if err := json.Unmarshal(sc.Bytes(), &u); err != nil {
			return api.WaitUpdate{}, fmt.Errorf("the scheduler sent a line that is not a wait update: %w", err)
		}
		progress(u)
		if u.State != api.WaitProgress {
			return u, nil
		}
	}
	if err := sc.Err(); err != nil {
		return api.WaitUpdate{}, err
	}
	return api.WaitUpdate{}, errors.New("the stream ended before the rollout did")
}
