package main

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.uber.org/zap/zaptest"

	"github.com/berthhq/berth/internal/testrig"
	"github.com/berthhq/berth/scheduler/internal/api"
	"github.com/berthhq/berth/scheduler/internal/auth"
	"github.com/berthhq/berth/scheduler/internal/server"
	"github.com/berthhq/berth/scheduler/internal/store"
)

func writeFile(t *testing.T, name, content string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), name)
	require.NoError(t, os.WriteFile(p, []byte(content), 0o600))
	return p
}

// TestCheckConfigAPI: the token file is read once and fails closed, and
// an API off loopback needs TLS or the flag that accepts the risk.
func TestCheckConfigAPI(t *testing.T) {
	t.Parallel()
	token := writeFile(t, "token", "s3cret-of-the-file\n")
	empty := writeFile(t, "empty", " \n")
	twoLines := writeFile(t, "two", "a\nb\n")
	chain, key, _ := testrig.Certificate(t, 1, time.Now().Add(time.Hour), "localhost")
	cert, keyFile := writeFile(t, "api.crt", chain), writeFile(t, "api.key", key)
	_, otherKey, _ := testrig.Certificate(t, 2, time.Now().Add(time.Hour), "localhost")
	wrongKey := writeFile(t, "other.key", otherKey)
	db := []string{"check-config", "--database-url", "postgres://u:p@h/db"}
	tests := []struct {
		name string
		args []string
		want []string // empty: valid
	}{
		{"loopback, no token: open for development", nil, nil},
		{"empty token file", []string{"--api-token-file", empty}, []string{"--api-token-file: " + empty + " is empty"}},
		{"missing token file", []string{"--api-token-file", "/nonexistent/token"}, []string{"--api-token-file: open /nonexistent/token"}},
		{"token file is a directory", []string{"--api-token-file", t.TempDir()}, []string{"--api-token-file: read "}},
		{"two tokens in the file", []string{"--api-token-file", twoLines}, []string{"holds more than one line"}},
		{"off loopback without a token or TLS", []string{"--api-listen", "0.0.0.0:7070"},
			[]string{"is not loopback: give --api-token-file", "off loopback without TLS", "--allow-unencrypted-api"}},
		{"off loopback without TLS", []string{"--api-listen", "10.0.0.5:7070", "--api-token-file", token},
			[]string{"--api-listen 10.0.0.5:7070 is off loopback without TLS: every bearer token and spec would cross the network in clear"}},
		{"off loopback, risk accepted", []string{"--api-listen", "10.0.0.5:7070", "--api-token-file", token, "--allow-unencrypted-api"}, nil},
		{"off loopback with TLS", []string{"--api-listen", ":7070", "--api-token-file", token, "--api-tls-cert", cert, "--api-tls-key", keyFile}, nil},
		{"a certificate without its key", []string{"--api-tls-cert", cert}, []string{"--api-tls-cert and --api-tls-key: give both"}},
		{"a key that is not the certificate's", []string{"--api-tls-cert", cert, "--api-tls-key", wrongKey}, []string{"--api-tls-cert " + cert + " and --api-tls-key " + wrongKey}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			code, _, errOut := cmd(t, append(append([]string{}, db...), tt.args...)...)
			if len(tt.want) == 0 {
				require.Equal(t, 0, code, errOut)
				return
			}
			require.Equal(t, 1, code)
			for _, w := range tt.want {
				require.Contains(t, errOut, w)
			}
		})
	}
	// run itself refuses to start (exit 2) and names the flag.
	code, _, errOut := cmd(t, "run", "--database-url", "postgres://u:p@127.0.0.1:1/db", "--api-token-file", empty)
	require.Equal(t, 2, code)
	require.Contains(t, errOut, "--api-token-file: "+empty+" is empty")
}

