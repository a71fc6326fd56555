package api

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"math/big"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/berthhq/berth/scheduler/internal/store"
)

// leafChain makes a chain whose leaf, for names, is signed by a CA named
// cn and org, valid from notBefore to notAfter.
func leafChain(t *testing.T, cn, org string, notBefore, notAfter time.Time, names ...string) string {
	t.Helper()
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	require.NoError(t, err)
	ca := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: cn, Organization: []string{org}},
		NotBefore: notBefore, NotAfter: notAfter.Add(time.Hour), IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	require.NoError(t, err)
	leaf := &x509.Certificate{SerialNumber: big.NewInt(0x3f1a2b), DNSNames: names, NotBefore: notBefore, NotAfter: notAfter}
	der, err := x509.CreateCertificate(rand.Reader, leaf, ca, key.Public(), caKey)
	require.NoError(t, err)
	return string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}))
}

// TestCertificatesView: GET /v1/certificates lists every app's
// certificate by app, with the leaf's issuer (as printable text), its
// validity and days left, and its renewal state; an app with
// routing.tls.acme and no certificate yet shows as pending; no key is
// ever in the answer.
func TestCertificatesView(t *testing.T) {
	t.Parallel()
	c := newAPIWith(t, Options{ACME: true, RenewBefore: 30 * 24 * time.Hour})
	now := time.Now().UTC().Truncate(time.Microsecond)
	for _, s := range []string{
		"name: fresh\nimage: web:1\nport: 8080\nrouting: {hosts: [b.example.com, a.example.com], tls: {acme: true}}\n",
		"name: plain\nimage: web:1\nport: 8080\nrouting: {hosts: [plain.example.com]}\n",
	} {
		code, _, raw := c.do("PUT", "/v1/apps/"+strings.TrimPrefix(strings.SplitN(s, "\n", 2)[0], "name: "), s)
		require.Equal(t, http.StatusOK, code, "%s", raw)
	}
	key := []byte("sealed-private-key-bytes")
	issued, issuedAt := now.Add(-24*time.Hour), now.Add(-24*time.Hour)
	certs := []store.Certificate{
		{App: "web", Names: []string{"web.example.com"}, Chain: leafChain(t, "R11\x1b[31m", "Let's Encrypt", issued, now.Add(60*24*time.Hour+time.Hour), "web.example.com"),
			Key: key, Serial: "3f1a2b", NotBefore: issued, NotAfter: now.Add(60*24*time.Hour + time.Hour), IssuedAt: issuedAt},
		{App: "old", Names: []string{"old.example.com"}, Chain: leafChain(t, "R10", "Let's Encrypt", now.Add(-80*24*time.Hour), now.Add(10*24*time.Hour+time.Hour), "old.example.com"),
			Key: key, Serial: "ab", NotBefore: now.Add(-80 * 24 * time.Hour), NotAfter: now.Add(10*24*time.Hour + time.Hour), IssuedAt: now.Add(-80 * 24 * time.Hour),
			Failures: 2, RetryAt: now.Add(time.Hour), LastError: "acme: challenge failed"},
		{App: "gone", Names: []string{"gone.example.com"}, Chain: "-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n",
			Key: key, Serial: "cd", NotBefore: now.Add(-100 * 24 * time.Hour), NotAfter: now.Add(-time.Hour), IssuedAt: now.Add(-100 * 24 * time.Hour)},
		{App: "new", Names: []string{"new.example.com"}, Failures: 1, RetryAt: now.Add(time.Minute), LastError: "acme: rate limited"},
	}
	l, ok, err := c.st.Acquire(context.Background(), "scheduler", "a", time.Minute)
	require.NoError(t, err)
	require.True(t, ok)
	require.NoError(t, c.st.LeaderTx(context.Background(), l, func(ctx context.Context, tx *store.Tx) error {
		for _, cert := range certs {
			if err := tx.PutCertificate(ctx, cert); err != nil {
				return err
			}
		}
		return nil
	}))

	code, _, raw := c.do("GET", "/v1/certificates", "")
	require.Equal(t, http.StatusOK, code, "%s", raw)
	require.NotContains(t, string(raw), "sealed-private-key-bytes")
	require.NotContains(t, string(raw), "c2VhbGVk", "not even base64")
	require.NotContains(t, string(raw), `"key`)
	var got []CertificateView
	require.NoError(t, json.Unmarshal(raw, &got))
	days := func(n int) *int { return &n }
	require.Equal(t, []CertificateView{
		{App: "fresh", Status: CertPending, Names: []string{"a.example.com", "b.example.com"}},
		{App: "gone", Status: CertExpired, Names: []string{"gone.example.com"}, Serial: "cd", NotBefore: certs[2].NotBefore, NotAfter: certs[2].NotAfter,
			DaysLeft: days(-1), IssuedAt: certs[2].IssuedAt},
		{App: "new", Status: CertPending, Names: []string{"new.example.com"}, Failures: 1, RetryAt: certs[3].RetryAt, LastError: "acme: rate limited"},
		{App: "old", Status: CertRenewing, Names: []string{"old.example.com"}, IssuerCN: "R10", IssuerOrg: "Let's Encrypt", Serial: "ab",
			NotBefore: certs[1].NotBefore, NotAfter: certs[1].NotAfter, DaysLeft: days(10), IssuedAt: certs[1].IssuedAt, Failures: 2, RetryAt: certs[1].RetryAt,
			LastError: "acme: challenge failed"},
		{App: "web", Status: CertValid, Names: []string{"web.example.com"}, IssuerCN: "R11[31m", IssuerOrg: "Let's Encrypt", Serial: "3f1a2b",
			NotBefore: issued, NotAfter: certs[0].NotAfter, DaysLeft: days(60), IssuedAt: issuedAt},
	}, got, "by app; the issuer's escape character is dropped; the unparsable chain has no issuer")
}

// TestCertificatesViewEmpty: no certificate and no ACME app is an empty
// list, not null.
func TestCertificatesViewEmpty(t *testing.T) {
	t.Parallel()
	code, _, raw := newAPI(t, "").do("GET", "/v1/certificates", "")
	require.Equal(t, http.StatusOK, code)
	require.Equal(t, "[]\n", string(raw))
}
