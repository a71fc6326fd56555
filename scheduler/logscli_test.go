package main

import (
	"testing"

	"github.com/stretchr/testify/require"
)

func TestLogsFlags(t *testing.T) {
	t.Parallel()
	db := []string{"check-config", "--database-url", "postgres://u:p@h/db"}
	code, _, errOut := cmd(t, append(db, "--log-max-size", "20m", "--log-max-files", "5")...)
	require.Equal(t, 0, code, errOut)
	for _, tt := range []struct {
		args []string
		want string
	}{
		{[]string{"--log-max-size", "10x"}, `--log-max-size: "10x" must be a size such as 10m or 1g, from 1m to 1g`},
		{[]string{"--log-max-size", "2g"}, `--log-max-size: "2g" must be a size such as 10m or 1g, from 1m to 1g`},
		{[]string{"--log-max-files", "0"}, `--log-max-files (0) must be from 1 to 20`},
		{[]string{"--log-max-total", "lots"}, `--log-max-total "lots": must be a size such as 1g, from 1m to 20g`},
		{[]string{"--log-max-total", "21g"}, `--log-max-total "21g": must be a size such as 1g, from 1m to 20g`},
		{[]string{"--log-max-size", "100m", "--log-max-files", "20", "--log-max-total", "1g"}, `--log-max-total 1g is less than the defaults allow (--log-max-size 100m x --log-max-files 20)`},
	} {
		code, _, errOut = cmd(t, append(db, tt.args...)...)
		require.Equal(t, 1, code, "%v", tt.args)
		require.Contains(t, errOut, tt.want, "%v", tt.args)
	}

	// Bad logs flags fail before any request (no scheduler listens here).
	code, _, errOut = cmd(t, "logs", "web", "--tail=-1", "--since", "yesterday", "--server", "http://127.0.0.1:1")
	require.Equal(t, 2, code, errOut)
	require.Contains(t, errOut, `--tail: "-1" must be a whole number of lines from 0 to 100000, or all`)
	require.Contains(t, errOut, `--since: "yesterday" must be a Go duration back from now`)
	code, _, errOut = cmd(t, "logs", "web", "--server", "http://127.0.0.1:1")
	require.Equal(t, 1, code)
	require.Contains(t, errOut, "cannot reach the scheduler")
}
