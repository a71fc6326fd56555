package spec

import (
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// TestReleaseRefusesHostileInput is the release block's share of the
// hostile-spec corpus: each problem is refused naming its field, and no
// env value is ever echoed.
func TestReleaseRefusesHostileInput(t *testing.T) {
	t.Parallel()
	runProblems(t, []problemCase{
		{"no command", base + "release: {timeout: 1m}\n", []string{"release.command: must be set"}},
		{"empty command", base + "release: {command: []}\n", []string{"release.command: must be set"}},
		{"a string, not an argv", base + "release: {command: \"migrate up\"}\n", []string{"release.command: must be a list, not the string"}},
		{"a number in the argv", base + "release: {command: [migrate, 3]}\n", []string{"release.command[1]: must be a string, not the number 3"}},
		{"empty program", base + "release: {command: [\"\", up]}\n", []string{"release.command[0]: must not be empty"}},
		{"NUL in an argument", base + "release: {command: [migrate, \"up\\u0000rm\"]}\n", []string{"release.command[1]: must have no NUL byte"}},
		{"huge argument", base + "release: {command: [migrate, " + strings.Repeat("a", MaxArgLen+1) + "]}\n", []string{"release.command[1]: must have no NUL byte and at most 4096 characters"}},
		{"too many arguments", base + "release: {command: [" + strings.TrimSuffix(strings.Repeat("a, ", MaxCommandArgs+1), ", ") + "]}\n", []string{"release.command: has 257 arguments; at most 256"}},
		{"timeout zero", base + "release: {command: [m], timeout: 0s}\n", []string{"release.timeout: (0s) must be between 1s and 2h0m0s"}},
		{"timeout too long", base + "release: {command: [m], timeout: 100h}\n", []string{"release.timeout: (100h0m0s) must be between 1s and 2h0m0s"}},
		{"timeout negative", base + "release: {command: [m], timeout: -1s}\n", []string{`release.timeout: "-1s" is negative`}},
		{"timeout a number", base + "release: {command: [m], timeout: 300}\n", []string{`release.timeout: must be a duration string such as "5s", not the number 300`}},
		{"env name", base + "release: {command: [m], env: {\"1BAD\": x, \"A;B\": z}}\n", []string{
			`release.env[1BAD]: "1BAD" is not a valid environment variable name`, `release.env["A;B"]: "A;B" is not a valid environment variable name`}},
		{"env value NUL", base + "release: {command: [m], env: {DB: \"hunter2\\u0000\"}}\n", []string{"release.env[DB]: value must not contain a NUL byte"}},
		{"env value not a string", base + "release: {command: [m], env: {DB: [hunter2]}}\n", []string{"release.env[DB]: must be a string, not a list"}},
		{"env secret form", base + "release: {command: [m], env: {DB: {secret: hunter2}}}\n", []string{"release.env[DB]: must be a string, not a mapping"}},
		{"unknown field", base + "release: {command: [m], shell: true}\n", []string{`release.shell: unknown field`}},
		{"not a mapping", base + "release: [m]\n", []string{"release: must be a mapping of fields, not a list"}},
	})
	_, err := Load([]byte(base + "release: {command: [m], env: {DB: \"hunter2\\u0000\", X: [hunter3]}}\n"))
	require.Error(t, err)
	require.NotContains(t, err.Error(), "hunter2")
	require.NotContains(t, err.Error(), "hunter3")
}

func TestReleaseLoads(t *testing.T) {
	t.Parallel()
	a, err := Load([]byte(base + "release: {command: [/app/migrate, up]}\n"))
	require.NoError(t, err)
	require.Equal(t, &Release{Command: []string{"/app/migrate", "up"}, Timeout: Duration(5 * time.Minute)}, a.Release, "timeout defaults to 5m")
	a, err = Load([]byte(base + "release: {command: [m], timeout: 30s, env: {MIGRATE: \"1\"}}\n"))
	require.NoError(t, err)
	require.Equal(t, 30*time.Second, a.Release.Timeout.Std())
	require.Equal(t, map[string]string{"MIGRATE": "1"}, a.Release.Env)
	back, err := Load(mustJSON(t, a))
	require.NoError(t, err)
	require.Equal(t, a.Release, back.Release, "a stored spec loads again")
	a, err = Load([]byte(base))
	require.NoError(t, err)
	require.Nil(t, a.Release, "absent: no release task")
}
