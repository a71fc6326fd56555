package api

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.uber.org/zap/zaptest"

	"github.com/berthhq/berth/common/msg"
	"github.com/berthhq/berth/scheduler/internal/auth"
	"github.com/berthhq/berth/scheduler/internal/store"
)

// routeScopes is the scope every route needs. A route added to the API
// without an entry here fails TestEveryRouteIsScoped: decide its scope.
var routeScopes = map[string]auth.Scope{
	"PUT /v1/apps/{name}":                      auth.Deploy,
	"GET /v1/apps":                             auth.Read,
	"GET /v1/apps/{name}":                      auth.Read,
	"DELETE /v1/apps/{name}":                   auth.Deploy,
	"POST /v1/apps/{name}/scale":               auth.Deploy,
	"POST /v1/apps/{name}/rollback":            auth.Deploy,
	"POST /v1/apps/{name}/restart":             auth.Deploy,
	"POST /v1/apps/{name}/plan":                auth.Deploy,
	"POST /v1/apps/{name}/redeploy":            auth.Deploy,
	"GET /v1/apps/{name}/instances":            auth.Read,
	"GET /v1/apps/{name}/instances/{id}":       auth.Read,
	"GET /v1/apps/{name}/metrics":              auth.Read,
	"GET /v1/apps/{name}/wait":                 auth.Read,
	"GET /v1/apps/{name}/history":              auth.Read,
	"GET /v1/apps/{name}/history/{generation}": auth.Read,
	"GET /v1/apps/{name}/logs":                 auth.Read,
	"GET /v1/events":                           auth.Read,
	"GET /v1/edge":                             auth.Read,
	"GET /v1/certificates":                     auth.Read,
	"GET /v1/hosts":                            auth.Read,
	"GET /v1/hosts/{name}":                     auth.Read,
	"PUT /v1/hosts/{name}":                     auth.Admin,
	"DELETE /v1/hosts/{name}":                  auth.Admin,
	"POST /v1/hosts/{name}/drain":              auth.Admin,
	"POST /v1/hosts/{name}/undrain":            auth.Admin,
	"POST /v1/tokens":                          auth.Admin,
	"GET /v1/tokens":                           auth.Admin,
	"DELETE /v1/tokens/{name}":                 auth.Admin,
	"GET /healthz":                             0, // public
	"GET /readyz":                              0,
	"GET /metrics":                             0,
}

// makeToken creates a token of scope through the store, as the tokens
// endpoint does, and returns its secret.
func makeToken(t *testing.T, st *store.Store, name string, scope auth.Scope) string {
	t.Helper()
	secret, hash, err := auth.New(nil)
	require.NoError(t, err)
	_, err = st.CreateToken(context.Background(), store.Token{Name: name, Scope: scope.String(), Hash: hash})
	require.NoError(t, err)
	return secret
}

