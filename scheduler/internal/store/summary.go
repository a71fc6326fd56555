package store

import (
	"cmp"
	"context"
	"encoding/json"
	"fmt"
	"slices"

	"github.com/jackc/pgx/v5"

	"github.com/berthhq/berth/common/msg"
)

// The queries behind the summary of every app (GET /v1/apps?summary=true,
// the web console's overview): each reads all apps at once, so the
// summary costs the same number of queries for 10 apps as for 10,000.
// Each walks, for every app that is not deleted, an index backwards from
// the app's newest events and stops after a few rows, so its cost grows
// with the apps, not with their histories (docs/benchmarks.md, Control-plane
// reads at scale).

// lastEventByAppSQL is LastEventByApp's query: each app's newest event,
// read backwards on events_app_at, ordered as LastEvents orders one app's
// (at, then id).
const lastEventByAppSQL = `
	SELECT e.id, e.app, e.kind, e.message, e.at
	FROM apps a CROSS JOIN LATERAL (
		SELECT id, app, kind, message, at FROM events
		WHERE events.app = a.name ORDER BY at DESC, id DESC LIMIT 1) e
	WHERE a.deleted_at IS NULL`

// LastEventByApp returns the newest event of every app that is not
// deleted (of app alone when set), by app: its ID, App, Kind, Message and
// At alone, what a summary shows (GET /v1/events has the rest). An app
// with no event is absent.
func (s *Store) LastEventByApp(ctx context.Context, app string) (map[string]Event, error) {
	query, args := forApps(lastEventByAppSQL, app)
	rows, err := s.pool.Query(ctx, query, args...)
	if err != nil {
		return nil, fmt.Errorf("last event of each app: %w", redact(err))
	}
	out := map[string]Event{}
	var e Event
	if _, err := pgx.ForEachRow(rows, []any{&e.ID, &e.App, &e.Kind, &e.Message, &e.At}, func() error {
		out[e.App] = e
		return nil
	}); err != nil {
		return nil, fmt.Errorf("last event of each app: %w", redact(err))
	}
	return out, nil
}

// rolloutEventsByAppSQL is RolloutEventsByApp's query ($1 kinds, $2 rows
// read a kind): of each app and kind, the newest $2 read backwards on
// events_app_kind_at, of which those at the app's generation are kept. The inner read orders by time alone, the index's order: with
// id too, Postgres sorts each probe's rows after a bitmap scan, which cost
// 2-3 times as much for 10,000 apps × 6 kinds (docs/benchmarks.md). Only
// more than $2 rows of one app and kind at the very same time would make
// the choice among them arbitrary. Each app's few rows are ordered in Go:
// ordered by Postgres, the rows of 10,000 apps went past work_mem and were
// sorted on disk.
const rolloutEventsByAppSQL = `
	SELECT e.id, e.app, e.instance, e.kind, e.message, e.details, e.term, e.at, e.actor
	FROM apps a
	CROSS JOIN (SELECT DISTINCT unnest($1::text[]) AS kind) k
	CROSS JOIN LATERAL (
		SELECT id, app, instance, kind, message, details, term, at, actor FROM events
		WHERE events.app = a.name AND events.kind = k.kind ORDER BY at DESC LIMIT $2) e
	WHERE a.deleted_at IS NULL AND e.details->>'generation' = a.generation::text`

// RolloutEventsByApp returns, by app (every app that is not deleted, or
// app alone when set), its events of kinds at its current generation
// (details' generation), newest first, without their log tails. Of each
// kind only the newest perKind events are read: a generation's rollout
// and release events are the newest of their kinds, so a few suffice,
// and the read stays bounded however long an app's history.
func (s *Store) RolloutEventsByApp(ctx context.Context, app string, kinds []msg.EventKind, perKind int) (map[string][]Event, error) {
	names := make([]string, len(kinds))
	for i, k := range kinds {
		names[i] = string(k)
	}
	query, args := forApps(rolloutEventsByAppSQL, app, names, perKind)
	rows, err := s.pool.Query(ctx, query, args...)
	if err != nil {
		return nil, fmt.Errorf("rollout events of each app: %w", redact(err))
	}
	out := map[string][]Event{}
	var e Event
	var details []byte
	var term int64
	if _, err := pgx.ForEachRow(rows, []any{&e.ID, &e.App, &e.Instance, &e.Kind, &e.Message, &details, &term, &e.At, &e.Actor}, func() error {
		ev := e
		ev.Term, ev.Details = uint64(term), nil
		_ = json.Unmarshal(details, &ev.Details)
		out[ev.App] = append(out[ev.App], ev)
		return nil
	}); err != nil {
		return nil, fmt.Errorf("rollout events of each app: %w", redact(err))
	}
	for _, evs := range out {
		slices.SortFunc(evs, func(a, b Event) int {
			if c := b.At.Compare(a.At); c != 0 {
				return c
			}
			return cmp.Compare(b.ID, a.ID)
		})
	}
	return out, nil
}

// forApps is query (over apps a, its arguments args) for every app, or
// for app alone when set: a statement of its own, whose plan reads that
// app's rows alone (see list).
func forApps(query, app string, args ...any) (string, []any) {
	if app == "" {
		return query, args
	}
	return query + fmt.Sprintf(" AND a.name = $%d", len(args)+1), append(args, app)
}
