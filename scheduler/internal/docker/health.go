package docker

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/moby/moby/api/pkg/stdcopy"
	"github.com/moby/moby/api/types/container"
	"github.com/moby/moby/client"

	"github.com/berthhq/berth/common/spec"
)

// Docker's health statuses of a container (State.Health.Status), as
// Container.Health carries them; "" is a container without a HEALTHCHECK.
const (
	HealthStarting  = "starting"
	HealthHealthy   = "healthy"
	HealthUnhealthy = "unhealthy"
)

// HealthLog is the last result of Docker's health check of a container.
type HealthLog struct {
	// ExitCode is the test's: 0 passed, 1 failed, -1 Docker could not run
	// it or it exceeded its timeout.
	ExitCode int
	// Output is what it wrote (Docker keeps at most 4 KiB).
	Output string
	// FailingStreak is Docker's count of failures in a row.
	FailingStreak int
}

// healthConfig is h as Docker's HealthConfig at create: nil keeps the
// image's HEALTHCHECK as it is.
func healthConfig(h *spec.DockerHealth) *container.HealthConfig {
	if h == nil {
		return nil
	}
	return &container.HealthConfig{Test: h.DockerTest(), Interval: h.Interval.Std(), Timeout: h.Timeout.Std(),
		StartPeriod: h.StartPeriod.Std(), Retries: h.Retries}
}

// hasHealthcheck reports whether an image's config declares a HEALTHCHECK
// Docker runs (not HEALTHCHECK NONE).
func hasHealthcheck(hc *container.HealthConfig) bool {
	return hc != nil && len(hc.Test) > 0 && hc.Test[0] != "NONE"
}

// fromHealth fills c's health from a container's State.Health.
func fromHealth(c *Container, h *container.Health) {
	if h == nil {
		return
	}
	c.Health = string(h.Status)
	log := HealthLog{FailingStreak: h.FailingStreak}
	if n := len(h.Log); n > 0 && h.Log[n-1] != nil {
		log.ExitCode, log.Output = h.Log[n-1].ExitCode, h.Log[n-1].Output
	}
	c.HealthLog = log
}

// MaxExecOutput is how much of an exec check's output is kept: the first
// 4 KiB of stdout and stderr together; the rest is read and dropped.
const MaxExecOutput = 4 << 10

// ExecResult is how an exec in a container ended.
type ExecResult struct {
	// ExitCode is the command's exit code (-1 when it timed out).
	ExitCode int
	// Output is its stdout and stderr, at most MaxExecOutput bytes.
	Output string
	// TimedOut says it ran past its timeout and was abandoned.
	TimedOut bool
}

// ErrExecTimeout is an exec that ran past its timeout.
var ErrExecTimeout = errors.New("docker: exec timed out")

// Exec runs argv in container id (no TTY, no stdin) and waits for it, at
// most timeout. Docker's API has no way to kill an exec's process: past
// timeout, Exec closes its stream, abandons it and returns TimedOut; the
// process runs on in the container until it ends by itself (the
// container's pids limit bounds how many pile up). An exec Docker could
// not create or start is an error.
func (c *Client) Exec(ctx context.Context, id string, argv []string, timeout time.Duration) (ExecResult, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	created, err := c.c.ExecCreate(ctx, id, client.ExecCreateOptions{Cmd: argv, AttachStdout: true, AttachStderr: true})
	if err != nil {
		return execErr(ctx, id, "create", err)
	}
	att, err := c.c.ExecAttach(ctx, created.ID, client.ExecAttachOptions{})
	if err != nil {
		return execErr(ctx, id, "start", err)
	}
	out := &capped{max: MaxExecOutput}
	done := make(chan error, 1)
	go func() {
		_, err := stdcopy.StdCopy(out, out, att.Reader)
		done <- err
	}()
	select {
	case <-ctx.Done():
		att.Close()
		<-done
		return ExecResult{ExitCode: -1, Output: out.String(), TimedOut: true}, nil
	case err := <-done:
		att.Close()
		if err != nil && ctx.Err() != nil {
			return ExecResult{ExitCode: -1, Output: out.String(), TimedOut: true}, nil
		}
	}
	// The stream ends when the process does; its exit code may take a
	// moment more to be recorded.
	for {
		res, err := c.c.ExecInspect(ctx, created.ID, client.ExecInspectOptions{})
		if err != nil {
			if ctx.Err() != nil {
				return ExecResult{ExitCode: -1, Output: out.String(), TimedOut: true}, nil
			}
			return ExecResult{}, fmt.Errorf("docker exec inspect %s: %w", ShortID(id), notFound(err))
		}
		if !res.Running {
			return ExecResult{ExitCode: res.ExitCode, Output: out.String()}, nil
		}
		select {
		case <-ctx.Done():
			return ExecResult{ExitCode: -1, Output: out.String(), TimedOut: true}, nil
		case <-time.After(10 * time.Millisecond):
		}
	}
}

func execErr(ctx context.Context, id, op string, err error) (ExecResult, error) {
	if ctx.Err() != nil {
		return ExecResult{ExitCode: -1, TimedOut: true}, nil
	}
	return ExecResult{}, fmt.Errorf("docker exec %s %s: %w", op, ShortID(id), notFound(err))
}

// capped keeps the first max bytes written to it and drops the rest.
type capped struct {
	buf bytes.Buffer
	max int
}

func (w *capped) Write(p []byte) (int, error) {
	if room := w.max - w.buf.Len(); room > 0 {
		w.buf.Write(p[:min(room, len(p))])
	}
	return len(p), nil
}

func (w *capped) String() string { return w.buf.String() }

var _ io.Writer = (*capped)(nil)
