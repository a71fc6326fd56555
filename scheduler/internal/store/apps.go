package store

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"math"
	"slices"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/berthhq/berth/common/msg"
	"github.com/berthhq/berth/common/spec"
)

// InstancesChannel is the NOTIFY channel that carries the name of an app
// whose instances' recorded health changed (SetHealth): the web console
// shows it without waiting for an event.
const InstancesChannel = "berth_instances"

// AppsChannel is the NOTIFY channel that carries the name of a changed app.
const AppsChannel = "berth_apps"

// Errors of the app queries.
var (
	// ErrNotFound is an app that does not exist (or was deleted).
	ErrNotFound = errors.New("store: app not found")
	// ErrNoHistory is a rollback of an app that has no earlier spec.
	ErrNoHistory = errors.New("store: no earlier generation to roll back to")
	// ErrAutoscaled is a manual scale of an app with a scaling block.
	ErrAutoscaled = errors.New("store: app is autoscaled")
)

// App is an app as stored.
type App struct {
	Name            string
	Spec            *spec.App
	Generation      int64
	DesiredReplicas int
	Status          string
	CreatedAt       time.Time
	UpdatedAt       time.Time
	// HostClaims is when the app first claimed each of its hosts
	// (spec.HostKey, "" for the default server): a host belongs to the
	// app that claimed it first (spec.Claims).
	HostClaims map[string]time.Time
	// UpdatedBy is the actor of the last change (ActorOf its context):
	// a token's name, or the scheduler or its autoscaler.
	UpdatedBy string
	// RestartedGeneration is the generation of the app's last restart (0:
	// never): the hash of its containers includes it.
	RestartedGeneration int64
	// ImageRef is what every host runs for this generation (the spec's
	// image pinned, scheduler/internal/image): repo@sha256:… or an image
	// ID sha256:…; "" when not pinned (and for apps stored before
	// pinning), when the hosts run the spec's image as named. The hash of
	// the containers includes it when set.
	ImageRef string
	// PreviousImageRef is ImageRef before the app's last change.
	PreviousImageRef string
}

// Claimant is a as the route table sees it.
func (a App) Claimant() spec.Claimant {
	c := spec.Claimant{Name: a.Name, Created: a.CreatedAt, Claimed: a.HostClaims}
	if c.Claimed == nil {
		c.Claimed = map[string]time.Time{}
	}
	if a.Spec != nil {
		c.Routing = &a.Spec.Routing
	}
	return c
}

// desired is the replica count a spec asks for: its replicas, or for an
// autoscaled app the count the autoscaler reached (cur's), kept within the
// new min and max, so a new image or a new target does not reset the app
// to its minimum.
func desired(s *spec.App, cur *App) int {
	switch {
	case s.Replicas != nil:
		return *s.Replicas
	case s.Scaling != nil:
		n := s.Scaling.Min
		if cur != nil && cur.Spec != nil && cur.Spec.Scaling != nil {
			n = min(max(cur.DesiredReplicas, s.Scaling.Min), s.Scaling.Max)
		}
		return n
	}
	return 1
}

// Sealer seals the env secrets of specs as they are stored. Its methods
// are called inside the app's transaction, holding its row lock; it is
// safe for concurrent use. (secret.Box is the scheduler's.)
type Sealer interface {
	// Seal replaces the plaintext secrets of next with sealed values,
	// keeping those of cur (the stored spec; nil for a new app) whose
	// plaintext did not change.
	Seal(next, cur *spec.App) error
	// Resealer returns what seals, in place, the plain values of an
	// earlier spec of the app under the names current marks secret (and,
	// with rotate, what an older key sealed), counting the values sealed.
	Resealer(current *spec.App, rotate bool) func(old *spec.App) (int, error)
}

// ErrChanged is a redeploy of an app that changed while its image was
// resolved: it is not written, and may be tried again.
var ErrChanged = errors.New("store: the app changed meanwhile")