// TestTokenReadOnce: the token is read by the check and served from
// memory. A token file that cannot be read when the API starts (here:
// gone) once left the API open off loopback; now the API stays closed.
// serve refuses a configuration whose token was not read.
func TestTokenReadOnce(t *testing.T) {
	t.Parallel()
	db, natsURL := testrig.Postgres(t), testrig.NATS(t)
	code, _, _ := cmd(t, "migrate", "--database-url", db)
	require.Equal(t, 0, code)
	token := writeFile(t, "token", "s3cret-of-the-file\n")
	api := fmt.Sprintf("127.0.0.1:%d", testrig.FreePort(t))
	args := []string{"run", "--database-url", db, "--nats-url", natsURL, "--api-listen", api, "--api-token-file", token, "--id", "once", "--resync", "1h"}
	c, _, _, done := parse(args, nil, nil)
	require.False(t, done)
	require.NoError(t, c.Run.check())
	require.NoError(t, os.Remove(token))
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() { errc <- serve(ctx, &c.Run, zaptest.NewLogger(t)) }()
	t.Cleanup(func() {
		cancel()
		require.NoError(t, <-errc)
	})
	testrig.WaitHTTP(t, "http://"+api+"/healthz", 10*time.Second)
	code, _, errOut := cmd(t, "status", "--server", "http://"+api)
	require.Equal(t, 1, code)
	require.Contains(t, errOut, "this API needs a bearer token")
	code, _, errOut = cmd(t, "status", "--server", "http://"+api, "--token-file", writeFile(t, "client", "s3cret-of-the-file"))
	require.Equal(t, 0, code, errOut)

	unchecked, _, _, _ := parse(args, nil, nil)
	err := serve(context.Background(), &unchecked.Run, zaptest.NewLogger(t))
	require.ErrorContains(t, err, "--api-token-file or --api-tls-cert was not read")
}

// TestAPITLS: an API with --api-tls-cert answers over HTTPS the clients
// that trust its CA (--server-ca), and no one in clear.
func TestAPITLS(t *testing.T) {
	t.Parallel()
	chain, key, _ := testrig.Certificate(t, 1, time.Now().Add(time.Hour), "localhost")
	ca, keyFile := writeFile(t, "api.crt", chain), writeFile(t, "api.key", key)
	port := testrig.FreePort(t)
	c, _, _, done := parse([]string{"run", "--database-url", "postgres://u:p@127.0.0.1:1/db", "--api-listen", fmt.Sprintf("127.0.0.1:%d", port),
		"--api-tls-cert", ca, "--api-tls-key", keyFile}, nil, nil)
	require.False(t, done)
	require.NoError(t, c.Run.check())
	cfg, err := c.Run.config()
	require.NoError(t, err)
	ln, err := server.APIListener(cfg.API) // what serve listens on
	require.NoError(t, err)
	st, err := store.Open(context.Background(), testrig.Postgres(t))
	require.NoError(t, err)
	t.Cleanup(st.Close)
	_, err = st.Migrate(context.Background())
	require.NoError(t, err)
	keys := auth.NewKeyring(st, auth.Config{}, zaptest.NewLogger(t))
	srv := &http.Server{Handler: api.New(api.Deps{Apps: st, Changes: st, Events: st, Decisions: st, DB: st, Claims: st, Hosts: st, History: st, Tokens: st},
		api.Options{Keyring: keys, Open: true}, zaptest.NewLogger(t)), ReadHeaderTimeout: 5 * time.Second}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()
	t.Cleanup(func() {
		require.NoError(t, srv.Close())
		require.ErrorIs(t, <-served, http.ErrServerClosed)
	})

	https := fmt.Sprintf("https://localhost:%d", port)
	code, out, errOut := cmd(t, "status", "--server", https, "--server-ca", ca)
	require.Equal(t, 0, code, errOut)
	require.Contains(t, out, "APP")
	code, _, errOut = cmd(t, "status", "--server", https)
	require.Equal(t, 1, code)
	require.Contains(t, errOut, "certificate signed by unknown authority")
	code, _, errOut = cmd(t, "status", "--server", fmt.Sprintf("http://localhost:%d", port))
	require.NotEqual(t, 0, code, "no answer in clear")
	require.Contains(t, errOut, "400 Bad Request")
	code, _, errOut = cmd(t, "status", "--server", fmt.Sprintf("http://localhost:%d", port), "--server-ca", ca)
	require.Equal(t, 1, code)
	require.Contains(t, errOut, "--server-ca is for an https:// --server")
	code, _, errOut = cmd(t, "status", "--server", "ftp://localhost")
	require.Equal(t, 1, code)
	require.Contains(t, errOut, "must be an http:// or https:// URL")
	code, _, errOut = cmd(t, "status", "--server", https, "--server-ca", keyFile)
	require.Equal(t, 1, code)
	require.Contains(t, errOut, "holds no PEM certificate")
}

