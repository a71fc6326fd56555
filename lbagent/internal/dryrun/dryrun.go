// Package dryrun renders lbagent's nginx config once, without touching
// nginx: from a JSON snapshot of the apps, instances and health buckets,
// or from the live NATS state (--dry-run).
package dryrun

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"sync"
	"time"

	"go.uber.org/zap"

	"github.com/berthhq/berth/common/bus"
	"github.com/berthhq/berth/common/logging"
	"github.com/berthhq/berth/common/msg"
	"github.com/berthhq/berth/lbagent/internal/render"
	"github.com/berthhq/berth/lbagent/internal/state"
)

// LiveTimeout bounds the load of the live NATS state.
const LiveTimeout = 15 * time.Second

// Options says what to render from and how.
type Options struct {
	// Source is a snapshot file, or "-" for the live NATS state.
	Source string
	Render render.Options
	// Main renders a whole nginx.conf rather than an include.
	Main bool
	// Prefix names the buckets; Connect opens NATS (for "-" only).
	Prefix  string
	Connect func(ctx context.Context) (*bus.Conn, error)
}

// Run renders the config once to w.
func Run(ctx context.Context, renderer *render.Renderer, o Options, w io.Writer, logger *zap.Logger) error {
	store := state.NewStore()
	if o.Source == "-" {
		if err := loadLive(ctx, o, store, logger); err != nil {
			return err
		}
	} else if err := loadFile(o.Source, store); err != nil {
		return err
	}
	snap, _ := store.Snapshot()
	d, conflicts := render.Layout(snap, 1, o.Render)
	for app, why := range conflicts {
		logger.Warn("route conflict", zap.String(logging.KeyApp, app), zap.String("reason", why))
	}
	out, err := renderer.Render(d, o.Main)
	if err != nil {
		return err
	}
	_, err = w.Write(out)
	return err
}

// snapshotFile is the --dry-run input format: the three buckets' values.
type snapshotFile struct {
	Apps      []*msg.App      `json:"apps"`
	Instances []*msg.Instance `json:"instances"`
	Health    []*msg.Health   `json:"health"`
}

func loadFile(path string, store *state.Store) error {
	b, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	var f snapshotFile
	if err := json.Unmarshal(b, &f); err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	var apps []bus.Event[*msg.App]
	for i, a := range f.Apps {
		if err := a.Validate(); err != nil {
			return fmt.Errorf("%s: apps[%d]: %w", path, i, err)
		}
		apps = append(apps, bus.Event[*msg.App]{Key: a.Name, Value: a})
	}
	var insts []bus.Event[*msg.Instance]
	for i, in := range f.Instances {
		if err := in.Validate(); err != nil {
			return fmt.Errorf("%s: instances[%d]: %w", path, i, err)
		}
		insts = append(insts, bus.Event[*msg.Instance]{Key: msg.InstanceKey(in.App, in.ID), Value: in})
	}
	var hs []bus.Event[*msg.Health]
	for i, h := range f.Health {
		if err := h.Validate(); err != nil {
			return fmt.Errorf("%s: health[%d]: %w", path, i, err)
		}
		hs = append(hs, bus.Event[*msg.Health]{Key: msg.InstanceKey(h.App, h.Instance), Value: h})
	}
	store.AppsHandler().Snapshot(apps, 0)
	store.InstancesHandler().Snapshot(insts, 0)
	store.HealthHandler().Snapshot(hs, 0)
	store.CertificatesHandler().Snapshot(nil, 0)
	return nil
}

// loadLive loads the three buckets from NATS, waiting at most LiveTimeout
// for every watcher's initial values; it returns once its watchers ended.
func loadLive(ctx context.Context, o Options, store *state.Store, logger *zap.Logger) error {
	names, err := msg.NewNames(o.Prefix)
	if err != nil {
		return err
	}
	conn, err := o.Connect(ctx)
	if err != nil {
		return err
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(ctx, LiveTimeout)
	var wg sync.WaitGroup
	defer wg.Wait()
	defer cancel()
	for _, w := range []interface{ Run(context.Context) error }{
		bus.NewWatcher(conn, names.AppsBucket(), bus.Message[*msg.App], store.AppsHandler(), logger),
		bus.NewWatcher(conn, names.InstancesBucket(), bus.Message[*msg.Instance], store.InstancesHandler(), logger),
		bus.NewWatcher(conn, names.HealthBucket(), bus.Message[*msg.Health], store.HealthHandler(), logger),
		bus.NewWatcher(conn, names.CertificatesBucket(), bus.Message[*msg.Certificate], store.CertificatesHandler(), logger),
	} {
		wg.Go(func() { _ = w.Run(ctx) })
	}
	for !store.Ready() {
		select {
		case <-ctx.Done():
			return errors.New("NATS state did not load within 15s")
		case <-store.Changed():
		case <-time.After(50 * time.Millisecond):
		}
	}
	return nil
}
