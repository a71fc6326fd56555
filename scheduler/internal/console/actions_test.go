package console

import (
	"context"
	"fmt"
	"net/http"
	"net/url"
	"regexp"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/stretchr/testify/require"

	"github.com/berthhq/berth/common/msg"
	"github.com/berthhq/berth/scheduler/internal/auth"
	"github.com/berthhq/berth/scheduler/internal/store"
)

// leader plays the leader's part in an action: on each change of an app
// it records (toStore) and publishes the app_updated event of its
// generation, as the publisher does. With toStore false the event only
// reaches the hub, as one published on NATS before the API shows it.
func (r *rig) leader(toStore bool) {
	r.t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	l, ok, err := r.st.Acquire(ctx, "scheduler", "console-test", time.Hour)
	require.NoError(r.t, err)
	require.True(r.t, ok)
	ready, done := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(done)
		_ = r.st.ListenReady(ctx, []string{store.AppsChannel}, func() { close(ready) }, func(_, name string) {
			if name == "" {
				return
			}
			a, err := r.st.Get(ctx, name)
			if ctx.Err() != nil {
				return
			}
			if err != nil {
				r.t.Errorf("leader: get %s: %v", name, err)
				return
			}
			e := store.Event{App: a.Name, Kind: msg.EventAppUpdated, Actor: a.UpdatedBy, At: time.Now(),
				Message: fmt.Sprintf("app %s is at generation %d (image %s)", a.Name, a.Generation, a.Spec.Image),
				Details: map[string]string{"generation": fmt.Sprint(a.Generation), "image": a.Spec.Image}}
			id := "hub"
			if toStore {
				if err := r.st.LeaderTx(ctx, l, func(ctx context.Context, tx *store.Tx) error {
					n, err := tx.AddEvent(ctx, e)
					id = fmt.Sprint(n)
					return err
				}); err != nil && ctx.Err() == nil {
					r.t.Errorf("leader: add event: %v", err)
					return
				}
			}
			r.live.Publish(&msg.Event{ID: id, App: e.App, Kind: e.Kind, Message: e.Message, Details: e.Details, Actor: e.Actor, At: e.At})
		})
	}()
	r.t.Cleanup(func() { cancel(); <-done })
	<-ready
}

// tokenFor makes a deploy token limited to the apps matching patterns.
func (r *rig) tokenFor(name string, patterns ...string) string {
	r.t.Helper()
	secret, hash, err := auth.New(nil)
	require.NoError(r.t, err)
	_, err = r.st.CreateToken(context.Background(), store.Token{Name: name, Scope: auth.Deploy.String(), Hash: hash, Apps: patterns})
	require.NoError(r.t, err)
	return secret
}

// signedIn returns a browser signed in with token.
func (r *rig) signedIn(token string) *http.Client {
	r.t.Helper()
	c := r.browser()
	require.Equal(r.t, http.StatusSeeOther, r.login(c, token).StatusCode)
	return c
}

func (r *rig) replicas(app string) int {
	r.t.Helper()
	a, err := r.st.Get(context.Background(), app)
	require.NoError(r.t, err)
	return a.DesiredReplicas
}

var flashText = regexp.MustCompile(`<p class="flash" role="status">([^<]*)</p>`)

// flash reads the flash the next page shows, and checks it shows once.
func flash(t *testing.T, c *http.Client, u string) string {
	t.Helper()
	resp, page := get(t, c, u)
	require.Equal(t, http.StatusOK, resp.StatusCode)
	m := flashText.FindStringSubmatch(page)
	require.NotNil(t, m, "the page shows a flash: %s", page)
	_, again := get(t, c, u)
	require.NotContains(t, again, `class="flash"`, "a flash shows once")
	return m[1]
}

