package store

import (
	"bytes"
	"context"
	"fmt"
	"testing"

	"github.com/stretchr/testify/require"
	"go.uber.org/zap/zaptest"

	"github.com/berthhq/berth/scheduler/internal/secret"
	"github.com/berthhq/berth/scheduler/internal/vault"
)

func testKey(t *testing.T, b byte) *vault.Vault {
	t.Helper()
	v, err := vault.New(bytes.Repeat([]byte{b}, 32))
	require.NoError(t, err)
	return v
}

// stored is every spec the database holds for app, as text.
func stored(t *testing.T, s *Store, app string) string {
	t.Helper()
	var out string
	require.NoError(t, s.pool.QueryRow(context.Background(), `
		SELECT (SELECT spec::text FROM apps WHERE name = $1) || (SELECT string_agg(spec::text, ' ') FROM app_history WHERE app = $1)`, app).Scan(&out))
	return out
}

func opened(t *testing.T, b *secret.Box, a App) map[string]string {
	t.Helper()
	env, err := b.Env(a.Name, a.Spec.Env)
	require.NoError(t, err)
	return env
}

// TestApplySealsSecrets: a secret is stored sealed in apps and
// app_history; the same value applied again is no change; a new value is;
// a rollback restores the earlier sealed value; a spec that still holds a
// plaintext secret is never written.
func TestApplySealsSecrets(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s := open(t)
	b := secret.New(vault.NewRing(testKey(t, 1)), zaptest.NewLogger(t))
	src := "name: web\nimage: web:1\nport: 8080\nenv: {LOG_LEVEL: info, DB_PASSWORD: {secret: %s}}\n"

	_, _, err := s.Apply(ctx, load(t, fmt.Sprintf(src, "hunter2-one")), nil)
	require.ErrorIs(t, err, ErrUnsealed)
	require.NotContains(t, err.Error(), "hunter2")

	app, changed, err := s.Apply(ctx, load(t, fmt.Sprintf(src, "hunter2-one")), b)
	require.NoError(t, err)
	require.True(t, changed)
	require.Equal(t, int64(1), app.Generation)
	again, changed, err := s.Apply(ctx, load(t, fmt.Sprintf(src, "hunter2-one")), b)
	require.NoError(t, err)
	require.False(t, changed, "the same secret applied again is no change")
	require.Equal(t, int64(1), again.Generation)

	app, changed, err = s.Apply(ctx, load(t, fmt.Sprintf(src, "hunter2-two")), b)
	require.NoError(t, err)
	require.True(t, changed)
	require.Equal(t, "hunter2-two", opened(t, b, app)["DB_PASSWORD"])
	text := stored(t, s, "web")
	require.NotContains(t, text, "hunter2")
	require.Contains(t, text, `"value_id"`)

	app, err = s.Rollback(ctx, "web")
	require.NoError(t, err)
	require.Equal(t, "hunter2-one", opened(t, b, app)["DB_PASSWORD"], "a rollback opens the earlier value")
	got, err := s.Get(ctx, "web")
	require.NoError(t, err)
	require.Equal(t, "hunter2-one", opened(t, b, got)["DB_PASSWORD"])
	_, err = s.Scale(ctx, "web", 3)
	require.NoError(t, err, "a stored spec with sealed secrets validates")
}

// TestMarkingSecretSealsHistory: a variable applied in clear and then
// marked secret leaves its clear values nowhere, not in the history
// either; rollback still reaches each value.
func TestMarkingSecretSealsHistory(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s := open(t)
	b := secret.New(vault.NewRing(testKey(t, 1)), zaptest.NewLogger(t))
	_, _, err := s.Apply(ctx, load(t, "name: api\nimage: api:1\nport: 8080\nenv: {DB_PASSWORD: clear-918273645}\n"), b)
	require.NoError(t, err)
	_, _, err = s.Apply(ctx, load(t, "name: api\nimage: api:1\nport: 8080\nenv: {DB_PASSWORD: clear-564738291}\n"), b)
	require.NoError(t, err)
	_, _, err = s.Apply(ctx, load(t, "name: api\nimage: api:2\nport: 8080\nenv: {DB_PASSWORD: clear-564738291}\n"), b)
	require.NoError(t, err)
	require.Contains(t, stored(t, s, "api"), "918273645")
	app, changed, err := s.Apply(ctx, load(t, "name: api\nimage: api:2\nport: 8080\nenv: {DB_PASSWORD: {secret: clear-564738291}}\n"), b)
	require.NoError(t, err)
	require.True(t, changed)
	require.Equal(t, int64(4), app.Generation)
	text := stored(t, s, "api")
	require.NotContains(t, text, "918273645")
	require.NotContains(t, text, "564738291")

	// Generation 3 holds the same value, now as the same sealed value: it
	// is the same spec, so rollback goes on to generation 2 (image 1).
	app, err = s.Rollback(ctx, "api")
	require.NoError(t, err)
	require.Equal(t, "api:1", app.Spec.Image)
	require.Equal(t, "clear-564738291", opened(t, b, app)["DB_PASSWORD"])
}

