package agent

import (
	"context"
	"errors"
	"time"

	"go.uber.org/zap"

	"github.com/berthhq/berth/common/msg"
	"github.com/berthhq/berth/lbagent/internal/dynamic"
)

// Pusher installs endpoint sets in the running nginx without a reload
// (dynamic mode). Calls come from the agent's Run goroutine.
type Pusher interface {
	// Push installs a batch and returns the version nginx reports
	// installed, read back; a version not above nginx's is a
	// *dynamic.StaleError.
	Push(ctx context.Context, b dynamic.Batch) (uint64, error)
	// Version reads the version nginx has installed.
	Version(ctx context.Context) (uint64, error)
	// CloseKeepalive makes the workers of generations below below close
	// each keep-alive connection after its next answer, for ttl (0 ends it).
	CloseKeepalive(ctx context.Context, below uint64, ttl time.Duration) error
}

var _ Pusher = (*dynamic.Client)(nil)

// pushes is dynamic mode's side of the loop: the versions of the batches
// pushed into nginx's dict, and the snapshot file nginx loads its
// endpoints from when it starts or reloads. Which sets nginx holds is
// Served.Endpoints. Used from the agent's Run goroutine only (the snapshot
// file is written behind it, by run).
type pushes struct {
	client Pusher
	file   string
	writer *dynamic.SnapshotWriter
	// cache memoizes the endpoint sets of each snapshot (Input.Endpoints).
	cache dynamic.Cache
	// version is the last version pushed or written; versioned says it
	// is known to be at or above nginx's.
	version   uint64
	versioned bool
	// drain is ReloadDrain.
	drain  time.Duration
	pushed func(time.Duration, error)
	// last is the latest push, for the agents record (nil: none yet).
	last   *msg.ConfigChange
	now    func() time.Time
	logger *zap.Logger
}

// newPushes returns dynamic mode's side of the loop: pushes through
// client, the snapshot file at file, drain as ReloadDrain, pushed the
// hook called after each push (nil: none).
func newPushes(client Pusher, file string, drain time.Duration, pushed func(time.Duration, error), now func() time.Time,
	logger *zap.Logger) *pushes {
	return &pushes{client: client, file: file, writer: dynamic.NewSnapshotWriter(file), drain: drain, pushed: pushed,
		now: now, logger: logger}
}

// run writes the snapshot file behind the pushes until ctx ends.
func (p *pushes) run(ctx context.Context) {
	p.writer.Run(ctx, func(err error) {
		// nginx serves the pushes; only its next start would begin older.
		p.logger.Warn("endpoint snapshot not written", zap.Error(err))
	})
}

// push sends one batch, of the instances-bucket revision rev, above every
// version seen, retrying once above nginx's when nginx has a newer one (a
// restarted lbagent). Once pushed, the snapshot file follows with every
// set, next.
func (p *pushes) push(ctx context.Context, rev uint64, apps, next map[string]*dynamic.Endpoints, full bool) error {
	start := p.now()
	p.initVersion(ctx)
	var err error
	for range 2 {
		p.version++
		var got uint64
		got, err = p.client.Push(ctx, dynamic.Batch{Version: p.version, Full: full, Apps: apps})
		var stale *dynamic.StaleError
		if errors.As(err, &stale) {
			p.version = max(p.version, stale.Installed)
			continue
		}
		if err == nil {
			p.version, p.versioned = max(p.version, got), true
		}
		break
	}
	end := p.now()
	p.last = change(start, end, rev, err)
	if p.pushed != nil {
		p.pushed(end.Sub(start), err)
	}
	if err == nil {
		// nginx serves the push; the file, for nginx's next start or
		// reload, is written behind it (and synchronously before any
		// reload, by write).
		p.writer.Put(dynamic.Batch{Version: p.version, Apps: next})
	}
	return err
}

// write writes the snapshot file nginx loads as it reloads, at once: the
// new config starts with its endpoints in place, never with an empty dict.
func (p *pushes) write(ctx context.Context, eps map[string]*dynamic.Endpoints) error {
	p.initVersion(ctx)
	p.version++
	return p.writer.Write(dynamic.Batch{Version: p.version, Apps: eps})
}

// initVersion learns the version nginx has installed, once: pushes
// continue above it and above the snapshot file's.
func (p *pushes) initVersion(ctx context.Context) {
	if p.versioned {
		return
	}
	p.version = max(p.version, dynamic.ReadSnapshotVersion(p.file))
	vctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	if v, err := p.client.Version(vctx); err == nil {
		p.version = max(p.version, v)
		p.versioned = true
	}
}

// drainKeepalive, with nginx serving, asks the workers that the reload
// into gen replaces to close keep-alive connections after each answer,
// and waits ReloadDrain for busy ones to cycle. The request lives until
// the reload is confirmed, waited for up to confirm (and a while past it:
// the old workers finish their requests with it). It reports whether it
// asked.
func (p *pushes) drainKeepalive(ctx context.Context, gen uint64, confirm time.Duration) bool {
	if p.drain <= 0 {
		return false
	}
	rctx, cancel := context.WithTimeout(ctx, time.Second)
	err := p.client.CloseKeepalive(rctx, gen, p.drain+confirm+10*time.Second)
	cancel()
	if err != nil {
		// Templates older than the keepalive location: reload anyway.
		p.logger.Warn("keep-alive connections not drained before the reload", zap.Error(err))
		return false
	}
	select {
	case <-ctx.Done():
	case <-time.After(p.drain):
	}
	return true
}

// undrain lets the workers below gen keep connections again: the reload
// into gen failed, and they stay.
func (p *pushes) undrain(ctx context.Context, gen uint64) {
	_ = p.client.CloseKeepalive(ctx, gen, 0)
}
