package certs

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"math/rand/v2"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"

	"github.com/berthhq/berth/common/logging"
	"github.com/berthhq/berth/common/msg"
	"github.com/berthhq/berth/scheduler/internal/store"
	"github.com/berthhq/berth/scheduler/internal/vault"
)

// Store is what the manager reads.
type Store interface {
	List(ctx context.Context) ([]store.App, error)
	Certificates(ctx context.Context) (map[string]store.Certificate, error)
	// ACMEOrdersSince returns when each order recorded at or after since
	// started (store.Tx.AddACMEOrder records them).
	ACMEOrdersSince(ctx context.Context, since time.Time) ([]time.Time, error)
}

// Txer runs a fenced transaction and publishes the events it added once
// it commits (publish.Publisher.Tx).
type Txer interface {
	Tx(ctx context.Context, l store.Lease, fn func(ctx context.Context, tx *store.Tx) error) error
}

// Issuer orders one certificate (ACME).
type Issuer interface {
	Obtain(ctx context.Context, l store.Lease, app string, names []string, replaces *x509.Certificate) (Issued, error)
}

// Shelf is where lbagents find the certificates (BusShelf).
type Shelf interface {
	Put(ctx context.Context, c store.Certificate, key []byte, term uint64) error
	Sweep(ctx context.Context, keep []string) error
}

// Served reports whether the lbagents serve app at generation (or later):
// until they do, the CA's challenge would find no route for its hosts.
type Served func(app string, generation int64) bool

// ServedWait bounds how long an order waits for the lbagents to serve its
// app (one whose config an lbagent refuses never is): then it goes ahead.
const ServedWait = time.Minute

// servedPoll is how often an order that waits for the lbagents looks again.
const servedPoll = 250 * time.Millisecond

// Config tunes the manager.
type Config struct {
	// RenewBefore is how long before expiry a certificate is renewed.
	RenewBefore time.Duration
	// Resync is how often every certificate is put in the bucket again,
	// as the scheduler's other records are.
	Resync time.Duration
	// OrderTimeout bounds one order, challenges included.
	OrderTimeout time.Duration
	// Served, when set, holds an order back until the lbagents serve its
	// app's generation, at most ServedWait.
	Served Served
	// OrdersPerHour is the global order rate: at most this many orders
	// start in any hour, across every app (DefaultOrdersPerHour when 0).
	OrdersPerHour int
}

// Manager orders, renews and publishes the certificates while its replica
// leads. Safe for concurrent use: Wake from any goroutine.
type Manager struct {
	cfg    Config
	store  Store
	tx     Txer
	issuer Issuer
	shelf  Shelf
	vault  *vault.Vault
	leader func() (store.Lease, bool)
	logger *zap.Logger
	wake   chan struct{}
	// repair asks the next step to put every certificate again.
	repair atomic.Bool
	// waiting is when each order began to wait for the lbagents, by app
	// and generation. Used by Run's goroutine only.
	waiting map[appGen]time.Time
	// delayed are the apps whose order waits for the global rate and has
	// been announced (msg.EventCertificateDelayed). Used by Run's goroutine only.
	delayed map[string]bool
	now     func() time.Time
	jitter  func() float64

	expiry   *prometheus.GaugeVec
	failures *prometheus.GaugeVec
	orders   *prometheus.CounterVec
	held     prometheus.Gauge
	lastHour prometheus.Gauge
}

// New returns a manager.
func New(cfg Config, st Store, tx Txer, issuer Issuer, shelf Shelf, keys *vault.Vault, leader func() (store.Lease, bool), logger *zap.Logger) *Manager {
	if cfg.RenewBefore <= 0 {
		cfg.RenewBefore = DefaultRenewBefore
	}
	if cfg.Resync <= 0 {
		cfg.Resync = 30 * time.Second
	}
	if cfg.OrderTimeout <= 0 {
		cfg.OrderTimeout = 5 * time.Minute
	}
	if cfg.OrdersPerHour <= 0 {
		cfg.OrdersPerHour = DefaultOrdersPerHour
	}
	return &Manager{cfg: cfg, store: st, tx: tx, issuer: issuer, shelf: shelf, vault: keys, leader: leader, logger: logger.Named("certs"),
		wake: make(chan struct{}, 1), waiting: map[appGen]time.Time{}, delayed: map[string]bool{}, now: time.Now, jitter: rand.Float64,
		expiry: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "berth_scheduler_certificate_expiry_timestamp_seconds",
			Help: "When each app's ACME certificate expires (Unix time); alert when it is within 14 days."}, []string{"app"}),
		failures: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "berth_scheduler_certificate_failures",
			Help: "Consecutive failed orders of each app's certificate since its last issuance."}, []string{"app"}),
		orders: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "berth_scheduler_certificate_orders_total",
			Help: "ACME orders by result (issued, renewed, failed)."}, []string{"result"}),
		held: prometheus.NewGauge(prometheus.GaugeOpts{Name: "berth_scheduler_certificate_orders_held",
			Help: "Due ACME orders that the global order rate (--acme-orders-per-hour) holds back."}),
		lastHour: prometheus.NewGauge(prometheus.GaugeOpts{Name: "berth_scheduler_certificate_orders_last_hour",
			Help: "ACME orders started in the last hour across every app, which the global order rate counts."}),
	}
}

