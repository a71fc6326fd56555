package console

import (
	"context"
	"io"
	"net/http"
	"net/http/cookiejar"
	"net/http/httptest"
	"net/url"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/stretchr/testify/require"
	"go.uber.org/zap/zaptest"

	"github.com/berthhq/berth/common/msg"
	"github.com/berthhq/berth/common/spec"
	"github.com/berthhq/berth/internal/testrig"
	"github.com/berthhq/berth/scheduler/internal/api"
	"github.com/berthhq/berth/scheduler/internal/auth"
	"github.com/berthhq/berth/scheduler/internal/store"
)

func TestMain(m *testing.M) { testrig.Main(m) }

const admin = "admin-secret-for-the-console-tests"

type rig struct {
	live *Hub
	t    *testing.T
	url  string
	st   *store.Store
	keys *auth.Keyring
}

// renamed renames the apps it lists, as no spec may name an app so.
type renamed struct {
	api.AppReader
	names map[string]string
}

func (r renamed) List(ctx context.Context) ([]store.App, error) {
	apps, err := r.AppReader.List(ctx)
	for i := range apps {
		if n, ok := r.names[apps[i].Name]; ok {
			apps[i].Name = n
		}
	}
	return apps, err
}

// newRig serves the console on a real Postgres, with the bootstrap token
// admin; rename renames apps as the overview lists them.
func newRig(t *testing.T, rename map[string]string) *rig {
	t.Helper()
	ctx := context.Background()
	st, err := store.Open(ctx, testrig.Postgres(t))
	require.NoError(t, err)
	t.Cleanup(st.Close)
	_, err = st.Migrate(ctx)
	require.NoError(t, err)
	keys := auth.NewKeyring(st, auth.Config{Bootstrap: admin, MissInterval: time.Nanosecond}, zaptest.NewLogger(t))
	deps := api.Deps{Apps: renamed{AppReader: st, names: rename}, Changes: st, Events: st, Decisions: st, DB: st, Claims: st, Hosts: st, History: st, Tokens: st, Certificates: st}
	live := NewHub()
	h, err := New(Options{Keyring: keys, API: api.New(deps, api.Options{Keyring: keys}, zaptest.NewLogger(t)), Live: live}, zaptest.NewLogger(t))
	require.NoError(t, err)
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	return &rig{t: t, url: srv.URL, st: st, keys: keys, live: live}
}

func (r *rig) apply(yaml string) {
	r.t.Helper()
	a, err := spec.Load([]byte(yaml))
	require.NoError(r.t, err)
	_, _, err = r.st.Apply(context.Background(), a, nil)
	require.NoError(r.t, err)
}

func (r *rig) token(name string, scope auth.Scope) string {
	r.t.Helper()
	secret, hash, err := auth.New(nil)
	require.NoError(r.t, err)
	_, err = r.st.CreateToken(context.Background(), store.Token{Name: name, Scope: scope.String(), Hash: hash})
	require.NoError(r.t, err)
	return secret
}

