package certs

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"math/big"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"github.com/stretchr/testify/require"
	"go.uber.org/zap"

	"github.com/berthhq/berth/common/msg"
	"github.com/berthhq/berth/common/spec"
	"github.com/berthhq/berth/internal/testrig"
	"github.com/berthhq/berth/scheduler/internal/store"
	"github.com/berthhq/berth/scheduler/internal/vault"
)

func TestMain(m *testing.M) { testrig.Main(m) }

// testCA issues certificates as an ACME CA would, valid for validity.
type testCA struct {
	mu       sync.Mutex
	key      crypto.Signer
	cert     *x509.Certificate
	validity time.Duration
	now      func() time.Time
	fail     error
	calls    []call
}

type call struct {
	app      string
	names    []string
	replaces bool
}

func newTestCA(t *testing.T, now func() time.Time) *testCA {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	require.NoError(t, err)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "test CA"}, IsCA: true, BasicConstraintsValid: true,
		NotBefore: now().Add(-time.Hour), NotAfter: now().Add(10 * 365 * 24 * time.Hour), KeyUsage: x509.KeyUsageCertSign}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	require.NoError(t, err)
	cert, err := x509.ParseCertificate(der)
	require.NoError(t, err)
	return &testCA{key: key, cert: cert, validity: 90 * 24 * time.Hour, now: now}
}

func (ca *testCA) Obtain(_ context.Context, _ store.Lease, app string, names []string, replaces *x509.Certificate) (Issued, error) {
	ca.mu.Lock()
	defer ca.mu.Unlock()
	ca.calls = append(ca.calls, call{app: app, names: names, replaces: replaces != nil})
	if ca.fail != nil {
		return Issued{}, ca.fail
	}
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	serial, _ := rand.Int(rand.Reader, big.NewInt(1<<62))
	tmpl := &x509.Certificate{SerialNumber: serial, DNSNames: names, NotBefore: ca.now().Add(-time.Minute), NotAfter: ca.now().Add(ca.validity)}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, key.Public(), ca.key)
	if err != nil {
		return Issued{}, err
	}
	kd, _ := x509.MarshalECPrivateKey(key)
	chain := append(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: ca.cert.Raw})...)
	return Issued{Chain: chain, Key: pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kd})}, nil
}

// testShelf records what the manager puts.
type testShelf struct {
	mu   sync.Mutex
	keys map[string][]byte
}

func (s *testShelf) Put(_ context.Context, c store.Certificate, key []byte, _ uint64) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.keys[c.App] = append([]byte(nil), key...)
	return nil
}

func (s *testShelf) Sweep(_ context.Context, keep []string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	for app := range s.keys {
		found := false
		for _, k := range keep {
			found = found || k == app
		}
		if !found {
			delete(s.keys, app)
		}
	}
	return nil
}

// txer is publish.Publisher.Tx without NATS.
type txer struct{ st *store.Store }

func (t txer) Tx(ctx context.Context, l store.Lease, fn func(ctx context.Context, tx *store.Tx) error) error {
	return t.st.LeaderTx(ctx, l, fn)
}

