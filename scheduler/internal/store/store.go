// Package store is the scheduler's only door to Postgres (the only importer
// of pgx): the schema and its migrations, typed queries that return
// Berth's own types, the leader lease with fencing, and LISTEN/NOTIFY.
// Every write the leader makes goes through LeaderTx, which first checks
// that the leader's lease term is still current.
package store

import (
	"context"
	"embed"
	"errors"
	"fmt"
	"io/fs"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/jackc/tern/v2/migrate"
)

//go:embed migrations/*.sql
var migrationFS embed.FS

const versionTable = "berth_schema_version"

// Store is a pool of connections to the scheduler's database. It is safe
// for concurrent use.
type Store struct {
	pool *pgxpool.Pool
	url  string
	// keep is how many generations of each app app_history keeps (0:
	// every one); SetHistoryKeep sets it.
	keep int
}

// MinHistoryKeep is the fewest generations SetHistoryKeep keeps: the
// current one and the one before it, which rollback returns to.
const MinHistoryKeep = 2

// SetHistoryKeep makes each new generation prune the app's history to its
// newest n generations (the scheduler's --history-keep), also keeping
// every older one that an instance still runs: the spec that serves, which
// an automatic rollback returns to. n < MinHistoryKeep is taken as
// MinHistoryKeep; 0 keeps every generation (the default). Call it before
// the store is used.
func (s *Store) SetHistoryKeep(n int) {
	if n != 0 {
		n = max(n, MinHistoryKeep)
	}
	s.keep = n
}

// DefaultConnectTimeout bounds each new connection when the database URL
// sets no connect_timeout.
const DefaultConnectTimeout = 5 * time.Second

// Open connects to the database at url (a postgres:// URL or a DSN). It
// does not migrate: run Migrate (scheduler migrate) first.
func Open(ctx context.Context, url string) (*Store, error) {
	cfg, err := pgxpool.ParseConfig(url)
	if err != nil {
		return nil, fmt.Errorf("database url: %w", redact(err))
	}
	if cfg.ConnConfig.ConnectTimeout == 0 {
		// Without connect_timeout in url a Postgres that drops packets
		// holds every caller until its own deadline, if it has one.
		cfg.ConnConfig.ConnectTimeout = DefaultConnectTimeout
	}
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("connect to postgres: %w", redact(err))
	}
	return &Store{pool: pool, url: url}, nil
}

// Close closes every connection.
func (s *Store) Close() { s.pool.Close() }

// Ping checks that the database answers.
func (s *Store) Ping(ctx context.Context) error {
	if err := s.pool.Ping(ctx); err != nil {
		return fmt.Errorf("ping postgres: %w", redact(err))
	}
	return nil
}

// SchemaStatus is where the schema stands.
type SchemaStatus struct {
	// Current is the applied version; Latest the newest this binary knows.
	Current, Latest int32
}

func (s *Store) migrator(ctx context.Context, fn func(*migrate.Migrator) error) error {
	conn, err := s.pool.Acquire(ctx)
	if err != nil {
		return fmt.Errorf("migrate: %w", redact(err))
	}
	defer conn.Release()
	m, err := migrate.NewMigrator(ctx, conn.Conn(), versionTable)
	if err != nil {
		return fmt.Errorf("migrate: %w", err)
	}
	sub, _ := fs.Sub(migrationFS, "migrations")
	if err := m.LoadMigrations(sub); err != nil {
		return fmt.Errorf("migrate: load migrations: %w", err)
	}
	return fn(m)
}

// Migrate applies every migration not applied yet, under an advisory lock
// so concurrent schedulers migrate once.
func (s *Store) Migrate(ctx context.Context) (SchemaStatus, error) {
	var st SchemaStatus
	err := s.migrator(ctx, func(m *migrate.Migrator) error {
		if err := m.Migrate(ctx); err != nil {
			return fmt.Errorf("migrate: %w", err)
		}
		v, err := m.GetCurrentVersion(ctx)
		st = SchemaStatus{Current: v, Latest: int32(len(m.Migrations))}
		return err
	})
	return st, err
}

// Status reports the applied and the latest schema version.
func (s *Store) Status(ctx context.Context) (SchemaStatus, error) {
	var st SchemaStatus
	err := s.migrator(ctx, func(m *migrate.Migrator) error {
		v, err := m.GetCurrentVersion(ctx)
		st = SchemaStatus{Current: v, Latest: int32(len(m.Migrations))}
		return err
	})
	return st, err
}

// ErrSchemaBehind is returned by CheckSchema when migrations are pending.
var ErrSchemaBehind = errors.New("store: database schema is behind: run scheduler migrate")

// CheckSchema fails with ErrSchemaBehind unless every migration is applied.
func (s *Store) CheckSchema(ctx context.Context) error {
	st, err := s.Status(ctx)
	if err != nil {
		return err
	}
	if st.Current < st.Latest {
		return fmt.Errorf("%w (at version %d of %d)", ErrSchemaBehind, st.Current, st.Latest)
	}
	return nil
}

// redact keeps passwords out of errors: pgx may echo the connection
// string. The error keeps its chain (errors.Is still works), and it is
// also ErrUnavailable when it means that Postgres could not be reached.
func redact(err error) error {
	if err == nil {
		return nil
	}
	return &redacted{err: err}
}

type redacted struct{ err error }

func (r *redacted) Error() string { return scrub(r.err.Error()) }
func (r *redacted) Unwrap() error { return r.err }

// Is makes errors.Is(err, ErrUnavailable) true for errors of an
// unreachable Postgres.
func (r *redacted) Is(target error) bool { return target == ErrUnavailable && unreachable(r.err) }