// TestEveryRouteIsScoped: every route of the mux needs the scope the
// table says, and a token below it is refused with a 403 that names both
// scopes, while a token at or above it gets through.
func TestEveryRouteIsScoped(t *testing.T) {
	t.Parallel()
	got := map[string]auth.Scope{}
	for _, r := range Routes() {
		require.True(t, r.Public || r.Scope.Valid(), "route %s has no scope", r.Pattern)
		require.NotContains(t, got, r.Pattern, "route %s registered twice", r.Pattern)
		got[r.Pattern] = r.Scope
		if strings.HasPrefix(strings.SplitN(r.Pattern, " ", 2)[1], "/v1/") {
			require.False(t, r.Public, "route %s of /v1/ must need a token", r.Pattern)
		}
		// Routes that change an app, and the one that reads what its
		// containers wrote, match a token limited to apps (handleApp).
		limited := strings.Contains(r.Pattern, "/v1/apps/{name}") && (!strings.HasPrefix(r.Pattern, "GET ") || strings.HasSuffix(r.Pattern, "/logs"))
		require.Equal(t, limited, r.App, "route %s changes an app or reads its logs: a token limited to apps must match it (handleApp)", r.Pattern)
	}
	require.Equal(t, routeScopes, got, "a route was added, removed or rescoped: update routeScopes")

	c := newAPI(t, "")
	tokens := map[auth.Scope]string{}
	for _, s := range []auth.Scope{auth.Read, auth.Deploy, auth.Admin} {
		tokens[s] = makeToken(t, c.st, s.String()+"-token", s)
	}
	for _, r := range Routes() {
		if r.Public {
			continue
		}
		method, path, _ := strings.Cut(r.Pattern, " ")
		path = strings.ReplaceAll(path, "{name}", "nosuch")
		for s, secret := range tokens {
			t.Run(r.Pattern+" as "+s.String(), func(t *testing.T) {
				code, obj, raw := c.as(secret).do(method, path, "")
				if s.Covers(r.Scope) {
					require.NotContains(t, []int{http.StatusUnauthorized, http.StatusForbidden}, code, "%s", raw)
					return
				}
				require.Equal(t, http.StatusForbidden, code, "%s", raw)
				require.Equal(t, "this needs the "+r.Scope.String()+" scope; token "+s.String()+"-token has "+s.String(), obj["error"])
				require.Equal(t, r.Scope.String(), obj["needed_scope"])
				require.Equal(t, s.String(), obj["token_scope"])
			})
		}
		t.Run(r.Pattern+" without a valid token", func(t *testing.T) {
			for _, bad := range []string{auth.Prefix + strings.Repeat("A", 43), "s3cret"} {
				code, _, raw := c.as(bad).do(method, path, "")
				require.Equal(t, http.StatusUnauthorized, code, "%s", raw)
			}
		})
	}
}

// TestScopeRefusals: the confirmed gap, one bearer token able to do
// everything, closed: a read token cannot apply, a deploy token cannot
// register a host, and each refusal names the scope needed.
func TestScopeRefusals(t *testing.T) {
	t.Parallel()
	c := newAPI(t, "bootstrap-secret-of-the-file")
	ci := makeToken(t, c.st, "ci", auth.Read)
	deployer := makeToken(t, c.st, "deployer", auth.Deploy)
	host := `{"name":"h1","docker_url":"unix:///run/d.sock","address":"10.0.0.9"}`
	tests := []struct {
		name, token, method, path, body string
		code                            int
		err                             string
	}{
		{"read cannot apply", ci, "PUT", "/v1/apps/web", web, 403, "this needs the deploy scope; token ci has read"},
		{"read cannot scale", ci, "POST", "/v1/apps/web/scale", `{"replicas": 1}`, 403, "this needs the deploy scope; token ci has read"},
		{"read cannot delete", ci, "DELETE", "/v1/apps/web", "", 403, "this needs the deploy scope; token ci has read"},
		{"read reads", ci, "GET", "/v1/apps", "", 200, ""},
		{"deploy cannot add a host", deployer, "PUT", "/v1/hosts/h1", host, 403, "this needs the admin scope; token deployer has deploy"},
		{"deploy cannot make a token", deployer, "POST", "/v1/tokens", `{"name":"mine","scope":"admin"}`, 403, "this needs the admin scope; token deployer has deploy"},
		{"deploy cannot list tokens", deployer, "GET", "/v1/tokens", "", 403, "this needs the admin scope; token deployer has deploy"},
		{"deploy applies", deployer, "PUT", "/v1/apps/web", web, 200, ""},
		{"the file's token is admin", "bootstrap-secret-of-the-file", "PUT", "/v1/hosts/h1", host, 200, ""},
		{"no token", "", "GET", "/v1/apps", "", 401, "this API needs a bearer token"},
	}
	for _, tt := range tests { // in order: the apply comes before nothing that needs it
		code, obj, raw := c.as(tt.token).do(tt.method, tt.path, tt.body)
		require.Equal(t, tt.code, code, "%s: %s", tt.name, raw)
		if tt.err != "" {
			require.Contains(t, obj["error"], tt.err, tt.name)
		}
	}
	// Nothing refused was done: one app, by deployer; one host.
	apps, err := c.st.List(context.Background())
	require.NoError(t, err)
	require.Len(t, apps, 1)
	require.Equal(t, "deployer", apps[0].UpdatedBy)
	code, obj, _ := c.as(ci).do("GET", "/v1/apps/web", "")
	require.Equal(t, 200, code)
	require.Equal(t, "deployer", obj["updated_by"])
}

