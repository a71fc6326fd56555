// Package lifecycle owns how a daemon starts and stops: a run group of
// long-running components, a context cancelled by the first SIGINT or
// SIGTERM, a soft stop that gives every component a deadline to finish its
// current step, and a hard exit on a second signal.
package lifecycle

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/signal"
	"sync"
	"syscall"
	"time"

	"go.uber.org/zap"
)

// ErrStopTimeout is returned by Group.Run when components were still running
// at the end of the stop deadline.
var ErrStopTimeout = errors.New("lifecycle: components did not stop before the deadline")

// Component is a long-running part of a daemon. Run returns when ctx ends
// (nil) or when the component fails (its error). After ctx ends a component
// finishes its current step and cleans up within the group's stop timeout;
// CleanupContext gives it a context for that.
type Component interface {
	Run(ctx context.Context) error
}

// Func adapts a function to Component.
type Func func(ctx context.Context) error

// Run calls f.
func (f Func) Run(ctx context.Context) error { return f(ctx) }

var _ Component = Func(nil)

type member struct {
	name string
	c    Component
}

// Group runs components together: when the parent context ends or any
// component returns, every other component's context is cancelled. Add all
// components before Run; a Group runs once.
type Group struct {
	// StopTimeout bounds the soft stop; zero means 10s.
	StopTimeout time.Duration
	logger      *zap.Logger
	members     []member
}

// NewGroup returns an empty group that logs through logger.
func NewGroup(logger *zap.Logger, stopTimeout time.Duration) *Group {
	return &Group{StopTimeout: stopTimeout, logger: logger.Named("lifecycle")}
}

// Add registers a component under a name used in logs and errors.
func (g *Group) Add(name string, c Component) {
	g.members = append(g.members, member{name: name, c: c})
}

type deadlineKey struct{}

// CleanupContext returns a context for the work a component does after its
// Run context has ended (resign a lease, drain a connection): it is not
// cancelled with ctx but ends at the group's stop deadline.
func CleanupContext(ctx context.Context) (context.Context, context.CancelFunc) {
	d, ok := ctx.Value(deadlineKey{}).(*stopDeadline)
	if !ok {
		return context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
	}
	return context.WithDeadline(context.WithoutCancel(ctx), d.get())
}

type stopDeadline struct {
	mu sync.Mutex
	t  time.Time
}

func (d *stopDeadline) set(t time.Time) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.t = t
}

func (d *stopDeadline) get() time.Time {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.t.IsZero() { // asked before the stop began: allow a full timeout from now
		return time.Now().Add(10 * time.Second)
	}
	return d.t
}

// Run starts every component and blocks until all have returned or the stop
// deadline has passed. It returns the first component error (wrapped with
// the component's name), ErrStopTimeout if a component ignored the stop, or
// nil after a clean stop.
func (g *Group) Run(ctx context.Context) error {
	timeout := g.StopTimeout
	if timeout <= 0 {
		timeout = 10 * time.Second
	}
	deadline := &stopDeadline{}
	runCtx, cancel := context.WithCancel(context.WithValue(ctx, deadlineKey{}, deadline))
	defer cancel()

	type result struct {
		name string
		err  error
	}
	results := make(chan result, len(g.members))
	for _, m := range g.members {
		go func() {
			err := m.c.Run(runCtx)
			results <- result{name: m.name, err: err}
		}()
	}

	var firstErr error
	remaining := len(g.members)
	record := func(r result) {
		remaining--
		if r.err != nil && !errors.Is(r.err, context.Canceled) {
			g.logger.Error("component failed", zap.String("component", r.name), zap.Error(r.err))
			if firstErr == nil {
				firstErr = fmt.Errorf("%s: %w", r.name, r.err)
			}
			return
		}
		g.logger.Info("component stopped", zap.String("component", r.name))
	}

	if remaining > 0 {
		select {
		case <-runCtx.Done():
		case r := <-results:
			record(r)
		}
	}
	deadline.set(time.Now().Add(timeout))
	cancel()
	if remaining > 0 {
		g.logger.Info("stopping", zap.Int("components", remaining), zap.Duration("timeout", timeout))
	}
	timer := time.NewTimer(timeout)
	defer timer.Stop()
	for remaining > 0 {
		select {
		case r := <-results:
			record(r)
		case <-timer.C:
			g.logger.Error("stop deadline passed", zap.Int("components", remaining))
			if firstErr == nil {
				firstErr = ErrStopTimeout
			}
			return firstErr
		}
	}
	return firstErr
}

// SignalContext returns a context that ends on the first SIGINT or SIGTERM.
// A second signal calls hardExit (main passes os.Exit), for an operator who
// will not wait for a soft stop. stop releases the signal handler.
func SignalContext(parent context.Context, logger *zap.Logger, hardExit func(code int)) (ctx context.Context, stop func()) {
	return signalContext(parent, logger, hardExit, syscall.SIGINT, syscall.SIGTERM)
}

func signalContext(parent context.Context, logger *zap.Logger, hardExit func(code int), sigs ...os.Signal) (context.Context, func()) {
	ctx, cancel := context.WithCancel(parent)
	ch := make(chan os.Signal, 2)
	signal.Notify(ch, sigs...)
	done := make(chan struct{})
	go func() {
		select {
		case s := <-ch:
			logger.Info("signal received, stopping", zap.String("signal", s.String()))
			cancel()
		case <-done:
			return
		}
		select {
		case s := <-ch:
			logger.Warn("second signal received, exiting now", zap.String("signal", s.String()))
			hardExit(1)
		case <-done:
		}
	}()
	var once sync.Once
	return ctx, func() {
		once.Do(func() {
			signal.Stop(ch)
			close(done)
			cancel()
		})
	}
}

// HTTP runs srv as a component: it serves until the context ends, then
// shuts down gracefully within the group's stop deadline. A listener that
// cannot start is the component's error.
func HTTP(srv *http.Server) Component { return Serve(srv, nil) }

// Serve is HTTP on a listener of the caller's (nil: srv.Addr's).
func Serve(srv *http.Server, ln net.Listener) Component {
	return Func(func(ctx context.Context) error {
		errc := make(chan error, 1)
		go func() {
			if ln == nil {
				errc <- srv.ListenAndServe()
				return
			}
			errc <- srv.Serve(ln)
		}()
		select {
		case err := <-errc:
			return fmt.Errorf("http listener %s: %w", srv.Addr, err)
		case <-ctx.Done():
			cctx, cancel := CleanupContext(ctx)
			defer cancel()
			return srv.Shutdown(cctx)
		}
	})
}

// OpsHandler serves a daemon's operations endpoints: /metrics (metrics),
// /healthz (the process answers) and /readyz (ready reports true once the
// daemon has the state it needs, 503 until then).
func OpsHandler(metrics http.Handler, ready func() bool) http.Handler {
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", metrics)
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) { _, _ = w.Write([]byte("ok\n")) })
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, _ *http.Request) {
		if !ready() {
			http.Error(w, "waiting for the first complete NATS state", http.StatusServiceUnavailable)
			return
		}
		_, _ = w.Write([]byte("ready\n"))
	})
	return mux
}

// Every runs fn each period until ctx ends; fn never overlaps itself.
func Every(ctx context.Context, period time.Duration, fn func()) {
	tick := time.NewTicker(period)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
			fn()
		}
	}
}