// Collectors returns the manager's metrics.
func (m *Manager) Collectors() []prometheus.Collector {
	return []prometheus.Collector{m.expiry, m.failures, m.orders, m.held, m.lastHour}
}

// Wake makes the manager look again now: an app changed, or leadership
// was gained.
func (m *Manager) Wake() {
	select {
	case m.wake <- struct{}{}:
	default:
	}
}

// Repair puts every certificate in the bucket again now: the guard saw a
// value there that the scheduler had not sealed (a forgery, or an older
// one copied back), which a reader starting now would find as the key's.
func (m *Manager) Repair() {
	m.repair.Store(true)
	m.Wake()
}

// aad binds a certificate key's ciphertext to its app's row.
func aad(app string) string { return "certificate " + app }

// Run manages the certificates until ctx ends: a step at once, which
// puts every certificate again, then one on each Wake, when the last step
// asked and every Resync. It is a leader-only service (run it in a
// leader.Group): each step still checks the lease and skips while it is
// not held. It returns with its gauges cleared, as a follower exports no
// certificate's state. Runs do not overlap.
func (m *Manager) Run(ctx context.Context) error {
	defer m.following()
	var lastTerm uint64
	var lastPut time.Time
	for {
		wait := m.cfg.Resync
		if l, ok := m.leader(); ok {
			now := m.now()
			republish := m.repair.Swap(false) || l.Term != lastTerm || now.Sub(lastPut) >= m.cfg.Resync
			next, err := m.Step(ctx, l, republish)
			switch {
			case err != nil && ctx.Err() == nil:
				m.logger.Warn("certificates: will try again", zap.Error(err))
				wait = 5 * time.Second
			case err == nil && republish:
				lastTerm, lastPut = l.Term, now
			}
			if err == nil && !next.IsZero() {
				wait = min(wait, max(next.Sub(m.now()), 0))
			}
		} else {
			lastTerm = 0
			m.following()
		}
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil
		case <-m.wake:
		case <-t.C:
		}
		t.Stop()
	}
}

// following clears the gauges and the announced delays: a follower
// exports no certificate's state, as the leader's is the one an alert
// must read.
func (m *Manager) following() {
	m.expiry.Reset()
	m.failures.Reset()
	m.held.Set(0)
	m.lastHour.Set(0)
	clear(m.delayed)
}

// Step does what is due under lease l: forgets the certificates of apps
// that no longer want one, puts every certificate in the bucket again
// when republish, and carries out the first due order. It returns when to
// look again (now, when more orders are due).
func (m *Manager) Step(ctx context.Context, l store.Lease, republish bool) (time.Time, error) {
	apps, err := m.store.List(ctx)
	if err != nil {
		return time.Time{}, err
	}
	have, err := m.store.Certificates(ctx)
	if err != nil {
		return time.Time{}, err
	}
	wants := Wants(apps)
	now := m.now()
	recent, err := m.store.ACMEOrdersSince(ctx, now.Add(-OrderWindow))
	if err != nil {
		return time.Time{}, err
	}
	budget := Budget{Limit: m.cfg.OrdersPerHour, Recent: recent}
	plan := MakePlan(wants, have, now, m.cfg.RenewBefore, budget)
	m.held.Set(float64(len(plan.Held)))
	m.lastHour.Set(float64(budget.InWindow(now)))
	if err := m.announceDelays(ctx, l, plan, budget.InWindow(now)); err != nil {
		return time.Time{}, err
	}
	if len(plan.Forget) > 0 {
		if err := m.tx.Tx(ctx, l, func(ctx context.Context, tx *store.Tx) error {
			for _, app := range plan.Forget {
				if err := tx.DeleteCertificate(ctx, app); err != nil {
					return err
				}
			}
			return nil
		}); err != nil {
			return time.Time{}, err
		}
		for _, app := range plan.Forget {
			delete(have, app)
			m.expiry.DeleteLabelValues(app)
			m.failures.DeleteLabelValues(app)
			m.logger.Info("forgot the certificate of an app without tls.acme", zap.String(logging.KeyApp, app))
		}
	}
	var putErr error
	if republish || len(plan.Forget) > 0 {
		// A failure here does not hold back the orders below.
		putErr = m.putAll(ctx, l, wants, have)
	}
	for app, c := range have {
		if c.Chain != "" {
			m.expiry.WithLabelValues(app).Set(float64(c.NotAfter.Unix()))
		}
		m.failures.WithLabelValues(app).Set(float64(c.Failures))
	}
	for _, o := range plan.Orders {
		if !m.served(o, now) {
			// Look again soon: an lbagent serves a new app within a second.
			if next := now.Add(servedPoll); plan.Next.IsZero() || next.Before(plan.Next) {
				plan.Next = next
			}
			continue
		}
		if err := m.order(ctx, l, o); err != nil {
			return time.Time{}, errors.Join(putErr, err)
		}
		return m.now(), putErr
	}
	return plan.Next, putErr
}

