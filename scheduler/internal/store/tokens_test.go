package store

import (
	"context"
	"crypto/sha256"
	"encoding/json"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

func TestTokens(t *testing.T) {
	t.Parallel()
	s := open(t)
	ctx := WithActor(context.Background(), "alice")
	h := sha256.Sum256([]byte("secret-ci"))
	ci, err := s.CreateToken(ctx, Token{Name: "ci", Scope: "deploy", Hash: h})
	require.NoError(t, err)
	require.Equal(t, "alice", ci.CreatedBy)
	require.False(t, ci.CreatedAt.IsZero())

	_, err = s.CreateToken(ctx, Token{Name: "ci", Scope: "read", Hash: sha256.Sum256([]byte("other"))})
	require.ErrorIs(t, err, ErrTokenExists)
	_, err = s.CreateToken(ctx, Token{Name: "root", Scope: "root", Hash: sha256.Sum256([]byte("x"))})
	require.Error(t, err, "the schema refuses a scope that is none")
	_, err = s.CreateToken(ctx, Token{Name: "again", Scope: "read", Hash: h})
	require.Error(t, err, "two tokens never share a hash")
	require.NotErrorIs(t, err, ErrTokenExists)
	_, err = s.CreateToken(ctx, Token{Name: "bot", Scope: "admin", Hash: sha256.Sum256([]byte("secret-bot"))})
	require.NoError(t, err)

	active, err := s.ActiveTokens(ctx)
	require.NoError(t, err)
	require.Len(t, active, 2)
	byName := map[string]Token{}
	for _, tk := range active {
		byName[tk.Name] = tk
	}
	require.Equal(t, h, byName["ci"].Hash)

	used := time.Now().UTC().Truncate(time.Microsecond)
	require.NoError(t, s.TouchTokens(ctx, map[string]time.Time{"ci": used, "nosuch": used}))
	require.NoError(t, s.TouchTokens(ctx, map[string]time.Time{"ci": used.Add(-time.Hour)}), "an older use is ignored")

	revoked, err := s.RevokeToken(ctx, "ci")
	require.NoError(t, err)
	require.False(t, revoked.RevokedAt.IsZero())
	again, err := s.RevokeToken(ctx, "ci")
	require.NoError(t, err)
	require.Equal(t, revoked.RevokedAt, again.RevokedAt, "revoking twice keeps the first time")
	_, err = s.RevokeToken(ctx, "nosuch")
	require.ErrorIs(t, err, ErrTokenNotFound)

	active, err = s.ActiveTokens(ctx)
	require.NoError(t, err)
	require.Len(t, active, 1)
	require.Equal(t, "bot", active[0].Name)

	all, err := s.Tokens(ctx)
	require.NoError(t, err)
	require.Len(t, all, 2)
	require.Equal(t, "bot", all[0].Name)
	require.Equal(t, "ci", all[1].Name)
	require.Equal(t, [32]byte{}, all[1].Hash, "listing carries no hash")
	require.Equal(t, used, all[1].LastUsedAt)
	require.True(t, all[0].LastUsedAt.IsZero())
}

// TestActors: who made each change is recorded on the app, in its
// history and on events; the autoscaler's changes are its own.
func TestActors(t *testing.T) {
	t.Parallel()
	s := open(t)
	alice := WithActor(context.Background(), "alice")
	_, _, err := s.Apply(alice, load(t, "name: web\nimage: web:1\nport: 80\nscaling: {min: 1, max: 4, target_cpu_percent: 50}\n"), nil)
	require.NoError(t, err)
	a, err := s.Get(context.Background(), "web")
	require.NoError(t, err)
	require.Equal(t, "alice", a.UpdatedBy)

	l, _, err := s.Acquire(context.Background(), "scheduler", "me", time.Minute)
	require.NoError(t, err)
	require.NoError(t, s.LeaderTx(context.Background(), l, func(ctx context.Context, tx *Tx) error {
		_, err := tx.RecordDecision(ctx, Decision{App: "web", Current: 1, Desired: 3, Reasons: json.RawMessage(`[]`), At: time.Now()})
		return err
	}))
	a, err = s.Get(context.Background(), "web")
	require.NoError(t, err)
	require.Equal(t, ActorAutoscaler, a.UpdatedBy)

	_, _, err = s.Apply(context.Background(), load(t, "name: web\nimage: web:2\nport: 80\nscaling: {min: 1, max: 4, target_cpu_percent: 50}\n"), nil)
	require.NoError(t, err)
	revs, err := s.History(context.Background(), "web", 10)
	require.NoError(t, err)
	require.Len(t, revs, 2)
	require.Equal(t, int64(2), revs[0].Generation)
	require.Equal(t, "web:2", revs[0].Image)
	require.Equal(t, ActorScheduler, revs[0].Actor, "no actor in the context: the scheduler")
	require.Equal(t, "alice", revs[1].Actor)

	require.NoError(t, s.Delete(WithActor(context.Background(), "bob"), "web"))
	by, err := s.UpdatedBy(context.Background(), "web")
	require.NoError(t, err)
	require.Equal(t, "bob", by)
	_, err = s.UpdatedBy(context.Background(), "nosuch")
	require.ErrorIs(t, err, ErrNotFound)
	_, err = s.History(context.Background(), "web", 10)
	require.ErrorIs(t, err, ErrNotFound)
}
