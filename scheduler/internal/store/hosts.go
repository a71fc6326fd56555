package store

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
)

// Host is a registered Docker host.
type Host struct {
	Name string
	// DockerURL is unix:///path or tcp://host:port; TLSCA, TLSCert and
	// TLSKey are the files of a TLS connection (tcp).
	DockerURL              string
	TLSCA, TLSCert, TLSKey string
	// Address is where its published ports are reached.
	Address string
	Labels  map[string]string
	// CPU (cores) and Memory (bytes) are its capacity; zero: no limit.
	CPU    float64
	Memory int64
	// Registries are the registries whose credentials the host's engine
	// may receive with a pull.
	Registries []string
	// Drain: nothing new is placed there, and what runs there moves.
	Drain bool
	// State is what the leader last saw of its engine (HostUp, HostDown,
	// HostUnknown), since StateAt; LastSeen is when it last answered, as
	// the leader recorded it (at each change of any host's state, and on
	// gaining leadership).
	State string
	// StateReason is why the leader does not use the host, when it does
	// not: its registration breaks the operator's policy, or its Docker
	// client cannot be set up.
	StateReason       string
	StateAt, LastSeen time.Time
	CreatedAt         time.Time
	UpdatedAt         time.Time
}

// Host states.
const (
	HostUp      = "up"
	HostDown    = "down"
	HostUnknown = "unknown"
)

// HostsChannel is notified on every change of the host registry.
const HostsChannel = "berth_hosts"

// ErrHostInUse is the removal of a host that instances still run on.
var ErrHostInUse = errors.New("store: instances still run on the host")

const hostColumns = `name, docker_url, tls_ca, tls_cert, tls_key, address, labels, cpu, memory, registries, drain, state, state_reason, state_at, last_seen, created_at, updated_at`

func scanHost(row pgx.Row) (Host, error) {
	var h Host
	var labels []byte
	var stateAt, lastSeen *time.Time
	err := row.Scan(&h.Name, &h.DockerURL, &h.TLSCA, &h.TLSCert, &h.TLSKey, &h.Address, &labels, &h.CPU, &h.Memory, &h.Registries, &h.Drain,
		&h.State, &h.StateReason, &stateAt, &lastSeen, &h.CreatedAt, &h.UpdatedAt)
	if err != nil {
		return h, err
	}
	h.StateAt, h.LastSeen = orZero(stateAt), orZero(lastSeen)
	if len(h.Registries) == 0 {
		h.Registries = nil
	}
	if err := json.Unmarshal(labels, &h.Labels); err != nil {
		return h, fmt.Errorf("labels of host %s: %w", h.Name, err)
	}
	return h, nil
}

// Hosts returns every registered host, by name.
func (s *Store) Hosts(ctx context.Context) ([]Host, error) {
	rows, err := s.pool.Query(ctx, `SELECT `+hostColumns+` FROM hosts ORDER BY name`)
	if err != nil {
		return nil, fmt.Errorf("hosts: %w", redact(err))
	}
	out, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (Host, error) { return scanHost(row) })
	if err != nil {
		return nil, fmt.Errorf("hosts: %w", redact(err))
	}
	return out, nil
}

// GetHost returns one host, or ErrNotFound.
func (s *Store) GetHost(ctx context.Context, name string) (Host, error) {
	h, err := scanHost(s.pool.QueryRow(ctx, `SELECT `+hostColumns+` FROM hosts WHERE name = $1`, name))
	if errors.Is(err, pgx.ErrNoRows) {
		return h, fmt.Errorf("%w: host %s", ErrNotFound, name)
	}
	if err != nil {
		return h, fmt.Errorf("host %s: %w", name, redact(err))
	}
	return h, nil
}