// browser is a client with a cookie jar that follows no redirect.
func (r *rig) browser() *http.Client {
	jar, err := cookiejar.New(nil)
	require.NoError(r.t, err)
	return &http.Client{Jar: jar, CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
}

var csrfField = regexp.MustCompile(`name="csrf" value="([^"]+)"`)

func get(t *testing.T, c *http.Client, u string) (*http.Response, string) {
	t.Helper()
	resp, err := c.Get(u)
	require.NoError(t, err)
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	return resp, string(b)
}

func post(t *testing.T, c *http.Client, u string, form url.Values) (*http.Response, string) {
	t.Helper()
	resp, err := c.PostForm(u, form)
	require.NoError(t, err)
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	return resp, string(b)
}

// csrf reads the form's CSRF token from a page.
func csrf(t *testing.T, page string) string {
	t.Helper()
	m := csrfField.FindStringSubmatch(page)
	require.NotNil(t, m, "the page has a csrf field: %s", page)
	return m[1]
}

// login signs c in with token and returns the answer to the form.
func (r *rig) login(c *http.Client, token string) *http.Response {
	r.t.Helper()
	_, page := get(r.t, c, r.url+"/ui/login")
	resp, _ := post(r.t, c, r.url+"/ui/login", url.Values{"csrf": {csrf(r.t, page)}, "token": {token}})
	return resp
}

func TestLoginSetsASessionCookie(t *testing.T) {
	t.Parallel()
	r := newRig(t, nil)
	c := r.browser()
	resp := r.login(c, admin)
	require.Equal(t, http.StatusSeeOther, resp.StatusCode)
	require.Equal(t, "/ui/", resp.Header.Get("Location"))
	var sess *http.Cookie
	for _, ck := range resp.Cookies() {
		if ck.Name == SessionCookie {
			sess = ck
		}
	}
	require.NotNil(t, sess, "a session cookie is set")
	require.True(t, sess.HttpOnly)
	require.Equal(t, http.SameSiteStrictMode, sess.SameSite)
	require.Equal(t, "/ui/", sess.Path)
	require.False(t, sess.Secure, "plain HTTP (Secure only over TLS)")
	require.NotContains(t, sess.Value, admin, "the cookie is not the token")
	require.Len(t, sess.Value, 43)

	resp, page := get(t, c, r.url+"/ui/")
	require.Equal(t, http.StatusOK, resp.StatusCode)
	require.Contains(t, page, "bootstrap (admin)")

	// Sign out ends the session.
	resp, _ = post(t, c, r.url+"/ui/logout", url.Values{"csrf": {csrf(t, page)}})
	require.Equal(t, http.StatusSeeOther, resp.StatusCode)
	resp, _ = get(t, c, r.url+"/ui/")
	require.Equal(t, http.StatusSeeOther, resp.StatusCode)
	require.Equal(t, "/ui/login", resp.Header.Get("Location"))
}

func TestSessionCookieIsSecureOverTLS(t *testing.T) {
	t.Parallel()
	r := newRig(t, nil)
	ctx := context.Background()
	deps := api.Deps{Apps: r.st, Changes: r.st, Events: r.st, Decisions: r.st, DB: r.st, Claims: r.st, Hosts: r.st, History: r.st, Tokens: r.st}
	h, err := New(Options{Keyring: r.keys, API: api.New(deps, api.Options{Keyring: r.keys}, zaptest.NewLogger(t))}, zaptest.NewLogger(t))
	require.NoError(t, err)
	srv := httptest.NewTLSServer(h)
	t.Cleanup(srv.Close)
	c := srv.Client()
	c.CheckRedirect = func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, srv.URL+"/ui/login", nil)
	require.NoError(t, err)
	resp, err := c.Do(req)
	require.NoError(t, err)
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	var login *http.Cookie
	for _, ck := range resp.Cookies() {
		if ck.Name == LoginCookie {
			login = ck
		}
	}
	require.NotNil(t, login)
	require.True(t, login.Secure)
	form := url.Values{"csrf": {csrf(t, string(b))}, "token": {admin}}
	req, err = http.NewRequestWithContext(ctx, http.MethodPost, srv.URL+"/ui/login", strings.NewReader(form.Encode()))
	require.NoError(t, err)
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.AddCookie(login)
	resp, err = c.Do(req)
	require.NoError(t, err)
	resp.Body.Close()
	require.Equal(t, http.StatusSeeOther, resp.StatusCode)
	var secure bool
	for _, ck := range resp.Cookies() {
		if ck.Name == SessionCookie {
			secure = ck.Secure && ck.HttpOnly && ck.SameSite == http.SameSiteStrictMode
		}
	}
	require.True(t, secure, "the session cookie is Secure, HttpOnly and SameSite=Strict over TLS")
}

func TestBadTokenIsRefused(t *testing.T) {
	t.Parallel()
	r := newRig(t, nil)
	for name, token := range map[string]string{"unknown": "not-a-token", "empty": ""} {
		t.Run(name, func(t *testing.T) {
			c := r.browser()
			_, page := get(t, c, r.url+"/ui/login")
			resp, body := post(t, c, r.url+"/ui/login", url.Values{"csrf": {csrf(t, page)}, "token": {token}})
			require.Contains(t, []int{http.StatusUnauthorized, http.StatusBadRequest}, resp.StatusCode)
			for _, ck := range resp.Cookies() {
				require.NotEqual(t, SessionCookie, ck.Name, "no session")
			}
			require.Contains(t, body, `class="error"`)
		})
	}
}

func TestNoSessionRedirectsToLogin(t *testing.T) {
	t.Parallel()
	r := newRig(t, nil)
	c := r.browser()
	for _, tc := range []struct{ method, path string }{{"GET", "/ui/"}, {"POST", "/ui/logout"}} {
		req, err := http.NewRequest(tc.method, r.url+tc.path, nil)
		require.NoError(t, err)
		resp, err := c.Do(req)
		require.NoError(t, err)
		resp.Body.Close()
		require.Equal(t, http.StatusSeeOther, resp.StatusCode, tc.path)
		require.Equal(t, "/ui/login", resp.Header.Get("Location"))
	}
	// A made-up session is no session.
	u, _ := url.Parse(r.url + "/ui/")
	c.Jar.SetCookies(u, []*http.Cookie{{Name: SessionCookie, Value: "forged", Path: "/ui/"}})
	resp, _ := get(t, c, r.url+"/ui/")
	require.Equal(t, http.StatusSeeOther, resp.StatusCode)
}