// ErrUnsealed is a spec that still holds a secret's plaintext: it is
// never written.
var ErrUnsealed = errors.New("store: a secret env value is not sealed")

// Apply stores s (already validated) as the app's new spec, its secrets
// sealed by seal first (nil: a spec with a secret is refused). When it
// equals the current spec nothing changes and changed is false; otherwise
// the generation increments, the spec joins the history, and AppsChannel
// is notified. A variable marked secret that was not before is sealed in
// every earlier spec of the history too, so its value stays in clear
// nowhere. A deleted app comes back. The change is recorded as made by
// ActorOf(ctx), as are Scale, Rollback and Delete.
func (s *Store) Apply(ctx context.Context, a *spec.App, seal Sealer) (app App, changed bool, err error) {
	return s.ApplyPinned(ctx, a, "", seal)
}

// ApplyPinned is Apply with the spec's image pinned to ref (ImageRef). A
// spec equal to the current one with the same ref changes nothing; a new
// ref alone (a tag pushed again) is a new generation. An empty ref (the
// image could not be pinned) keeps the current ref while the spec names
// the same image, so a registry that does not answer unpins nothing.
func (s *Store) ApplyPinned(ctx context.Context, a *spec.App, ref string, seal Sealer) (app App, changed bool, err error) {
	err = s.appTx(ctx, a.Name, func(tx pgx.Tx, cur *App) error {
		var before *spec.App
		if cur != nil {
			before = cur.Spec
		}
		if seal != nil {
			if err := seal.Seal(a, before); err != nil {
				return err
			}
		}
		if ref == "" && cur != nil && cur.Spec.Image == a.Image {
			ref = cur.ImageRef
		}
		if cur != nil && sameSpec(cur.Spec, a) && cur.ImageRef == ref {
			app = *cur
			return nil
		}
		app, err = write(ctx, tx, a, ref, cur, s.keep)
		if err == nil && seal != nil && newlySecret(before, a) {
			_, _, err = resealRows(ctx, tx, a.Name, seal.Resealer(a, false))
		}
		changed = err == nil
		return err
	})
	return app, changed, err
}

// newlySecret reports whether next marks a variable secret that before
// (nil: none) did not.
func newlySecret(before, next *spec.App) bool {
	for _, n := range next.Secrets() {
		if before == nil || !before.Env[n].IsSecret() {
			return true
		}
	}
	return false
}

// Scale sets a fixed-replica app's count, as a new generation.
func (s *Store) Scale(ctx context.Context, name string, replicas int) (app App, err error) {
	err = s.appTx(ctx, name, func(tx pgx.Tx, cur *App) error {
		if cur == nil {
			return fmt.Errorf("scale %s: %w", name, ErrNotFound)
		}
		if cur.Spec.Scaling != nil {
			return fmt.Errorf("scale %s: %w: change scaling.min and scaling.max instead", name, ErrAutoscaled)
		}
		next := *cur.Spec
		next.Replicas = &replicas
		if err := next.Validate(); err != nil {
			return err
		}
		app, err = write(ctx, tx, &next, cur.ImageRef, cur, s.keep)
		return err
	})
	return app, err
}

// Restart makes a new generation of the same spec whose containers all
// differ from the current ones (RestartedGeneration): the leader replaces
// every instance by a rolling update.
func (s *Store) Restart(ctx context.Context, name string) (app App, err error) {
	err = s.appTx(ctx, name, func(tx pgx.Tx, cur *App) error {
		if cur == nil {
			return fmt.Errorf("restart %s: %w", name, ErrNotFound)
		}
		app, err = write(ctx, tx, cur.Spec, cur.ImageRef, cur, s.keep)
		if err != nil {
			return err
		}
		if _, err := tx.Exec(ctx, `UPDATE apps SET restarted_generation = generation WHERE name = $1`, name); err != nil {
			return fmt.Errorf("restart %s: %w", name, redact(err))
		}
		app.RestartedGeneration = app.Generation
		return nil
	})
	return app, err
}

