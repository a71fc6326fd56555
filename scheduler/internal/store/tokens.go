package store

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// TokensChannel is notified, with the token's name, whenever an API token
// is created or revoked: every replica then reloads its tokens.
const TokensChannel = "berth_tokens"

// Errors of the token queries.
var (
	// ErrTokenNotFound is a token name that was never created.
	ErrTokenNotFound = errors.New("store: no such token")
	// ErrTokenExists is a token name that is taken, also by a revoked
	// token: a name is never reused, so the audit trail stays unambiguous.
	ErrTokenExists = errors.New("store: a token of this name exists or existed")
)

// Token is an API token as stored: never its secret, only its SHA-256.
type Token struct {
	Name string
	// Scope is read, deploy or admin.
	Scope string
	// Hash is the SHA-256 of the secret; Tokens leaves it zero.
	Hash      [32]byte
	CreatedAt time.Time
	// CreatedBy is the actor that created it.
	CreatedBy string
	// RevokedAt is zero while the token is valid.
	RevokedAt time.Time
	// LastUsedAt is when a replica last recorded a use (at most once a
	// minute per replica); zero when never.
	LastUsedAt time.Time
	// Apps limits a deploy token to the apps whose names match one of
	// these patterns (path.Match globs); empty: every app.
	Apps []string
}

// CreateToken stores a new token (its name, scope and hash) as created by
// ActorOf(ctx), and notifies TokensChannel.
func (s *Store) CreateToken(ctx context.Context, t Token) (Token, error) {
	tx, err := s.pool.Begin(ctx)
	if err != nil {
		return t, fmt.Errorf("create token %s: %w", t.Name, redact(err))
	}
	defer func() { _ = tx.Rollback(ctx) }()
	err = tx.QueryRow(ctx, `INSERT INTO api_tokens (name, scope, hash, created_by, apps) VALUES ($1, $2, $3, $4, $5) RETURNING created_at, created_by`,
		t.Name, t.Scope, t.Hash[:], ActorOf(ctx), nonNil(t.Apps)).Scan(&t.CreatedAt, &t.CreatedBy)
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) && pgErr.Code == "23505" && pgErr.ConstraintName == "api_tokens_pkey" {
		return t, fmt.Errorf("create token %s: %w", t.Name, ErrTokenExists)
	}
	if err != nil {
		return t, fmt.Errorf("create token %s: %w", t.Name, redact(err))
	}
	if _, err := tx.Exec(ctx, `SELECT pg_notify($1, $2)`, TokensChannel, t.Name); err != nil {
		return t, fmt.Errorf("create token %s: notify: %w", t.Name, redact(err))
	}
	if err := tx.Commit(ctx); err != nil {
		return t, fmt.Errorf("create token %s: %w", t.Name, redact(err))
	}
	return t, nil
}

// Tokens returns every token, revoked ones too, by name, without hashes.
func (s *Store) Tokens(ctx context.Context) ([]Token, error) {
	return s.tokens(ctx, `SELECT name, scope, NULL, created_at, created_by, revoked_at, last_used_at, apps FROM api_tokens ORDER BY name`)
}

// ActiveTokens returns the tokens that are not revoked, with their hashes:
// what a replica checks bearer tokens against.
func (s *Store) ActiveTokens(ctx context.Context) ([]Token, error) {
	return s.tokens(ctx, `SELECT name, scope, hash, created_at, created_by, revoked_at, last_used_at, apps FROM api_tokens WHERE revoked_at IS NULL`)
}

func (s *Store) tokens(ctx context.Context, query string) ([]Token, error) {
	rows, err := s.pool.Query(ctx, query)
	if err != nil {
		return nil, fmt.Errorf("tokens: %w", redact(err))
	}
	out, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (Token, error) {
		var t Token
		var hash []byte
		var revoked, used *time.Time
		if err := row.Scan(&t.Name, &t.Scope, &hash, &t.CreatedAt, &t.CreatedBy, &revoked, &used, &t.Apps); err != nil {
			return t, err
		}
		if hash != nil && len(hash) != len(t.Hash) {
			return t, fmt.Errorf("token %s has a hash of %d bytes, not %d", t.Name, len(hash), len(t.Hash))
		}
		copy(t.Hash[:], hash)
		t.RevokedAt, t.LastUsedAt = orZero(revoked), orZero(used)
		return t, nil
	})
	if err != nil {
		return nil, fmt.Errorf("tokens: %w", redact(err))
	}
	return out, nil
}

// RevokeToken revokes a token, once: revoking it again keeps the first
// revocation's time. It notifies TokensChannel, so that every replica
// drops the token at once.
func (s *Store) RevokeToken(ctx context.Context, name string) (Token, error) {
	tx, err := s.pool.Begin(ctx)
	if err != nil {
		return Token{}, fmt.Errorf("revoke token %s: %w", name, redact(err))
	}
	defer func() { _ = tx.Rollback(ctx) }()
	t := Token{Name: name}
	var revoked, used *time.Time
	err = tx.QueryRow(ctx, `UPDATE api_tokens SET revoked_at = coalesce(revoked_at, now()) WHERE name = $1
		RETURNING scope, created_at, created_by, revoked_at, last_used_at, apps`, name).Scan(&t.Scope, &t.CreatedAt, &t.CreatedBy, &revoked, &used, &t.Apps)
	if errors.Is(err, pgx.ErrNoRows) {
		return t, fmt.Errorf("revoke token %s: %w", name, ErrTokenNotFound)
	}
	if err != nil {
		return t, fmt.Errorf("revoke token %s: %w", name, redact(err))
	}
	t.RevokedAt, t.LastUsedAt = orZero(revoked), orZero(used)
	if _, err := tx.Exec(ctx, `SELECT pg_notify($1, $2)`, TokensChannel, name); err != nil {
		return t, fmt.Errorf("revoke token %s: notify: %w", name, redact(err))
	}
	if err := tx.Commit(ctx); err != nil {
		return t, fmt.Errorf("revoke token %s: %w", name, redact(err))
	}
	return t, nil
}

// TouchTokens records when each named token was last used, in one
// statement; a time older than the one stored is ignored.
func (s *Store) TouchTokens(ctx context.Context, used map[string]time.Time) error {
	if len(used) == 0 {
		return nil
	}
	names := make([]string, 0, len(used))
	ats := make([]time.Time, 0, len(used))
	for n, at := range used {
		names = append(names, n)
		ats = append(ats, at)
	}
	_, err := s.pool.Exec(ctx, `
		UPDATE api_tokens t SET last_used_at = u.at
		FROM unnest($1::text[], $2::timestamptz[]) AS u(name, at)
		WHERE t.name = u.name AND (t.last_used_at IS NULL OR t.last_used_at < u.at)`, names, ats)
	if err != nil {
		return fmt.Errorf("record the use of tokens: %w", redact(err))
	}
	return nil
}

// nonNil is s, or an empty slice for nil (Postgres: '{}', not NULL).
func nonNil(s []string) []string {
	if s == nil {
		return []string{}
	}
	return s
}
