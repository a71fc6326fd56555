package store

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"

	"github.com/jackc/pgx/v5"

	"github.com/berthhq/berth/common/spec"
	"github.com/berthhq/berth/scheduler/internal/change"
)

// ErrNoGeneration is a generation of an app that its history does not
// keep: pruned (--history-keep), or never made. Its errors are also
// ErrNoHistory: a rollback to it has nothing to roll back to.
var ErrNoGeneration = errors.New("store: generation not kept")

// notKeptError is ErrNoGeneration (and ErrNoHistory) with the generations
// that are kept.
type notKeptError struct{ text string }

func (e notKeptError) Error() string { return e.text }

func (e notKeptError) Is(target error) bool {
	return target == ErrNoGeneration || target == ErrNoHistory
}

// Generation returns one kept generation of an app and the kept one before
// it (nil when none is kept); ErrNotFound when the app does not exist or
// was deleted, ErrNoGeneration naming the kept generations when gen is not
// kept.
func (s *Store) Generation(ctx context.Context, name string, gen int64) (cur Revision, prev *Revision, err error) {
	if _, err := s.Get(ctx, name); err != nil {
		return Revision{}, nil, err
	}
	revs, err := s.revisions(ctx, name, gen, 2)
	if err != nil {
		return Revision{}, nil, err
	}
	if len(revs) == 0 || revs[0].Generation != gen {
		return Revision{}, nil, s.notKept(ctx, s.pool, name, gen)
	}
	if len(revs) > 1 {
		prev = &revs[1]
	}
	return revs[0], prev, nil
}

// querier is a pool or a transaction.
type querier interface {
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
}

// notKept is ErrNoGeneration for gen, naming the generations that are kept.
func (s *Store) notKept(ctx context.Context, q querier, name string, gen int64) error {
	var lo, hi *int64
	var n int
	if err := q.QueryRow(ctx, `SELECT min(generation), max(generation), count(*) FROM app_history WHERE app = $1`, name).Scan(&lo, &hi, &n); err != nil {
		return fmt.Errorf("history of %s: %w", name, redact(err))
	}
	if lo == nil {
		return notKeptError{fmt.Sprintf("generation %d of %s is not kept: no generation is", gen, name)}
	}
	why := "it was pruned"
	switch {
	case gen > *hi:
		why = fmt.Sprintf("the newest is %d", *hi)
	case gen > *lo:
		why = "the app was deleted then"
	}
	keep := "every generation is kept"
	if s.keep > 0 {
		keep = fmt.Sprintf("the scheduler keeps the newest %d (--history-keep)", s.keep)
	}
	return notKeptError{fmt.Sprintf("generation %d of %s is not kept (%s): %d generations are kept, %d to %d, and %s; scheduler history %s lists them",
		gen, name, why, n, *lo, *hi, keep, name)}
}

// revisionsSQL reads ($1 app, $2 newest generation, $3 how many) the
// newest generations up to $2 and the one before the last, each with the
// newest older generation whose spec is the same (back_to, 0: none).
const revisionsSQL = `
	SELECT h.generation, coalesce(h.spec->>'image', ''), h.image_ref, h.actor, h.created_at, h.spec,
		coalesce((SELECT max(e.generation) FROM app_history e WHERE e.app = h.app AND e.generation < h.generation AND e.spec = h.spec), 0)
	FROM app_history h WHERE h.app = $1 AND h.generation <= $2 ORDER BY h.generation DESC LIMIT $3`

