package controller

import (
	"bytes"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.uber.org/zap"

	"github.com/berthhq/berth/common/msg"
	"github.com/berthhq/berth/common/spec"
	"github.com/berthhq/berth/scheduler/internal/secret"
	"github.com/berthhq/berth/scheduler/internal/store"
	"github.com/berthhq/berth/scheduler/internal/vault"
)

const secretSpec = webSpec + "env: {LOG_LEVEL: info, DB_PASSWORD: {secret: %s}}\n"

func secretBox(t *testing.T, b byte) *secret.Box {
	t.Helper()
	k, err := vault.New(bytes.Repeat([]byte{b}, 32))
	require.NoError(t, err)
	return secret.New(vault.NewRing(k), zap.NewNop())
}

// sealed loads a spec with a secret and seals it as the API would, cur
// being the stored spec.
func sealed(t *testing.T, b *secret.Box, value string, cur *spec.App) *spec.App {
	t.Helper()
	a := load(t, fmt.Sprintf(secretSpec, "v1", value))
	require.NoError(t, b.Seal(a, cur))
	return a
}

// TestSecretReachesTheContainer: the container is created with the
// secret's value, opened by the leader.
func TestSecretReachesTheContainer(t *testing.T) {
	t.Parallel()
	b := secretBox(t, 1)
	f := newFake()
	f.apply(sealed(t, b, "hunter2", nil), 2)
	start(t, f, Config{Secrets: b})
	require.Eventually(t, func() bool { records, _ := f.snapshot(); return len(records) == 2 }, 5*time.Second, 10*time.Millisecond)
	f.mu.Lock()
	defer f.mu.Unlock()
	require.Len(t, f.created, 2)
	for _, o := range f.created {
		require.Equal(t, "hunter2", o.Env["DB_PASSWORD"])
		require.Equal(t, "info", o.Env["LOG_LEVEL"])
	}
}

// TestSecretRolloutFollowsTheValue: the same value applied again gives the
// same container hash (no rollout), though a fresh seal's ciphertext
// differs; a new value gives another.
func TestSecretRolloutFollowsTheValue(t *testing.T) {
	t.Parallel()
	b := secretBox(t, 1)
	first := sealed(t, b, "hunter2", nil)
	require.Equal(t, desiredHash(first), desiredHash(sealed(t, b, "hunter2", first)), "an unchanged secret rolls nothing out")
	require.NotEqual(t, desiredHash(first), desiredHash(sealed(t, b, "hunter3", first)), "a changed secret rolls out")
	require.NotEqual(t, desiredHash(first), desiredHash(sealed(t, b, "hunter2", nil)), "a value sealed anew is a new value")
}

// TestSecretThatDoesNotOpen: a leader without the key that sealed a
// secret creates no container, and says why in an event that holds no
// value.
func TestSecretThatDoesNotOpen(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name string
		cfg  Config
		want string
	}{
		{"no key", Config{}, "this scheduler has no --secret-key-file"},
		{"another key", Config{Secrets: secretBox(t, 2)}, "sealed with another key"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			f := newFake()
			f.apply(sealed(t, secretBox(t, 1), "hunter2", nil), 1)
			start(t, f, tc.cfg)
			var failed store.Event
			require.Eventually(t, func() bool {
				f.mu.Lock()
				defer f.mu.Unlock()
				i := slices.IndexFunc(f.events, func(e store.Event) bool { return e.Kind == msg.EventInstanceCreateFailed })
				if i >= 0 {
					failed = f.events[i]
				}
				return i >= 0
			}, 5*time.Second, 10*time.Millisecond)
			require.Contains(t, failed.Message, "cannot start web: its env secrets do not open: ")
			require.Contains(t, failed.Message, tc.want)
			require.Contains(t, failed.Message, "env DB_PASSWORD")
			require.False(t, strings.Contains(failed.Message, "hunter2"))
			f.mu.Lock()
			defer f.mu.Unlock()
			require.Empty(t, f.created)
		})
	}
}