// Redeploy makes a new generation of the same spec with its image pinned
// to ref: the tag resolved again (scheduler redeploy). It is written only
// while the app is still at generation, the one whose image was resolved
// (ErrChanged otherwise); a ref equal to the current one changes nothing
// (changed false).
func (s *Store) Redeploy(ctx context.Context, name string, generation int64, ref string) (app App, changed bool, err error) {
	err = s.appTx(ctx, name, func(tx pgx.Tx, cur *App) error {
		switch {
		case cur == nil:
			return fmt.Errorf("redeploy %s: %w", name, ErrNotFound)
		case cur.Generation != generation:
			return fmt.Errorf("redeploy %s: %w: generation %d, not %d, whose image was resolved; run it again", name, ErrChanged, cur.Generation, generation)
		case ref == "" || ref == cur.ImageRef:
			app = *cur
			return nil
		}
		app, err = write(ctx, tx, cur.Spec, ref, cur, s.keep)
		changed = err == nil
		return err
	})
	return app, changed, err
}

// RollbackTo makes the spec of generation the app's spec again, as a new
// generation: the generation that still serves, after a failed rollout.
func (s *Store) RollbackTo(ctx context.Context, name string, generation int64) (app App, err error) {
	err = s.appTx(ctx, name, func(tx pgx.Tx, cur *App) error {
		if cur == nil {
			return fmt.Errorf("rollback %s: %w", name, ErrNotFound)
		}
		var raw []byte
		var ref string
		err := tx.QueryRow(ctx, `SELECT spec, image_ref FROM app_history WHERE app = $1 AND generation = $2`, name, generation).Scan(&raw, &ref)
		if errors.Is(err, pgx.ErrNoRows) {
			return fmt.Errorf("rollback %s: %w", name, s.notKept(ctx, tx, name, generation))
		}
		if err != nil {
			return fmt.Errorf("rollback %s: %w", name, redact(err))
		}
		var prev spec.App
		if err := json.Unmarshal(raw, &prev); err != nil {
			return fmt.Errorf("rollback %s: stored spec: %w", name, err)
		}
		if sameSpec(cur.Spec, &prev) && ref == cur.ImageRef {
			return fmt.Errorf("rollback %s to generation %d: %w: it is the spec and image of generation %d already", name, generation, ErrNoHistory, cur.Generation)
		}
		app, err = write(ctx, tx, &prev, ref, cur, s.keep)
		return err
	})
	return app, err
}

// Rollback makes the newest earlier spec that differs from the current one
// the app's spec again, as a new generation.
func (s *Store) Rollback(ctx context.Context, name string) (app App, err error) {
	err = s.appTx(ctx, name, func(tx pgx.Tx, cur *App) error {
		if cur == nil {
			return fmt.Errorf("rollback %s: %w", name, ErrNotFound)
		}
		rows, err := tx.Query(ctx, `SELECT spec, image_ref FROM app_history WHERE app = $1 AND generation < $2 ORDER BY generation DESC`, name, cur.Generation)
		if err != nil {
			return fmt.Errorf("rollback %s: %w", name, redact(err))
		}
		var prev *spec.App
		var prevRef string
		for rows.Next() && prev == nil {
			var raw []byte
			var ref string
			if err := rows.Scan(&raw, &ref); err != nil {
				rows.Close()
				return fmt.Errorf("rollback %s: %w", name, redact(err))
			}
			var candidate spec.App
			if err := json.Unmarshal(raw, &candidate); err != nil {
				rows.Close()
				return fmt.Errorf("rollback %s: stored spec: %w", name, err)
			}
			if !sameSpec(cur.Spec, &candidate) || ref != cur.ImageRef {
				prev, prevRef = &candidate, ref
			}
		}
		rows.Close()
		if prev == nil {
			return fmt.Errorf("rollback %s: %w", name, ErrNoHistory)
		}
		app, err = write(ctx, tx, prev, prevRef, cur, s.keep)
		return err
	})
	return app, err
}

