package secret

import (
	"bytes"
	"encoding/json"
	"errors"
	"testing"

	"github.com/stretchr/testify/require"
	"go.uber.org/zap/zaptest"

	"github.com/berthhq/berth/common/spec"
	"github.com/berthhq/berth/scheduler/internal/vault"
)

const plaintext = "hunter2-918273645"

func key(t *testing.T, b byte) *vault.Vault {
	t.Helper()
	v, err := vault.New(bytes.Repeat([]byte{b}, 32))
	require.NoError(t, err)
	return v
}

func box(t *testing.T, cur *vault.Vault, old ...*vault.Vault) *Box {
	return New(vault.NewRing(cur, old...), zaptest.NewLogger(t))
}

func load(t *testing.T, env string) *spec.App {
	t.Helper()
	a, err := spec.Load([]byte("name: web\nimage: web:1\nport: 8080\nenv: " + env + "\n"))
	require.NoError(t, err)
	return a
}

func marshal(t *testing.T, a *spec.App) string {
	t.Helper()
	b, err := json.Marshal(a)
	require.NoError(t, err)
	return string(b)
}

// TestSealAndOpen: a sealed secret holds no plaintext, and opens to it
// for the container; plain values pass unchanged.
func TestSealAndOpen(t *testing.T) {
	t.Parallel()
	b := box(t, key(t, 1))
	a := load(t, "{LOG_LEVEL: info, DB_PASSWORD: {secret: "+plaintext+"}}")
	require.NoError(t, b.Seal(a, nil))
	require.Empty(t, a.Unsealed())
	v := a.Env["DB_PASSWORD"]
	require.NotNil(t, v.Sealed)
	require.Len(t, v.Sealed.ValueID, 2*spec.ValueIDLen)
	require.NotContains(t, marshal(t, a), plaintext)
	require.NotContains(t, marshal(t, a), "hunter2")
	require.False(t, bytes.Contains(v.Sealed.Box, []byte("hunter2")))

	env, err := b.Env("web", a.Env)
	require.NoError(t, err)
	require.Equal(t, map[string]string{"LOG_LEVEL": "info", "DB_PASSWORD": plaintext}, env)
}

// TestNoKey: without --secret-key-file a secret is refused at its field,
// naming the flag, and a sealed one does not open; plain specs pass.
func TestNoKey(t *testing.T) {
	t.Parallel()
	b := New(nil, zaptest.NewLogger(t))
	require.NoError(t, b.Seal(load(t, "{LOG_LEVEL: info}"), nil))
	a := load(t, "{DB_PASSWORD: {secret: "+plaintext+"}, API_KEY: {secret: x}}")
	err := b.Seal(a, nil)
	var es spec.Errors
	require.ErrorAs(t, err, &es)
	require.Len(t, es, 2)
	require.Equal(t, "env[API_KEY].secret", es[0].Path)
	require.Equal(t, "env[DB_PASSWORD].secret", es[1].Path)
	require.Contains(t, es[1].Message, "it has no --secret-key-file")
	require.NotContains(t, err.Error(), "hunter2")

	sealed := load(t, "{DB_PASSWORD: {secret: "+plaintext+"}}")
	require.NoError(t, box(t, key(t, 1)).Seal(sealed, nil))
	_, err = b.Env("web", sealed.Env)
	require.ErrorIs(t, err, ErrNoKey)
	require.ErrorContains(t, err, "env DB_PASSWORD is a secret")
	env, err := b.Env("web", load(t, "{A: b}").Env)
	require.NoError(t, err)
	require.Equal(t, map[string]string{"A": "b"}, env)
}

