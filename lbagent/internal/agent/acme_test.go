package agent

import (
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.uber.org/zap"

	"github.com/berthhq/berth/common/msg"
	"github.com/berthhq/berth/common/spec"
	"github.com/berthhq/berth/internal/testrig"
	"github.com/berthhq/berth/lbagent/internal/state"
)

// opener opens "boxes" that hold the key in the clear, or fails.
type opener struct {
	fail  bool
	calls int
}

func (o *opener) OpenSealed(boxes []msg.SealedKey) ([]byte, error) {
	o.calls++
	if o.fail {
		return nil, errors.New("does not open")
	}
	return []byte(boxes[0].Box), nil
}

func acmeCertFor(t *testing.T, serial int64, notAfter time.Time, names ...string) *msg.Certificate {
	t.Helper()
	chain, key, notBefore := testrig.Certificate(t, serial, notAfter, names...)
	return &msg.Certificate{App: "web", Names: names, Chain: chain, Keys: []msg.SealedKey{{Box: key}}, Serial: fmt.Sprintf("%x", serial),
		NotBefore: notBefore, NotAfter: notAfter}
}

// TestACMECertificateIsNeverDroppedWhileValid: a certificate served stays
// served through a bucket that lost it (NATS back empty), a newer one that
// does not open, and a republished record; a new one replaces it.
func TestACMECertificateIsNeverDroppedWhileValid(t *testing.T) {
	t.Parallel()
	now := time.Now()
	o := &opener{}
	c := newCerts(t.TempDir(), o, zap.NewNop())
	rec := &msg.App{Name: "web", Routing: spec.Routing{Hosts: []string{"web.example.com"}, TLS: &spec.TLS{ACME: true, RedirectHTTP: true}}}
	served := func(app state.App) string {
		t.Helper()
		out := c.apply(state.Snapshot{Apps: []state.App{app}}, now)
		return out.Apps[0].Spec.Routing.TLS.Certificate
	}
	require.Empty(t, served(state.App{Spec: rec}), "no certificate yet: plain HTTP")

	first := acmeCertFor(t, 1, now.Add(90*24*time.Hour), "web.example.com")
	f1 := served(state.App{Spec: rec, Cert: first})
	require.NotEmpty(t, f1)
	require.True(t, rec.Routing.TLS.Certificate == "", "the record itself is not changed")

	require.Equal(t, f1, served(state.App{Spec: rec}), "the bucket lost it: still served")
	again := *rec // the leader republished the record
	require.Equal(t, f1, served(state.App{Spec: &again}))

	o.fail = true
	broken := acmeCertFor(t, 2, now.Add(91*24*time.Hour), "web.example.com")
	require.Equal(t, f1, served(state.App{Spec: &again, Cert: broken}), "a newer one that does not open leaves the served one")
	calls := o.calls
	require.Equal(t, f1, served(state.App{Spec: &again, Cert: broken}))
	require.Equal(t, calls, o.calls, "a broken certificate is tried once, not at every sync")
	out := c.apply(state.Snapshot{Apps: []state.App{{Spec: &again, Cert: broken}}}, now)
	require.Equal(t, first, out.Apps[0].Cert, "the names that decide the hosts are the served certificate's")
	o.fail = false
	f3 := served(state.App{Spec: &again, Cert: acmeCertFor(t, 3, now.Add(92*24*time.Hour), "web.example.com")})
	require.NotEqual(t, f1, f3, "a new certificate, new files")

	// Expired: no longer kept when the bucket has none.
	c.served["web"] = selfCert{src: &again, out: c.served["web"].out, serial: "3", files: c.served["web"].files, notAfter: now.Add(-time.Minute)}
	require.Empty(t, served(state.App{Spec: &again}))
}