func TestScale(t *testing.T) {
	t.Parallel()
	r := newRig(t, nil)
	r.leader(true)
	r.apply("name: web\nimage: web:1\nport: 8080\nreplicas: 3\n")
	for i, tc := range []struct{ name, token, actor string }{
		{"admin", admin, "bootstrap"},
		{"deploy", r.token("ci", auth.Deploy), "ci"},
		{"deploy limited to it", r.tokenFor("webci", "web", "api-*"), "webci"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := r.signedIn(tc.token)
			from, to := r.replicas("web"), 4+i
			resp, page := get(t, c, r.url+fmt.Sprintf("/ui/apps/web/scale?replicas=%d", to))
			require.Equal(t, http.StatusOK, resp.StatusCode)
			require.Contains(t, page, fmt.Sprintf("<h1>Scale web from %d to %d replicas?</h1>", from, to))
			require.Contains(t, page, `<form method="post" action="/ui/apps/web/scale" class="confirm">`)
			require.Contains(t, page, fmt.Sprintf(`<input type="hidden" name="replicas" value="%d">`, to))
			require.Contains(t, page, `<a class="button" href="/ui/apps/web">Cancel</a>`)
			require.Equal(t, from, r.replicas("web"), "asking changes nothing")

			resp, _ = post(t, c, r.url+"/ui/apps/web/scale", url.Values{"csrf": {csrf(t, page)}, "replicas": {fmt.Sprint(to)}})
			require.Equal(t, http.StatusSeeOther, resp.StatusCode)
			require.Equal(t, "/ui/apps/web", resp.Header.Get("Location"))
			require.Equal(t, to, r.replicas("web"))
			a, err := r.st.Get(context.Background(), "web")
			require.NoError(t, err)
			require.Equal(t, tc.actor, a.UpdatedBy, "the change is the token's")

			text := flash(t, c, r.url+"/ui/hosts")
			require.Contains(t, text, fmt.Sprintf("Scaled web from %d to %d replicas: generation %d.", from, to, a.Generation))
			require.Regexp(t, fmt.Sprintf(`Event #\d+ app_updated by %s: app web is at generation %d \(image web:1\)`, tc.actor, a.Generation), text)
		})
	}
	t.Run("asks for the count", func(t *testing.T) {
		c := r.signedIn(admin)
		resp, page := get(t, c, r.url+"/ui/apps/web/scale")
		require.Equal(t, http.StatusOK, resp.StatusCode)
		require.Contains(t, page, `<form method="get" action="/ui/apps/web/scale" class="ask">`)
		require.Contains(t, page, `value="6" required>`, "the count it has")
		require.NotContains(t, page, `method="post" action="/ui/apps/web/scale"`)
	})
}