// TestOpenLoopbackAPI: without --api-token-file on loopback a request
// without a token acts as "anonymous"; one with a token is checked and
// scoped all the same.
func TestOpenLoopbackAPI(t *testing.T) {
	t.Parallel()
	c := newAPI(t, "")
	code, _, raw := c.do("PUT", "/v1/apps/web", web)
	require.Equal(t, 200, code, "%s", raw)
	app, err := c.st.Get(context.Background(), "web")
	require.NoError(t, err)
	require.Equal(t, store.ActorAnonymous, app.UpdatedBy)

	ro := makeToken(t, c.st, "ro", auth.Read)
	code, obj, _ := c.as(ro).do("POST", "/v1/apps/web/scale", `{"replicas": 1}`)
	require.Equal(t, 403, code)
	require.Equal(t, "this needs the deploy scope; token ro has read", obj["error"])
	code, _, _ = c.as("Bearer-less junk").do("GET", "/v1/apps", "")
	require.Equal(t, 401, code, "a wrong token is refused even on an open API")
}

// TestTokensLifecycle: create through the API (shown once, prefixed),
// list without secrets, revoke (this replica refuses it when the answer
// comes), and the names that are refused.
func TestTokensLifecycle(t *testing.T) {
	t.Parallel()
	c := newAPI(t, "bootstrap-secret-of-the-file")
	code, obj, raw := c.do("POST", "/v1/tokens", `{"name":"ci","scope":"deploy"}`)
	require.Equal(t, 201, code, "%s", raw)
	secret := obj["token"].(string)
	require.True(t, auth.WellFormed(secret), secret)
	require.Equal(t, "deploy", obj["scope"])
	require.Equal(t, store.ActorBootstrap, obj["created_by"])

	code, _, raw = c.as(secret).do("PUT", "/v1/apps/web", web)
	require.Equal(t, 200, code, "%s", raw)

	code, _, raw = c.do("GET", "/v1/tokens", "")
	require.Equal(t, 200, code)
	var list []TokenView
	require.NoError(t, json.Unmarshal(raw, &list))
	require.Len(t, list, 1)
	require.Equal(t, "ci", list[0].Name)
	require.NotContains(t, string(raw), secret)
	require.NotContains(t, string(raw), strings.TrimPrefix(secret, auth.Prefix))
	require.NotContains(t, string(raw), "hash")

	code, obj, raw = c.do("POST", "/v1/tokens", `{"name":"ci","scope":"read"}`)
	require.Equal(t, 409, code, "%s", raw)
	require.Contains(t, obj["error"], "exists or existed")

	code, obj, raw = c.do("DELETE", "/v1/tokens/ci", "")
	require.Equal(t, 200, code, "%s", raw)
	require.NotNil(t, obj["revoked_at"])
	code, _, _ = c.as(secret).do("GET", "/v1/apps", "")
	require.Equal(t, 401, code, "revoked: refused at once on this replica")
	code, obj, _ = c.do("POST", "/v1/tokens", `{"name":"ci","scope":"read"}`)
	require.Equal(t, 409, code, "a revoked token's name is not given again")
	require.Contains(t, obj["error"], "exists or existed")

	bad := []struct{ body, field string }{
		{`{"name":"CI","scope":"read"}`, "name"},
		{`{"name":"scheduler","scope":"read"}`, "name"},
		{`{"name":"autoscaler","scope":"read"}`, "name"},
		{`{"name":"bootstrap","scope":"read"}`, "name"},
		{`{"name":"anonymous","scope":"read"}`, "name"},
		{`{"name":"` + strings.Repeat("a", 64) + `","scope":"read"}`, "name"},
		{`{"name":"ok","scope":"root"}`, "scope"},
		{`{"name":"ok","scope":"read","extra":1}`, ""},
	}
	for _, b := range bad {
		code, obj, raw := c.do("POST", "/v1/tokens", b.body)
		require.Equal(t, 400, code, "%s: %s", b.body, raw)
		require.Equal(t, b.field, obj["fields"].([]any)[0].(map[string]any)["path"], b.body)
	}
	code, _, raw = c.do("DELETE", "/v1/tokens/bootstrap", "")
	require.Equal(t, 400, code, "%s", raw)
	require.Contains(t, string(raw), "--api-token-file")
	code, _, _ = c.do("DELETE", "/v1/tokens/nosuch", "")
	require.Equal(t, 404, code)
}

