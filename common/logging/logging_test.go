package logging

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
	"go.uber.org/zap"
)

func TestValidate(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		opts    Options
		wantErr string
	}{
		{name: "defaults", opts: Options{}},
		{name: "debug console", opts: Options{Level: "debug", Format: "console"}},
		{name: "upper case", opts: Options{Level: "WARN", Format: "JSON"}},
		{name: "bad level", opts: Options{Level: "loud"}, wantErr: `log level "loud": must be one of debug, info, warn, error`},
		{name: "bad format", opts: Options{Format: "xml"}, wantErr: `log format "xml": must be json or console`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			err := tt.opts.Validate()
			if tt.wantErr == "" {
				require.NoError(t, err)
				return
			}
			require.EqualError(t, err, tt.wantErr)
			_, err = New(tt.opts)
			require.Error(t, err)
		})
	}
}

func TestJSONLines(t *testing.T) {
	t.Parallel()
	var buf bytes.Buffer
	logger, err := New(Options{Level: "info", Output: &buf})
	require.NoError(t, err)
	logger.Debug("hidden")
	logger.Named("reconcile").Info("instance started", zap.String(KeyApp, "web"), zap.Uint64(KeyTerm, 7))
	require.NoError(t, logger.Sync())

	lines := strings.Split(strings.TrimSpace(buf.String()), "\n")
	require.Len(t, lines, 1, "debug must be filtered at info level")
	var entry map[string]any
	require.NoError(t, json.Unmarshal([]byte(lines[0]), &entry))
	require.Equal(t, "info", entry["level"])
	require.Equal(t, "reconcile", entry["logger"])
	require.Equal(t, "instance started", entry["msg"])
	require.Equal(t, "web", entry[KeyApp])
	require.EqualValues(t, 7, entry[KeyTerm])
	require.Contains(t, entry, "ts")
	require.Contains(t, entry, "caller")
}

func TestSamplingBoundsFloods(t *testing.T) {
	t.Parallel()
	var buf bytes.Buffer
	logger, err := New(Options{Output: &buf})
	require.NoError(t, err)
	for range 1000 {
		logger.Warn("same failure again")
	}
	n := strings.Count(buf.String(), "\n")
	require.Less(t, n, 200, "1000 identical lines in one second must be sampled")
	require.GreaterOrEqual(t, n, 100)
}

func TestConsoleFormat(t *testing.T) {
	t.Parallel()
	var buf bytes.Buffer
	logger, err := New(Options{Format: FormatConsole, Output: &buf})
	require.NoError(t, err)
	logger.Info("ready", zap.String(KeyNode, "n1"))
	require.Contains(t, buf.String(), "INFO")
	require.Contains(t, buf.String(), "ready")
	require.Contains(t, buf.String(), `"node": "n1"`)
}
