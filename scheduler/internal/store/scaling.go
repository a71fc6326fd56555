package store

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
)

// ErrScaleConflict is an autoscaler change whose app changed meanwhile (a
// new spec, a delete, or scaling removed): the decision is dropped and made
// again from the new state.
var ErrScaleConflict = errors.New("store: the app changed since the decision")

// Decision is one autoscaler decision as stored.
type Decision struct {
	ID      int64  `json:"id"`
	App     string `json:"app"`
	Current int    `json:"current"`
	Desired int    `json:"desired"`
	// Recommendation is the metrics' recommendation before stabilisation,
	// rate limits and cooldowns.
	Recommendation int `json:"recommendation"`
	// Reasons are per metric (autoscale.Reason as JSON).
	Reasons json.RawMessage `json:"reasons"`
	// Limits say what held the recommendation back.
	Limits []string  `json:"limits,omitempty"`
	Term   uint64    `json:"term"`
	At     time.Time `json:"at"`
}

// RecordDecision stores d under the transaction's term. When d changes the
// replica count it also sets the app's desired replicas, but only if they
// are still d.Current and the app is still autoscaled; otherwise it returns
// ErrScaleConflict. Such a change is the autoscaler's (ActorAutoscaler).
func (t *Tx) RecordDecision(ctx context.Context, d Decision) (int64, error) {
	if d.Desired != d.Current {
		tag, err := t.tx.Exec(ctx, `
			UPDATE apps SET desired_replicas = $3, updated_at = now(), updated_by = $4
			WHERE name = $1 AND deleted_at IS NULL AND desired_replicas = $2 AND spec->'scaling' IS NOT NULL`,
			d.App, d.Current, d.Desired, ActorAutoscaler)
		if err != nil {
			return 0, fmt.Errorf("scale %s: %w", d.App, redact(err))
		}
		if tag.RowsAffected() == 0 {
			return 0, fmt.Errorf("scale %s from %d: %w", d.App, d.Current, ErrScaleConflict)
		}
		if _, err := t.tx.Exec(ctx, `SELECT pg_notify($1, $2)`, AppsChannel, d.App); err != nil {
			return 0, fmt.Errorf("scale %s: notify: %w", d.App, redact(err))
		}
	}
	reasons := d.Reasons
	if len(reasons) == 0 {
		reasons = json.RawMessage("[]")
	}
	limits, _ := json.Marshal(d.Limits)
	if d.Limits == nil {
		limits = []byte("[]")
	}
	var id int64
	err := t.tx.QueryRow(ctx, `
		INSERT INTO scaling_decisions (app, current, desired, recommendation, reasons, limits, term, at)
		VALUES ($1, $2, $3, $4, $5, $6, $7, $8) RETURNING id`,
		d.App, d.Current, d.Desired, d.Recommendation, []byte(reasons), limits, int64(t.term), d.At).Scan(&id)
	if err != nil {
		return 0, fmt.Errorf("record decision of %s: %w", d.App, redact(err))
	}
	return id, nil
}

// PruneDecisions deletes decisions that changed nothing older than
// holdsBefore, and all decisions older than allBefore.
func (t *Tx) PruneDecisions(ctx context.Context, holdsBefore, allBefore time.Time) (int64, error) {
	tag, err := t.tx.Exec(ctx, `
		DELETE FROM scaling_decisions WHERE at < $2 OR (at < $1 AND current = desired)`, holdsBefore, allBefore)
	if err != nil {
		return 0, fmt.Errorf("prune decisions: %w", redact(err))
	}
	return tag.RowsAffected(), nil
}

// Decisions returns the newest decisions (at most limit) of app, or of
// every app when app is empty, taken at or after since, oldest first.
func (s *Store) Decisions(ctx context.Context, app string, since time.Time, limit int) ([]Decision, error) {
	rows, err := s.pool.Query(ctx, `
		SELECT id, app, current, desired, recommendation, reasons, limits, term, at FROM (
			SELECT * FROM scaling_decisions WHERE ($1 = '' OR app = $1) AND at >= $2 ORDER BY id DESC LIMIT $3
		) d ORDER BY id`, app, since, limit)
	if err != nil {
		return nil, fmt.Errorf("decisions: %w", redact(err))
	}
	out, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (Decision, error) {
		var d Decision
		var reasons, limits []byte
		var term int64
		if err := row.Scan(&d.ID, &d.App, &d.Current, &d.Desired, &d.Recommendation, &reasons, &limits, &term, &d.At); err != nil {
			return d, err
		}
		d.Reasons, d.Term = reasons, uint64(term)
		_ = json.Unmarshal(limits, &d.Limits)
		return d, nil
	})
	if err != nil {
		return nil, fmt.Errorf("decisions: %w", redact(err))
	}
	return out, nil
}