// TestTokensCommands: the --api-token-file token makes scoped tokens;
// each does what its scope allows, is refused the rest with the scope
// named, and its name is on what it changed; a revoked one is refused.
func TestTokensCommands(t *testing.T) {
	t.Parallel()
	db, natsURL := testrig.Postgres(t), testrig.NATS(t)
	code, _, _ := cmd(t, "migrate", "--database-url", db)
	require.Equal(t, 0, code)
	boot := writeFile(t, "token", "s3cret-of-the-file\n")
	r := startReplica(t, db, natsURL, "sched-t", "--api-token-file", boot)
	as := func(tokenFile string, args ...string) (int, string, string) {
		return cmd(t, append(args, "--server", r.api, "--token-file", tokenFile)...)
	}
	create := func(name, scope string) string {
		code, out, errOut := as(boot, "tokens", "create", "--name", name, "--scope", scope)
		require.Equal(t, 0, code, errOut)
		require.Regexp(t, `^berth_[A-Za-z0-9_-]{43}\n$`, out, "the token alone on standard output")
		require.Contains(t, errOut, "shown this once")
		return writeFile(t, name, out)
	}
	ci, viewer := create("ci", "deploy"), create("viewer", "read")

	code, _, errOut := cmd(t, "status", "--server", r.api)
	require.Equal(t, 1, code)
	require.Contains(t, errOut, "this API needs a bearer token")

	spec := writeFile(t, "web.yaml", "name: web\nimage: web:1\nport: 8080\nreplicas: 1\n")
	code, _, errOut = as(viewer, "apply", "-f", spec)
	require.Equal(t, 1, code)
	require.Contains(t, errOut, "this needs the deploy scope; token viewer has read")
	code, out, errOut := as(ci, "apply", "-f", spec)
	require.Equal(t, 0, code, errOut)
	require.Equal(t, "web: created, generation 1\n", out)
	code, _, errOut = as(ci, "hosts", "add", "h1", "--docker-url", "unix:///run/d.sock", "--address", "10.0.0.9")
	require.Equal(t, 1, code)
	require.Contains(t, errOut, "this needs the admin scope; token ci has deploy")
	code, _, errOut = as(ci, "tokens", "ls")
	require.Equal(t, 1, code)
	require.Contains(t, errOut, "this needs the admin scope; token ci has deploy")

	code, out, errOut = as(viewer, "status")
	require.Equal(t, 0, code, errOut)
	require.Regexp(t, `(?m)^web\s+1\s+0/1\s.*\sactive\s+\S+ ago\s+ci$`, out)
	code, out, _ = as(viewer, "history", "web")
	require.Equal(t, 0, code)
	require.Regexp(t, `(?m)^1\s+web:1\s+-\s+ci\s`, out, "web:1 is in no registry nor engine here: not pinned")
	require.Eventually(t, func() bool { // the leader records app_updated once it has published
		_, out, _ := as(viewer, "events", "--app", "web")
		return strings.Contains(out, "app_updated") && strings.Contains(out, " ci ")
	}, 10*time.Second, 50*time.Millisecond)

	code, out, _ = as(boot, "tokens", "ls")
	require.Equal(t, 0, code)
	require.Regexp(t, `(?m)^ci\s+deploy\s+\*\s+\S+ ago\s+bootstrap\s+(never|\S+ ago)\s+-$`, out)
	require.Regexp(t, `(?m)^viewer\s+read\s+`, out)
	for _, f := range []string{ci, viewer} {
		secret, _ := os.ReadFile(f)
		require.NotContains(t, out, strings.TrimSpace(string(secret)))
	}

	code, out, errOut = as(boot, "tokens", "revoke", "ci")
	require.Equal(t, 0, code, errOut)
	require.Equal(t, "ci: revoked; every scheduler replica refuses it\n", out)
	code, _, errOut = as(ci, "status")
	require.Equal(t, 1, code)
	require.Contains(t, errOut, "unknown or revoked bearer token")
	code, _, errOut = as(boot, "tokens", "revoke", "bootstrap")
	require.Equal(t, 2, code)
	require.Contains(t, errOut, "replace the file on every replica")
}