// TestRevokeReachesEveryReplica: two replicas on one Postgres. A token
// made on A works on B at once (B loads on the miss); revoked on A, it is
// refused by B as soon as B has the NOTIFY (its periodic reload is an
// hour here, so only the notification can do it).
func TestRevokeReachesEveryReplica(t *testing.T) {
	t.Parallel()
	st := openStore(t)
	a := serveAPI(t, st, Options{}, auth.Config{Bootstrap: "file-token-a"}, "file-token-a")
	loaded := make(chan time.Time, 100)
	b := serveAPI(t, st, Options{}, auth.Config{Refresh: time.Hour, Loaded: func(start time.Time) { loaded <- start }}, "")
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	go func() { _ = b.keys.Run(ctx) }()
	ready := make(chan struct{})
	go func() {
		_ = st.ListenReady(ctx, []string{store.TokensChannel}, func() { close(ready) }, func(string, string) { b.keys.Changed() })
	}()
	<-ready

	code, obj, raw := a.do("POST", "/v1/tokens", `{"name":"ci","scope":"read"}`)
	require.Equal(t, 201, code, "%s", raw)
	secret := obj["token"].(string)
	code, _, raw = b.as(secret).do("GET", "/v1/apps", "")
	require.Equal(t, 200, code, "a token made on A a moment ago works on B: %s", raw)

	// B may reload on the NOTIFY before the DELETE's answer is read
	// here: after each load of B that started since the DELETE was sent,
	// see whether B refuses the token (a known token costs B no load).
	sent := time.Now()
	code, _, _ = a.do("DELETE", "/v1/tokens/ci", "")
	require.Equal(t, 200, code)
	timeout := time.After(10 * time.Second)
	for {
		select {
		case start := <-loaded:
			if !start.After(sent) {
				continue
			}
			if code, _, _ := b.as(secret).do("GET", "/v1/apps", ""); code == http.StatusUnauthorized {
				return // B refuses the revoked token
			}
		case <-timeout:
			t.Fatal("B still takes the revoked token 10s after the revoke's NOTIFY")
		}
	}
}

// TestRefreshBoundsARevoke: a replica that missed the NOTIFY (none
// listens here) refuses a revoked token after its next periodic reload.
func TestRefreshBoundsARevoke(t *testing.T) {
	t.Parallel()
	st := openStore(t)
	loaded := make(chan time.Time, 100)
	c := serveAPI(t, st, Options{}, auth.Config{Refresh: 20 * time.Millisecond, Loaded: func(start time.Time) {
		select {
		case loaded <- start:
		default:
		}
	}}, "")
	secret := makeToken(t, st, "ci", auth.Read)
	code, _, _ := c.as(secret).do("GET", "/v1/apps", "")
	require.Equal(t, 200, code)
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	go func() { _ = c.keys.Run(ctx) }()
	_, err := st.RevokeToken(context.Background(), "ci")
	require.NoError(t, err)
	waitLoad(t, loaded, time.Now())
	code, _, _ = c.as(secret).do("GET", "/v1/apps", "")
	require.Equal(t, 401, code)
}