// Delete marks the app deleted (the leader then stops its instances) and
// notifies AppsChannel.
func (s *Store) Delete(ctx context.Context, name string) error {
	return s.appTx(ctx, name, func(tx pgx.Tx, cur *App) error {
		if cur == nil {
			return fmt.Errorf("delete %s: %w", name, ErrNotFound)
		}
		if _, err := tx.Exec(ctx, `UPDATE apps SET deleted_at = now(), updated_at = now(), generation = generation + 1, host_claims = '{}', updated_by = $2 WHERE name = $1`,
			name, ActorOf(ctx)); err != nil {
			return fmt.Errorf("delete %s: %w", name, redact(err))
		}
		// An app applied again under its name releases afresh; a running
		// release stays until the leader records its end.
		if _, err := tx.Exec(ctx, `DELETE FROM releases WHERE app = $1 AND state <> $2`, name, ReleaseRunning); err != nil {
			return fmt.Errorf("delete %s: releases: %w", name, redact(err))
		}
		if _, err := tx.Exec(ctx, `SELECT pg_notify($1, $2)`, AppsChannel, name); err != nil {
			return fmt.Errorf("delete %s: notify: %w", name, redact(err))
		}
		return nil
	})
}

// UpdatedBy returns the actor of an app's last change, also of a deleted
// app (who deleted it); ErrNotFound for an app never applied.
func (s *Store) UpdatedBy(ctx context.Context, name string) (string, error) {
	var actor string
	err := s.pool.QueryRow(ctx, `SELECT updated_by FROM apps WHERE name = $1`, name).Scan(&actor)
	switch {
	case errors.Is(err, pgx.ErrNoRows):
		return "", fmt.Errorf("updated by of %s: %w", name, ErrNotFound)
	case err != nil:
		return "", fmt.Errorf("updated by of %s: %w", name, redact(err))
	}
	return actor, nil
}

// Revision is one generation of an app's spec in its history.
type Revision struct {
	Generation int64
	Image      string
	// ImageRef is what the generation's image was pinned to ("": not
	// pinned, App.ImageRef).
	ImageRef string
	// Actor made it: a token's name, or the scheduler (a rollback after a
	// failed rollout); "" before actors were recorded.
	Actor string
	At    time.Time
	// Summary says in one line what changed against the previous kept
	// generation (change.Summary): "image web:1→web:2, replicas 3→5".
	Summary string
	// Spec is the generation's spec as stored (secrets sealed).
	Spec *spec.App
}

// History returns the newest limit generations of an app's spec, newest
// first, each with its summary; ErrNotFound when the app does not exist or
// was deleted.
func (s *Store) History(ctx context.Context, name string, limit int) ([]Revision, error) {
	if _, err := s.Get(ctx, name); err != nil {
		return nil, err
	}
	return s.revisions(ctx, name, math.MaxInt64, limit)
}

// Get returns an app that is not deleted.
func (s *Store) Get(ctx context.Context, name string) (App, error) {
	apps, err := s.list(ctx, name)
	if err != nil {
		return App{}, err
	}
	if len(apps) == 0 {
		return App{}, fmt.Errorf("get %s: %w", name, ErrNotFound)
	}
	return apps[0], nil
}

// List returns every app that is not deleted, by name.
func (s *Store) List(ctx context.Context) ([]App, error) { return s.list(ctx, "") }

// list reads every app (name "") or one. The two are different
// statements: as one (name = $1 OR $1 = ""), the reads of every app made
// Postgres's plan for the statement a sequential scan, which each read of
// one app then ran too, at a cost that grew with the apps
// (docs/benchmarks.md, Control-plane reads at scale).
func (s *Store) list(ctx context.Context, name string) ([]App, error) {
	if name == "" {
		return s.query(ctx, `SELECT `+appColumns+` FROM apps WHERE deleted_at IS NULL ORDER BY name`)
	}
	return s.query(ctx, `SELECT `+appColumns+` FROM apps WHERE deleted_at IS NULL AND name = $1`, name)
}