func TestManagerOrdersRenewsBacksOffAndForgets(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	st, err := store.Open(ctx, testrig.Postgres(t))
	require.NoError(t, err)
	t.Cleanup(st.Close)
	_, err = st.Migrate(ctx)
	require.NoError(t, err)
	l, ok, err := st.Acquire(ctx, "scheduler", "a", time.Hour)
	require.NoError(t, err)
	require.True(t, ok)

	now := time.Now().UTC().Truncate(time.Second)
	clock := func() time.Time { return now }
	ca := newTestCA(t, clock)
	shelf := &testShelf{keys: map[string][]byte{}}
	keys, err := vault.New(make([]byte, 32))
	require.NoError(t, err)
	served := false
	m := New(Config{Served: func(app string, gen int64) bool { return served && app == "web" && gen >= 1 }}, st, txer{st}, ca, shelf, keys,
		func() (store.Lease, bool) { return l, true }, zap.NewNop())
	m.now, m.jitter = clock, func() float64 { return 0 }

	app := &spec.App{Name: "web", Image: "web:1", Port: 8080, Routing: spec.Routing{Hosts: []string{"web.example.com"}, TLS: &spec.TLS{ACME: true}}}
	_, _, err = st.Apply(ctx, app, nil)
	require.NoError(t, err)
	events := func() []msg.EventKind {
		evs, err := st.Events(ctx, "web", 0, 100)
		require.NoError(t, err)
		var kinds []msg.EventKind
		for _, e := range evs {
			if e.Kind == msg.EventCertificateIssued || e.Kind == msg.EventCertificateRenewed || e.Kind == msg.EventCertificateFailed {
				kinds = append(kinds, e.Kind)
			}
		}
		return kinds
	}

	// No order until the lbagents serve the app (its challenges would
	// find no route), or a minute has passed.
	next, err := m.Step(ctx, l, true)
	require.NoError(t, err)
	require.Equal(t, now.Add(servedPoll), next)
	require.Empty(t, ca.calls)
	served = true

	// A failed first order: backoff, an event that says why and when.
	ca.fail = errors.New("acme: error: 403 :: urn:ietf:params:acme:error:unauthorized :: connection refused")
	_, err = m.Step(ctx, l, true)
	require.NoError(t, err)
	have, err := st.Certificates(ctx)
	require.NoError(t, err)
	require.Equal(t, 1, have["web"].Failures)
	require.Equal(t, now.Add(2*time.Minute), have["web"].RetryAt)
	require.Contains(t, have["web"].LastError, "unauthorized")
	require.Equal(t, []msg.EventKind{msg.EventCertificateFailed}, events())
	evs, _ := st.Events(ctx, "web", 0, 100)
	require.Contains(t, evs[len(evs)-1].Message, "served over plain HTTP until one is issued")
	next, err = m.Step(ctx, l, false)
	require.NoError(t, err)
	require.Equal(t, now.Add(2*time.Minute), next, "no order before the backoff ends")
	require.Len(t, ca.calls, 1)

	// The backoff ends: issued, stored encrypted, put on the shelf.
	now = now.Add(2 * time.Minute)
	ca.fail = nil
	_, err = m.Step(ctx, l, false)
	require.NoError(t, err)
	have, _ = st.Certificates(ctx)
	c := have["web"]
	require.Zero(t, c.Failures)
	require.Equal(t, []string{"web.example.com"}, c.Names)
	require.NotContains(t, string(c.Key), "PRIVATE KEY", "the key is stored encrypted")
	require.Contains(t, string(shelf.keys["web"]), "PRIVATE KEY")
	require.Equal(t, []msg.EventKind{msg.EventCertificateFailed, msg.EventCertificateIssued}, events())
	next, err = m.Step(ctx, l, false)
	require.NoError(t, err)
	require.Equal(t, c.NotAfter.Add(-DefaultRenewBefore), next, "the next look is the renewal")

	// 30 days before expiry: renewed, as a replacement (ARI).
	now = c.NotAfter.Add(-DefaultRenewBefore)
	_, err = m.Step(ctx, l, false)
	require.NoError(t, err)
	require.True(t, ca.calls[len(ca.calls)-1].replaces)
	require.Equal(t, []msg.EventKind{msg.EventCertificateFailed, msg.EventCertificateIssued, msg.EventCertificateRenewed}, events())

	// A rate limit holds the next attempt until the CA's Retry-After.
	now = now.Add(61 * 24 * time.Hour)
	ca.fail = &ErrRateLimited{RetryAfter: 3 * time.Hour, Err: errors.New("too many certificates")}
	_, err = m.Step(ctx, l, false)
	require.NoError(t, err)
	have, _ = st.Certificates(ctx)
	require.Equal(t, now.Add(3*time.Hour), have["web"].RetryAt)
	evs, _ = st.Events(ctx, "web", 0, 100)
	require.Contains(t, evs[len(evs)-1].Message, "the app keeps its certificate, valid until")

	// A replica with another --cert-key-file cannot open the key, and
	// leaves the certificate in the bucket.
	other, err := vault.New([]byte("0123456789abcdef0123456789abcdef"))
	require.NoError(t, err)
	m2 := New(Config{}, st, txer{st}, ca, shelf, other, func() (store.Lease, bool) { return l, true }, zap.NewNop())
	m2.now = clock
	_, err = m2.Step(ctx, l, true)
	require.NoError(t, err)
	require.Contains(t, shelf.keys, "web", "what the lbagents serve is never taken away")

	// tls.acme off: the certificate is forgotten and leaves the shelf.
	app.Routing.TLS = nil
	_, _, err = st.Apply(ctx, app, nil)
	require.NoError(t, err)
	_, err = m.Step(ctx, l, false)
	require.NoError(t, err)
	have, _ = st.Certificates(ctx)
	require.Empty(t, have)
	require.Empty(t, shelf.keys)
}

