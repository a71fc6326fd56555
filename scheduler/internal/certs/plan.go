// Package certs is the scheduler leader's certificate manager: it orders
// and renews an ACME certificate for every app with routing.tls.acme, keeps
// each certificate in Postgres with its private key encrypted (vault.Vault), and
// puts it in the certificates bucket with the key sealed to the lbagent
// role (docs/operations.md, Certificates).
//
// Plan is pure: what to order, renew, retry or forget, which orders the
// global order rate holds back, and when to look again. Manager carries
// it out, one order at a time, while this replica leads. Issuer is the
// ACME client (lego), Shelf the bucket.
package certs

import (
	"slices"
	"strings"
	"time"

	"github.com/berthhq/berth/common/spec"
	"github.com/berthhq/berth/scheduler/internal/store"
)

// DefaultRenewBefore is how long before expiry a certificate is renewed:
// Let's Encrypt's 90-day certificates are renewed with 30 days left.
const DefaultRenewBefore = 30 * 24 * time.Hour

// Want is an app that wants an ACME certificate for names.
type Want struct {
	App   string
	Names []string
	// Generation is the app's, which the lbagents must serve before its
	// challenges can be answered.
	Generation int64
	// Since is when the app's spec was applied as it is: among new
	// certificates, the app that has waited longest goes first.
	Since time.Time
}

// Wants returns the apps with routing.tls.acme, by name, each with the
// hosts it owns (spec.Claims) in lower case, sorted: the names its
// certificate must cover. A host another app owns is not the app's to
// order a certificate for; an app that owns none of its hosts wants none.
func Wants(apps []store.App) []Want {
	claimants := make([]spec.Claimant, 0, len(apps))
	for _, a := range apps {
		if a.Spec != nil {
			claimants = append(claimants, a.Claimant())
		}
	}
	table := spec.Claims(claimants)
	var out []Want
	for _, a := range apps {
		if a.Spec == nil || a.Spec.Routing.TLS == nil || !a.Spec.Routing.TLS.ACME || len(a.Spec.Routing.Hosts) == 0 {
			continue
		}
		if names := Names(a.Spec.Routing, func(h string) bool { return table.Owner(h) == a.Name }); len(names) > 0 {
			out = append(out, Want{App: a.Name, Names: names, Generation: a.Generation, Since: a.UpdatedAt})
		}
	}
	slices.SortFunc(out, func(a, b Want) int { return strings.Compare(a.App, b.App) })
	return out
}

// Names are the DNS names a certificate for r covers: its hosts (in lower
// case) that owned reports it owns.
func Names(r spec.Routing, owned func(host string) bool) []string {
	names := make([]string, 0, len(r.Hosts))
	for _, h := range r.Hosts {
		if h = spec.HostKey(h); owned(h) {
			names = append(names, h)
		}
	}
	slices.Sort(names)
	return slices.Compact(names)
}

// Reasons for an order.
const (
	ReasonNew     = "new"     // no certificate yet
	ReasonNames   = "names"   // the hosts changed
	ReasonRenewal = "renewal" // within RenewBefore of expiry
	ReasonExpired = "expired" // past expiry: renewals failed until now
)

// Order is one certificate to order now.
type Order struct {
	App        string
	Names      []string
	Generation int64
	Reason     string
	// Have is the stored row, if any: its failures count on.
	Have store.Certificate
}

// Plan is what to do now and when to look again.
type Plan struct {
	// Orders are due now and within the global rate, most urgent first
	// (see MakePlan); the manager takes one at a time.
	Orders []Order
	// Held are due too, but the global rate holds them back, in the order
	// they will go.
	Held []Held
	// Forget are the apps whose certificate no app wants any more.
	Forget []string
	// Next is when the next order falls due or a held one may start
	// (zero: nothing pending).
	Next time.Time
}

// Held is a due order that waits for the global order rate.
type Held struct {
	Order
	// At is the earliest it can start: when its slot opens, if no more
	// urgent order comes first.
	At time.Time
}