type appGen struct {
	app string
	gen int64
}

// served reports whether o's app is served by the lbagents, or has
// waited for them long enough.
func (m *Manager) served(o Order, now time.Time) bool {
	if m.cfg.Served == nil {
		return true
	}
	key := appGen{o.App, o.Generation}
	if m.cfg.Served(o.App, o.Generation) {
		delete(m.waiting, key)
		return true
	}
	since, ok := m.waiting[key]
	if !ok {
		for k := range m.waiting { // one generation of an app waits at a time
			if k.app == o.App {
				delete(m.waiting, k)
			}
		}
		m.waiting[key] = now
		m.logger.Info("waiting for the lbagents to serve the app before ordering its certificate", zap.String(logging.KeyApp, o.App), zap.Int64("generation", o.Generation))
		return false
	}
	if now.Sub(since) >= ServedWait {
		m.logger.Warn("ordering a certificate though not every lbagent serves the app yet", zap.String(logging.KeyApp, o.App), zap.Duration("waited", now.Sub(since)))
		delete(m.waiting, key)
		return true
	}
	return false
}

// putAll puts every issued certificate an app wants, and sweeps the rest.
func (m *Manager) putAll(ctx context.Context, l store.Lease, wants []Want, have map[string]store.Certificate) error {
	// Every app that wants a certificate and has one keeps its key in the
	// bucket, even when this replica cannot open it (another
	// --cert-key-file): what the lbagents serve is never taken away.
	var keep []string
	var errs []error
	for _, w := range wants {
		c, ok := have[w.App]
		if !ok || c.Chain == "" {
			continue
		}
		keep = append(keep, c.App)
		key, err := m.vault.Open(c.Key, aad(c.App))
		if err != nil {
			m.logger.Error("a stored certificate key does not open: is --cert-key-file the key it was stored with? The bucket keeps what it has",
				zap.String(logging.KeyApp, c.App), zap.Error(err))
			continue
		}
		err = m.shelf.Put(ctx, c, key, l.Term)
		clear(key)
		if err != nil {
			errs = append(errs, err)
		}
	}
	if err := m.shelf.Sweep(ctx, keep); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// order carries out one order and records its outcome.
func (m *Manager) order(ctx context.Context, l store.Lease, o Order) error {
	var replaces *x509.Certificate
	if o.Have.Chain != "" && (o.Reason == ReasonRenewal || o.Reason == ReasonExpired) {
		replaces, _ = Leaf([]byte(o.Have.Chain))
	}
	log := m.logger.With(zap.String(logging.KeyApp, o.App), zap.Strings("names", o.Names), zap.String("reason", o.Reason))
	start := m.now()
	// Counted before the CA hears of it, so that an order that never
	// finishes (a crash, a lost lease) counts against the global rate too.
	if err := m.tx.Tx(ctx, l, func(ctx context.Context, tx *store.Tx) error {
		return tx.AddACMEOrder(ctx, store.ACMEOrder{App: o.App, Names: o.Names, Reason: o.Reason, StartedAt: start.UTC()})
	}); err != nil {
		return err
	}
	log.Info("ordering a certificate")
	octx, cancel := context.WithTimeout(ctx, m.cfg.OrderTimeout)
	stop := m.whileLeading(octx, l, cancel)
	issued, err := m.issuer.Obtain(octx, l, o.App, o.Names, replaces)
	stop()
	cancel()
	if ctx.Err() != nil {
		return ctx.Err()
	}
	var leaf *x509.Certificate
	if err == nil {
		leaf, err = check(issued, o.Names)
	}
	if err != nil {
		return m.failed(ctx, l, o, err, log)
	}
	sealed, err := m.vault.Seal(issued.Key, aad(o.App))
	if err != nil {
		return err
	}
	c := store.Certificate{App: o.App, Names: o.Names, Chain: string(issued.Chain), Key: sealed, Serial: leaf.SerialNumber.Text(16),
		NotBefore: leaf.NotBefore.UTC(), NotAfter: leaf.NotAfter.UTC(), IssuedAt: m.now().UTC()}
	kind, verb := msg.EventCertificateIssued, "issued"
	if o.Have.Chain != "" {
		kind, verb = msg.EventCertificateRenewed, "renewed"
	}
	ev := store.Event{App: o.App, Kind: kind,
		Message: fmt.Sprintf("certificate for %s %s, valid until %s", strings.Join(o.Names, ", "), verb, c.NotAfter.Format(time.RFC3339)),
		Details: map[string]string{"names": strings.Join(o.Names, ","), "serial": c.Serial, "not_after": c.NotAfter.Format(time.RFC3339), "reason": o.Reason}}
	if err := m.tx.Tx(ctx, l, func(ctx context.Context, tx *store.Tx) error {
		if err := tx.PutCertificate(ctx, c); err != nil {
			return err
		}
		_, err := tx.AddEvent(ctx, ev)
		return err
	}); err != nil {
		return err
	}
	m.orders.WithLabelValues(verb).Inc()
	log.Info("certificate "+verb, zap.Time("not_after", c.NotAfter), zap.Duration("took", m.now().Sub(start)))
	err = m.shelf.Put(ctx, c, issued.Key, l.Term)
	clear(issued.Key)
	return err
}

// whileLeading cancels an order once l is no longer this replica's
// lease, so that a deposed leader does not finish an order the new one
// makes too. The returned stop ends the watch.
func (m *Manager) whileLeading(ctx context.Context, l store.Lease, cancel context.CancelFunc) (stop func()) {
	done := make(chan struct{})
	go func() {
		t := time.NewTicker(time.Second)
		defer t.Stop()
		for {
			select {
			case <-done:
				return
			case <-ctx.Done():
				return
			case <-t.C:
				if cur, ok := m.leader(); !ok || cur.Term != l.Term {
					m.logger.Warn("leadership lost during an order: cancelling it")
					cancel()
					return
				}
			}
		}
	}()
	return func() { close(done) }
}

// failed records a failed order: one more failure, the backoff (or the
// CA's Retry-After, when longer) and an event that says why and when next.
func (m *Manager) failed(ctx context.Context, l store.Lease, o Order, cause error, log *zap.Logger) error {
	c := o.Have
	if c.App == "" || c.Chain == "" {
		c.App, c.Names = o.App, o.Names
	}
	c.Failures++
	wait := Backoff(c.Failures, m.jitter())
	var rl *ErrRateLimited
	if errors.As(cause, &rl) && rl.RetryAfter > wait {
		wait = rl.RetryAfter
	}
	c.RetryAt = m.now().Add(wait).UTC().Truncate(time.Second)
	c.LastError = msg.Truncate(cause.Error(), 900)
	verb, keeps := "issued", "the app is served over plain HTTP until one is issued"
	if o.Have.Chain != "" {
		verb, keeps = "renewed", "the app keeps its certificate, valid until "+o.Have.NotAfter.Format(time.RFC3339)
	}
	ev := store.Event{App: o.App, Kind: msg.EventCertificateFailed,
		Message: fmt.Sprintf("certificate for %s not %s (attempt %d): %s; next attempt at %s; %s", strings.Join(o.Names, ", "),
			verb, c.Failures, c.LastError, c.RetryAt.Format(time.RFC3339), keeps),
		Details: map[string]string{"names": strings.Join(o.Names, ","), "reason": o.Reason, "failures": strconv.Itoa(c.Failures),
			"retry_at": c.RetryAt.Format(time.RFC3339), "error": msg.Truncate(c.LastError, 512)}}
	m.orders.WithLabelValues("failed").Inc()
	log.Warn("certificate order failed", zap.Int("failures", c.Failures), zap.Time("retry_at", c.RetryAt), zap.Error(cause))
	return m.tx.Tx(ctx, l, func(ctx context.Context, tx *store.Tx) error {
		if err := tx.PutCertificate(ctx, c); err != nil {
			return err
		}
		_, err := tx.AddEvent(ctx, ev)
		return err
	})
}

// check makes sure an issued certificate is what was ordered: a chain
// whose leaf covers every name, with the key that matches it.
func check(issued Issued, names []string) (*x509.Certificate, error) {
	if _, err := tls.X509KeyPair(issued.Chain, issued.Key); err != nil {
		return nil, fmt.Errorf("the CA's certificate and the key do not pair: %w", err)
	}
	leaf, err := Leaf(issued.Chain)
	if err != nil {
		return nil, err
	}
	for _, n := range names {
		if err := leaf.VerifyHostname(n); err != nil {
			return nil, fmt.Errorf("the issued certificate does not cover %s", n)
		}
	}
	return leaf, nil
}
