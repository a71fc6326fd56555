package main

import (
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/berthhq/berth/common/msg"
	"github.com/berthhq/berth/internal/testrig"
)

// writeKey writes a fresh --secret-key-file.
func writeKey(t *testing.T, name string) string {
	t.Helper()
	key := make([]byte, 32)
	_, _ = rand.Read(key)
	path := filepath.Join(t.TempDir(), name)
	require.NoError(t, os.WriteFile(path, []byte(base64.StdEncoding.EncodeToString(key)+"\n"), 0o600))
	return path
}

// pgDump is the whole database as pg_dump writes it.
func pgDump(t *testing.T, db string) string {
	t.Helper()
	out, err := exec.Command(filepath.Join(testrig.PostgresBinDir(), "pg_dump"), "--no-owner", "-d", db).CombinedOutput()
	require.NoError(t, err, "%s", out)
	return string(out)
}

// containerEnv is the environment Docker gives an instance's container.
func containerEnv(t *testing.T, m *msg.Instance) []string {
	t.Helper()
	out, err := exec.Command("docker", "inspect", "-f", "{{json .Config.Env}}", m.ContainerID).CombinedOutput()
	require.NoError(t, err, "%s", out)
	var env []string
	require.NoError(t, json.Unmarshal(out, &env))
	return env
}

// TestSecretsAtRest: a secret applied through the CLI reaches the
// container the controller creates, and is nowhere in a pg_dump of the
// database (apps nor app_history), nor in what the CLI shows. A changed
// secret rolls out, the same one does not. After a key rotation
// (scheduler migrate with the old key as --secret-old-key-file), a
// replica with the new key alone rolls back to the first value.
func TestSecretsAtRest(t *testing.T) {
	t.Parallel()
	image := testrig.DemoImage(t, "v1")
	oldKey := writeKey(t, "secret.key")
	e := newEnv(t, "sec", "--secret-key-file", oldKey)
	const first, second = "first-hunter2-918273645", "second-hunter2-564738291"
	specFile := filepath.Join(t.TempDir(), "web.yaml")
	apply := func(r *replica, value string) string {
		t.Helper()
		require.NoError(t, os.WriteFile(specFile, fmt.Appendf(nil, "name: web\nimage: %s\nport: 8080\nreplicas: 1\n"+
			"env: {PLAIN_VAR: visible, DB_PASSWORD: {secret: %s}}\n"+
			"update: {min_healthy_time: 0s}\nstop: {grace: 2s, drain: 0s}\nresources: {memory: 32Mi}\n", image, value), 0o644))
		code, out, errOut := cmd(t, "apply", "-f", specFile, "--server", r.api)
		require.Equal(t, 0, code, out+errOut)
		require.NotContains(t, out+errOut, "hunter2")
		return out
	}
	// runningWith waits until the one running instance's container has
	// DB_PASSWORD=value, and returns it.
	runningWith := func(value string) *msg.Instance {
		t.Helper()
		var got *msg.Instance
		require.Eventually(t, func() bool {
			insts := running(t, e.kv, "web")
			if len(insts) != 1 {
				return false
			}
			for _, m := range insts {
				got = m
			}
			return slices.Contains(containerEnv(t, got), "DB_PASSWORD="+value)
		}, 60*time.Second, 100*time.Millisecond, "a running container with the secret's value")
		return got
	}

	require.Contains(t, apply(e.r, first), "web: created, generation 1")
	inst := runningWith(first)
	require.Contains(t, containerEnv(t, inst), "PLAIN_VAR=visible")
	require.Contains(t, apply(e.r, first), "web: unchanged, generation 1", "the same secret again changes nothing")
	require.Contains(t, apply(e.r, second), "web: generation 2, changed: env (a secret value)")
	moved := runningWith(second)
	require.NotEqual(t, inst.ID, moved.ID, "a changed secret rolls out")

	dump := pgDump(t, e.db)
	require.Contains(t, dump, "app_history", "the dump holds the history")
	require.Contains(t, dump, `"value_id"`, "and the sealed values")
	require.Contains(t, dump, "visible", "and the plain values")
	for _, plain := range []string{"hunter2", "918273645", "564738291"} {
		require.False(t, strings.Contains(dump, plain), "the dump holds %q", plain)
	}

	code, out, errOut := cmd(t, "status", "web", "-o", "json", "--server", e.r.api)
	require.Equal(t, 0, code, out+errOut)
	require.Contains(t, out, `"secret": "\u003credacted\u003e"`)
	require.NotContains(t, out, "hunter2")
	code, out, _ = cmd(t, "events", "--app", "web", "--server", e.r.api)
	require.Equal(t, 0, code)
	require.NotContains(t, out, "hunter2")

	// Rotation: seal everything with a new key, then run with it alone.
	newKey := writeKey(t, "secret-new.key")
	code, out, errOut = cmd(t, "migrate", "--database-url", e.db, "--secret-key-file", newKey, "--secret-old-key-file", oldKey)
	require.Equal(t, 0, code, out+errOut)
	require.Contains(t, out, "secrets: 3 values sealed again in 3 stored specs of 1 apps")
	require.False(t, strings.Contains(pgDump(t, e.db), "hunter2"))
	code, out, _ = cmd(t, "migrate", "--database-url", e.db, "--secret-key-file", newKey)
	require.Equal(t, 0, code, out)
	require.Contains(t, out, "secrets: 0 values sealed again", "a second run finds nothing under another key")

	e.r.stop()
	b := startReplica(t, e.db, e.natsURL, e.prefix+"-b", "--prefix", e.prefix, "--secret-key-file", newKey)
	require.Contains(t, apply(b, second), "unchanged", "the rotated value is the same value")
	require.Equal(t, moved.ID, runningWith(second).ID, "a rotation restarts nothing")
	code, out, errOut = cmd(t, "rollback", "web", "--server", b.api)
	require.Equal(t, 0, code, out+errOut)
	back := runningWith(first)
	require.NotEqual(t, moved.ID, back.ID)
	require.False(t, strings.Contains(pgDump(t, e.db), "hunter2"))
}

