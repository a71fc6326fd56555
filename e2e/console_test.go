package e2e

import (
	"context"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
	"github.com/stretchr/testify/require"

	"github.com/berthhq/berth/internal/testrig"
)

// consoleBuilt says which of the console's pages and actions this tree
// has (issue 29 builds them in increments). A step for one that is not
// built yet does not run, and says so; once the route answers, the test
// fails until it is set here, so that no step stays off by mistake.
var consoleBuilt = map[string]bool{
	"app":          true, // GET /ui/apps/{name}: instances grouped by host
	"hosts":        true, // GET /ui/hosts
	"edge":         true, // GET /ui/edge
	"certificates": true, // GET /ui/certificates
	"events":       true, // GET /ui/events: live, data-live="events"
	"scale":        true, // GET /ui/apps/{name}/scale?replicas=N, a Confirm button posting it with the csrf field
}

// consoleRoutes is where each of consoleBuilt's pages is served.
var consoleRoutes = map[string]string{
	"app":          "/ui/apps/demo",
	"hosts":        "/ui/hosts",
	"edge":         "/ui/edge",
	"certificates": "/ui/certificates",
	"events":       "/ui/events",
	"scale":        "/ui/apps/demo/scale?replicas=4",
}

// liveHealth says whether the console's pages follow health changes
// live: a health transition is no event, so the console follows the
// leader recording it in Postgres (NOTIFY berth_instances), and a
// replacement shows ready without a reload.
const liveHealth = true

// markup is what a hostile app's container writes as its last line: the
// console must show it as text. Run, it would set window.__xss; under the
// console's CSP the browser would refuse it and report a violation.
const markup = `<script>window.__xss=1</script><img src=x onerror="window.__xss=2">`

