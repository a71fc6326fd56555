package auth

import (
	"bytes"
	"context"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest"

	"github.com/berthhq/berth/scheduler/internal/store"
)

func TestScopes(t *testing.T) {
	t.Parallel()
	tests := []struct {
		have, need Scope
		covers     bool
	}{
		{Read, Read, true}, {Read, Deploy, false}, {Read, Admin, false},
		{Deploy, Read, true}, {Deploy, Deploy, true}, {Deploy, Admin, false},
		{Admin, Read, true}, {Admin, Deploy, true}, {Admin, Admin, true},
		{0, Read, false}, {Admin, 0, false}, {Admin + 1, Read, false},
	}
	for _, tt := range tests {
		require.Equal(t, tt.covers, tt.have.Covers(tt.need), "%s covers %s", tt.have, tt.need)
	}
	for _, s := range []Scope{Read, Deploy, Admin} {
		got, err := ParseScope(s.String())
		require.NoError(t, err)
		require.Equal(t, s, got)
	}
	_, err := ParseScope("root")
	require.ErrorContains(t, err, `"root" is not a scope: read`)
	_, err = ParseScope("")
	require.Error(t, err)
}

func TestNewAndWellFormed(t *testing.T) {
	t.Parallel()
	a, ha, err := New(nil)
	require.NoError(t, err)
	b, _, err := New(nil)
	require.NoError(t, err)
	require.NotEqual(t, a, b)
	require.True(t, strings.HasPrefix(a, "berth_"))
	require.Len(t, a, len("berth_")+43)
	require.True(t, WellFormed(a))
	require.Equal(t, Hash(a), ha)

	fixed, _, err := New(bytes.NewReader(make([]byte, 32)))
	require.NoError(t, err)
	require.Equal(t, "berth_"+strings.Repeat("A", 43), fixed)
	_, _, err = New(bytes.NewReader(make([]byte, 31)))
	require.ErrorContains(t, err, "read random bytes")

	for _, bad := range []string{"", "berth_", a[:len(a)-1], a + "A", "berth-" + a[6:], "BERTH_" + a[6:], "berth_" + strings.Repeat("B", 43), "berth_" + strings.Repeat("+", 43)} {
		require.False(t, WellFormed(bad), bad)
	}
}

func TestCheckName(t *testing.T) {
	t.Parallel()
	for _, ok := range []string{"ci", "alice", "deploy-bot", "a", strings.Repeat("a", 63)} {
		require.NoError(t, CheckName(ok), ok)
	}
	for _, bad := range []string{"", "CI", "-ci", "ci-", "c i", "c.i", "c_i", strings.Repeat("a", 64), strings.Repeat("a", 1<<20),
		store.ActorScheduler, store.ActorAutoscaler, store.ActorBootstrap, store.ActorAnonymous} {
		err := CheckName(bad)
		require.Error(t, err, bad)
		require.Less(t, len(err.Error()), 400, "the error does not echo a long name")
	}
}

// source is a hand-written Source: the tokens it returns, and the loads
// and touches it saw.
type source struct {
	mu      sync.Mutex
	tokens  []store.Token
	err     error
	loads   int
	touched []map[string]time.Time
}

func (s *source) ActiveTokens(context.Context) ([]store.Token, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.loads++
	return append([]store.Token(nil), s.tokens...), s.err
}

func (s *source) TouchTokens(_ context.Context, used map[string]time.Time) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.touched = append(s.touched, used)
	return s.err
}

func (s *source) add(t *testing.T, name string, scope Scope) string {
	secret, hash, err := New(nil)
	require.NoError(t, err)
	s.mu.Lock()
	defer s.mu.Unlock()
	s.tokens = append(s.tokens, store.Token{Name: name, Scope: scope.String(), Hash: hash})
	return secret
}

func (s *source) count() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.loads
}