// Claimants returns the app name (when it exists) and every other app that
// claims one of hosts (host keys, spec.HostKey: "" is the default server),
// by name: all that the route table (spec.Claims, which decides each host
// by its claimants alone) needs to decide name's claims on those hosts.
// The other apps are found through the index of their host_claims' keys,
// so the cost is that of the apps returned, not of every app.
func (s *Store) Claimants(ctx context.Context, name string, hosts []string) ([]App, error) {
	if hosts == nil {
		hosts = []string{}
	}
	return s.query(ctx, `
		SELECT `+appColumns+` FROM apps
		WHERE deleted_at IS NULL AND (name = $1 OR host_claims ?| $2::text[]) ORDER BY name`, name, hosts)
}

// RoutesBesides returns the routes (spec.Routing.Routes) of every app but
// name together, as Postgres counts them in each row (the routes column):
// no spec is read.
func (s *Store) RoutesBesides(ctx context.Context, name string) (int, error) {
	var n int
	if err := s.pool.QueryRow(ctx, `SELECT coalesce(sum(routes), 0) FROM apps WHERE deleted_at IS NULL AND name <> $1`, name).Scan(&n); err != nil {
		return 0, fmt.Errorf("routes of every app: %w", redact(err))
	}
	return n, nil
}

// query returns the apps that sql (selecting appColumns) reads.
func (s *Store) query(ctx context.Context, sql string, args ...any) ([]App, error) {
	rows, err := s.pool.Query(ctx, sql, args...)
	if err != nil {
		return nil, fmt.Errorf("list apps: %w", redact(err))
	}
	out, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (App, error) { return scanApp(row) })
	if err != nil {
		return nil, fmt.Errorf("list apps: %w", redact(err))
	}
	return out, nil
}

const appColumns = `name, spec, generation, desired_replicas, status, created_at, updated_at, host_claims, updated_by, restarted_generation, image_ref, previous_image_ref, image_ref_generation`

func scanApp(row pgx.Row) (App, error) {
	var a App
	var raw, claims []byte
	var refGen int64
	if err := row.Scan(&a.Name, &raw, &a.Generation, &a.DesiredReplicas, &a.Status, &a.CreatedAt, &a.UpdatedAt, &claims, &a.UpdatedBy, &a.RestartedGeneration,
		&a.ImageRef, &a.PreviousImageRef, &refGen); err != nil {
		return App{}, err
	}
	if refGen != a.Generation {
		// Written for another generation: a scheduler of the version
		// before pinning wrote this one, and its image is not pinned.
		a.ImageRef = ""
	}
	if err := json.Unmarshal(claims, &a.HostClaims); err != nil {
		return App{}, fmt.Errorf("app %s: stored host claims: %w", a.Name, err)
	}
	a.Spec = &spec.App{}
	if err := json.Unmarshal(raw, a.Spec); err != nil {
		return App{}, fmt.Errorf("app %s: stored spec: %w", a.Name, err)
	}
	return a, nil
}

// appTx runs fn in a transaction holding the app's row lock; cur is nil for
// an app that does not exist or was deleted.
func (s *Store) appTx(ctx context.Context, name string, fn func(tx pgx.Tx, cur *App) error) error {
	tx, err := s.pool.Begin(ctx)
	if err != nil {
		return fmt.Errorf("begin: %w", redact(err))
	}
	defer func() { _ = tx.Rollback(ctx) }()
	var cur *App
	a, err := scanApp(tx.QueryRow(ctx, `
		SELECT `+appColumns+` FROM apps
		WHERE name = $1 AND deleted_at IS NULL FOR UPDATE`, name))
	switch {
	case err == nil:
		cur = &a
	case !errors.Is(err, pgx.ErrNoRows):
		return fmt.Errorf("app %s: %w", name, redact(err))
	}
	if err := fn(tx, cur); err != nil {
		return err
	}
	if err := tx.Commit(ctx); err != nil {
		return fmt.Errorf("commit: %w", redact(err))
	}
	return nil
}

