package agent

import (
	"context"
	"errors"
	"time"

	"go.uber.org/zap"

	"github.com/berthhq/berth/lbagent/internal/nginx"
)

// confirmWait learns how long nginx takes to serve a reloaded config, and
// says how long to wait for the next one before calling it failed.
//
// A reload re-parses the whole config in nginx's master before it starts
// new workers: at 10,000 apps that is seconds (the issue measured 8.6 s for
// nginx -t + HUP + first answer), and more under memory pressure. A reload
// cut short by --confirm-timeout was put back and tried again on top of
// itself (each retry one more reload, one more set of workers), so a big
// config never converged. The wait therefore scales with what this config
// costs nginx: its nginx -t time, just measured on the very bytes the
// master is about to parse, and the last reload's measured time to serve,
// whichever is longer, times factor; never less than --confirm-timeout,
// and never more than ceiling (a reload that takes that long is failed).
//
// Past that wait, nginx itself says whether the reload is still being
// worked on: while its master's CPU time advances (the parse is CPU-bound),
// the reload is waited for slice by slice, up to ceiling in all. A master
// that stands idle is done: the reload failed, or nginx serves something
// else.
//
// Used from the agent's Run goroutine only.
type confirmWait struct {
	// floor is --confirm-timeout: the wait for a config nginx tests fast.
	floor time.Duration
	// factor scales the expected time; ceiling bounds the wait.
	factor  int
	ceiling time.Duration
	// served is the last reload's time from the signal to nginx serving
	// its generation; 0 before one was confirmed.
	served time.Duration
	// slice is how long each wait past deadline lasts; busy the master
	// CPU time in one slice that says nginx still works on the reload.
	slice, busy time.Duration
}

// masterCPU reads the CPU time nginx's master has used (nginx.Supervisor,
// nginx.PidFile): whether it is still working on a reload.
type masterCPU interface {
	MasterCPU() (time.Duration, error)
}

// The scale of confirmWait: a reload is waited for 3 times what it is
// expected to take (the master's parse is about the nginx -t time, then
// the new workers start and the old ones are told to stop), then for as
// long as nginx's master keeps working on it (a tenth of a CPU or more,
// checked every second), for at most 10 minutes in all.
const (
	confirmFactor  = 3
	confirmCeiling = 10 * time.Minute
	confirmSlice   = time.Second
	confirmBusy    = 100 * time.Millisecond
)

var (
	_ masterCPU = (*nginx.Supervisor)(nil)
	_ masterCPU = nginx.PidFile("")
)

func newConfirmWait(floor time.Duration) *confirmWait {
	return &confirmWait{floor: floor, factor: confirmFactor, ceiling: confirmCeiling, slice: confirmSlice, busy: confirmBusy}
}

// deadline is how long to wait for a reload of a config whose nginx -t
// took tested: factor × the longer of tested and the last reload's time to
// serve, within [floor, max(floor, ceiling)].
func (w *confirmWait) deadline(tested time.Duration) time.Duration {
	expected := max(tested, w.served)
	d := max(w.floor, time.Duration(w.factor)*expected)
	return min(d, max(w.floor, w.ceiling))
}

// observe records a confirmed reload's time from the signal to nginx
// serving it.
func (w *confirmWait) observe(served time.Duration) {
	if served > 0 {
		w.served = served
	}
}

// confirm waits until nginx serves gen, signalled to reload at
// signalled, for up to wait. Past --confirm-timeout it says, once, that
// the reload is still taking effect and is waited for, not signalled again.
// A confirmed reload teaches a.waits its time to serve.
func (a *Agent) confirm(ctx context.Context, gen uint64, signalled time.Time, wait time.Duration) error {
	if h := a.cfg.Hooks.ConfirmWait; h != nil {
		h(wait)
	}
	first := min(wait, a.cfg.ConfirmTimeout)
	cctx, cancel := context.WithTimeout(ctx, first)
	err := a.status.Confirm(cctx, gen)
	cancel()
	if err != nil && wait > first && ctx.Err() == nil && errors.Is(err, context.DeadlineExceeded) {
		a.logger.Warn("reload still taking effect: waiting for it beyond --confirm-timeout, not reloading again",
			zap.Uint64("generation", gen), zap.Duration("confirm_timeout", a.cfg.ConfirmTimeout), zap.Duration("waiting_up_to", wait),
			zap.Duration("last_reload_served_in", a.waits.served), zap.NamedError("last", err))
		cctx, cancel := context.WithTimeout(ctx, wait-first)
		err = a.status.Confirm(cctx, gen)
		cancel()
	}
	if err != nil {
		err = a.confirmWhileBusy(ctx, gen, wait, err)
	}
	if err != nil {
		return err
	}
	served := a.now().Sub(signalled)
	a.waits.observe(served)
	if h := a.cfg.Hooks.ReloadServed; h != nil {
		h(served)
	}
	if served > a.cfg.ConfirmTimeout {
		a.logger.Info("reload served after --confirm-timeout: waited for, not retried", zap.Uint64("generation", gen),
			zap.Duration("served_in", served), zap.Duration("confirm_timeout", a.cfg.ConfirmTimeout),
			zap.Duration("next_wait_at_least", a.waits.deadline(0)))
	}
	return nil
}

// confirmWhileBusy, once the wait for gen has passed (err), goes on
// waiting, a slice at a time, while nginx's master keeps working (its CPU
// time advances by busy or more per slice), up to the ceiling in all. It
// returns nil once gen is served, else the last error. A reloader that
// cannot tell (no masterCPU) waits no longer.
func (a *Agent) confirmWhileBusy(ctx context.Context, gen uint64, waited time.Duration, err error) error {
	cpu, ok := a.reloader.(masterCPU)
	if !ok {
		return err
	}
	before, cerr := cpu.MasterCPU()
	for logged := false; cerr == nil && waited < a.waits.ceiling && ctx.Err() == nil && errors.Is(err, context.DeadlineExceeded); {
		slice := min(a.waits.slice, a.waits.ceiling-waited)
		cctx, cancel := context.WithTimeout(ctx, slice)
		err = a.status.Confirm(cctx, gen)
		cancel()
		if err == nil {
			return nil
		}
		waited += slice
		var after time.Duration
		if after, cerr = cpu.MasterCPU(); cerr != nil || after-before < a.waits.busy {
			break // an idle master: nothing more is coming
		}
		before = after
		if !logged {
			a.logger.Warn("nginx's master is still working on the reload: waiting past the expected time, not reloading again",
				zap.Uint64("generation", gen), zap.Duration("waited", waited), zap.Duration("waiting_up_to", a.waits.ceiling))
			logged = true
		}
	}
	return err
}
