package selfsigned

import (
	"crypto/tls"
	"crypto/x509"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

func TestEnsureMakesReusesAndRenews(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	now := time.Now()
	c, err := Ensure(dir, "web", []string{"Web.example.com", "*.web.example.com"}, now)
	require.NoError(t, err)
	pair, err := tls.LoadX509KeyPair(c.Certificate, c.Key)
	require.NoError(t, err, "the key matches the certificate")
	leaf, err := x509.ParseCertificate(pair.Certificate[0])
	require.NoError(t, err)
	require.Equal(t, []string{"*.web.example.com", "web.example.com"}, leaf.DNSNames)
	require.NoError(t, leaf.VerifyHostname("web.example.com"))
	require.NoError(t, leaf.VerifyHostname("a.web.example.com"))
	st, err := os.Stat(c.Key)
	require.NoError(t, err)
	require.Equal(t, os.FileMode(0o600), st.Mode().Perm(), "the key is the lbagent's own")

	again, err := Ensure(dir, "web", []string{"*.web.example.com", "web.example.com"}, now.Add(time.Hour))
	require.NoError(t, err)
	require.Equal(t, c.NotAfter.Unix(), again.NotAfter.Unix(), "the same hosts reuse the certificate")

	renewed, err := Ensure(dir, "web", []string{"web.example.com", "*.web.example.com"}, now.Add(Validity-RenewBefore+time.Hour))
	require.NoError(t, err)
	require.True(t, renewed.NotAfter.After(c.NotAfter), "within RenewBefore of its end it is made again")
	require.NotEqual(t, c.Certificate, renewed.Certificate, "in files of its own, so that the config changes and nginx reloads")
	_, err = os.Stat(c.Certificate)
	require.NoError(t, err, "the one before is kept, for a config rolled back")

	other, err := Ensure(dir, "web", []string{"shop.example.com"}, now)
	require.NoError(t, err)
	p2, err := tls.LoadX509KeyPair(other.Certificate, other.Key)
	require.NoError(t, err)
	l2, _ := x509.ParseCertificate(p2.Certificate[0])
	require.Equal(t, []string{"shop.example.com"}, l2.DNSNames, "new hosts make a new certificate")
	left, _ := filepath.Glob(filepath.Join(dir, "web.*.crt"))
	require.Len(t, left, 2, "older ones are removed")

	_, err = Ensure(dir, "none", nil, now)
	require.Error(t, err)
}