func TestRevokedTokenEndsItsSession(t *testing.T) {
	t.Parallel()
	r := newRig(t, nil)
	secret := r.token("ci", auth.Read)
	c := r.browser()
	require.Equal(t, http.StatusSeeOther, r.login(c, secret).StatusCode)
	resp, _ := get(t, c, r.url+"/ui/")
	require.Equal(t, http.StatusOK, resp.StatusCode)
	_, err := r.st.RevokeToken(context.Background(), "ci")
	require.NoError(t, err)
	require.NoError(t, r.keys.Reload(context.Background()))
	resp, _ = get(t, c, r.url+"/ui/")
	require.Equal(t, http.StatusSeeOther, resp.StatusCode)
	require.Equal(t, "/ui/login", resp.Header.Get("Location"))
}

func TestSecurityHeaders(t *testing.T) {
	t.Parallel()
	r := newRig(t, nil)
	c := r.browser()
	r.login(c, admin)
	for _, path := range []string{"/ui/login", "/ui/", "/ui/static/console.css", "/ui/nothing"} {
		resp, _ := get(t, c, r.url+path)
		h := resp.Header
		require.Equal(t, CSP, h.Get("Content-Security-Policy"), path)
		require.Contains(t, h.Get("Content-Security-Policy"), "default-src 'self'")
		require.Contains(t, h.Get("Content-Security-Policy"), "frame-ancestors 'none'")
		require.NotContains(t, h.Get("Content-Security-Policy"), "unsafe-inline")
		require.Equal(t, "nosniff", h.Get("X-Content-Type-Options"), path)
		require.Equal(t, "no-referrer", h.Get("Referrer-Policy"), path)
		require.Equal(t, "no-store", h.Get("Cache-Control"), path)
	}
	resp, css := get(t, c, r.url+"/ui/static/console.css")
	require.Equal(t, http.StatusOK, resp.StatusCode)
	require.Contains(t, resp.Header.Get("Content-Type"), "text/css")
	require.Contains(t, css, "table.apps")
}

func TestCSRF(t *testing.T) {
	t.Parallel()
	r := newRig(t, nil)
	t.Run("login", func(t *testing.T) {
		t.Parallel()
		for name, form := range map[string]url.Values{
			"missing": {"token": {admin}},
			"wrong":   {"token": {admin}, "csrf": {"AAAA"}},
		} {
			c := r.browser()
			get(t, c, r.url+"/ui/login") // the double-submit cookie
			resp, _ := post(t, c, r.url+"/ui/login", form)
			require.Equal(t, http.StatusForbidden, resp.StatusCode, name)
		}
		// The right field without its cookie is refused too.
		_, page := get(t, r.browser(), r.url+"/ui/login")
		resp, _ := post(t, r.browser(), r.url+"/ui/login", url.Values{"token": {admin}, "csrf": {csrf(t, page)}})
		require.Equal(t, http.StatusForbidden, resp.StatusCode)
	})
	t.Run("logout", func(t *testing.T) {
		t.Parallel()
		c := r.browser()
		r.login(c, admin)
		_, page := get(t, c, r.url+"/ui/")
		for name, form := range map[string]url.Values{"missing": {}, "wrong": {"csrf": {"AAAA"}}} {
			resp, _ := post(t, c, r.url+"/ui/logout", form)
			require.Equal(t, http.StatusForbidden, resp.StatusCode, name)
		}
		resp, _ := get(t, c, r.url+"/ui/")
		require.Equal(t, http.StatusOK, resp.StatusCode, "still signed in")
		// Another session's token does not do either.
		other := r.browser()
		r.login(other, admin)
		resp, _ = post(t, other, r.url+"/ui/logout", url.Values{"csrf": {csrf(t, page)}})
		require.Equal(t, http.StatusForbidden, resp.StatusCode)
	})
}