func TestScaleRefused(t *testing.T) {
	t.Parallel()
	r := newRig(t, nil)
	r.apply("name: web\nimage: web:1\nport: 8080\nreplicas: 3\n")
	r.apply("name: auto\nimage: auto:1\nport: 8080\nscaling:\n  min: 1\n  max: 4\n  target_cpu_percent: 70\n")
	viewer := r.signedIn(r.token("viewer", auth.Read))
	other := r.signedIn(r.tokenFor("apibot", "api-*"))
	adm := r.signedIn(admin)
	form := func(c *http.Client, path string) string {
		_, page := get(t, c, r.url+path)
		return csrf(t, page)
	}
	for _, tc := range []struct {
		name   string
		c      *http.Client
		path   string
		form   url.Values
		code   int
		says   string
		noForm bool
	}{
		{"read token", viewer, "/ui/apps/web/scale", url.Values{"replicas": {"5"}}, http.StatusForbidden, "this needs the deploy scope; token viewer has read", true},
		{"deploy token of other apps", other, "/ui/apps/web/scale", url.Values{"replicas": {"5"}}, http.StatusForbidden, "token apibot may change only the apps api-*, not web", true},
		{"not a number", adm, "/ui/apps/web/scale", url.Values{"replicas": {"five<b>"}}, http.StatusBadRequest, "replicas: &#34;five&lt;b&gt;&#34; must be a whole number from 0 to 1000", false},
		{"too many", adm, "/ui/apps/web/scale", url.Values{"replicas": {"1001"}}, http.StatusBadRequest, "must be a whole number from 0 to 1000", false},
		{"negative", adm, "/ui/apps/web/scale", url.Values{"replicas": {"-1"}}, http.StatusBadRequest, "must be a whole number from 0 to 1000", false},
		{"no count", adm, "/ui/apps/web/scale", url.Values{}, http.StatusBadRequest, "replicas: give the count", false},
		{"autoscaled (the API decides)", adm, "/ui/apps/auto/scale", url.Values{"replicas": {"2"}}, http.StatusConflict, "change scaling.min and scaling.max instead", false},
		{"no such app", adm, "/ui/apps/nope/scale", url.Values{"replicas": {"2"}}, http.StatusNotFound, "not found", true},
		{"bad rollback generation", adm, "/ui/apps/web/rollback", url.Values{"to": {"0"}}, http.StatusBadRequest, "to: &#34;0&#34; must be a generation of the app", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tc.form.Set("csrf", form(tc.c, "/ui/"))
			resp, page := post(t, tc.c, r.url+tc.path, tc.form)
			require.Equal(t, tc.code, resp.StatusCode, page)
			require.Contains(t, page, `<p class="error" role="alert">`)
			require.Contains(t, page, tc.says)
			if tc.noForm {
				require.NotContains(t, page, `<form method="post" action="/ui/apps`, "nothing to confirm")
				require.NotContains(t, page, "Confirm</button>")
			}
			require.Equal(t, 3, r.replicas("web"), "nothing changed")
		})
	}
	t.Run("csrf", func(t *testing.T) {
		for name, form := range map[string]url.Values{
			"missing":           {"replicas": {"5"}},
			"wrong":             {"replicas": {"5"}, "csrf": {"AAAA"}},
			"another session's": {"replicas": {"5"}, "csrf": {form(viewer, "/ui/")}},
		} {
			resp, _ := post(t, adm, r.url+"/ui/apps/web/scale", form)
			require.Equal(t, http.StatusForbidden, resp.StatusCode, name)
			require.Equal(t, 3, r.replicas("web"), "nothing changed")
		}
	})
	t.Run("bad name", func(t *testing.T) {
		resp, page := get(t, adm, r.url+"/ui/apps/Web%3Cx%3E/scale?replicas=2")
		require.Equal(t, http.StatusBadRequest, resp.StatusCode)
		require.Contains(t, page, "app: &#34;Web&lt;x&gt;&#34; is not a valid name")
		require.NotContains(t, page, "<x>")
	})
	t.Run("read token sees the question", func(t *testing.T) {
		resp, page := get(t, viewer, r.url+"/ui/apps/web/scale?replicas=5")
		require.Equal(t, http.StatusOK, resp.StatusCode, "the API is the authority: it refuses the POST")
		require.Contains(t, page, "Scale web from 3 to 5 replicas?")
	})
}

func TestRollbackAndRestart(t *testing.T) {
	t.Parallel()
	r := newRig(t, nil)
	// The events reach the console only on the hub, as from NATS before
	// the API shows them.
	r.leader(false)
	r.apply("name: web\nimage: web:1\nport: 8080\nreplicas: 2\n")
	r.apply("name: web\nimage: web:2\nport: 8080\nreplicas: 2\n")
	c := r.signedIn(r.token("ci", auth.Deploy))
	do := func(path string, form url.Values) string {
		t.Helper()
		_, page := get(t, c, r.url+path+"?"+form.Encode())
		form.Set("csrf", csrf(t, page))
		resp, body := post(t, c, r.url+path, form)
		require.Equal(t, http.StatusSeeOther, resp.StatusCode, body)
		require.Equal(t, "/ui/apps/web", resp.Header.Get("Location"))
		return flash(t, c, r.url+"/ui/events")
	}
	app := func() store.App {
		a, err := r.st.Get(context.Background(), "web")
		require.NoError(t, err)
		return a
	}

	_, page := get(t, c, r.url+"/ui/apps/web/rollback")
	require.Contains(t, page, "<h1>Roll web back?</h1>")
	require.Contains(t, page, "comes back as generation 3")
	text := do("/ui/apps/web/rollback", url.Values{})
	a := app()
	require.Equal(t, "web:1", a.Spec.Image, "the earlier spec is back")
	require.EqualValues(t, 3, a.Generation)
	require.Contains(t, text, "Rolled web back: generation 3 has the spec of an earlier one (image web:1).")
	require.Contains(t, text, "Event #hub app_updated by ci: app web is at generation 3 (image web:1)")

	_, page = get(t, c, r.url+"/ui/apps/web/rollback?to=2")
	require.Contains(t, page, "<h1>Roll web back to generation 2?</h1>")
	require.Contains(t, page, `<input type="hidden" name="to" value="2">`)
	text = do("/ui/apps/web/rollback", url.Values{"to": {"2"}})
	a = app()
	require.Equal(t, "web:2", a.Spec.Image)
	require.EqualValues(t, 4, a.Generation)
	require.Contains(t, text, "Rolled web back to generation 2: it is generation 4 now (image web:2).")

	_, page = get(t, c, r.url+"/ui/apps/web/restart")
	require.Contains(t, page, "<h1>Restart every instance of web?</h1>")
	text = do("/ui/apps/web/restart", url.Values{})
	a = app()
	require.EqualValues(t, 5, a.Generation)
	require.EqualValues(t, 5, a.RestartedGeneration, "every container differs")
	require.Equal(t, "web:2", a.Spec.Image)
	require.Contains(t, text, "Restarting web: generation 5 replaces every instance.")
	require.Contains(t, text, "app_updated by ci: app web is at generation 5")

	// Rolling back to the spec it has is the API's 409, shown as it says.
	_, page = get(t, c, r.url+"/ui/apps/web/rollback?to=5")
	resp, body := post(t, c, r.url+"/ui/apps/web/rollback", url.Values{"csrf": {csrf(t, page)}, "to": {"5"}})
	require.Equal(t, http.StatusConflict, resp.StatusCode)
	require.Contains(t, body, "it is the spec and image of generation 5 already")

	viewer := r.signedIn(r.token("viewer", auth.Read))
	for _, path := range []string{"/ui/apps/web/rollback", "/ui/apps/web/restart"} {
		_, page := get(t, viewer, r.url+path)
		resp, body := post(t, viewer, r.url+path, url.Values{"csrf": {csrf(t, page)}})
		require.Equal(t, http.StatusForbidden, resp.StatusCode, path)
		require.Contains(t, body, "this needs the deploy scope; token viewer has read")
	}
	require.EqualValues(t, 5, app().Generation, "nothing changed")
}