// write stores a, its image pinned to ref, as the app's next generation
// (after cur's, or after a deleted app's), records it in the history,
// prunes the history to the newest keep generations (0: none pruned; see
// SetHistoryKeep) and notifies AppsChannel, in one statement: an apply
// waits on as few round trips as it can.
func write(ctx context.Context, tx pgx.Tx, a *spec.App, ref string, cur *App, keep int) (App, error) {
	if names := a.Unsealed(); len(names) > 0 {
		return App{}, fmt.Errorf("apply %s: env %s: %w", a.Name, strings.Join(names, ", "), ErrUnsealed)
	}
	raw, err := json.Marshal(a)
	if err != nil {
		return App{}, err
	}
	kept, err := keptClaims(a, cur)
	if err != nil {
		return App{}, fmt.Errorf("apply %s: %w", a.Name, err)
	}
	// The hosts a names anew are claimed at this transaction's time.
	row := tx.QueryRow(ctx, `
		WITH stored AS (
			INSERT INTO apps (name, spec, generation, desired_replicas, host_claims, updated_by, image_ref, image_ref_generation)
			VALUES ($1, $2, 1, $3, (SELECT jsonb_object_agg(h, coalesce($4::jsonb->h, to_jsonb(now()))) FROM unnest($5::text[]) AS h), $6, $8, 1)
			ON CONFLICT (name) DO UPDATE SET spec = EXCLUDED.spec, generation = apps.generation + 1,
				desired_replicas = EXCLUDED.desired_replicas, updated_at = now(), deleted_at = NULL, host_claims = EXCLUDED.host_claims,
				updated_by = EXCLUDED.updated_by, image_ref = EXCLUDED.image_ref, image_ref_generation = apps.generation + 1,
				previous_image_ref = CASE WHEN apps.image_ref_generation = apps.generation THEN apps.image_ref ELSE '' END
			RETURNING `+appColumns+`),
		history AS (
			INSERT INTO app_history (app, generation, spec, actor, image_ref) SELECT name, generation, spec, updated_by, image_ref FROM stored),
		pruned AS (`+pruneSQL+`)
		SELECT `+appColumns+` FROM stored, pg_notify($7, stored.name)`,
		a.Name, raw, desired(a, cur), kept, a.Routing.HostKeys(), ActorOf(ctx), AppsChannel, ref, keep)
	app, err := scanApp(row)
	if err != nil {
		return App{}, fmt.Errorf("apply %s: %w", a.Name, redact(err))
	}
	return app, nil
}

// keptClaims are cur's claims of the hosts a keeps, as JSON (a deleted
// app, cur nil, claims afresh).
func keptClaims(a *spec.App, cur *App) ([]byte, error) {
	claims := map[string]time.Time{}
	if cur != nil {
		for _, h := range a.Routing.HostKeys() {
			if t, ok := cur.HostClaims[h]; ok {
				claims[h] = t.UTC()
			}
		}
	}
	return json.Marshal(claims)
}

func sameSpec(a, b *spec.App) bool {
	x, _ := json.Marshal(a)
	y, _ := json.Marshal(b)
	return bytes.Equal(x, y)
}

// Instance is an instance as stored.
type Instance struct {
	ID          string
	App         string
	Generation  int64
	ContainerID string
	Address     string
	State       string
	Health      string
	Restarts    int
	Term        uint64
	SpecHash    string
	// Host is the registered host it runs on; "" is the local engine
	// (no host registered).
	Host      string
	StartedAt *time.Time
	CreatedAt time.Time
	UpdatedAt time.Time
}

// instanceColumns are what Instances reads of each instance.
const instanceColumns = `id, app, generation, container_id, address, state, health, restarts, term, spec_hash, host, started_at, created_at, updated_at`

