package store

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

func TestCertificatesAndAccounts(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s := open(t)
	l, ok, err := s.Acquire(ctx, "scheduler", "a", time.Minute)
	require.NoError(t, err)
	require.True(t, ok)

	now := time.Now().UTC().Truncate(time.Microsecond)
	failed := Certificate{App: "web", Names: []string{"a.example.com"}, Failures: 2, RetryAt: now.Add(time.Hour), LastError: "challenge failed"}
	issued := Certificate{App: "api", Names: []string{"api.example.com", "b.example.com"}, Chain: "-----BEGIN CERTIFICATE-----\n", Key: []byte{1, 2, 3},
		Serial: "ab", NotBefore: now, NotAfter: now.Add(90 * 24 * time.Hour), IssuedAt: now}
	require.NoError(t, s.LeaderTx(ctx, l, func(ctx context.Context, tx *Tx) error {
		require.NoError(t, tx.PutCertificate(ctx, failed))
		return tx.PutCertificate(ctx, issued)
	}))
	got, err := s.Certificates(ctx)
	require.NoError(t, err)
	require.Equal(t, map[string]Certificate{"web": failed, "api": issued}, got)
	infos, err := s.CertificateInfos(ctx)
	require.NoError(t, err)
	require.Equal(t, []CertificateInfo{
		{App: "api", Names: issued.Names, Chain: issued.Chain, Serial: "ab", NotBefore: now, NotAfter: issued.NotAfter, IssuedAt: now},
		{App: "web", Names: failed.Names, Failures: 2, RetryAt: failed.RetryAt, LastError: "challenge failed"},
	}, infos, "every certificate, by app, without its key")

	require.NoError(t, s.LeaderTx(ctx, l, func(ctx context.Context, tx *Tx) error { return tx.DeleteCertificate(ctx, "web") }))
	got, err = s.Certificates(ctx)
	require.NoError(t, err)
	require.Len(t, got, 1)

	_, ok, err = s.ACMEAccount(ctx, "https://ca/dir", "ops@example.com")
	require.NoError(t, err)
	require.False(t, ok)
	acct := ACMEAccount{Directory: "https://ca/dir", Email: "ops@example.com", Key: []byte{9}, URI: "https://ca/acct/1"}
	require.NoError(t, s.LeaderTx(ctx, l, func(ctx context.Context, tx *Tx) error { return tx.PutACMEAccount(ctx, acct) }))
	back, ok, err := s.ACMEAccount(ctx, "https://ca/dir", "ops@example.com")
	require.NoError(t, err)
	require.True(t, ok)
	require.Equal(t, acct, back)

	// A deposed leader writes nothing.
	stale := l
	stale.Term++
	require.ErrorIs(t, s.LeaderTx(ctx, stale, func(ctx context.Context, tx *Tx) error { return tx.DeleteCertificate(ctx, "api") }), ErrNotLeader)
}

// TestACMEOrders: orders are counted from their start, oldest first, and
// those older than ACMEOrderRetention go as a new one is added.
func TestACMEOrders(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s := open(t)
	l, ok, err := s.Acquire(ctx, "scheduler", "a", time.Minute)
	require.NoError(t, err)
	require.True(t, ok)
	now := time.Now().UTC().Truncate(time.Microsecond)
	old := now.Add(-ACMEOrderRetention - time.Hour)
	add := func(app string, at time.Time) {
		t.Helper()
		require.NoError(t, s.LeaderTx(ctx, l, func(ctx context.Context, tx *Tx) error {
			return tx.AddACMEOrder(ctx, ACMEOrder{App: app, Names: []string{app + ".example.com"}, Reason: "new", StartedAt: at})
		}))
	}
	add("ancient", old)
	add("b", now.Add(-10*time.Minute))
	add("a", now.Add(-50*time.Minute))
	got, err := s.ACMEOrdersSince(ctx, now.Add(-time.Hour))
	require.NoError(t, err)
	require.Equal(t, []time.Time{now.Add(-50 * time.Minute), now.Add(-10 * time.Minute)}, got)
	all, err := s.ACMEOrdersSince(ctx, time.Time{})
	require.NoError(t, err)
	require.Len(t, all, 2, "the order older than a week was pruned")
}