// TestConsoleInABrowser drives the web console in headless Chromium
// against the full stack: sign in with a token, see the demo's three
// healthy instances, kill a container and see it replaced without a
// reload (the page follows the scheduler's server-sent events), and a
// container's log line carrying <script> shown as text. Every page it
// visits it captures (BERTH_SCREENSHOTS=dir writes them: docs/console/),
// and no page may throw, log an error or violate its CSP.
//
// With BERTH_CONSOLE_URL (and BERTH_CONSOLE_TOKEN_FILE) set, it runs
// against that console instead, an already running `make demo` (make
// screenshots): it only looks, and takes the screenshots.
func TestConsoleInABrowser(t *testing.T) {
	if base := os.Getenv("BERTH_CONSOLE_URL"); base != "" {
		consoleOfRunningDemo(t, strings.TrimRight(base, "/"))
		return
	}
	v1 := testrig.DemoImage(t, "v1")
	s := newStack(t)
	s.startScheduler("sched-a")
	s.leader(10 * time.Second)
	s.startHealthd("hc1")
	s.startLBAgent()
	s.apply(demoSpec(t, v1, 3, ""))
	s.waitServing("demo", demoHost, 3, "v1", 60*time.Second)
	base := s.api()
	checkConsoleBuilt(t, base)
	admin := s.token("console-admin", "admin")
	reader := s.token("console-reader", "read")

	b := testrig.NewBrowser(t)
	ctx, cancel := context.WithTimeout(b.Ctx, 5*time.Minute)
	defer cancel()
	c := &consoleBrowser{t: t, b: b, ctx: ctx, base: base}

	t.Run("sign in", func(t *testing.T) {
		c.t = t
		c.signIn(admin)
		c.requireText(t, ".session .who", "console-admin (admin)")
	})

	t.Run("the demo's three healthy instances", func(t *testing.T) {
		c.t = t
		c.waitRowReady("demo", "3 / 3")
		c.waitLive()
		c.screenshot("overview")
		if consoleBuilt["app"] {
			c.navigate("/ui/apps/demo")
			for _, in := range s.instances("demo") {
				c.waitFor(fmt.Sprintf(`document.body.textContent.includes(%q)`, in.ID), "instance "+in.ID+" on the app page")
			}
			c.screenshot("app")
		}
	})

	t.Run("a killed container replaced live", func(t *testing.T) {
		c.t = t
		// The app page shows the instances themselves; the overview their
		// count. Either way the page must not be loaded again: the marker
		// set now must survive, and a refresh must come from the stream.
		page := "/ui/"
		if consoleBuilt["app"] {
			page = "/ui/apps/demo"
		}
		c.navigate(page)
		c.waitLive()
		c.eval(`window.__marker = 1; document.body.dataset.refreshed = ""`)
		ins := s.instances("demo")
		require.Len(t, ins, 3)
		victim := ins[0].ID
		out, err := exec.Command("docker", "kill", s.containerOf(victim)).CombinedOutput()
		require.NoError(t, err, "%s", out)
		t.Logf("killed the container of %s", victim)
		// The scheduler replaces it: three healthy instances, the victim gone.
		require.Eventually(t, func() bool {
			now := s.instances("demo")
			healthy := 0
			for _, in := range now {
				if in.ID == victim {
					return false
				}
				if in.State == "running" && in.Health == "healthy" {
					healthy++
				}
			}
			return healthy == 3
		}, 90*time.Second, 100*time.Millisecond, "the killed instance replaced")
		// The page shows it, from the stream alone: a refresh after the
		// kill, with the replacement running.
		c.waitFor(`document.body.dataset.refreshed !== ""`, "a live refresh after the kill")
		if consoleBuilt["app"] {
			// The instances' tables (one per host): the victim stays in
			// the failures and the events, as it should.
			const instances = `Array.from(document.querySelectorAll("table.instances")).map(t => t.textContent).join(" ")`
			c.waitFor(fmt.Sprintf(`!%s.includes(%q)`, instances, victim), "the killed instance gone from the app page's instances")
			for _, in := range s.instances("demo") {
				c.waitFor(fmt.Sprintf(`%s.includes(%q)`, instances, in.ID), "instance "+in.ID+" on the app page")
			}
		} else {
			c.waitFor(`(function () {
  const row = document.querySelector('table.apps tr[data-name="demo"]');
  return row !== null && row.cells[2].textContent.trim() === "3";
})()`, "demo's replacement running on the overview")
		}
		switch {
		case liveHealth && consoleBuilt["app"]:
			c.waitFor(`document.querySelector("table.summary").textContent.replace(/\s+/g, " ").includes("3 ready / 3 desired")`, "demo 3 ready on its page")
		case liveHealth:
			c.waitRowReady("demo", "3 / 3")
		default:
			t.Logf("the overview's demo row, live: %s (a health change is no event: the ready count follows at the next event or reload)",
				c.eval(`document.querySelector('table.apps tr[data-name="demo"]').innerText.replace(/\s+/g, " ")`))
		}
		require.Equal(t, "true", c.eval(`window.__marker === 1`), "the page was loaded again: the marker set before the kill is gone")
		c.b.RequireNoProblems()
		// Loaded again, the page shows the three healthy.
		c.navigate("/ui/")
		c.waitRowReady("demo", "3 / 3")
	})

	t.Run("a log line carrying <script> shown as text", func(t *testing.T) {
		c.t = t
		// An app whose container writes markup as its last line and exits:
		// DEMO_MODE's error quotes the value it was given.
		s.apply(fmt.Sprintf(`name: markup
image: %s
port: 8080
replicas: 1
env: {DEMO_MODE: %q}
`, v1, markup))
		var shown string
		require.Eventually(t, func() bool {
			var evs []struct {
				Message string   `json:"message"`
				LogTail []string `json:"log_tail"`
			}
			if getJSON(s.api()+"/v1/events?app=markup", &evs) != nil {
				return false
			}
			for _, e := range evs {
				for _, l := range append(e.LogTail, e.Message) {
					if strings.Contains(l, "<script>") {
						shown = l
						return true
					}
				}
			}
			return false
		}, 90*time.Second, 200*time.Millisecond, "an event of markup carrying its log line")
		t.Logf("the event carries: %s", shown)
		c.navigate("/ui/")
		c.waitFor(`document.querySelector('tr[data-name="markup"]') !== null`, "the markup app on the overview")
		var brief struct {
			Rollout struct {
				Cause string `json:"cause"`
			} `json:"rollout"`
		}
		require.NoError(t, getJSON(s.api()+"/v1/apps/markup", &brief))
		t.Logf("markup's rollout cause, as the overview shows it: %q", brief.Rollout.Cause)
		if strings.Contains(brief.Rollout.Cause, "<script>") {
			c.waitFor(fmt.Sprintf(`document.querySelector('tr[data-name="markup"]').textContent.includes(%q)`, "<script>window.__xss=1</script>"), "the cause shown literally")
		}
		if consoleBuilt["events"] {
			c.navigate("/ui/events")
			c.waitFor(fmt.Sprintf(`document.getElementById("content").textContent.includes(%q)`, "<script>window.__xss=1</script>"), "the log line shown literally on the events page")
			c.screenshot("events")
		}
		if consoleBuilt["app"] {
			c.navigate("/ui/apps/markup")
			c.waitFor(fmt.Sprintf(`document.getElementById("content").textContent.includes(%q)`, "<script>window.__xss=1</script>"), "the log line shown literally on the app page")
		}
		c.requireOnlyOwnScript()
		c.b.RequireNoProblems()
	})

	t.Run("the other pages", func(t *testing.T) {
		c.t = t
		c.visitOtherPages()
	})

	t.Run("scale from the page", func(t *testing.T) {
		c.t = t
		if !consoleBuilt["scale"] {
			t.Log("not built yet: the scale confirmation (consoleBuilt[\"scale\"])")
			return
		}
		c.navigate("/ui/apps/demo/scale?replicas=4")
		c.screenshot("scale")
		resp := c.clickResponse(`main form button[type=submit]`)
		require.Less(t, resp, 400, "the confirmed scale")
		require.Eventually(t, func() bool {
			healthy := 0
			for _, in := range s.instances("demo") {
				if in.State == "running" && in.Health == "healthy" {
					healthy++
				}
			}
			return healthy == 4
		}, 90*time.Second, 100*time.Millisecond, "demo scaled to 4 from the page")
		c.navigate("/ui/")
		c.waitRowReady("demo", "4 / 4")
		c.b.RequireNoProblems()
	})

	t.Run("a read-only token's scale refused", func(t *testing.T) {
		c.t = t
		if !consoleBuilt["scale"] {
			t.Log("not built yet: the scale confirmation (consoleBuilt[\"scale\"])")
			return
		}
		c.signOut()
		c.signIn(reader)
		c.scaleRefused()
		var app struct {
			DesiredReplicas int `json:"desired_replicas"`
		}
		require.NoError(t, getJSON(s.api()+"/v1/apps/demo", &app))
		require.Equal(t, 4, app.DesiredReplicas, "a read token's scale changed the app")
	})
}

