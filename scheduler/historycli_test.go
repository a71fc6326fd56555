package main

import (
	"context"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
	"go.uber.org/zap/zaptest"

	"github.com/berthhq/berth/internal/testrig"
	"github.com/berthhq/berth/scheduler/internal/api"
	"github.com/berthhq/berth/scheduler/internal/store"
)

// apiOnly serves an open API over a fresh database, without a leader.
func apiOnly(t *testing.T) (string, *store.Store) {
	t.Helper()
	st, err := store.Open(context.Background(), testrig.Postgres(t))
	require.NoError(t, err)
	t.Cleanup(st.Close)
	_, err = st.Migrate(context.Background())
	require.NoError(t, err)
	srv := httptest.NewServer(api.New(api.Deps{Apps: st, Changes: st, Events: st, Decisions: st, DB: st, Claims: st, Hosts: st, History: st, Tokens: st},
		api.Options{Open: true}, zaptest.NewLogger(t)))
	t.Cleanup(srv.Close)
	return srv.URL, st
}

// TestHistoryAndDryRunCommands: history lists what each generation
// changed and shows one generation's spec and diff; apply --dry-run shows
// the plan and changes nothing.
func TestHistoryAndDryRunCommands(t *testing.T) {
	t.Parallel()
	url, st := apiOnly(t)
	const v1 = "name: web\nimage: web:1\nport: 8080\nreplicas: 3\n"
	v2 := strings.Replace(v1, "web:1", "web:2", 1)
	for _, s := range []string{v1, v2} {
		code, _, errOut := cmd(t, "apply", "-f", writeSpec(t, s), "--server", url)
		require.Equal(t, 0, code, errOut)
	}
	code, _, errOut := cmd(t, "scale", "web", "5", "--server", url)
	require.Equal(t, 0, code, errOut)

	code, out, errOut := cmd(t, "history", "web", "--server", url)
	require.Equal(t, 0, code, errOut)
	require.Regexp(t, `(?m)^GENERATION\s+IMAGE\s+BY\s+AGE\s+CHANGE$`, out)
	require.Regexp(t, `(?m)^3\s+web:2\s+anonymous\s+\S+\s+replicas 3→5$`, out)
	require.Regexp(t, `(?m)^2\s+web:2\s+anonymous\s+\S+\s+image web:1→web:2$`, out)
	require.Regexp(t, `(?m)^1\s+web:1\s+anonymous\s+\S+\s+created$`, out)

	code, out, errOut = cmd(t, "history", "web", "2", "--server", url)
	require.Equal(t, 0, code, errOut)
	require.Contains(t, out, "web generation 2, by anonymous ")
	require.Contains(t, out, ": image web:1→web:2\n\n")
	require.Contains(t, out, "\nimage: web:2\n")
	require.Contains(t, out, "diff against generation 1:\n--- generation 1\n+++ generation 2\n")
	require.Contains(t, out, "-image: web:1\n+image: web:2\n")
	code, out, errOut = cmd(t, "history", "web", "1", "--server", url)
	require.Equal(t, 0, code, errOut)
	require.Contains(t, out, "(no earlier generation is kept: no diff)")
	code, _, errOut = cmd(t, "history", "web", "9", "--server", url)
	require.Equal(t, 1, code)
	require.Contains(t, errOut, "generation 9 of web is not kept (the newest is 3)")
	for _, bad := range []string{"0", "two"} {
		code, _, errOut = cmd(t, "history", "web", bad, "--server", url)
		require.Equal(t, 2, code, "a generation from 1")
		require.Contains(t, errOut, `generation "`+bad+`": must be a generation of the app (a whole number from 1)`)
	}

	// A dry run: the plan, and nothing changes.
	code, out, errOut = cmd(t, "apply", "--dry-run", "-f", writeSpec(t, strings.Replace(v2, "web:2", "web:3", 1)), "--server", url)
	require.Equal(t, 0, code, errOut)
	require.Contains(t, out, "web: plan of ")
	require.Contains(t, out, "(dry run, nothing changed): generation 3 → 4: image web:2→web:3, replicas 5→3\n")
	require.Contains(t, out, "-image: web:2\n+image: web:3\n")
	require.Contains(t, out, "would happen:\n  - the containers change, but no instance runs: the new spec's instances start\n  - scale 5→3\n")
	code, out, errOut = cmd(t, "apply", "--dry-run", "-o", "json", "-f", writeSpec(t, strings.Replace(v1, "replicas: 3", "replicas: 5", 1)), "--server", url)
	require.Equal(t, 0, code, errOut)
	require.Contains(t, out, `"kind": "replace"`)
	api := strings.Replace(v1, "name: web", "name: api", 1)
	code, _, errOut = cmd(t, "apply", "--dry-run", "-f", writeSpec(t, api), "--server", url)
	require.Equal(t, 2, code, "a conflict, as apply reports it")
	require.Contains(t, errOut, "routing.hosts: the default server (apps without routing.hosts) belongs to app web")
	code, out, errOut = cmd(t, "apply", "--dry-run", "-f", writeSpec(t, api+"routing: {hosts: [api.test]}\n"), "--server", url)
	require.Equal(t, 0, code, errOut)
	require.Contains(t, out, "api: plan of ")
	require.Contains(t, out, "a new app")
	app, err := st.Get(context.Background(), "web")
	require.NoError(t, err)
	require.EqualValues(t, 3, app.Generation, "a dry run changes nothing")
	_, err = st.Get(context.Background(), "api")
	require.ErrorIs(t, err, store.ErrNotFound)

	code, _, errOut = cmd(t, "apply", "--dry-run", "--wait", "-f", writeSpec(t, v1), "--server", url)
	require.Equal(t, 2, code)
	require.Contains(t, errOut, "--dry-run and --wait")
	code, _, errOut = cmd(t, "apply", "--dry-run", "-f", writeSpec(t, strings.Replace(v1, "port: 8080", "port: 0", 1)), "--server", url)
	require.Equal(t, 2, code)
	require.Contains(t, errOut, "port")
}