// PutHost registers h, or changes a registered host's connection,
// address, labels, capacity and registries (its drain flag and state
// stay). It
// notifies HostsChannel, so the leader places with it at once.
func (s *Store) PutHost(ctx context.Context, h Host) (Host, error) {
	labels, err := json.Marshal(h.Labels)
	if err != nil {
		return h, err
	}
	if h.Labels == nil {
		labels = []byte("{}")
	}
	registries := h.Registries
	if registries == nil {
		registries = []string{}
	}
	tx, err := s.pool.Begin(ctx)
	if err != nil {
		return h, fmt.Errorf("put host %s: %w", h.Name, redact(err))
	}
	defer func() { _ = tx.Rollback(ctx) }()
	// Another engine under a name instances run on would make them look
	// gone (and leave their containers where they are): refused.
	var url string
	var n int
	err = tx.QueryRow(ctx, `SELECT h.docker_url, (SELECT count(*) FROM instances WHERE host = h.name) FROM hosts h WHERE h.name = $1 FOR UPDATE`, h.Name).Scan(&url, &n)
	if err != nil && !errors.Is(err, pgx.ErrNoRows) {
		return h, fmt.Errorf("put host %s: %w", h.Name, redact(err))
	}
	if err == nil && url != h.DockerURL && n > 0 {
		return h, fmt.Errorf("%w: %d instance(s) run on %s at %s: drain it and wait for them to move before pointing it at another engine", ErrHostInUse, n, h.Name, url)
	}
	out, err := scanHost(tx.QueryRow(ctx, `
		INSERT INTO hosts (name, docker_url, tls_ca, tls_cert, tls_key, address, labels, cpu, memory, registries)
		VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
		ON CONFLICT (name) DO UPDATE SET docker_url = $2, tls_ca = $3, tls_cert = $4, tls_key = $5, address = $6,
			labels = $7, cpu = $8, memory = $9, registries = $10, updated_at = now()
		RETURNING `+hostColumns, h.Name, h.DockerURL, h.TLSCA, h.TLSCert, h.TLSKey, h.Address, labels, h.CPU, h.Memory, registries))
	if err != nil {
		return h, fmt.Errorf("put host %s: %w", h.Name, redact(err))
	}
	if _, err := tx.Exec(ctx, `SELECT pg_notify($1, $2)`, HostsChannel, "changed"); err != nil {
		return h, fmt.Errorf("put host %s: %w", h.Name, redact(err))
	}
	if err := tx.Commit(ctx); err != nil {
		return h, fmt.Errorf("put host %s: %w", h.Name, redact(err))
	}
	return out, nil
}

// SetHostDrain drains a host (nothing new is placed there, and what runs
// there moves) or ends its drain.
func (s *Store) SetHostDrain(ctx context.Context, name string, drain bool) (Host, error) {
	h, err := scanHost(s.pool.QueryRow(ctx, `UPDATE hosts SET drain = $2, updated_at = now() WHERE name = $1 RETURNING `+hostColumns, name, drain))
	if errors.Is(err, pgx.ErrNoRows) {
		return h, fmt.Errorf("%w: host %s", ErrNotFound, name)
	}
	if err != nil {
		return h, fmt.Errorf("drain host %s: %w", name, redact(err))
	}
	_, _ = s.pool.Exec(ctx, `SELECT pg_notify($1, $2)`, HostsChannel, "changed")
	return h, nil
}

// DeleteHost forgets a host. Unless force, one that instance records
// still name is refused with ErrHostInUse.
func (s *Store) DeleteHost(ctx context.Context, name string, force bool) error {
	tx, err := s.pool.Begin(ctx)
	if err != nil {
		return fmt.Errorf("remove host %s: %w", name, redact(err))
	}
	defer func() { _ = tx.Rollback(ctx) }()
	var n int
	// The host row locked first: an instance placed meanwhile is counted.
	if _, err := tx.Exec(ctx, `SELECT 1 FROM hosts WHERE name = $1 FOR UPDATE`, name); err != nil {
		return fmt.Errorf("remove host %s: %w", name, redact(err))
	}
	if err := tx.QueryRow(ctx, `SELECT count(*) FROM instances WHERE host = $1`, name).Scan(&n); err != nil {
		return fmt.Errorf("remove host %s: %w", name, redact(err))
	}
	if n > 0 && !force {
		return fmt.Errorf("%w: %d instance(s) on %s: drain it first (scheduler hosts drain %s), or remove it with --force", ErrHostInUse, n, name, name)
	}
	tag, err := tx.Exec(ctx, `DELETE FROM hosts WHERE name = $1`, name)
	if err != nil {
		return fmt.Errorf("remove host %s: %w", name, redact(err))
	}
	if tag.RowsAffected() == 0 {
		return fmt.Errorf("%w: host %s", ErrNotFound, name)
	}
	if _, err := tx.Exec(ctx, `SELECT pg_notify($1, $2)`, HostsChannel, "changed"); err != nil {
		return fmt.Errorf("remove host %s: %w", name, redact(err))
	}
	return tx.Commit(ctx)
}

// SetHostState records what the leader saw of a host's engine: its state
// since at (kept when unchanged), why it does not use the host (reason;
// "" when it does), and when it last answered.
func (t *Tx) SetHostState(ctx context.Context, name, state, reason string, at, lastSeen time.Time) error {
	_, err := t.tx.Exec(ctx, `
		UPDATE hosts SET state_at = CASE WHEN state = $2 THEN state_at ELSE $3 END, state = $2, state_reason = $5,
			last_seen = COALESCE($4, last_seen) WHERE name = $1`, name, state, at, orNil(lastSeen), reason)
	if err != nil {
		return fmt.Errorf("host %s state: %w", name, redact(err))
	}
	return nil
}
