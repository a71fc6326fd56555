package store

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/berthhq/berth/common/msg"
)

// Event is one lifecycle event of an app.
type Event struct {
	ID       int64
	App      string
	Instance string
	Kind     msg.EventKind
	Message  string
	Details  map[string]string
	// Actor made it happen: the token whose change it follows, or the
	// scheduler on its own (ActorScheduler, ActorAutoscaler). AddEvent
	// records ActorOf(ctx) when it is empty.
	Actor string
	Term  uint64
	At    time.Time
	// LogTail is the last lines a failed instance's container wrote. It
	// is stored and shown by the API's event view only: never published
	// on NATS, where every reader would see it.
	LogTail []string
}

// AddEvent records an event under the transaction's term and returns its id.
func (t *Tx) AddEvent(ctx context.Context, e Event) (int64, error) {
	details, err := json.Marshal(e.Details)
	if err != nil {
		return 0, err
	}
	if e.Details == nil {
		details = []byte("{}")
	}
	if e.Actor == "" {
		e.Actor = ActorOf(ctx)
	}
	var id int64
	err = t.tx.QueryRow(ctx, `INSERT INTO events (app, instance, kind, message, details, term, actor, log_tail) VALUES ($1, $2, $3, $4, $5, $6, $7, $8) RETURNING id`,
		e.App, e.Instance, e.Kind, e.Message, details, int64(t.term), e.Actor, e.LogTail).Scan(&id)
	if err != nil {
		return 0, fmt.Errorf("add event %s/%s: %w", e.App, e.Kind, redact(err))
	}
	e.ID, e.Term, e.At = id, t.term, time.Now().UTC()
	t.events = append(t.events, e)
	return id, nil
}

// Added returns the events recorded in this transaction so far, in order,
// with their ids: what to publish once it commits.
func (t *Tx) Added() []Event { return t.events }

// Events returns events, oldest first, of app (all apps when empty) with
// an id above after, at most limit.
func (s *Store) Events(ctx context.Context, app string, after int64, limit int) ([]Event, error) {
	return s.events(ctx, `
		SELECT id, app, instance, kind, message, details, term, at, actor, log_tail FROM events
		WHERE ($1 = '' OR app = $1) AND id > $2 ORDER BY id LIMIT $3`, app, after, limit)
}

// latestEventsSQL is LatestEvents' query ($1 app, $2 kinds, $3 limit). Each
// kind's newest limit events are read backwards on (app, kind, at) and
// merged: at most limit rows a kind, however long the app's history and
// however rare those kinds in it. As one filter on (app, at) the query read,
// once pgx's prepared statement got Postgres's generic plan, the app's
// whole history when it had few such events (docs/benchmarks.md, Event
// queries at scale).
const latestEventsSQL = `
	SELECT e.id, e.app, e.instance, e.kind, e.message, e.details, e.term, e.at, e.actor, e.log_tail
	FROM (SELECT DISTINCT unnest($2::text[]) AS kind) k
	CROSS JOIN LATERAL (
		SELECT id, app, instance, kind, message, details, term, at, actor, log_tail FROM events
		WHERE events.app = $1 AND events.kind = k.kind ORDER BY at DESC, id DESC LIMIT $3) e
	ORDER BY e.at DESC, e.id DESC LIMIT $3`

// LatestEvents returns an app's newest events of the given kinds, newest
// first, at most limit.
func (s *Store) LatestEvents(ctx context.Context, app string, kinds []msg.EventKind, limit int) ([]Event, error) {
	names := make([]string, len(kinds))
	for i, k := range kinds {
		names[i] = string(k)
	}
	return s.events(ctx, latestEventsSQL, app, names, limit)
}

// lastEventsAllSQL and lastEventsSQL are LastEvents' queries, of every app
// ($1 limit) and of one ($1 app, $2 limit).
const (
	lastEventsAllSQL = `
		SELECT * FROM (SELECT id, app, instance, kind, message, details, term, at, actor, log_tail FROM events
			ORDER BY id DESC LIMIT $1) newest ORDER BY id`
	lastEventsSQL = `
		SELECT * FROM (SELECT id, app, instance, kind, message, details, term, at, actor, log_tail FROM events
			WHERE app = $1 ORDER BY at DESC, id DESC LIMIT $2) newest ORDER BY id`
)

// LastEvents returns the newest limit events of app (all apps when
// empty), oldest first.
func (s *Store) LastEvents(ctx context.Context, app string, limit int) ([]Event, error) {
	if app == "" {
		return s.events(ctx, lastEventsAllSQL, limit)
	}
	return s.events(ctx, lastEventsSQL, app, limit)
}

func (s *Store) events(ctx context.Context, query string, args ...any) ([]Event, error) {
	rows, err := s.pool.Query(ctx, query, args...)
	if err != nil {
		return nil, fmt.Errorf("events: %w", redact(err))
	}
	out, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (Event, error) {
		var e Event
		var details []byte
		var term int64
		if err := row.Scan(&e.ID, &e.App, &e.Instance, &e.Kind, &e.Message, &details, &term, &e.At, &e.Actor, &e.LogTail); err != nil {
			return e, err
		}
		e.Term = uint64(term)
		_ = json.Unmarshal(details, &e.Details)
		return e, nil
	})
	if err != nil {
		return nil, fmt.Errorf("events: %w", redact(err))
	}
	return out, nil
}

// PruneEventsBatch is how many events one statement of PruneEvents deletes
// at most: each is a short transaction, so event writes never wait long.
const PruneEventsBatch = 5000

// PruneEvents deletes the events recorded before cutoff, oldest first, in
// statements of at most batch rows, and returns how many it deleted. Each
// statement reads the oldest batch rows by id (the primary key: ids grow
// with time) and deletes those of them older than cutoff; a statement
// that deletes fewer than it read has reached the events to keep, so no
// statement scans the table. An event whose id is older than its time (a
// clock step back) waits for the next prune.
func (s *Store) PruneEvents(ctx context.Context, cutoff time.Time, batch int) (int64, error) {
	var total int64
	for {
		tag, err := s.pool.Exec(ctx, `
			WITH oldest AS (SELECT id, at FROM events ORDER BY id LIMIT $2)
			DELETE FROM events e USING oldest WHERE e.id = oldest.id AND oldest.at < $1`, cutoff, batch)
		if err != nil {
			return total, fmt.Errorf("prune events: %w", redact(err))
		}
		total += tag.RowsAffected()
		if tag.RowsAffected() < int64(batch) {
			return total, nil
		}
		if err := ctx.Err(); err != nil {
			return total, err
		}
	}
}