func TestAuthenticate(t *testing.T) {
	t.Parallel()
	src := &source{}
	ci := src.add(t, "ci", Deploy)
	k := NewKeyring(src, Config{Bootstrap: "the-file-token", MissInterval: time.Nanosecond}, zaptest.NewLogger(t))
	ctx := context.Background()

	id, err := k.Authenticate(ctx, "the-file-token")
	require.NoError(t, err)
	require.Equal(t, Identity{Name: store.ActorBootstrap, Scope: Admin}, id)
	require.Zero(t, src.count(), "the bootstrap token needs no load")

	id, err = k.Authenticate(ctx, ci)
	require.NoError(t, err)
	require.Equal(t, Identity{Name: "ci", Scope: Deploy}, id)
	require.Equal(t, 1, src.count(), "an unknown token loads once")
	_, err = k.Authenticate(ctx, ci)
	require.NoError(t, err)
	require.Equal(t, 1, src.count(), "a known one costs no load")

	for _, bad := range []string{"", "the-file-token ", "the-file-tokeN", "junk"} {
		_, err = k.Authenticate(ctx, bad)
		require.ErrorIs(t, err, ErrUnknown, bad)
	}
	require.Equal(t, 1, src.count(), "a malformed token costs no load")

	// Revoked (gone from the source): works until a reload, then refused.
	src.mu.Lock()
	src.tokens = nil
	src.mu.Unlock()
	_, err = k.Authenticate(ctx, ci)
	require.NoError(t, err)
	require.NoError(t, k.Reload(ctx))
	_, err = k.Authenticate(ctx, ci)
	require.ErrorIs(t, err, ErrUnknown)

	// A token with an unknown scope in the database is ignored, not admin.
	src.mu.Lock()
	secret, hash, _ := New(nil)
	src.tokens = []store.Token{{Name: "odd", Scope: "root", Hash: hash}}
	src.mu.Unlock()
	require.NoError(t, k.Reload(ctx))
	_, err = k.Authenticate(ctx, secret)
	require.ErrorIs(t, err, ErrUnknown)

	// The source failing: an unknown token is an error (503), not a pass.
	src.mu.Lock()
	src.err = errors.New("postgres down")
	src.mu.Unlock()
	_, err = k.Authenticate(ctx, ci)
	require.ErrorContains(t, err, "postgres down")
	require.NotErrorIs(t, err, ErrUnknown)
}

// TestUnknownTokensAreThrottled: a flood of wrong tokens costs at most one
// load per MissInterval; the ones that cannot wait for it are refused.
func TestUnknownTokensAreThrottled(t *testing.T) {
	t.Parallel()
	src := &source{}
	k := NewKeyring(src, Config{MissInterval: time.Hour, MissWait: 50 * time.Millisecond}, zaptest.NewLogger(t))
	var wg sync.WaitGroup
	for range 50 {
		wg.Go(func() {
			wrong, _, _ := New(nil)
			_, err := k.Authenticate(context.Background(), wrong)
			require.ErrorIs(t, err, ErrUnknown)
		})
	}
	wg.Wait()
	require.Equal(t, 1, src.count(), "one load for 50 wrong tokens")
	// A token made meanwhile still works at the next Reload (a NOTIFY).
	ci := src.add(t, "ci", Read)
	require.NoError(t, k.Reload(context.Background()))
	id, err := k.Authenticate(context.Background(), ci)
	require.NoError(t, err)
	require.Equal(t, "ci", id.Name)
}

// TestTouch: uses are written once per Touch, one statement for all
// tokens; a failed write keeps them for the next.
func TestTouch(t *testing.T) {
	t.Parallel()
	src := &source{}
	ci := src.add(t, "ci", Read)
	bot := src.add(t, "bot", Admin)
	now := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	k := NewKeyring(src, Config{MissInterval: time.Nanosecond, Now: func() time.Time { return now }}, zaptest.NewLogger(t))
	ctx := context.Background()
	require.NoError(t, k.Reload(ctx))
	for range 1000 {
		_, err := k.Authenticate(ctx, ci)
		require.NoError(t, err)
	}
	_, err := k.Authenticate(ctx, bot)
	require.NoError(t, err)
	k.Touch(ctx)
	k.Touch(ctx)
	require.Equal(t, []map[string]time.Time{{"ci": now, "bot": now}}, src.touched, "1001 uses, one write, none when unused")

	src.mu.Lock()
	src.err = errors.New("down")
	src.mu.Unlock()
	_, _ = k.Authenticate(ctx, ci)
	k.Touch(ctx)
	src.mu.Lock()
	src.err = nil
	src.mu.Unlock()
	k.Touch(ctx)
	require.Len(t, src.touched, 3)
	require.Equal(t, map[string]time.Time{"ci": now}, src.touched[2], "kept after the failed write")
}

var benchSink byte

// BenchmarkAuthenticate: a known token costs its SHA-256 and a map
// lookup, no query; reported as a ratio to the SHA-256 alone (the floor,
// measured in the same run).
func BenchmarkAuthenticate(b *testing.B) {
	src := &source{}
	var secrets []string
	for i := range 1000 {
		secret, hash, _ := New(nil)
		secrets = append(secrets, secret)
		src.tokens = append(src.tokens, store.Token{Name: "t" + strings.Repeat("x", i%5), Scope: "read", Hash: hash})
	}
	k := NewKeyring(src, Config{}, zap.NewNop())
	ctx := context.Background()
	if err := k.Reload(ctx); err != nil {
		b.Fatal(err)
	}
	const floorN = 200000
	start := time.Now()
	for i := range floorN {
		h := Hash(secrets[i%len(secrets)])
		benchSink ^= h[0]
	}
	floor := float64(time.Since(start).Nanoseconds()) / floorN
	n := 0
	for b.Loop() {
		if _, err := k.Authenticate(ctx, secrets[n%len(secrets)]); err != nil {
			b.Fatal(err)
		}
		n++
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(n)/floor, "x_sha256")
	if got := src.count(); got != 1 {
		b.Fatalf("%d loads: a known token must cost none", got)
	}
}