// Instances returns the instances of app (every app when empty), oldest
// first. Those of every app and of one are different statements, for the
// reason list's are.
func (s *Store) Instances(ctx context.Context, app string) ([]Instance, error) {
	query, args := `SELECT `+instanceColumns+` FROM instances ORDER BY created_at, id`, []any{}
	if app != "" {
		query, args = `SELECT `+instanceColumns+` FROM instances WHERE app = $1 ORDER BY created_at, id`, []any{app}
	}
	rows, err := s.pool.Query(ctx, query, args...)
	if err != nil {
		return nil, fmt.Errorf("instances of %s: %w", app, redact(err))
	}
	out, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (Instance, error) {
		var i Instance
		var term int64
		err := row.Scan(&i.ID, &i.App, &i.Generation, &i.ContainerID, &i.Address, &i.State, &i.Health, &i.Restarts, &term, &i.SpecHash, &i.Host, &i.StartedAt, &i.CreatedAt, &i.UpdatedAt)
		i.Term = uint64(term)
		return i, err
	})
	if err != nil {
		return nil, fmt.Errorf("instances of %s: %w", app, redact(err))
	}
	return out, nil
}

// PutInstance writes an instance record under the transaction's term.
func (t *Tx) PutInstance(ctx context.Context, i Instance) error {
	_, err := t.tx.Exec(ctx, `
		INSERT INTO instances (id, app, generation, container_id, address, state, health, restarts, term, spec_hash, started_at, host)
		VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)
		ON CONFLICT (id) DO UPDATE SET generation = EXCLUDED.generation, container_id = EXCLUDED.container_id,
			address = EXCLUDED.address, state = EXCLUDED.state, health = EXCLUDED.health, restarts = EXCLUDED.restarts,
			term = EXCLUDED.term, spec_hash = EXCLUDED.spec_hash, started_at = EXCLUDED.started_at, host = EXCLUDED.host, updated_at = now()`,
		i.ID, i.App, i.Generation, i.ContainerID, i.Address, i.State, i.Health, i.Restarts, int64(t.term), i.SpecHash, i.StartedAt, i.Host)
	if err != nil {
		return fmt.Errorf("put instance %s/%s: %w", i.App, i.ID, redact(err))
	}
	return nil
}

// SetHealth records the health the leader last saw for each instance (id →
// status), so that every replica's API and `scheduler status` show it. It
// leaves updated_at alone: that stamps the scheduler's own state changes.
// It notifies InstancesChannel with the name of each app it changed, once
// per app, as the transaction commits.
func (t *Tx) SetHealth(ctx context.Context, health map[string]string) error {
	apps := map[string]bool{}
	for id, h := range health {
		var app string
		err := t.tx.QueryRow(ctx, `UPDATE instances SET health = $2 WHERE id = $1 RETURNING app`, id, h).Scan(&app)
		switch {
		case errors.Is(err, pgx.ErrNoRows):
			continue
		case err != nil:
			return fmt.Errorf("set health of instance %s: %w", id, redact(err))
		}
		apps[app] = true
	}
	if len(apps) == 0 {
		return nil
	}
	if _, err := t.tx.Exec(ctx, `SELECT pg_notify($1, a) FROM unnest($2::text[]) a`, InstancesChannel, slices.Sorted(maps.Keys(apps))); err != nil {
		return fmt.Errorf("notify the health of %d apps: %w", len(apps), redact(err))
	}
	return nil
}

// DeleteInstance removes an instance record.
func (t *Tx) DeleteInstance(ctx context.Context, id string) error {
	if _, err := t.tx.Exec(ctx, `DELETE FROM instances WHERE id = $1`, id); err != nil {
		return fmt.Errorf("delete instance %s: %w", id, redact(err))
	}
	return nil
}

// restartKinds are the events that count against an app's restart budget.
var restartKinds = []string{string(msg.EventInstanceReplaced), string(msg.EventInstanceFailed), string(msg.EventImagePullFailed),
	string(msg.EventInstanceCreateFailed), string(msg.EventInstanceStartFailed), string(msg.EventInstanceAddressRefused)}

