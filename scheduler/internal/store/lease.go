package store

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
)

// ErrNotLeader is returned by LeaderTx when the lease term it was given is
// no longer current: another scheduler took over, or the lease expired.
var ErrNotLeader = errors.New("store: not leader")

// LeaseChannel is the NOTIFY channel a resigning leader signals on.
const LeaseChannel = "berth_lease"

// Lease is leadership held by a holder under a term.
type Lease struct {
	Name   string
	Holder string
	Term   uint64
}

// Acquire takes the lease name for holder, or renews it if holder has it,
// for ttl from the database's clock. It returns the lease and true, or false
// when another holder has an unexpired lease. Each takeover (a new holder,
// or the same holder after its lease expired) increments the term.
func (s *Store) Acquire(ctx context.Context, name, holder string, ttl time.Duration) (Lease, bool, error) {
	var term uint64
	err := s.pool.QueryRow(ctx, `
		INSERT INTO leases (name, holder, term, expires_at)
		VALUES ($1, $2, 1, now() + $3 * interval '1 millisecond')
		ON CONFLICT (name) DO UPDATE SET
			term = CASE WHEN leases.holder = EXCLUDED.holder AND leases.expires_at > now()
			            THEN leases.term ELSE leases.term + 1 END,
			holder = EXCLUDED.holder,
			expires_at = EXCLUDED.expires_at
		WHERE leases.expires_at <= now() OR leases.holder = EXCLUDED.holder
		RETURNING term`, name, holder, ttl.Milliseconds()).Scan(&term)
	if errors.Is(err, pgx.ErrNoRows) {
		return Lease{}, false, nil
	}
	if err != nil {
		return Lease{}, false, fmt.Errorf("acquire lease %s: %w", name, redact(err))
	}
	return Lease{Name: name, Holder: holder, Term: term}, true, nil
}

// Resign expires l at once, if it is still current, and notifies
// LeaseChannel so a follower takes over without waiting for the TTL.
func (s *Store) Resign(ctx context.Context, l Lease) error {
	_, err := s.pool.Exec(ctx, `
		WITH gone AS (
			UPDATE leases SET expires_at = now() - interval '1 millisecond'
			WHERE name = $1 AND holder = $2 AND term = $3 RETURNING name)
		SELECT pg_notify($4, name) FROM gone`, l.Name, l.Holder, int64(l.Term), LeaseChannel)
	if err != nil {
		return fmt.Errorf("resign lease %s: %w", l.Name, redact(err))
	}
	return nil
}

// Holder returns who holds the lease name and under which term, and
// whether it is unexpired.
func (s *Store) Holder(ctx context.Context, name string) (Lease, bool, error) {
	var l Lease
	var live bool
	err := s.pool.QueryRow(ctx, `SELECT name, holder, term, expires_at > now() FROM leases WHERE name = $1`, name).
		Scan(&l.Name, &l.Holder, &l.Term, &live)
	if errors.Is(err, pgx.ErrNoRows) {
		return Lease{}, false, nil
	}
	if err != nil {
		return Lease{}, false, fmt.Errorf("lease %s: %w", name, redact(err))
	}
	return l, live, nil
}

// Tx is a transaction in which the leader writes. Its methods are the
// only writes the leader makes.
type Tx struct {
	tx     pgx.Tx
	term   uint64
	events []Event
}

// LeaderTx runs fn in a transaction that first checks that l is still the
// current, unexpired lease and share-locks its row, so no takeover can
// commit until this transaction ends (fencing). A deposed leader's write
// fails with ErrNotLeader and nothing of it is committed.
func (s *Store) LeaderTx(ctx context.Context, l Lease, fn func(ctx context.Context, tx *Tx) error) error {
	tx, err := s.pool.Begin(ctx)
	if err != nil {
		return fmt.Errorf("begin: %w", redact(err))
	}
	defer func() { _ = tx.Rollback(ctx) }()
	var ok bool
	err = tx.QueryRow(ctx, `
		SELECT true FROM leases
		WHERE name = $1 AND holder = $2 AND term = $3 AND expires_at > now()
		FOR SHARE`, l.Name, l.Holder, int64(l.Term)).Scan(&ok)
	if errors.Is(err, pgx.ErrNoRows) {
		return fmt.Errorf("%w: lease %s term %d is no longer current", ErrNotLeader, l.Name, l.Term)
	}
	if err != nil {
		return fmt.Errorf("check lease: %w", redact(err))
	}
	if err := fn(ctx, &Tx{tx: tx, term: l.Term}); err != nil {
		return err
	}
	if err := tx.Commit(ctx); err != nil {
		return fmt.Errorf("commit: %w", redact(err))
	}
	return nil
}
