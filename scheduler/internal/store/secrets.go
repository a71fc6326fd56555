package store

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"

	"github.com/jackc/pgx/v5"

	"github.com/berthhq/berth/common/spec"
)

// ResealReport is what Reseal did.
type ResealReport struct {
	// Apps is how many apps it went through, deleted ones included.
	Apps int
	// Specs is how many stored specs (apps and app_history rows) it
	// rewrote, and Values how many env values it sealed in them.
	Specs, Values int
}

// Reseal brings the secrets of every stored spec (apps.spec of every app,
// deleted ones included, and every app_history.spec) up to date through
// seal, with rotate: values an older key sealed are sealed again under
// the current key, and plain values of a variable that the app's spec
// marks secret are sealed. Each app is one transaction holding its row
// lock, so it runs beside the API and the leader; neither the generation
// nor anything a container is made of changes. A value that does not open
// is left as it is and reported in the error, with its app and
// generation; every other is still done. Running it again does nothing.
func (s *Store) Reseal(ctx context.Context, seal Sealer) (ResealReport, error) {
	var rep ResealReport
	rows, err := s.pool.Query(ctx, `SELECT name FROM apps ORDER BY name`)
	if err != nil {
		return rep, fmt.Errorf("reseal: %w", redact(err))
	}
	names, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return rep, fmt.Errorf("reseal: %w", redact(err))
	}
	var errs []error
	for _, name := range names {
		specs, values, err := s.resealApp(ctx, name, seal)
		rep.Apps++
		rep.Specs += specs
		rep.Values += values
		if err != nil {
			errs = append(errs, err)
		}
	}
	return rep, errors.Join(errs...)
}

// resealApp is Reseal for one app.
func (s *Store) resealApp(ctx context.Context, name string, seal Sealer) (specs, values int, err error) {
	tx, err := s.pool.Begin(ctx)
	if err != nil {
		return 0, 0, fmt.Errorf("reseal %s: %w", name, redact(err))
	}
	defer func() { _ = tx.Rollback(ctx) }()
	var raw []byte
	if err := tx.QueryRow(ctx, `SELECT spec FROM apps WHERE name = $1 FOR UPDATE`, name).Scan(&raw); err != nil {
		if errors.Is(err, pgx.ErrNoRows) {
			return 0, 0, nil
		}
		return 0, 0, fmt.Errorf("reseal %s: %w", name, redact(err))
	}
	var cur spec.App
	if err := json.Unmarshal(raw, &cur); err != nil {
		return 0, 0, fmt.Errorf("reseal %s: stored spec: %w", name, err)
	}
	reseal := seal.Resealer(&cur, true)
	var errs []error
	n, rerr := reseal(&cur)
	if rerr != nil {
		errs = append(errs, fmt.Errorf("reseal %s: current spec: %w", name, rerr))
	}
	if n > 0 {
		out, err := json.Marshal(&cur)
		if err != nil {
			return 0, 0, err
		}
		if _, err := tx.Exec(ctx, `UPDATE apps SET spec = $2 WHERE name = $1`, name, out); err != nil {
			return 0, 0, fmt.Errorf("reseal %s: %w", name, redact(err))
		}
		specs, values = 1, n
	}
	hs, hv, herr := resealRows(ctx, tx, name, reseal)
	if herr != nil {
		errs = append(errs, herr)
	}
	if err := tx.Commit(ctx); err != nil {
		return 0, 0, fmt.Errorf("reseal %s: commit: %w", name, redact(err))
	}
	return specs + hs, values + hv, errors.Join(errs...)
}

// resealRows passes every spec in app's history through reseal and writes
// back those it changed: how many specs and values. A spec whose values do
// not all open is still written with those that did; the error names its
// generation. An error of the database ends it.
func resealRows(ctx context.Context, tx pgx.Tx, app string, reseal func(*spec.App) (int, error)) (specs, values int, err error) {
	type row struct {
		gen  int64
		spec spec.App
	}
	rows, err := tx.Query(ctx, `SELECT generation, spec FROM app_history WHERE app = $1 ORDER BY generation FOR UPDATE`, app)
	if err != nil {
		return 0, 0, fmt.Errorf("reseal %s: history: %w", app, redact(err))
	}
	all, err := pgx.CollectRows(rows, func(cr pgx.CollectableRow) (row, error) {
		var r row
		var raw []byte
		if err := cr.Scan(&r.gen, &raw); err != nil {
			return r, fmt.Errorf("history: %w", err)
		}
		if err := json.Unmarshal(raw, &r.spec); err != nil {
			return r, fmt.Errorf("generation %d: stored spec: %w", r.gen, err)
		}
		return r, nil
	})
	if err != nil {
		return 0, 0, fmt.Errorf("reseal %s: %w", app, redact(err))
	}
	var errs []error
	for _, r := range all {
		n, rerr := reseal(&r.spec)
		if rerr != nil {
			errs = append(errs, fmt.Errorf("reseal %s: generation %d: %w", app, r.gen, rerr))
		}
		if n == 0 {
			continue
		}
		raw, err := json.Marshal(&r.spec)
		if err != nil {
			return specs, values, err
		}
		if _, err := tx.Exec(ctx, `UPDATE app_history SET spec = $3 WHERE app = $1 AND generation = $2`, app, r.gen, raw); err != nil {
			return specs, values, fmt.Errorf("reseal %s: generation %d: %w", app, r.gen, redact(err))
		}
		specs++
		values += n
	}
	return specs, values, errors.Join(errs...)
}
