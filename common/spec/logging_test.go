package spec

import (
	"encoding/json"
	"testing"

	"github.com/stretchr/testify/require"
)

func TestLoggingProblems(t *testing.T) {
	t.Parallel()
	runProblems(t, []problemCase{
		{"not a size", base + "logging: {max_size: 10x}\n", []string{`logging.max_size: "10x" must be a size such as 10m or 1g, from 1m to 1g`}},
		{"not a scalar", base + "logging: {max_size: [1]}\n", []string{`logging.max_size: must be a size such as 10m or 1g, from 1m to 1g, not a list`}},
		{"too small", base + "logging: {max_size: 512k}\n", []string{`logging.max_size: "512k" must be a size such as 10m or 1g, from 1m to 1g`}},
		{"too large", base + "logging: {max_size: 2g}\n", []string{`logging.max_size: "2g" must be a size such as 10m or 1g, from 1m to 1g`}},
		{"files out of range", base + "logging: {max_files: 21}\n", []string{`logging.max_files: (21) must be from 1 to 20`}},
		{"negative files", base + "logging: {max_files: -1}\n", []string{`logging.max_files: (-1) must be from 1 to 20`}},
		{"unknown field", base + "logging: {driver: syslog}\n", []string{`logging.driver: unknown field`}},
	})
}

func TestLoggingLoads(t *testing.T) {
	t.Parallel()
	for _, tt := range []struct {
		name, src string
		want      *Logging
	}{
		{"absent: the scheduler's defaults", "", nil},
		{"docker units", "logging: {max_size: 20m, max_files: 5}\n", &Logging{MaxSize: 20 << 20, MaxFiles: 5}},
		{"binary units and bytes", "logging: {max_size: 1Gi}\n", &Logging{MaxSize: 1 << 30}},
		{"plain bytes", "logging: {max_size: 1048576, max_files: 1}\n", &Logging{MaxSize: 1 << 20, MaxFiles: 1}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			a, err := Load([]byte(base + tt.src))
			require.NoError(t, err)
			require.Equal(t, tt.want, a.Logging)
		})
	}
	a, err := Load([]byte(base + "logging: {max_size: 20m, max_files: 5}\n"))
	require.NoError(t, err)
	b, err := json.Marshal(a.Logging)
	require.NoError(t, err)
	require.JSONEq(t, `{"max_size":"20m","max_files":5}`, string(b), "written as Docker writes it")
	back, err := Load(mustJSON(t, a))
	require.NoError(t, err)
	require.Equal(t, a.Logging, back.Logging, "a stored spec loads again")
	require.True(t, (*Logging)(nil).IsZero())
	require.True(t, (&Logging{}).IsZero())
	require.False(t, a.Logging.IsZero())
}

func mustJSON(t *testing.T, v any) []byte {
	t.Helper()
	b, err := json.Marshal(v)
	require.NoError(t, err)
	return b
}
