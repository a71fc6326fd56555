package agent

import (
	"context"
	"errors"
	"time"

	"go.uber.org/zap"
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
}

// The scale of confirmWait: a reload is waited for 3 times what it is
// expected to take (the master's parse is about the nginx -t time, then
// the new workers start and the old ones are told to stop), for at most
// 10 minutes.
const (
	confirmFactor  = 3
	confirmCeiling = 10 * time.Minute
)

func newConfirmWait(floor time.Duration) *confirmWait {
	return &confirmWait{floor: floor, factor: confirmFactor, ceiling: confirmCeiling}
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