// Restart is one failure the restart budget counts: an instance that
// failed, or one that could not be pulled, created or started.
type Restart struct {
	At time.Time
	// Generation is the app's generation the instance was started (or
	// was to start) at, and SpecHash its spec; 0 and "" for events from
	// before they were recorded.
	Generation int64
	SpecHash   string
	// Reason is what failed (details' reason, else the event's message).
	Reason string
}

// restartsSQL is Restarts' query ($1 since, $2 restartKinds), named so that
// its benchmark explains the very text.
const restartsSQL = `SELECT app, at,
		CASE WHEN details->>'generation' ~ '^[0-9]{1,18}$' THEN (details->>'generation')::bigint ELSE 0 END,
		coalesce(details->>'spec_hash', ''), coalesce(details->>'reason', message)
	FROM events
	WHERE kind = ANY($2) AND at >= $1 AND details->>'cause' IS DISTINCT FROM 'host_lost'`

// Restarts returns, by app, each time an instance failed (replaced at
// once, or its replacement waiting), or failed to start, since since: the
// restart budget's history. The replacement of an instance lost with its
// host (cause host_lost) is no failure of the app, and is not counted.
func (s *Store) Restarts(ctx context.Context, since time.Time) (map[string][]Restart, error) {
	rows, err := s.pool.Query(ctx, restartsSQL, since, restartKinds)
	if err != nil {
		return nil, fmt.Errorf("restarts: %w", redact(err))
	}
	out := map[string][]Restart{}
	var app string
	var r Restart
	if _, err := pgx.ForEachRow(rows, []any{&app, &r.At, &r.Generation, &r.SpecHash, &r.Reason}, func() error {
		out[app] = append(out[app], r)
		return nil
	}); err != nil {
		return nil, fmt.Errorf("restarts: %w", redact(err))
	}
	return out, nil
}

// FailedRollout is the last rollout of an app that failed and was not
// rolled back.
type FailedRollout struct {
	Generation int64
	SpecHash   string
}

// failedRolloutsSQL is FailedRollouts' query ($1 since, $2 the kind).
const failedRolloutsSQL = `SELECT DISTINCT ON (app) app,
		CASE WHEN details->>'generation' ~ '^[0-9]{1,18}$' THEN (details->>'generation')::bigint ELSE 0 END,
		coalesce(details->>'spec_hash', '')
	FROM events WHERE kind = $2 AND at >= $1 ORDER BY app, id DESC`

// FailedRollouts returns, by app, its newest rollout_failed since since.
func (s *Store) FailedRollouts(ctx context.Context, since time.Time) (map[string]FailedRollout, error) {
	rows, err := s.pool.Query(ctx, failedRolloutsSQL, since, string(msg.EventRolloutFailed))
	if err != nil {
		return nil, fmt.Errorf("failed rollouts: %w", redact(err))
	}
	out := map[string]FailedRollout{}
	var app string
	var f FailedRollout
	if _, err := pgx.ForEachRow(rows, []any{&app, &f.Generation, &f.SpecHash}, func() error {
		out[app] = f
		return nil
	}); err != nil {
		return nil, fmt.Errorf("failed rollouts: %w", redact(err))
	}
	return out, nil
}

// LastLogTail returns the log tail of an app's newest instance_exited or
// release_failed event at generation: what the last instance of a failed
// rollout wrote, or its release task.
func (s *Store) LastLogTail(ctx context.Context, app string, generation int64) ([]string, error) {
	var tail []string
	err := s.pool.QueryRow(ctx, `SELECT log_tail FROM events WHERE app = $1 AND kind = ANY($2) AND details->>'generation' = $3 AND log_tail IS NOT NULL
		ORDER BY id DESC LIMIT 1`, app, []string{string(msg.EventInstanceExited), string(msg.EventReleaseFailed)}, fmt.Sprint(generation)).Scan(&tail)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("log tail of %s: %w", app, redact(err))
	}
	return tail, nil
}