func TestDrainAndHostsPage(t *testing.T) {
	t.Parallel()
	r := newRig(t, nil)
	ctx := context.Background()
	_, err := r.st.PutHost(ctx, store.Host{Name: "h1", DockerURL: "unix:///run/h1.sock", Address: "10.0.0.1", CPU: 8, Memory: 16 << 30,
		Labels: map[string]string{"zone": "a", "disk": `<b>ssd</b>`}})
	require.NoError(t, err)
	_, err = r.st.PutHost(ctx, store.Host{Name: "h2", DockerURL: "unix:///run/h2.sock", Address: "10.0.0.2"})
	require.NoError(t, err)
	r.apply("name: web\nimage: web:1\nport: 8080\nreplicas: 2\nresources:\n  cpu: 0.5\n  memory: 64Mi\n")
	l, _, err := r.st.Acquire(ctx, "scheduler", "t", time.Minute)
	require.NoError(t, err)
	require.NoError(t, r.st.LeaderTx(ctx, l, func(ctx context.Context, tx *store.Tx) error {
		for i := range 2 {
			if err := tx.PutInstance(ctx, store.Instance{ID: fmt.Sprintf("i%d", i), App: "web", Generation: 1, State: "running", Host: "h1"}); err != nil {
				return err
			}
		}
		return tx.SetHostState(ctx, "h2", store.HostDown, `host h2 is not used: <script>x</script>`, time.Now(), time.Time{})
	}))

	c := r.signedIn(admin)
	resp, page := get(t, c, r.url+"/ui/hosts")
	require.Equal(t, http.StatusOK, resp.StatusCode)
	require.Contains(t, page, `<body data-live="refresh" data-app="">`)
	require.Contains(t, page, `<tr class="ok" data-name="h1">`)
	require.Contains(t, page, "<td>1.00 / 8.00</td>", "CPU reserved / capacity")
	require.Contains(t, page, "<td>128Mi / 16Gi</td>", "memory reserved / capacity")
	require.Contains(t, page, "disk=&lt;b&gt;ssd&lt;/b&gt;, zone=a")
	require.Contains(t, page, `<a class="button" href="/ui/hosts/h1/drain">Drain</a>`)
	require.Contains(t, page, `<tr class="trouble" data-name="h2">`)
	require.Contains(t, page, "<td>0.00 / no limit</td>")
	require.Contains(t, page, "host h2 is not used: &lt;script&gt;x&lt;/script&gt;")
	require.NotContains(t, page, "<script>x")

	resp, page = get(t, c, r.url+"/ui/hosts/h1/drain")
	require.Equal(t, http.StatusOK, resp.StatusCode)
	require.Contains(t, page, "<h1>Drain host h1?</h1>")
	require.Contains(t, page, "Its 2 instance(s) move to other hosts")
	for _, tok := range []struct{ secret, says string }{
		{r.token("viewer", auth.Read), "this needs the admin scope; token viewer has read"},
		{r.token("ci", auth.Deploy), "this needs the admin scope; token ci has deploy"},
	} {
		other := r.signedIn(tok.secret)
		_, form := get(t, other, r.url+"/ui/hosts/h1/drain")
		resp, body := post(t, other, r.url+"/ui/hosts/h1/drain", url.Values{"csrf": {csrf(t, form)}})
		require.Equal(t, http.StatusForbidden, resp.StatusCode)
		require.Contains(t, body, tok.says)
	}
	resp, _ = post(t, c, r.url+"/ui/hosts/h1/drain", url.Values{})
	require.Equal(t, http.StatusForbidden, resp.StatusCode, "no csrf")
	h, err := r.st.GetHost(ctx, "h1")
	require.NoError(t, err)
	require.False(t, h.Drain, "nothing changed")

	resp, _ = post(t, c, r.url+"/ui/hosts/h1/drain", url.Values{"csrf": {csrf(t, page)}})
	require.Equal(t, http.StatusSeeOther, resp.StatusCode)
	require.Equal(t, "/ui/hosts", resp.Header.Get("Location"))
	h, err = r.st.GetHost(ctx, "h1")
	require.NoError(t, err)
	require.True(t, h.Drain)
	require.Equal(t, "Host h1 is draining: nothing new is placed there, and its instances move. The API answered: drain true, state unknown, 2 instance(s).",
		flash(t, c, r.url+"/ui/hosts"))
	_, page = get(t, c, r.url+"/ui/hosts")
	require.Contains(t, page, `<a class="button" href="/ui/hosts/h1/undrain">Undrain</a>`)
	require.Contains(t, page, "<strong>draining</strong>")

	_, page = get(t, c, r.url+"/ui/hosts/h1/undrain")
	require.Contains(t, page, "<h1>Undrain host h1?</h1>")
	resp, _ = post(t, c, r.url+"/ui/hosts/h1/undrain", url.Values{"csrf": {csrf(t, page)}})
	require.Equal(t, http.StatusSeeOther, resp.StatusCode)
	h, err = r.st.GetHost(ctx, "h1")
	require.NoError(t, err)
	require.False(t, h.Drain)
	require.Contains(t, flash(t, c, r.url+"/ui/hosts"), "Host h1 takes new instances again. The API answered: drain false")

	resp, page = get(t, c, r.url+"/ui/hosts/nope/drain")
	require.Equal(t, http.StatusNotFound, resp.StatusCode)
	require.Contains(t, page, "host nope")
	resp, _ = post(t, c, r.url+"/ui/hosts/nope/drain", url.Values{"csrf": {csrf(t, page)}})
	require.Equal(t, http.StatusNotFound, resp.StatusCode)
	resp, _ = get(t, c, r.url+"/ui/hosts/No_Host/drain")
	require.Equal(t, http.StatusBadRequest, resp.StatusCode)
}

