package spec

import (
	"encoding/json"
	"fmt"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

const envBase = "name: web\nimage: web:1\nport: 8080\n"

// TestEnvSecretForms: env takes plain strings and {secret: …}, in YAML and
// JSON alike, side by side.
func TestEnvSecretForms(t *testing.T) {
	t.Parallel()
	for _, src := range []string{
		envBase + "env: {LOG_LEVEL: info, DB_PASSWORD: {secret: hunter2}}\n",
		envBase + "env:\n  LOG_LEVEL: info\n  DB_PASSWORD:\n    secret: hunter2\n",
		`{"name": "web", "image": "web:1", "port": 8080, "env": {"LOG_LEVEL": "info", "DB_PASSWORD": {"secret": "hunter2"}}}`,
	} {
		a, err := Load([]byte(src))
		require.NoError(t, err, src)
		require.Equal(t, PlainValue("info"), a.Env["LOG_LEVEL"])
		require.Equal(t, SecretValue("hunter2"), a.Env["DB_PASSWORD"])
		require.Equal(t, []string{"DB_PASSWORD"}, a.Secrets())
		require.Equal(t, []string{"DB_PASSWORD"}, a.Unsealed())
	}
}

// TestEnvSecretProblems: every wrong form is refused with its field path,
// and no problem quotes a secret.
func TestEnvSecretProblems(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct{ name, env, want string }{
		{"number", "{DB_PASSWORD: {secret: 918273645}}", "env[DB_PASSWORD].secret: must be a string, not a number"},
		{"bool", "{DB_PASSWORD: {secret: yes}}", "env[DB_PASSWORD].secret: must be a string, not a boolean (in YAML, quote"},
		{"mapping", "{DB_PASSWORD: {secret: {value: 918273645}}}", "env[DB_PASSWORD].secret: must be a string, not a mapping"},
		{"null", "{DB_PASSWORD: {secret: null}}", "env[DB_PASSWORD].secret: must be a string, not null"},
		{"no secret field", "{DB_PASSWORD: {}}", "env[DB_PASSWORD]: must be a string, or {secret: …} for a value Berth keeps encrypted"},
		{"misspelt", "{DB_PASSWORD: {secrt: '918273645'}}", "env[DB_PASSWORD].secrt: unknown field (allowed: secret"},
		{"extra field", "{DB_PASSWORD: {secret: '918273645', file: /x}}", "env[DB_PASSWORD].file: unknown field (allowed: secret"},
		{"sealed is the scheduler's", "{DB_PASSWORD: {sealed: AQID, value_id: '918273645'}}", "env[DB_PASSWORD].sealed: unknown field (allowed: secret"},
		{"empty", "{DB_PASSWORD: {secret: ''}}", `env[DB_PASSWORD].secret: must not be empty (an empty value needs no secret: write DB_PASSWORD: "")`},
		{"placeholder", "{DB_PASSWORD: {secret: '<redacted>'}}", `env[DB_PASSWORD].secret: is "<redacted>", the placeholder Berth shows in place of a secret: give the secret itself`},
		{"NUL", "{DB_PASSWORD: {secret: \"9182\\u000073645\"}}", "env[DB_PASSWORD].secret: value must not contain a NUL byte"},
		{"bad name", "{1DB_PASSWORD: {secret: '918273645'}}", `env[1DB_PASSWORD]: "1DB_PASSWORD" is not a valid environment variable name`},
		{"list", "{DB_PASSWORD: ['918273645']}", "env[DB_PASSWORD]: must be a string, not a list; or {secret: …}"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			_, err := Load([]byte(envBase + "env: " + tc.env + "\n"))
			require.Error(t, err)
			require.Contains(t, err.Error(), tc.want)
			require.NotContains(t, err.Error(), "918273645")
			require.NotContains(t, err.Error(), "73645")
		})
	}
}

// TestEnvSecretNeverMarshals: a secret as applied marshals as the
// placeholder, and prints as it, so a spec that is logged or stored by
// mistake before sealing carries no plaintext.
func TestEnvSecretNeverMarshals(t *testing.T) {
	t.Parallel()
	a, err := Load([]byte(envBase + "env: {LOG_LEVEL: info, DB_PASSWORD: {secret: hunter2}}\n"))
	require.NoError(t, err)
	b, err := json.Marshal(a)
	require.NoError(t, err)
	require.NotContains(t, string(b), "hunter2")
	require.Contains(t, string(b), `"env":{"DB_PASSWORD":{"secret":"\u003credacted\u003e"},"LOG_LEVEL":"info"}`)
	for _, format := range []string{"%v", "%+v", "%#v", "%s"} {
		require.NotContains(t, fmt.Sprintf(format, a.Env), "hunter2", format)
		require.NotContains(t, fmt.Sprintf(format, *a), "hunter2", format)
	}
}

// TestEnvSealedRoundTrip: the stored form reads back as it was written,
// and a spec holding it validates (Scale re-validates stored specs).
func TestEnvSealedRoundTrip(t *testing.T) {
	t.Parallel()
	a, err := Load([]byte(envBase + "env: {LOG_LEVEL: info}\n"))
	require.NoError(t, err)
	a.Env["DB_PASSWORD"] = EnvValue{Sealed: &Sealed{Box: []byte{1, 2, 3, 4}, ValueID: strings.Repeat("ab", ValueIDLen)}}
	b, err := json.Marshal(a)
	require.NoError(t, err)
	require.Contains(t, string(b), `"DB_PASSWORD":{"sealed":"AQIDBA==","value_id":"`+strings.Repeat("ab", ValueIDLen)+`"}`)
	var back App
	require.NoError(t, json.Unmarshal(b, &back))
	require.Equal(t, a.Env, back.Env)
	require.NoError(t, back.Validate())
	require.Empty(t, back.Unsealed())
	require.Equal(t, []string{"DB_PASSWORD"}, back.Secrets())

	back.Env["DB_PASSWORD"] = EnvValue{Sealed: &Sealed{Box: []byte{1}, ValueID: "x"}}
	require.ErrorContains(t, back.Validate(), "env[DB_PASSWORD].value_id: must be 32 hex digits")

	for _, bad := range []string{`{"sealed": "AQ=="}`, `{"sealed": 1, "value_id": "x"}`, `{"secret": 5}`, `5`, `{"secret": "x", "y": 1}`} {
		var v EnvValue
		err := json.Unmarshal([]byte(bad), &v)
		require.Error(t, err, bad)
		require.NotContains(t, err.Error(), "AQ")
	}
}

// TestEnvRedacted: the view the API shows hides every secret, sealed or
// not, and leaves the app itself unchanged.
func TestEnvRedacted(t *testing.T) {
	t.Parallel()
	a, err := Load([]byte(envBase + "env: {LOG_LEVEL: info, DB_PASSWORD: {secret: hunter2}}\n"))
	require.NoError(t, err)
	a.Env["API_KEY"] = EnvValue{Sealed: &Sealed{Box: []byte("sealed-bytes"), ValueID: strings.Repeat("0", 32)}}
	r := a.Redacted()
	b, err := json.Marshal(r)
	require.NoError(t, err)
	require.Contains(t, string(b), `"env":{"API_KEY":{"secret":"\u003credacted\u003e"},"DB_PASSWORD":{"secret":"\u003credacted\u003e"},"LOG_LEVEL":"info"}`)
	require.Equal(t, "hunter2", *a.Env["DB_PASSWORD"].Secret, "the original keeps its value")
	require.NotNil(t, a.Env["API_KEY"].Sealed)
	require.Nil(t, (&App{}).Redacted().Env)
}