// revisions returns the newest limit generations up to upTo, newest
// first, with their summaries.
func (s *Store) revisions(ctx context.Context, name string, upTo int64, limit int) ([]Revision, error) {
	rows, err := s.pool.Query(ctx, revisionsSQL, name, upTo, limit+1)
	if err != nil {
		return nil, fmt.Errorf("history of %s: %w", name, redact(err))
	}
	var out []Revision
	var backTo []int64
	var r Revision
	var raw []byte
	var back int64
	if _, err := pgx.ForEachRow(rows, []any{&r.Generation, &r.Image, &r.ImageRef, &r.Actor, &r.At, &raw, &back}, func() error {
		r.Spec = &spec.App{}
		if err := json.Unmarshal(raw, r.Spec); err != nil {
			return fmt.Errorf("generation %d: stored spec: %w", r.Generation, err)
		}
		out, backTo = append(out, r), append(backTo, back)
		return nil
	}); err != nil {
		return nil, fmt.Errorf("history of %s: %w", name, redact(err))
	}
	for i := range out {
		var prev *spec.App
		var prevGen int64
		if i+1 < len(out) {
			prev, prevGen = out[i+1].Spec, out[i+1].Generation
		}
		out[i].Summary = change.Summary(prev, prevGen, out[i].Spec, out[i].Generation, backTo[i])
		if prev != nil && prevGen == out[i].Generation-1 && change.Same(prev, out[i].Spec) && out[i].ImageRef != out[i+1].ImageRef && out[i].ImageRef != "" {
			out[i].Summary = Repinned(out[i].Image, out[i+1].ImageRef, out[i].ImageRef)
		}
	}
	if len(out) > limit {
		out = out[:limit]
	}
	return out, nil
}

// pruneSQL deletes ($1 the app, $9 how many to keep, 0 every one) the
// generations of the history older than the newest $9, except those an
// instance still runs. It runs in write's statement, whose snapshot does
// not see the row that statement inserts: that row is one of the $9, so
// the newest $9-1 rows seen are kept. Both scans walk the history's
// primary key (app, generation), and instances are probed by their app
// index: the cost is that of the app's own rows (and, until vacuum, of
// the index entries of those pruned before), not of every app's.
const pruneSQL = `
	DELETE FROM app_history h WHERE $9::int > 0 AND h.app = $1
		AND h.generation < (SELECT generation FROM app_history WHERE app = $1 ORDER BY generation DESC OFFSET greatest($9::int - 2, 0) LIMIT 1)
		AND NOT EXISTS (SELECT 1 FROM instances i WHERE i.app = h.app AND i.generation = h.generation)`

// DesiredReplicas is the replica count an apply of s asks for, to an app
// whose stored self is cur (nil: a new app): what Apply would store.
func DesiredReplicas(s *spec.App, cur *App) int { return desired(s, cur) }

// Repinned summarises a generation of the same spec whose image was
// pinned anew (a redeploy of a pushed tag, or its first pin).
func Repinned(image, from, to string) string {
	if from == "" {
		return fmt.Sprintf("image %s pinned to %s", image, shortRef(to))
	}
	return fmt.Sprintf("image %s pinned anew: %s → %s", image, shortRef(from), shortRef(to))
}

// shortRef is a pinned ref's digest or ID cut to its first 12 hex digits,
// as docker shows IDs.
func shortRef(ref string) string {
	if i := strings.LastIndex(ref, "sha256:"); i >= 0 && len(ref) >= i+7+12 {
		return "sha256:" + ref[i+7:i+7+12]
	}
	return ref
}

// Images returns the image of each of an app's kept generations asked for,
// by generation (those not kept are absent): one index lookup each.
func (s *Store) Images(ctx context.Context, name string, generations []int64) (map[int64]string, error) {
	out := make(map[int64]string, len(generations))
	if len(generations) == 0 {
		return out, nil
	}
	rows, err := s.pool.Query(ctx, `SELECT generation, coalesce(spec->>'image', '') FROM app_history WHERE app = $1 AND generation = ANY($2)`, name, generations)
	if err != nil {
		return nil, fmt.Errorf("images of %s: %w", name, redact(err))
	}
	var gen int64
	var img string
	if _, err := pgx.ForEachRow(rows, []any{&gen, &img}, func() error { out[gen] = img; return nil }); err != nil {
		return nil, fmt.Errorf("images of %s: %w", name, redact(err))
	}
	return out, nil
}