// MakePlan decides what is due at now. A certificate is ordered when there
// is none, when the hosts changed, or renewBefore ahead of its expiry; a
// failed order waits for the row's RetryAt, whatever the reason, so that
// no change of spec turns backoff into a retry storm against the CA.
//
// Due orders go most urgent first: certificates in service before new
// ones, the one that expires soonest first (an expired one before all);
// then changed hosts and new certificates, the app that has waited
// longest first. Those past the global rate (budget) are Held, with when
// each may start; a renewal therefore waits at most for the next slot
// however many new orders are due, and an app that applies its spec
// again goes behind the apps that waited before it.
func MakePlan(wants []Want, have map[string]store.Certificate, now time.Time, renewBefore time.Duration, budget Budget) Plan {
	var p Plan
	soonest := func(t time.Time) {
		if p.Next.IsZero() || t.Before(p.Next) {
			p.Next = t
		}
	}
	wanted := map[string]bool{}
	var due []Order
	since := map[string]time.Time{}
	for _, w := range wants {
		wanted[w.App] = true
		c, ok := have[w.App]
		reason := ""
		at := time.Time{}
		switch {
		case !ok || c.Chain == "":
			reason = ReasonNew
		case !slices.Equal(c.Names, w.Names):
			reason = ReasonNames
		case !now.Before(c.NotAfter):
			reason = ReasonExpired
		case !now.Before(RenewAt(c, renewBefore)):
			reason = ReasonRenewal
		default:
			at = RenewAt(c, renewBefore)
		}
		if reason == "" {
			soonest(at)
			continue
		}
		if ok && c.Failures > 0 && now.Before(c.RetryAt) {
			soonest(c.RetryAt)
			continue
		}
		if reason == ReasonNames && now.Before(c.IssuedAt.Add(NamesWait)) {
			soonest(c.IssuedAt.Add(NamesWait))
			continue
		}
		since[w.App] = w.Since
		due = append(due, Order{App: w.App, Names: w.Names, Generation: w.Generation, Reason: reason, Have: c})
	}
	slices.SortStableFunc(due, func(a, b Order) int { return urgency(a, b, since) })
	for i, at := range budget.Slots(now, len(due)) {
		if !at.After(now) {
			p.Orders = append(p.Orders, due[i])
			continue
		}
		if len(p.Held) == 0 {
			soonest(at)
		}
		p.Held = append(p.Held, Held{Order: due[i], At: at})
	}
	for app := range have {
		if !wanted[app] {
			p.Forget = append(p.Forget, app)
		}
	}
	slices.Sort(p.Forget)
	return p
}

// urgency orders due orders for MakePlan: certificates in service (a
// renewal, an expired one) by expiry, then the others by how long their
// app has waited, then by app.
func urgency(a, b Order, since map[string]time.Time) int {
	inService := func(o Order) bool { return o.Reason == ReasonRenewal || o.Reason == ReasonExpired }
	switch {
	case inService(a) && !inService(b):
		return -1
	case !inService(a) && inService(b):
		return 1
	case inService(a):
		if c := a.Have.NotAfter.Compare(b.Have.NotAfter); c != 0 {
			return c
		}
	default:
		if c := since[a.App].Compare(since[b.App]); c != 0 {
			return c
		}
	}
	return strings.Compare(a.App, b.App)
}

// RenewAt is when c falls due: renewBefore ahead of its expiry, or, for
// a certificate that lives no longer than renewBefore (a private CA's
// day-long ones), at two thirds of its life, so that a renewal is never
// due the moment it is issued.
func RenewAt(c store.Certificate, renewBefore time.Duration) time.Time {
	at := c.NotAfter.Add(-renewBefore)
	if !at.After(c.NotBefore) {
		at = c.NotBefore.Add(c.NotAfter.Sub(c.NotBefore) * 2 / 3)
	}
	return at
}

// NamesWait is the least time between a certificate's issuance and an
// order for changed hosts: a spec applied again and again with other
// hosts orders at most one certificate a NamesWait, not one an apply,
// which would spend the CA's limits every app shares (Let's Encrypt: 300
// orders per 3 hours per account).
const NamesWait = time.Minute

// Backoff is how long to wait after the n-th consecutive failure: 2 min,
// then three times longer each time, up to a day, so an order that keeps
// failing stays inside a public CA's failed-validation limit (Let's
// Encrypt: 5 an hour per account and name). jitter in [0, 1) spreads it by
// up to a tenth, so that apps that failed together do not retry together.
func Backoff(n int, jitter float64) time.Duration {
	d := 2 * time.Minute
	for i := 1; i < n && d < 24*time.Hour; i++ {
		d *= 3
	}
	d = min(d, 24*time.Hour)
	return d + time.Duration(float64(d)/10*jitter)
}
