package console

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/berthhq/berth/common/msg"
	"github.com/berthhq/berth/scheduler/internal/api"
	"github.com/berthhq/berth/scheduler/internal/auth"
)

// failing answers the paths of fail with their status and words, the
// rest with the API.
func failing(fail map[string]api.Error, codes map[string]int) func(http.Handler) http.Handler {
	return func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
			e, ok := fail[req.URL.Path]
			if !ok {
				next.ServeHTTP(w, req)
				return
			}
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(codes[req.URL.Path])
			_ = json.NewEncoder(w).Encode(e)
		})
	}
}

// TestEdgePage: every lbagent with its lag, mode, last reload and push,
// nginx version and errors; stale and failing ones first and marked; an
// lbagent's words are text.
func TestEdgePage(t *testing.T) {
	t.Parallel()
	const hostileNode = `<b>lb-x</b>`
	// The records are made when the API asks, so that their ages on the
	// page are exact; asked keeps the time they were made at.
	var asked atomic.Pointer[time.Time]
	agents := func() []*msg.Agent {
		now := time.Now().UTC()
		asked.Store(&now)
		return []*msg.Agent{
			{Node: "lb-a", AppliedRevision: 120, Mode: msg.ModeDynamic, NginxVersion: "nginx/1.22.1", Apps: map[string]int64{"web": 3}, UpdatedAt: now,
				LastReload: &msg.ConfigChange{At: now.Add(-time.Hour), DurationMS: 84.4, Revision: 100},
				LastPush:   &msg.ConfigChange{At: now.Add(-2 * time.Second), DurationMS: 1.25, Revision: 120}},
			{Node: "lb-b", AppliedRevision: 90, Mode: msg.ModeReload, UpdatedAt: now.Add(-time.Minute)}, // stale, behind
			{Node: "lb-c", AppliedRevision: 118, Mode: msg.ModeDynamic, UpdatedAt: now, LastError: `control endpoint: <script>alert(1)</script>`,
				Errors:   map[string]string{"web": `nginx -t: </td><img src=x onerror=alert(1)>`, "<evil>": "refused"},
				LastPush: &msg.ConfigChange{At: now.Add(-time.Second), DurationMS: 12, Revision: 118, Error: `push: <iframe src=//x>`}},
			{Node: hostileNode, AppliedRevision: 500, UpdatedAt: now}, // above the bucket: lag unknown; an older lbagent: no mode
		}
	}
	r := appRig(t, api.Options{Agents: agents, InstancesRevision: func(context.Context) (uint64, error) { return 120, nil }}, nil)
	c := r.browser()
	require.Equal(t, http.StatusSeeOther, r.login(c, r.token("viewer", auth.Read)).StatusCode)
	code, page := appGet(t, r, c, "/ui/edge")
	require.Equal(t, http.StatusOK, code, page)
	require.Contains(t, page, `<body data-live="refresh"`)
	require.Contains(t, page, `<a href="/ui/edge" aria-current="page">Edge</a>`)
	require.Contains(t, page, "Instances bucket at revision <strong>120</strong>")
	now := *asked.Load()

	// Stale and failing first, each by node; then the rest by node.
	var order []int
	for _, n := range []string{`data-name="lb-b"`, `data-name="lb-c"`, `data-name="&lt;b&gt;lb-x&lt;/b&gt;"`, `data-name="lb-a"`} {
		i := strings.Index(page, n)
		require.Positive(t, i, n)
		order = append(order, i)
	}
	require.IsIncreasing(t, order, "lb-b and lb-c (trouble) come first, then by node")
	require.Contains(t, page, `<tr class="trouble stale" data-name="lb-b">`)
	require.Contains(t, page, `<tr class="trouble" data-name="lb-c">`)
	require.Contains(t, page, `<tr class="ok" data-name="lb-a">`)

	row := func(node string) string {
		i := strings.Index(page, `data-name="`+node+`"`)
		require.Positive(t, i, node)
		return page[i : i+strings.Index(page[i:], "</tr>")]
	}
	a := row("lb-a")
	require.Contains(t, a, `<td class="good">caught up</td>`)
	require.Contains(t, a, "<td>dynamic</td>")
	require.Contains(t, a, `<span class="good">ok</span> 1h0m0s ago <small class="muted">`+now.Add(-time.Hour).Format("15:04:05Z")+` · 84 ms · revision 100</small>`)
	require.Contains(t, a, `<span class="good">ok</span> 2s ago <small class="muted">`+now.Add(-2*time.Second).Format("15:04:05Z")+` · 1.2 ms · revision 120</small>`)
	require.Contains(t, a, "nginx/1.22.1")
	require.NotContains(t, a, "stale")

	b := row("lb-b")
	require.Contains(t, b, `<td class="bad">behind by 30</td>`)
	require.Contains(t, b, "1m0s ago")
	require.Contains(t, b, `<strong class="bad">stale</strong>`)
	require.Equal(t, 2, strings.Count(b, "none yet"), "no reload, no push")
	require.Contains(t, b, `<span class="muted">unknown</span>`, "no nginx version")

	cr := row("lb-c")
	require.Contains(t, cr, `<td class="bad">behind by 2</td>`)
	require.Contains(t, cr, `failing: control endpoint: &lt;script&gt;alert(1)&lt;/script&gt;`)
	require.Contains(t, cr, `<a href="/ui/apps/web">web</a> keeps its last good config: nginx -t: &lt;/td&gt;&lt;img src=x onerror=alert(1)&gt;`)
	require.Contains(t, cr, `<div class="bad">&lt;evil&gt; keeps its last good config: refused</div>`, "no link for what is not an app name")
	require.Contains(t, cr, `<span class="bad">failed</span> 1s ago`)
	require.Contains(t, cr, `<small class="bad">push: &lt;iframe src=//x&gt;</small>`)

	x := row("&lt;b&gt;lb-x&lt;/b&gt;")
	require.Contains(t, x, `<td class="muted">unknown</td>`, "above the bucket: lag unknown")
	require.Contains(t, x, "<td>unknown</td>", "no mode recorded")

	for _, bad := range []string{hostileNode, "<script>alert", "<img", "<iframe", "<evil>"} {
		require.NotContains(t, page, bad)
	}
	require.Equal(t, 1, strings.Count(page, "<script"), "the console's one script file")
}