// consoleOfRunningDemo is TestConsoleInABrowser against a console that
// runs already (make demo): it signs in with the token of
// BERTH_CONSOLE_TOKEN_FILE, looks at every page and screenshots it. With
// the demo's read token, the scale it asks for is refused.
func consoleOfRunningDemo(t *testing.T, base string) {
	file := os.Getenv("BERTH_CONSOLE_TOKEN_FILE")
	require.NotEmpty(t, file, "BERTH_CONSOLE_URL is set: BERTH_CONSOLE_TOKEN_FILE must name its token's file (make demo writes /tmp/berth-demo/run/console.token)")
	tok, err := os.ReadFile(file)
	require.NoError(t, err)
	checkConsoleBuilt(t, base)
	b := testrig.NewBrowser(t)
	ctx, cancel := context.WithTimeout(b.Ctx, 3*time.Minute)
	defer cancel()
	c := &consoleBrowser{t: t, b: b, ctx: ctx, base: base}
	c.signIn(strings.TrimSpace(string(tok)))
	c.waitFor(`document.querySelector('table.apps tbody tr') !== null`, "an app on the overview")
	c.waitLive()
	c.screenshot("overview")
	if consoleBuilt["app"] {
		c.navigate("/ui/apps/demo")
		c.screenshot("app")
	}
	if consoleBuilt["events"] {
		c.navigate("/ui/events")
		c.screenshot("events")
	}
	c.visitOtherPages()
	if consoleBuilt["scale"] && strings.Contains(c.text(".session .who"), "(read)") {
		c.scaleRefused()
	}
	c.requireOnlyOwnScript()
	c.b.RequireNoProblems()
}

