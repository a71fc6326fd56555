package appenv

import (
	"testing"

	"github.com/stretchr/testify/require"
)

func TestEnv(t *testing.T) {
	t.Parallel()
	environ := []string{
		"BERTH_APP_LOG_LEVEL=debug", "BERTH_APP_SENTRY_DSN=https://key@sentry", "BERTH_APP_PATH=/evil", "BERTH_APP_HOME=/root",
		"BERTH_APP_POSTGRES_PASSWORD=hunter2", "BERTH_APP_=empty", "BERTH_APP_FEATURE=on", "OTHER=x",
		"BERTH_SCHEDULER_DATABASE_URL=postgres://u:p@db/x", "BERTH_APP_BERTH_SCHEDULER_API_TOKEN_FILE=/t", "NOEQUALS",
	}
	p := Policy{Prefix: "BERTH_APP_", Block: []string{"POSTGRES_*"}}
	got := p.Env(map[string]string{"FEATURE": "spec-wins", "PORT": "8080"}, environ)
	require.Equal(t, map[string]string{
		"LOG_LEVEL":  "debug",
		"SENTRY_DSN": "https://key@sentry",
		"FEATURE":    "spec-wins",
		"PORT":       "8080",
	}, got)

	require.Equal(t, map[string]string{"A": "1"}, Policy{}.Env(map[string]string{"A": "1"}, environ), "no prefix: nothing passes")
}