// TestEdgePageWithoutLag: when the API cannot read the instances
// bucket's revision, the page says so at the top and every lag is
// unknown; with no lbagent it says none has reported.
func TestEdgePageWithoutLag(t *testing.T) {
	t.Parallel()
	now := time.Now().UTC()
	r := appRig(t, api.Options{Agents: func() []*msg.Agent {
		return []*msg.Agent{{Node: "lb-1", AppliedRevision: 7, Mode: msg.ModeReload, UpdatedAt: now}}
	},
		InstancesRevision: func(context.Context) (uint64, error) { return 0, errors.New("nats: timeout") }}, nil)
	c := r.browser()
	r.login(c, admin)
	code, page := appGet(t, r, c, "/ui/edge")
	require.Equal(t, http.StatusOK, code)
	require.Contains(t, page, `<p class="bad revision">Instances bucket: the newest revision of the instances bucket did not read from NATS`)
	require.Contains(t, page, `<td class="muted">unknown</td>`)
	require.Contains(t, page, `<tr class="ok" data-name="lb-1">`)

	r = appRig(t, api.Options{}, nil)
	c = r.browser()
	r.login(c, admin)
	code, page = appGet(t, r, c, "/ui/edge")
	require.Equal(t, http.StatusOK, code)
	require.Contains(t, page, "No lbagent has reported")
	require.Contains(t, page, "lag unknown")
}

// TestEdgePageShowsAPIError: the API's refusal or failure is the page's,
// in the API's words.
func TestEdgePageShowsAPIError(t *testing.T) {
	t.Parallel()
	r := appRig(t, api.Options{}, failing(map[string]api.Error{"/v1/edge": {Error: "forbidden: <needs> read"}}, map[string]int{"/v1/edge": http.StatusForbidden}))
	c := r.browser()
	r.login(c, admin)
	code, page := appGet(t, r, c, "/ui/edge")
	require.Equal(t, http.StatusForbidden, code)
	require.Contains(t, page, `<p class="error" role="alert">cannot read the lbagents: forbidden: &lt;needs&gt; read</p>`)
	require.NotContains(t, page, "<table")
	require.NotContains(t, page, "No lbagent")
}

// The edge and certificates pages need a session.
func TestEdgeAndCertificatesNeedASession(t *testing.T) {
	t.Parallel()
	r := newRig(t, nil)
	for _, path := range []string{"/ui/edge", "/ui/certificates"} {
		resp, _ := get(t, r.browser(), r.url+path)
		require.Equal(t, http.StatusSeeOther, resp.StatusCode, path)
		require.Equal(t, "/ui/login", resp.Header.Get("Location"))
	}
}