// TestOpenRefusesMovedAndWrongKey: a sealed value bound to another app or
// name, altered, or sealed with a key this scheduler lacks, does not open,
// and no error holds the value.
func TestOpenRefusesMovedAndWrongKey(t *testing.T) {
	t.Parallel()
	b := box(t, key(t, 1))
	a := load(t, "{DB_PASSWORD: {secret: "+plaintext+"}}")
	require.NoError(t, b.Seal(a, nil))
	v := a.Env["DB_PASSWORD"]
	altered := *v.Sealed
	altered.Box = bytes.Clone(v.Sealed.Box)
	altered.Box[len(altered.Box)-1] ^= 1
	for _, tc := range []struct {
		name, app string
		env       map[string]spec.EnvValue
		want      string
		is        error
	}{
		{"another name", "web", map[string]spec.EnvValue{"API_KEY": v}, "env API_KEY: vault: sealed value does not open for env secret web API_KEY: altered, or moved from another row", nil},
		{"another app", "shop", map[string]spec.EnvValue{"DB_PASSWORD": v}, "moved from another row", nil},
		{"altered", "web", map[string]spec.EnvValue{"DB_PASSWORD": {Sealed: &altered}}, "altered", nil},
		{"unsealed", "web", map[string]spec.EnvValue{"DB_PASSWORD": spec.SecretValue(plaintext)}, "a secret was stored unsealed", nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			_, err := b.Env(tc.app, tc.env)
			require.ErrorContains(t, err, tc.want)
			require.NotContains(t, err.Error(), "hunter2")
		})
	}
	other := box(t, key(t, 2))
	_, err := other.Env("web", a.Env)
	require.ErrorIs(t, err, vault.ErrWrongKey)
	require.ErrorContains(t, err, "sealed with key id "+b.KeyID())
	require.NotContains(t, err.Error(), "hunter2")
}

// TestUnchangedSecretChangesNothing: applying the same value again keeps
// the stored sealed value, so the specs compare equal and the container
// hash is the same; a new value rolls out; so does the value going back.
func TestUnchangedSecretChangesNothing(t *testing.T) {
	t.Parallel()
	b := box(t, key(t, 1))
	first := load(t, "{LOG_LEVEL: info, DB_PASSWORD: {secret: "+plaintext+"}}")
	require.NoError(t, b.Seal(first, nil))

	again := load(t, "{LOG_LEVEL: info, DB_PASSWORD: {secret: "+plaintext+"}}")
	require.NoError(t, b.Seal(again, first))
	require.Equal(t, marshal(t, first), marshal(t, again), "an unchanged re-apply stores the same spec")
	require.Equal(t, HashEnv(first.Env), HashEnv(again.Env))

	fresh := load(t, "{LOG_LEVEL: info, DB_PASSWORD: {secret: "+plaintext+"}}")
	require.NoError(t, b.Seal(fresh, nil))
	require.NotEqual(t, first.Env["DB_PASSWORD"].Sealed.Box, fresh.Env["DB_PASSWORD"].Sealed.Box, "each seal has its own nonce")

	changed := load(t, "{LOG_LEVEL: info, DB_PASSWORD: {secret: other-value}}")
	require.NoError(t, b.Seal(changed, first))
	require.NotEqual(t, HashEnv(first.Env), HashEnv(changed.Env), "a changed secret rolls out")
	back := load(t, "{LOG_LEVEL: info, DB_PASSWORD: {secret: "+plaintext+"}}")
	require.NoError(t, b.Seal(back, changed))
	require.NotEqual(t, HashEnv(changed.Env), HashEnv(back.Env), "and so does the old value coming back")

	// A stored value that does not open (another key) is sealed anew.
	elsewhere := load(t, "{LOG_LEVEL: info, DB_PASSWORD: {secret: "+plaintext+"}}")
	require.NoError(t, box(t, key(t, 2)).Seal(elsewhere, nil))
	next := load(t, "{LOG_LEVEL: info, DB_PASSWORD: {secret: "+plaintext+"}}")
	require.NoError(t, b.Seal(next, elsewhere))
	require.NotEqual(t, elsewhere.Env["DB_PASSWORD"].Sealed.ValueID, next.Env["DB_PASSWORD"].Sealed.ValueID)
	env, err := b.Env("web", next.Env)
	require.NoError(t, err)
	require.Equal(t, plaintext, env["DB_PASSWORD"])
}

// TestHashEnv: plain values hash as they always have (an upgrade rolls
// nothing out), a secret as its value id only.
func TestHashEnv(t *testing.T) {
	t.Parallel()
	a := load(t, "{LOG_LEVEL: info}")
	require.Equal(t, map[string]string{"LOG_LEVEL": "info"}, HashEnv(a.Env))
	a.Env["DB_PASSWORD"] = spec.EnvValue{Sealed: &spec.Sealed{Box: []byte(plaintext), ValueID: "ab"}}
	require.Equal(t, map[string]string{"LOG_LEVEL": "info", "DB_PASSWORD": "\x00sealed ab"}, HashEnv(a.Env))
	a.Env["DB_PASSWORD"] = spec.SecretValue(plaintext)
	require.NotContains(t, HashEnv(a.Env)["DB_PASSWORD"], "hunter2")
}