// TestResealRotatesStoredSecrets: after a key rotation, Reseal seals every
// stored secret (apps, history, deleted apps) with the new key, keeping the
// container hash; afterwards the old key is not needed; values it cannot
// open are reported, and a second run does nothing.
func TestResealRotatesStoredSecrets(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s := open(t)
	oldKey, newKey := testKey(t, 1), testKey(t, 2)
	before := secret.New(vault.NewRing(oldKey), zaptest.NewLogger(t))
	for _, src := range []string{
		"name: web\nimage: web:1\nport: 8080\nenv: {DB_PASSWORD: {secret: one}}\n",
		"name: web\nimage: web:2\nport: 8080\nenv: {DB_PASSWORD: {secret: one}}\n",
		"name: gone\nimage: g:1\nport: 8080\nenv: {TOKEN: {secret: two}}\n",
	} {
		_, _, err := s.Apply(ctx, load(t, src), before)
		require.NoError(t, err)
	}
	require.NoError(t, s.Delete(ctx, "gone"))
	web, err := s.Get(ctx, "web")
	require.NoError(t, err)
	hash := secret.HashEnv(web.Spec.Env)

	after := secret.New(vault.NewRing(newKey), zaptest.NewLogger(t))
	_, err = after.Env("web", web.Spec.Env)
	require.ErrorIs(t, err, vault.ErrWrongKey)

	rep, err := s.Reseal(ctx, secret.New(vault.NewRing(newKey, oldKey), zaptest.NewLogger(t)))
	require.NoError(t, err)
	require.Equal(t, ResealReport{Apps: 2, Specs: 5, Values: 5}, rep)
	web2, err := s.Get(ctx, "web")
	require.NoError(t, err)
	require.Equal(t, web.Generation, web2.Generation, "a rotation is no new generation")
	require.Equal(t, hash, secret.HashEnv(web2.Spec.Env), "nor a rollout")
	require.Equal(t, "one", opened(t, after, web2)["DB_PASSWORD"])
	app, err := s.Rollback(ctx, "web")
	require.NoError(t, err)
	require.Equal(t, "one", opened(t, after, app)["DB_PASSWORD"], "the history opens with the new key alone")
	_, _, err = s.Apply(ctx, load(t, "name: gone\nimage: g:1\nport: 8080\nenv: {TOKEN: {secret: two}}\n"), after)
	require.NoError(t, err)
	gone, err := s.Get(ctx, "gone")
	require.NoError(t, err)
	require.Equal(t, "two", opened(t, after, gone)["TOKEN"])

	rep, err = s.Reseal(ctx, secret.New(vault.NewRing(newKey, oldKey), zaptest.NewLogger(t)))
	require.NoError(t, err)
	require.Zero(t, rep.Values, "a second run does nothing")

	// A third key without the second: nothing opens; each is reported.
	rep, err = s.Reseal(ctx, secret.New(vault.NewRing(testKey(t, 3)), zaptest.NewLogger(t)))
	require.ErrorIs(t, err, vault.ErrWrongKey)
	require.ErrorContains(t, err, "reseal web: generation 1: env DB_PASSWORD: ")
	require.Zero(t, rep.Values)
	web2, err = s.Get(ctx, "web")
	require.NoError(t, err)
	require.Equal(t, "one", opened(t, after, web2)["DB_PASSWORD"], "what did not open is left")
}