// TestActorsOfChanges: apply, scale, rollback and delete record the
// token's name on the app, in its history, and the leader's events of the
// change carry it.
func TestActorsOfChanges(t *testing.T) {
	t.Parallel()
	c := newAPI(t, "file")
	alice := makeToken(t, c.st, "alice", auth.Deploy)
	bob := makeToken(t, c.st, "bob", auth.Deploy)
	code, _, _ := c.as(alice).do("PUT", "/v1/apps/web", web)
	require.Equal(t, 200, code)
	code, _, _ = c.as(bob).do("POST", "/v1/apps/web/scale", `{"replicas": 5}`)
	require.Equal(t, 200, code)
	code, _, _ = c.do("POST", "/v1/apps/web/rollback", "")
	require.Equal(t, 200, code)
	code, _, raw := c.as(alice).do("GET", "/v1/apps/web/history", "")
	require.Equal(t, 200, code, "%s", raw)
	var revs []RevisionView
	require.NoError(t, json.Unmarshal(raw, &revs))
	require.Len(t, revs, 3)
	require.Equal(t, []string{store.ActorBootstrap, "bob", "alice"}, []string{revs[0].Actor, revs[1].Actor, revs[2].Actor})
	require.Equal(t, int64(3), revs[0].Generation)

	code, _, _ = c.as(bob).do("DELETE", "/v1/apps/web", "")
	require.Equal(t, 202, code)
	by, err := c.st.UpdatedBy(context.Background(), "web")
	require.NoError(t, err)
	require.Equal(t, "bob", by, "who deleted it")
	code, _, _ = c.do("GET", "/v1/apps/web/history", "")
	require.Equal(t, 404, code)
	code, obj, _ := c.do("GET", "/v1/apps/web/history?limit=0", "")
	require.Equal(t, 400, code)
	require.Equal(t, "limit", obj["fields"].([]any)[0].(map[string]any)["path"])

	// Events carry their actor; the scheduler's own default to it.
	l, _, err := c.st.Acquire(context.Background(), "scheduler", "me", time.Minute)
	require.NoError(t, err)
	require.NoError(t, c.st.LeaderTx(context.Background(), l, func(ctx context.Context, tx *store.Tx) error {
		if _, err := tx.AddEvent(ctx, store.Event{App: "web", Kind: msg.EventAppUpdated, Message: "m", Actor: "alice"}); err != nil {
			return err
		}
		_, err := tx.AddEvent(ctx, store.Event{App: "web", Kind: msg.EventInstanceReplaced, Message: "m"})
		return err
	}))
	code, _, raw = c.do("GET", "/v1/events?app=web", "")
	require.Equal(t, 200, code)
	var evs []EventView
	require.NoError(t, json.Unmarshal(raw, &evs))
	require.Len(t, evs, 2)
	require.Equal(t, "alice", evs[0].Actor)
	require.Equal(t, store.ActorScheduler, evs[1].Actor)
}

// TestPostgresDownForUnknownTokens: a token this replica has not loaded
// cannot be checked without Postgres: 503, not a silent 401 or a pass.
func TestPostgresDownForUnknownTokens(t *testing.T) {
	t.Parallel()
	st, err := store.Open(context.Background(), "postgres://berth:hunter2@127.0.0.1:1/berth?sslmode=disable&connect_timeout=1")
	require.NoError(t, err)
	t.Cleanup(st.Close)
	keys := auth.NewKeyring(st, auth.Config{Bootstrap: "file", MissInterval: time.Nanosecond}, zaptest.NewLogger(t))
	c := &client{t: t, token: auth.Prefix + strings.Repeat("A", 43)}
	srv := newServer(t, New(deps(st), Options{Keyring: keys}, zaptest.NewLogger(t)))
	c.url = srv
	code, obj, raw := c.do("GET", "/v1/apps", "")
	require.Equal(t, 503, code, "%s", raw)
	require.Equal(t, UnavailableMessage, obj["error"])
	code, _, _ = c.as("file").do("GET", "/v1/events", "")
	require.Equal(t, 503, code, "the file's token passes, and the store is down")
}