// TestManagerGlobalOrderRate: past OrdersPerHour in an hour, across
// apps, an order waits; the app gets one certificate_delayed event that
// says when it will try, the metrics show it, a new leader counts the
// old one's orders from Postgres, and a renewal goes before new orders
// when a slot opens.
func TestManagerGlobalOrderRate(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	st, err := store.Open(ctx, testrig.Postgres(t))
	require.NoError(t, err)
	t.Cleanup(st.Close)
	_, err = st.Migrate(ctx)
	require.NoError(t, err)
	l, ok, err := st.Acquire(ctx, "scheduler", "a", time.Hour)
	require.NoError(t, err)
	require.True(t, ok)

	now := time.Now().UTC().Truncate(time.Second)
	clock := func() time.Time { return now }
	ca := newTestCA(t, clock)
	shelf := &testShelf{keys: map[string][]byte{}}
	keys, err := vault.New(make([]byte, 32))
	require.NoError(t, err)
	newManager := func() *Manager {
		m := New(Config{OrdersPerHour: 2}, st, txer{st}, ca, shelf, keys, func() (store.Lease, bool) { return l, true }, zap.NewNop())
		m.now, m.jitter = clock, func() float64 { return 0 }
		return m
	}
	m := newManager()
	apply := func(name string) {
		t.Helper()
		app := &spec.App{Name: name, Image: "web:1", Port: 8080, Routing: spec.Routing{Hosts: []string{name + ".example.com"}, TLS: &spec.TLS{ACME: true}}}
		_, _, err := st.Apply(ctx, app, nil)
		require.NoError(t, err)
	}
	delayed := func(app string) []store.Event {
		t.Helper()
		evs, err := st.Events(ctx, app, 0, 100)
		require.NoError(t, err)
		var out []store.Event
		for _, e := range evs {
			if e.Kind == msg.EventCertificateDelayed {
				out = append(out, e)
			}
		}
		return out
	}
	ordered := func() []string {
		ca.mu.Lock()
		defer ca.mu.Unlock()
		var out []string
		for _, c := range ca.calls {
			out = append(out, c.app)
		}
		return out
	}
	for _, name := range []string{"a", "b", "c"} {
		apply(name)
	}

	// Two orders in the hour, the apps in the order they were applied;
	// the third waits for the first one's slot, an hour after it.
	for range 3 {
		_, err = m.Step(ctx, l, false)
		require.NoError(t, err)
	}
	require.Equal(t, []string{"a", "b"}, ordered())
	evs := delayed("c")
	require.Len(t, evs, 1)
	slot := now.Add(OrderWindow)
	require.Contains(t, evs[0].Message, "certificate for c.example.com waits for the global ACME order rate (2 orders an hour across every app, --acme-orders-per-hour): "+
		"0 started in the last hour and 2 due go before it (renewals closest to expiry first, then apps by how long they have waited); next attempt at "+slot.Format(time.RFC3339)+" at the earliest")
	require.Contains(t, evs[0].Message, "the app is served over plain HTTP until one is issued")
	require.Equal(t, slot.Format(time.RFC3339), evs[0].Details["retry_at"])
	require.Equal(t, 1.0, gauge(t, m.held))
	require.Equal(t, 2.0, gauge(t, m.lastHour))
	next, err := m.Step(ctx, l, false)
	require.NoError(t, err)
	require.Equal(t, slot, next, "the manager looks again when the slot opens")
	require.Len(t, delayed("c"), 1, "said once, not at every step")

	// A new leader counts the old one's orders: c still waits.
	m2 := newManager()
	_, err = m2.Step(ctx, l, false)
	require.NoError(t, err)
	require.Equal(t, []string{"a", "b"}, ordered())
	require.Equal(t, 1.0, gauge(t, m2.held))

	// a's certificate falls due for renewal while d, a new app, and c
	// wait: when the slot opens, the renewal goes first.
	apply("d")
	have, err := st.Certificates(ctx)
	require.NoError(t, err)
	renewing := have["a"]
	renewing.NotBefore, renewing.NotAfter = now.Add(-80*24*time.Hour), slot.Add(10*24*time.Hour)
	require.NoError(t, st.LeaderTx(ctx, l, func(ctx context.Context, tx *store.Tx) error { return tx.PutCertificate(ctx, renewing) }))
	_, err = m2.Step(ctx, l, false)
	require.NoError(t, err)
	require.Equal(t, 3.0, gauge(t, m2.held))
	require.Len(t, ordered(), 2)
	now = slot
	_, err = m2.Step(ctx, l, false)
	require.NoError(t, err)
	require.Equal(t, []string{"a", "b", "a"}, ordered())
	require.True(t, ca.calls[2].replaces, "a renewal")
	require.Len(t, delayed("a"), 1, "the renewal waited for the slot too, and said so")
	require.Contains(t, delayed("a")[0].Message, "the app keeps its certificate, valid until")

	// b's slot opens next, for c, which has waited longest of the new.
	now = now.Add(time.Second)
	_, err = m2.Step(ctx, l, false)
	require.NoError(t, err)
	require.Equal(t, []string{"a", "b", "a", "c"}, ordered())
	require.Equal(t, 1.0, gauge(t, m2.held), "d waits")
	recent, err := st.ACMEOrdersSince(ctx, now.Add(-OrderWindow))
	require.NoError(t, err)
	require.Len(t, recent, 2)
}

// gauge reads a gauge's value.
func gauge(t *testing.T, g prometheus.Gauge) float64 {
	t.Helper()
	var m dto.Metric
	require.NoError(t, g.Write(&m))
	return m.GetGauge().GetValue()
}
