package vault

import (
	"bytes"
	"crypto/rand"
	"encoding/base64"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"
)

func keyFile(t *testing.T, dir, name string) (string, []byte) {
	t.Helper()
	key := make([]byte, 32)
	_, _ = rand.Read(key)
	path := filepath.Join(dir, name)
	require.NoError(t, os.WriteFile(path, []byte(base64.StdEncoding.EncodeToString(key)+"\n"), 0o600))
	return path, key
}

func TestVault(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	path, _ := keyFile(t, dir, "cert.key")
	v, err := Load(path, "--cert-key-file")
	require.NoError(t, err)

	secret := []byte("-----BEGIN EC PRIVATE KEY-----")
	sealed, err := v.Seal(secret, "certificate web")
	require.NoError(t, err)
	require.False(t, bytes.Contains(sealed, secret))
	back, err := v.Open(sealed, "certificate web")
	require.NoError(t, err)
	require.Equal(t, secret, back)
	again, err := v.Seal(secret, "certificate web")
	require.NoError(t, err)
	require.NotEqual(t, sealed, again, "every seal has its own nonce")
	id, ok := KeyID(sealed)
	require.True(t, ok)
	require.Equal(t, v.ID(), id)

	_, err = v.Open(sealed, "certificate api")
	require.ErrorContains(t, err, "moved from another row", "a key copied to another app's row does not open")
	altered := bytes.Clone(sealed)
	altered[len(altered)-1] ^= 1
	_, err = v.Open(altered, "certificate web")
	require.ErrorContains(t, err, "altered")
	_, err = v.Open([]byte("plain text"), "certificate web")
	require.ErrorIs(t, err, ErrNotSealed)
	_, err = v.Open(sealed[:10], "certificate web")
	require.ErrorIs(t, err, ErrNotSealed)

	other, err := New(bytes.Repeat([]byte{7}, 32))
	require.NoError(t, err)
	_, err = other.Open(sealed, "certificate web")
	require.ErrorIs(t, err, ErrWrongKey)
	require.ErrorContains(t, err, v.ID())

	require.NoError(t, os.Chmod(path, 0o644))
	_, err = Load(path, "--cert-key-file")
	require.ErrorContains(t, err, "--cert-key-file "+path+" has mode 0644: it must be readable by its owner only")
	short := filepath.Join(dir, "short.key")
	require.NoError(t, os.WriteFile(short, []byte("c2hvcnQ="), 0o600))
	_, err = Load(short, "--secret-key-file")
	require.ErrorContains(t, err, "--secret-key-file "+short+": want 32 random bytes in base64 (openssl rand -base64 32")
	_, err = Load(filepath.Join(dir, "absent.key"), "--secret-key-file")
	require.ErrorContains(t, err, "--secret-key-file: ")
}

// TestKeyIDIsStable: the id of a key is what values stored by earlier
// versions carry; a new derivation would make them all "another key".
func TestKeyIDIsStable(t *testing.T) {
	t.Parallel()
	v, err := New(make([]byte, 32))
	require.NoError(t, err)
	require.Equal(t, "be3d1145", v.ID())
}

// TestRing: the current key seals; an older key of a rotation opens what
// it sealed, and a key the ring lacks is named in the error.
func TestRing(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	oldPath, _ := keyFile(t, dir, "old.key")
	newPath, _ := keyFile(t, dir, "new.key")
	old, err := Load(oldPath, "--secret-old-key-file")
	require.NoError(t, err)
	cur, err := Load(newPath, "--secret-key-file")
	require.NoError(t, err)

	byOld, err := old.Seal([]byte("hunter2"), "env secret web DB_PASSWORD")
	require.NoError(t, err)
	r := NewRing(cur, old, cur)
	require.Equal(t, cur.ID(), r.ID())
	require.False(t, r.Current(byOld))
	plain, err := r.Open(byOld, "env secret web DB_PASSWORD")
	require.NoError(t, err)
	require.Equal(t, "hunter2", string(plain))

	byCur, err := r.Seal([]byte("hunter2"), "env secret web DB_PASSWORD")
	require.NoError(t, err)
	require.True(t, r.Current(byCur))
	_, err = old.Open(byCur, "env secret web DB_PASSWORD")
	require.ErrorIs(t, err, ErrWrongKey, "the current key seals, not the old one")

	alone := NewRing(cur)
	_, err = alone.Open(byOld, "env secret web DB_PASSWORD")
	require.ErrorIs(t, err, ErrWrongKey)
	require.ErrorContains(t, err, "sealed with key id "+old.ID())
	require.ErrorContains(t, err, "(current "+cur.ID()+")")
	_, err = r.Open(byOld, "env secret web OTHER")
	require.ErrorContains(t, err, "moved from another row")
	_, err = r.Open(nil, "env secret web DB_PASSWORD")
	require.ErrorIs(t, err, ErrNotSealed)
}
