package store

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
)

// Release states.
const (
	// ReleaseRunning: its row is written before its container is created,
	// and stays so until the container's end is recorded.
	ReleaseRunning   = "running"
	ReleaseSucceeded = "succeeded"
	ReleaseFailed    = "failed"
)

// Release is one run of an app's release task: the one of its generation.
type Release struct {
	App        string
	Generation int64
	// SpecHash is the hash of the container spec it releases, without a
	// restart's generation.
	SpecHash string
	State    string
	// Host is where it runs ("": the local engine); ContainerID is empty
	// until its container is created.
	Host        string
	ContainerID string
	// ExitCode is its container's exit code, once one was read.
	ExitCode *int
	// Reason says why it failed.
	Reason string
	// Term is the leader term that started it, or last adopted it.
	Term      uint64
	StartedAt time.Time
	EndedAt   *time.Time
}

// ErrReleaseExists is a release begun for a generation that has one.
var ErrReleaseExists = errors.New("store: the generation already has a release")

const releaseColumns = `app, generation, spec_hash, state, host, container_id, exit_code, reason, term, started_at, ended_at`

// ReleaseKey names the release records the leader needs of one app: those
// of its current Generation, and those that released its SpecHash.
type ReleaseKey struct {
	App        string
	SpecHash   string
	Generation int64
}

// Releases returns the release records the leader plans with, oldest
// first: every running one (of any app, to adopt), and for each key the
// app's record of that generation and the newest that released that spec
// hash (or, with none, its newest record). The
// rows read are those of the apps with a release task, a few each, through
// the (app, spec_hash) index and the primary key, however many versions
// each app released before: the table keeps one row per release.
func (s *Store) Releases(ctx context.Context, keys []ReleaseKey) ([]Release, error) {
	apps, hashes, gens := make([]string, len(keys)), make([]string, len(keys)), make([]int64, len(keys))
	for i, k := range keys {
		apps[i], hashes[i], gens[i] = k.App, k.SpecHash, k.Generation
	}
	rows, err := s.pool.Query(ctx, `
		WITH k AS (SELECT * FROM unnest($1::text[], $2::text[], $3::bigint[]) AS k(app, spec_hash, generation))
		SELECT `+releaseColumns+` FROM (
			SELECT * FROM releases WHERE state = 'running'
			UNION
			SELECT r.* FROM k JOIN releases r ON r.app = k.app AND r.generation = k.generation
			UNION
			SELECT n.* FROM k CROSS JOIN LATERAL (
				SELECT * FROM releases r WHERE r.app = k.app AND r.spec_hash = k.spec_hash ORDER BY r.state = 'succeeded' DESC, r.generation DESC LIMIT 1) n
		) r ORDER BY started_at, app, generation`, apps, hashes, gens)
	if err != nil {
		return nil, fmt.Errorf("releases: %w", redact(err))
	}
	out, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (Release, error) {
		var r Release
		var term int64
		err := row.Scan(&r.App, &r.Generation, &r.SpecHash, &r.State, &r.Host, &r.ContainerID, &r.ExitCode, &r.Reason, &term, &r.StartedAt, &r.EndedAt)
		r.Term = uint64(term)
		return r, err
	})
	if err != nil {
		return nil, fmt.Errorf("releases: %w", redact(err))
	}
	return out, nil
}

// BeginRelease records r as running under the transaction's term, before
// its container exists. A generation has one release, ever: a second is
// ErrReleaseExists, and nothing is written.
func (t *Tx) BeginRelease(ctx context.Context, r Release) error {
	tag, err := t.tx.Exec(ctx, `INSERT INTO releases (app, generation, spec_hash, state, host, term) VALUES ($1, $2, $3, $4, $5, $6)
		ON CONFLICT (app, generation) DO NOTHING`, r.App, r.Generation, r.SpecHash, ReleaseRunning, r.Host, int64(t.term))
	if err != nil {
		return fmt.Errorf("begin release %s/%d: %w", r.App, r.Generation, redact(err))
	}
	if tag.RowsAffected() == 0 {
		return fmt.Errorf("begin release %s/%d: %w", r.App, r.Generation, ErrReleaseExists)
	}
	return nil
}

// WatchRelease records the container of a running release (empty: not
// known yet) and that the transaction's term watches it. It reports
// whether the release was still running.
func (t *Tx) WatchRelease(ctx context.Context, app string, generation int64, container string) (bool, error) {
	tag, err := t.tx.Exec(ctx, `UPDATE releases SET container_id = CASE WHEN $3 = '' THEN container_id ELSE $3 END, term = $4
		WHERE app = $1 AND generation = $2 AND state = $5`, app, generation, container, int64(t.term), ReleaseRunning)
	if err != nil {
		return false, fmt.Errorf("watch release %s/%d: %w", app, generation, redact(err))
	}
	return tag.RowsAffected() == 1, nil
}

// EndRelease records how a running release ended (r.State, ExitCode,
// Reason), once: it reports false, and changes nothing, for a release that
// is not running any more (another leader recorded its end).
func (t *Tx) EndRelease(ctx context.Context, r Release) (bool, error) {
	if r.State != ReleaseSucceeded && r.State != ReleaseFailed {
		return false, fmt.Errorf("end release %s/%d: state %q is no end", r.App, r.Generation, r.State)
	}
	tag, err := t.tx.Exec(ctx, `UPDATE releases SET state = $3, exit_code = $4, reason = $5, container_id = CASE WHEN $6 = '' THEN container_id ELSE $6 END,
		ended_at = now() WHERE app = $1 AND generation = $2 AND state = $7`,
		r.App, r.Generation, r.State, r.ExitCode, r.Reason, r.ContainerID, ReleaseRunning)
	if err != nil {
		return false, fmt.Errorf("end release %s/%d: %w", r.App, r.Generation, redact(err))
	}
	return tag.RowsAffected() == 1, nil
}