// checkConsoleBuilt fails when a page that consoleBuilt says is not
// built answers: its steps must be turned on. A signed-out request to a
// page that exists is sent to the login page; to one that does not, 404.
func checkConsoleBuilt(t *testing.T, base string) {
	t.Helper()
	client := &http.Client{Timeout: 5 * time.Second, CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	for name, route := range consoleRoutes {
		resp, err := client.Get(base + route)
		require.NoError(t, err)
		resp.Body.Close()
		exists := resp.StatusCode != http.StatusNotFound && resp.StatusCode != http.StatusMethodNotAllowed
		switch {
		case exists && !consoleBuilt[name]:
			t.Errorf("the console serves %s now (%d): set consoleBuilt[%q] in e2e/console_test.go to run its steps", route, resp.StatusCode, name)
		case !exists && consoleBuilt[name]:
			t.Errorf("consoleBuilt[%q] is set, but %s answers %d", name, route, resp.StatusCode)
		case !exists:
			t.Logf("not built yet, its steps do not run: %s (%s)", name, route)
		}
	}
}

// token makes an API token with a scope and returns its secret.
func (s *stack) token(name, scope string) string {
	s.t.Helper()
	created := s.cli("tokens", "create", "--name", name, "--scope", scope)
	for _, l := range strings.Split(created, "\n") {
		if strings.HasPrefix(l, "berth_") {
			return strings.TrimSpace(l)
		}
	}
	s.t.Fatalf("no token in: %s", created)
	return ""
}

// consoleBrowser is the browser of TestConsoleInABrowser on one console.
type consoleBrowser struct {
	t    *testing.T
	b    *testrig.Browser
	ctx  context.Context
	base string
	// shots are the screenshots taken once, the first time the test
	// sees their page.
	shots map[string]bool
}

// pageWait bounds each wait for a condition in the page: the console's
// live updates show a change within a second or two; a loaded machine
// gets more.
const pageWait = 30 * time.Second

func (c *consoleBrowser) do(what string, actions ...chromedp.Action[chromedp.Void]) {
	c.t.Helper()
	if err := chromedp.Do(c.ctx, actions...); err != nil {
		c.t.Fatalf("%s: %v", what, err)
	}
}

// navigate loads a page of the console and waits for its content.
func (c *consoleBrowser) navigate(path string) {
	c.t.Helper()
	resp, err := chromedp.Run(c.ctx, chromedp.NavigateResponse(c.base+path))
	require.NoError(c.t, err, "navigate to %s", path)
	require.Equal(c.t, http.StatusOK, int(resp.Status), "GET %s", path)
	c.do("wait for the content of "+path, chromedp.WaitReady(chromedp.ID("content")))
}

// signIn fills the login form and waits for the overview.
func (c *consoleBrowser) signIn(token string) {
	c.t.Helper()
	c.navigate("/ui/login")
	c.screenshotOnce("login")
	c.do("fill the token", chromedp.SendKeys(chromedp.ID("token"), token))
	status := c.clickResponse(`form.login button[type=submit]`)
	require.Equal(c.t, http.StatusOK, status, "the page after signing in")
	loc, err := chromedp.Run(c.ctx, chromedp.Location())
	require.NoError(c.t, err)
	u, err := url.Parse(loc)
	require.NoError(c.t, err)
	require.Equal(c.t, "/ui/", u.Path, "signing in leads to the overview")
	c.do("wait for the overview", chromedp.WaitReady(chromedp.CSS("table.apps")))
	// The token is the server's: the page's script cannot read the cookie.
	require.Equal(c.t, `""`, c.eval(`document.cookie`), "the session cookie is HttpOnly")
}

// signOut presses the header's button and waits for the login page.
func (c *consoleBrowser) signOut() {
	c.t.Helper()
	status := c.clickResponse(`.session form button[type=submit]`)
	require.Equal(c.t, http.StatusOK, status)
	c.do("wait for the login form", chromedp.WaitReady(chromedp.ID("token")))
}

// clickResponse clicks and returns the status of the page it loads.
func (c *consoleBrowser) clickResponse(selector string) int {
	c.t.Helper()
	resp, err := chromedp.RunResponse(c.ctx, chromedp.Click(chromedp.CSS(selector)))
	require.NoError(c.t, err, "click %s", selector)
	require.NotNil(c.t, resp, "click %s loaded no page", selector)
	return int(resp.Status)
}

// eval runs JavaScript in the page and returns its value as JSON text.
func (c *consoleBrowser) eval(js string) string {
	c.t.Helper()
	raw, err := chromedp.Run(c.ctx, chromedp.Evaluate[[]byte](js))
	require.NoError(c.t, err, "evaluate %s", js)
	return string(raw)
}

// text is the text of the first element that selector finds.
func (c *consoleBrowser) text(selector string) string {
	c.t.Helper()
	s, err := chromedp.Run(c.ctx, chromedp.TextContent(chromedp.CSS(selector)))
	require.NoError(c.t, err, "text of %s", selector)
	return strings.TrimSpace(s)
}

func (c *consoleBrowser) requireText(t *testing.T, selector, want string) {
	t.Helper()
	require.Equal(t, want, c.text(selector))
}

// waitFor waits until the JavaScript condition holds in the page, each
// time the page renders a frame, for at most pageWait.
func (c *consoleBrowser) waitFor(cond, what string) {
	c.t.Helper()
	if _, err := chromedp.Run(c.ctx, chromedp.Poll[chromedp.Void](cond, chromedp.WithPollingTimeout(pageWait))); err != nil {
		body, _ := chromedp.Run(c.ctx, chromedp.TextContent(chromedp.CSS("main")))
		c.t.Fatalf("%s: the page did not show it within %s (%v); it shows:\n%s", what, pageWait, err, strings.TrimSpace(body))
	}
}

// waitRowReady waits until the overview's row of app shows ready.
func (c *consoleBrowser) waitRowReady(app, ready string) {
	c.t.Helper()
	c.waitFor(fmt.Sprintf(`(function () {
  const row = document.querySelector('table.apps tr[data-name=%q]');
  return row !== null && row.cells[1].textContent.trim() === %q;
})()`, app, ready), app+" shows "+ready)
}

// waitLive waits until the page follows the live stream.
func (c *consoleBrowser) waitLive() {
	c.t.Helper()
	c.waitFor(`document.getElementById("live") !== null && document.getElementById("live").dataset.state === "live"`, "the header saying live")
}

// requireOnlyOwnScript: the page runs the console's one script and no
// other, and nothing the data carried ran.
func (c *consoleBrowser) requireOnlyOwnScript() {
	c.t.Helper()
	require.Equal(c.t, `["/ui/static/console.js"]`, c.eval(`Array.from(document.querySelectorAll("script")).map(s => new URL(s.src, location.href).pathname)`))
	require.Equal(c.t, "true", c.eval(`window.__xss === undefined`), "markup from the data ran")
}

// visitOtherPages looks at each built page of the navigation, waits for
// it to follow the stream where it does, and screenshots it.
func (c *consoleBrowser) visitOtherPages() {
	c.t.Helper()
	for _, name := range []string{"hosts", "edge", "certificates"} {
		if !consoleBuilt[name] {
			continue
		}
		c.navigate(consoleRoutes[name])
		c.requireOnlyOwnScript()
		c.screenshot(name)
	}
	c.b.RequireNoProblems()
}

// scaleRefused asks, as a read token, for the demo's scale and confirms:
// the console answers 403 naming the scope needed.
func (c *consoleBrowser) scaleRefused() {
	c.t.Helper()
	c.b.Allow("the server responded with a status of 403")
	resp, err := chromedp.Run(c.ctx, chromedp.NavigateResponse(c.base+"/ui/apps/demo/scale?replicas=2"))
	require.NoError(c.t, err)
	status := int(resp.Status)
	if status == http.StatusOK {
		// The confirmation is shown; the refusal comes with the post.
		status = c.clickResponse(`main form button[type=submit]`)
	}
	require.Equal(c.t, http.StatusForbidden, status, "a read token's scale")
	body := c.text("body")
	require.Contains(c.t, body, "scope", "the refusal names the scope")
	require.Contains(c.t, body, "deploy", "the refusal names the scope needed")
	c.screenshot("scale-refused")
}

func (c *consoleBrowser) screenshot(name string) {
	c.t.Helper()
	c.b.Screenshot(name)
}

func (c *consoleBrowser) screenshotOnce(name string) {
	c.t.Helper()
	if c.shots[name] {
		return
	}
	if c.shots == nil {
		c.shots = map[string]bool{}
	}
	c.shots[name] = true
	c.b.Screenshot(name)
}