// waitLoad waits for a load of the keyring that started after after.
func waitLoad(t *testing.T, loaded <-chan time.Time, after time.Time) {
	t.Helper()
	timeout := time.After(10 * time.Second)
	for {
		select {
		case start := <-loaded:
			if start.After(after) {
				return
			}
		case <-timeout:
			t.Fatal("the keyring did not load within 10s")
		}
	}
}

func newServer(t *testing.T, h http.Handler) string {
	t.Helper()
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	return srv.URL
}

// TestAppLimitedToken: a deploy token limited to apps changes only those
// (two teams, one Berth: team a cannot apply, scale, roll back or delete
// team b's app), reads every app, and only a deploy token takes apps.
func TestAppLimitedToken(t *testing.T) {
	t.Parallel()
	c := newAPI(t, "bootstrap-secret-of-the-file")
	admin := c.as("bootstrap-secret-of-the-file")
	code, obj, raw := admin.do("POST", "/v1/tokens", `{"name":"team-a","scope":"deploy","apps":["shop","shop-*"]}`)
	require.Equal(t, http.StatusCreated, code, "%s", raw)
	require.Equal(t, []any{"shop", "shop-*"}, obj["apps"])
	teamA := c.as(obj["token"].(string))
	bank := strings.ReplaceAll(web, "name: web", "name: bank")
	code, _, raw = admin.do("PUT", "/v1/apps/bank", bank)
	require.Equal(t, 200, code, "%s", raw)

	const refused = "token team-a may change only the apps shop, shop-*, not bank"
	for _, tc := range []struct{ method, path, body string }{
		{"PUT", "/v1/apps/bank", strings.ReplaceAll(bank, "web:1", "evil:1")},
		{"POST", "/v1/apps/bank/scale", `{"replicas": 0}`},
		{"POST", "/v1/apps/bank/rollback", ""},
		{"DELETE", "/v1/apps/bank", ""},
	} {
		code, obj, raw := teamA.do(tc.method, tc.path, tc.body)
		require.Equal(t, http.StatusForbidden, code, "%s %s: %s", tc.method, tc.path, raw)
		require.Contains(t, obj["error"], refused)
	}
	app, err := c.st.Get(context.Background(), "bank")
	require.NoError(t, err)
	require.Equal(t, "web:1", app.Spec.Image, "nothing refused was done")
	require.EqualValues(t, 1, app.Generation)

	for _, name := range []string{"shop", "shop-v2"} {
		code, _, raw := teamA.do("PUT", "/v1/apps/"+name, strings.ReplaceAll(web, "name: web", "name: "+name+"\nrouting: {hosts: ["+name+".test]}"))
		require.Equal(t, 200, code, "%s: %s", name, raw)
	}
	code, _, _ = teamA.do("GET", "/v1/apps/bank", "")
	require.Equal(t, 200, code, "a deploy token reads every app")

	for body, want := range map[string]string{
		`{"name":"r","scope":"read","apps":["shop"]}`:   "only a deploy token is limited to apps: a read token is not",
		`{"name":"a","scope":"admin","apps":["shop"]}`:  "only a deploy token is limited to apps: a admin token is not",
		`{"name":"d","scope":"deploy","apps":["Shop"]}`: `"Shop" is not an app pattern`,
		`{"name":"d","scope":"deploy","apps":["a b"]}`:  `"a b" is not an app pattern`,
	} {
		code, obj, raw := admin.do("POST", "/v1/tokens", body)
		require.Equal(t, 400, code, "%s: %s", body, raw)
		require.Contains(t, fmt.Sprint(obj["fields"]), want, body)
	}
}
