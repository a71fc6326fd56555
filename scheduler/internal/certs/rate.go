package certs

import (
	"context"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"go.uber.org/zap"

	"github.com/berthhq/berth/common/logging"
	"github.com/berthhq/berth/common/msg"
	"github.com/berthhq/berth/scheduler/internal/store"
)

// The global order rate (issue 24): Budget, which MakePlan applies, and
// how the manager says that an order waits for it.

// OrderWindow is the window of the global order rate: at most
// Budget.Limit orders start in any OrderWindow.
const OrderWindow = time.Hour

// DefaultOrdersPerHour is the global order rate of a manager whose
// Config sets none (--acme-orders-per-hour's default): 30 an hour is 90
// of the 300 new orders Let's Encrypt allows an account in 3 hours, so
// retries and another tool on the same account still fit, and it still
// issues 720 certificates a day and renews 21,600 a month.
const DefaultOrdersPerHour = 30

// Budget is the global order rate across every app: at most Limit orders
// start in any OrderWindow, whichever apps they are for, so that no
// number of apps (one tenant's, or one app renamed again and again) can
// spend the ACME account's limits, which every app shares. Recent are
// the start times of the orders of the last OrderWindow or more, from
// Postgres, so that a new leader counts the old one's. Limit <= 0: no
// limit.
type Budget struct {
	Limit  int
	Recent []time.Time
}

// Slots returns when each of the next n orders can start at now: an
// order takes the slot of the one that started an OrderWindow before the
// Limit-th last.
func (b Budget) Slots(now time.Time, n int) []time.Time {
	out := make([]time.Time, n)
	if b.Limit <= 0 {
		for i := range out {
			out[i] = now
		}
		return out
	}
	var started []time.Time
	for _, t := range b.Recent {
		if t.After(now.Add(-OrderWindow)) {
			started = append(started, t)
		}
	}
	slices.SortFunc(started, func(a, b time.Time) int { return a.Compare(b) })
	for i := range out {
		at := now
		if j := len(started) - b.Limit; j >= 0 {
			at = later(now, started[j].Add(OrderWindow))
		}
		out[i] = at
		started = append(started, at)
	}
	return out
}

// InWindow counts the orders of b that started in the OrderWindow up to
// now.
func (b Budget) InWindow(now time.Time) int {
	n := 0
	for _, t := range b.Recent {
		if t.After(now.Add(-OrderWindow)) && !t.After(now) {
			n++
		}
	}
	return n
}

func later(a, b time.Time) time.Time {
	if b.After(a) {
		return b
	}
	return a
}

// announceDelays records an msg.EventCertificateDelayed for each app whose order the
// global rate holds back now and did not hold at the last step: once as
// it begins to wait, not at every step.
func (m *Manager) announceDelays(ctx context.Context, l store.Lease, plan Plan, inWindow int) error {
	waiting := map[string]bool{}
	var evs []store.Event
	for i, h := range plan.Held {
		waiting[h.App] = true
		if m.delayed[h.App] {
			continue
		}
		keeps := "the app is served over plain HTTP until one is issued"
		if h.Have.Chain != "" {
			keeps = "the app keeps its certificate, valid until " + h.Have.NotAfter.Format(time.RFC3339)
		}
		at := h.At.UTC().Truncate(time.Second).Format(time.RFC3339)
		evs = append(evs, store.Event{App: h.App, Kind: msg.EventCertificateDelayed,
			Message: fmt.Sprintf("certificate for %s waits for the global ACME order rate (%d orders an hour across every app, --acme-orders-per-hour): %d started in the last hour and %d due go before it (renewals closest to expiry first, then apps by how long they have waited); next attempt at %s at the earliest; %s",
				strings.Join(h.Names, ", "), m.cfg.OrdersPerHour, inWindow, len(plan.Orders)+i, at, keeps),
			Details: map[string]string{"names": strings.Join(h.Names, ","), "reason": h.Reason, "retry_at": at,
				"orders_per_hour": strconv.Itoa(m.cfg.OrdersPerHour), "orders_last_hour": strconv.Itoa(inWindow), "ahead": strconv.Itoa(len(plan.Orders) + i)}})
		m.logger.Warn("certificate order held back by the global order rate", zap.String(logging.KeyApp, h.App), zap.String("reason", h.Reason), zap.Time("retry_at", h.At))
	}
	if len(evs) > 0 {
		if err := m.tx.Tx(ctx, l, func(ctx context.Context, tx *store.Tx) error {
			for _, ev := range evs {
				if _, err := tx.AddEvent(ctx, ev); err != nil {
					return err
				}
			}
			return nil
		}); err != nil {
			return err
		}
	}
	for app := range m.delayed {
		if !waiting[app] {
			delete(m.delayed, app)
		}
	}
	for app := range waiting {
		m.delayed[app] = true
	}
	return nil
}