// TestSecretKeyFlags: the key flags are checked before anything runs; the
// --cert-key-file may also be the --secret-key-file.
func TestSecretKeyFlags(t *testing.T) {
	t.Parallel()
	db := []string{"check-config", "--database-url", "postgres://u:p@h/db"}
	key := writeKey(t, "shared.key")
	code, _, errOut := cmd(t, append(db, "--secret-key-file", key, "--secret-old-key-file", writeKey(t, "old.key"),
		"--acme-directory", "https://acme-v02.api.letsencrypt.org/directory", "--cert-key-file", key)...)
	require.Equal(t, 0, code, errOut)

	code, _, errOut = cmd(t, append(db, "--secret-old-key-file", key)...)
	require.Equal(t, 1, code)
	require.Contains(t, errOut, "--secret-old-key-file needs --secret-key-file")
	open := filepath.Join(t.TempDir(), "open.key")
	require.NoError(t, os.WriteFile(open, []byte("MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=\n"), 0o644))
	code, _, errOut = cmd(t, append(db, "--secret-key-file", open)...)
	require.Equal(t, 1, code)
	require.Contains(t, errOut, "--secret-key-file "+open+" has mode 0644: it must be readable by its owner only")
	code, _, errOut = cmd(t, append(db, "--secret-key-file", key, "--secret-old-key-file", "/nonexistent")...)
	require.Equal(t, 1, code)
	require.Contains(t, errOut, "--secret-old-key-file: ")

	code, _, errOut = cmd(t, "migrate", "--database-url", "postgres://u:p@127.0.0.1:1/db", "--secret-old-key-file", key)
	require.Equal(t, 2, code)
	require.Contains(t, errOut, "--secret-old-key-file needs --secret-key-file")
}
