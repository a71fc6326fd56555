package certs

import (
	"bytes"
	"crypto/rand"
	"encoding/base64"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"
)

func TestVault(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	key := make([]byte, 32)
	_, _ = rand.Read(key)
	path := filepath.Join(dir, "cert.key")
	require.NoError(t, os.WriteFile(path, []byte(base64.StdEncoding.EncodeToString(key)+"\n"), 0o600))
	v, err := LoadVault(path)
	require.NoError(t, err)

	secret := []byte("-----BEGIN EC PRIVATE KEY-----")
	sealed, err := v.Seal(secret, "certificate web")
	require.NoError(t, err)
	require.False(t, bytes.Contains(sealed, secret))
	back, err := v.Open(sealed, "certificate web")
	require.NoError(t, err)
	require.Equal(t, secret, back)

	_, err = v.Open(sealed, "certificate api")
	require.ErrorContains(t, err, "moved from another row", "a key copied to another app's row does not open")
	altered := bytes.Clone(sealed)
	altered[len(altered)-1] ^= 1
	_, err = v.Open(altered, "certificate web")
	require.ErrorContains(t, err, "altered")

	other, err := NewVault(bytes.Repeat([]byte{7}, 32))
	require.NoError(t, err)
	_, err = other.Open(sealed, "certificate web")
	require.ErrorIs(t, err, ErrWrongKey)
	require.ErrorContains(t, err, v.ID())

	require.NoError(t, os.Chmod(path, 0o644))
	_, err = LoadVault(path)
	require.ErrorContains(t, err, "readable by its owner only")
	short := filepath.Join(dir, "short.key")
	require.NoError(t, os.WriteFile(short, []byte("c2hvcnQ="), 0o600))
	_, err = LoadVault(short)
	require.ErrorContains(t, err, "want 32 random bytes in base64 (openssl rand -base64 32")
}