// TestResealRotates: what an old key sealed is sealed again with the
// current key, value id kept (no rollout), and then opens without the old
// key; values equal before stay equal; a value whose key is missing is
// reported and left, and the others are still done.
func TestResealRotates(t *testing.T) {
	t.Parallel()
	oldKey, newKey, lost := key(t, 1), key(t, 2), key(t, 3)
	before := box(t, oldKey)
	cur := load(t, "{LOG_LEVEL: info, DB_PASSWORD: {secret: "+plaintext+"}}")
	require.NoError(t, before.Seal(cur, nil))
	hist := load(t, "{LOG_LEVEL: info, DB_PASSWORD: {secret: "+plaintext+"}}")
	require.NoError(t, before.Seal(hist, cur))
	hash := HashEnv(cur.Env)

	rotating := box(t, newKey, oldKey)
	reseal := rotating.Resealer(cur, true)
	n, err := reseal(cur)
	require.NoError(t, err)
	require.Equal(t, 1, n)
	n, err = reseal(hist)
	require.NoError(t, err)
	require.Equal(t, 1, n)
	require.Equal(t, hash, HashEnv(cur.Env), "a rotation restarts nothing")
	require.Equal(t, marshal(t, cur), marshal(t, hist), "equal generations stay equal")
	env, err := box(t, newKey).Env("web", cur.Env)
	require.NoError(t, err)
	require.Equal(t, plaintext, env["DB_PASSWORD"])
	n, err = rotating.Resealer(cur, true)(cur)
	require.NoError(t, err)
	require.Zero(t, n, "a second run does nothing")

	gone := load(t, "{A: {secret: a}, B: {secret: b}}")
	require.NoError(t, box(t, lost).Seal(gone, nil))
	b := load(t, "{B: {secret: b}}")
	require.NoError(t, before.Seal(b, nil))
	gone.Env["B"] = b.Env["B"]
	n, err = rotating.Resealer(gone, true)(gone)
	require.ErrorIs(t, err, vault.ErrWrongKey)
	require.ErrorContains(t, err, "env A: ")
	require.Equal(t, 1, n, "B is done although A does not open")
	require.True(t, vault.NewRing(newKey).Current(gone.Env["B"].Sealed.Box))
}

// TestResealMarksHistory: once a variable is secret, its plain values in
// earlier specs are sealed: the current value as the current spec's sealed
// value, others one sealed value per distinct value; other variables and
// a rotation-free run leave old keys alone.
func TestResealMarksHistory(t *testing.T) {
	t.Parallel()
	b := box(t, key(t, 1))
	cur := load(t, "{LOG_LEVEL: info, DB_PASSWORD: {secret: "+plaintext+"}}")
	require.NoError(t, b.Seal(cur, nil))
	gen1 := load(t, "{LOG_LEVEL: debug, DB_PASSWORD: first-918273645}")
	gen2 := load(t, "{LOG_LEVEL: debug, DB_PASSWORD: first-918273645}")
	gen3 := load(t, "{LOG_LEVEL: info, DB_PASSWORD: "+plaintext+"}")
	byOld := load(t, "{LOG_LEVEL: info, DB_PASSWORD: {secret: "+plaintext+"}}")
	require.NoError(t, box(t, key(t, 9)).Seal(byOld, nil))
	oldJSON := marshal(t, byOld)

	reseal := b.Resealer(cur, false)
	for _, a := range []*spec.App{gen1, gen2, gen3} {
		n, err := reseal(a)
		require.NoError(t, err)
		require.Equal(t, 1, n)
		require.NotContains(t, marshal(t, a), "918273645")
		require.Equal(t, spec.PlainValue("debug"), gen1.Env["LOG_LEVEL"], "plain variables stay plain")
	}
	require.Equal(t, marshal(t, cur), marshal(t, gen3), "the current value becomes the current sealed value")
	require.Equal(t, marshal(t, gen1), marshal(t, gen2), "equal values stay equal")
	require.NotEqual(t, HashEnv(gen1.Env), HashEnv(cur.Env))
	env, err := b.Env("web", gen1.Env)
	require.NoError(t, err)
	require.Equal(t, "first-918273645", env["DB_PASSWORD"])

	n, err := reseal(byOld)
	require.NoError(t, err)
	require.Zero(t, n, "without rotate, what another key sealed is left")
	require.Equal(t, oldJSON, marshal(t, byOld))

	n, err = New(nil, zaptest.NewLogger(t)).Resealer(cur, true)(load(t, "{DB_PASSWORD: x}"))
	require.NoError(t, err)
	require.Zero(t, n, "no key: nothing to do")
	require.False(t, errors.Is(err, ErrNoKey))
}
