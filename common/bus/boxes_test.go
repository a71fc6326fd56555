package bus

import (
	"encoding/base64"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"
)

func TestSealedBoxesOpenForTheRoleOnly(t *testing.T) {
	t.Parallel()
	seeds, err := EnsureCredentials(filepath.Join(t.TempDir(), "creds"))
	require.NoError(t, err)
	keys := map[string]*Keys{}
	for _, role := range Roles() {
		keys[role], err = LoadKeys(seeds[role])
		require.NoError(t, err)
	}
	secret := []byte("-----BEGIN EC PRIVATE KEY-----\nsecret\n-----END EC PRIVATE KEY-----\n")
	boxes, err := keys[RoleScheduler].SealTo(RoleLBAgent, secret)
	require.NoError(t, err)
	require.Len(t, boxes, 1)
	require.NotContains(t, boxes[0].Box, base64.StdEncoding.EncodeToString(secret)[:16])

	got, err := keys[RoleLBAgent].OpenSealed(boxes)
	require.NoError(t, err)
	require.Equal(t, secret, got)

	// Every other role's valid credential opens nothing.
	for _, role := range []string{RoleScheduler, RoleHealthd, RoleReader} {
		_, err := keys[role].OpenSealed(boxes)
		require.ErrorIs(t, err, ErrNotARecipient, role)
		// Even one that claims to be the recipient.
		forged := append(boxes[:0:0], boxes...)
		forged[0].To = recipientOf(t, keys[role])
		_, err = keys[role].OpenSealed(forged)
		require.ErrorContains(t, err, "does not open with this key", role)
	}

	// A box altered in one bit does not open.
	raw, _ := base64.StdEncoding.DecodeString(boxes[0].Box)
	raw[len(raw)-1] ^= 1
	altered := append(boxes[:0:0], boxes...)
	altered[0].Box = base64.StdEncoding.EncodeToString(raw)
	_, err = keys[RoleLBAgent].OpenSealed(altered)
	require.ErrorContains(t, err, "does not open")

	// Nil keys (no role credential) seal nothing.
	_, err = (*Keys)(nil).SealTo(RoleLBAgent, secret)
	require.ErrorContains(t, err, "--nats-nkey")
}

// recipientOf is the "to" of a box sealed to k's own key.
func recipientOf(t *testing.T, k *Keys) string {
	t.Helper()
	pub, err := k.publicNKey()
	require.NoError(t, err)
	return pub
}
