package render

import (
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/berthhq/berth/common/spec"
	"github.com/berthhq/berth/internal/testrig"
	"github.com/berthhq/berth/lbagent/internal/state"
	"github.com/berthhq/berth/templates"
)

// TestRulesServe runs a real nginx on a rendered config with every rule
// kind and checks what a client sees: an exact location matches only its
// path, a regex only what it matches, response headers come with every
// answer (errors too) beside the X-Request-ID they would otherwise drop,
// and a rate limit answers 429 past rps plus burst.
func TestRulesServe(t *testing.T) {
	t.Parallel()
	backend := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { fmt.Fprint(w, r.URL.Path) }))
	t.Cleanup(backend.Close)
	a := app("shop", 0)
	a.Servers = []state.Server{{Instance: "i0", Address: strings.TrimPrefix(backend.URL, "http://"), Weight: 1}}
	a.Spec.Routing.Rules = []spec.Rule{
		{Path: "/healthz", Match: spec.MatchExact, ResponseHeaders: map[string]string{"X-Rule": "exact"}},
		{Path: `^/img/[a-z]+\.png$`, Match: spec.MatchRegex, ResponseHeaders: map[string]string{"X-Rule": "img"}},
		{Path: "/api", RateLimit: &spec.RateLimit{RPS: 1, Burst: 2}, ResponseHeaders: map[string]string{"X-Rule": "api", "Cache-Control": "no-store"}},
	}
	o := opts
	o.AccessLogSocket, o.Main = "", false
	o.HTTPListen = fmt.Sprintf("127.0.0.1:%d", testrig.FreePort(t))
	o.StatusListen = fmt.Sprintf("127.0.0.1:%d", testrig.FreePort(t))
	r, err := Load(templates.FS)
	require.NoError(t, err)
	d, conflicts := Layout(state.Snapshot{Apps: []state.App{a}}, 1, o)
	require.Empty(t, conflicts)
	out, err := r.Render(d, false)
	require.NoError(t, err)
	ngx := testrig.NewNginx(t)
	ngx.WriteConfig(testrig.MainConfig(string(out)))
	ngx.Start()

	client := &http.Client{Timeout: 5 * time.Second}
	get := func(path string) *http.Response {
		t.Helper()
		var resp *http.Response
		require.Eventually(t, func() bool {
			var err error
			resp, err = client.Get("http://" + o.HTTPListen + path)
			return err == nil
		}, 5*time.Second, 20*time.Millisecond)
		resp.Body.Close()
		return resp
	}
	for path, rule := range map[string]string{
		"/healthz": "exact", "/healthz/x": "", "/healthzz": "",
		"/img/cat.png": "img", "/img/cat.gif": "", "/img/a/cat.png": "",
		"/other": "",
	} {
		resp := get(path)
		require.Equal(t, http.StatusOK, resp.StatusCode, path)
		require.Equal(t, rule, resp.Header.Get("X-Rule"), path)
		require.NotEmpty(t, resp.Header.Get("X-Request-ID"), "%s: the http context's header is kept", path)
	}

	codes := map[int]int{}
	for range 6 {
		resp := get("/api/orders")
		codes[resp.StatusCode]++
		require.Equal(t, "api", resp.Header.Get("X-Rule"), "always: on a 429 too")
		require.Equal(t, "no-store", resp.Header.Get("Cache-Control"))
		require.NotEmpty(t, resp.Header.Get("X-Request-ID"))
	}
	require.GreaterOrEqual(t, codes[http.StatusOK], 3, "rps 1 with burst 2 serves 3 at once: %v", codes)
	require.GreaterOrEqual(t, codes[http.StatusTooManyRequests], 2, "and refuses the rest: %v", codes)
	require.Equal(t, 6, codes[http.StatusOK]+codes[http.StatusTooManyRequests], "%v", codes)
}

func TestCheckCloser(t *testing.T) {
	t.Parallel()
	for _, ok := range []string{"berth_web_close", "berth_my_close_close", "berth_web_close_r0", "berth_my_close_close_r12"} {
		require.NoError(t, checkCloser(ok), ok)
	}
	for _, bad := range []string{"berth_web", "berth_web_close_r", "berth_web_close_rx", "berth_web_close_r1;", "web_close", "berth_web_close {"} {
		require.Error(t, checkCloser(bad), bad)
	}
}
