package spec

import (
	"testing"

	"github.com/stretchr/testify/require"
)

// TestDecodeNeverEchoesSecrets: a problem under env, health headers, body
// or send names the field and the expected kind, never the value.
func TestDecodeNeverEchoesSecrets(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct{ name, spec, want string }{
		{"env number", "env: {DB_PASSWORD: 918273645}", "env[DB_PASSWORD]: must be a string, not a number"},
		{"env float", "env: {DB_PASSWORD: 9182.73645}", "env[DB_PASSWORD]: must be a string, not a number"},
		{"env bool", "env: {DB_PASSWORD: true}", "env[DB_PASSWORD]: must be a string, not a boolean"},
		{"env list", "env: {DB_PASSWORD: [918273645]}", "env[DB_PASSWORD]: must be a string, not a list"},
		{"env not a mapping", "env: [DB_PASSWORD=918273645]", "env: must be a mapping, not a list"},
		{"env quoted key", `env: {"DB PASSWORD": 918273645}`, `env["DB PASSWORD"]: must be a string, not a number`},
		{"header", "health: {headers: {Authorization: 918273645}}", "health.headers[Authorization]: must be a string, not a number"},
		{"body", "health: {body: 918273645}", "health.body: must be a string, not a number"},
		{"send", "health: {type: tcp, send: 918273645}", "health.send: must be a string, not a number"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			_, err := Decode([]byte("name: a\nimage: a:1\nport: 8080\n" + tc.spec + "\n"))
			require.Error(t, err)
			require.Contains(t, err.Error(), tc.want)
			require.NotContains(t, err.Error(), "918273645")
			require.NotContains(t, err.Error(), "9182.73645")
		})
	}
}

// TestDecodeEchoesOtherValues: outside secret fields a problem still quotes
// the value, which helps to find it.
func TestDecodeEchoesOtherValues(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct{ name, spec, want string }{
		{"name", "name: 12345\nimage: a:1\nport: 8080", "name: must be a string, not the number 12345"},
		{"port", "name: a\nimage: a:1\nport: 99999999999", "port: must be a whole number between -2147483648 and 2147483647, not the number 99999999999"},
		{"health path", "name: a\nimage: a:1\nport: 8080\nhealth: {path: 12345}", "health.path: must be a string, not the number 12345"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			_, err := Decode([]byte(tc.spec + "\n"))
			require.ErrorContains(t, err, tc.want)
		})
	}
}

func TestEnvRef(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		in, name string
		ok       bool
	}{
		{"$env:BERTH_PROBE_WEB_TOKEN", "BERTH_PROBE_WEB_TOKEN", true},
		{"$env:BERTH_PROBE_", "", false},
		{"$env:HOME", "", false},
		{"$env:BERTH_HEALTHD_NATS_PASSWORD", "", false},
		{"$env:BERTH_PROBE_lower", "", false},
		{"$env:BERTH_PROBE_X Y", "", false},
		{"Bearer $env:BERTH_PROBE_X", "", false},
		{"BERTH_PROBE_X", "", false},
	} {
		t.Run(tc.in, func(t *testing.T) {
			t.Parallel()
			name, ok := EnvRef(tc.in)
			require.Equal(t, tc.ok, ok)
			require.Equal(t, tc.name, name)
		})
	}
}

func TestSecretHeader(t *testing.T) {
	t.Parallel()
	for _, name := range []string{"Authorization", "authorization", "Proxy-Authorization", "Cookie", "X-Api-Key", "X-Auth-Token", "X-Client-Secret", "X-Password", "X-Session-Id"} {
		require.True(t, SecretHeader(name), name)
	}
	for _, name := range []string{"Host", "Accept", "User-Agent", "X-Request-Id", "Content-Type"} {
		require.False(t, SecretHeader(name), name)
	}
}