func TestEventsPage(t *testing.T) {
	t.Parallel()
	r := newRig(t, nil)
	ctx := context.Background()
	l, _, err := r.st.Acquire(ctx, "scheduler", "t", time.Minute)
	require.NoError(t, err)
	const hostile = `<script>alert("x")</script>`
	require.NoError(t, r.st.LeaderTx(ctx, l, func(ctx context.Context, tx *store.Tx) error {
		for _, e := range []store.Event{
			{App: "web", Kind: msg.EventAppUpdated, Message: "app web is at generation 1", Actor: "alice"},
			{App: "api", Instance: "api-1", Kind: msg.EventInstanceStarted, Message: "started"},
			{App: "web", Instance: "web-1", Kind: msg.EventInstanceExited, Message: "exited " + hostile,
				LogTail: []string{"panic: boom", `</pre><img src=x onerror=alert(1)>`}},
		} {
			if _, err := tx.AddEvent(ctx, e); err != nil {
				return err
			}
		}
		return nil
	}))
	evs, err := r.st.LastEvents(ctx, "", 10)
	require.NoError(t, err)
	require.Len(t, evs, 3)

	c := r.signedIn(admin)
	resp, page := get(t, c, r.url+"/ui/events")
	require.Equal(t, http.StatusOK, resp.StatusCode)
	require.Contains(t, page, `<body data-live="events" data-app="">`)
	require.Contains(t, page, `<table class="events grid" data-app="" data-kind="">`)
	exited := strings.Index(page, fmt.Sprintf(`<tr data-id="%d" data-name="web" class="instance_exited">`, evs[2].ID))
	started := strings.Index(page, fmt.Sprintf(`<tr data-id="%d" data-name="api" class="instance_started">`, evs[1].ID))
	updated := strings.Index(page, fmt.Sprintf(`<tr data-id="%d" data-name="web" class="app_updated">`, evs[0].ID))
	require.Positive(t, exited)
	require.Less(t, exited, started, "newest first")
	require.Less(t, started, updated)
	require.Contains(t, page, `<td><a href="/ui/apps/web">web</a></td>`)
	require.Contains(t, page, `<td class="actor">alice</td>`)
	require.Contains(t, page, `exited &lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt;<pre class="logtail">panic: boom
&lt;/pre&gt;&lt;img src=x onerror=alert(1)&gt;</pre>`)
	require.NotContains(t, page, "<img")
	require.Equal(t, 1, strings.Count(page, "<script"), "the console's one script file")
	for _, k := range msg.EventKinds() {
		require.Contains(t, page, fmt.Sprintf(`<option value="%s">%s</option>`, k, k))
	}

	_, page = get(t, c, r.url+"/ui/events?app=web")
	require.Contains(t, page, `<body data-live="events" data-app="web">`)
	require.Contains(t, page, `<table class="events grid" data-app="web" data-kind="">`)
	require.Contains(t, page, `value="web"`)
	require.Equal(t, 2, strings.Count(page, "<tr data-id="))
	require.NotContains(t, page, `data-name="api"`)

	_, page = get(t, c, r.url+"/ui/events?kind=instance_exited")
	require.Contains(t, page, `<table class="events grid" data-app="" data-kind="instance_exited">`)
	require.Contains(t, page, `<option value="instance_exited" selected>instance_exited</option>`)
	require.Equal(t, 1, strings.Count(page, "<tr data-id="))

	_, page = get(t, c, r.url+"/ui/events?app=api&kind=instance_exited")
	require.Zero(t, strings.Count(page, "<tr data-id="))
	require.Contains(t, page, `<table class="events grid" data-app="api" data-kind="instance_exited">`, "live rows still have a table")
	require.Contains(t, page, `<p id="no-events" class="muted">No events that match yet`)

	resp, page = get(t, c, r.url+"/ui/events?kind="+url.QueryEscape(hostile))
	require.Equal(t, http.StatusBadRequest, resp.StatusCode)
	require.Contains(t, page, "kind: &#34;&lt;script&gt;")
	require.Equal(t, 1, strings.Count(page, "<script"))
	resp, _ = get(t, c, r.url+"/ui/events?app=No_App")
	require.Equal(t, http.StatusBadRequest, resp.StatusCode)

	// A deploy token limited to other apps does not see web's log tail.
	bot := r.signedIn(r.tokenFor("apibot", "api-*"))
	_, page = get(t, bot, r.url+"/ui/events?app=web")
	require.Contains(t, page, "exited &lt;script&gt;")
	require.NotContains(t, page, "panic: boom")
}

func TestFlashIsBoundedAndShownOnce(t *testing.T) {
	t.Parallel()
	s := newSessions()
	now := time.Now()
	id, _, err := s.add("secret", now, now.Add(time.Hour))
	require.NoError(t, err)
	require.Empty(t, s.takeFlash(id))
	s.setFlash(id, strings.Repeat("é", maxFlash))
	text := s.takeFlash(id)
	require.LessOrEqual(t, len(text), maxFlash)
	require.Greater(t, len(text), maxFlash-2, "cut on a rune boundary")
	require.True(t, utf8.ValidString(text))
	require.Empty(t, s.takeFlash(id), "shown once")
	s.setFlash("gone", "x")
	require.Empty(t, s.takeFlash("gone"), "no session, no flash")
	s.setFlash(id, "scaled")
	s.drop(id)
	require.Empty(t, s.takeFlash(id))
}
