package api

import (
	"bytes"
	"context"
	"encoding/json"
	"net/http/httptest"
	"testing"

	"github.com/stretchr/testify/require"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"

	"github.com/berthhq/berth/internal/testrig"
	"github.com/berthhq/berth/scheduler/internal/secret"
	"github.com/berthhq/berth/scheduler/internal/store"
	"github.com/berthhq/berth/scheduler/internal/vault"
)

// secretAPI is an API over a fresh database whose every log line is kept.
func secretAPI(t *testing.T, withKey bool) (*client, *observer.ObservedLogs) {
	t.Helper()
	core, logs := observer.New(zap.DebugLevel)
	logger := zap.New(core)
	st, err := store.Open(context.Background(), testrig.Postgres(t))
	require.NoError(t, err)
	t.Cleanup(st.Close)
	_, err = st.Migrate(context.Background())
	require.NoError(t, err)
	o := Options{Open: true}
	if withKey {
		k, err := vault.New(bytes.Repeat([]byte{5}, 32))
		require.NoError(t, err)
		o.Secrets = secret.New(vault.NewRing(k), logger)
	}
	srv := httptest.NewServer(New(deps(st), o, logger))
	t.Cleanup(srv.Close)
	return &client{t: t, url: srv.URL, st: st}, logs
}

const (
	secretValue = "hunter2-918273645"
	withSecret  = "name: web\nimage: web:1\nport: 8080\nenv: {LOG_LEVEL: info, DB_PASSWORD: {secret: " + secretValue + "}}\n"
)

// noSecretIn fails when any answer or log line holds the secret or its
// sealed form.
func noSecretIn(t *testing.T, logs *observer.ObservedLogs, answers ...[]byte) {
	t.Helper()
	for _, raw := range answers {
		require.NotContains(t, string(raw), "918273645")
		require.NotContains(t, string(raw), "value_id", "the sealed form is not shown either")
	}
	for _, e := range logs.All() {
		line, err := json.Marshal(map[string]any{"msg": e.Message, "fields": e.ContextMap()})
		require.NoError(t, err)
		require.NotContains(t, string(line), "918273645")
	}
}

// TestSecretsRedacted: GET and rollback show a secret as "<redacted>",
// plain values as they are; an unchanged re-apply is no change; errors
// and logs never hold the value.
func TestSecretsRedacted(t *testing.T) {
	t.Parallel()
	c, logs := secretAPI(t, true)
	code, obj, put := c.do("PUT", "/v1/apps/web", withSecret)
	require.Equal(t, 200, code, string(put))
	require.Equal(t, true, obj["changed"])
	code, obj, again := c.do("PUT", "/v1/apps/web", withSecret)
	require.Equal(t, 200, code)
	require.Equal(t, false, obj["changed"], "the same secret again changes nothing")

	code, obj, get := c.do("GET", "/v1/apps/web", "")
	require.Equal(t, 200, code)
	env := obj["spec"].(map[string]any)["env"].(map[string]any)
	require.Equal(t, map[string]any{"secret": "<redacted>"}, env["DB_PASSWORD"])
	require.Equal(t, "info", env["LOG_LEVEL"])

	code, _, _ = c.do("PUT", "/v1/apps/web", "name: web\nimage: web:2\nport: 8080\nenv: {LOG_LEVEL: info, DB_PASSWORD: {secret: other-918273645}}\n")
	require.Equal(t, 200, code)
	code, obj, rollback := c.do("POST", "/v1/apps/web/rollback", "")
	require.Equal(t, 200, code)
	require.Equal(t, map[string]any{"secret": "<redacted>"}, obj["spec"].(map[string]any)["env"].(map[string]any)["DB_PASSWORD"])

	// What GET showed, applied back, is refused: the placeholder is no value.
	code, _, placeholder := c.do("PUT", "/v1/apps/web", "name: web\nimage: web:1\nport: 8080\nenv: {DB_PASSWORD: {secret: <redacted>}}\n")
	require.Equal(t, 400, code)
	require.Contains(t, string(placeholder), `env[DB_PASSWORD].secret`)
	require.Contains(t, string(placeholder), "the placeholder Berth shows in place of a secret")

	_, _, bad := c.do("PUT", "/v1/apps/web", withSecret+"port: 0\n")
	_, _, list := c.do("GET", "/v1/apps", "")
	noSecretIn(t, logs, put, again, get, rollback, bad, list)
}

// TestSecretRefusedWithoutKey: a scheduler without --secret-key-file
// refuses a spec with a secret at apply, at the field, naming the flag.
func TestSecretRefusedWithoutKey(t *testing.T) {
	t.Parallel()
	c, logs := secretAPI(t, false)
	code, obj, raw := c.do("PUT", "/v1/apps/web", withSecret)
	require.Equal(t, 400, code, string(raw))
	fields := obj["fields"].([]any)
	require.Len(t, fields, 1)
	require.Equal(t, "env[DB_PASSWORD].secret", fields[0].(map[string]any)["path"])
	require.Contains(t, fields[0].(map[string]any)["message"], "it has no --secret-key-file")
	code, _, _ = c.do("GET", "/v1/apps/web", "")
	require.Equal(t, 404, code, "nothing was stored")
	noSecretIn(t, logs, raw)
}