func TestOverview(t *testing.T) {
	t.Parallel()
	const hostile = `<script>alert("x")</script>`
	r := newRig(t, map[string]string{"evil": hostile})
	r.apply("name: calm\nimage: calm:1\nport: 8080\nreplicas: 0\n")
	r.apply("name: evil\nimage: evil:1\nport: 8080\nreplicas: 0\n")
	r.apply("name: web\nimage: web:1\nport: 8080\nreplicas: 3\n")
	// back wants none, but its generation was rolled back, for a cause
	// carrying markup.
	r.apply("name: back\nimage: back:1\nport: 8080\nreplicas: 0\n")
	ctx := context.Background()
	l, _, err := r.st.Acquire(ctx, "scheduler", "me", time.Minute)
	require.NoError(t, err)
	require.NoError(t, r.st.LeaderTx(ctx, l, func(ctx context.Context, tx *store.Tx) error {
		_, err := tx.AddEvent(ctx, store.Event{App: "back", Kind: msg.EventRolloutRolledBack, Message: "rolled back",
			Details: map[string]string{"generation": "1", "cause": `<img src=x onerror=alert(1)> crashed`}})
		return err
	}))
	c := r.browser()
	require.Equal(t, http.StatusSeeOther, r.login(c, r.token("viewer", auth.Read)).StatusCode, "a read token signs in")
	resp, page := get(t, c, r.url+"/ui/")
	require.Equal(t, http.StatusOK, resp.StatusCode)
	require.Equal(t, "text/html; charset=utf-8", resp.Header.Get("Content-Type"))
	require.Contains(t, page, "viewer (read)")

	require.NotContains(t, page, hostile, "the app name is not markup")
	require.NotContains(t, page, "<script>", "no inline script")
	require.Equal(t, 1, strings.Count(page, "<script"), "the console's one script file")
	require.Contains(t, page, `<script src="/ui/static/console.js" defer></script>`)
	require.Contains(t, page, `&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt;`)

	// web wants 3 replicas and has none ready: it comes first, in trouble.
	web, calm := strings.Index(page, `data-name="web"`), strings.Index(page, `data-name="calm"`)
	require.Positive(t, web)
	require.Positive(t, calm)
	require.Less(t, web, calm, "apps in trouble come first")
	require.Contains(t, page, `<tr class="trouble" data-name="web"><td class="name"><a href="/ui/apps/web">web</a><td>0 / 3<td>`)
	require.Contains(t, page, `<tr class="trouble" data-name="back"><td class="name"><a href="/ui/apps/back">back</a>`, "a rolled-back rollout is trouble")
	require.Contains(t, page, `rolled_back: &lt;img src=x onerror=alert(1)&gt; crashed`)
	require.NotContains(t, page, "<img")
	require.Less(t, strings.Index(page, `data-name="back"`), calm)
	require.Contains(t, page, `<tr class="ok" data-name="calm"><td class="name"><a href="/ui/apps/calm">calm</a><td>0 / 0<td>`)
	require.Contains(t, page, `<b>rollout_rolled_back</b> 0s ago: rolled back</tr>`, "the last event")

	// ?q= narrows the list on the server, by name.
	_, page = get(t, c, r.url+"/ui/?q=ca")
	require.Contains(t, page, `data-name="calm"`)
	require.NotContains(t, page, `data-name="web"`)
	require.Contains(t, page, `value="ca"`)
	_, page = get(t, c, r.url+"/ui/?q=%3Cb%3E")
	require.Contains(t, page, `No app's name holds “&lt;b&gt;”.`)
}

// An operator reads sign-ins by result, sessions and live streams.
func TestMetrics(t *testing.T) {
	t.Parallel()
	r := newRig(t, nil)
	reg := prometheus.NewRegistry()
	deps := api.Deps{Apps: r.st, Changes: r.st, Events: r.st, Decisions: r.st, DB: r.st, Claims: r.st, Hosts: r.st, History: r.st, Tokens: r.st}
	live := NewHub()
	h, err := New(Options{Keyring: r.keys, API: api.New(deps, api.Options{Keyring: r.keys}, zaptest.NewLogger(t)), Live: live, Registerer: reg}, zaptest.NewLogger(t))
	require.NoError(t, err)
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	r.url = srv.URL
	c := r.browser()
	require.Equal(t, http.StatusSeeOther, r.login(c, admin).StatusCode)
	require.Equal(t, http.StatusUnauthorized, r.login(r.browser(), "not-a-token").StatusCode)
	require.Equal(t, http.StatusUnauthorized, r.login(r.browser(), "still-not-a-token").StatusCode)
	cl := live.join("")
	live.Changed("web")
	require.NoError(t, testutil.GatherAndCompare(reg, strings.NewReader(`
# HELP berth_scheduler_console_signins_total Console sign-ins on this replica by result: ok, refused (an unknown or revoked token), error (the token could not be checked).
# TYPE berth_scheduler_console_signins_total counter
berth_scheduler_console_signins_total{result="error"} 0
berth_scheduler_console_signins_total{result="ok"} 1
berth_scheduler_console_signins_total{result="refused"} 2
# HELP berth_scheduler_console_sessions Console sessions this replica holds (signed in, not expired).
# TYPE berth_scheduler_console_sessions gauge
berth_scheduler_console_sessions 1
# HELP berth_scheduler_console_live_streams Console pages following this replica's live events now.
# TYPE berth_scheduler_console_live_streams gauge
berth_scheduler_console_live_streams 1
`), "berth_scheduler_console_signins_total", "berth_scheduler_console_sessions", "berth_scheduler_console_live_streams"))
	live.leave(cl)
}
